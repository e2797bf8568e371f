r"""Attend, infer, repeat (Eslami et al. 2016): a scene of at most :math:`T`
objects, each one present or not, with a position and an appearance.

For each canvas :math:`x` (``canvas_size x canvas_size`` pixels) and steps
:math:`t = 0, \dots, T - 1`, with :math:`z^{pres}_{-1} = 1`:

.. math::

    z^{pres}_t \mid z^{pres}_{t-1} &\sim \mathrm{Bernoulli}(\rho\, z^{pres}_{t-1}),\\
    z^{where}_t &\sim \mathcal{N}\big((s_0, 0, 0), \mathrm{diag}(\sigma_s^2, \sigma_{xy}^2, \sigma_{xy}^2)\big),\\
    z^{what}_t &\sim \mathcal{N}(0, I),\\
    x \mid z &\sim \mathcal{N}\Big(\sum_t z^{pres}_t\,
        \mathrm{STN}\big(f_\theta(z^{what}_t); z^{where}_t\big), \sigma_x^2 I\Big).

Once :math:`z^{pres}_t = 0` every later :math:`z^{pres}` is 0 (its Bernoulli has
probability :math:`\rho \cdot 0`), so :math:`\sum_t z^{pres}_t` is the number
of objects, and the prior on it is truncated geometric,
:math:`P(n) = \rho^n (1 - \rho)` for :math:`n < T` and :math:`\rho^T` for
:math:`n = T`. The factors of :math:`z^{where}_t` and :math:`z^{what}_t` are
masked out where :math:`z^{pres}_t = 0` (in the guide too): an absent object
has no position or appearance, and the number of latent variables follows the
number of objects.

The decoder :math:`f_\theta` maps :math:`z^{what}_t` to a
``window_size x window_size`` window of intensities in (0, 1) (an MLP with a
sigmoid output); the spatial transformer :math:`\mathrm{STN}` writes it into
the canvas at :math:`z^{where}_t = (s, a, b)`: the window's centre is at
:math:`(-a/s, -b/s)` in the canvas's coordinates :math:`[-1, 1]^2` (column,
row) and it spans :math:`1/s` of the canvas's width
(:func:`window_to_canvas`, with ``F.affine_grid`` and ``F.grid_sample``); the
guide reads windows back with the inverse transform (:func:`canvas_to_window`).
The default :math:`s_0` is ``canvas_size / window_size``: a window written at
its own resolution. Objects add up where they overlap (no occlusion), as in
Pyro's AIR example.

:func:`model` puts the canvases in a plate ``"data"`` at ``dim=-1``
(``max_plate_nesting=1``) and runs inside a vectorized particle plate as well:
every tensor takes the batch shape of the enclosing plates. Training may
anneal :math:`\rho` (its argument ``z_pres_prior``) with :class:`PriorSchedule`.
The guide is in :mod:`guides.air`.

References

1. S. M. A. Eslami, N. Heess, T. Weber, Y. Tassa, D. Szepesvari, K. Kavukcuoglu,
   G. E. Hinton, *Attend, Infer, Repeat: Fast Scene Understanding with
   Generative Models*, NeurIPS 2016.
2. M. Jaderberg, K. Simonyan, A. Zisserman, K. Kavukcuoglu, *Spatial
   Transformer Networks*, NeurIPS 2015.
"""

import math
from dataclasses import dataclass
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.poutine.runtime import get_plates
from torch import nn

from pyro_vi.validation import instance, integer, real

__all__ = [
    "AIRConfig",
    "Decoder",
    "PriorSchedule",
    "canvas_to_window",
    "check_canvases",
    "model",
    "plate_shape",
    "window_to_canvas",
]


