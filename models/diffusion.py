r"""A small Gaussian diffusion model and its variational bound (course question 4.1.26).

The forward (noising) process of Ho et al. [1] with a variance schedule
:math:`\beta_1, \dots, \beta_T \in (0, 1)`, :math:`\alpha_t = 1 - \beta_t`,
:math:`\bar\alpha_t = \prod_{s \le t} \alpha_s` (:math:`\bar\alpha_0 = 1`), is

.. math::

    q(x_t \mid x_{t-1}) &= \mathcal{N}(\sqrt{\alpha_t}\, x_{t-1}, \beta_t I),\\
    q(x_t \mid x_0) &= \mathcal{N}(\sqrt{\bar\alpha_t}\, x_0, (1 - \bar\alpha_t) I)
        \quad \text{(eq. 4)},\\
    q(x_{t-1} \mid x_t, x_0) &= \mathcal{N}(\tilde\mu_t(x_t, x_0), \tilde\beta_t I),
        \quad t \ge 2 \quad \text{(eqs. 6-7)},\\
    \tilde\mu_t &= \frac{\sqrt{\bar\alpha_{t-1}}\,\beta_t}{1 - \bar\alpha_t}\, x_0
        + \frac{\sqrt{\alpha_t}\,(1 - \bar\alpha_{t-1})}{1 - \bar\alpha_t}\, x_t,
    \qquad \tilde\beta_t = \frac{1 - \bar\alpha_{t-1}}{1 - \bar\alpha_t}\, \beta_t.

The reverse (generative) model is :math:`p(x_T) = \mathcal{N}(0, I)` and, for
:math:`t = 1, \dots, T` (:math:`t = 1` is the decoder :math:`p_\theta(x_0 \mid x_1)`),

.. math::

    p_\theta(x_{t-1} \mid x_t) = \mathcal{N}(a_t \odot x_t + c_t,\ \operatorname{diag}\sigma_t^2),

an :class:`AffineReverseProcess`. Affine means make every term of the bound closed
form. :func:`gaussian_data_reverse_process` takes the exact reverse kernels
:math:`q(x_{t-1} \mid x_t)` of data distributed as :math:`\mathcal{N}(m, \operatorname{diag} s^2)`:
with :math:`v_t = \bar\alpha_t s^2 + 1 - \bar\alpha_t` (so :math:`v_0 = s^2`),
:math:`(x_{t-1}, x_t)` is jointly Gaussian with covariance :math:`\sqrt{\alpha_t}\, v_{t-1}`, so

.. math::

    a_t = \frac{\sqrt{\alpha_t}\, v_{t-1}}{v_t}, \quad
    c_t = \sqrt{\bar\alpha_{t-1}}\, m - a_t \sqrt{\bar\alpha_t}\, m, \quad
    \sigma_t^2 = \frac{\beta_t\, v_{t-1}}{v_t}.

The negative variational bound per data point (eqs. 3 and 5) has two forms,

.. math::

    L &= \mathbb{E}_{q(x_{1:T} \mid x_0)}\Big[-\log \frac{p_\theta(x_{0:T})}{q(x_{1:T} \mid x_0)}\Big]
       \quad \text{(eq. 3, direct)}\\
      &= \underbrace{D_{\mathrm{KL}}(q(x_T \mid x_0) \,\|\, p(x_T))}_{L_T}
       + \sum_{t=2}^{T} \underbrace{\mathbb{E}_{q(x_t \mid x_0)} D_{\mathrm{KL}}(q(x_{t-1} \mid x_t, x_0)
           \,\|\, p_\theta(x_{t-1} \mid x_t))}_{L_{t-1}}
       \underbrace{- \mathbb{E}_{q(x_1 \mid x_0)} \log p_\theta(x_0 \mid x_1)}_{L_0}
       \quad \text{(eq. 5, KL-decomposed)}.

:func:`direct_bound` estimates the first from one forward chain (and
:func:`direct_bound_terms` splits that estimate into the terms of eq. 5 by Bayes' rule),
:func:`decomposed_bound_terms` estimates each :math:`L_k` with the KL in closed form at
the chain's :math:`x_t`, and :func:`exact_bound_terms` gives every :math:`L_k` in closed
form. Because the reverse model is linear-Gaussian, :math:`\log p_\theta(x_0)` is closed
form too (:func:`model_log_marginal`), and :math:`L - (-\log p_\theta(x_0)) =
D_{\mathrm{KL}}(q(x_{1:T} \mid x_0) \,\|\, p_\theta(x_{1:T} \mid x_0)) \ge 0`.

On variance: the decomposed estimate is the direct one with each term replaced by its
conditional expectation given :math:`(x_t, x_0)`, so every *term* has less variance
(Rao-Blackwellization), but the conditioning differs from term to term and the sum can
have more: the one-sample terms of the direct form cancel along the chain. The direct
estimate equals :math:`-\log p_\theta(x_0) + \log q(x_{1:T} \mid x_0) / p_\theta(x_{1:T}
\mid x_0)`, so its variance vanishes as the model's posterior over paths approaches the
forward process (exactly so for :func:`gaussian_data_reverse_process` with
:math:`m = 0, s^2 = 1`), while the decomposed form keeps the spread of
:math:`\sum_t D_{\mathrm{KL}}` over :math:`x_t`; for a poor model the order reverses.

Shapes: data points are ``(..., D)``; a forward chain is ``(..., T + 1, D)`` with
``chain[..., t, :]`` :math:`= x_t` (``chain[..., 0, :]`` is :math:`x_0`); a vector of
bound terms is ``(..., T + 1)`` with entry ``k`` :math:`= L_k`. Everything is float64.

References

1. J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS 2020,
   equations 1-7.
2. J. Sohl-Dickstein, E. Weiss, N. Maheswaranathan, S. Ganguli, *Deep Unsupervised
   Learning using Nonequilibrium Thermodynamics*, ICML 2015, appendix B.
3. C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, section
   2.3.3 (Bayes' rule for linear-Gaussian models).
"""

