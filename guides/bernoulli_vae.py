r"""The amortized guide of the Bernoulli VAE (:mod:`models.bernoulli_vae`):
:math:`q_\phi(b_n \mid x_n) = \prod_j \mathrm{Bernoulli}(\sigma(g_\phi(x_n)_j))`,
the encoder :math:`g_\phi` linear or with two hidden layers of 200 tanh units.

With ``temperature`` the site is Pyro's ``RelaxedBernoulliStraightThrough``
instead (Jang et al. 2017; Maddison et al. 2017): hard samples in the forward
pass, the relaxed sample's gradient in the backward pass (a biased estimator);
its ``log_prob`` is the relaxed density at the relaxed sample, so the ELBO that
``Trace_ELBO`` reports for it is not the model's ELBO.
"""

import pyro
import pyro.distributions as dist
from torch import nn

from models.bernoulli_vae import BernoulliVAEConfig
from models.vae import check_images, mlp
from pyro_vi.validation import instance, real

__all__ = ["Encoder", "guide"]


class Encoder(nn.Module):
    """``x -> logits`` of q(b | x).

    :param BernoulliVAEConfig config: the architecture.
    """

    def __init__(self, config=BernoulliVAEConfig()):
        super().__init__()
        self.config = instance("config", config, BernoulliVAEConfig, "a models.bernoulli_vae.BernoulliVAEConfig")
        self.net = mlp(config.sizes(config.data_dim, config.latent_dim))

    def forward(self, x):
        return self.net(x)


def guide(x, encoder, temperature=None):
    """``b_n ~ Bernoulli(logits=encoder(x_n))`` in the ``"data"`` plate, or
    its straight-through relaxation at ``temperature``."""
    instance("encoder", encoder, Encoder, "a guides.bernoulli_vae.Encoder")
    check_images(x, encoder.config, encoder)
    pyro.module("encoder", encoder)
    logits = encoder(x)
    if temperature is None:
        fn = dist.Bernoulli(logits=logits, validate_args=False)
    else:
        temperature = real("temperature", temperature, minimum=0, strict_minimum=True)
        fn = dist.RelaxedBernoulliStraightThrough(logits.new_tensor(temperature), logits=logits)
    with pyro.plate("data", x.shape[0], dim=-1):
        pyro.sample("b", fn.to_event(1))
