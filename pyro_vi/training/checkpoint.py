"""
The checkpoint of :func:`~pyro_vi.training.fit`: what it holds, and how it is
written, read, checked and resumed.

It holds plain data only, so that ``torch.load(path, weights_only=True)``
reads it and loading can run no code: tensors, ``int``/``float``/``bool``/
``str``/``None``, and lists, tuples and dicts of them. Constraints are stored
by name (rebuilt from the fixed table :data:`CONSTRAINTS`) and random states
as tensors and numbers. The keys (:data:`KEYS`, format :data:`FORMAT`):

- ``step``, ``epoch``, ``batch``: the steps done, the completed epochs, the
  batches done in the current one;
- ``epoch_start``: ``None``, or ``{"rng", "generators"}``, the random states
  when the current epoch began (a resume replays its first ``batch``
  batches);
- ``fingerprint``: ``{"elbo", "optim", "track", "data", "user", "params"}``,
  which a resume must match;
- ``params``: name -> ``{"value": unconstrained tensor, "constraint": by
  name}``;
- ``optim``, ``history``, ``rng``, ``state``: the optimizer's state; the
  losses, tracked values, seconds and epoch ends; the global random states;
  the caller's dict.

Files are written atomically: a temporary ``<path>.tmp<pid>``, flushed and
fsynced, renamed over ``path``, then the directory is fsynced.
"""

import os
import re

import pyro
import torch
from pyro.distributions import constraints
from pyro.optim import PyroOptim
from pyro.optim.lr_scheduler import PyroLRScheduler
from torch.distributions import constraints as torch_constraints

from .random_states import check_rng_state, rng_state

__all__ = [
    "CONSTRAINTS",
    "FORMAT",
    "KEYS",
    "atomic_save",
    "check_params",
    "check_plain",
    "check_resumable",
    "constraint_label",
    "contents",
    "decode_constraint",
    "describe_elbo",
    "describe_optim",
    "encode_constraint",
    "load",
    "to_resume",
]

FORMAT = "pyro_vi.fit checkpoint v1"
KEYS = ("format", "step", "epoch", "batch", "epoch_start", "fingerprint", "params", "optim", "history", "rng", "state")

# The constraints a checkpoint can name: these singletons, plus the
# parameterized families in _FAMILIES.
CONSTRAINTS = {
    name: getattr(constraints, name)
    for name in (
        "boolean",
        "corr_cholesky",
        "corr_matrix",
        "integer",
        "lower_cholesky",
        "lower_triangular",
        "nonnegative",
        "nonnegative_integer",
        "one_hot",
        "ordered_vector",
        "positive",
        "positive_definite",
        "positive_integer",
        "positive_ordered_vector",
        "positive_semidefinite",
        "real",
        "real_vector",
        "simplex",
        "softplus_lower_cholesky",
        "softplus_positive",
        "sphere",
        "square",
        "symmetric",
        "unit_interval",
        "unit_lower_cholesky",
    )
}
# name -> (exact class, its constructor, the attributes that are its arguments)
_FAMILIES = {
    "greater_than": (torch_constraints._GreaterThan, constraints.greater_than, ("lower_bound",)),
    "greater_than_eq": (torch_constraints._GreaterThanEq, constraints.greater_than_eq, ("lower_bound",)),
    "less_than": (torch_constraints._LessThan, constraints.less_than, ("upper_bound",)),
    "interval": (torch_constraints._Interval, constraints.interval, ("lower_bound", "upper_bound")),
    "half_open_interval": (
        torch_constraints._HalfOpenInterval,
        constraints.half_open_interval,
        ("lower_bound", "upper_bound"),
    ),
    "integer_interval": (
        torch_constraints._IntegerInterval,
        constraints.integer_interval,
        ("lower_bound", "upper_bound"),
    ),
    "independent": (
        torch_constraints._IndependentConstraint,
        constraints.independent,
        ("base_constraint", "reinterpreted_batch_ndims"),
    ),
}


# ---- plain data ---------------------------------------------------------------

_SCALARS = (type(None), bool, int, float, str)


