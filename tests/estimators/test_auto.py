"""AutoELBO: unbiased on a guide that mixes every kind of site (against the
exact ELBO and gradient), with the per-site choice it reports."""

import logging
import math
from functools import partial

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from guides.bernoulli_vae import Encoder
from guides.bernoulli_vae import guide as vae_guide
from models.bernoulli_vae import BernoulliVAEConfig, Decoder
from models.bernoulli_vae import model as vae_model
from pyro_vi import AutoELBO, DisARMELBO

X = torch.tensor(1.2, dtype=torch.float64)
PRIOR_C = torch.tensor([0.2, 0.5, 0.3], dtype=torch.float64)
INIT = {"theta1": 0.3, "phi": [0.2, -0.3, 0.1], "m": -0.2, "c1": 0.9, "c2": 0.4, "s": 0.8, "theta2": -0.4, "k": 0.7}
INIT["w"] = 0.25
VAE_KW = dict(vectorize_particles=True, max_plate_nesting=1)


def model():
    b1 = pyro.sample("b1", dist.Bernoulli(torch.tensor(0.4, dtype=torch.float64)))
    c = pyro.sample("c", dist.Categorical(PRIOR_C))
    z = pyro.sample("z", dist.Normal(1.5 * b1 + 0.5 * c, 1.0))
    b2 = pyro.sample("b2", dist.Bernoulli(logits=z))
    d = pyro.sample("d", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    pyro.sample("x", dist.Normal(b1 + b2 + 0.5 * z + 0.3 * c + d, 0.7), obs=X)


def guide():
    """A Bernoulli, a Categorical, a Normal drawn given both, a Bernoulli
    drawn given the Normal, and a point mass."""
    p = {
        name: pyro.param(
            name, torch.tensor(value, dtype=torch.float64), constraint=constraints.positive if name == "s" else None
        )
        if name == "s"
        else pyro.param(name, torch.tensor(value, dtype=torch.float64))
        for name, value in INIT.items()
    }
    b1 = pyro.sample("b1", dist.Bernoulli(logits=p["theta1"]))
    c = pyro.sample("c", dist.Categorical(logits=p["phi"]))
    z = pyro.sample("z", dist.Normal(p["m"] + p["c1"] * b1 + p["c2"] * c, p["s"]))
    pyro.sample("b2", dist.Bernoulli(logits=p["theta2"] + p["k"] * z))
    pyro.sample("d", dist.Delta(p["w"]))


def exact_loss_and_gradient():
    """The exact -ELBO and its gradient in Pyro's unconstrained coordinates:
    b1, c and b2 enumerated, z by 80-point Gauss-Hermite quadrature."""
    nodes, weights = np.polynomial.hermite.hermgauss(80)
    nodes, weights = torch.tensor(nodes), torch.tensor(weights) / math.sqrt(math.pi)
    raw = {
        k: torch.tensor(math.log(v) if k == "s" else v, dtype=torch.float64, requires_grad=True)
        for k, v in INIT.items()
    }
    scale = raw["s"].exp()
    elbo = 0.0
    for b1 in (0.0, 1.0):
        b1_ = torch.tensor(b1, dtype=torch.float64)
        for c in range(3):
            c_ = torch.tensor(c, dtype=torch.float64)
            q1 = dist.Bernoulli(logits=raw["theta1"]).log_prob(b1_) + dist.Categorical(logits=raw["phi"]).log_prob(
                torch.tensor(c)
            )
            loc = raw["m"] + raw["c1"] * b1 + raw["c2"] * c
            z = loc + scale * math.sqrt(2) * nodes
            for b2 in (0.0, 1.0):
                b2_ = torch.full_like(z, b2)
                q2 = dist.Bernoulli(logits=raw["theta2"] + raw["k"] * z).log_prob(b2_)
                log_p = (
                    dist.Bernoulli(torch.tensor(0.4, dtype=torch.float64)).log_prob(b1_)
                    + dist.Categorical(PRIOR_C).log_prob(torch.tensor(c))
                    + dist.Normal(1.5 * b1_ + 0.5 * c_, 1.0).log_prob(z)
                    + dist.Bernoulli(logits=z).log_prob(b2_)
                    + dist.Normal(0.0, 1.0).log_prob(raw["w"])
                    + dist.Normal(b1_ + b2_ + 0.5 * z + 0.3 * c_ + raw["w"], 0.7).log_prob(X)
                )
                log_q = q1 + dist.Normal(loc, scale).log_prob(z) + q2
                elbo = elbo + q1.exp() * (weights * q2.exp() * (log_p - log_q)).sum()
    grads = torch.autograd.grad(-elbo, list(raw.values()))
    return -elbo.item(), dict(zip(raw, grads))


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "sequential"])
def test_unbiased_on_a_guide_of_every_kind_of_site(vectorize):
    """The mean loss and the mean gradient of every parameter agree with the
    exact ones within 4.5 standard errors, and the comparison would see the
    Categorical's and the dependent Bernoulli's gradients off by half."""
    exact_loss, exact = exact_loss_and_gradient()
    elbo = AutoELBO(num_particles=40 if vectorize else 8, vectorize_particles=vectorize, max_plate_nesting=0)
    draws, losses = {name: [] for name in exact}, []
    for _ in range(150 if vectorize else 120):
        losses.append(elbo.loss_and_grads(model, guide))
        for name in exact:
            leaf = pyro.param(name).unconstrained()
            draws[name].append(leaf.grad.clone())
            leaf.grad = None
    for name, want in exact.items():
        values = torch.stack(draws[name])
        se = values.std(0) / math.sqrt(len(values))
        assert ((values.mean(0) - want).abs() < 4.5 * se + 1e-9).all(), (name, values.mean(0), want, se)
        if name in ("phi", "k"):
            assert (4.5 * se < 0.5 * want.abs()).any(), (name, se, want)
    losses = np.array(losses)
    assert abs(losses.mean() - exact_loss) < 4.5 * losses.std(ddof=1) / math.sqrt(len(losses)), (losses, exact_loss)


