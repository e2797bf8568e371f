r"""Guides and CAVI for :mod:`models.gmm` (course 1.D.4).

Mean-field family (question 1.2.8), fully factorized over every latent variable:

.. math::

    q(z, \mu, \tau) = \prod_{n=1}^N \mathrm{Categorical}(z_n \mid r_n)
        \prod_{k=1}^K \mathcal{N}(\mu_k \mid m_k, l_k^{-1})\, \mathrm{Gamma}(\tau_k \mid a_k, b_k)

(:math:`b_k` a rate; :math:`r_n` a point of the simplex). Note that :math:`\mu_k` and
:math:`\tau_k` are independent under :math:`q`, unlike under the NormalGamma prior.

CAVI (question 1.2.9). The generic update :math:`\log q_j^*(\theta_j) =
E_{-j}[\log p(x, z, \mu, \tau)] + \text{const}` keeps the terms of
:math:`\log p` (see :mod:`models.gmm`) that contain :math:`\mu_k`, with
:math:`E[[z_n = k]] = r_{nk}`:

.. math::

    \log q^*(\mu_k) &= E[\tau_k] \Big( -\tfrac{\lambda_0}{2} (\mu_k - m_0)^2
        - \tfrac12 \sum_n r_{nk} (x_n - \mu_k)^2 \Big) + \text{const}\\
    &= -\tfrac{E[\tau_k]}{2} \Big( (\lambda_0 + N_k)\, \mu_k^2
        - 2 \mu_k \big(\lambda_0 m_0 + \textstyle\sum_n r_{nk} x_n\big) \Big) + \text{const},
    \qquad N_k = \textstyle\sum_n r_{nk},

a Gaussian :math:`q^*(\mu_k) = \mathcal{N}(m_k, l_k^{-1})` with

.. math::

    l_k = E[\tau_k] (\lambda_0 + N_k), \qquad
    m_k = \frac{\lambda_0 m_0 + \sum_n r_{nk} x_n}{\lambda_0 + N_k}.

Each data point enters :math:`N_k` once, weighted by its responsibility (there is no
extra factor :math:`N`). The other factors follow the same way, with
:math:`E[\tau_k] = a_k / b_k`, :math:`E[\log\tau_k] = \psi(a_k) - \log b_k` and
:math:`E[(x - \mu_k)^2] = (x - m_k)^2 + 1 / l_k`:

.. math::

    a_k &= a_0 + \tfrac{N_k + 1}{2}, \qquad
    b_k = b_0 + \tfrac12 \Big(\lambda_0 E[(\mu_k - m_0)^2] + \textstyle\sum_n r_{nk} E[(x_n - \mu_k)^2]\Big),\\
    r_{nk} &\propto \pi_k \exp\Big(\tfrac12 E[\log\tau_k] - \tfrac12 E[\tau_k]\, E[(x_n - \mu_k)^2]\Big).

One CAVI sweep (:func:`cavi_step`) updates :math:`r`, then every :math:`q(\mu_k)`, then
every :math:`q(\tau_k)`; each is the exact maximizer of the ELBO in its block, so the
ELBO (:func:`elbo`) never decreases.

Pyro guides. :func:`global_guide` samples ``"tau"`` and ``"mu"`` only, for
``TraceEnum_ELBO(max_plate_nesting=1)`` with ``"z"`` enumerated in the model;
:func:`mean_field_guide` also samples ``"z"`` from :math:`\mathrm{Categorical}(r_n)`
(for score-function estimators). Parameters: ``"q_z_probs"`` (N, K) on the simplex,
``"q_mu_loc"`` :math:`m`, ``"q_mu_precision"`` :math:`l`, ``"q_tau_concentration"``
:math:`a`, ``"q_tau_rate"`` :math:`b` (each (K,), the last three positive).

Initialization (:func:`initial_params`), deterministic: :math:`m_k` are the data
quantiles at levels :math:`(k - \tfrac12)/K` (or, given an integer seed, K distinct data
points drawn with that seed); :math:`a_k = a_0 + N\pi_k/2` and
:math:`b_k = a_k \hat\sigma^2 / K^2` (so :math:`E[\tau_k] = K^2/\hat\sigma^2`, components
about 1/K as wide as the data, :math:`\hat\sigma^2` the data variance);
:math:`l_k = (\lambda_0 + N\pi_k) E[\tau_k]`; :math:`r` is the CAVI update given these.

References

1. C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, section 10.2.
2. D. M. Blei, A. Kucukelbir, J. D. McAuliffe, *Variational Inference: A Review for
   Statisticians*, JASA 2017, sections 2.4 and 3.
"""