import math
import numbers
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

from models.checks import as_int

__all__ = [
    "AffineReverseProcess",
    "DEFAULT_MIXTURE_CENTERS",
    "alpha_bars",
    "check_betas",
    "decomposed_bound_terms",
    "direct_bound",
    "direct_bound_terms",
    "exact_bound_terms",
    "forward_marginal",
    "forward_posterior",
    "forward_step",
    "gaussian_data_reverse_process",
    "gaussian_kl",
    "gaussian_log_prob",
    "generate_mixture_data",
    "ho_reverse_variances",
    "linear_schedule",
    "model_log_marginal",
    "reverse_step",
    "sample_forward_chain",
]

DTYPE = torch.float64

#: Centres of the default 2-D mixture: four modes on the corners of a square.
DEFAULT_MIXTURE_CENTERS = ((1.5, 1.5), (-1.5, 1.5), (-1.5, -1.5), (1.5, -1.5))


# ----------------------------------------------------------------------------- checks


def _as_tensor(name, value) -> torch.Tensor:
    if isinstance(value, bool) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
        raise ValueError(f"{name} must be real numbers, got a boolean {value!r}")
    try:
        tensor = torch.as_tensor(value, dtype=DTYPE)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be real numbers, got {value!r}: {e}") from e
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite, got {tensor.tolist()}")
    return tensor


def _as_count(name, value, minimum) -> int:
    return as_int(name, value, minimum, need=f"an integer >= {minimum}")


