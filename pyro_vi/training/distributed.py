"""Data-parallel SVI over processes with :mod:`torch.distributed`.

Each of :math:`R` processes runs the same model and guide on its own shard
of the data; after ``loss_and_grads`` the gradients (and the loss) are
averaged over the processes with one all-reduce, as
:class:`~torch.nn.parallel.DistributedDataParallel` does, so that every
process takes the same optimizer step. The average estimates the gradient
of the objective on *all* the data when three things hold;
:func:`pyro_vi.fit` makes or checks each of them whenever a process group
is initialized (e.g. under ``torchrun``):

1. **The processes hold the same parameters.** Params are created lazily,
   by the first run of the guide (an autoguide draws its initial values),
   so each process would start from its own. ``fit`` sets them up with a
   throw-away step that leaves every random state as it was, copies rank
   0's values to every process (:func:`broadcast_params`), and on resume
   rank 0's optimizer state; it copies a param that first appears in a
   later step the same way, and at every checkpoint and at the end checks
   that the processes still agree (:func:`check_params_agree`).
2. **Each shard's likelihood is scaled to the full data.** The average
   over processes weighs process :math:`r`'s log-likelihood by
   :math:`w_r / R`, where :math:`w_r` is the scale of its plate. A shard of
   :math:`B = N / R` of :math:`N` data points must therefore be scaled by
   :math:`N / B`: ``pyro.plate("data", N, subsample=my_indices)``. The
   obvious ``pyro.plate("data", len(my_shard))`` counts the data :math:`R`
   times too few, and the posterior comes out :math:`\\sqrt{R}` times too
   wide. ``fit`` refuses such a program before the first step
   (:func:`check_sharding`), and refuses a
   :class:`~torch.utils.data.DataLoader` without a
   :class:`~torch.utils.data.distributed.DistributedSampler` (with one, it
   calls the sampler's ``set_epoch`` at each epoch). Shards should have
   equal sizes (a ``DistributedSampler``'s do). ``poutine.scale`` scales a
   shard as well for the ELBO, which is linear in it, but an
   importance-weighted bound (:class:`~pyro_vi.ImportanceWeightedELBO`,
   ``RenyiELBO``) takes it inside its weights and would temper them:
   ``fit`` refuses that.
3. **Score-function estimators share their particles.** With independent
   particles, process :math:`r`'s learning signal
   :math:`L^r_s = \\frac{N}{B} \\log p(x_r \\mid z_s) + \\log p(z_s) -
   \\log q(z_s)` targets its own shard's objective, whose gradient does
   not vanish at the optimum and whose dependence on :math:`z` differs from
   shard to shard: no control-variate coefficient, per process or pooled,
   can cancel it. ``pool_processes=True`` (of
   :class:`~pyro_vi.ControlVariateELBO` and
   :class:`~pyro_vi.RaoBlackwellELBO`) makes the processes draw the same
   particles (:func:`shared_random_stream`). The estimators are linear in
   their signal at fixed particles, so the average of the processes'
   gradients is then the estimator with the signal
   :math:`\\frac{1}{R} \\sum_r L^r_s = L_s` of all the data: the one-process
   estimator, unbiased, with its variance (the README measures it).

Launch, e.g. with gloo on CPUs::

    torchrun --nproc_per_node=2 my_script.py

where the script calls ``torch.distributed.init_process_group("gloo")``,
seeds each process differently (``pyro.set_rng_seed(seed + rank)``), gives
each its shard of the data, scaled as in 2., and calls ``fit``. Every
process must run the same steps: ``fit`` refuses, on every process, runs
whose settings, batches per epoch or checkpoints differ between them.
Import ``pyro_vi`` before ``init_process_group``, and end the script with
``torch.distributed.destroy_process_group()``: see
:func:`warn_if_group_outlives_destroy`.
"""

import contextlib
import hashlib
import math
import warnings
import zlib

import pyro
import torch
import torch.distributed as dist
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..particles.pyro_compat import default_argument_holders
from .random_states import random_states_kept

# Imported with pyro_vi, before any process group exists: see
# warn_if_group_outlives_destroy.
if dist.is_available():
    import torch.distributed.nn  # noqa: F401

__all__ = [
    "average_gradients",
    "broadcast_params",
    "check_params_agree",
    "check_same",
    "check_same_params",
    "check_sharding",
    "draw_seed",
    "in_process_group",
    "process",
    "shared_random_stream",
    "sum_over_processes",
    "warn_if_group_outlives_destroy",
]


def in_process_group():
    """Whether a :mod:`torch.distributed` process group is initialized."""
    return dist.is_available() and dist.is_initialized()