import math
from dataclasses import dataclass
from typing import NamedTuple, Union

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from guides import _mixtures
from guides._cavi import CaviResult, autograd_gradient, check_settings, coordinate_ascent
from guides._mixtures import assignment_term, check_mixture_params, gamma_entropy, gamma_moments
from models.checks import as_float64
from models.gmm import DEFAULT_PRIOR, GMMPrior, check_data, check_weights

__all__ = [
    "MU_LOC",
    "MU_PRECISION",
    "TAU_CONCENTRATION",
    "TAU_RATE",
    "Z_PROBS",
    "CaviResult",
    "GMMData",
    "GMMParams",
    "cavi",
    "cavi_step",
    "elbo",
    "elbo_gradient",
    "global_guide",
    "initial_params",
    "mean_field_guide",
    "params_from_store",
    "responsibilities",
]

Z_PROBS = "q_z_probs"
MU_LOC = "q_mu_loc"
MU_PRECISION = "q_mu_precision"
TAU_CONCENTRATION = "q_tau_concentration"
TAU_RATE = "q_tau_rate"

_LOG_2PI = math.log(2 * math.pi)


class GMMData(NamedTuple):
    """What the model is conditioned on: ``x`` (N,) observations and the known mixing
    weights ``pi`` (K,); ``model(*data, prior)`` is :func:`models.gmm.model`. Any pair
    ``(x, pi)`` is accepted where a ``GMMData`` is expected."""

    x: torch.Tensor
    pi: torch.Tensor


@dataclass(frozen=True)
class GMMParams:
    r"""Variational parameters :math:`(r, m, l, a, b)` of the mean-field family, as
    float64 tensors (tensors passed in keep their autograd graph, so the closed-form
    :func:`elbo` can be differentiated through them).

    :param r: (N, K) responsibilities, each row on the simplex (within 1e-6).
    :param m: (K,) means of :math:`q(\mu_k)`; finite.
    :param l: (K,) precisions of :math:`q(\mu_k)`; > 0.
    :param a: (K,) Gamma concentrations of :math:`q(\tau_k)`; > 0.
    :param b: (K,) Gamma rates of :math:`q(\tau_k)`; > 0.
    :raises ValueError: naming the offending field (bad shape, a number of components
        that differs between fields, non-finite or out-of-range values).
    """

    r: torch.Tensor
    m: torch.Tensor
    l: torch.Tensor  # noqa: E741 (the course's name for the precision)
    a: torch.Tensor
    b: torch.Tensor

    def __post_init__(self):
        values = {name: as_float64(name, getattr(self, name)) for name in ("r", "m", "l", "a", "b")}
        check_mixture_params(values, event_shapes={})
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def num_components(self) -> int:
        return self.m.numel()


def _prepare(data):
    """``(x, pi)`` validated once, as float64."""
    if not (isinstance(data, tuple) and len(data) == 2):
        raise ValueError(f"data must be a pair (x, pi), got {type(data).__name__}")
    x, pi = data
    return check_data(x).to(torch.float64), check_weights(pi, dtype=torch.float64)


def _check_params(params, x, pi, name="params") -> GMMParams:
    return _mixtures.check_params(params, GMMParams, len(x), len(pi), name)


