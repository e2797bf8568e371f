r"""Guides and CAVI for :mod:`models.earthquake`.

Mean-field family, fully factorized:

.. math::

    q(Z, \mu, \lambda) = \prod_{n=1}^N \mathrm{Categorical}(Z_n \mid r_n)
        \prod_{k=1}^K \mathcal{N}(\mu_k \mid m_k, p_k^{-1} I_2)\,
        \mathrm{Gamma}(\lambda_k \mid a_k, b_k) \quad (b_k \text{ a rate}).

CAVI updates (:math:`\log q_j^* = E_{-j}[\log p] + \text{const}`), with
:math:`N_k = \sum_n r_{nk}`:

.. math::

    p_k &= \rho + \tau N_k, \qquad
    m_k = \frac{\rho\nu + \tau \sum_n r_{nk} X_n}{p_k},\\
    a_k &= \alpha + \textstyle\sum_n r_{nk} S_n, \qquad b_k = \beta + N_k,\\
    r_{nk} &\propto \exp\Big(\log\pi_k + S_n E[\log\lambda_k] - E[\lambda_k]
        - \tfrac\tau2 \big(\|X_n - m_k\|^2 + 2/p_k\big)\Big),

where :math:`E[\lambda_k] = a_k/b_k`, :math:`E[\log\lambda_k] = \psi(a_k) - \log b_k`
and :math:`E\|X_n - \mu_k\|^2 = \|X_n - m_k\|^2 + 2/p_k` (two dimensions). The
factors :math:`q(\mu_k)` and :math:`q(\lambda_k)` do not depend on each other, so a
sweep (:func:`cavi_step`) is :math:`r`, then all globals; the ELBO (:func:`elbo`)
never decreases.

Pyro guides: :func:`global_guide` (``"lambda"``, ``"mu"`` only, for ``TraceEnum_ELBO``
with ``"z"`` enumerated) and :func:`mean_field_guide` (also ``"z"``). Parameters:
``"q_z_probs"`` (N, K) simplex, ``"q_mu_loc"`` (K, 2), ``"q_mu_precision"`` (K,),
``"q_lambda_concentration"`` and ``"q_lambda_rate"`` (K,), positive.

Initialization (:func:`initial_params`), deterministic: the means :math:`m_k` are
picked by farthest-first traversal of the locations (the location farthest from the
data mean, then repeatedly the location farthest from those already picked); an
integer seed instead picks K distinct locations at random. Then
:math:`p_k = \rho + \tau N\pi_k`, :math:`a_k = \alpha + N\pi_k \bar S`,
:math:`b_k = \beta + N\pi_k`, and :math:`r` is the CAVI update given these.
Farthest-first is sensitive to outlying locations; pass a seed or a
:class:`EarthquakeParams` where that matters.

References

1. C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, section 10.2.
2. D. M. Blei, A. Kucukelbir, J. D. McAuliffe, *Variational Inference: A Review for
   Statisticians*, JASA 2017.
3. T. F. Gonzalez, *Clustering to minimize the maximum intercluster distance*,
   Theoretical Computer Science 38, 1985 (farthest-first traversal).
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
from models.earthquake import DEFAULT_HYPER, EarthquakeHyper, check_data, check_weights

__all__ = [
    "LAMBDA_CONCENTRATION",
    "LAMBDA_RATE",
    "MU_LOC",
    "MU_PRECISION",
    "Z_PROBS",
    "CaviResult",
    "EarthquakeData",
    "EarthquakeParams",
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
LAMBDA_CONCENTRATION = "q_lambda_concentration"
LAMBDA_RATE = "q_lambda_rate"

_LOG_2PI = math.log(2 * math.pi)


class EarthquakeData(NamedTuple):
    """What the model is conditioned on: ``locations`` (N, 2), ``counts`` (N,) and the
    known mixing weights ``pi`` (K,); ``model(*data, hyper)`` is
    :func:`models.earthquake.model`. Any triple is accepted where one is expected."""

    locations: torch.Tensor
    counts: torch.Tensor
    pi: torch.Tensor


@dataclass(frozen=True)
class EarthquakeParams:
    r"""Variational parameters :math:`(r, m, p, a, b)` as float64 tensors (tensors passed
    in keep their autograd graph).

    :param r: (N, K) responsibilities, rows on the simplex (within 1e-6).
    :param m: (K, 2) means of :math:`q(\mu_k)`; finite.
    :param p: (K,) precisions of :math:`q(\mu_k)`; > 0.
    :param a: (K,) Gamma concentrations of :math:`q(\lambda_k)`; > 0.
    :param b: (K,) Gamma rates of :math:`q(\lambda_k)`; > 0.
    :raises ValueError: naming the offending field.
    """

    r: torch.Tensor
    m: torch.Tensor
    p: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor

    def __post_init__(self):
        values = {name: as_float64(name, getattr(self, name)) for name in ("r", "m", "p", "a", "b")}
        check_mixture_params(values, event_shapes={"m": (2,)})
        for name, value in values.items():
            object.__setattr__(self, name, value)

    @property
    def num_components(self) -> int:
        return self.p.numel()


def _prepare(data):
    """``(locations, counts, pi)`` validated once, as float64."""
    if not (isinstance(data, tuple) and len(data) == 3):
        raise ValueError(f"data must be a triple (locations, counts, pi), got {type(data).__name__}")
    locations, counts, pi = data
    x, s = check_data(locations, counts)
    return x.to(torch.float64), s.to(torch.float64), check_weights(pi, dtype=torch.float64)


def _check_params(params, s, pi, name="params") -> EarthquakeParams:
    return _mixtures.check_params(params, EarthquakeParams, len(s), len(pi), name)


def _expected_sq(x, m, p):
    r""":math:`E_q\|X_n - \mu_k\|^2 = \|X_n - m_k\|^2 + 2/p_k`, shape (N, K)."""
    return ((x[:, None, :] - m) ** 2).sum(-1) + 2 / p


def _expected_log_lik(x, s, log_pi, m, p, a, b, hyper):
    """E_q[log pi_k + log Poisson(S_n | lambda_k) + log N(X_n | mu_k, I / tau)], (N, K)."""
    e_rate, e_log_rate = gamma_moments(a, b)
    log_poisson = s[:, None] * e_log_rate - e_rate - torch.lgamma(s + 1)[:, None]
    log_normal = math.log(hyper.tau) - _LOG_2PI - 0.5 * hyper.tau * _expected_sq(x, m, p)
    return log_pi + log_poisson + log_normal


def _responsibilities(x, s, log_pi, m, p, a, b, hyper):
    return torch.softmax(_expected_log_lik(x, s, log_pi, m, p, a, b, hyper), dim=-1)


def responsibilities(data, m, p, a, b, hyper: EarthquakeHyper = DEFAULT_HYPER):
    r"""The CAVI update of :math:`q(Z)` given :math:`q(\mu), q(\lambda)`; float64 (N, K);
    ``data`` is ``(locations, counts, pi)``."""
    x, s, pi = _prepare(data)
    m, p, a, b = (as_float64(n, v) for n, v in zip("mpab", (m, p, a, b)))
    if m.dim() != 2 or m.shape != (len(pi), 2):
        raise ValueError(f"m must have shape ({len(pi)}, 2) for {len(pi)} components, got {tuple(m.shape)}")
    for name, value in zip("pab", (p, a, b)):
        if value.shape != pi.shape:
            raise ValueError(f"{name} has {value.numel()} components but pi has {len(pi)}")
    return _responsibilities(x, s, pi.log(), m, p, a, b, hyper)


def _step(x, s, log_pi, params, hyper) -> EarthquakeParams:
    r = _responsibilities(x, s, log_pi, params.m, params.p, params.a, params.b, hyper)
    n_k = r.sum(0)
    p = hyper.rho + hyper.tau * n_k
    nu = torch.tensor(hyper.nu, dtype=torch.float64)
    m = (hyper.rho * nu + hyper.tau * (r.T @ x)) / p[:, None]
    a = hyper.alpha + r.T @ s
    b = hyper.beta + n_k
    return EarthquakeParams(r=r, m=m, p=p, a=a, b=b)


def cavi_step(data, params: EarthquakeParams, hyper: EarthquakeHyper = DEFAULT_HYPER) -> EarthquakeParams:
    r"""One CAVI sweep: :math:`q(Z)`, then every :math:`q(\mu_k)` and :math:`q(\lambda_k)`
    (formulas in the module docstring). ``params.r`` is not read."""
    x, s, pi = _prepare(data)
    params = _check_params(params, s, pi)
    with torch.no_grad():
        return _step(x, s, pi.log(), params, hyper)


def initial_params(
    data, hyper: EarthquakeHyper = DEFAULT_HYPER, init: Union[None, int, EarthquakeParams] = None
) -> EarthquakeParams:
    r"""The starting point used by :func:`cavi` and the guides (see the module docstring).

    :param data: ``(locations, counts, pi)``.
    :param init: ``None`` (farthest-first traversal), an ``int`` seed (K distinct
        locations drawn with a local generator), or an :class:`EarthquakeParams`
        (validated and returned).
    :raises ValueError: for a bad ``init`` or fewer data points than components.
    """
    return _initial_params(*_prepare(data), hyper, init)


def _initial_params(x, s, pi, hyper, init):
    _mixtures.check_init_kind(init, EarthquakeParams)
    if isinstance(init, EarthquakeParams):
        return _check_params(init, s, pi, name="init")
    num_data, num_components = len(s), len(pi)
    if num_data < num_components:
        raise ValueError(f"cannot initialize {num_components} components from {num_data} data points")
    if init is None:
        chosen = [int(((x - x.mean(0)) ** 2).sum(-1).argmax())]
        distance = ((x - x[chosen[0]]) ** 2).sum(-1)
        for _ in range(1, num_components):
            chosen.append(int(distance.argmax()))
            distance = torch.minimum(distance, ((x - x[chosen[-1]]) ** 2).sum(-1))
        m = x[chosen]
    else:
        generator = torch.Generator().manual_seed(int(init))
        m = x[torch.randperm(num_data, generator=generator)[:num_components]]
    weight = num_data * pi
    p = hyper.rho + hyper.tau * weight
    a = hyper.alpha + weight * s.mean()
    b = hyper.beta + weight
    r = _responsibilities(x, s, pi.log(), m, p, a, b, hyper)
    return EarthquakeParams(r=r, m=m, p=p, a=a, b=b)


def elbo(data, params: EarthquakeParams, hyper: EarthquakeHyper = DEFAULT_HYPER) -> torch.Tensor:
    r"""Closed-form ELBO :math:`E_q[\log p(X, S, Z, \mu, \lambda)] - E_q[\log q]`, a
    float64 scalar differentiable in every field of ``params``; ``data`` is
    ``(locations, counts, pi)``:

    .. math::

        \mathcal{L} &= \sum_{n,k} r_{nk} \Big[\log\pi_k + S_n E[\log\lambda_k] - E[\lambda_k]
            - \log S_n! + \log\tfrac{\tau}{2\pi}
            - \tfrac\tau2 \big(\|X_n - m_k\|^2 + \tfrac{2}{p_k}\big) - \log r_{nk}\Big]\\
        &\quad + \sum_k \Big[\log\tfrac{\rho}{2\pi} - \tfrac\rho2 \big(\|m_k - \nu\|^2
            + \tfrac{2}{p_k}\big) + \alpha\log\beta - \log\Gamma(\alpha)
            + (\alpha - 1) E[\log\lambda_k] - \beta E[\lambda_k]\Big]\\
        &\quad + \sum_k \Big[1 + \log 2\pi - \log p_k
            + a_k - \log b_k + \log\Gamma(a_k) + (1 - a_k)\psi(a_k)\Big].

    :raises ValueError: for bad data or weights, or ``params`` whose number of
        components differs from ``len(pi)`` or whose ``r`` has the wrong number of rows.
    """
    x, s, pi = _prepare(data)
    return _elbo(x, s, pi.log(), _check_params(params, s, pi), hyper)


def _elbo(x, s, log_pi, q, hyper):
    e_rate, e_log_rate = gamma_moments(q.a, q.b)
    nu = torch.tensor(hyper.nu, dtype=torch.float64)
    log_prior_mu = math.log(hyper.rho) - _LOG_2PI - 0.5 * hyper.rho * (((q.m - nu) ** 2).sum(-1) + 2 / q.p)
    log_prior_rate = (
        hyper.alpha * math.log(hyper.beta)
        - math.lgamma(hyper.alpha)
        + (hyper.alpha - 1) * e_log_rate
        - hyper.beta * e_rate
    )
    entropy_mu = 1 + _LOG_2PI - q.p.log()
    z_term = assignment_term(q.r, _expected_log_lik(x, s, log_pi, q.m, q.p, q.a, q.b, hyper))
    return z_term + (log_prior_mu + log_prior_rate + entropy_mu + gamma_entropy(q.a, q.b)).sum()


def elbo_gradient(data, params: EarthquakeParams, hyper: EarthquakeHyper = DEFAULT_HYPER):
    r""":math:`\partial\mathcal{L}/\partial r, m, p, a, b` of :func:`elbo` (autograd; the
    derivative in :math:`r` is along every entry, not only along the simplex)."""
    return autograd_gradient(elbo, data, params, hyper)


def cavi(
    data,
    hyper: EarthquakeHyper = DEFAULT_HYPER,
    init: Union[None, int, EarthquakeParams] = None,
    max_iters: int = 2000,
    tol: float = 1e-10,
) -> CaviResult:
    r"""Coordinate-ascent VI: sweeps of :func:`cavi_step` from :func:`initial_params`
    until no parameter changes by more than ``tol`` (relative to
    :math:`\max(1, |\text{value}|)`) or ``max_iters`` sweeps. The ELBO history is
    non-decreasing; the optimum found is local and depends on ``init``.

    :param data: ``(locations, counts, pi)``.
    :rtype: CaviResult
    """
    x, s, pi = _prepare(data)
    check_settings(max_iters, tol)
    log_pi = pi.log()
    return coordinate_ascent(
        lambda params: _step(x, s, log_pi, params, hyper),
        lambda params: _elbo(x, s, log_pi, params, hyper),
        _initial_params(x, s, pi, hyper, init),
        max_iters,
        tol,
    )


# ---------------------------------------------------------------- Pyro guides

_FAMILY = _mixtures.MixtureFamily(
    EarthquakeParams,
    (
        ("m", MU_LOC, (2,), constraints.real),
        ("p", MU_PRECISION, (), constraints.positive),
        ("a", LAMBDA_CONCENTRATION, (), constraints.positive),
        ("b", LAMBDA_RATE, (), constraints.positive),
    ),
    Z_PROBS,
)


def _guide(locations, counts, pi, hyper, init, with_r):
    x, s = check_data(locations, counts)
    pi = check_weights(pi)
    q = _mixtures.guide_params(_FAMILY, lambda: initial_params((x, s, pi), hyper, init), len(s), len(pi), with_r)
    with pyro.plate("components", len(pi), dim=-1):
        pyro.sample("lambda", dist.Gamma(q["a"], q["b"]))
        pyro.sample("mu", dist.Normal(q["m"], (q["p"] ** -0.5).unsqueeze(-1)).to_event(1))
    if with_r:
        with pyro.plate("data", len(s), dim=-1):
            pyro.sample("z", dist.Categorical(q["r"]))


def global_guide(
    locations, counts, pi, hyper: EarthquakeHyper = DEFAULT_HYPER, init: Union[None, int, EarthquakeParams] = None
):
    r"""Guide :math:`\prod_k \mathcal{N}(\mu_k \mid m_k, p_k^{-1} I)\,
    \mathrm{Gamma}(\lambda_k \mid a_k, b_k)` without ``"z"``, for
    ``TraceEnum_ELBO(max_plate_nesting=1)``. Parameters are created from ``init`` (see
    :func:`initial_params`) the first time only; afterwards the param store wins.
    """
    _guide(locations, counts, pi, hyper, init, with_r=False)


def mean_field_guide(
    locations, counts, pi, hyper: EarthquakeHyper = DEFAULT_HYPER, init: Union[None, int, EarthquakeParams] = None
):
    r"""The full mean-field guide: :func:`global_guide` and
    :math:`Z_n \sim \mathrm{Categorical}(r_n)` in the ``"data"`` plate (param
    ``"q_z_probs"``, (N, K) simplex), for score-function estimators."""
    _guide(locations, counts, pi, hyper, init, with_r=True)


def params_from_store(data=None, hyper: EarthquakeHyper = DEFAULT_HYPER) -> EarthquakeParams:
    r"""Read the guide parameters from Pyro's param store as :class:`EarthquakeParams`;
    without ``"q_z_probs"`` (after :func:`global_guide`), ``r`` is the CAVI update given
    the stored globals, which needs ``data`` ``(locations, counts, pi)``."""
    update = None if data is None else (lambda q: responsibilities(data, q["m"], q["p"], q["a"], q["b"], hyper))
    return _mixtures.params_from_store(_FAMILY, update)
