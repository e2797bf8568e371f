r"""
The Gumbel-softmax (Concrete) relaxation of a categorical variable, its
straight-through variant, and the argmax that turns a relaxed sample back into a
category (assignment question 3.1.20, 1.B.1).

Gumbel-max trick. For unnormalized log-probabilities :math:`\ell \in \mathbb{R}^K`
(``logits``, :math:`a = \mathrm{softmax}(\ell)`) and i.i.d.
:math:`g_k \sim \mathrm{Gumbel}(0, 1)`, :math:`g_k = -\log(-\log u_k)`,
:math:`u_k \sim \mathrm{Uniform}(0, 1)`,

.. math::

    \arg\max_k \, (\ell_k + g_k) \sim \mathrm{Categorical}(a).

The argmax has zero gradient almost everywhere, so it is replaced, for training,
by a softmax at temperature :math:`\tau > 0` (the Gumbel-softmax [1] or Concrete [2]
distribution):

.. math::

    y_k = \frac{\exp((\ell_k + g_k)/\tau)}{\sum_j \exp((\ell_j + g_j)/\tau)},
    \qquad
    \frac{\partial y_i}{\partial \ell_j} = \frac{1}{\tau}\, y_i (\delta_{ij} - y_j).

The noise :math:`g` does not depend on :math:`\ell`, so :math:`y` is a
reparameterized sample and :math:`\nabla_\ell f(y)` is a path-wise estimate of
:math:`\nabla_\ell \mathbb{E}[f(y)]`. As :math:`\tau \to 0` the samples become
one-hot and the relaxed objective tends to the discrete one (the estimate's bias
vanishes while its variance grows); as :math:`\tau \to \infty` they tend to the
uniform vector :math:`(1/K, \dots, 1/K)`. The argmax of :math:`y` is the argmax of
:math:`\ell + g` for every :math:`\tau`, so :func:`categorical_from_relaxed` gives
exact categorical draws (evaluation).

Straight-through Gumbel-softmax [1]: the forward value is the one-hot vector of
:math:`\arg\max_k y_k` and the backward pass uses the relaxed sample's Jacobian:
:math:`y_{\mathrm{hard}} - \mathrm{stop}(y) + y`, written here as
:math:`y_{\mathrm{hard}} + (y - \mathrm{stop}(y))` so that the forward value is
:math:`y_{\mathrm{hard}}` bit for bit (:math:`y - \mathrm{stop}(y)` is exactly 0).
Pyro's :class:`~pyro.distributions.RelaxedOneHotCategorical` and
:class:`~pyro.distributions.RelaxedOneHotCategoricalStraightThrough` sample the same
distributions with the global RNG; this module takes an explicit
:class:`torch.Generator`, is vectorized over ``sample_shape`` and computes the softmax
in log-space (``log_softmax``), so small temperatures do not overflow.

References

[1] `Categorical Reparameterization with Gumbel-Softmax`,
    Eric Jang, Shixiang Gu, Ben Poole (ICLR 2017)
[2] `The Concrete Distribution: A Continuous Relaxation of Discrete Random Variables`,
    Chris J. Maddison, Andriy Mnih, Yee Whye Teh (ICLR 2017)
[3] `A* Sampling`, Chris J. Maddison, Daniel Tarlow, Tom Minka (NeurIPS 2014)
    (the Gumbel-max trick)
"""

import collections.abc
from typing import Optional, Sequence, Union

import torch

from .validation import boolean, instance, integer, real

__all__ = ["categorical_from_relaxed", "gumbel_noise", "gumbel_softmax_sample"]


def _check_temperature(temperature, like: torch.Tensor) -> torch.Tensor:
    if not isinstance(temperature, torch.Tensor) or temperature.dtype == torch.bool:
        temperature = real("temperature", temperature, minimum=0, strict_minimum=True)
    t = torch.as_tensor(temperature, dtype=like.dtype, device=like.device)
    if t.numel() == 0 or not bool(torch.isfinite(t).all()) or not bool((t > 0).all()):
        raise ValueError(f"temperature must be positive and finite, got {t.item() if t.numel() == 1 else t.tolist()}")
    return t


def _check_logits(logits) -> torch.Tensor:
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(
            f"logits must have a non-empty category dimension (the last one), got shape {tuple(logits.shape)}"
        )
    if not bool(torch.isfinite(logits).all()):
        raise ValueError(
            "logits must be finite (NaN or inf found); give a category of probability "
            "zero a large negative logit instead of -inf"
        )
    return logits