def check_betas(betas, num_steps: Optional[int] = None) -> torch.Tensor:
    r"""Validate a variance schedule :math:`\beta_1, \dots, \beta_T`.

    :param betas: a 1-D array-like of T >= 1 finite values in the open interval (0, 1),
        non-decreasing (a constant schedule is allowed; a reversed one is refused).
    :param int num_steps: if given, the required length T.
    :returns: the schedule as a float64 tensor of shape (T,).
    :raises ValueError: naming ``betas`` and the offending value or length.
    """
    betas = _as_tensor("betas", betas)
    if betas.dim() != 1 or betas.numel() == 0:
        raise ValueError(f"betas must be a non-empty 1-D schedule, got shape {tuple(betas.shape)}")
    if num_steps is not None and betas.numel() != _as_count("num_steps", num_steps, 1):
        raise ValueError(f"betas has length {betas.numel()}, expected num_steps = {num_steps}")
    outside = (betas <= 0) | (betas >= 1)
    if outside.any():
        index = int(outside.nonzero()[0])
        raise ValueError(f"betas must lie in (0, 1), got betas[{index}] = {betas[index].item()}")
    decreasing = betas[1:] < betas[:-1]
    if decreasing.any():
        index = int(decreasing.nonzero()[0]) + 1
        raise ValueError(
            f"betas must be non-decreasing, got betas[{index}] = {betas[index].item()} "
            f"< betas[{index - 1}] = {betas[index - 1].item()}"
        )
    return betas


def _check_step(t, num_steps, first=1) -> int:
    step = _as_count("t", t, first)
    if step > num_steps:
        raise ValueError(f"t must be in [{first}, {num_steps}] (T = {num_steps}), got {t!r}")
    return step


def _check_points(name, x, dim=None) -> torch.Tensor:
    x = _as_tensor(name, x)
    if x.dim() == 0:
        raise ValueError(f"{name} must have a last dimension D (shape (..., D)), got a scalar")
    if dim is not None and x.shape[-1] != dim:
        raise ValueError(f"{name} has last dimension {x.shape[-1]}, expected D = {dim}")
    return x


# ----------------------------------------------------------------------------- forward process


def linear_schedule(num_steps: int, beta_start: float = 1e-3, beta_end: float = 0.2) -> torch.Tensor:
    r""":math:`\beta_t` evenly spaced from ``beta_start`` to ``beta_end`` (Ho et al. use
    1e-4 to 0.02 for T = 1000; the defaults suit T of a few tens).

    :param int num_steps: T >= 1 (T = 1 gives ``[beta_start]``).
    :raises ValueError: for T < 1 or unless 0 < beta_start <= beta_end < 1.
    """
    num_steps = _as_count("num_steps", num_steps, 1)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"need 0 < beta_start <= beta_end < 1, got beta_start = {beta_start}, beta_end = {beta_end}")
    return check_betas(torch.linspace(beta_start, beta_end, num_steps, dtype=DTYPE))


def alpha_bars(betas) -> torch.Tensor:
    r""":math:`(\bar\alpha_0, \bar\alpha_1, \dots, \bar\alpha_T)` with :math:`\bar\alpha_0 = 1`,
    shape (T + 1,), so that ``alpha_bars(betas)[t]`` :math:`= \bar\alpha_t`."""
    return _alpha_bars(check_betas(betas))


def _alpha_bars(betas) -> torch.Tensor:
    """:func:`alpha_bars` of an already checked schedule (no validation)."""
    return torch.cat([torch.ones(1, dtype=DTYPE), torch.cumprod(1 - betas, 0)])


def forward_step(x_prev, t: int, betas) -> Tuple[torch.Tensor, float]:
    r"""Mean and (per-coordinate) variance of :math:`q(x_t \mid x_{t-1}) =
    \mathcal{N}(\sqrt{1 - \beta_t}\, x_{t-1}, \beta_t I)` (eq. 2), t in [1, T]."""
    betas = check_betas(betas)
    t = _check_step(t, len(betas))
    beta = betas[t - 1]
    return (1 - beta).sqrt() * _check_points("x_prev", x_prev), beta.item()


