r"""Guides and closed-form variational fits for :mod:`models.normal_gamma`.

Mean-field family (course 1E.3, 1.D.3):

.. math::

    q(\mu, \tau) = \mathcal{N}(\mu \mid m, \lambda^{-1})\, \mathrm{Gamma}(\tau \mid a, b)
    \quad (b \text{ a rate}),

with Pyro parameters ``"q_mu_loc"`` (:math:`m`), ``"q_mu_precision"`` (:math:`\lambda`),
``"q_tau_concentration"`` (:math:`a`) and ``"q_tau_rate"`` (:math:`b`). Its log density
and score functions (question 1.2.4) are

.. math::

    \log q(\mu) &= \tfrac12 \log \tfrac{\lambda}{2\pi} - \tfrac{\lambda}{2} (\mu - m)^2, &
    \log q(\tau) &= a \log b - \log\Gamma(a) + (a - 1) \log\tau - b \tau,\\
    \partial_m \log q &= \lambda (\mu - m), &
    \partial_a \log q &= \log b - \psi(a) + \log \tau,\\
    \partial_\lambda \log q &= \tfrac{1}{2\lambda} - \tfrac12 (\mu - m)^2, &
    \partial_b \log q &= a / b - \tau.

The structured family :math:`q(\tau)\, q(\mu \mid \tau) = \mathrm{Gamma}(a, b)\,
\mathcal{N}(m, (\lambda\tau)^{-1})` contains the exact posterior
(:func:`exact_structured_params`).

References

1. C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, section 10.1.3.
2. R. Ranganath, S. Gerrish, D. M. Blei, *Black Box Variational Inference*, AISTATS 2014.
"""

import math
from dataclasses import dataclass
from typing import Dict, Optional

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from guides._cavi import CaviResult, autograd_gradient, check_settings, coordinate_ascent, real_field
from models.normal_gamma import COURSE_PRIOR, NormalGammaPrior, posterior, sufficient_statistics

__all__ = [
    "DEFAULT_INIT",
    "MU_LOC",
    "MU_PRECISION",
    "TAU_CONCENTRATION",
    "TAU_RATE",
    "MEAN_FIELD_FACTORS",
    "CaviResult",
    "NormalGammaParams",
    "cavi",
    "cavi_step",
    "closed_form_loss",
    "elbo",
    "elbo_gradient",
    "exact_structured_params",
    "mean_field_guide",
    "mean_field_score",
    "params_from_store",
    "structured_guide",
]

MU_LOC = "q_mu_loc"
MU_PRECISION = "q_mu_precision"
TAU_CONCENTRATION = "q_tau_concentration"
TAU_RATE = "q_tau_rate"
#: :func:`mean_field_guide`'s factors for :class:`~pyro_vi.NaturalGradient`.
MEAN_FIELD_FACTORS = {
    "mu": ("normal_precision", [MU_LOC, MU_PRECISION]),
    "tau": ("gamma", [TAU_CONCENTRATION, TAU_RATE]),
}


@dataclass(frozen=True)
class NormalGammaParams:
    r"""Variational parameters :math:`(m, \lambda, a, b)` as floats (a tensor that
    requires grad is kept, as float64, so that :func:`elbo` is differentiable in it).

    :param float m: mean of :math:`q(\mu)`; finite.
    :param float lam: precision :math:`\lambda` of :math:`q(\mu)` (of
        :math:`q(\mu \mid \tau)` per unit :math:`\tau` in the structured guide); > 0.
    :param float a: Gamma concentration of :math:`q(\tau)`; > 0.
    :param float b: Gamma rate of :math:`q(\tau)`; > 0.
    :raises ValueError: naming the offending field and value.
    """

    m: float
    lam: float
    a: float
    b: float

    def __post_init__(self):
        for name in ("m", "lam", "a", "b"):
            object.__setattr__(self, name, real_field(name, getattr(self, name), positive=name != "m"))

    @property
    def means(self) -> Dict[str, float]:
        r""":math:`E_q[\mu] = m` and :math:`E_q[\tau] = a / b`."""
        return {"mu": self.m, "tau": self.a / self.b}


#: A deliberately uninformed starting point, m = 0, lambda = 1, a = 1, b = 1
#: (E_q[tau] = 1): it ignores the data and the prior, so fits have work to do.
DEFAULT_INIT = NormalGammaParams(m=0.0, lam=1.0, a=1.0, b=1.0)


def _check_init(init: Optional[NormalGammaParams]) -> NormalGammaParams:
    return DEFAULT_INIT if init is None else _checked(init, "init")


def _params(init: NormalGammaParams):
    dtype = torch.get_default_dtype()
    m = pyro.param(MU_LOC, lambda: torch.tensor(init.m, dtype=dtype))
    lam = pyro.param(MU_PRECISION, lambda: torch.tensor(init.lam, dtype=dtype), constraint=constraints.positive)
    a = pyro.param(TAU_CONCENTRATION, lambda: torch.tensor(init.a, dtype=dtype), constraint=constraints.positive)
    b = pyro.param(TAU_RATE, lambda: torch.tensor(init.b, dtype=dtype), constraint=constraints.positive)
    return m, lam, a, b


