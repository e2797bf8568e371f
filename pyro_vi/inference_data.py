"""
Guide draws as an :class:`arviz.InferenceData`, so that ArviZ's summaries, plots
and PSIS-LOO work on a variational posterior as they do on MCMC output.
"""

import contextlib
import random
from typing import TYPE_CHECKING, Dict, List, Optional

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.distributions import Independent, MaskedDistribution
from pyro.poutine.util import site_is_subsample

from ._optional import import_arviz
from .validation import boolean, function, integer

if TYPE_CHECKING:
    import arviz

__all__ = ["to_inference_data"]


@contextlib.contextmanager
def _seeded(seed: Optional[int]):
    """Seeds Pyro's RNGs (torch, python, numpy) and restores the global state after."""
    if seed is None:
        yield
        return
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            pyro.set_rng_seed(seed)
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def _check_draws(num_samples, num_chains):
    num_samples = integer("num_samples", num_samples, minimum=1)
    num_chains = integer("num_chains", num_chains, minimum=1)
    if num_samples % num_chains:
        raise ValueError(f"num_samples={num_samples} is not divisible by num_chains={num_chains}")
    return num_samples, num_chains


def _check_seed(seed):
    return None if seed is None else integer("seed", seed, minimum=0, maximum=2**32 - 1)


def _is_deterministic(site: dict) -> bool:
    return bool(site["infer"].get("_deterministic", False))


def _is_latent(site: dict) -> bool:
    """A posterior variable: unobserved and not auxiliary, or a ``pyro.deterministic``."""
    if site["type"] != "sample" or site_is_subsample(site):
        return False
    if site["infer"].get("is_auxiliary", False):
        return False
    return not site["is_observed"] or _is_deterministic(site)


def _is_observed(site: dict) -> bool:
    """An observation: not a ``pyro.deterministic`` and not auxiliary (a
    ``pyro.factor`` is an auxiliary observed site: a term of the density, not data)."""
    return (
        site["type"] == "sample"
        and site["is_observed"]
        and not _is_deterministic(site)
        and not site["infer"].get("is_auxiliary", False)
    )


def _point_mask(site: dict) -> Optional[torch.Tensor]:
    """Which points (batch elements) of a site count in the model's density: the
    site's mask (``poutine.mask``, ``obs_mask``) and the masks of its distribution
    (``.mask()``), as a boolean tensor of the site's batch shape; ``None`` when
    all of them count. A point of an event masked in part counts."""
    value, fn = site["value"], site["fn"]
    shape = torch.broadcast_shapes(value.shape[: value.dim() - len(fn.event_shape)], fn.batch_shape)
    masks, event_dims = [(site["mask"], 0)], 0
    while fn is not None:
        if isinstance(fn, MaskedDistribution):
            masks.append((fn._mask, event_dims))
        if isinstance(fn, Independent):
            event_dims += fn.reinterpreted_batch_ndims
        fn = getattr(fn, "base_dist", None)
    mask = torch.ones(shape, dtype=torch.bool)
    for part, event_dims in masks:
        if part is None:
            continue
        part = torch.as_tensor(part, dtype=torch.bool)
        if event_dims:
            part = part.reshape((1,) * event_dims + part.shape)  # at least event_dims dims
            part = part.any(dim=tuple(range(-event_dims, 0)))
        mask = mask & part
    mask = torch.broadcast_to(mask, shape)
    return None if bool(mask.all()) else mask


def _check_no_subsampling(name: str, site: dict, who: str = "to_inference_data") -> None:
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.full_size != frame.size:
            raise ValueError(
                f"site {name!r} is in the subsampled plate {frame.name!r} ({frame.size} of {frame.full_size}); "
                f"{who} needs every data point"
            )


def _batch_dim_names(name: str, site: dict, batch_ndim: int) -> List[str]:
    """Plate names for the batch dims of a site, ``<site>_dim_<i>`` where no plate."""
    plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.dim is not None}
    return [plates.get(i - batch_ndim, f"{name}_dim_{i}") for i in range(batch_ndim)]


def _value_dim_names(name: str, site: dict) -> List[str]:
    value = site["value"]
    batch_ndim = value.dim() - len(site["fn"].event_shape)
    events = [f"{name}_dim_{i}" for i in range(batch_ndim, value.dim())]
    return _batch_dim_names(name, site, batch_ndim) + events


def _is_density_latent(site: dict) -> bool:
    """A latent site that the model's density depends on: not a
    ``pyro.deterministic`` and not masked out entirely."""
    if not _is_latent(site) or _is_deterministic(site):
        return False
    mask = _point_mask(site)
    return mask is None or bool(mask.any())