def test_reports_its_choice_per_site_once(caplog):
    """b2 is drawn given z: the guide's Bernoulli sites are not paired, and
    both get REINFORCE leave-one-out (the Bernoulli VAE's independent units
    get DisARM pairs: the test below)."""
    elbo = AutoELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=0)
    with caplog.at_level(logging.INFO, logger="pyro_vi.estimators.auto"):
        elbo.loss(model, guide)
        elbo.loss_and_grads(model, guide)
    expected = "AutoELBO: REINFORCE leave-one-out: b1, c, b2; pathwise (sticking the landing): z; exact (point mass): d"
    assert elbo.summary == expected
    assert [r.getMessage() for r in caplog.records] == [expected]


def test_num_particles_must_be_even():
    with pytest.raises(ValueError, match="num_particles must be even .* got 3; pass 4"):
        AutoELBO(num_particles=3)
    with pytest.raises(ValueError, match="num_particles must be an integer >= 2, got 1"):
        AutoELBO(num_particles=1)
    assert AutoELBO(num_particles=6).num_particles == 6


@pytest.mark.parametrize("kind", ["linear", "nonlinear"])
def test_is_disarm_on_the_bernoulli_vae(kind):
    """On the Bernoulli VAE (every latent a Bernoulli) AutoELBO is DisARMELBO
    with half as many pairs as particles: the same seed gives the same loss
    and gradients, bit for bit (the README's Bernoulli VAE table says so in
    place of a run of its own)."""
    config = BernoulliVAEConfig(kind=kind)
    torch.manual_seed(0)
    decoder, encoder = Decoder(config), Encoder(config)
    x = (torch.rand(5, config.data_dim) < 0.3).float()
    networks = list(encoder.parameters()) + list(decoder.parameters())
    results = []
    for elbo in (DisARMELBO(num_particles=2, **VAE_KW), AutoELBO(num_particles=4, **VAE_KW)):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        loss = elbo.loss_and_grads(partial(vae_model, decoder=decoder), partial(vae_guide, encoder=encoder), x)
        results.append((loss, [p.grad.clone() for p in networks]))
        for p in networks:
            p.grad = None
    assert elbo.summary == "AutoELBO: DisARM pairs: b"
    assert results[0][0] == results[1][0]
    assert all(torch.equal(a, b) for a, b in zip(results[0][1], results[1][1]))
    assert any(g.abs().max() > 0 for g in results[0][1])
