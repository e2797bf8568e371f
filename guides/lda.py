r"""Mean-field variational inference for :mod:`models.lda`: closed-form ELBO, local
step, batch CAVI, stochastic VI (Hoffman et al. 2013) and a Pyro guide.

Mean-field family (Blei et al. 2003, section 5.1):

.. math::

    q(\beta, \theta, z) = \prod_k \mathrm{Dirichlet}(\beta_k \mid \lambda_k)
        \prod_d \mathrm{Dirichlet}(\theta_d \mid \gamma_d)
        \prod_{d,n} \mathrm{Categorical}(z_{dn} \mid \phi_{dn}).

With :math:`E[\log\theta_{dk}] = \psi(\gamma_{dk}) - \psi(\sum_j \gamma_{dj})` and
:math:`E[\log\beta_{kw}] = \psi(\lambda_{kw}) - \psi(\sum_v \lambda_{kv})`, the optimal
:math:`\phi_{dn}` depends on token :math:`n` only through its word, so all tokens of word
:math:`w` in document :math:`d` share :math:`\phi_{dwk} \propto \exp(E[\log\theta_{dk}] +
E[\log\beta_{kw}])` and everything runs on the (D, V) counts :math:`n_{dw}`:

.. math::

    \mathcal{L} = \sum_{d,w} n_{dw} \sum_k \phi_{dwk} \big(E[\log\theta_{dk}]
        + E[\log\beta_{kw}] - \log\phi_{dwk}\big)
        - \sum_d \mathrm{KL}(q(\theta_d) \,\|\, p(\theta_d))
        - \sum_k \mathrm{KL}(q(\beta_k) \,\|\, p(\beta_k)).

At the optimal :math:`\phi` the word term is :math:`\sum_{d,w} n_{dw} \log \sum_k
\exp(E[\log\theta_{dk}] + E[\log\beta_{kw}])` (the bound Hoffman et al. track), which
:func:`elbo` uses when no ``phi`` is given.

Local step (the inner loop of Hoffman et al.'s algorithm boxes): alternate :math:`\phi_{dw} \leftarrow
\phi^*(\gamma_d, \lambda)` and :math:`\gamma_d \leftarrow \alpha + \sum_w n_{dw}
\phi_{dw}` until the mean absolute change of :math:`\gamma_d` is below ``tol`` for every
document; return :math:`\gamma` and :math:`S_{kw} = \sum_d n_{dw} \phi_{dwk}`. Batch CAVI
(Hoffman et al.'s box "batch variational inference for LDA") sets :math:`\lambda \leftarrow \eta + S` after a local step
on the whole corpus (:func:`cavi` explains its choice of start for :math:`\gamma`). SVI
takes a minibatch :math:`B` and

.. math::

    \lambda \leftarrow (1 - \rho_t)\lambda + \rho_t\Big(\eta + \frac{D}{|B|} S_B\Big),
    \qquad \rho_t = (\tau_0 + t)^{-\kappa}, \quad t = 1, 2, \dots,

a natural-gradient step of length :math:`\rho_t`; :math:`\kappa \in (0.5, 1]` and
:math:`\tau_0 \ge 0` give :math:`\sum\rho_t = \infty`, :math:`\sum\rho_t^2 < \infty`
(Robbins-Monro), and :math:`t` starts at 1 so that :math:`\rho_t \le 1`.

Pyro guide. :func:`guide` samples :math:`\beta_k \sim \mathrm{Dirichlet}(\lambda_k)` and
:math:`\theta_d \sim \mathrm{Dirichlet}(\gamma_d)` (reparameterized) and has no ``z``:
against :func:`models.lda.model`, where :math:`z` is summed out, ``Trace_ELBO`` estimates
the *collapsed* bound :math:`E_{q(\theta)q(\beta)}[\log p(w, \theta, \beta) - \log
q(\theta) q(\beta)]`. It equals the ELBO of the family with :math:`q(z \mid \theta, \beta)
= p(z \mid w, \theta, \beta)` and is at least the mean-field ELBO above at the best
:math:`\phi` (Jensen: :math:`\log\sum_k \theta_{dk}\beta_{kw} \ge \sum_k \phi_{dwk}
\log(\theta_{dk}\beta_{kw}/\phi_{dwk})` for every :math:`\phi`). Adam on it therefore
moves the same :math:`(\lambda, \gamma)` by a slightly different objective; methods are
compared with :func:`corpus_elbo`, the closed form with a local step for :math:`\gamma`.

References

1. D. M. Blei, A. Y. Ng, M. I. Jordan, *Latent Dirichlet Allocation*, JMLR 3, 2003,
   section 5 and appendix A.3.
2. M. D. Hoffman, D. M. Blei, C. Wang, J. Paisley, *Stochastic Variational Inference*,
   JMLR 14, 2013: the LDA section and its boxes "batch variational inference for LDA"
   and "stochastic variational inference for LDA".
3. M. D. Hoffman, D. M. Blei, F. Bach, *Online Learning for Latent Dirichlet
   Allocation*, NIPS 2010 (the reference implementation ``onlineldavb.py``).
"""