def process():
    """``(rank, world_size)``: ``(0, 1)`` outside a process group."""
    if in_process_group():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def warn_if_group_outlives_destroy(stacklevel=2):
    """Warns (``RuntimeWarning``) where a module of ``torch.distributed``
    was imported after ``init_process_group`` and holds the default process
    group as a default argument (``torch.distributed.nn.functional``, which
    the first ``torch.optim`` optimizer imports): ``destroy_process_group``
    then cannot free the group, and gloo tears it down at interpreter exit,
    where it sometimes aborts the finished process (SIGABRT, "terminate
    called without an active exception"; 1 run in 4 to 5 of this project's
    torchrun test). Importing ``pyro_vi`` imports that module first.
    Returns whether it warned."""
    holders = default_argument_holders(dist.group.WORLD) if in_process_group() else []
    if holders:
        warnings.warn(
            f"these functions of torch.distributed, imported after init_process_group, hold the default process "
            f"group as a default argument: {', '.join(holders)}. destroy_process_group cannot free it, and "
            "tearing it down at interpreter exit sometimes aborts the process (SIGABRT) after the script has "
            "finished. Import pyro_vi (and their modules) before torch.distributed.init_process_group",
            RuntimeWarning,
            stacklevel=stacklevel + 1,
        )
    return bool(holders)