def forward_marginal(x0, t: int, betas) -> Tuple[torch.Tensor, float]:
    r"""Mean and variance of :math:`q(x_t \mid x_0) = \mathcal{N}(\sqrt{\bar\alpha_t}\, x_0,
    (1 - \bar\alpha_t) I)` (eq. 4), t in [0, T] (t = 0 gives the point mass at x_0)."""
    alpha_bar = alpha_bars(betas)[_check_step(t, len(betas), first=0)]
    return alpha_bar.sqrt() * _check_points("x0", x0), (1 - alpha_bar).item()


def _posterior_coefficients(betas) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""For t = 2..T (shape (T - 1,)): the weights of :math:`x_0` and :math:`x_t` in
    :math:`\tilde\mu_t`, and :math:`\tilde\beta_t` (eq. 7)."""
    bars = _alpha_bars(betas)
    beta, bar_t, bar_prev = betas[1:], bars[2:], bars[1:-1]
    x0_weight = bar_prev.sqrt() * beta / (1 - bar_t)
    xt_weight = (1 - beta).sqrt() * (1 - bar_prev) / (1 - bar_t)
    return x0_weight, xt_weight, (1 - bar_prev) / (1 - bar_t) * beta


def forward_posterior(x_t, x0, t: int, betas) -> Tuple[torch.Tensor, float]:
    r"""Mean :math:`\tilde\mu_t(x_t, x_0)` and variance :math:`\tilde\beta_t` of
    :math:`q(x_{t-1} \mid x_t, x_0)` (Ho et al. eqs. 6-7), t in [2, T] (at t = 1 the
    posterior is the point mass at :math:`x_0`)."""
    x0_weight, xt_weight, variance = _posterior_coefficients(check_betas(betas))
    k = _check_step(t, len(x0_weight) + 1, first=2) - 2
    x0 = _check_points("x0", x0)
    x_t = _check_points("x_t", x_t, dim=x0.shape[-1])
    return x0_weight[k] * x0 + xt_weight[k] * x_t, variance[k].item()


def sample_forward_chain(x0, betas, num_samples: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    r"""Run :math:`x_t = \sqrt{\alpha_t}\, x_{t-1} + \sqrt{\beta_t}\, \epsilon_t` for
    t = 1..T, ``num_samples`` independent chains from each data point.

    :param x0: data points, shape (..., D).
    :returns: chains of shape (num_samples, ..., T + 1, D); ``[..., 0, :]`` is x0.
    """
    betas = check_betas(betas)
    num_samples = _as_count("num_samples", num_samples, 1)
    x0 = _check_points("x0", x0)
    x = x0.expand(num_samples, *x0.shape)
    states = [x]
    for beta in betas:
        noise = torch.randn(x.shape, dtype=DTYPE, generator=generator)
        x = (1 - beta).sqrt() * x + beta.sqrt() * noise
        states.append(x)
    return torch.stack(states, dim=-2)


# ----------------------------------------------------------------------------- reverse model


@dataclass(frozen=True)
class AffineReverseProcess:
    r""":math:`p_\theta(x_{t-1} \mid x_t) = \mathcal{N}(a_t \odot x_t + c_t, \operatorname{diag}\sigma_t^2)`
    for t = 1..T (row t - 1 of each tensor), with :math:`p(x_T) = \mathcal{N}(0, I)`.

    :param scale: :math:`a_t`, shape (T, D).
    :param shift: :math:`c_t`, shape (T, D).
    :param variance: :math:`\sigma_t^2 > 0`, shape (T, D).
    :raises ValueError: for mismatched shapes, non-finite values or a variance <= 0.
    """

    scale: torch.Tensor
    shift: torch.Tensor
    variance: torch.Tensor

    def __post_init__(self):
        for name in ("scale", "shift", "variance"):
            value = _as_tensor(name, getattr(self, name))
            if value.dim() != 2 or value.shape != torch.as_tensor(self.scale).shape:
                raise ValueError(f"{name} must have shape (T, D) equal to scale's, got {tuple(value.shape)}")
            object.__setattr__(self, name, value)
        if not (self.variance > 0).all():
            raise ValueError(f"variance must be positive, got min {self.variance.min().item()}")

    @property
    def num_steps(self) -> int:
        return self.scale.shape[0]

    @property
    def dim(self) -> int:
        return self.scale.shape[1]


def gaussian_data_reverse_process(betas, data_mean, data_variance) -> AffineReverseProcess:
    r"""The exact reverse kernels :math:`q(x_{t-1} \mid x_t)` of the forward process
    started from :math:`x_0 \sim \mathcal{N}(m, \operatorname{diag} s^2)` (module docstring).

    With :math:`m = 0, s^2 = 1` the prior :math:`p(x_T) = \mathcal{N}(0, I)` is exactly
    :math:`q(x_T)`, the model is the time reversal of q and the bound is tight.

    :param data_mean: m, shape (D,).
    :param data_variance: :math:`s^2 > 0`, shape (D,) or a scalar.
    """
    betas = check_betas(betas)
    mean = _check_points("data_mean", data_mean)
    if mean.dim() != 1:
        raise ValueError(f"data_mean must have shape (D,), got {tuple(mean.shape)}")
    variance = _as_tensor("data_variance", data_variance).expand_as(mean)
    if not (variance > 0).all():
        raise ValueError(f"data_variance must be positive, got {variance.tolist()}")
    bars = _alpha_bars(betas)[:, None]
    marginal_variance = bars * variance + 1 - bars  # v_0 .. v_T, shape (T + 1, D)
    scale = (1 - betas)[:, None].sqrt() * marginal_variance[:-1] / marginal_variance[1:]
    shift = bars[:-1].sqrt() * mean - scale * bars[1:].sqrt() * mean
    return AffineReverseProcess(scale, shift, betas[:, None] * marginal_variance[:-1] / marginal_variance[1:])


def ho_reverse_variances(betas, choice: str, dim: int) -> torch.Tensor:
    r"""The two fixed reverse variances of Ho et al. (section 3.2), shape (T, dim):
    ``"beta"`` gives :math:`\sigma_t^2 = \beta_t`, ``"beta_tilde"`` gives
    :math:`\sigma_t^2 = \tilde\beta_t` for t >= 2 and :math:`\beta_1` for the decoder
    (:math:`\tilde\beta_1 = 0`; Ho et al. use a discrete decoder there). Combine with
    a mean via ``dataclasses.replace(process, variance=...)``.

    :raises ValueError: for an unknown ``choice`` or ``dim`` < 1.
    """
    betas = check_betas(betas)
    dim = _as_count("dim", dim, 1)
    if choice == "beta":
        variance = betas
    elif choice == "beta_tilde":
        variance = torch.cat([betas[:1], _posterior_coefficients(betas)[2]])
    else:
        raise ValueError(f"choice must be 'beta' or 'beta_tilde', got {choice!r}")
    return variance[:, None].expand(len(betas), dim).clone()


def _check_model(betas, process: AffineReverseProcess) -> torch.Tensor:
    if not isinstance(process, AffineReverseProcess):
        raise ValueError(f"process must be an AffineReverseProcess, got {type(process).__name__}")
    return check_betas(betas, num_steps=process.num_steps)


def reverse_step(process: AffineReverseProcess, x_t, t: int) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""Mean :math:`a_t x_t + c_t` and variance :math:`\sigma_t^2` (shape (D,)) of
    :math:`p_\theta(x_{t-1} \mid x_t)`, t in [1, T]."""
    t = _check_step(t, process.num_steps)
    x_t = _check_points("x_t", x_t, dim=process.dim)
    return process.scale[t - 1] * x_t + process.shift[t - 1], process.variance[t - 1]


