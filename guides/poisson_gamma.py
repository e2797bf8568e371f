r"""Exponential variational family for :mod:`models.poisson_gamma` (course exercise 2E).

The family :math:`q(\lambda) = \mathrm{Exponential}(\theta)`, Pyro parameter
``"q_theta"`` (:math:`\theta > 0`), is **misspecified**: the exact posterior
:math:`\mathrm{Gamma}(\alpha + S, \beta + N)` is an exponential only when
:math:`\alpha + S = 1`. So :math:`\log p(X) - \mathcal{L}(\theta^*) =
\mathrm{KL}(q_{\theta^*} \,\|\, p(\cdot \mid X)) > 0` in general.

Expectations under :math:`q` (:math:`\gamma` is the Euler-Mascheroni constant):

.. math::

    E_q[\lambda] = 1 / \theta, \qquad
    E_q[\log\lambda] = -\gamma - \log\theta, \qquad
    \mathbb{H}[q] = 1 - \log\theta.

With :math:`S = \sum_n x_n`, the ELBO (:func:`elbo`) is

.. math::

    \mathcal{L}(\theta) &= E_q[\log p(X \mid \lambda)] + E_q[\log p(\lambda)] + \mathbb{H}[q]\\
      &= (\alpha + S - 1)(-\gamma - \log\theta) - \frac{\beta + N}{\theta}
         + \alpha\log\beta - \log\Gamma(\alpha) - \sum_n \log x_n! + 1 - \log\theta\\
      &= -(\alpha + S) \log\theta - \frac{\beta + N}{\theta} + \text{const}.

Its stationary point: :math:`\partial_\theta \mathcal{L} = -(\alpha + S)/\theta +
(\beta + N)/\theta^2 = 0` gives

.. math::

    \theta^* = \frac{\beta + N}{\alpha + S}, \qquad
    \partial^2_\theta \mathcal{L}(\theta^*) = \frac{\alpha + S}{\theta^{*2}}
        - \frac{2 (\beta + N)}{\theta^{*3}} = -\frac{\alpha + S}{\theta^{*2}} < 0,

the unique maximum (in :math:`u = \log\theta`, :math:`\mathcal{L} = -(\alpha + S) u -
(\beta + N) e^{-u} + \text{const}` is strictly concave). At :math:`\theta^*` the
variational mean :math:`1/\theta^*` equals the posterior mean :math:`(\alpha + S) /
(\beta + N)`, while the variational variance :math:`1/\theta^{*2}` exceeds the
posterior's by the factor :math:`\alpha + S`. :func:`optimal_theta` finds
:math:`\theta^*` **numerically** (safeguarded Newton on :math:`\partial_u \mathcal{L}`
by autograd, never using the formula above), so that it serves as an independent
reference for estimators and for that formula.

References

1. R. Ranganath, S. Gerrish, D. M. Blei, *Black Box Variational Inference*, AISTATS 2014.
2. D. M. Blei, A. Kucukelbir, J. D. McAuliffe, *Variational Inference: A Review for
   Statisticians*, JASA 2017.
"""

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Union

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from guides._cavi import CaviResult, autograd_gradient, check_settings, coordinate_ascent
from models.checks import as_int
from models.poisson_gamma import DEFAULT_PRIOR, PoissonGammaPrior, sufficient_statistics

__all__ = [
    "DEFAULT_INIT_THETA",
    "EULER_GAMMA",
    "THETA",
    "CaviResult",
    "PoissonGammaParams",
    "cavi",
    "elbo",
    "elbo_gradient",
    "exponential_guide",
    "optimal_theta",
    "params_from_store",
]

THETA = "q_theta"

#: Euler-Mascheroni constant, :math:`-E[\log\lambda]` for :math:`\lambda \sim \mathrm{Exponential}(1)`.
EULER_GAMMA = 0.57721566490153286060651209008240243

#: Default initial rate of q: theta = 1 (E_q[lambda] = 1), uninformed by the data.
DEFAULT_INIT_THETA = 1.0


def _check_theta_value(name, value) -> float:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and positive, got {value}")
    return value