def mean_field_guide(data, prior: NormalGammaPrior = COURSE_PRIOR, init: Optional[NormalGammaParams] = None):
    r"""Mean-field guide :math:`q(\tau)\, q(\mu) = \mathrm{Gamma}(a, b)\, \mathcal{N}(m, \lambda^{-1})`.

    Parameters are created from ``init`` (default :data:`DEFAULT_INIT`) the first time
    only; afterwards the param store wins. ``data`` and ``prior`` are unused (they mirror
    the model's signature). Works inside an outer vectorized particle plate.
    """
    m, lam, a, b = _params(_check_init(init))
    pyro.sample("tau", dist.Gamma(a, b))
    pyro.sample("mu", dist.Normal(m, lam**-0.5))


def structured_guide(data, prior: NormalGammaPrior = COURSE_PRIOR, init: Optional[NormalGammaParams] = None):
    r"""Structured guide :math:`q(\tau)\, q(\mu \mid \tau) = \mathrm{Gamma}(a, b)\,
    \mathcal{N}(m, (\lambda \tau)^{-1})`, the NormalGamma family of the exact posterior.

    Same parameter names as :func:`mean_field_guide`; ``"q_mu_precision"`` is the
    precision per unit :math:`\tau`.
    """
    m, lam, a, b = _params(_check_init(init))
    tau = pyro.sample("tau", dist.Gamma(a, b))
    pyro.sample("mu", dist.Normal(m, (lam * tau) ** -0.5))


def params_from_store() -> NormalGammaParams:
    """Read the current guide parameters from Pyro's param store."""
    store = pyro.get_param_store()
    values = [store[name].item() for name in (MU_LOC, MU_PRECISION, TAU_CONCENTRATION, TAU_RATE)]
    return NormalGammaParams(*values)


def exact_structured_params(data, prior: NormalGammaPrior = COURSE_PRIOR) -> NormalGammaParams:
    r"""Parameters :math:`(\mu_N, \lambda_N, a_N, b_N)` at which :func:`structured_guide`
    equals the exact posterior :func:`models.normal_gamma.posterior`."""
    post = posterior(data, prior)
    return NormalGammaParams(m=post.mu0, lam=post.lambda0, a=post.a0, b=post.b0)


def elbo(data, params: NormalGammaParams, prior: NormalGammaPrior = COURSE_PRIOR) -> torch.Tensor:
    r"""Closed-form mean-field ELBO :math:`E_q[\log p(X, \mu, \tau)] - E_q[\log q(\mu, \tau)]`.

    With :math:`E[\tau] = a/b`, :math:`E[\log\tau] = \psi(a) - \log b`,
    :math:`S = \sum_n (x_n - \bar x)^2`:

    .. math::

        \mathcal{L} &= \tfrac{N + 1}{2} \left(E[\log\tau] - \log 2\pi\right)
            + \tfrac12 \log\lambda_0
            - \tfrac{E[\tau]}{2} \left(S + N (\bar x - m)^2 + \tfrac N\lambda
                + \lambda_0 (m - \mu_0)^2 + \tfrac{\lambda_0}\lambda\right)\\
        &\quad + a_0 \log b_0 - \log\Gamma(a_0) + (a_0 - 1) E[\log\tau] - b_0 E[\tau]\\
        &\quad + \tfrac12 \log\tfrac{2\pi e}{\lambda}
            + a - \log b + \log\Gamma(a) + (1 - a) \psi(a).

    A float64 scalar, differentiable in the fields of ``params`` that are tensors.

    :raises ValueError: for bad data or a ``params`` that is not a :class:`NormalGammaParams`.
    """
    n, mean, ss = sufficient_statistics(data)
    return _elbo(n, mean, ss, _checked(params, "params"), prior)


def _checked(params, name) -> NormalGammaParams:
    if not isinstance(params, NormalGammaParams):
        raise ValueError(f"{name} must be a NormalGammaParams, got {type(params).__name__}")
    return params


def _elbo(n, mean, ss, params, prior):
    m, lam, a, b = (torch.as_tensor(getattr(params, k), dtype=torch.float64) for k in ("m", "lam", "a", "b"))
    log_2pi = math.log(2 * math.pi)
    e_tau = a / b
    e_log_tau = torch.digamma(a) - b.log()
    e_sq = ss + n * (mean - m) ** 2 + n / lam + prior.lambda0 * ((m - prior.mu0) ** 2 + 1 / lam)
    e_log_p_x_mu = 0.5 * (n + 1) * (e_log_tau - log_2pi) + 0.5 * math.log(prior.lambda0) - 0.5 * e_tau * e_sq
    e_log_p_tau = prior.a0 * math.log(prior.b0) - math.lgamma(prior.a0) + (prior.a0 - 1) * e_log_tau - prior.b0 * e_tau
    entropy_mu = 0.5 * (log_2pi + 1 - lam.log())
    entropy_tau = a - b.log() + torch.lgamma(a) + (1 - a) * torch.digamma(a)
    return e_log_p_x_mu + e_log_p_tau + entropy_mu + entropy_tau