@dataclass(frozen=True)
class AIRConfig:
    """
    The sizes and priors of the scene model (shared by its guide).

    :ivar int canvas_size: canvas side in pixels.
    :ivar int window_size: side of an object's window in pixels.
    :ivar int max_steps: :math:`T`, the most objects per canvas.
    :ivar int z_what_dim: dimension of :math:`z^{what}`.
    :ivar int decoder_hidden: hidden units of the decoder (and the guide's encoder).
    :ivar int rnn_hidden: hidden units of the guide's LSTM.
    :ivar int embed_dim: the guide's embedding of the canvas.
    :ivar float z_pres_prior: :math:`\\rho`, the prior probability of each further object.
    :ivar float scale_prior_mean: :math:`s_0`; ``None`` for ``canvas_size / window_size``.
    :ivar float scale_prior_sd: :math:`\\sigma_s`.
    :ivar float shift_prior_sd: :math:`\\sigma_{xy}`.
    :ivar float likelihood_sd: :math:`\\sigma_x`.
    :ivar float decoder_output_bias: initial bias of the decoder's output
        logits (negative: faint windows at the start).
    """

    canvas_size: int = 50
    window_size: int = 28
    max_steps: int = 3
    z_what_dim: int = 20
    decoder_hidden: int = 200
    rnn_hidden: int = 128
    embed_dim: int = 128
    z_pres_prior: float = 0.5
    scale_prior_mean: Optional[float] = None
    scale_prior_sd: float = 0.1
    shift_prior_sd: float = 1.0
    likelihood_sd: float = 0.3
    decoder_output_bias: float = -2.0

    def __post_init__(self):
        for name in ("canvas_size", "window_size", "max_steps", "z_what_dim", "decoder_hidden", "rnn_hidden"):
            object.__setattr__(self, name, integer("AIRConfig." + name, getattr(self, name), minimum=1))
        object.__setattr__(self, "embed_dim", integer("AIRConfig.embed_dim", self.embed_dim, minimum=1))
        object.__setattr__(
            self, "z_pres_prior", real("AIRConfig.z_pres_prior", self.z_pres_prior, minimum=0, maximum=1)
        )
        if self.scale_prior_mean is None:
            object.__setattr__(self, "scale_prior_mean", self.canvas_size / self.window_size)
        object.__setattr__(
            self,
            "scale_prior_mean",
            real("AIRConfig.scale_prior_mean", self.scale_prior_mean, minimum=0, strict_minimum=True),
        )
        for name in ("scale_prior_sd", "shift_prior_sd", "likelihood_sd"):
            object.__setattr__(
                self, name, real("AIRConfig." + name, getattr(self, name), minimum=0, strict_minimum=True)
            )
        object.__setattr__(self, "decoder_output_bias", real("AIRConfig.decoder_output_bias", self.decoder_output_bias))

    def where_prior(self, like):
        """The prior's ``(loc, scale)`` of :math:`z^{where}`, shape ``(3,)``,
        in the dtype and device of the tensor ``like``."""
        loc = like.new_tensor([self.scale_prior_mean, 0.0, 0.0])
        scale = like.new_tensor([self.scale_prior_sd, self.shift_prior_sd, self.shift_prior_sd])
        return loc, scale


# ----------------------------------------------------------------------------
# the spatial transformer


def _flat(tensor, event_dims):
    """``tensor`` with its batch dimensions (all but the last ``event_dims``)
    flattened into one, and the batch shape to restore them."""
    batch_shape = tensor.shape[: tensor.dim() - event_dims]
    return tensor.reshape((math.prod(batch_shape),) + tensor.shape[tensor.dim() - event_dims :]), batch_shape


def _affine(z_where):
    """``(..., 3)`` :math:`(s, a, b)` -> ``(..., 2, 3)`` :math:`[[s, 0, a], [0, s, b]]`."""
    s, a, b = z_where.unbind(-1)
    zero = torch.zeros_like(s)
    return torch.stack([torch.stack([s, zero, a], -1), torch.stack([zero, s, b], -1)], -2)


def _transform(images, theta, size):
    """``F.grid_sample`` of ``images`` ``(..., H, W)`` at the grid of ``theta``
    ``(..., 2, 3)``, an output of ``size x size``; batch shapes broadcast."""
    batch_shape = torch.broadcast_shapes(images.shape[:-2], theta.shape[:-2])
    images, _ = _flat(images.expand(batch_shape + images.shape[-2:]), 2)
    theta, _ = _flat(theta.expand(batch_shape + (2, 3)), 2)
    grid = F.affine_grid(theta, [len(theta), 1, size, size], align_corners=False)
    out = F.grid_sample(images[:, None], grid, align_corners=False)
    return out.reshape(batch_shape + (size, size))


def window_to_canvas(windows, z_where, canvas_size):
    """Writes ``windows`` ``(..., w, w)`` into blank ``canvas_size`` canvases
    where ``z_where`` ``(..., 3)`` says (zero outside the window)."""
    return _transform(windows, _affine(z_where), canvas_size)


def canvas_to_window(canvases, z_where, window_size):
    """Reads the ``window_size`` window at ``z_where`` ``(..., 3)`` out of
    ``canvases`` ``(..., C, C)``: the inverse of :func:`window_to_canvas`,
    :math:`(s, a, b) \\mapsto (1/s, -a/s, -b/s)`."""
    s = z_where[..., :1]
    inverse = torch.cat([torch.ones_like(s), -z_where[..., 1:]], -1) / s
    return _transform(canvases, _affine(inverse), window_size)


# ----------------------------------------------------------------------------
# the program


