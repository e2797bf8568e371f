r"""The Bernoulli VAE of the ARM and DisARM benchmarks on binarized MNIST.

.. math::

    b_n &\sim \prod_{j=1}^{200} \mathrm{Bernoulli}\big(\sigma(\eta_j)\big),\\
    x_n \mid b_n &\sim \prod_{d=1}^{784} \mathrm{Bernoulli}\big(x_{nd} \mid
        \sigma(f_\theta(b_n)_d)\big),

with 200 binary latents, prior logits :math:`\eta` learned with the decoder, and
the decoder :math:`f_\theta` either **linear** (784 logits affine in :math:`b`) or
**nonlinear** (two hidden layers of 200 tanh units, 200 -> 200 -> 200 -> 784), as
in Yin and Zhou (2019) and Dong, Mnih and Tucker (2020). The output bias starts at
the logit of the mean training pixel. The amortized guide is in
:mod:`guides.bernoulli_vae`. :func:`model` puts the data points in a plate
``"data"`` at ``dim=-1`` (``max_plate_nesting=1``).

References

1. M. Yin, M. Zhou, *ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary
   Networks*, ICLR 2019, section 4.1.
2. Z. Dong, A. Mnih, G. Tucker, *DisARM: An Antithetic Gradient Estimator for
   Binary Latent Variables*, NeurIPS 2020, section 6.1.
"""

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from models.vae import check_images, mlp, output_bias
from pyro_vi.validation import choice, instance, integer

__all__ = ["KINDS", "BernoulliVAEConfig", "Decoder", "model"]

KINDS = ("linear", "nonlinear")


@dataclass(frozen=True)
class BernoulliVAEConfig:
    """
    :ivar str kind: ``"linear"`` or ``"nonlinear"`` (two tanh hidden layers).
    :ivar int latent_dim: binary latents per image (200).
    :ivar int hidden_dim: width of the nonlinear networks' hidden layers (200).
    :ivar int data_dim: pixels per image (784).
    """

    kind: str = "linear"
    latent_dim: int = 200
    hidden_dim: int = 200
    data_dim: int = 784

    def __post_init__(self):
        choice("BernoulliVAEConfig.kind", self.kind, KINDS)
        for name in ("latent_dim", "hidden_dim", "data_dim"):
            object.__setattr__(self, name, integer("BernoulliVAEConfig." + name, getattr(self, name), minimum=1))

    def sizes(self, first, last):
        """Layer sizes of a network from ``first`` to ``last`` units."""
        hidden = (self.hidden_dim, self.hidden_dim) if self.kind == "nonlinear" else ()
        return (first,) + hidden + (last,)


class Decoder(nn.Module):
    """``b -> Bernoulli logits`` of the pixels, and the prior logits of ``b``.

    :param BernoulliVAEConfig config: the architecture.
    :param mean_pixel: the mean training pixel (a float or one per pixel), for
        the output bias; ``None`` leaves PyTorch's default.
    """

    def __init__(self, config=BernoulliVAEConfig(), mean_pixel=None):
        super().__init__()
        self.config = instance("config", config, BernoulliVAEConfig, "a models.bernoulli_vae.BernoulliVAEConfig")
        self.net = mlp(config.sizes(config.latent_dim, config.data_dim))
        self.prior_logits = nn.Parameter(torch.zeros(config.latent_dim))
        if mean_pixel is not None:
            with torch.no_grad():
                self.net[-1].bias.copy_(output_bias(mean_pixel, config.data_dim))

    def forward(self, b):
        return self.net(b)


def model(x, decoder):
    """The generative model for the rows of ``x`` (``(B, 784)`` binary
    pixels); pass the decoder with :func:`functools.partial`."""
    instance("decoder", decoder, Decoder, "a models.bernoulli_vae.Decoder")
    check_images(x, decoder.config, decoder)
    pyro.module("decoder", decoder)
    prior = dist.Bernoulli(logits=decoder.prior_logits, validate_args=False).to_event(1)
    with pyro.plate("data", x.shape[0], dim=-1):
        b = pyro.sample("b", prior)
        pyro.sample("x", dist.Bernoulli(logits=decoder(b), validate_args=False).to_event(1), obs=x)