def _device():
    """Where the backend's collectives want small tensors."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _by_dtype(tensors):
    """``{(dtype, device): [index, ...]}`` of ``tensors``, in order."""
    groups = {}
    for i, tensor in enumerate(tensors):
        groups.setdefault((tensor.dtype, tensor.device), []).append(i)
    return groups


def _pieces(flat, tensors):
    """The first elements of the 1-D ``flat``, cut into views shaped as
    ``tensors``."""
    sizes = [tensor.numel() for tensor in tensors]
    return [piece.view_as(tensor) for piece, tensor in zip(flat[: sum(sizes)].split(sizes), tensors)]


def average_gradients(params, loss=None):
    """Averages the ``.grad`` of ``params`` (the same list, in the same
    order, on every process; a missing gradient counts as zero) and ``loss``
    over the processes, in place, with one all-reduce per dtype.

    :returns: the averaged loss (``loss`` itself outside a process group).
    """
    _, size = process()
    if size == 1:
        return loss
    params = list(params)
    if not params:
        return loss if loss is None else float(sum_over_processes(torch.tensor([float(loss)]))) / size
    for k, ((dtype, device), indices) in enumerate(_by_dtype(params).items()):
        group = [params[i] for i in indices]
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
        with_loss = loss is not None and k == 0  # the loss travels at the end of the first group
        if with_loss:
            parts.append(torch.tensor([float(loss)], dtype=dtype, device=device))
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        flat /= size
        for param, grad in zip(group, _pieces(flat, group)):
            param.grad = grad.clone()
        if with_loss:
            loss = float(flat[-1])
    return loss


def sum_over_processes(tensor):
    """``tensor`` added up over the processes (an all-reduce, in place)."""
    if process()[1] > 1:
        dist.all_reduce(tensor)
    return tensor


def _equal_everywhere(values):
    """Whether every process holds the same 1-D tensor ``values`` (the same
    answer on every process; one all-reduce)."""
    both = torch.cat([values, -values]).to(_device())
    dist.all_reduce(both, op=dist.ReduceOp.MIN)
    smallest, largest = both[: len(values)], -both[len(values) :]
    return bool(torch.equal(smallest, largest))


def broadcast_params(params):
    """Copies rank 0's values of ``params`` (``{name: tensor}``, the same
    names and shapes on every process) to every process, in place, with one
    broadcast per dtype."""
    if process()[1] == 1 or not params:
        return
    tensors = [params[name] for name in sorted(params)]
    with torch.no_grad():
        for indices in _by_dtype(tensors).values():
            group = [tensors[i] for i in indices]
            flat = torch.cat([tensor.detach().reshape(-1) for tensor in group])
            dist.broadcast(flat, 0)
            for tensor, value in zip(group, _pieces(flat, group)):
                tensor.copy_(value)


def check_params_agree(params, where):
    """Raises :class:`ValueError`, on every process, when a value of
    ``params`` (``{name: tensor}``, the same names on every process) differs
    from rank 0's; the message names each such param with its largest
    difference :math:`\\max |\\lambda^{(r)} - \\lambda^{(0)}|` over the
    processes. ``where`` says when (e.g. ``"at the checkpoint of step
    100"``). One broadcast per dtype and one all-reduce."""
    _, size = process()
    if size == 1 or not params:
        return
    names = sorted(params)
    tensors = [params[name].detach() for name in names]
    largest = torch.zeros(len(names), dtype=torch.float64, device=_device())
    for indices in _by_dtype(tensors).values():
        own = torch.cat([tensors[i].reshape(-1) for i in indices])
        reference = own.clone()
        dist.broadcast(reference, 0)
        gaps = (own.double() - reference.double()).abs()
        for i, gap in zip(indices, _pieces(gaps, [tensors[i] for i in indices])):
            if gap.numel():
                largest[i] = gap.nan_to_num(nan=float("inf")).max()
    dist.all_reduce(largest, op=dist.ReduceOp.MAX)
    apart = [(name, gap) for name, gap in zip(names, largest.tolist()) if gap > 0]
    if apart:
        raise ValueError(
            "{}: the {} processes' parameters differ: {} (largest |value on a process - value on rank 0|). "
            "Every process must run the same model, guide and optimizer on the same parameters, and nothing "
            "but fit may change them (a callback that changes a param on one process, say)".format(
                where, size, ", ".join(f"{name!r} by up to {gap:.6g}" for name, gap in apart)
            )
        )


def check_same(what, value):
    """Raises :class:`ValueError`, on every process, unless every process
    passes an equal ``value`` (any picklable object; one all-gather): the
    message lists each process's value of ``what``."""
    _, size = process()
    if size == 1:
        return
    values = [None] * size
    dist.all_gather_object(values, value)
    if all(v == values[0] for v in values):
        return
    if all(isinstance(v, dict) for v in values):  # only the entries that differ
        keys = [k for k in values[0] if any(v.get(k) != values[0][k] for v in values)]
        values = [{k: v.get(k) for k in keys} for v in values]
    raise ValueError(
        "{} must be the same on every process, got {}".format(
            what, "; ".join(f"rank {r}: {v!r}" for r, v in enumerate(values))
        )
    )


def check_same_params(params, where):
    """Raises :class:`ValueError`, on every process, unless every process's
    step touched the same params (names, shapes and dtypes), which the
    all-reduce of their gradients needs; one all-reduce of a checksum, and
    more only to write the message."""
    _, size = process()
    if size == 1:
        return
    layout = sorted((name, tuple(p.shape), str(p.dtype)) for name, p in params.items())
    if _equal_everywhere(torch.tensor([zlib.crc32(repr(layout).encode())], dtype=torch.int64)):
        return
    layouts = [None] * size
    dist.all_gather_object(layouts, layout)
    common = set.intersection(*map(set, layouts))
    extra = [sorted(set(layout) - common) for layout in layouts]
    lines = [
        "rank {}: {}".format(r, ", ".join(f"{n!r} of shape {list(shape)} ({d})" for n, shape, d in names))
        for r, names in enumerate(extra)
        if names
    ]
    raise ValueError(
        "{}: the processes' steps touched different params ({}): every process must create the same params "
        "with the same shapes (a param's shape must not depend on the process's shard; "
        "size local params by the full data and subsample them)".format(where, "; ".join(lines))
    )


def draw_seed():
    """A seed for :func:`pyro.set_rng_seed`, drawn from torch's global
    stream: what rank 0 draws for :func:`shared_random_stream`."""
    return int(torch.randint(2**32, (1,)).item())


@contextlib.contextmanager
def shared_random_stream():
    """Runs the block with every process drawing the same random numbers:
    rank 0 draws a seed from its own torch stream and broadcasts it, every
    process seeds torch, Python and NumPy with it
    (:func:`pyro.set_rng_seed`) for the block, and afterwards each process's
    own random states are put back (rank 0's has moved by the one draw).
    Outside a process group, the block runs as it is."""
    rank, size = process()
    if size == 1:
        yield
        return
    seed = torch.tensor([draw_seed() if rank == 0 else 0], dtype=torch.int64, device=_device())
    dist.broadcast(seed, 0)
    with random_states_kept():
        pyro.set_rng_seed(int(seed.item()))
        yield


# ---- the plates' scales -------------------------------------------------------


def _observations(model, guide, args, kwargs):
    """Per observed site of one run of the guide and the model against it:
    its plates, the number of observed values, their total scale and a
    checksum of the values. Leaves every random state as it was."""
    with random_states_kept(), torch.no_grad():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    found = {}
    for name, site in model_trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or site_is_subsample(site):
            continue
        fn, value = site["fn"], torch.as_tensor(site["value"]).detach()
        event_dim = len(fn.event_shape)
        shape = torch.broadcast_shapes(fn.batch_shape, value.shape[: value.dim() - event_dim])
        counted = torch.ones(shape, dtype=torch.float64)
        mask = site["mask"]
        if mask is not None:
            counted = counted * torch.as_tensor(mask, dtype=torch.float64).cpu()
        scale = torch.as_tensor(site["scale"], dtype=torch.float64).cpu()
        subsample = math.prod(f.full_size / f.size for f in site["cond_indep_stack"] if f.full_size)
        found[name] = {
            "plates": [(f.name, f.size, f.full_size or f.size) for f in site["cond_indep_stack"]],
            "count": float(counted.sum()),
            "weight": float((counted * scale).sum()),
            "tempering": float((scale / subsample).max()),  # poutine.scale's part of the scale
            "checksum": hashlib.blake2b(
                repr(tuple(value.shape)).encode() + value.cpu().to(torch.float64).numpy().tobytes(), digest_size=8
            ).hexdigest(),
        }
    return found


def _describe_plates(plates):
    if not plates:
        return "outside any plate"
    return ", ".join(
        f"plate {name!r} of size {full}" + (f", subsample {size}" if size != full else "")
        for name, size, full in plates
    )


def check_sharding(model, guide, *args, importance_weighted=None, **kwargs):
    """Checks, on every process, that every observed site whose values
    differ between the processes is scaled to all the data they hold:
    averaged over the processes, its scaled number of values
    :math:`\\frac{1}{R}\\sum_r w_r` must be at least the number of values
    they hold together, :math:`\\sum_r n_r`. (A shard of :math:`B` of
    :math:`N` points in ``pyro.plate("data", N, subsample=indices)`` has
    :math:`w_r = N`; in ``pyro.plate("data", B)``, :math:`w_r = B`.) Sites
    whose values are the same on every process (replicated data) may have
    any scale. Runs the guide and the model once, leaving every random state
    as it was, and gathers a few numbers per site (one all-gather).

    :param str importance_weighted: the name of an objective that takes
        ``poutine.scale`` inside its importance weights (a bound over
        :math:`K > 1` particles): a shard scaled by ``poutine.scale`` is then
        refused, since it would temper the weights,
        :math:`\\log \\frac{1}{K}\\sum_k w_k^c` instead of
        :math:`c \\log \\frac{1}{K}\\sum_k w_k`.
    :returns: the names of the observed sites whose values differ between
        the processes (empty outside a process group).
    :raises ValueError: naming the site, its plates, the counts and the fix.
    """
    _, size = process()
    if size == 1:
        return []
    own = _observations(model, guide, args, kwargs)
    everyone = [None] * size
    dist.all_gather_object(everyone, own)
    sharded = []
    for name, site in own.items():
        sites = [found.get(name) for found in everyone]
        if any(s is None for s in sites) or len({s["checksum"] for s in sites}) == 1:
            continue
        sharded.append(name)
        plate = site["plates"][0][0] if site["plates"] else "data"
        if importance_weighted and abs(site["tempering"] - 1) > 1e-6:
            raise ValueError(
                f"observed site {name!r} ({_describe_plates(site['plates'])}): the processes hold different values "
                f"of it, and this one's are scaled by poutine.scale ({site['tempering']:.6g}), which "
                f"{importance_weighted} takes inside its importance weights, tempering them (log (1/K) sum_k w_k^c, "
                f"not c times the bound). Scale each shard with pyro.plate({plate!r}, N_total, "
                "subsample=my_indices), whose scale multiplies each data point's bound"
            )
        held = sum(s["count"] for s in sites)
        weight = sum(s["weight"] for s in sites) / size
        if weight < held * (1 - 1e-6):
            raise ValueError(
                "observed site {!r} ({}): the {} processes hold different values of it, {} in all ({}), but the "
                "average of their gradients weighs them as {:.6g} values ({}), {:.3g} of the data: its "
                "posterior would come out about {:.3g} times too wide. Scale each shard to the full data: "
                "pyro.plate({!r}, N_total, subsample=my_indices) with N_total the number of data points in all "
                "the shards (a DataLoader's len(dataset)) and my_indices this process's, in shards of equal "
                "size".format(
                    name,
                    _describe_plates(site["plates"]),
                    size,
                    f"{held:.6g}",
                    " + ".join(f"{s['count']:.6g}" for s in sites),
                    weight,
                    " and ".join(f"rank {r} scaled to {s['weight']:.6g}" for r, s in enumerate(sites)),
                    weight / held,
                    (held / weight) ** 0.5,
                    plate,
                )
            )
    return sharded