def plate_shape():
    """The batch shape of the enclosing plates (a vectorized particle plate
    included), right-aligned as in Pyro, size 1 where no plate is."""
    frames = [f for f in get_plates() if f.vectorized]
    if not frames:
        return torch.Size()
    shape = [1] * max(-f.dim for f in frames)
    for f in frames:
        shape[f.dim] = f.size
    return torch.Size(shape)


def check_canvases(images, config: AIRConfig, network: nn.Module, name="images"):
    """Raises :class:`ValueError`, before ``network`` runs, unless ``images`` is
    a floating ``(batch, canvas_size, canvas_size)`` tensor in the dtype of the
    network's weights with intensities in [0, 1]."""
    size = config.canvas_size
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor (batch, {size}, {size}) of intensities in [0, 1], got "
            f"{type(images).__name__}" + (f" of dtype {images.dtype}" if isinstance(images, torch.Tensor) else "")
        )
    if images.dim() != 3 or images.shape[1:] != (size, size):
        raise ValueError(
            f"{name} must have shape (batch, {size}, {size}) for canvas_size {size}, got {tuple(images.shape)}"
        )
    weight = next(network.parameters())
    if images.dtype != weight.dtype:
        raise ValueError(f"{name} has dtype {images.dtype} but the networks are {weight.dtype}: pass {name}.to(...)")
    if images.numel() and not bool(((images >= 0) & (images <= 1)).all()):
        raise ValueError(f"{name} must have intensities in [0, 1]; scale 0-255 images by 1/255")


def mlp(sizes):
    """Linear layers between ``sizes`` with ReLU between them (none after the last)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.ReLU())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """:math:`f_\\theta`: ``z_what (..., z_what_dim) -> window (..., w, w)``,
    intensities in (0, 1).

    :param AIRConfig config: sizes and priors.
    """

    def __init__(self, config: AIRConfig = AIRConfig()):
        super().__init__()
        self.config = instance("config", config, AIRConfig, "a models.air.AIRConfig")
        self.net = mlp((config.z_what_dim, config.decoder_hidden, config.window_size**2))
        with torch.no_grad():
            self.net[-1].bias.fill_(config.decoder_output_bias)

    def forward(self, z_what):
        w = self.config.window_size
        return torch.sigmoid(self.net(z_what)).reshape(z_what.shape[:-1] + (w, w))


def model(images, decoder: Decoder, z_pres_prior=None):
    """The scene model for ``images`` ``(B, C, C)``, in the plate ``"data"``;
    pass the decoder with :func:`functools.partial`. ``z_pres_prior``
    replaces the config's :math:`\rho` (to anneal it during training).
    Returns the mean canvas."""
    instance("decoder", decoder, Decoder, "a models.air.Decoder")
    config = decoder.config
    check_canvases(images, config, decoder)
    rho = config.z_pres_prior if z_pres_prior is None else real("z_pres_prior", z_pres_prior, minimum=0, maximum=1)
    pyro.module("decoder", decoder)
    where_loc, where_scale = config.where_prior(images)
    with pyro.plate("data", len(images), dim=-1):
        shape = plate_shape()
        canvas = images.new_zeros(shape + images.shape[-2:])
        present = images.new_ones(shape)
        for t in range(config.max_steps):
            present = pyro.sample(f"z_pres_{t}", dist.Bernoulli(probs=rho * present))
            shape = present.shape
            mask = present > 0
            z_where = pyro.sample(
                f"z_where_{t}", dist.Normal(where_loc, where_scale).expand(shape + (3,)).to_event(1).mask(mask)
            )
            z_what = pyro.sample(
                f"z_what_{t}",
                dist.Normal(images.new_zeros(()), 1.0).expand(shape + (config.z_what_dim,)).to_event(1).mask(mask),
            )
            written = window_to_canvas(decoder(z_what), z_where, config.canvas_size)
            canvas = canvas + present[..., None, None] * written
        pyro.sample("x", dist.Normal(canvas, config.likelihood_sd).to_event(2), obs=images)
    return canvas


class PriorSchedule:
    """The prior probability :math:`\\rho` of each further object at a
    training step, annealed as in Pyro's AIR example: ``start`` for the first
    ``hold`` steps, then geometrically to ``final`` over ``decay`` steps.
    Without annealing (``start`` is ``None``) it is ``final`` throughout."""

    def __init__(self, final, start=None, hold=0, decay=0):
        self.final, self.start, self.hold, self.decay = final, start, hold, decay

    def __call__(self, step):
        if self.start is None or step >= self.hold + self.decay:
            return self.final
        done = max(step - self.hold, 0) / self.decay
        return math.exp((1 - done) * math.log(self.start) + done * math.log(self.final))