import math
import numbers
import time
from dataclasses import dataclass
from typing import Callable, NamedTuple, Optional

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from guides._cavi import CaviResult, autograd_gradient
from guides._mixtures import shaped_param
from models.checks import as_int
from models.lda import LDAPrior, check_concentration, check_counts, check_num_topics

__all__ = [
    "GAMMA",
    "LAMBDA",
    "CaviResult",
    "LDAParams",
    "LDAPrior",
    "LocalStep",
    "SviResult",
    "cavi",
    "cavi_step",
    "check_schedule",
    "corpus_elbo",
    "dirichlet_expected_log",
    "elbo",
    "elbo_gradient",
    "guide",
    "initial_gamma",
    "initial_lambda",
    "local_step",
    "optimal_phi",
    "params_from_store",
    "step_size",
    "stochastic_vi",
    "svi_update",
]

LAMBDA = "q_beta_concentration"
GAMMA = "q_theta_concentration"


def _counts64(counts):
    return check_counts(counts).to(torch.float64)


def _positive_int(name, value):
    return as_int(name, value)


def _non_negative(name, value):
    if isinstance(value, bool) or not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite non-negative number, got {value!r}")
    return float(value)


def _concentrations(name, value, shape):
    """``value`` as float64 with positive finite entries and the given shape (``None``
    in ``shape`` is the number of topics, read from ``value``)."""
    try:
        value = torch.as_tensor(value).to(torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be an array of positive numbers: {e}") from e
    if value.dim() != len(shape) or any(n is not None and n != m for n, m in zip(shape, value.shape)):
        expected = tuple("K" if n is None else n for n in shape)
        raise ValueError(f"{name} must have shape {expected}, got {tuple(value.shape)}".replace("'", ""))
    if not bool((torch.isfinite(value) & (value > 0)).all()):
        raise ValueError(f"{name} must be finite and positive")
    return value


def dirichlet_expected_log(concentration) -> torch.Tensor:
    r""":math:`E[\log x_i] = \psi(c_i) - \psi(\sum_j c_j)` under
    :math:`\mathrm{Dirichlet}(c)`, along the last dim."""
    return torch.digamma(concentration) - torch.digamma(concentration.sum(-1, keepdim=True))


def _shifted_exp(e_log_theta, e_log_beta):
    """exp(E log theta) and exp(E log beta), shifted by their maxima over topics (per
    document and per word), so neither underflows; the shifts cancel in phi."""
    theta_shift = e_log_theta.max(-1, keepdim=True).values
    beta_shift = e_log_beta.max(0, keepdim=True).values
    return (e_log_theta - theta_shift).exp(), (e_log_beta - beta_shift).exp(), theta_shift, beta_shift


def _normalizer(exp_theta, exp_beta):
    return (exp_theta @ exp_beta).clamp_min(torch.finfo(torch.float64).tiny)


def optimal_phi(lam, gamma) -> torch.Tensor:
    r""":math:`\phi_{dwk} \propto \exp(E[\log\theta_{dk}] + E[\log\beta_{kw}])`, shape (D, V, K)."""
    e_log_theta, e_log_beta = dirichlet_expected_log(gamma), dirichlet_expected_log(lam)
    return torch.softmax(e_log_theta[:, None, :] + e_log_beta.T[None, :, :], dim=-1)


def _neg_kl_dirichlet(prior, posterior, e_log):
    """-KL(Dirichlet(posterior) || symmetric Dirichlet(prior)), summed over rows."""
    size = posterior.shape[-1]
    log_norm_prior = math.lgamma(size * prior) - size * math.lgamma(prior)
    log_norm_posterior = torch.lgamma(posterior).sum(-1) - torch.lgamma(posterior.sum(-1))
    return (log_norm_prior + ((prior - posterior) * e_log).sum(-1) + log_norm_posterior).sum()


@dataclass(frozen=True)
class LDAParams:
    r"""Variational parameters of the mean-field family, float64 tensors (tensors passed
    in keep their graph).

    :param lam: (K, V) concentrations of :math:`q(\beta_k)`; finite, > 0.
    :param gamma: (D, K) concentrations of :math:`q(\theta_d)`; finite, > 0.
    :param phi: optional (D, V, K) word-topic responsibilities; ``None`` stands for the
        optimal :math:`\phi` given ``lam`` and ``gamma`` (:func:`optimal_phi`).
    :raises ValueError: naming the field, for bad values or shapes that disagree.
    """

    lam: torch.Tensor
    gamma: torch.Tensor
    phi: Optional[torch.Tensor] = None

    def __post_init__(self):
        lam = _concentrations("lam", self.lam, (None, None))
        gamma = _concentrations("gamma", self.gamma, (None, lam.shape[0]))
        phi = self.phi
        if phi is not None:
            phi = phi.to(torch.float64) if isinstance(phi, torch.Tensor) else torch.as_tensor(phi, dtype=torch.float64)
            shape = (gamma.shape[0], lam.shape[1], lam.shape[0])
            if tuple(phi.shape) != shape:
                raise ValueError(f"phi must have shape {shape}, got {tuple(phi.shape)}")
        object.__setattr__(self, "lam", lam)
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "phi", phi)