@dataclass(frozen=True)
class PoissonGammaParams:
    r"""The variational parameter :math:`\theta` of :math:`q(\lambda) = \mathrm{Exponential}(\theta)`.

    :param theta: a finite positive number (stored as a float), or a tensor of them
        (stored as float64, graph kept, any shape: :func:`elbo` broadcasts over it).
    :raises ValueError: if ``theta`` is not finite and positive.
    """

    theta: Union[float, torch.Tensor]

    def __post_init__(self):
        theta = self.theta
        if isinstance(theta, torch.Tensor) and (theta.requires_grad or theta.numel() != 1):
            theta = theta.to(torch.float64)
            with torch.no_grad():
                ok = bool((torch.isfinite(theta) & (theta > 0)).all())
            if not ok:
                raise ValueError(f"theta must be finite and positive, got {theta.detach()}")
        else:
            theta = _check_theta_value("theta", theta)
        object.__setattr__(self, "theta", theta)


def exponential_guide(data, prior: PoissonGammaPrior = DEFAULT_PRIOR, init_theta: float = DEFAULT_INIT_THETA):
    r"""Guide :math:`q(\lambda) = \mathrm{Exponential}(\theta)`, parameter ``"q_theta"`` (positive).

    The parameter is created from ``init_theta`` the first time only; afterwards the
    param store wins. ``data`` and ``prior`` are unused (they mirror the model's
    signature). Works inside an outer vectorized particle plate.

    :param float init_theta: initial rate, finite and > 0.
    """
    init_theta = _check_theta_value("init_theta", init_theta)
    theta = pyro.param(
        THETA, lambda: torch.tensor(init_theta, dtype=torch.get_default_dtype()), constraint=constraints.positive
    )
    pyro.sample("lambda", dist.Exponential(theta))


def params_from_store() -> PoissonGammaParams:
    """Read the current ``"q_theta"`` from Pyro's param store."""
    return PoissonGammaParams(pyro.param(THETA).item())


def elbo(data, params: PoissonGammaParams, prior: PoissonGammaPrior = DEFAULT_PRIOR) -> torch.Tensor:
    r"""Closed-form ELBO :math:`E_q[\log p(X, \lambda)] - E_q[\log q(\lambda)]` for
    :math:`q = \mathrm{Exponential}(\theta)` (module docstring):

    .. math::

        \mathcal{L}(\theta) = (\alpha + S - 1)(-\gamma - \log\theta) - \frac{\beta + N}{\theta}
            + \alpha\log\beta - \log\Gamma(\alpha) - \sum_n \log x_n! + 1 - \log\theta.

    Written with torch ops, so it is differentiable in ``params.theta`` when that is a
    tensor; the result is float64 of the shape of ``params.theta``.

    :raises ValueError: for bad data or a ``params`` that is not a :class:`PoissonGammaParams`.
    """
    return _elbo(sufficient_statistics(data), _checked(params, "params"), prior)


def _checked(params, name) -> PoissonGammaParams:
    if not isinstance(params, PoissonGammaParams):
        raise ValueError(f"{name} must be a PoissonGammaParams, got {type(params).__name__}")
    return params


def _elbo(stats, params, prior):
    n, total, log_factorials = stats
    theta = torch.as_tensor(params.theta, dtype=torch.float64)
    log_theta = theta.log()
    e_log_rate = -EULER_GAMMA - log_theta
    e_rate = 1 / theta
    constant = prior.alpha * math.log(prior.beta) - math.lgamma(prior.alpha) - log_factorials
    entropy = 1 - log_theta
    return (prior.alpha + total - 1) * e_log_rate - (prior.beta + n) * e_rate + constant + entropy


