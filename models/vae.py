r"""Burda et al.'s one-stochastic-layer VAE/IWAE model on binarized MNIST
(course 1.B.2, 1.A.2).

.. math::

    z_n &\sim \mathcal{N}(0, I_{50}),\\
    x_n \mid z_n &\sim \prod_{d=1}^{784} \mathrm{Bernoulli}\big(x_{nd} \mid
        \sigma(f_\theta(z_n)_d)\big),

with the decoder :math:`f_\theta` an MLP 50 -> 200 -> 200 -> 784 with tanh hidden
units whose output is the Bernoulli logits. The output bias starts at the logit of
the mean training pixel, so that the untrained model already predicts the marginal
pixel frequencies. The encoder (the amortized guide) is in :mod:`guides.vae`.

The Pyro program :func:`model` puts the data points in a plate ``"data"`` at
``dim=-1``; it also runs inside an outer vectorized particle plate (``z`` then has
shape ``(K, B, 50)``), which is how ``ImportanceWeightedELBO`` and ``RenyiELBO``
with ``vectorize_particles=True`` run it (``max_plate_nesting=1``).

References

1. Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*,
   ICLR 2016, section 5 and appendix.
2. D. P. Kingma, M. Welling, *Auto-Encoding Variational Bayes*, ICLR 2014.
"""

import math
from dataclasses import dataclass
from typing import Sequence, Tuple, Union

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vi.validation import instance, integer

__all__ = [
    "BURDA_CONFIG",
    "Decoder",
    "VAEConfig",
    "check_binary",
    "check_images",
    "mlp",
    "model",
    "output_bias",
]

# Clamp of the mean pixel before the logit: border pixels of MNIST are always 0.
_MEAN_PIXEL_EPS = 1e-3


@dataclass(frozen=True)
class VAEConfig:
    """
    Layer sizes of the encoder and decoder (the decoder mirrors the encoder).

    :ivar int data_dim: pixels per image (784 for MNIST).
    :ivar tuple hidden_dims: hidden layer widths of the encoder, input side first
        (the decoder uses them reversed).
    :ivar int latent_dim: dimension of z.
    """

    data_dim: int = 784
    hidden_dims: Tuple[int, ...] = (200, 200)
    latent_dim: int = 50

    def __post_init__(self):
        hidden = self.hidden_dims
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, (tuple, list, np.ndarray)):
            raise ValueError(
                f"VAEConfig.hidden_dims must be a tuple of layer widths such as (200, 200), got {hidden!r:.60} "
                f"({type(hidden).__name__})"
            )
        object.__setattr__(self, "data_dim", integer("VAEConfig.data_dim", self.data_dim, minimum=1))
        object.__setattr__(self, "latent_dim", integer("VAEConfig.latent_dim", self.latent_dim, minimum=1))
        object.__setattr__(
            self,
            "hidden_dims",
            tuple(integer(f"VAEConfig.hidden_dims[{i}]", h, minimum=1) for i, h in enumerate(hidden)),
        )


BURDA_CONFIG = VAEConfig()


def mlp(sizes: Sequence[int]) -> nn.Sequential:
    """Linear layers between ``sizes`` with tanh between them (none after the last)."""
    layers = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        if i:
            layers.append(nn.Tanh())
        layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


def output_bias(mean_pixel: Union[float, torch.Tensor], data_dim: int) -> torch.Tensor:
    """``logit(mean_pixel)`` broadcast to ``(data_dim,)``, the mean clamped to
    ``[1e-3, 1 - 1e-3]`` (pixels that are always 0 would give -inf)."""
    mean = torch.as_tensor(mean_pixel, dtype=torch.get_default_dtype())
    if mean.dim() > 1 or (mean.dim() == 1 and mean.shape[0] != data_dim):
        raise ValueError(f"mean_pixel must be a scalar or have shape ({data_dim},), got {tuple(mean.shape)}")
    if not torch.isfinite(mean).all() or (mean < 0).any() or (mean > 1).any():
        raise ValueError("mean_pixel must lie in [0, 1]")
    return torch.logit(mean.clamp(_MEAN_PIXEL_EPS, 1 - _MEAN_PIXEL_EPS)).expand(data_dim).clone()


