r"""Gaussian mixture with known weights and unknown means and precisions (course 1.D.4).

The "GMM-light" model of exercise session 3 with the component precisions made
unknown: for :math:`k = 1, \dots, K` and :math:`n = 1, \dots, N`,

.. math::

    \tau_k &\sim \mathrm{Gamma}(a_0, b_0) \quad (b_0 \text{ a rate}),\\
    \mu_k \mid \tau_k &\sim \mathcal{N}(m_0, (\lambda_0 \tau_k)^{-1}),\\
    z_n &\sim \mathrm{Categorical}(\pi) \quad (\pi \text{ known}),\\
    x_n \mid z_n = k, \mu, \tau &\sim \mathcal{N}(\mu_k, \tau_k^{-1}),

i.e. :math:`(\mu_k, \tau_k) \sim \mathrm{NormalGamma}(m_0, \lambda_0, a_0, b_0)`
independently. The Bayes net (question 1.2.6) has the hyperparameters
:math:`m_0, \lambda_0, a_0, b_0` pointing into :math:`\tau_k \to \mu_k` (a plate over
:math:`k`), :math:`\pi \to z_n`, and :math:`z_n, \mu_{1:K}, \tau_{1:K} \to x_n` (a plate
over :math:`n`). The complete-data joint density (question 1.2.7) is

.. math::

    p(x, z, \mu, \tau) = \prod_{k=1}^K \mathrm{Gamma}(\tau_k \mid a_0, b_0)\,
        \mathcal{N}(\mu_k \mid m_0, (\lambda_0\tau_k)^{-1})
        \prod_{n=1}^N \prod_{k=1}^K \big[\pi_k\, \mathcal{N}(x_n \mid \mu_k, \tau_k^{-1})\big]^{[z_n = k]},

and its logarithm, with :math:`[z_n = k]` the indicator,

.. math::

    \log p(x, z, \mu, \tau) &= \sum_k \Big[a_0 \log b_0 - \log\Gamma(a_0) + (a_0 - \tfrac12) \log\tau_k
        - b_0 \tau_k + \tfrac12 \log\tfrac{\lambda_0}{2\pi}
        - \tfrac{\lambda_0 \tau_k}{2} (\mu_k - m_0)^2\Big]\\
    &\quad + \sum_n \sum_k [z_n = k] \Big[\log \pi_k + \tfrac12 \log\tfrac{\tau_k}{2\pi}
        - \tfrac{\tau_k}{2} (x_n - \mu_k)^2\Big].

The Pyro program (:func:`model`) marks ``"z"`` for parallel enumeration, so
``TraceEnum_ELBO`` sums it out when the guide has no ``"z"`` site, while a guide that
samples ``"z"`` (a score-function estimator) simply replays its value. Closed forms live
in :mod:`guides.gmm` and are computed in float64; the Pyro program runs in the default
dtype.

References

1. C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006,
   sections 10.2 and 10.1.3.
2. D. M. Blei, A. Kucukelbir, J. D. McAuliffe, *Variational Inference: A Review for
   Statisticians*, JASA 2017, section 3 (CAVI for a Gaussian mixture).
"""

from dataclasses import dataclass
from typing import Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex

from models.checks import as_float64, as_int, check_components, set_real_fields
from models.normal_gamma import check_data

__all__ = [
    "DEFAULT_PRIOR",
    "GMMPrior",
    "check_data",
    "check_weights",
    "generate_data",
    "model",
]


@dataclass(frozen=True)
class GMMPrior:
    r"""Hyperparameters of the NormalGamma prior shared by every component,
    :math:`(\mu_k, \tau_k) \sim \mathcal{N}(\mu_k \mid m_0, (\lambda_0\tau_k)^{-1})\,
    \mathrm{Gamma}(\tau_k \mid a_0, b_0)`.

    The defaults (m0 = 0, lambda0 = 0.1, a0 = 1, b0 = 1) are weak: the prior standard
    deviation of a mean is about :math:`1 / \sqrt{\lambda_0 E[\tau]} \approx 3`.

    :param float m0: prior mean of every :math:`\mu_k`; finite.
    :param float lambda0: precision scale of :math:`\mu_k` relative to :math:`\tau_k`; > 0.
    :param float a0: Gamma concentration (shape) of :math:`\tau_k`; > 0.
    :param float b0: Gamma **rate** of :math:`\tau_k`; > 0.
    :raises ValueError: naming the offending argument and value.
    """

    m0: float = 0.0
    lambda0: float = 0.1
    a0: float = 1.0
    b0: float = 1.0

    def __post_init__(self):
        set_real_fields(self, real=("m0",), positive=("lambda0", "a0", "b0"))


#: Weak default prior: m0 = 0, lambda0 = 0.1, a0 = 1, b0 = 1 (rate).
DEFAULT_PRIOR = GMMPrior()


