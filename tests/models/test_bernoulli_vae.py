"""The Bernoulli VAE's hand-written importance weights and bound L_K
(guides/bernoulli_vae.py), against the densities of its Pyro programs."""

import math

import torch
from pyro import poutine

from guides.bernoulli_vae import Encoder, bound, guide, log_weights
from models.bernoulli_vae import BernoulliVAEConfig, Decoder, model

CONFIG = BernoulliVAEConfig(kind="nonlinear", hidden_dim=8, latent_dim=5)


def networks():
    torch.manual_seed(0)
    return Encoder(CONFIG), Decoder(CONFIG, mean_pixel=0.3)


def images(n=6):
    return torch.bernoulli(torch.full((n, CONFIG.data_dim), 0.3), generator=torch.Generator().manual_seed(1))


def test_log_weights_are_the_programs_log_densities_at_the_same_draws():
    encoder, decoder = networks()
    x = images()
    log_w = log_weights(x, encoder, decoder, 4, torch.Generator().manual_seed(2))
    # the same draws, from the same generator, scored by Pyro's traces of the programs
    probs = torch.sigmoid(encoder(x)).detach()
    b = torch.bernoulli(probs.expand((4,) + probs.shape), generator=torch.Generator().manual_seed(2))
    expected = []
    for draw in b:
        guide_trace = poutine.trace(poutine.condition(guide, {"b": draw})).get_trace(x, encoder)
        model_trace = poutine.trace(poutine.condition(model, {"b": draw})).get_trace(x, decoder)
        guide_trace.compute_log_prob()
        model_trace.compute_log_prob()
        log_p = model_trace.nodes["b"]["log_prob"] + model_trace.nodes["x"]["log_prob"]
        expected.append(log_p - guide_trace.nodes["b"]["log_prob"])
    assert log_w.shape == (4, 6)
    torch.testing.assert_close(log_w, torch.stack(expected).detach(), rtol=1e-5, atol=1e-4)


def test_bound_is_the_mean_log_average_weight_per_image():
    encoder, decoder = networks()
    x = images()
    for k in (1, 3):
        expected = torch.logsumexp(log_weights(x, encoder, decoder, k, torch.Generator().manual_seed(5)), 0)
        got = bound(x, encoder, decoder, k, torch.Generator().manual_seed(5))
        assert math.isclose(got, float(expected.mean()) - math.log(k), rel_tol=1e-6)
    # K = 1 is the ELBO: its mean over many draws is below the bound with more samples
    generator = torch.Generator().manual_seed(6)
    elbo = bound(x, encoder, decoder, 1, generator, repeats=200)
    l_10 = bound(x, encoder, decoder, 10, generator, repeats=20)
    assert elbo < l_10