def check_plain(value, where):
    """Raises ``ValueError`` naming the first part of ``value`` (reached as
    ``where``) that is not a tensor, a plain number, a string, ``None``, or a
    list, tuple or dict (with ``str`` or ``int`` keys) of those."""
    if type(value) in _SCALARS or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            check_plain(item, f"{where}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) not in (str, int):
                raise ValueError(
                    f"{where} has the key {key!r} ({type(key).__name__}); checkpoint dicts need str or int keys"
                )
            check_plain(item, f"{where}[{key!r}]")
        return
    raise ValueError(
        f"{where} is a {type(value).__name__} ({value!r:.60}); a checkpoint holds only tensors, Python numbers, "
        "strings, None, "
        "lists and dicts: convert it (e.g. float(x), x.tolist() or torch.as_tensor(x))"
    )


# ---- constraints --------------------------------------------------------------


def encode_constraint(constraint, where):
    """``constraint`` as ``{"name": ..., "args": [...]}`` from the fixed table."""
    for name, known in CONSTRAINTS.items():
        if constraint is known:
            return {"name": name, "args": []}
    for name, (cls, _, attributes) in _FAMILIES.items():
        if type(constraint) is cls:
            args = [getattr(constraint, a) for a in attributes]
            if name == "independent":
                args[0] = encode_constraint(args[0], where)
            return {"name": name, "args": args}
    raise ValueError(
        "{} has the constraint {} ({!r}), which a checkpoint cannot store: it must be one of "
        "torch.distributions.constraints {} or {}".format(
            where,
            type(constraint).__name__,
            constraint,
            ", ".join(CONSTRAINTS),
            ", ".join(f"{n}(...)" for n in _FAMILIES),
        )
    )


def decode_constraint(encoded, where):
    """The constraint named by :func:`encode_constraint`'s output; unknown
    names are refused."""
    if not isinstance(encoded, dict) or set(encoded) != {"name", "args"} or not isinstance(encoded["args"], list):
        raise ValueError(f"{where} is not a constraint record ({{'name': ..., 'args': [...]}})")
    name, args = encoded["name"], list(encoded["args"])
    if name in CONSTRAINTS and not args:
        return CONSTRAINTS[name]
    if name not in _FAMILIES:
        raise ValueError(
            "{} names the unknown constraint {!r}; known: {}".format(
                where, name, ", ".join(list(CONSTRAINTS) + list(_FAMILIES))
            )
        )
    if len(args) != len(_FAMILIES[name][2]):
        raise ValueError(f"{where}: constraint {name!r} takes {len(_FAMILIES[name][2])} arguments, got {len(args)}")
    if name == "independent":
        args[0] = decode_constraint(args[0], where)
        if type(args[1]) is not int:
            raise ValueError(f"{where}: independent() needs an int reinterpreted_batch_ndims")
    elif not all(type(a) in (int, float) or isinstance(a, torch.Tensor) for a in args):
        raise ValueError(f"{where}: the bounds of {name!r} must be numbers or tensors")
    return _FAMILIES[name][1](*args)


def constraint_label(encoded):
    """A short text for an encoded constraint, e.g. ``interval(0.0, 1.0)``."""
    if not encoded["args"]:
        return encoded["name"]
    args = [
        constraint_label(a)
        if isinstance(a, dict)
        else (str(a.tolist()) if a.numel() <= 4 else f"tensor{list(a.shape)}")
        if isinstance(a, torch.Tensor)
        else repr(a)
        for a in encoded["args"]
    ]
    return "{}({})".format(encoded["name"], ", ".join(args))


# ---- files --------------------------------------------------------------------


def _temporary(path, pid=None):
    return f"{path}.tmp{os.getpid() if pid is None else pid}"


def _check_writable(path) -> None:
    """Raises ``ValueError`` unless a checkpoint can be written at ``path``:
    its directory exists, ``path`` is not a directory, and a file can be
    created next to it (tried, then removed)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(
            f"checkpoint {path}: the directory {directory} does not exist; create it first "
            "(os.makedirs) or pass another path"
        )
    if os.path.isdir(path):
        raise ValueError(f"checkpoint {path} is a directory; pass a file path")
    probe = _temporary(path)
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as error:
        raise ValueError(f"checkpoint {path} cannot be written: {error}") from error


def _alive(pid) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_stale_temporaries(path) -> list:
    """Removes the ``<path>.tmp<pid>`` files of processes that no longer run
    (killed while writing); returns their names."""
    directory = os.path.dirname(os.path.abspath(path))
    pattern = re.compile(re.escape(os.path.basename(path)) + r"\.tmp(\d+)$")
    removed = []
    for name in os.listdir(directory):
        match = pattern.match(name)
        if match and (int(match.group(1)) == os.getpid() or not _alive(int(match.group(1)))):
            try:
                os.remove(os.path.join(directory, name))
                removed.append(name)
            except FileNotFoundError:
                pass
    return removed


def atomic_save(state, path) -> None:
    """``torch.save`` to ``<path>.tmp<pid>``, fsync, rename over ``path``, fsync
    the directory: a crash leaves either the old or the new file, never a
    truncated one."""
    tmp = _temporary(path)
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read(path):
    """``torch.load(path, weights_only=True)`` onto the CPU, every failure a
    ``ValueError`` naming ``path``; checks that it holds a dict of :data:`FORMAT`."""
    try:
        size = os.path.getsize(path)
    except OSError as error:
        raise ValueError(f"checkpoint {path} cannot be read: {error}") from error
    if size == 0:
        raise ValueError(
            f"checkpoint {path} is empty (0 bytes): a run was killed before its first "
            "write completed, or it is not a checkpoint"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types here: name them all the same way
        text = str(error)
        unsafe = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if unsafe:
            raise ValueError(
                f"checkpoint {path} holds {unsafe.group(1)}, not plain data; it was refused without running it "
                f"(a {FORMAT} file "
                "holds only tensors, numbers, strings, lists and dicts)"
            ) from error
        lines = [line.strip() for line in text.split("WeightsUnpickler error:")[-1].splitlines() if line.strip()]
        raise ValueError(
            "checkpoint {} is not a readable torch file (truncated or corrupt?): {}: {}".format(
                path, type(error).__name__, lines[0] if lines else ""
            )
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise ValueError(f"checkpoint {path} is not a {FORMAT} file (found {found!r:.60})")
    return state


def load(path) -> dict:
    """
    Reads a checkpoint written by :func:`pyro_vi.training.fit` with
    ``torch.load(weights_only=True)``,
    so that loading can run no code, checks its layout and rebuilds the
    constraints of its params by name.

    :param path: the checkpoint file.
    :returns: the checkpoint's dict (keys ``format``, ``step``, ``epoch``,
        ``batch``, ``epoch_start``, ``fingerprint``, ``params``, ``optim``,
        ``history``, ``rng`` and ``state``), each param's ``"constraint"`` a
        :class:`~torch.distributions.constraints.Constraint`.
    :raises ValueError: naming ``path`` and the problem, for any file that is
        missing, empty, truncated, not a checkpoint, or holds a wrong layout.
    """
    state = _read(path)
    missing = [key for key in KEYS if key not in state]
    if missing:
        raise ValueError("checkpoint {} lacks {}".format(path, ", ".join(missing)))
    for key in ("step", "epoch", "batch"):
        if type(state[key]) is not int or state[key] < 0:
            raise ValueError(f"checkpoint {path}: {key} must be an integer >= 0, got {state[key]!r:.40}")
    for key in ("fingerprint", "params", "optim", "history", "state"):
        if not isinstance(state[key], dict):
            raise ValueError(f"checkpoint {path}: {key} must be a dict, got {type(state[key]).__name__}")
    _check_history(state["history"], state["step"], path)
    check_rng_state(state["rng"], f"checkpoint {path}: rng")
    start = state["epoch_start"]
    if start is not None:
        if not (
            isinstance(start, dict)
            and isinstance(start.get("generators"), list)
            and all(isinstance(g, torch.Tensor) for g in start["generators"])
        ):
            raise ValueError(f"checkpoint {path}: epoch_start must hold rng and a list of generator states")
        check_rng_state(start.get("rng"), f"checkpoint {path}: epoch_start['rng']")
    params = {}
    for name, record in state["params"].items():
        where = f"checkpoint {path}: param {name!r}"
        if not (isinstance(record, dict) and isinstance(record.get("value"), torch.Tensor)):
            raise ValueError(f"{where} must be {{'value': tensor, 'constraint': ...}}")
        params[name] = {"value": record["value"], "constraint": decode_constraint(record.get("constraint"), where)}
    return dict(state, params=params)


def _check_history(history, steps, path):
    if not {"losses", "tracked", "seconds", "epoch_steps"} <= set(history):
        raise ValueError(f"checkpoint {path}: history lacks losses, tracked, seconds or epoch_steps")
    losses = history["losses"]
    if not isinstance(losses, torch.Tensor) or len(losses) != steps:
        raise ValueError(f"checkpoint {path}: history['losses'] must hold its {steps} losses")
    if not (losses.dim() == 1 and losses.dtype == torch.float64):
        raise ValueError(f"checkpoint {path}: history['losses'] must be a 1-D float64 tensor")
    if not isinstance(history["tracked"], dict):
        raise ValueError(f"checkpoint {path}: history['tracked'] must be a dict")
    for name, values in history["tracked"].items():
        if not isinstance(values, torch.Tensor) or len(values) != steps:
            raise ValueError(f"checkpoint {path}: history['tracked'][{name!r}] must be a tensor of {steps} values")
    ends = history["epoch_steps"]
    if not (isinstance(ends, list) and all(type(e) is int and 0 < e <= steps for e in ends)):
        raise ValueError(f"checkpoint {path}: history['epoch_steps'] must be a list of step counts")


def _differences(saved, current, where=""):
    """Where two fingerprints differ, as lines of text."""
    if isinstance(saved, dict) and isinstance(current, dict):
        lines = []
        for key in sorted(set(saved) | set(current), key=str):
            at = f"{where}[{key!r}]" if where else str(key)
            if key not in current:
                lines.append(f"{at}: {saved[key]!r} in the checkpoint, absent here")
            elif key not in saved:
                lines.append(f"{at}: absent from the checkpoint, {current[key]!r} here")
            else:
                lines.extend(_differences(saved[key], current[key], at))
        return lines
    if isinstance(saved, torch.Tensor) or isinstance(current, torch.Tensor):
        same = (
            isinstance(saved, torch.Tensor)
            and isinstance(current, torch.Tensor)
            and (saved.shape == current.shape and torch.equal(saved.cpu(), current.cpu()))
        )
    else:
        same = type(saved) is type(current) and saved == current
    return [] if same else [f"{where}: {saved!r} in the checkpoint, {current!r} here"]


# ---- what a run saves, and what a resume must match ---------------------------


def describe_elbo(elbo) -> str:
    """The ELBO's class (a loss callable's name) and its ``num_particles``."""
    name = (
        type(elbo).__name__ if hasattr(elbo, "loss_and_grads") else getattr(elbo, "__qualname__", type(elbo).__name__)
    )
    particles = getattr(elbo, "num_particles", None)
    return name if particles is None else f"{name}(num_particles={particles})"


def describe_optim(optim) -> str:
    """The optimizer's torch class, and its LR scheduler's."""
    if type(optim) not in (PyroOptim, PyroLRScheduler):
        return type(optim).__name__
    name = getattr(optim.pt_optim_constructor, "__name__", "PyroOptim")
    if isinstance(optim, PyroLRScheduler):
        name = "{}({})".format(getattr(optim.pt_scheduler_constructor, "__name__", "scheduler"), name)
    return name


def _param_records(names) -> dict:
    store = dict(pyro.get_param_store().get_state()["constraints"])
    values = dict(pyro.get_param_store().named_parameters())
    return {
        name: {"value": values[name].detach(), "constraint": encode_constraint(store[name], f"param {name!r}")}
        for name in sorted(names)
    }


def _param_fingerprint(records) -> dict:
    """Shape, dtype and constraint of each param, as compared on resume."""
    return {
        name: {
            "shape": list(r["value"].shape),
            "dtype": str(r["value"].dtype).replace("torch.", ""),
            "constraint": constraint_label(r["constraint"]),
        }
        for name, r in records.items()
    }


def _optim_state(optim) -> dict:
    state = optim.get_state()
    if type(optim).get_state is PyroOptim.get_state:  # states loaded but not yet used
        state = dict(getattr(optim, "_state_waiting_to_be_consumed", {}), **state)
    return state


def contents(*, step, position, fingerprint, params, optim, history, state) -> dict:
    """
    The checkpoint of a run now, checked to be plain data.

    :param int step: the steps done.
    :param dict position: ``epoch``, ``batch`` and ``epoch_start``.
    :param dict fingerprint: the run's, without ``params`` (added here).
    :param params: the names of the run's params, read from the param store.
    :param optim: the :class:`~pyro.optim.PyroOptim`.
    :param dict history: the losses, tracked values, seconds and epoch ends.
    :param dict state: the caller's dict.
    """
    records = _param_records(params)
    saved = dict(
        format=FORMAT,
        step=step,
        **position,
        fingerprint=dict(fingerprint, params=_param_fingerprint(records)),
        params=records,
        optim=_optim_state(optim),
        history=history,
        rng=rng_state(),
        state=state,
    )
    check_plain(saved["optim"], "the optimizer's state")
    check_plain(saved["state"], "state")
    return saved


def to_resume(path, resume, overwrite):
    """The checkpoint at ``path`` that a run with ``resume`` and
    ``overwrite`` (as :func:`~pyro_vi.training.fit` takes them) continues,
    or ``None`` when it starts fresh; refuses a missing file to resume, an
    existing one to replace unasked, and a path that cannot be written. Removes
    the temporary files of killed runs."""
    _check_writable(path)
    _remove_stale_temporaries(path)
    exists = os.path.exists(path)
    if resume is True and not exists:
        raise ValueError(
            f"resume=True, but there is no checkpoint {path}; pass resume='allow_fresh' to start "
            "fresh when it is missing"
        )
    if not resume and exists and not overwrite:
        raise ValueError(f"checkpoint {path} exists: pass resume=True to continue it, or overwrite=True to replace it")
    return load(path) if resume and exists else None


def _refuse_differences(path, saved, current):
    """Refuses the checkpoint at ``path`` if the fingerprints ``saved`` (its
    own) and ``current`` (the run's) differ, listing where."""
    lines = _differences(saved, current)
    if lines:
        raise ValueError(
            "checkpoint {} belongs to another run:\n  {}\npass another checkpoint path, or "
            "resume=False with overwrite=True to start this run over there".format(path, "\n  ".join(lines))
        )


def check_resumable(saved, path, fingerprint, *, num_steps, epochs):
    """Refuses a checkpoint past the run's ``num_steps`` or ``epochs``, or
    whose fingerprint (but for the params) differs from the run's, listing
    the differences."""
    if num_steps is not None and saved["step"] > num_steps:
        raise ValueError("checkpoint {} is at step {}, past num_steps={}".format(path, saved["step"], num_steps))
    in_epoch = saved["epoch"] + (saved["batch"] > 0)
    if epochs is not None and in_epoch > epochs:
        raise ValueError(f"checkpoint {path} is in epoch {in_epoch}, past epochs={epochs}")
    ours = dict(saved["fingerprint"])
    ours.pop("params", None)
    _refuse_differences(path, ours, fingerprint)


def check_params(saved, params, optim, path):
    """Refuses a checkpoint whose params (names, shapes, dtypes,
    constraints) differ from ``params`` (``{name: unconstrained param}``, as
    set up), or whose optimizer state does not have the layout of ``optim``'s:
    for a :class:`~pyro.optim.PyroOptim`, one torch state dict per param
    (torch checks their contents when each param's optimizer is built)."""
    _refuse_differences(
        path, {"params": saved["fingerprint"].get("params")}, {"params": _param_fingerprint(_param_records(params))}
    )
    if type(optim).get_state is not PyroOptim.get_state:
        return
    keys = {"scheduler", "optimizer"} if isinstance(optim, PyroLRScheduler) else {"state", "param_groups"}
    for name, value in saved["optim"].items():
        if name not in params:
            raise ValueError(f"checkpoint {path}: optim holds a state for {name!r}, which is not a param of this run")
        if not isinstance(value, dict) or not keys <= set(value):
            raise ValueError(
                "checkpoint {}: optim[{!r}] must be a dict with {}".format(path, name, " and ".join(sorted(keys)))
            )