def _expected_sq(x, m, l):
    r""":math:`E_q[(x_n - \mu_k)^2] = (x_n - m_k)^2 + 1 / l_k`, shape (N, K)."""
    return (x[:, None] - m) ** 2 + 1 / l


def _expected_log_lik(x, log_pi, m, l, a, b):
    """E_q[log pi_k + log N(x_n | mu_k, 1 / tau_k)], (N, K)."""
    e_tau, e_log_tau = gamma_moments(a, b)
    return log_pi + 0.5 * (e_log_tau - _LOG_2PI) - 0.5 * e_tau * _expected_sq(x, m, l)


def _responsibilities(x, log_pi, m, l, a, b):
    return torch.softmax(_expected_log_lik(x, log_pi, m, l, a, b), dim=-1)


def responsibilities(data, m, l, a, b) -> torch.Tensor:
    r"""The CAVI update of :math:`q(z)` given :math:`q(\mu), q(\tau)`:
    :math:`r_{nk} \propto \pi_k \exp(\tfrac12 E[\log\tau_k] - \tfrac12 E[\tau_k]
    E[(x_n - \mu_k)^2])`, float64 (N, K); ``data`` is ``(x, pi)``."""
    x, pi = _prepare(data)
    m, l, a, b = (as_float64(n, v) for n, v in zip("mlab", (m, l, a, b)))
    for name, value in zip("mlab", (m, l, a, b)):
        if value.shape != pi.shape:
            raise ValueError(f"{name} has {value.numel()} components but pi has {len(pi)}")
    return _responsibilities(x, pi.log(), m, l, a, b)


def _update_mu(x, r, a, b, prior):
    n_k = r.sum(0)
    lam = prior.lambda0 + n_k
    m = (prior.lambda0 * prior.m0 + r.T @ x) / lam
    return m, (a / b) * lam


def _update_tau(x, r, m, l, prior):
    n_k = r.sum(0)
    a = prior.a0 + 0.5 * (n_k + 1)
    spread = prior.lambda0 * ((m - prior.m0) ** 2 + 1 / l) + (r * _expected_sq(x, m, l)).sum(0)
    return a, prior.b0 + 0.5 * spread


def _step(x, log_pi, p: GMMParams, prior) -> GMMParams:
    r = _responsibilities(x, log_pi, p.m, p.l, p.a, p.b)
    m, l = _update_mu(x, r, p.a, p.b, prior)
    a, b = _update_tau(x, r, m, l, prior)
    return GMMParams(r=r, m=m, l=l, a=a, b=b)


def cavi_step(data, params: GMMParams, prior: GMMPrior = DEFAULT_PRIOR) -> GMMParams:
    r"""One CAVI sweep: :math:`q(z)`, then :math:`q(\mu_k)`, then :math:`q(\tau_k)`
    (formulas in the module docstring). ``params.r`` is not read."""
    x, pi = _prepare(data)
    params = _check_params(params, x, pi)
    with torch.no_grad():
        return _step(x, pi.log(), params, prior)


def initial_params(data, prior: GMMPrior = DEFAULT_PRIOR, init: Union[None, int, GMMParams] = None) -> GMMParams:
    r"""The starting point used by :func:`cavi` and the guides (see the module docstring).

    :param data: ``(x, pi)``.
    :param init: ``None`` (data quantiles), an ``int`` seed (K distinct data points
        drawn with a local generator as the means), or a :class:`GMMParams`
        (validated against ``data`` and returned).
    :raises ValueError: for a bad ``init``, or fewer distinct data points than
        components when seeding.
    """
    return _initial_params(*_prepare(data), prior, init)


