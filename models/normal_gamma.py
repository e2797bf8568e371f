r"""Normal likelihood with a conjugate NormalGamma prior (course exercises 1E.3, 1.D.3).

The generative model is

.. math::

    \tau &\sim \mathrm{Gamma}(a_0, b_0) \quad (b_0 \text{ a rate}),\\
    \mu \mid \tau &\sim \mathcal{N}(\mu_0, (\lambda_0 \tau)^{-1}),\\
    x_n \mid \mu, \tau &\sim \mathcal{N}(\mu, \tau^{-1}), \quad n = 1, \dots, N.

Its log-likelihood and log-prior (question 1.2.4) are

.. math::

    \log p(X \mid \mu, \tau) &= \tfrac{N}{2} \log \tfrac{\tau}{2\pi}
        - \tfrac{\tau}{2} \sum_n (x_n - \mu)^2,\\
    \log p(\mu \mid \tau) &= \tfrac12 \log \tfrac{\lambda_0 \tau}{2\pi}
        - \tfrac{\lambda_0 \tau}{2} (\mu - \mu_0)^2,\\
    \log p(\tau) &= a_0 \log b_0 - \log\Gamma(a_0) + (a_0 - 1) \log \tau - b_0 \tau.

The posterior is again NormalGamma (:func:`posterior`) and the evidence
:math:`\log p(X)` has a closed form (:func:`log_evidence`). Closed forms are computed
in float64; the Pyro program (:func:`model`) runs in the default dtype.

References

1. C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006,
   sections 2.3.6 and 10.1.3.
2. K. P. Murphy, *Conjugate Bayesian analysis of the Gaussian distribution*, 2007,
   section 3.
"""

import math
from dataclasses import dataclass
from typing import Dict, Tuple

import pyro
import pyro.distributions as dist
import torch

from models.checks import as_int, as_real, set_real_fields

__all__ = [
    "COURSE_PRIOR",
    "NormalGammaPrior",
    "check_data",
    "generate_data",
    "log_evidence",
    "log_joint",
    "model",
    "posterior",
    "posterior_means",
    "sufficient_statistics",
]


@dataclass(frozen=True)
class NormalGammaPrior:
    r"""Parameters of :math:`\mathrm{NormalGamma}(\mu, \tau \mid \mu_0, \lambda_0, a_0, b_0)
    = \mathcal{N}(\mu \mid \mu_0, (\lambda_0\tau)^{-1})\, \mathrm{Gamma}(\tau \mid a_0, b_0)`.

    Used both for the prior and (via :func:`posterior`) for the exact posterior.

    :param float mu0: mean of :math:`\mu`; finite.
    :param float lambda0: precision scale of :math:`\mu` relative to :math:`\tau`; > 0.
    :param float a0: Gamma concentration (shape) of :math:`\tau`; > 0.
    :param float b0: Gamma **rate** of :math:`\tau`; > 0.
    :raises ValueError: naming the offending argument and value.
    """

    mu0: float = 1.0
    lambda0: float = 0.1
    a0: float = 1.0
    b0: float = 2.0

    def __post_init__(self):
        set_real_fields(self, real=("mu0",), positive=("lambda0", "a0", "b0"))


#: The prior of the course assignment: mu0 = 1, lambda0 = 0.1, a0 = 1, b0 = 2 (rate).
COURSE_PRIOR = NormalGammaPrior()


def check_data(data) -> torch.Tensor:
    """Validate observations and return them as a 1-D tensor of the default dtype.

    :param data: a 1-D array-like of real numbers with at least one element.
    :rtype: torch.Tensor
    :raises ValueError: if ``data`` is not numeric, not 1-D, empty, or contains
        NaN or infinite values (the message names the first bad index).
    """
    if isinstance(data, torch.Tensor) and data.dtype == torch.bool:
        raise ValueError("data must be a 1-D array of real numbers, got a boolean tensor")
    try:
        data = torch.as_tensor(data, dtype=torch.get_default_dtype())
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"data must be a 1-D array of real numbers: {e}") from e
    if data.dim() != 1:
        raise ValueError(f"data must be 1-D, got shape {tuple(data.shape)}")
    if data.numel() == 0:
        raise ValueError("data is empty; need at least one observation")
    bad = ~torch.isfinite(data)
    if bad.any():
        index = int(bad.nonzero()[0])
        kind = "NaN" if torch.isnan(data[index]) else "inf"
        raise ValueError(f"data contains {kind} at index {index}")
    return data


def generate_data(num_data: int = 100, mu: float = 1.0, tau: float = 0.5, seed: int = 0) -> torch.Tensor:
    r"""Draw :math:`x_n \sim \mathcal{N}(\mu, \tau^{-1})`, :math:`n = 1..N`.

    Uses a local :class:`torch.Generator`, so the global RNG is left untouched.

    :param int num_data: N >= 1.
    :param float mu: true mean.
    :param float tau: true precision, > 0.
    :param int seed: seed of the local generator.
    :returns: 1-D tensor of length ``num_data`` in the default dtype.
    """
    as_int("num_data", num_data)
    mu, tau = as_real("mu", mu), as_real("tau", tau)
    if not math.isfinite(mu):
        raise ValueError(f"mu must be finite, got {mu}")
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a finite positive number, got {tau}")
    generator = torch.Generator().manual_seed(int(seed))
    noise = torch.randn(int(num_data), generator=generator, dtype=torch.get_default_dtype())
    return mu + noise / math.sqrt(tau)