def model_log_marginal(x0, process: AffineReverseProcess) -> torch.Tensor:
    r""":math:`\log p_\theta(x_0)`: ancestral sampling from :math:`\mathcal{N}(0, I)` through
    affine-Gaussian steps keeps :math:`x_t` Gaussian, with mean :math:`a_t \mu_t + c_t`
    and variance :math:`a_t^2 V_t + \sigma_t^2` at the next step down. Shape (...)."""
    x0 = _check_points("x0", x0, dim=process.dim)
    mean, variance = torch.zeros(process.dim, dtype=DTYPE), torch.ones(process.dim, dtype=DTYPE)
    for k in reversed(range(process.num_steps)):
        mean = process.scale[k] * mean + process.shift[k]
        variance = process.scale[k] ** 2 * variance + process.variance[k]
    return gaussian_log_prob(x0, mean, variance)


# ----------------------------------------------------------------------------- Gaussian algebra


def gaussian_log_prob(x, mean, variance) -> torch.Tensor:
    r""":math:`\log \mathcal{N}(x; \mu, \operatorname{diag} v)`, summed over the last dim."""
    variance = torch.as_tensor(variance, dtype=DTYPE)
    log_normalizer = (math.log(2 * math.pi) + torch.log(variance)).expand(variance.shape[:-1] + x.shape[-1:]).sum(-1)
    return -0.5 * (log_normalizer + ((x - mean) ** 2 / variance).sum(-1))