def _check_guide_covers(guide_trace, model_trace, who: str, enumerated_refused: Optional[str]) -> List[str]:
    """Refuses a guide that lacks a latent site of the model: the model replayed on
    the guide's draws would draw that site from its prior instead. Sites that the
    model enumerates (``infer={"enumerate": ...}``, summed out by TraceEnum_ELBO)
    and the guide lacks are returned when ``enumerated_refused`` is None, and
    refused with that reason otherwise."""
    missing = [
        name
        for name, site in model_trace.nodes.items()
        if _is_density_latent(site) and (name not in guide_trace.nodes or guide_trace.nodes[name]["type"] != "sample")
    ]
    enumerated = [n for n in missing if model_trace.nodes[n]["infer"].get("enumerate")]
    if enumerated_refused is None:
        missing = [n for n in missing if n not in enumerated]
    if missing:
        raise ValueError(
            "the guide has no sample site for the model's latent site(s) {}: {} would draw "
            "them from the model's prior, not from the approximate posterior; add them to the "
            "guide (an autoguide such as AutoNormal has every latent site), or condition the "
            "model on their values{}".format(
                ", ".join(repr(n) for n in missing),
                who,
                ""
                if not enumerated or enumerated_refused is None
                else "; the model enumerates {}: {}".format(", ".join(repr(n) for n in enumerated), enumerated_refused),
            )
        )
    return enumerated


