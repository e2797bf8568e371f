r"""The amortized Gaussian guide of Burda et al.'s one-stochastic-layer VAE/IWAE
(:mod:`models.vae`).

.. math::

    q_\phi(z_n \mid x_n) = \mathcal{N}\big(z_n \mid \mu_\phi(x_n),
        \mathrm{diag}\, \sigma_\phi(x_n)^2\big),

with the encoder an MLP 784 -> 200 -> 200 -> (50 means, 50 log standard deviations)
with tanh hidden units; :math:`\sigma = \exp(\text{log std})`, as in Kingma &
Welling and Burda et al. ``z`` is reparameterized, so every estimator of the study
(Trace_ELBO, sticking the landing, IWAE, DReG) can differentiate through it.

References

1. Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*, ICLR 2016.
2. D. P. Kingma, M. Welling, *Auto-Encoding Variational Bayes*, ICLR 2014.
"""

from typing import Tuple

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from models.vae import BURDA_CONFIG, VAEConfig, check_images, data_plate, mlp
from pyro_vi.validation import instance

__all__ = ["Encoder", "guide"]


class Encoder(nn.Module):
    """
    ``x -> (loc, scale)`` of q(z | x): an MLP data_dim -> hidden_dims ->
    2 * latent_dim with tanh hidden units; the second half of the output is the log
    standard deviation.

    :param VAEConfig config: layer sizes.
    """

    def __init__(self, config: VAEConfig = BURDA_CONFIG):
        super().__init__()
        self.config = instance("config", config, VAEConfig, "a models.vae.VAEConfig such as VAEConfig(latent_dim=50)")
        self.net = mlp((config.data_dim,) + config.hidden_dims + (2 * config.latent_dim,))

    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        loc, log_scale = self.net(x).split(self.config.latent_dim, dim=-1)
        return loc, log_scale.exp()


def guide(x: torch.Tensor, encoder: Encoder, size=None) -> None:
    """
    The amortized guide: ``z_n ~ N(loc(x_n), diag scale(x_n)^2)`` in the same
    ``"data"`` plate as :func:`models.vae.model` (``size`` as there). Pass the encoder with
    :func:`functools.partial`. ``x`` is checked (:func:`models.vae.check_images`:
    shape, dtype, binary pixels) before the encoder runs.
    """
    instance("encoder", encoder, Encoder, "a guides.vae.Encoder")
    check_images(x, encoder.config, encoder)
    pyro.module("encoder", encoder)
    loc, scale = encoder(x)
    with data_plate(x, size):
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))