def check_weights(pi, dtype=None) -> torch.Tensor:
    r"""Validate known mixing weights :math:`\pi` and return them as a 1-D tensor.

    :param pi: 1-D array-like with K >= 1 strictly positive entries summing to one
        (within 1e-5; the result is renormalized exactly).
    :param dtype: dtype of the result (default: the default dtype).
    :rtype: torch.Tensor
    :raises ValueError: if ``pi`` is not numeric, not 1-D, empty, not finite, has a
        non-positive entry (named by index) or does not sum to one.
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    pi = as_float64("pi", pi, "a 1-D array of mixing weights")
    if pi.dim() != 1:
        raise ValueError(f"pi must be 1-D, got shape {tuple(pi.shape)}")
    if pi.numel() == 0:
        raise ValueError("pi is empty; need at least one component")
    if not bool(torch.isfinite(pi).all()):
        raise ValueError(f"pi must be finite, got {pi.tolist()}")
    if not bool((pi > 0).all()):
        index = int((pi <= 0).nonzero()[0])
        raise ValueError(f"pi must be positive, got pi[{index}] = {float(pi[index])}")
    total = float(pi.sum())
    if abs(total - 1.0) > 1e-5:
        raise ValueError(f"pi must sum to 1, got sum {total}")
    return (pi / pi.sum()).to(dtype)


def _check_component_values(name, values, num_components, positive):
    values = as_float64(name, values, "a 1-D array of real numbers")
    if values.dim() != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(values.shape)}")
    return check_components(name, values, num_components, positive)


def generate_data(num_data: int, pi, mus, taus, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Draw :math:`z_n \sim \mathrm{Categorical}(\pi)` and
    :math:`x_n \sim \mathcal{N}(\mu_{z_n}, \tau_{z_n}^{-1})` for given true parameters.

    Uses a local :class:`torch.Generator`, so the global RNG is left untouched.

    :param int num_data: N >= 1.
    :param pi: mixing weights (see :func:`check_weights`).
    :param mus: K true means.
    :param taus: K true precisions, > 0.
    :param int seed: seed of the local generator.
    :returns: ``(x, z)``: observations (N,) in the default dtype and labels (N,) int64.
    :raises ValueError: for a bad ``num_data``, bad weights, or ``mus``/``taus`` whose
        number of components differs from ``len(pi)``.
    """
    as_int("num_data", num_data)
    pi = check_weights(pi, dtype=torch.float64)
    mus = _check_component_values("mus", mus, len(pi), positive=False)
    taus = _check_component_values("taus", taus, len(pi), positive=True)
    generator = torch.Generator().manual_seed(int(seed))
    z = torch.multinomial(pi, int(num_data), replacement=True, generator=generator)
    noise = torch.randn(int(num_data), generator=generator, dtype=torch.float64)
    x = mus[z] + noise / taus[z].sqrt()
    return x.to(torch.get_default_dtype()), z


def model(data, pi, prior: GMMPrior = DEFAULT_PRIOR):
    r"""The Pyro program: sites ``"tau"``, ``"mu"`` (plate ``"components"``, dim -1),
    ``"z"`` and the observed ``"x"`` (plate ``"data"``, dim -1).

    ``"z"`` carries ``infer={"enumerate": "parallel"}``: under
    ``TraceEnum_ELBO(max_plate_nesting=1)`` with a guide that has no ``"z"`` it is
    summed out exactly (its values then live in a dimension left of the plates); with a
    guide that samples ``"z"`` the guide's value is replayed. The component of each
    data point is picked with :class:`~pyro.ops.indexing.Vindex` on ``mu[..., None, :]``,
    which broadcasts correctly with or without enumeration and inside an outer
    vectorized particle plate at dim -2 (``vectorize_particles=True``).

    :param data: 1-D observations (validated by :func:`check_data`).
    :param pi: known mixing weights (validated by :func:`check_weights`).
    :param GMMPrior prior: hyperparameters.
    """
    data = check_data(data)
    pi = check_weights(pi)
    m0, lambda0, a0, b0 = (torch.as_tensor(v) for v in (prior.m0, prior.lambda0, prior.a0, prior.b0))
    with pyro.plate("components", len(pi), dim=-1):
        tau = pyro.sample("tau", dist.Gamma(a0, b0))
        mu = pyro.sample("mu", dist.Normal(m0, (lambda0 * tau) ** -0.5))
    with pyro.plate("data", len(data), dim=-1):
        z = pyro.sample("z", dist.Categorical(pi), infer={"enumerate": "parallel"})
        # batch dims of mu/tau (particles), then a size-1 dim that lines up with "data"
        loc = Vindex(mu.unsqueeze(-2))[..., z]
        scale = Vindex(tau.unsqueeze(-2))[..., z] ** -0.5
        pyro.sample("x", dist.Normal(loc, scale), obs=data)