def optimal_theta(data, prior: PoissonGammaPrior = DEFAULT_PRIOR, tol: float = 1e-14, max_iters: int = 200) -> float:
    r"""The maximizer :math:`\theta^*` of :func:`elbo`, found numerically.

    Works in :math:`u = \log\theta`, where the ELBO is strictly concave: first a
    bracket :math:`[u_-, u_+]` with :math:`\partial_u \mathcal{L}(u_-) > 0 >
    \partial_u \mathcal{L}(u_+)` is grown from :math:`u = 0`, then Newton steps on
    :math:`\partial_u \mathcal{L}` (first and second derivatives by autograd of
    :func:`elbo`) are taken, falling back to bisection whenever a step would leave
    the bracket. It never uses the closed form :math:`\theta^* = (\beta + N) /
    (\alpha + S)` derived in the module docstring, so it is a reference for it.

    :param float tol: stop when a step in :math:`u` is below ``tol`` (relative to
        :math:`\max(1, |u|)`) or the bracket is that narrow.
    :param int max_iters: at most this many Newton/bisection steps.
    :returns: :math:`\theta^*` as a float.
    :raises ValueError: for bad data or settings.
    :raises RuntimeError: if it did not converge in ``max_iters`` steps.
    """
    sufficient_statistics(data)  # validates the data once, with its own message
    as_int("max_iters", max_iters)
    if not (isinstance(tol, numbers.Real) and math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite positive number, got {tol!r}")

    def derivatives(u: float):
        u = torch.tensor(u, dtype=torch.float64, requires_grad=True)
        (first,) = torch.autograd.grad(elbo(data, PoissonGammaParams(u.exp()), prior), u, create_graph=True)
        (second,) = torch.autograd.grad(first, u)
        return float(first.detach()), float(second)

    # grow a bracket around the root of the (decreasing) derivative
    lo, hi, step = 0.0, 0.0, 1.0
    while derivatives(lo)[0] <= 0:
        lo -= step
        step *= 2
        if lo < -700:
            raise RuntimeError("optimal_theta: no bracket found (theta* below 1e-304)")
    step = 1.0
    while derivatives(hi)[0] >= 0:
        hi += step
        step *= 2
        if hi > 700:
            raise RuntimeError("optimal_theta: no bracket found (theta* above 1e304)")

    u = 0.5 * (lo + hi)
    for _ in range(int(max_iters)):
        first, second = derivatives(u)
        if first == 0:
            return math.exp(u)
        if first > 0:
            lo = u
        else:
            hi = u
        new = u - first / second if second < 0 else None
        if new is None or not lo < new < hi:
            new = 0.5 * (lo + hi)  # bisection keeps the bracket
        if abs(new - u) <= tol * max(1.0, abs(u)) or hi - lo <= tol * max(1.0, abs(u)):
            return math.exp(new)
        u = new
    raise RuntimeError(f"optimal_theta did not converge in {max_iters} steps")


def elbo_gradient(data, params: PoissonGammaParams, prior: PoissonGammaPrior = DEFAULT_PRIOR):
    r""":math:`\partial\mathcal{L}/\partial\theta = -(\alpha + S)/\theta + (\beta + N)/\theta^2`
    of :func:`elbo`, by autograd; ``{"theta": float64 tensor}``."""
    return autograd_gradient(elbo, data, params, prior)


def cavi(
    data,
    prior: PoissonGammaPrior = DEFAULT_PRIOR,
    init: Optional[PoissonGammaParams] = None,
    max_iters: int = 100,
    tol: float = 1e-12,
) -> CaviResult:
    r"""Coordinate ascent with the single block :math:`\theta`. This is not the
    conjugate CAVI update (:math:`\exp E[\log p]` is a Gamma, outside the family):
    each sweep sets :math:`\theta` to the exact maximizer of :math:`\mathcal{L}`
    within the family, :math:`\theta^* = (\beta + N)/(\alpha + S)` (module
    docstring), so it converges after one sweep (the second confirms it).

    :param init: start (default ``PoissonGammaParams(DEFAULT_INIT_THETA)``).
    :rtype: CaviResult
    """
    stats = sufficient_statistics(data)
    init = PoissonGammaParams(DEFAULT_INIT_THETA) if init is None else _checked(init, "init")
    check_settings(max_iters, tol)
    n, total, _ = stats
    best = PoissonGammaParams((prior.beta + n) / (prior.alpha + total))
    return coordinate_ascent(lambda p: best, lambda p: _elbo(stats, p, prior), init, max_iters, tol)
