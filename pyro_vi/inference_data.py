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
from pyro.poutine.util import site_is_subsample

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


def _check_arguments(num_samples: int, num_chains: int) -> None:
    if num_samples <= 0:
        raise ValueError("num_samples must be positive, got {}".format(num_samples))
    if num_chains <= 0:
        raise ValueError("num_chains must be positive, got {}".format(num_chains))
    if num_samples % num_chains:
        raise ValueError(
            "num_samples={} is not divisible by num_chains={}".format(
                num_samples, num_chains
            )
        )


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
    return site["type"] == "sample" and site["is_observed"] and not _is_deterministic(site)


def _check_no_subsampling(name: str, site: dict) -> None:
    for frame in site["cond_indep_stack"]:
        if frame.full_size is not None and frame.full_size != frame.size:
            raise ValueError(
                "site {!r} is in the subsampled plate {!r} ({} of {}); "
                "to_inference_data needs every data point".format(
                    name, frame.name, frame.size, frame.full_size
                )
            )


def _batch_dim_names(name: str, site: dict, batch_ndim: int) -> List[str]:
    """Plate names for the batch dims of a site, ``<site>_dim_<i>`` where no plate."""
    plates = {f.dim: f.name for f in site["cond_indep_stack"] if f.dim is not None}
    return [
        plates.get(i - batch_ndim, "{}_dim_{}".format(name, i))
        for i in range(batch_ndim)
    ]


def _value_dim_names(name: str, site: dict) -> List[str]:
    value = site["value"]
    batch_ndim = value.dim() - len(site["fn"].event_shape)
    events = ["{}_dim_{}".format(name, i) for i in range(batch_ndim, value.dim())]
    return _batch_dim_names(name, site, batch_ndim) + events


def _joint_traces(model, guide, args, kwargs, predictive: bool):
    """One guide draw, the model replayed on it, and optionally a posterior predictive run."""
    guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
    replayed = poutine.replay(model, trace=guide_trace)
    model_trace = poutine.trace(replayed).get_trace(*args, **kwargs)
    predictive_trace = None
    if predictive:
        unconditioned = poutine.uncondition(replayed)
        predictive_trace = poutine.trace(unconditioned).get_trace(*args, **kwargs)
    return model_trace, predictive_trace


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy()


def _stack(name: str, values: List[torch.Tensor], num_chains: int) -> np.ndarray:
    """(num_samples, *shape) draws -> (chain, draw, *shape)."""
    shapes = {tuple(v.shape) for v in values}
    if len(shapes) != 1:
        raise ValueError(
            "site {!r} changes shape between draws: {}".format(name, sorted(shapes))
        )
    stacked = np.stack([_numpy(v) for v in values])
    return stacked.reshape((num_chains, -1) + stacked.shape[1:])


def _dataset(data: Dict[str, np.ndarray], dims: Dict[str, List[str]], sample_dims=None):
    import arviz  # imported on use: arviz takes seconds to import

    return arviz.dict_to_dataset(
        data, library=pyro, dims=dims, default_dims=sample_dims
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
    - ``posterior_predictive``: the observed sites re-sampled from the model given
      each guide draw (the model is run with its observations removed, as
      :class:`~pyro.infer.predictive.Predictive` does);
    - ``observed_data``: the observed values;
    - ``log_likelihood``: per observed site, the pointwise unscaled
      :math:`\log p(x_n \mid z_s)` = ``site["fn"].log_prob(site["value"])``,
      shape ``(chain, draw, *batch_shape)``, e.g. ``(chain, draw, N)``; this is
      what ``az.loo`` and ``az.waic`` need.

    Dimensions inside plates are named after the plate (a plate ``"data"`` gives a
    dimension ``"data"``); other dimensions are named ``<site>_dim_<i>``.
    Subsampled plates are not supported.

    :param callable model: the Pyro model.
    :param callable guide: the Pyro guide (any, including autoguides).
    :param int num_samples: number of guide draws, divisible by ``num_chains``.
    :param int num_chains: number of chains to split the draws into.
    :param dict observed: optional site name -> value; the model is conditioned on
        it with :func:`pyro.poutine.condition`, so those sites count as observed.
    :param bool posterior_predictive: whether to add the ``posterior_predictive`` group.
    :param bool log_likelihood: whether to add the ``log_likelihood`` group.
    :param int seed: optional seed; the global RNG states (torch, python, numpy)
        are restored afterwards.
    :returns: the inference data.
    :rtype: arviz.InferenceData
    :raises ValueError: on a non-positive ``num_samples`` or ``num_chains``, a
        ``num_samples`` not divisible by ``num_chains``, ``observed`` names that
        are not sample sites of the model, or a ``model`` with no latent sites.
    """
    _check_arguments(num_samples, num_chains)
    if observed is not None:
        model = poutine.condition(model, data=observed)
    with _seeded(seed), torch.no_grad():
        traces = [_joint_traces(model, guide, args, kwargs, posterior_predictive)]
        _check_sites(traces[0][0], observed)
        traces += [
            _joint_traces(model, guide, args, kwargs, posterior_predictive)
            for _ in range(num_samples - 1)
        ]
        groups = _groups(traces, num_chains, posterior_predictive, log_likelihood)
    import arviz  # imported on use: arviz takes seconds to import

    return arviz.InferenceData(**groups)


def _groups(traces, num_chains: int, posterior_predictive: bool, log_likelihood: bool):
    first = traces[0][0]
    latent = [n for n, site in first.nodes.items() if _is_latent(site)]
    obs = [n for n, site in first.nodes.items() if _is_observed(site)]

    def stack(name, which):
        return _stack(name, [t[which].nodes[name]["value"] for t in traces], num_chains)

    groups = {
        "posterior": _dataset(
            {n: stack(n, 0) for n in latent},
            {n: _value_dim_names(n, first.nodes[n]) for n in latent},
        )
    }
    if not obs:
        return groups
    obs_dims = {n: _value_dim_names(n, first.nodes[n]) for n in obs}
    groups["observed_data"] = _dataset(
        {n: _numpy(first.nodes[n]["value"]) for n in obs}, obs_dims, sample_dims=[]
    )
    if posterior_predictive:
        groups["posterior_predictive"] = _dataset(
            {n: stack(n, 1) for n in obs}, obs_dims
        )
    if log_likelihood:
        groups["log_likelihood"] = _log_likelihood(traces, obs, num_chains)
    return groups


def _check_sites(trace, observed) -> None:
    if observed is not None:
        unknown = [n for n in observed if n not in trace.nodes
                   or trace.nodes[n]["type"] != "sample"]
        if unknown:
            raise ValueError(
                "observed names {} are not sample sites of the model".format(unknown)
            )
    if not any(_is_latent(site) for site in trace.nodes.values()):
        raise ValueError("model has no latent sample sites: nothing to put in the posterior")
    for name, site in trace.nodes.items():
        if _is_latent(site) or _is_observed(site):
            _check_no_subsampling(name, site)


def _log_likelihood(traces, obs: List[str], num_chains: int):
    """Pointwise unscaled log-likelihood of each observed site, (chain, draw, *batch)."""
    data, dims = {}, {}
    for name in obs:
        values = [t.nodes[name]["fn"].log_prob(t.nodes[name]["value"]) for t, _ in traces]
        data[name] = _stack(name, values, num_chains)
        dims[name] = _batch_dim_names(name, traces[0][0].nodes[name], values[0].dim())
    return _dataset(data, dims)
