"""
Diagnostics for variational inference: the sampling distribution of any ELBO's
gradient estimator, the Pareto k-hat of the importance weights p(x, z) / q(z),
and what a step costs, timed side by side with other steps.

References

[1] `Black Box Variational Inference`,
    Rajesh Ranganath, Sean Gerrish, David M. Blei (2014)
[2] `Pareto Smoothed Importance Sampling`,
    Aki Vehtari, Daniel Simpson, Andrew Gelman, Yuling Yao, Jonah Gabry (2015/2024)
[3] `Yes, but Did It Work?: Evaluating Variational Inference`,
    Yuling Yao, Aki Vehtari, Daniel Simpson, Andrew Gelman (2018)
"""

import collections.abc
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np
import pyro
import torch
from pyro.infer import SVI
from pyro.optim import Adam, PyroOptim
from pyro.poutine.messenger import Messenger

from ._optional import import_arviz
from .inference_data import _check_no_subsampling, _check_seed, _guide_and_model_traces, _seeded
from .particles.pyro_compat import param_leaf
from .validation import function, instance, integer

__all__ = [
    "GradientStats",
    "fresh_svi_step",
    "gradient_statistics",
    "gradient_variance_table",
    "log_importance_weights",
    "machine",
    "psis_khat",
    "step_time_ratios",
    "step_time_table",
    "step_times",
]


@dataclass(frozen=True)
class GradientStats:
    r"""
    Per-element summary of ``num_draws`` independent draws :math:`g_1, \dots, g_D`
    of a stochastic gradient with respect to one (unconstrained) parameter.

    :ivar torch.Tensor mean: :math:`\bar g = \frac{1}{D} \sum_d g_d`.
    :ivar torch.Tensor variance: the unbiased
        :math:`\frac{1}{D - 1} \sum_d (g_d - \bar g)^2`.
    :ivar int num_draws: :math:`D`.
    """

    mean: torch.Tensor
    variance: torch.Tensor
    num_draws: int

    @property
    def snr(self) -> torch.Tensor:
        r"""
        Signal-to-noise ratio :math:`|\bar g| / \sqrt{\mathrm{variance}}`,
        ``inf`` where the variance is zero and the mean is not, ``nan`` where
        both are zero (a parameter the objective does not depend on).
        """
        return self.mean.abs() / self.variance.sqrt()

    @property
    def standard_error(self) -> torch.Tensor:
        r"""Monte Carlo standard error of the mean, :math:`\sqrt{\mathrm{variance} / D}`."""
        return (self.variance / self.num_draws).sqrt()

    @property
    def total_variance(self) -> float:
        """Sum of the element variances (the trace of the covariance)."""
        return self.variance.sum().item()


def _summarize(draws: torch.Tensor) -> GradientStats:
    """Mean and unbiased variance over the leading dimension of ``draws``."""
    draws64 = draws.double()
    mean = draws64.mean(0)
    variance = draws64.var(0, correction=1)
    return GradientStats(
        mean=mean.to(draws.dtype),
        variance=variance.to(draws.dtype),
        num_draws=draws.shape[0],
    )


class _SetAsideGradients(Messenger):
    """At the first param site of each parameter in a call, before any
    backward pass of that call: keeps the parameter's ``.grad`` in ``saved``
    (the first time in the whole run only) and clears it. Works for Pyro's
    param store and for module-local :class:`~pyro.nn.PyroModule` parameters
    alike, which the param store does not list."""

    def __init__(self, saved):
        super().__init__()
        self.saved = saved  # id(leaf) -> (leaf, its .grad before the first draw)
        self.params = {}  # name -> unconstrained leaf, met in this call

    def _pyro_post_param(self, msg):
        if msg["name"] in self.params:
            return  # met before in this call: a backward pass may have run since
        leaf = param_leaf(msg["value"])
        self.params[msg["name"]] = leaf
        self.saved.setdefault(id(leaf), (leaf, leaf.grad))
        leaf.grad = None


def _one_draw(elbo, model, guide, args, kwargs, saved) -> Dict[str, torch.Tensor]:
    """One call of ``elbo.loss_and_grads``; returns name -> gradient, clearing ``.grad``."""
    with _SetAsideGradients(saved) as capture:
        elbo.loss_and_grads(model, guide, *args, **kwargs)
    grads = {}
    for name, param in capture.params.items():
        grad = param.grad
        grads[name] = torch.zeros_like(param) if grad is None else grad.detach().clone()
        param.grad = None
    return grads


