r"""Poisson likelihood with a conjugate Gamma prior (course exercise 2E).

The generative model is

.. math::

    \lambda &\sim \mathrm{Gamma}(\alpha, \beta) \quad (\beta \text{ a rate}),\\
    x_n \mid \lambda &\sim \mathrm{Poisson}(\lambda), \quad n = 1, \dots, N.

With :math:`S = \sum_n x_n` the log joint is

.. math::

    \log p(X, \lambda) = \alpha \log\beta - \log\Gamma(\alpha)
        + (\alpha + S - 1) \log\lambda - (\beta + N) \lambda
        - \sum_n \log\Gamma(x_n + 1),

so the posterior is :math:`\mathrm{Gamma}(\alpha + S, \beta + N)` (:func:`posterior`)
and the evidence is the negative-binomial-like closed form of :func:`log_evidence`.
Closed forms are computed in float64; the Pyro program (:func:`model`) runs in the
default dtype. The variational family of exercise 2E, :math:`q(\lambda) =
\mathrm{Exponential}(\theta)`, lives in :mod:`guides.poisson_gamma`.

References

1. A. Gelman et al., *Bayesian Data Analysis*, 3rd ed., CRC Press 2013, section 2.6.
2. K. P. Murphy, *Machine Learning: A Probabilistic Perspective*, MIT Press 2012,
   section 3.4 (Gamma-Poisson conjugacy).
"""

import math
from dataclasses import dataclass
from typing import Tuple

import pyro
import pyro.distributions as dist
import torch

from models.checks import as_counts, as_int, as_real, set_real_fields

__all__ = [
    "DEFAULT_PRIOR",
    "PoissonGammaPrior",
    "check_data",
    "generate_data",
    "log_evidence",
    "log_joint",
    "model",
    "posterior",
    "sufficient_statistics",
]


@dataclass(frozen=True)
class PoissonGammaPrior:
    r"""Parameters of :math:`\mathrm{Gamma}(\lambda \mid \alpha, \beta)`, :math:`\beta` a rate.

    Used both for the prior and (via :func:`posterior`) for the exact posterior.

    :param float alpha: concentration (shape); finite and > 0.
    :param float beta: **rate**; finite and > 0.
    :raises ValueError: naming the offending argument and value.
    """

    alpha: float = 2.0
    beta: float = 1.0

    def __post_init__(self):
        set_real_fields(self, positive=("alpha", "beta"))

    @property
    def mean(self) -> float:
        r""":math:`E[\lambda] = \alpha / \beta`."""
        return self.alpha / self.beta

    @property
    def variance(self) -> float:
        r""":math:`\mathrm{Var}[\lambda] = \alpha / \beta^2`."""
        return self.alpha / self.beta**2


#: Default prior: alpha = 2, beta = 1 (rate), prior mean 2.
DEFAULT_PRIOR = PoissonGammaPrior()


def check_data(data) -> torch.Tensor:
    """Validate counts and return them as a 1-D tensor of the default dtype.

    :param data: a 1-D array-like of non-negative integers (integer or integral
        floating values) with at least one element.
    :rtype: torch.Tensor
    :raises ValueError: if ``data`` is not numeric, not 1-D, empty, contains NaN or
        infinite values, or a negative or non-integer count (the message names the
        first bad value and its index).
    """
    counts = as_counts("counts", data)
    if counts.dim() != 1:
        raise ValueError(f"counts must be 1-D, got shape {tuple(counts.shape)}")
    if counts.numel() == 0:
        raise ValueError("counts are empty; need at least one observation")
    return counts.to(torch.get_default_dtype())