def gaussian_kl(mean_q, variance_q, mean_p, variance_p) -> torch.Tensor:
    r""":math:`D_{\mathrm{KL}}(\mathcal{N}(\mu_q, \operatorname{diag} v_q) \,\|\,
    \mathcal{N}(\mu_p, \operatorname{diag} v_p)) = \tfrac12 \sum_d \big[v_q / v_p - 1
    - \log(v_q / v_p) + (\mu_q - \mu_p)^2 / v_p\big]`."""
    ratio = variance_q / variance_p
    return 0.5 * (ratio - 1 - torch.log(ratio) + (mean_q - mean_p) ** 2 / variance_p).sum(-1)


# ----------------------------------------------------------------------------- the bound


def _check_chain(x0, chain, betas, process):
    betas = _check_model(betas, process)
    x0 = _check_points("x0", x0, dim=process.dim)
    chain = _check_points("chain", chain, dim=process.dim)
    if chain.dim() < 2 or chain.shape[-2] != len(betas) + 1:
        raise ValueError(f"chain must have shape (..., T + 1 = {len(betas) + 1}, D), got {tuple(chain.shape)}")
    if not torch.equal(*torch.broadcast_tensors(chain[..., 0, :], x0)):
        raise ValueError("chain[..., 0, :] must equal x0 (chains from sample_forward_chain(x0, ...))")
    return betas, x0, chain


def direct_bound(x0, chain, betas, process: AffineReverseProcess) -> torch.Tensor:
    r"""One-sample estimate of L per chain: :math:`\log q(x_{1:T} \mid x_0) - \log p_\theta(x_{0:T})`
    with :math:`q(x_{1:T} \mid x_0) = \prod_t q(x_t \mid x_{t-1})` and
    :math:`p_\theta(x_{0:T}) = p(x_T) \prod_t p_\theta(x_{t-1} \mid x_t)` (eq. 3).

    :param chain: forward chains from :func:`sample_forward_chain`, shape (..., T + 1, D),
        whose ``[..., 0, :]`` broadcasts with x0.
    :returns: shape (...).
    """
    betas, x0, chain = _check_chain(x0, chain, betas, process)
    previous, current = chain[..., :-1, :], chain[..., 1:, :]
    log_q = gaussian_log_prob(current, (1 - betas)[:, None].sqrt() * previous, betas[:, None]).sum(-1)
    log_p_steps = gaussian_log_prob(previous, process.scale * current + process.shift, process.variance).sum(-1)
    log_p_prior = gaussian_log_prob(chain[..., -1, :], 0.0, torch.ones(process.dim, dtype=DTYPE))
    return log_q - log_p_steps - log_p_prior