def _check_sample_shape(sample_shape) -> torch.Size:
    """``sample_shape`` as a ``torch.Size`` of non-negative integers (a sequence, not a number)."""
    if isinstance(sample_shape, (str, bytes)) or not isinstance(sample_shape, collections.abc.Sequence):
        raise ValueError(
            "sample_shape must be a sequence of non-negative integers such as (10,) or torch.Size([10]), "
            f"got {sample_shape!r:.60} ({type(sample_shape).__name__})"
        )
    return torch.Size([integer(f"sample_shape[{i}]", n, minimum=0) for i, n in enumerate(sample_shape)])


def gumbel_noise(
    shape: Sequence[int],
    dtype: Optional[torch.dtype] = None,
    device: Union[str, torch.device, None] = None,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    r"""
    Standard Gumbel noise :math:`g = -\log(-\log u)`, :math:`u \sim U(0, 1)`, with
    :math:`u` clamped to :math:`[\mathrm{tiny}, 1 - \epsilon/2]` of ``dtype`` so that
    :math:`g` is always finite (for float32, :math:`g \in [-4.5, 16.6]`; the cut
    tails have probability below :math:`10^{-7}`, the resolution of ``torch.rand``).

    :param shape: shape of the noise.
    :param dtype: floating dtype (default: torch's default dtype).
    :param device: device of the noise.
    :param torch.Generator generator: optional source of randomness.
    """
    dtype = torch.get_default_dtype() if dtype is None else dtype
    finfo = torch.finfo(dtype)
    u = torch.rand(tuple(shape), dtype=dtype, device=device, generator=generator)
    u = u.clamp(min=finfo.tiny, max=1.0 - finfo.eps / 2)
    return -torch.log(-torch.log(u))


def gumbel_softmax_sample(
    logits: torch.Tensor,
    temperature: Union[float, torch.Tensor],
    sample_shape: Sequence[int] = (),
    hard: bool = False,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    r"""
    Reparameterized relaxed one-hot sample
    :math:`y = \mathrm{softmax}((\ell + g) / \tau)`, :math:`g_k \sim \mathrm{Gumbel}(0, 1)`
    i.i.d., differentiable with respect to ``logits`` (and ``temperature`` if it is a
    tensor that requires grad).

    :param torch.Tensor logits: unnormalized log-probabilities :math:`\ell`, shape
        ``batch_shape + (K,)``; finite (they need not be normalized:
        :math:`\ell + c` gives the same samples).
    :param temperature: :math:`\tau > 0`, finite; a number or a tensor that
        broadcasts against ``logits`` (e.g. shape ``batch_shape + (1,)``).
    :param sample_shape: leading shape of independent draws.
    :param bool hard: if True, the straight-through estimator [1]: the forward value
        is the one-hot vector of :math:`\arg\max_k y_k` (exactly), the gradient is
        that of the relaxed sample :math:`y`.
    :param torch.Generator generator: optional source of randomness (on the device
        of ``logits``); the same generator state gives the same sample.
    :returns: a tensor of shape ``sample_shape + logits.shape`` on the simplex.
    :raises ValueError: for non-finite or empty ``logits``, a temperature that is
        not positive and finite, a ``sample_shape`` that is not a sequence of
        non-negative integers, a non-boolean ``hard`` or a ``generator`` that is not
        a :class:`torch.Generator`.
    """
    logits = _check_logits(logits)
    t = _check_temperature(temperature, logits)
    shape = _check_sample_shape(sample_shape) + logits.shape
    hard = boolean("hard", hard)
    instance("generator", generator, torch.Generator, "a torch.Generator", optional=True)
    g = gumbel_noise(shape, dtype=logits.dtype, device=logits.device, generator=generator)
    # log-space softmax: exp(log_softmax) never overflows, even for tau -> 0.
    y = torch.log_softmax((logits + g) / t, dim=-1).exp()
    if not hard:
        return y
    index = y.argmax(dim=-1, keepdim=True)
    y_hard = torch.zeros_like(y).scatter_(-1, index, 1.0)
    return y_hard + (y - y.detach())


def categorical_from_relaxed(y: torch.Tensor) -> torch.Tensor:
    r"""
    The category of a relaxed (or straight-through) sample, :math:`\arg\max_k y_k`:
    the evaluation-time discretization. For :math:`y` from
    :func:`gumbel_softmax_sample` this is :math:`\arg\max_k(\ell_k + g_k)`, an exact
    draw from :math:`\mathrm{Categorical}(\mathrm{softmax}(\ell))` whatever the
    temperature (the Gumbel-max trick).

    :param torch.Tensor y: shape ``(..., K)``.
    :returns: a ``torch.long`` tensor of shape ``y.shape[:-1]``.
    """
    if not isinstance(y, torch.Tensor) or y.dim() == 0 or y.shape[-1] == 0:
        raise ValueError("y must be a tensor with a non-empty category dimension (the last one)")
    if y.is_floating_point() and bool(torch.isnan(y).any()):
        raise ValueError("y contains NaN; its argmax is not a category")
    return y.argmax(dim=-1)