def _check_params(params, counts, name="params") -> LDAParams:
    if not isinstance(params, LDAParams):
        raise ValueError(f"{name} must be an LDAParams, got {type(params).__name__}")
    (num_docs, vocab_size), num_topics = counts.shape, params.lam.shape[0]
    if params.lam.shape[1] != vocab_size:
        raise ValueError(f"lam must have shape (K, {vocab_size}), got {tuple(params.lam.shape)}")
    if params.gamma.shape[0] != num_docs:
        raise ValueError(f"gamma must have shape ({num_docs}, {num_topics}), got {tuple(params.gamma.shape)}")
    return params


def elbo(counts, params: LDAParams, prior: LDAPrior) -> torch.Tensor:
    r"""The closed-form mean-field ELBO :math:`\mathcal{L}(\lambda, \gamma, \phi)` of the
    module docstring, a float64 scalar differentiable in ``params.lam``,
    ``params.gamma`` (and ``params.phi`` if given; ``None``: the optimal :math:`\phi`).

    :param counts: (D, V) counts.
    :raises ValueError: for bad counts, or parameters whose shapes do not fit the counts.
    """
    counts = _counts64(counts)
    p = _check_params(params, counts)
    return _elbo(counts, p.lam, p.gamma, prior.alpha, prior.eta, p.phi)