class Decoder(nn.Module):
    """
    ``z -> Bernoulli logits``: an MLP latent_dim -> hidden_dims reversed -> data_dim
    with tanh hidden units; the output bias starts at ``logit(mean_pixel)``.

    :param VAEConfig config: layer sizes.
    :param mean_pixel: the mean training pixel intensity, a float or one per pixel
        (shape ``(data_dim,)``); ``None`` leaves PyTorch's default bias.
    """

    def __init__(self, config: VAEConfig = BURDA_CONFIG, mean_pixel=None):
        super().__init__()
        self.config = instance("config", config, VAEConfig, "a models.vae.VAEConfig such as VAEConfig(latent_dim=50)")
        self.net = mlp((config.latent_dim,) + tuple(reversed(config.hidden_dims)) + (config.data_dim,))
        if mean_pixel is not None:
            with torch.no_grad():
                self.net[-1].bias.copy_(output_bias(mean_pixel, config.data_dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


def check_binary(x: torch.Tensor) -> None:
    """Raises :class:`ValueError` unless every pixel of ``x`` is 0 or 1 (saying
    what range the pixels have when they leave [0, 1])."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"x must be a tensor of binary pixels, got {type(x).__name__}")
    if x.numel() and bool(torch.isnan(x).any()):
        raise ValueError("x contains NaN pixels; the Bernoulli decoder needs binary pixels (0 or 1)")
    if x.numel() and (bool((x < 0).any()) or bool((x > 1).any())):
        raise ValueError(
            f"x has pixel values in [{x.min().item():.6g}, {x.max().item():.6g}], outside [0, 1]; the Bernoulli "
            "decoder needs binary "
            "pixels: scale 0-255 images by 1/255, then binarize (dynamic binarization: "
            "torch.bernoulli(x))"
        )
    if not ((x == 0) | (x == 1)).all():
        raise ValueError(
            "the Bernoulli decoder needs binary pixels; binarize first (dynamic binarization: torch.bernoulli(x))"
        )


def check_images(x, config: VAEConfig, network: nn.Module, name: str = "x") -> None:
    """
    Raises :class:`ValueError` before ``network`` (the encoder or decoder) runs
    unless ``x`` is a ``(batch, config.data_dim)`` floating tensor of binary pixels
    in the dtype of the network's weights: raw ``uint8`` images, images of shape
    ``(batch, 28, 28)``, a dtype the weights do not have (``float64`` input for
    ``float32`` weights) and pixels outside {0, 1} are each refused with the fix.
    """
    if not isinstance(x, torch.Tensor):
        raise ValueError(
            f"{name} must be a tensor of binary pixels of shape (batch, {config.data_dim}), got {type(x).__name__}"
        )
    if not x.is_floating_point():
        hint = (
            " (raw 0-255 pixel bytes?): pass binarize(x.float() / 255)"
            if x.dtype == torch.uint8
            else ": pass x.float()"
        )
        raise ValueError(f"{name} has dtype {x.dtype}; the VAE takes floating-point binary pixels{hint}")
    if x.dim() != 2 or x.shape[-1] != config.data_dim:
        hint = ""
        if x.dim() > 2 and math.prod(x.shape[1:]) == config.data_dim:
            hint = f": flatten the images with {name}.reshape(len({name}), -1)"
        raise ValueError(f"{name} must have shape (batch, {config.data_dim}), got {tuple(x.shape)}{hint}")
    weight = next(network.parameters(), None)
    if weight is not None and x.dtype != weight.dtype:
        raise ValueError(
            f"{name} has dtype {x.dtype} but the {type(network).__name__.lower()}'s weights are {weight.dtype}: "
            f"pass {name}.to({weight.dtype}) (or convert the networks with "
            f".to({x.dtype}))"
        )
    check_binary(x)


def data_plate(x: torch.Tensor, size=None):
    """The plate ``"data"`` (``dim=-1``) over the rows of ``x``. With
    ``size``, the rows stand for ``size`` data points (under ``torchrun``,
    one process's share of a batch): the plate subsamples them, so that each
    point's term is scaled by ``size / len(x)``, outside an importance-weighted
    bound's log-mean-exp (``poutine.scale`` would temper its weights)."""
    if size is None:
        return pyro.plate("data", x.shape[0], dim=-1)
    size = integer("size", size, minimum=x.shape[0])
    return pyro.plate("data", size, subsample=torch.arange(x.shape[0], device=x.device), dim=-1)


def model(x: torch.Tensor, decoder: Decoder, size=None) -> None:
    """
    The generative model: ``z_n ~ N(0, I)``, ``x_n ~ Bernoulli(logits=decoder(z_n))``
    for the rows of ``x`` (shape ``(B, data_dim)``, binary pixels), which
    stand for ``size`` data points (default ``B``; see :func:`data_plate`).

    Pass the decoder with :func:`functools.partial`, e.g.
    ``functools.partial(model, decoder=Decoder(config, mean_pixel))``.
    ``x`` is checked (:func:`check_images`) before the decoder runs.
    """
    instance("decoder", decoder, Decoder, "a models.vae.Decoder")
    check_images(x, decoder.config, decoder)
    pyro.module("decoder", decoder)
    prior = dist.Normal(x.new_zeros(()), x.new_ones(())).expand([decoder.config.latent_dim]).to_event(1)
    with data_plate(x, size):
        z = pyro.sample("z", prior)
        pyro.sample("x", dist.Bernoulli(logits=decoder(z), validate_args=False).to_event(1), obs=x)