def _initial_params(x, pi, prior, init):
    _mixtures.check_init_kind(init, GMMParams)
    if isinstance(init, GMMParams):
        return _check_params(init, x, pi, name="init")
    num_data, num_components = len(x), len(pi)
    if init is None:
        levels = (torch.arange(num_components, dtype=torch.float64) + 0.5) / num_components
        m = torch.quantile(x, levels)
    else:
        if num_data < num_components:
            raise ValueError(f"cannot seed {num_components} components from {num_data} data points")
        generator = torch.Generator().manual_seed(int(init))
        m = x[torch.randperm(num_data, generator=generator)[:num_components]]
    variance = float(x.var()) if num_data > 1 else 1.0
    variance = variance if variance > 0 else 1.0
    a = prior.a0 + 0.5 * num_data * pi
    b = a * variance / num_components**2
    l = (prior.lambda0 + num_data * pi) * (a / b)  # noqa: E741
    r = _responsibilities(x, pi.log(), m, l, a, b)
    return GMMParams(r=r, m=m, l=l, a=a, b=b)


def elbo(data, params: GMMParams, prior: GMMPrior = DEFAULT_PRIOR) -> torch.Tensor:
    r"""Closed-form ELBO :math:`E_q[\log p(x, z, \mu, \tau)] - E_q[\log q(z, \mu, \tau)]`
    of the mean-field family, a float64 scalar differentiable in every field of
    ``params``; ``data`` is ``(x, pi)``. With :math:`E[\tau_k] = a_k/b_k`,
    :math:`E[\log\tau_k] = \psi(a_k) - \log b_k`:

    .. math::

        \mathcal{L} &= \sum_{n,k} r_{nk} \Big[\log\pi_k + \tfrac12 (E[\log\tau_k] - \log 2\pi)
            - \tfrac{E[\tau_k]}{2} \big((x_n - m_k)^2 + l_k^{-1}\big) - \log r_{nk}\Big]\\
        &\quad + \sum_k \Big[a_0 \log b_0 - \log\Gamma(a_0) + (a_0 - \tfrac12) E[\log\tau_k]
            - b_0 E[\tau_k] + \tfrac12 \log\tfrac{\lambda_0}{2\pi}
            - \tfrac{\lambda_0 E[\tau_k]}{2} \big((m_k - m_0)^2 + l_k^{-1}\big)\Big]\\
        &\quad + \sum_k \Big[\tfrac12 \log\tfrac{2\pi e}{l_k}
            + a_k - \log b_k + \log\Gamma(a_k) + (1 - a_k) \psi(a_k)\Big],

    with :math:`0 \log 0 = 0`.

    :raises ValueError: for bad data or weights, or ``params`` whose number of
        components differs from ``len(pi)`` or whose ``r`` has the wrong number of rows.
    """
    x, pi = _prepare(data)
    return _elbo(x, pi.log(), _check_params(params, x, pi), prior)


def _elbo(x, log_pi, p, prior):
    e_tau, e_log_tau = gamma_moments(p.a, p.b)
    log_prior = (
        prior.a0 * math.log(prior.b0)
        - math.lgamma(prior.a0)
        + (prior.a0 - 0.5) * e_log_tau
        - prior.b0 * e_tau
        + 0.5 * (math.log(prior.lambda0) - _LOG_2PI)
        - 0.5 * prior.lambda0 * e_tau * ((p.m - prior.m0) ** 2 + 1 / p.l)
    )
    entropy_mu = 0.5 * (_LOG_2PI + 1 - p.l.log())
    z_term = assignment_term(p.r, _expected_log_lik(x, log_pi, p.m, p.l, p.a, p.b))
    return z_term + (log_prior + entropy_mu + gamma_entropy(p.a, p.b)).sum()


def elbo_gradient(data, params: GMMParams, prior: GMMPrior = DEFAULT_PRIOR):
    r""":math:`\partial\mathcal{L}/\partial r, m, l, a, b` of :func:`elbo` (autograd; the
    derivative in :math:`r` is along every entry, not only along the simplex)."""
    return autograd_gradient(elbo, data, params, prior)