def _elbo(counts, lam, gamma, alpha, eta, phi=None):
    e_log_theta, e_log_beta = dirichlet_expected_log(gamma), dirichlet_expected_log(lam)
    if phi is None:
        exp_theta, exp_beta, theta_shift, beta_shift = _shifted_exp(e_log_theta, e_log_beta)
        log_norm = _normalizer(exp_theta, exp_beta).log() + theta_shift + beta_shift
        words = (counts * log_norm).sum()
    else:
        expected = e_log_theta[:, None, :] + e_log_beta.T[None, :, :]
        words = (counts[..., None] * (phi * expected - torch.xlogy(phi, phi))).sum()
    return words + _neg_kl_dirichlet(alpha, gamma, e_log_theta) + _neg_kl_dirichlet(eta, lam, e_log_beta)


def elbo_gradient(counts, params: LDAParams, prior: LDAPrior):
    r""":math:`\partial\mathcal{L}/\partial\lambda, \gamma` (and :math:`\phi` if given) of
    :func:`elbo`, by autograd; float64 tensors keyed by field name."""
    return autograd_gradient(elbo, counts, params, prior)


def initial_lambda(num_topics: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    r"""Hoffman et al.'s random start :math:`\lambda_{kw} \sim \mathrm{Gamma}(100, 1/100)`
    (mean 1, sd 0.1; the noise breaks the symmetry between topics), float64 (K, V)."""
    num_topics, vocab_size = check_num_topics(num_topics), _positive_int("vocab_size", vocab_size)
    draws = np.random.default_rng(int(seed)).gamma(100.0, 0.01, size=(num_topics, vocab_size))
    return torch.as_tensor(draws, dtype=torch.float64)


def initial_gamma(counts, num_topics: int, alpha: float) -> torch.Tensor:
    r"""Blei et al.'s start :math:`\gamma_{dk} = \alpha + N_d / K`, float64 (D, K)."""
    counts, num_topics = _counts64(counts), check_num_topics(num_topics)
    alpha = check_concentration("alpha", alpha)
    return (alpha + counts.sum(-1, keepdim=True) / num_topics).expand(-1, num_topics).clone()


class LocalStep(NamedTuple):
    """Outcome of :func:`local_step`: ``gamma`` (B, K), ``sufficient_stats``
    :math:`S_{kw} = \\sum_d n_{dw}\\phi_{dwk}` (K, V), and the ``num_iters`` run."""

    gamma: torch.Tensor
    sufficient_stats: torch.Tensor
    num_iters: int


def _local_step(counts, e_log_beta, alpha, gamma, tol, max_iters):
    exp_beta = (e_log_beta - e_log_beta.max(0, keepdim=True).values).exp()
    num_iters, done = 0, False
    while True:
        e_log_theta = dirichlet_expected_log(gamma)
        exp_theta = (e_log_theta - e_log_theta.max(-1, keepdim=True).values).exp()
        ratio = counts / _normalizer(exp_theta, exp_beta)  # n_dw / sum_k (phi_dwk numerator)
        if done:  # phi (through ratio) is now optimal for the returned gamma
            return LocalStep(gamma, (exp_theta.T @ ratio) * exp_beta, num_iters)
        new_gamma = alpha + exp_theta * (ratio @ exp_beta.T)
        change = float((new_gamma - gamma).abs().mean(-1).max())
        gamma, num_iters = new_gamma, num_iters + 1
        done = change < tol or num_iters == max_iters


def _check_local_settings(tol, max_iters):
    return _non_negative("local_tol", tol), _positive_int("local_max_iters", max_iters)


def local_step(counts, lam, alpha: float, gamma=None, tol: float = 1e-3, max_iters: int = 100) -> LocalStep:
    r"""Fit :math:`\gamma` and :math:`\phi` of the documents in ``counts`` with
    :math:`\lambda` fixed (module docstring); :math:`\phi` is optimal for the returned
    :math:`\gamma`.

    :param gamma: start (default :func:`initial_gamma`).
    :param float tol: stop when every document's mean :math:`|\Delta\gamma_{dk}|` < tol.
    :param int max_iters: at most this many :math:`\gamma` updates.
    """
    counts = _counts64(counts)
    alpha = check_concentration("alpha", alpha)
    lam = _concentrations("lam", lam, (None, counts.shape[1]))
    gamma = initial_gamma(counts, lam.shape[0], alpha) if gamma is None else gamma
    gamma = _concentrations("gamma", gamma, (counts.shape[0], lam.shape[0]))
    tol, max_iters = _check_local_settings(tol, max_iters)
    return _local_step(counts, dirichlet_expected_log(lam), alpha, gamma, tol, max_iters)


def cavi_step(counts, lam, gamma, alpha: float, eta: float, local_tol: float = 1e-3, local_max_iters: int = 100):
    r"""One batch CAVI sweep: a local step on every document from ``gamma``, then
    :math:`\lambda = \eta + S`. Returns ``(lam, gamma)``."""
    eta = check_concentration("eta", eta)
    local = local_step(counts, lam, alpha, gamma, local_tol, local_max_iters)
    return eta + local.sufficient_stats, local.gamma


def check_schedule(tau0: float, kappa: float):
    r"""Validate the step-size schedule :math:`\rho_t = (\tau_0 + t)^{-\kappa}`.

    :raises ValueError: unless :math:`\tau_0 \ge 0` and :math:`\kappa \in (0.5, 1]`
        (the Robbins-Monro conditions).
    """
    tau0 = _non_negative("tau0", tau0)
    if isinstance(kappa, bool) or not (isinstance(kappa, numbers.Real) and 0.5 < kappa <= 1):
        raise ValueError(f"kappa must be in (0.5, 1] (Robbins-Monro), got {kappa!r}")
    return tau0, float(kappa)


def step_size(t: int, tau0: float, kappa: float) -> float:
    r""":math:`\rho_t = (\tau_0 + t)^{-\kappa}` for update :math:`t \ge 1`."""
    tau0, kappa = check_schedule(tau0, kappa)
    return (tau0 + _positive_int("t", t)) ** -kappa


def svi_update(
    batch_counts,
    lam,
    num_docs: int,
    rho: float,
    alpha: float,
    eta: float,
    local_tol: float = 1e-3,
    local_max_iters: int = 100,
) -> torch.Tensor:
    r"""One SVI step on a minibatch: a local step from :func:`initial_gamma`, then
    :math:`\lambda \leftarrow (1-\rho)\lambda + \rho(\eta + \tfrac{D}{|B|} S_B)`."""
    if isinstance(rho, bool) or not (isinstance(rho, numbers.Real) and 0 < rho <= 1):
        raise ValueError(f"rho must be in (0, 1], got {rho!r}")
    num_docs, eta = _positive_int("num_docs", num_docs), check_concentration("eta", eta)
    local = local_step(batch_counts, lam, alpha, None, local_tol, local_max_iters)
    scale = num_docs / local.gamma.shape[0]
    return (1 - rho) * torch.as_tensor(lam, dtype=torch.float64) + rho * (eta + scale * local.sufficient_stats)


def corpus_elbo(counts, lam, alpha: float, eta: float, local_tol: float = 1e-3, local_max_iters: int = 100):
    r"""The ELBO of a global :math:`\lambda` on ``counts``: :func:`elbo` at
    :math:`\lambda` and the :math:`\gamma` of a :func:`local_step` from
    :func:`initial_gamma`. Returns ``(elbo as float, gamma)``."""
    counts = _counts64(counts)
    gamma = local_step(counts, lam, alpha, None, local_tol, local_max_iters).gamma
    eta = check_concentration("eta", eta)
    return float(_elbo(counts, torch.as_tensor(lam, dtype=torch.float64), gamma, alpha, eta)), gamma


def cavi(
    counts,
    prior: LDAPrior,
    num_topics: int,
    max_iters: int = 100,
    tol: float = 1e-6,
    init_lambda=None,
    warm_start: bool = False,
    local_tol: float = 1e-3,
    local_max_iters: int = 100,
    callback: Optional[Callable] = None,
) -> CaviResult:
    r"""Batch CAVI: sweeps of :func:`cavi_step` from ``init_lambda`` (default
    :func:`initial_lambda` with seed 0) until the relative ELBO change is below ``tol``.
    ``callback(sweep, seconds, lam)`` runs after each sweep, outside the timing.
    Returns a :class:`CaviResult` whose ``params`` is an :class:`LDAParams` (no ``phi``)
    and whose ``converged`` means the relative ELBO change fell below ``tol``.

    By default every sweep starts the local step afresh from :func:`initial_gamma`, as
    in Hoffman et al.'s batch algorithm. Then each sweep ends at a fixed point of the local
    step given the previous :math:`\lambda`, and the ELBO does not decrease as long as
    that fixed point is each document's best one (not guaranteed, but what we observe).
    ``warm_start=True`` starts from the previous :math:`\gamma` instead: every
    sub-step is then an exact block maximization and the ELBO provably never decreases,
    but the documents stay in the groupings of the first sweep, which can stall the
    fit at a much worse optimum (see ``experiments/lda_svi.py``).
    """
    counts, num_topics = _counts64(counts), check_num_topics(num_topics)
    if not isinstance(prior, LDAPrior):
        raise ValueError(f"prior must be an LDAPrior, got {type(prior).__name__}")
    alpha, eta = prior.alpha, prior.eta
    max_iters, tol = _positive_int("max_iters", max_iters), _non_negative("tol", tol)
    local_tol, local_max_iters = _check_local_settings(local_tol, local_max_iters)
    lam = initial_lambda(num_topics, counts.shape[1]) if init_lambda is None else init_lambda
    lam = _concentrations("init_lambda", lam, (num_topics, counts.shape[1]))
    fresh_gamma = gamma = initial_gamma(counts, num_topics, alpha)
    value = float(_elbo(counts, lam, gamma, alpha, eta))
    result = CaviResult(None, value, [value])
    while result.num_iters < max_iters and not result.converged:  # everything checked once, above
        start = time.perf_counter()
        local = _local_step(
            counts, dirichlet_expected_log(lam), alpha, gamma if warm_start else fresh_gamma, local_tol, local_max_iters
        )
        lam, gamma = eta + local.sufficient_stats, local.gamma
        value = float(_elbo(counts, lam, gamma, alpha, eta))
        previous = result.elbo_history[-1]
        result.converged = abs(value - previous) <= tol * abs(previous)
        result.seconds += time.perf_counter() - start
        result.num_iters += 1
        result.elbo_history.append(value)
        if callback is not None:
            callback(result.num_iters, result.seconds, lam)
    result.params, result.elbo = LDAParams(lam, gamma), result.elbo_history[-1]
    return result


@dataclass
class SviResult:
    r"""Outcome of :func:`stochastic_vi`.

    :ivar lam: final (K, V) concentrations of :math:`q(\beta)`.
    :ivar int num_updates: updates taken.
    :ivar int docs_seen: documents processed by local steps.
    :ivar float seconds: wall time of the updates (callbacks excluded).
    """

    lam: torch.Tensor
    num_updates: int = 0
    docs_seen: int = 0
    seconds: float = 0.0


def stochastic_vi(
    counts,
    num_topics: int,
    alpha: float,
    eta: float,
    batch_size: int = 100,
    tau0: float = 1.0,
    kappa: float = 0.7,
    num_updates: int = 100,
    seed: int = 0,
    init_lambda=None,
    local_tol: float = 1e-3,
    local_max_iters: int = 100,
    callback: Optional[Callable] = None,
) -> SviResult:
    r"""Hoffman et al.'s stochastic variational inference for LDA: ``num_updates`` calls of
    :func:`svi_update` with :math:`\rho_t` from :func:`step_size`, on minibatches from
    seeded random permutations of the corpus (every document once per epoch), from
    ``init_lambda`` (default :func:`initial_lambda` with ``seed``).
    ``callback(update, seconds, lam)`` runs after each update, outside the timing.

    :raises ValueError: for bad ``tau0``/``kappa`` (:func:`check_schedule`), a
        ``batch_size`` outside 1..D, or other bad settings.
    """
    counts, num_topics = _counts64(counts), check_num_topics(num_topics)
    alpha, eta = check_concentration("alpha", alpha), check_concentration("eta", eta)
    tau0, kappa = check_schedule(tau0, kappa)
    num_docs = counts.shape[0]
    batch_size, num_updates = _positive_int("batch_size", batch_size), _positive_int("num_updates", num_updates)
    if batch_size > num_docs:
        raise ValueError(f"batch_size must be at most the number of documents {num_docs}, got {batch_size}")
    lam = initial_lambda(num_topics, counts.shape[1], seed) if init_lambda is None else init_lambda
    result = SviResult(_concentrations("init_lambda", lam, (num_topics, counts.shape[1])))
    generator = torch.Generator().manual_seed(int(seed))
    order, position = torch.randperm(num_docs, generator=generator), 0
    for t in range(1, num_updates + 1):
        start = time.perf_counter()
        if position + batch_size > num_docs:
            order, position = torch.randperm(num_docs, generator=generator), 0
        batch = counts[order[position : position + batch_size]]
        position += batch_size
        rho = (tau0 + t) ** -kappa
        result.lam = svi_update(batch, result.lam, num_docs, rho, alpha, eta, local_tol, local_max_iters)
        result.seconds += time.perf_counter() - start
        result.num_updates, result.docs_seen = t, result.docs_seen + batch_size
        if callback is not None:
            callback(t, result.seconds, result.lam)
    return result


# ---------------------------------------------------------------- Pyro guide


def guide(counts, num_topics: int, alpha: float, eta: float, subsample_size: Optional[int] = None, init_lambda=None):
    r"""Mean-field guide over :math:`\beta` and :math:`\theta` for
    :func:`models.lda.model` (same arguments; bind ``init_lambda`` with
    ``functools.partial``). Params ``"q_beta_concentration"`` :math:`\lambda` (K, V) and
    ``"q_theta_concentration"`` :math:`\gamma` (D, K), positive, in the dtype of the
    counts, created from ``init_lambda`` (default :func:`initial_lambda`) and
    :func:`initial_gamma` the first time only. With ``subsample_size`` only the
    minibatch's rows of :math:`\gamma` are used (the plate's draw is replayed in the model).
    """
    counts, num_topics = check_counts(counts), check_num_topics(num_topics)
    num_docs, vocab_size = counts.shape
    dtype = counts.dtype

    def start_lambda():
        lam = initial_lambda(num_topics, vocab_size) if init_lambda is None else init_lambda
        return _concentrations("init_lambda", lam, (num_topics, vocab_size)).to(dtype)

    lam = shaped_param(LAMBDA, start_lambda, (num_topics, vocab_size), constraints.positive)
    gamma = shaped_param(
        GAMMA, lambda: initial_gamma(counts, num_topics, alpha).to(dtype), (num_docs, num_topics), constraints.positive
    )
    with pyro.plate("topics", num_topics, dim=-1):
        pyro.sample("beta", dist.Dirichlet(lam))
    with pyro.plate("documents", num_docs, subsample_size=subsample_size, dim=-1) as index:
        pyro.sample("theta", dist.Dirichlet(gamma[index]))


def params_from_store() -> LDAParams:
    r""":math:`\lambda` and :math:`\gamma` from Pyro's param store, as :class:`LDAParams`."""
    store = pyro.get_param_store()
    return LDAParams(*(store[name].detach().to(torch.float64) for name in (LAMBDA, GAMMA)))