def direct_bound_terms(x0, chain, betas, process: AffineReverseProcess) -> torch.Tensor:
    r"""The one-sample estimate of :func:`direct_bound` split into the terms of eq. 5
    by Bayes' rule, :math:`q(x_{1:T} \mid x_0) = q(x_T \mid x_0) \prod_{t \ge 2}
    q(x_{t-1} \mid x_t, x_0)`, which holds for every chain, not only in expectation:
    entry 0 is :math:`-\log p_\theta(x_0 \mid x_1)`, entry t - 1 (t = 2..T) is
    :math:`\log q(x_{t-1} \mid x_t, x_0) - \log p_\theta(x_{t-1} \mid x_t)` and entry T
    is :math:`\log q(x_T \mid x_0) - \log p(x_T)`, all at the chain's values. Each entry
    is a Monte Carlo estimate of the same :math:`L_k` as :func:`decomposed_bound_terms`
    without the conditional expectation (Rao-Blackwellization) over :math:`x_{t-1}`.

    :returns: shape (..., T + 1); the sum over the last dim equals :func:`direct_bound`.
    """
    betas, x0, chain = _check_chain(x0, chain, betas, process)
    x0_weight, xt_weight, posterior_variance = _posterior_coefficients(betas)
    previous, current = chain[..., 1:-1, :], chain[..., 2:, :]  # x_1 .. x_{T-1}, x_2 .. x_T
    posterior_mean = x0_weight[:, None] * x0.unsqueeze(-2) + xt_weight[:, None] * current
    log_q = gaussian_log_prob(previous, posterior_mean, posterior_variance[:, None].expand_as(process.variance[1:]))
    log_p = gaussian_log_prob(previous, process.scale[1:] * current + process.shift[1:], process.variance[1:])
    decoder = -gaussian_log_prob(x0, process.scale[0] * chain[..., 1, :] + process.shift[0], process.variance[0])
    alpha_bar = _alpha_bars(betas)[-1]
    x_last = chain[..., -1, :]
    prior = gaussian_log_prob(x_last, alpha_bar.sqrt() * x0, (1 - alpha_bar).expand_as(x_last)) - gaussian_log_prob(
        x_last, 0.0, torch.ones_like(x_last)
    )
    return torch.cat([decoder.unsqueeze(-1), log_q - log_p, prior.unsqueeze(-1)], dim=-1)


def _prior_term(x0, betas) -> torch.Tensor:
    r""":math:`L_T = D_{\mathrm{KL}}(q(x_T \mid x_0) \,\|\, \mathcal{N}(0, I))`, shape (...)."""
    alpha_bar = _alpha_bars(betas)[-1]
    return gaussian_kl(alpha_bar.sqrt() * x0, (1 - alpha_bar).expand_as(x0), 0.0, torch.ones_like(x0))


def decomposed_bound_terms(x0, chain, betas, process: AffineReverseProcess) -> torch.Tensor:
    r"""One-sample estimates of :math:`L_0, \dots, L_T` (eq. 5) from each chain: the KL
    terms in closed form at the chain's :math:`x_t`, :math:`L_0 = -\log p_\theta(x_0 \mid x_1)`
    at its :math:`x_1`, and :math:`L_T` exactly. The sum over the last dim estimates L.

    :returns: shape (..., T + 1).
    """
    betas, x0, chain = _check_chain(x0, chain, betas, process)
    x0_weight, xt_weight, posterior_variance = _posterior_coefficients(betas)
    current = chain[..., 2:, :]  # x_2 .. x_T
    posterior_mean = x0_weight[:, None] * x0.unsqueeze(-2) + xt_weight[:, None] * current
    kl_terms = gaussian_kl(
        posterior_mean,
        posterior_variance[:, None].expand_as(process.variance[1:]),
        process.scale[1:] * current + process.shift[1:],
        process.variance[1:],
    )
    decoder = -gaussian_log_prob(x0, process.scale[0] * chain[..., 1, :] + process.shift[0], process.variance[0])
    prior = _prior_term(x0, betas).expand_as(decoder)
    return torch.cat([decoder.unsqueeze(-1), kl_terms, prior.unsqueeze(-1)], dim=-1)


