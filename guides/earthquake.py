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
import numbers
from dataclasses import dataclass
from typing import Union

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from models.earthquake import DEFAULT_HYPER, EarthquakeHyper, check_data, check_weights
from guides._cavi import CaviResult, check_settings, coordinate_ascent
from guides._mixtures import as_float64, check_mixture_params, floored, shaped_param

__all__ = [
    "LAMBDA_CONCENTRATION",
    "LAMBDA_RATE",
    "MU_LOC",
    "MU_PRECISION",
    "Z_PROBS",
    "CaviResult",
    "EarthquakeParams",
    "cavi",
    "cavi_step",
    "elbo",
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


def _prepare(locations, counts, pi):
    x, s = check_data(locations, counts)
    return x.to(torch.float64), s.to(torch.float64), check_weights(pi, dtype=torch.float64)


def _check_params(params, s, pi, name="params") -> EarthquakeParams:
    if not isinstance(params, EarthquakeParams):
        raise ValueError(f"{name} must be an EarthquakeParams, got {type(params).__name__}")
    if params.num_components != len(pi):
        raise ValueError(f"{name} has {params.num_components} components but pi has {len(pi)}")
    if params.r.shape[0] != len(s):
        raise ValueError(f"{name}.r has {params.r.shape[0]} rows but data has {len(s)} points")
    return params


def _expected_sq(x, m, p):
    r""":math:`E_q\|X_n - \mu_k\|^2 = \|X_n - m_k\|^2 + 2/p_k`, shape (N, K)."""
    return ((x[:, None, :] - m) ** 2).sum(-1) + 2 / p


def _expected_log_lik(x, s, log_pi, m, p, a, b, hyper):
    """E_q[log pi_k + log Poisson(S_n | lambda_k) + log N(X_n | mu_k, I / tau)], (N, K)."""
    e_rate = a / b
    e_log_rate = torch.digamma(a) - b.log()
    log_poisson = s[:, None] * e_log_rate - e_rate - torch.lgamma(s + 1)[:, None]
    log_normal = math.log(hyper.tau) - _LOG_2PI - 0.5 * hyper.tau * _expected_sq(x, m, p)
    return log_pi + log_poisson + log_normal


def _responsibilities(x, s, log_pi, m, p, a, b, hyper):
    return torch.softmax(_expected_log_lik(x, s, log_pi, m, p, a, b, hyper), dim=-1)


def responsibilities(locations, counts, pi, m, p, a, b, hyper: EarthquakeHyper = DEFAULT_HYPER):
    r"""The CAVI update of :math:`q(Z)` given :math:`q(\mu), q(\lambda)`; float64 (N, K)."""
    x, s, pi = _prepare(locations, counts, pi)
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


def cavi_step(locations, counts, pi, params: EarthquakeParams, hyper: EarthquakeHyper = DEFAULT_HYPER):
    r"""One CAVI sweep: :math:`q(Z)`, then every :math:`q(\mu_k)` and :math:`q(\lambda_k)`
    (formulas in the module docstring). ``params.r`` is not read."""
    x, s, pi = _prepare(locations, counts, pi)
    params = _check_params(params, s, pi)
    with torch.no_grad():
        return _step(x, s, pi.log(), params, hyper)


def initial_params(
    locations, counts, pi, hyper: EarthquakeHyper = DEFAULT_HYPER, init: Union[None, int, EarthquakeParams] = None
) -> EarthquakeParams:
    r"""The starting point used by :func:`cavi` and the guides (see the module docstring).

    :param init: ``None`` (farthest-first traversal), an ``int`` seed (K distinct
        locations drawn with a local generator), or an :class:`EarthquakeParams`
        (validated and returned).
    :raises ValueError: for a bad ``init`` or fewer data points than components.
    """
    x, s, pi = _prepare(locations, counts, pi)
    if isinstance(init, EarthquakeParams):
        return _check_params(init, s, pi, name="init")
    num_data, num_components = len(s), len(pi)
    if init is not None and (isinstance(init, bool) or not isinstance(init, numbers.Integral)):
        raise ValueError(f"init must be None, an int seed or an EarthquakeParams, got {type(init).__name__}")
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


def elbo(locations, counts, pi, params: EarthquakeParams, hyper: EarthquakeHyper = DEFAULT_HYPER) -> torch.Tensor:
    r"""Closed-form ELBO :math:`E_q[\log p(X, S, Z, \mu, \lambda)] - E_q[\log q]`, a
    float64 scalar differentiable in every field of ``params``:

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
    x, s, pi = _prepare(locations, counts, pi)
    q = _check_params(params, s, pi)
    log_lik = _expected_log_lik(x, s, pi.log(), q.m, q.p, q.a, q.b, hyper)
    positive = q.r > 0
    safe_r = torch.where(positive, q.r, torch.ones_like(q.r))  # 0 log 0 = 0 with finite gradients
    neg_entropy_z = torch.where(positive, safe_r * safe_r.log(), torch.zeros_like(q.r))
    e_rate = q.a / q.b
    e_log_rate = torch.digamma(q.a) - q.b.log()
    nu = torch.tensor(hyper.nu, dtype=torch.float64)
    log_prior_mu = math.log(hyper.rho) - _LOG_2PI - 0.5 * hyper.rho * (((q.m - nu) ** 2).sum(-1) + 2 / q.p)
    log_prior_rate = (
        hyper.alpha * math.log(hyper.beta)
        - math.lgamma(hyper.alpha)
        + (hyper.alpha - 1) * e_log_rate
        - hyper.beta * e_rate
    )
    entropy_mu = 1 + _LOG_2PI - q.p.log()
    entropy_rate = q.a - q.b.log() + torch.lgamma(q.a) + (1 - q.a) * torch.digamma(q.a)
    return (q.r * log_lik - neg_entropy_z).sum() + (log_prior_mu + log_prior_rate + entropy_mu + entropy_rate).sum()


def cavi(
    locations,
    counts,
    pi,
    hyper: EarthquakeHyper = DEFAULT_HYPER,
    init: Union[None, int, EarthquakeParams] = None,
    max_iters: int = 2000,
    tol: float = 1e-10,
) -> CaviResult:
    r"""Coordinate-ascent VI: sweeps of :func:`cavi_step` from :func:`initial_params`
    until no parameter changes by more than ``tol`` (relative to
    :math:`\max(1, |\text{value}|)`) or ``max_iters`` sweeps. The ELBO history is
    non-decreasing; the optimum found is local and depends on ``init``.

    :rtype: CaviResult
    """
    x, s, pi = _prepare(locations, counts, pi)
    check_settings(max_iters, tol)
    log_pi = pi.log()
    return coordinate_ascent(
        lambda params: _step(x, s, log_pi, params, hyper),
        lambda params: elbo(x, s, pi, params, hyper),
        initial_params(x, s, pi, hyper, init),
        max_iters,
        tol,
    )


# ---------------------------------------------------------------- Pyro guides


def _guide_params(x, s, pi, hyper, init, with_r):
    cache = {}
    dtype = torch.get_default_dtype()

    def start(name):
        if "params" not in cache:
            cache["params"] = initial_params(x, s, pi, hyper, init)
        return getattr(cache["params"], name).detach().to(dtype)

    k = len(pi)
    positive = constraints.positive
    m = shaped_param(MU_LOC, lambda: start("m"), (k, 2))
    p = shaped_param(MU_PRECISION, lambda: start("p"), (k,), positive)
    a = shaped_param(LAMBDA_CONCENTRATION, lambda: start("a"), (k,), positive)
    b = shaped_param(LAMBDA_RATE, lambda: start("b"), (k,), positive)
    r = shaped_param(Z_PROBS, lambda: floored(start("r")), (len(s), k), constraints.simplex) if with_r else None
    return r, m, p, a, b


def _sample_globals(m, p, a, b, num_components):
    with pyro.plate("components", num_components, dim=-1):
        pyro.sample("lambda", dist.Gamma(a, b))
        pyro.sample("mu", dist.Normal(m, (p**-0.5).unsqueeze(-1)).to_event(1))


def global_guide(
    locations, counts, pi, hyper: EarthquakeHyper = DEFAULT_HYPER, init: Union[None, int, EarthquakeParams] = None
):
    r"""Guide :math:`\prod_k \mathcal{N}(\mu_k \mid m_k, p_k^{-1} I)\,
    \mathrm{Gamma}(\lambda_k \mid a_k, b_k)` without ``"z"``, for
    ``TraceEnum_ELBO(max_plate_nesting=1)``. Parameters are created from ``init`` (see
    :func:`initial_params`) the first time only; afterwards the param store wins.
    """
    x, s = check_data(locations, counts)
    pi = check_weights(pi)
    _, m, p, a, b = _guide_params(x, s, pi, hyper, init, with_r=False)
    _sample_globals(m, p, a, b, len(pi))


def mean_field_guide(
    locations, counts, pi, hyper: EarthquakeHyper = DEFAULT_HYPER, init: Union[None, int, EarthquakeParams] = None
):
    r"""The full mean-field guide: :func:`global_guide` and
    :math:`Z_n \sim \mathrm{Categorical}(r_n)` in the ``"data"`` plate (param
    ``"q_z_probs"``, (N, K) simplex), for score-function estimators."""
    x, s = check_data(locations, counts)
    pi = check_weights(pi)
    r, m, p, a, b = _guide_params(x, s, pi, hyper, init, with_r=True)
    _sample_globals(m, p, a, b, len(pi))
    with pyro.plate("data", len(s), dim=-1):
        pyro.sample("z", dist.Categorical(r))


def params_from_store(locations=None, counts=None, pi=None, hyper: EarthquakeHyper = DEFAULT_HYPER):
    r"""Read the guide parameters from Pyro's param store as :class:`EarthquakeParams`;
    without ``"q_z_probs"`` (after :func:`global_guide`), ``r`` is the CAVI update given
    the stored globals, which needs the data and ``pi``."""
    store = pyro.get_param_store()
    m, p, a, b = (store[name].detach() for name in (MU_LOC, MU_PRECISION, LAMBDA_CONCENTRATION, LAMBDA_RATE))
    if Z_PROBS in store:
        r = store[Z_PROBS].detach().to(torch.float64)
        r = r / r.sum(-1, keepdim=True)
    elif locations is None or counts is None or pi is None:
        raise ValueError(f"no {Z_PROBS!r} in the param store; pass locations, counts and pi to compute r")
    else:
        r = responsibilities(locations, counts, pi, m, p, a, b, hyper)
    return EarthquakeParams(r=r, m=m, p=p, a=a, b=b)