def generate_data(num_data: int = 50, rate: float = 3.0, seed: int = 0) -> torch.Tensor:
    r"""Draw :math:`x_n \sim \mathrm{Poisson}(\text{rate})`, :math:`n = 1..N`.

    Uses a local :class:`torch.Generator`, so the global RNG is left untouched.

    :param int num_data: N >= 1.
    :param float rate: true Poisson rate, finite and > 0.
    :param int seed: seed of the local generator.
    :returns: 1-D tensor of counts (integral values) in the default dtype.
    """
    as_int("num_data", num_data)
    rate = as_real("rate", rate)
    if not (math.isfinite(rate) and rate > 0):
        raise ValueError(f"rate must be a finite positive number, got {rate}")
    generator = torch.Generator().manual_seed(int(seed))
    rates = torch.full((int(num_data),), rate, dtype=torch.float64)
    return torch.poisson(rates, generator=generator).to(torch.get_default_dtype())


def model(data, prior: PoissonGammaPrior = DEFAULT_PRIOR):
    """The Pyro program: a latent site ``"lambda"`` and the observed ``"x"`` in plate ``"data"``.

    Works inside an outer vectorized particle plate (``vectorize_particles=True``,
    ``max_plate_nesting=1``): ``lambda`` then carries the particle batch dimension and
    broadcasts against the data plate at ``dim=-1``.

    :param data: 1-D counts (validated by :func:`check_data`).
    :param PoissonGammaPrior prior: hyperparameters.
    """
    data = check_data(data)
    alpha = torch.as_tensor(prior.alpha, dtype=data.dtype)
    beta = torch.as_tensor(prior.beta, dtype=data.dtype)
    rate = pyro.sample("lambda", dist.Gamma(alpha, beta))
    with pyro.plate("data", len(data), dim=-1):
        pyro.sample("x", dist.Poisson(rate), obs=data)


def sufficient_statistics(data) -> Tuple[int, float, float]:
    r"""Return :math:`(N, S, \sum_n \log x_n!)` with :math:`S = \sum_n x_n`, in float64."""
    x = check_data(data).to(torch.float64)
    return x.numel(), float(x.sum()), float(torch.lgamma(x + 1).sum())


def posterior(data, prior: PoissonGammaPrior = DEFAULT_PRIOR) -> PoissonGammaPrior:
    r"""Exact posterior :math:`p(\lambda \mid X) = \mathrm{Gamma}(\alpha + S, \beta + N)`."""
    n, total, _ = sufficient_statistics(data)
    return PoissonGammaPrior(alpha=prior.alpha + total, beta=prior.beta + n)


def log_evidence(data, prior: PoissonGammaPrior = DEFAULT_PRIOR) -> float:
    r"""Exact log marginal likelihood

    .. math::

        \log p(X) = \alpha \log\beta - \log\Gamma(\alpha)
            + \log\Gamma(\alpha + S) - (\alpha + S) \log(\beta + N)
            - \sum_n \log x_n!.

    For :math:`N = 1` this is the negative-binomial pmf
    :math:`\mathrm{NB}(x_1; \alpha, p = 1 / (1 + \beta))`.
    """
    n, total, log_factorials = sufficient_statistics(data)
    a_n, b_n = prior.alpha + total, prior.beta + n
    return (
        prior.alpha * math.log(prior.beta)
        - math.lgamma(prior.alpha)
        + math.lgamma(a_n)
        - a_n * math.log(b_n)
        - log_factorials
    )


def log_joint(data, rate, prior: PoissonGammaPrior = DEFAULT_PRIOR) -> torch.Tensor:
    r""":math:`\log p(X, \lambda)` in float64 (module docstring), broadcast over ``rate``.

    :param data: 1-D counts.
    :param rate: tensor (or number) of values :math:`\lambda > 0`.
    :returns: float64 tensor of the shape of ``rate``.
    """
    n, total, log_factorials = sufficient_statistics(data)
    rate = torch.as_tensor(rate, dtype=torch.float64)
    return (
        prior.alpha * math.log(prior.beta)
        - math.lgamma(prior.alpha)
        + (prior.alpha + total - 1) * rate.log()
        - (prior.beta + n) * rate
        - log_factorials
    )