def exact_bound_terms(x0, betas, process: AffineReverseProcess) -> torch.Tensor:
    r""":math:`L_0, \dots, L_T` in closed form. With :math:`x_t \sim \mathcal{N}(\sqrt{\bar\alpha_t}
    x_0, (1 - \bar\alpha_t) I)`, the mean gap :math:`\tilde\mu_t - a_t x_t - c_t` is affine in
    :math:`x_t`, so its expected square is :math:`(\sqrt{\bar\alpha_{t-1}}\, x_0 - a_t
    \sqrt{\bar\alpha_t}\, x_0 - c_t)^2 + (w_t - a_t)^2 (1 - \bar\alpha_t)`, :math:`w_t` the
    weight of :math:`x_t` in :math:`\tilde\mu_t`; :math:`L_0` is the same with a zero
    posterior variance and :math:`w_1 = 0`.

    :returns: shape (..., T + 1).
    """
    betas = _check_model(betas, process)
    x0 = _check_points("x0", x0, dim=process.dim).unsqueeze(-2)
    bars = _alpha_bars(betas)[:, None]
    _, xt_weight, posterior_variance = _posterior_coefficients(betas)
    xt_weight = torch.cat([torch.zeros(1, dtype=DTYPE), xt_weight])[:, None]
    bias = bars[:-1].sqrt() * x0 - process.scale * bars[1:].sqrt() * x0 - process.shift
    mean_square = bias**2 + (xt_weight - process.scale) ** 2 * (1 - bars[1:])
    kl_terms = gaussian_kl(0.0, posterior_variance[:, None], 0.0, process.variance[1:]) + (
        0.5 * mean_square[..., 1:, :] / process.variance[1:]
    ).sum(-1)
    decoder_variance = process.variance[0]
    decoder = 0.5 * (math.log(2 * math.pi) + decoder_variance.log() + mean_square[..., 0, :] / decoder_variance).sum(-1)
    prior = _prior_term(x0.squeeze(-2), betas)
    return torch.cat([decoder.unsqueeze(-1), kl_terms, prior.unsqueeze(-1)], dim=-1)


# ----------------------------------------------------------------------------- data


def generate_mixture_data(
    num_data: int, centers=DEFAULT_MIXTURE_CENTERS, std: float = 0.3, seed: int = 0
) -> torch.Tensor:
    r"""Draw points from an equal-weight Gaussian mixture :math:`\frac1K \sum_k
    \mathcal{N}(\text{centers}_k, \text{std}^2 I)` with a local generator.

    :param int num_data: N >= 1.
    :param centers: shape (K, D).
    :param float std: component standard deviation, > 0.
    :returns: shape (N, D), float64.
    """
    num_data = _as_count("num_data", num_data, 1)
    centers = _as_tensor("centers", centers)
    if centers.dim() != 2 or centers.shape[0] == 0:
        raise ValueError(f"centers must have shape (K, D) with K >= 1, got {tuple(centers.shape)}")
    if not (isinstance(std, numbers.Real) and not isinstance(std, bool) and math.isfinite(std) and std > 0):
        raise ValueError(f"std must be a positive number, got {std!r}")
    generator = torch.Generator().manual_seed(int(seed))
    labels = torch.randint(len(centers), (num_data,), generator=generator)
    return centers[labels] + std * torch.randn(num_data, centers.shape[1], dtype=DTYPE, generator=generator)