def cavi(
    data,
    prior: GMMPrior = DEFAULT_PRIOR,
    init: Union[None, int, GMMParams] = None,
    max_iters: int = 2000,
    tol: float = 1e-10,
) -> CaviResult:
    r"""Coordinate-ascent VI: sweeps of :func:`cavi_step` from :func:`initial_params`.

    Stops when no parameter changes by more than ``tol`` (relative to
    :math:`\max(1, |\text{value}|)`) in a sweep, or after ``max_iters`` sweeps. The
    ELBO history is non-decreasing. CAVI finds a local optimum; which one (up to
    relabeling) depends on ``init``.

    :param data: ``(x, pi)``.
    :rtype: CaviResult
    """
    x, pi = _prepare(data)
    check_settings(max_iters, tol)
    log_pi = pi.log()
    return coordinate_ascent(
        lambda params: _step(x, log_pi, params, prior),
        lambda params: _elbo(x, log_pi, params, prior),
        _initial_params(x, pi, prior, init),
        max_iters,
        tol,
    )


# ---------------------------------------------------------------- Pyro guides

_FAMILY = _mixtures.MixtureFamily(
    GMMParams,
    (
        ("m", MU_LOC, (), constraints.real),
        ("l", MU_PRECISION, (), constraints.positive),
        ("a", TAU_CONCENTRATION, (), constraints.positive),
        ("b", TAU_RATE, (), constraints.positive),
    ),
    Z_PROBS,
)


def _guide(data, pi, prior, init, with_r):
    data = check_data(data)
    pi = check_weights(pi)
    q = _mixtures.guide_params(_FAMILY, lambda: initial_params((data, pi), prior, init), len(data), len(pi), with_r)
    with pyro.plate("components", len(pi), dim=-1):
        pyro.sample("tau", dist.Gamma(q["a"], q["b"]))
        pyro.sample("mu", dist.Normal(q["m"], q["l"] ** -0.5))
    if with_r:
        with pyro.plate("data", len(data), dim=-1):
            pyro.sample("z", dist.Categorical(q["r"]))


def global_guide(data, pi, prior: GMMPrior = DEFAULT_PRIOR, init: Union[None, int, GMMParams] = None):
    r"""Guide :math:`\prod_k \mathcal{N}(\mu_k \mid m_k, l_k^{-1})\,
    \mathrm{Gamma}(\tau_k \mid a_k, b_k)` without ``"z"``, for
    ``TraceEnum_ELBO(max_plate_nesting=1)``, which then sums ``"z"`` out of the model.

    Parameters are created from ``init`` (see :func:`initial_params`) the first time
    only; afterwards the param store wins. Works inside a vectorized particle plate.

    :raises ValueError: for bad data or weights, or store params of another shape.
    """
    _guide(data, pi, prior, init, with_r=False)


def mean_field_guide(data, pi, prior: GMMPrior = DEFAULT_PRIOR, init: Union[None, int, GMMParams] = None):
    r"""The full mean-field guide: :func:`global_guide` and
    :math:`z_n \sim \mathrm{Categorical}(r_n)` in the ``"data"`` plate, with the (N, K)
    simplex param ``"q_z_probs"``. ``"z"`` is not reparameterizable, so estimators treat
    it with the score function (``Trace_ELBO`` does so itself).
    """
    _guide(data, pi, prior, init, with_r=True)


def params_from_store(data=None) -> GMMParams:
    r"""Read the guide parameters from Pyro's param store as a :class:`GMMParams`.

    After :func:`global_guide` there is no ``"q_z_probs"``; ``r`` is then the CAVI
    update given the stored globals (:func:`responsibilities`), for which ``data``
    ``(x, pi)`` is needed.
    """
    update = None if data is None else (lambda q: responsibilities(data, q["m"], q["l"], q["a"], q["b"]))
    return _mixtures.params_from_store(_FAMILY, update)