def _stack_draws(draws: List[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """Stacks per-draw gradients; a parameter absent from a draw got a zero gradient."""
    templates: Dict[str, torch.Tensor] = {}
    for draw in draws:
        for name, grad in draw.items():
            templates.setdefault(name, grad)
    return {
        name: torch.stack([draw.get(name, torch.zeros_like(template)) for draw in draws])
        for name, template in templates.items()
    }


def gradient_statistics(
    elbo,
    model,
    guide,
    *args,
    num_draws: int = 100,
    params: Optional[Iterable[str]] = None,
    **kwargs,
) -> Dict[str, GradientStats]:
    r"""
    Mean, variance and signal-to-noise ratio of the gradient estimator of ``elbo``
    at the current parameter values.

    Calls ``elbo.loss_and_grads(model, guide, *args, **kwargs)`` ``num_draws``
    times without any optimizer step and collects the gradient of every parameter
    the call touches (at its param sites, as :class:`~pyro.infer.svi.SVI` finds
    them; module-local :class:`~pyro.nn.PyroModule` parameters too). Gradients
    are of the *loss* (the negative ELBO) with respect to the *unconstrained*
    parameter, i.e. what the optimizer sees. Gradients are cleared between draws
    and any ``.grad`` present before the call is restored afterwards; parameter
    values are not changed.

    :param elbo: any object with Pyro's ``loss_and_grads`` interface, e.g. an
        instance of :class:`~pyro.infer.elbo.ELBO`.
    :param callable model: the Pyro model.
    :param callable guide: the Pyro guide.
    :param int num_draws: number of independent gradient draws (at least 2).
    :param params: optional names of the parameters to report; all touched
        parameters by default.
    :returns: parameter name -> :class:`GradientStats`.
    :rtype: dict
    :raises ValueError: before any draw, for an ``elbo`` without
        ``loss_and_grads`` (e.g. the class instead of an instance), a ``model`` or
        ``guide`` that is not callable, a ``num_draws`` that is not an integer
        >= 2 (a variance needs two draws) or ``params`` that are not names;
        after the draws, if a requested parameter is never touched.
    """
    instance("elbo", elbo, "loss_and_grads", "an ELBO instance such as pyro.infer.Trace_ELBO()")
    function("model", model)
    function("guide", guide)
    num_draws = integer("num_draws", num_draws, minimum=2)
    if params is not None:
        if not isinstance(params, str) and isinstance(params, collections.abc.Iterable):
            params = list(params)
        if not isinstance(params, list) or not all(isinstance(name, str) for name in params):
            raise ValueError(f"params must be a list of param names, got {params!r:.60}")
    saved = {}
    try:
        draws = [_one_draw(elbo, model, guide, args, kwargs, saved) for _ in range(num_draws)]
    finally:
        for leaf, grad in saved.values():
            leaf.grad = grad
    stacked = _stack_draws(draws)
    if params is not None:
        missing = [name for name in params if name not in stacked]
        if missing:
            raise ValueError(f"params {missing} were not touched by the ELBO; touched: {sorted(stacked)}")
        stacked = {name: stacked[name] for name in params}
    return {name: _summarize(draws) for name, draws in stacked.items()}


def _ratio_string(value: float, reference: float) -> str:
    if reference == 0.0:
        return "1" if value == 0.0 else "inf"
    return f"{value / reference:.3g}"


def gradient_variance_table(stats_by_estimator: Dict[str, Dict[str, GradientStats]], reference: str) -> str:
    """
    Plain-text table of the total gradient variance of every parameter under every
    estimator, and its ratio to the ``reference`` estimator's.

    :param dict stats_by_estimator: estimator name -> the output of
        :func:`gradient_statistics`.
    :param str reference: the estimator the ratios are taken against.
    :returns: the table, one row per (parameter, estimator).
    :rtype: str
    :raises ValueError: if ``reference`` is not a key of ``stats_by_estimator``.
    """
    if not isinstance(stats_by_estimator, dict) or not all(
        isinstance(stats, dict) and all(isinstance(v, GradientStats) for v in stats.values())
        for stats in stats_by_estimator.values()
    ):
        raise ValueError(
            "stats_by_estimator must be a dict estimator name -> gradient_statistics(...) output, "
            f"got {stats_by_estimator!r:.60}"
        )
    if reference not in stats_by_estimator:
        raise ValueError(f"reference={reference!r} is not one of the estimators {list(stats_by_estimator)}")
    names = list(stats_by_estimator[reference])
    for stats in stats_by_estimator.values():
        names += [name for name in stats if name not in names]
    header = ("parameter", "estimator", "variance", "ratio to " + reference)
    rows = []
    for name in names:
        ref = stats_by_estimator[reference].get(name)
        for estimator, stats in stats_by_estimator.items():
            if name not in stats:
                rows.append((name, estimator, "n/a", "n/a"))
                continue
            value = stats[name].total_variance
            ratio = "n/a" if ref is None else _ratio_string(value, ref.total_variance)
            rows.append((name, estimator, f"{value:.4g}", ratio))
    return _text_table(header, rows)


def _text_table(header, rows) -> str:
    """``header`` and ``rows`` (tuples of str) in left-aligned columns, a rule under the header."""
    widths = [max(len(row[i]) for row in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in [header] + rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


_MIN_PSIS_DRAWS = 21  # arviz fits the tail's ceil(min(S/5, 3 sqrt(S))) > 4 weights


def psis_khat(log_weights) -> float:
    r"""
    Pareto-smoothed importance sampling diagnostic :math:`\hat k` [2] of the
    importance weights :math:`w_s = p(x, z_s) / q(z_s)`, :math:`z_s \sim q`.

    A generalized Pareto distribution is fit to the largest weights; its shape
    :math:`\hat k` estimates how heavy the tail of :math:`w` is. Following [2, 3]:
    :math:`\hat k < 0.5` means q is a good importance proposal for p and the
    variational posterior is trustworthy; :math:`0.5 \le \hat k < 0.7` is usable;
    :math:`\hat k \ge 0.7` means importance sampling (and likely q) is unreliable.
    Uses :func:`arviz.psislw` with ``reff=1`` (independent draws from q).

    :param log_weights: 1-D tensor or array of
        :math:`\log p(x, z_s) - \log q(z_s)` (any additive constant is
        irrelevant), e.g. ``log_importance_weights(model, guide, data)``.
    :returns: :math:`\hat k`; ``-inf`` when all weights are equal (q = p up to a
        constant on the draws) and ``inf`` when the tail cannot be fit (ties).
    :rtype: float
    :raises ValueError: if the input is not 1-D, not finite, or has fewer than
        21 values (the tail fit needs at least 5 of them).
    :raises ImportError: naming ``pip install "pyro_vi[arviz]"`` when ArviZ is
        not installed.
    """
    if isinstance(log_weights, torch.Tensor):
        log_weights = log_weights.detach().cpu().numpy()
    raw = np.asarray(log_weights)
    if raw.dtype.kind not in "iuf":
        raise ValueError(
            f"log_weights must be a 1-D tensor or array of numbers, got {type(log_weights).__name__} of dtype "
            f"{raw.dtype}; compute it "
            "with log_importance_weights(model, guide, *args)"
        )
    log_weights = raw.astype(np.float64)
    if log_weights.ndim != 1:
        raise ValueError(f"log_weights must be 1-D, got shape {log_weights.shape}")
    if log_weights.size < _MIN_PSIS_DRAWS:
        raise ValueError(f"log_weights has {log_weights.size} values; PSIS needs at least {_MIN_PSIS_DRAWS}")
    if not np.all(np.isfinite(log_weights)):
        raise ValueError("log_weights must be finite (found nan or inf)")
    if np.all(log_weights == log_weights[0]):
        return -math.inf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # arviz warns when k > 0.7; we return k
        _, khat = import_arviz("psis_khat").psislw(log_weights, reff=1.0)
    return float(khat)


def log_importance_weights(
    model, guide, *args, num_samples: int = 1000, seed: Optional[int] = None, **kwargs
) -> torch.Tensor:
    r"""
    The log importance weights :math:`\log p(x, z_s) - \log q(z_s)`,
    :math:`z_s \sim q`, of ``num_samples`` independent guide draws: what
    :func:`psis_khat` takes, e.g.
    ``psis_khat(log_importance_weights(model, guide, data))``.

    Each draw runs the guide, replays the model on it, and takes the difference of
    the traces' log densities (masks included, as Pyro's ELBOs do; auxiliary guide
    sites, such as an autoguide's, are part of :math:`\log q`).

    :param callable model: the Pyro model, called as ``model(*args, **kwargs)``.
    :param callable guide: the Pyro guide; it must sample every latent site of
        the model.
    :param int num_samples: the number of draws (>= 1; :func:`psis_khat` needs
        at least 21).
    :param int seed: optional seed in ``[0, 2**32 - 1]``; the global RNG states
        (torch, python, numpy) are restored afterwards.
    :returns: a float64 tensor of shape ``(num_samples,)``.
    :rtype: torch.Tensor
    :raises ValueError: before any draw, for a bad argument; at the first draw,
        for a guide that lacks a latent site of the model (naming it) or a
        subsampled plate (the weights of a subsample are not those of the model).
    """
    function("model", model)
    function("guide", guide)
    num_samples = integer("num_samples", num_samples, minimum=1)
    seed = _check_seed(seed)
    weights = []
    with _seeded(seed), torch.no_grad():
        for _ in range(num_samples):
            guide_trace, model_trace, _ = _guide_and_model_traces(
                model,
                guide,
                args,
                kwargs,
                "log_importance_weights",
                enumerated_refused="log importance weights need every latent site in the guide",
            )
            if not weights:
                for name, site in model_trace.nodes.items():
                    if site["type"] == "sample":
                        _check_no_subsampling(name, site, "log_importance_weights")
            weights.append(model_trace.log_prob_sum() - guide_trace.log_prob_sum())
    return torch.stack(weights).to(torch.float64)


# ---------------------------------------------------------------------------
# what a step costs, measured side by side


def fresh_svi_step(model, guide, elbo, *args, optim=None, **kwargs) -> Callable[[], float]:
    """
    A step of a fresh :class:`~pyro.infer.svi.SVI`, for :func:`step_times`:
    clears the param store (the first call creates the parameters anew) and
    returns ``lambda: svi.step(*args, **kwargs)`` for
    ``svi = SVI(model, guide, optim, elbo)``.

    :param elbo: an ELBO instance (anything with ``loss_and_grads``).
    :param optim: a :class:`pyro.optim.PyroOptim`; ``Adam({"lr": 1e-3})`` by default.
    :returns: the step, a zero-argument callable that returns the loss.
    :raises ValueError: for an ``elbo`` without ``loss_and_grads``, a
        ``model`` or ``guide`` that is not callable, or an ``optim`` that is
        not a Pyro optimizer.
    """
    instance("elbo", elbo, "loss_and_grads", "an ELBO instance such as pyro.infer.Trace_ELBO()")
    function("model", model)
    function("guide", guide)
    if optim is not None and not isinstance(optim, PyroOptim):
        raise ValueError(f"optim must be a pyro.optim optimizer such as Adam({{'lr': 1e-3}}), got {optim!r:.60}")
    pyro.clear_param_store()
    svi = SVI(model, guide, Adam({"lr": 1e-3}) if optim is None else optim, elbo)
    return lambda: svi.step(*args, **kwargs)


def _seconds_per_step(step, num_steps) -> float:
    step()  # untimed: creates the parameters, fills caches
    start = time.perf_counter()
    for _ in range(num_steps):
        step()
    return (time.perf_counter() - start) / num_steps


def step_times(
    steps: Dict[str, Callable[[], Callable]], *, rounds: int = 5, num_steps: int = 20
) -> Dict[str, List[float]]:
    """
    Seconds per step of each of ``steps``, timed side by side. In each of
    ``rounds`` rounds, every ``steps[name]()`` in turn builds a fresh step (a
    zero-argument callable such as :func:`fresh_svi_step` returns), which is
    called once untimed and then ``num_steps`` times on the clock. The steps
    of a round share the machine's load, so their ratios
    (:func:`step_time_ratios`) hold on a busy machine where times taken one
    after the other do not. The steps run in a param store of their own;
    yours is put back afterwards. A step on a GPU must wait for its work
    before it returns, as ``SVI.step`` does (it returns the loss as a float).

    :param dict steps: name -> a zero-argument factory of a step.
    :param int rounds: rounds (>= 1).
    :param int num_steps: timed calls of a step per round (>= 1).
    :returns: name -> seconds per step in each round.
    :rtype: dict
    :raises ValueError: before any step, for ``steps`` that is not a non-empty
        dict of names to factories or a bad count; at the first round, for a
        factory whose result cannot be called.
    """
    if (
        not isinstance(steps, dict)
        or not steps
        or not all(isinstance(n, str) and callable(f) for n, f in steps.items())
    ):
        raise ValueError(
            "steps must be a non-empty dict name -> zero-argument factory of a step, e.g. "
            f"{{'Trace_ELBO': lambda: fresh_svi_step(model, guide, Trace_ELBO(), data)}}, got {steps!r:.80}"
        )
    rounds = integer("rounds", rounds, minimum=1)
    num_steps = integer("num_steps", num_steps, minimum=1)
    times = {name: [] for name in steps}
    with pyro.get_param_store().scope():
        for _ in range(rounds):
            for name, make in steps.items():
                step = make()
                if not callable(step):
                    raise ValueError(f"steps[{name!r}]() must return the step to time (a callable), got {step!r:.60}")
                times[name].append(_seconds_per_step(step, num_steps))
    return times


def _check_times(times, reference) -> None:
    if not isinstance(times, dict) or not times or not all(isinstance(t, list) and t for t in times.values()):
        raise ValueError(f"times must be step_times(...)'s output, a dict name -> seconds per round, got {times!r:.60}")
    if reference not in times:
        raise ValueError(f"reference={reference!r} is not one of the timed steps {list(times)}")
    positive = all(isinstance(s, (int, float)) and s > 0 for t in times.values() for s in t)
    if len({len(t) for t in times.values()}) > 1 or not positive:
        raise ValueError("times must hold the same number of rounds for every step, each a positive time in seconds")


def step_time_ratios(times: Dict[str, List[float]], reference: str) -> Dict[str, dict]:
    r"""
    Per step of ``times`` (:func:`step_times`' output): the median milliseconds
    per step over the rounds, and the ratio :math:`t_r / t^\mathrm{ref}_r` of
    its time to ``reference``'s in the same round :math:`r`, with its median,
    lowest and highest over the rounds.

    :returns: name -> ``{"ms_per_step", "ratio", "ratio_low", "ratio_high",
        "ms_per_step_rounds", "ratio_rounds"}``.
    :rtype: dict
    :raises ValueError: if ``reference`` is not timed, or the steps were not timed in the same rounds.
    """
    _check_times(times, reference)
    table = {}
    for name, seconds in times.items():
        per_round = [t / r for t, r in zip(seconds, times[reference])]
        table[name] = {
            "ms_per_step": 1e3 * float(np.median(seconds)),
            "ratio": float(np.median(per_round)),
            "ratio_low": float(np.min(per_round)),
            "ratio_high": float(np.max(per_round)),
            "ms_per_step_rounds": [1e3 * t for t in seconds],
            "ratio_rounds": per_round,
        }
    return table


def step_time_table(times: Dict[str, List[float]], reference: str) -> str:
    """
    Plain-text table of :func:`step_time_ratios`, one row per step, under a
    line that says where the times were taken (:func:`machine`): a time
    without its thread count says little.

    :rtype: str
    """
    rows = [
        (name, f"{row['ms_per_step']:.3g}", f"{row['ratio']:.3g}", f"{row['ratio_low']:.3g}-{row['ratio_high']:.3g}")
        for name, row in step_time_ratios(times, reference).items()
    ]
    where = machine()
    rounds, cores, threads = len(times[reference]), where["cpu_cores"], where["torch_threads"]
    caption = f"{rounds} round(s) on {where['cpu']} ({cores} core(s), {threads} torch thread(s))"
    return caption + "\n" + _text_table(("step", "ms/step", "ratio to " + reference, "lowest-highest"), rows)


def machine() -> dict:
    """Where a time was taken: CPU model, cores, torch threads,
    ``OMP_NUM_THREADS``, GPU, and the versions of Python, torch and Pyro."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpu_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "gpu": torch.cuda.is_available(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "pyro": pyro.__version__,
        "platform": platform.platform(terse=True),
    }
