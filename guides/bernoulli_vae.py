r"""The amortized guide of the Bernoulli VAE (:mod:`models.bernoulli_vae`):
:math:`q_\phi(b_n \mid x_n) = \prod_j \mathrm{Bernoulli}(\sigma(g_\phi(x_n)_j))`,
the encoder :math:`g_\phi` linear or with two hidden layers of 200 tanh units.

With ``temperature`` the site is Pyro's ``RelaxedBernoulliStraightThrough``
instead (Jang et al. 2017; Maddison et al. 2017): hard samples in the forward
pass, the relaxed sample's gradient in the backward pass (a biased estimator);
its ``log_prob`` is the relaxed density at the relaxed sample, so the ELBO that
``Trace_ELBO`` reports for it is not the model's ELBO.

:func:`bound` is the K-sample bound :math:`L_K` of the model with the Bernoulli
guide, from :func:`log_weights` (the densities by hand, not Pyro's traces).
"""

import math

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from models.bernoulli_vae import BernoulliVAEConfig
from models.vae import check_images, mlp
from pyro_vi.validation import instance, real

__all__ = ["Encoder", "bound", "guide", "log_weights"]


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


@torch.no_grad()
def log_weights(x, encoder, decoder, num_samples, generator):
    """:math:`\\log p(x, b_k) - \\log q(b_k | x)` for ``num_samples`` draws from the
    Bernoulli guide, shape ``(num_samples, len(x))``."""
    logits = encoder(x)
    b = torch.bernoulli(torch.sigmoid(logits).expand((num_samples,) + logits.shape), generator=generator)
    log_q = dist.Bernoulli(logits=logits, validate_args=False).log_prob(b).sum(-1)
    log_prior = dist.Bernoulli(logits=decoder.prior_logits, validate_args=False).log_prob(b).sum(-1)
    log_lik = dist.Bernoulli(logits=decoder(b), validate_args=False).log_prob(x).sum(-1)
    return log_prior + log_lik - log_q


def bound(x, encoder, decoder, k, generator, repeats=1, chunk=100):
    """The mean over the images of ``x`` of the K-sample bound
    :math:`\\log \\frac{1}{K}\\sum_k w_k` (averaged over ``repeats`` draws)."""
    total = 0.0
    for first in range(0, len(x), chunk):
        for _ in range(repeats):
            log_w = log_weights(x[first : first + chunk], encoder, decoder, k, generator)
            total += float((torch.logsumexp(log_w, 0) - math.log(k)).sum())
    return total / (len(x) * repeats)