def model(data, prior: NormalGammaPrior = COURSE_PRIOR):
    """The Pyro program: sites ``"tau"``, ``"mu"`` and the observed ``"x"``.

    Works inside an outer vectorized particle plate (``vectorize_particles=True``,
    ``max_plate_nesting=1``): ``tau`` and ``mu`` then carry a leading batch dimension.

    :param data: 1-D observations (validated by :func:`check_data`).
    :param NormalGammaPrior prior: hyperparameters.
    """
    data = check_data(data)
    mu0, lambda0, a0, b0 = (torch.as_tensor(v) for v in (prior.mu0, prior.lambda0, prior.a0, prior.b0))
    tau = pyro.sample("tau", dist.Gamma(a0, b0))
    mu = pyro.sample("mu", dist.Normal(mu0, (lambda0 * tau) ** -0.5))
    with pyro.plate("data", len(data), dim=-1):
        pyro.sample("x", dist.Normal(mu, tau**-0.5), obs=data)


def sufficient_statistics(data) -> Tuple[int, float, float]:
    r"""Return :math:`(N, \bar x, S)` with :math:`S = \sum_n (x_n - \bar x)^2`, in float64."""
    x = check_data(data).to(torch.float64)
    mean = x.mean()
    return x.numel(), float(mean), float(((x - mean) ** 2).sum())


def posterior(data, prior: NormalGammaPrior = COURSE_PRIOR) -> NormalGammaPrior:
    r"""Exact posterior :math:`p(\mu, \tau \mid X) = \mathrm{NormalGamma}(\mu_N, \lambda_N, a_N, b_N)`.

    .. math::

        \lambda_N = \lambda_0 + N, \quad
        \mu_N = \frac{\lambda_0 \mu_0 + N \bar x}{\lambda_0 + N}, \quad
        a_N = a_0 + \frac N2, \quad
        b_N = b_0 + \frac12 \sum_n (x_n - \bar x)^2
              + \frac{\lambda_0 N (\bar x - \mu_0)^2}{2 (\lambda_0 + N)}.
    """
    n, mean, ss = sufficient_statistics(data)
    lambda_n = prior.lambda0 + n
    mu_n = (prior.lambda0 * prior.mu0 + n * mean) / lambda_n
    a_n = prior.a0 + 0.5 * n
    b_n = prior.b0 + 0.5 * ss + 0.5 * prior.lambda0 * n * (mean - prior.mu0) ** 2 / lambda_n
    return NormalGammaPrior(mu0=mu_n, lambda0=lambda_n, a0=a_n, b0=b_n)


def posterior_means(data, prior: NormalGammaPrior = COURSE_PRIOR) -> Dict[str, float]:
    r"""Exact posterior means :math:`E[\mu \mid X] = \mu_N` and :math:`E[\tau \mid X] = a_N / b_N`."""
    post = posterior(data, prior)
    return {"mu": post.mu0, "tau": post.a0 / post.b0}


def log_evidence(data, prior: NormalGammaPrior = COURSE_PRIOR) -> float:
    r"""Exact log marginal likelihood

    .. math::

        \log p(X) = \log\Gamma(a_N) - \log\Gamma(a_0) + a_0 \log b_0 - a_N \log b_N
                     + \tfrac12 \log\frac{\lambda_0}{\lambda_N} - \tfrac N2 \log 2\pi.
    """
    n = sufficient_statistics(data)[0]
    post = posterior(data, prior)
    return (
        math.lgamma(post.a0)
        - math.lgamma(prior.a0)
        + prior.a0 * math.log(prior.b0)
        - post.a0 * math.log(post.b0)
        + 0.5 * (math.log(prior.lambda0) - math.log(post.lambda0))
        - 0.5 * n * math.log(2 * math.pi)
    )


def log_joint(data, mu, tau, prior: NormalGammaPrior = COURSE_PRIOR) -> torch.Tensor:
    r""":math:`\log p(X, \mu, \tau)` in float64, broadcast over ``mu`` and ``tau``.

    Uses :math:`\sum_n (x_n - \mu)^2 = S + N (\bar x - \mu)^2`; ``tau`` must be > 0.

    :param data: 1-D observations.
    :param mu: tensor (or number) of means.
    :param tau: tensor (or number) of precisions, broadcastable with ``mu``.
    :returns: float64 tensor of the broadcast shape.
    """
    n, mean, ss = sufficient_statistics(data)
    mu = torch.as_tensor(mu, dtype=torch.float64)
    tau = torch.as_tensor(tau, dtype=torch.float64)
    log_tau = tau.log()
    log_2pi = math.log(2 * math.pi)
    log_p_tau = prior.a0 * math.log(prior.b0) - math.lgamma(prior.a0) + (prior.a0 - 1) * log_tau - prior.b0 * tau
    log_p_mu = 0.5 * (math.log(prior.lambda0) + log_tau - log_2pi) - 0.5 * prior.lambda0 * tau * (mu - prior.mu0) ** 2
    log_lik = 0.5 * n * (log_tau - log_2pi) - 0.5 * tau * (ss + n * (mean - mu) ** 2)
    return log_p_tau + log_p_mu + log_lik