def elbo_gradient(data, params: NormalGammaParams, prior: NormalGammaPrior = COURSE_PRIOR):
    r""":math:`\partial\mathcal{L}/\partial m, \lambda, a, b` of :func:`elbo` (autograd),
    float64 scalars keyed by field name."""
    return autograd_gradient(elbo, data, params, prior)


def closed_form_loss(model, guide, data, prior: NormalGammaPrior = COURSE_PRIOR) -> torch.Tensor:
    """``-ELBO`` of :func:`mean_field_guide` in closed form (exact expectations), as a
    loss callable for ``SVI``.

    Runs the guide once so that its parameters exist and are recorded as param sites."""
    guide(data, prior)
    values = [pyro.param(name) for name in (MU_LOC, MU_PRECISION, TAU_CONCENTRATION, TAU_RATE)]
    return -elbo(data, NormalGammaParams(*values), prior)


def mean_field_score(params: NormalGammaParams, mu, tau) -> Dict[str, torch.Tensor]:
    r"""Score functions :math:`\nabla \log q(\mu, \tau)` of the mean-field guide with
    respect to the constrained parameters (see the module docstring), broadcast over
    draws ``mu``, ``tau``; float64."""
    mu = torch.as_tensor(mu, dtype=torch.float64)
    tau = torch.as_tensor(tau, dtype=torch.float64)
    return {
        "m": params.lam * (mu - params.m),
        "lam": 0.5 / params.lam - 0.5 * (mu - params.m) ** 2,
        "a": math.log(params.b) - float(torch.digamma(torch.tensor(params.a, dtype=torch.float64))) + tau.log(),
        "b": params.a / params.b - tau,
    }


def cavi_step(data, params: NormalGammaParams, prior: NormalGammaPrior = COURSE_PRIOR) -> NormalGammaParams:
    r"""One CAVI sweep (Bishop 10.1.3 with the prior :math:`\mu \mid \tau \sim
    \mathcal{N}(\mu_0, (\lambda_0\tau)^{-1})`): first :math:`q(\mu)`, then :math:`q(\tau)`.

    .. math::

        m &= \frac{\lambda_0 \mu_0 + N \bar x}{\lambda_0 + N}, \qquad
        \lambda = (\lambda_0 + N)\, E[\tau] = (\lambda_0 + N) \frac ab,\\
        a &= a_0 + \frac{N + 1}{2},\\
        b &= b_0 + \frac12 E_\mu\Big[\sum_n (x_n - \mu)^2 + \lambda_0 (\mu - \mu_0)^2\Big]
           = b_0 + \frac12 \Big(S + N (\bar x - m)^2 + \lambda_0 (m - \mu_0)^2
             + \frac{N + \lambda_0}{\lambda}\Big),

    with :math:`S = \sum_n (x_n - \bar x)^2`. The update of :math:`m` does not depend on
    :math:`q(\tau)`, so :math:`E_q[\mu]` is exact after one sweep.
    """
    return _step(*sufficient_statistics(data), _checked(params, "params"), prior)


def _step(n, mean, ss, params, prior):
    lambda_n = prior.lambda0 + n
    m = (prior.lambda0 * prior.mu0 + n * mean) / lambda_n
    lam = lambda_n * params.a / params.b
    a = prior.a0 + 0.5 * (n + 1)
    b = prior.b0 + 0.5 * (ss + n * (mean - m) ** 2 + prior.lambda0 * (m - prior.mu0) ** 2 + lambda_n / lam)
    return NormalGammaParams(m=m, lam=lam, a=a, b=b)


def cavi(
    data,
    prior: NormalGammaPrior = COURSE_PRIOR,
    init: Optional[NormalGammaParams] = None,
    max_iters: int = 1000,
    tol: float = 1e-12,
) -> CaviResult:
    r"""Coordinate-ascent VI for the mean-field family, sweeps of :func:`cavi_step`.

    Stops when no parameter changes by more than ``tol`` (relative to
    :math:`\max(1, |\text{value}|)`) in a sweep, or after ``max_iters`` sweeps.
    Each coordinate update maximizes the ELBO in its factor, so the history is
    non-decreasing.

    :param init: starting point (default :data:`DEFAULT_INIT`); only its :math:`a, b`
        matter, since the first update of :math:`q(\mu)` reads :math:`E[\tau]` only.
    :rtype: CaviResult
    """
    stats = sufficient_statistics(data)
    params = _check_init(init)
    check_settings(max_iters, tol)
    return coordinate_ascent(
        lambda p: _step(*stats, p, prior),
        lambda p: _elbo(*stats, p, prior),
        params,
        max_iters,
        tol,
    )