def _guide_and_model_traces(model, guide, args, kwargs, who: str, enumerated_refused: Optional[str]):
    """One guide draw, the model replayed on it (the guide checked to cover the
    model), and the enumerated model sites that the guide leaves out."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
    summed_out = _check_guide_covers(guide_trace, model_trace, who, enumerated_refused)
    return guide_trace, model_trace, summed_out


def _joint_traces(model, guide, args, kwargs, predictive: bool, enumerated_refused: Optional[str]):
    """One guide draw, the model replayed on it, and optionally a posterior
    predictive run; and the enumerated sites the guide leaves out."""
    guide_trace, model_trace, summed_out = _guide_and_model_traces(
        model, guide, args, kwargs, "to_inference_data", enumerated_refused
    )
    predictive_trace = None
    if predictive:
        unconditioned = poutine.uncondition(poutine.replay(model, trace=guide_trace))
        predictive_trace = poutine.trace(unconditioned).get_trace(*args, **kwargs)
    return (model_trace, predictive_trace), summed_out


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _stack(name: str, values: List[torch.Tensor], num_chains: int) -> np.ndarray:
    """(num_samples, *shape) draws -> (chain, draw, *shape)."""
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) != 1:
        raise ValueError(f"site {name!r} changes shape between draws: {sorted(shapes)}")
    stacked = np.stack([_numpy(v) for v in values])
    return stacked.reshape((num_chains, len(values) // num_chains) + stacked.shape[1:])


def _dataset(data: Dict[str, np.ndarray], dims: Dict[str, List[str]], sample_dims=None, coords=None):
    return import_arviz("to_inference_data").dict_to_dataset(
        data, library=pyro, dims=dims, default_dims=sample_dims, coords=coords
    )


def to_inference_data(
    model,
    guide,
    *args,
    num_samples: int = 1000,
    num_chains: int = 4,
    observed: Optional[Dict[str, torch.Tensor]] = None,
    posterior_predictive: bool = True,
    log_likelihood: bool = True,
    seed: Optional[int] = None,
    **kwargs,
) -> "arviz.InferenceData":
    r"""
    Draws ``num_samples`` joint samples :math:`z_s \sim q(z)` from the guide, replays
    the model on each, and packs them into an :class:`arviz.InferenceData`.

    Guide draws are independent, so splitting them into ``num_chains`` "chains" of
    ``num_samples // num_chains`` draws each is legitimate: ``az.summary`` then
    reports ``r_hat`` close to 1 and ``ess`` close to ``num_samples`` (a check on
    the Monte Carlo error of the summaries, not on the quality of q).

    Groups:

    - ``posterior``: every latent model site (and every ``pyro.deterministic``),
      shape ``(chain, draw, *site_shape)``; auxiliary guide sites such as
      :class:`~pyro.infer.autoguide.AutoNormal`'s ``*_unconstrained`` are left out;
      points that the model masks out (``poutine.mask``, ``.mask()``, the
      ``<site>_unobserved`` site's observed points under ``obs_mask``) are NaN, and
      a site masked out entirely is left out; so are discrete sites that the model
      enumerates (``infer={"enumerate": ...}``, summed out by ``TraceEnum_ELBO``)
      and the guide does not sample, which is allowed only with
      ``log_likelihood=False`` and ``posterior_predictive=False`` (both would
      otherwise rest on prior draws of those sites);
    - ``posterior_predictive``: the observed sites re-sampled from the model given
      each guide draw (the model is run with its observations removed, as
      :class:`~pyro.infer.predictive.Predictive` does);
    - ``observed_data``: the observed values;
    - ``log_likelihood``: per observed site, the pointwise unscaled
      :math:`\log p(x_n \mid z_s)` = ``site["fn"].log_prob(site["value"])``,
      shape ``(chain, draw, *batch_shape)``, e.g. ``(chain, draw, N)``; this is
      what ``az.loo`` and ``az.waic`` need.

    Masked observations: the three observation groups hold only the points that
    count in the model's density. For an observed site masked in part
    (``.mask(m)``, ``poutine.mask``, or ``obs_mask``, whose observed points are the
    site ``<site>_observed``), the batch dimensions are replaced by one dimension
    ``<site>_point`` whose coordinates are the flat indices of the observed points,
    so ``az.loo`` sees exactly the observed points; a site masked out entirely is
    left out. ``pyro.factor`` sites are terms of the density, not observations:
    they are in none of the groups.

    Dimensions inside plates are named after the plate (a plate ``"data"`` gives a
    dimension ``"data"``); other dimensions are named ``<site>_dim_<i>``.
    Subsampled plates are not supported.

    :param callable model: the Pyro model.
    :param callable guide: the Pyro guide (any, including autoguides); it must
        sample every latent site of the model.
    :param int num_samples: number of guide draws, divisible by ``num_chains``.
    :param int num_chains: number of chains to split the draws into.
    :param dict observed: optional site name -> value; the model is conditioned on
        it with :func:`pyro.poutine.condition`, so those sites count as observed.
    :param bool posterior_predictive: whether to add the ``posterior_predictive`` group.
    :param bool log_likelihood: whether to add the ``log_likelihood`` group.
    :param int seed: optional seed in ``[0, 2**32 - 1]``; the global RNG states
        (torch, python, numpy) are restored afterwards.
    :returns: the inference data.
    :rtype: arviz.InferenceData
    :raises ImportError: naming ``pip install "pyro_vi[arviz]"`` when ArviZ is
        not installed.
    :raises ValueError: before any draw, for a bad argument (a ``num_samples`` or
        ``num_chains`` that is not a positive integer, a ``num_samples`` not
        divisible by ``num_chains``, ...); at the first draw, for ``observed``
        names that are not sample sites of the model, a ``model`` with no latent
        sites, a guide that lacks a latent site of the model (naming it), or a
        subsampled plate; for a mask or shape that changes between draws.
    """
    arviz = import_arviz("to_inference_data")
    function("model", model)
    function("guide", guide)
    num_samples, num_chains = _check_draws(num_samples, num_chains)
    if observed is not None and (not isinstance(observed, dict) or not all(isinstance(k, str) for k in observed)):
        raise ValueError(f"observed must be a dict site name -> value, got {observed!r:.60}")
    posterior_predictive = boolean("posterior_predictive", posterior_predictive)
    log_likelihood = boolean("log_likelihood", log_likelihood)
    seed = _check_seed(seed)
    if observed is not None:
        model = poutine.condition(model, data=observed)
    with _seeded(seed), torch.no_grad():
        # enumerated sites the guide lacks are left out, unless the observation groups need them
        enumerated_refused = (
            None
            if not (log_likelihood or posterior_predictive)
            else ("to_inference_data leaves them out only with log_likelihood=False and posterior_predictive=False")
        )
        first, summed_out = _joint_traces(model, guide, args, kwargs, posterior_predictive, enumerated_refused)
        _check_sites(first[0], observed)
        traces = [first] + [
            _joint_traces(model, guide, args, kwargs, posterior_predictive, enumerated_refused)[0]
            for _ in range(num_samples - 1)
        ]
        groups = _groups(traces, num_chains, posterior_predictive, log_likelihood, summed_out)
    return arviz.InferenceData(**groups)


def _fixed_mask(name: str, traces, which: int) -> Optional[np.ndarray]:
    """The point mask of site ``name`` (see :func:`_point_mask`), the same in every draw."""
    masks = [_point_mask(t[which].nodes[name]) for t in traces]
    first = masks[0]
    for mask in masks[1:]:
        if (mask is None) != (first is None) or (mask is not None and not torch.equal(mask, first)):
            raise ValueError(
                f"the mask of site {name!r} changes between draws; to_inference_data needs the same "
                "points observed in every draw"
            )
    return None if first is None else _numpy(first)


def _nan_where(array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(chain, draw, *batch, *event)`` draws with NaN where ``mask`` (``batch``) is False."""
    array = array.astype(np.result_type(array.dtype, np.float32), copy=True)
    array[:, :, ~mask] = np.nan
    return array


def _groups(traces, num_chains: int, posterior_predictive: bool, log_likelihood: bool, summed_out: List[str]):
    first = traces[0][0]
    latent, masks = [], {}
    for name, site in first.nodes.items():
        if _is_latent(site) and name not in summed_out:
            masks[name] = None if _is_deterministic(site) else _fixed_mask(name, traces, 0)
            if masks[name] is None or masks[name].any():
                latent.append(name)
    obs = []
    for name, site in first.nodes.items():
        if _is_observed(site):
            masks[name] = _fixed_mask(name, traces, 0)
            if masks[name] is None or masks[name].any():
                obs.append(name)

    def stack(name, which):
        return _stack(name, [t[which].nodes[name]["value"] for t in traces], num_chains)

    posterior = {n: stack(n, 0) for n in latent}
    posterior = {n: v if masks[n] is None else _nan_where(v, masks[n]) for n, v in posterior.items()}
    groups = {"posterior": _dataset(posterior, {n: _value_dim_names(n, first.nodes[n]) for n in latent})}
    if not obs:
        return groups
    points = _ObservedPoints(first, obs, masks)
    groups["observed_data"] = _dataset(
        {n: points.select(n, _numpy(first.nodes[n]["value"]), 0) for n in obs},
        points.value_dims,
        sample_dims=[],
        coords=points.coords,
    )
    if posterior_predictive:
        groups["posterior_predictive"] = _dataset(
            {n: points.select(n, stack(n, 1), 2) for n in obs}, points.value_dims, coords=points.coords
        )
    if log_likelihood:
        groups["log_likelihood"] = _log_likelihood(traces, obs, num_chains, points)
    return groups


class _ObservedPoints:
    """The observed points of each observed site and the dimension names that go
    with them: the site's batch dims, or one ``<site>_point`` dim (coordinates: the
    flat indices of the observed points) when the site is masked in part."""

    def __init__(self, trace, obs: List[str], masks: Dict[str, Optional[np.ndarray]]):
        self.masks = {n: masks[n] for n in obs}
        self.value_dims, self.batch_dims, self.coords = {}, {}, {}
        for name in obs:
            site = trace.nodes[name]
            dims = _value_dim_names(name, site)
            batch_ndim = len(dims) - len(site["fn"].event_shape)
            mask = self.masks[name]
            if mask is not None:
                point = f"{name}_point"
                self.coords[point] = np.flatnonzero(mask)
                dims = [point] + dims[batch_ndim:]
                batch_ndim = 1
            self.value_dims[name], self.batch_dims[name] = dims, dims[:batch_ndim]

    def select(self, name: str, array: np.ndarray, leading: int) -> np.ndarray:
        """``array`` (``leading`` sample dims, then the site's batch dims) at the observed points."""
        mask = self.masks[name]
        return array if mask is None else array[(slice(None),) * leading + (mask,)]


def _check_sites(trace, observed) -> None:
    if observed is not None:
        unknown = [n for n in observed if n not in trace.nodes or trace.nodes[n]["type"] != "sample"]
        if unknown:
            raise ValueError(f"observed names {unknown} are not sample sites of the model")
    if not any(_is_latent(site) for site in trace.nodes.values()):
        raise ValueError("model has no latent sample sites: nothing to put in the posterior")
    for name, site in trace.nodes.items():
        if _is_latent(site) or _is_observed(site):
            _check_no_subsampling(name, site)


def _log_likelihood(traces, obs: List[str], num_chains: int, points: "_ObservedPoints"):
    """Pointwise unscaled log-likelihood of each observed site at its observed
    points, (chain, draw, *batch) or (chain, draw, <site>_point)."""
    data = {}
    for name in obs:
        values = [t.nodes[name]["fn"].log_prob(t.nodes[name]["value"]) for t, _ in traces]
        data[name] = points.select(name, _stack(name, values, num_chains), 2)
    return _dataset(data, points.batch_dims, coords=points.coords)
