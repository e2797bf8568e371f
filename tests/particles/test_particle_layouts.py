"""Every estimator is the same estimator whatever ``vectorize_particles``
is: the same particles give the same gradient, to rounding, with one
vectorized trace and with one trace per particle (issue 17.1).

The particles are pinned by :class:`PinnedNormals`: particle ``s`` of every
Normal guide site is ``loc + scale * eps[s]``, with the same ``eps`` in
both layouts (detached for the score-function estimators, whose samples
carry no path). DisARM's uniforms come from torch's stream, which yields
the same numbers in one draw of ``(S/2, n)`` as in ``S/2`` draws of ``n``;
the programs draw nothing else from it."""

from functools import partial

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.poutine.messenger import Messenger

from tests.helpers import CV, IW, RB, RLOO, SF, STL, DisARM

NUM_PARTICLES = 6
DATA = torch.tensor([0.5, -1.0], dtype=torch.float64)


class PinnedNormals(Messenger):
    """Draws particle ``s`` of each latent Normal site as
    ``loc + scale * eps[name][s]``. Sequential runs are counted per site;
    later replays of the guide (structure, stopped densities) have their
    values replayed over these."""

    def __init__(self, eps, vectorized, detach):
        super().__init__()
        self.eps, self.vectorized, self.detach = eps, vectorized, detach
        self.runs = {}

    def _pyro_sample(self, msg):
        fn, name = msg["fn"], msg["name"]
        if msg["is_observed"] or name not in self.eps:
            return
        while isinstance(fn, dist.Independent):
            fn = fn.base_dist
        eps = self.eps[name]
        if not self.vectorized:
            run = self.runs.get(name, 0)
            self.runs[name] = run + 1
            eps = eps[run % len(eps)]
        value = fn.loc + fn.scale * eps
        msg["value"] = value.detach() if self.detach else value


def chain_model():
    # Pyro's test_gradient.py model: z_n ~ N(0, 1), x_n ~ N(z_n, 1) in a plate of 2
    with pyro.plate("data", 2):
        z = pyro.sample("z", dist.Normal(torch.zeros(2, dtype=torch.float64), 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=DATA)


def chain_guide(has_rsample=True):
    loc = pyro.param("loc", torch.tensor([0.1, -0.2], dtype=torch.float64))
    scale = pyro.param("scale", torch.tensor([0.9], dtype=torch.float64), constraint=dist.constraints.positive)
    with pyro.plate("data", 2):
        fn = dist.Normal(loc, scale)
        pyro.sample("z", fn if has_rsample else fn.has_rsample_(False))


def bernoulli_model():
    loc = pyro.sample("loc", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    with pyro.plate("data", 2):
        b = pyro.sample("b", dist.Bernoulli(torch.full((2,), 0.4, dtype=torch.float64)))
        pyro.sample("x", dist.Normal(loc + 2 * b, 1.0), obs=DATA)


def bernoulli_guide(probs=False):
    logits = pyro.param("logits", torch.tensor([0.3, -0.8], dtype=torch.float64))
    m = pyro.param("m", torch.tensor(0.2, dtype=torch.float64))
    s = pyro.param("s", torch.tensor(0.7, dtype=torch.float64), constraint=dist.constraints.positive)
    pyro.sample("loc", dist.Normal(m, s))
    with pyro.plate("data", 2):
        # with probs, log_prob caches logits computed from them on the distribution
        pyro.sample("b", dist.Bernoulli(probs=torch.sigmoid(logits)) if probs else dist.Bernoulli(logits=logits))


def structured_guide():
    # z_n's distribution depends on the sample a: coefficients per parameter in both layouts
    m = pyro.param("m", torch.tensor(0.2, dtype=torch.float64))
    w = pyro.param("w", torch.tensor([0.5, -0.3], dtype=torch.float64))
    a = pyro.sample("loc", dist.Normal(m, 0.8))
    with pyro.plate("data", 2):
        pyro.sample("z", dist.Normal(w * a, 0.6))


def structured_model():
    loc = pyro.sample("loc", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    with pyro.plate("data", 2):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=DATA)


def deep_guide():
    # a chain loc -> z -> y: y's factors reach loc's signal only through z
    m = pyro.param("m", torch.tensor(0.2, dtype=torch.float64))
    w = pyro.param("w", torch.tensor([0.5, -0.3], dtype=torch.float64))
    v = pyro.param("v", torch.tensor(0.7, dtype=torch.float64))
    a = pyro.sample("loc", dist.Normal(m, 0.8))
    with pyro.plate("data", 2):
        z = pyro.sample("z", dist.Normal(w * a, 0.6))
        pyro.sample("y", dist.Normal(v * z, 0.5))


def deep_model():
    loc = pyro.sample("loc", dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0))
    with pyro.plate("data", 2):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        y = pyro.sample("y", dist.Normal(z, 1.0))
        pyro.sample("x", dist.Normal(y, 1.0), obs=DATA)


ENCODER = torch.nn.Linear(1, 2).double()


def amortized_guide():
    # an encoder of the data: the distributions' tensors are per data point
    encoder = pyro.module("encoder", ENCODER)
    with pyro.plate("data", 2):
        out = encoder(DATA.unsqueeze(-1))
        pyro.sample("z", dist.Normal(out[..., 0], torch.nn.functional.softplus(out[..., 1])))


def unplated_model():
    # a (1,)-shaped latent outside every plate (Pyro sums such dims): max_plate_nesting=0
    z = pyro.sample("z", dist.Normal(torch.zeros(1, dtype=torch.float64), 1.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=DATA[:1])


def unplated_guide():
    loc = pyro.param("loc", torch.tensor([0.1], dtype=torch.float64))
    scale = pyro.param("scale", torch.tensor([0.9], dtype=torch.float64), constraint=dist.constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale))


CHAIN = (chain_model, chain_guide, {})
UNPLATED = (unplated_model, unplated_guide, {})
NOT_RSAMPLE = (chain_model, chain_guide, {"has_rsample": False})
AMORTIZED = (chain_model, amortized_guide, {})
STRUCTURED = (structured_model, structured_guide, {})
DEEP = (deep_model, deep_guide, {})
BERNOULLI = (bernoulli_model, bernoulli_guide, {})
BERNOULLI_PROBS = (bernoulli_model, bernoulli_guide, {"probs": True})

# label -> (ELBO factory, (model, guide, guide kwargs), whether the samples are detached: score function)
CASES = {
    "CV": (CV, CHAIN, True),
    "CV(parameters)": (partial(CV, coordinates="parameters"), CHAIN, True),
    "CV(pooled)": (partial(CV, coefficient="pooled"), CHAIN, True),
    "CV(pathwise)": (partial(CV, pathwise=True), NOT_RSAMPLE, True),
    "CV(amortized)": (CV, AMORTIZED, True),
    "CV(structured)": (CV, STRUCTURED, True),
    "RB": (RB, CHAIN, True),
    "RB(no CV)": (partial(RB, control_variate=False), CHAIN, True),
    "RB(parameters)": (partial(RB, coordinates="parameters"), CHAIN, True),
    "RB(pathwise)": (partial(RB, pathwise=True), NOT_RSAMPLE, True),
    "RB(amortized)": (RB, AMORTIZED, True),
    "RB(structured)": (RB, STRUCTURED, True),
    "RB(structured chain)": (partial(RB, control_variate=False), DEEP, True),
    "SF": (SF, CHAIN, True),
    "RLOO": (RLOO, CHAIN, True),
    "RLOO(pathwise)": (partial(RLOO, pathwise=True), BERNOULLI, False),
    "STL": (STL, CHAIN, False),
    "DisARM": (DisARM, BERNOULLI, False),
    "CV(Bernoulli probs)": (CV, BERNOULLI_PROBS, True),
    "RB(Bernoulli probs)": (RB, BERNOULLI_PROBS, True),
    "CV(unplated)": (CV, UNPLATED, True),
    "RB(unplated)": (RB, UNPLATED, True),
    "IW(unplated)": (IW, UNPLATED, False),
    "IW(dreg, unplated)": (partial(IW, gradient="dreg"), UNPLATED, False),
    "IW(reparam)": (partial(IW, gradient="reparam"), CHAIN, False),
    "IW(stl)": (partial(IW, gradient="stl"), CHAIN, False),
    "IW(dreg)": (partial(IW, gradient="dreg"), CHAIN, False),
    "IW(vimco)": (partial(IW, gradient="vimco"), BERNOULLI, False),
    "IW(disarm)": (partial(IW, gradient="disarm"), BERNOULLI, False),
}


def gradients(make, program, detach, vectorized):
    model, guide, guide_kwargs = program
    pyro.clear_param_store()
    ENCODER.zero_grad(set_to_none=True)  # the store holds the module's own tensors
    nesting = 0 if program is UNPLATED else 1
    elbo = make(num_particles=NUM_PARTICLES, vectorize_particles=vectorized, max_plate_nesting=nesting)
    if elbo.num_particles != NUM_PARTICLES:  # num_particles counts antithetic pairs
        elbo = make(num_particles=NUM_PARTICLES // 2, vectorize_particles=vectorized, max_plate_nesting=nesting)
    generator = torch.Generator().manual_seed(1)
    eps = {
        "z": torch.randn(NUM_PARTICLES, 2, generator=generator, dtype=torch.float64),
        "loc": torch.randn(NUM_PARTICLES, generator=generator, dtype=torch.float64),
        "y": torch.randn(NUM_PARTICLES, 2, generator=generator, dtype=torch.float64),
    }
    if program is UNPLATED:  # the site's (1,) dim is the particle dim when vectorized
        eps["z"] = eps["z"][:, 0] if vectorized else eps["z"][:, :1]
    elif vectorized:  # the particle plate's dim: (S,) + plate dims
        eps["loc"] = eps["loc"].reshape(NUM_PARTICLES, 1)
    pinned = PinnedNormals(eps, vectorized, detach)
    pinned_guide = pinned(lambda: guide(**guide_kwargs))
    elbo.loss(model, pinned_guide)  # the programs' structure, read once per guide, runs the guide too
    pinned.runs = {}
    pyro.set_rng_seed(3)  # DisARM's uniforms
    loss = elbo.loss_and_grads(model, pinned_guide)
    store = pyro.get_param_store()
    return loss, {name: store[name].unconstrained().grad.clone() for name in store.keys()}


@pytest.mark.parametrize("label", CASES)
def test_same_particles_same_gradient_in_both_layouts(label):
    make, program, detach = CASES[label]
    loss_v, vectorized = gradients(make, program, detach, vectorized=True)
    loss_s, sequential = gradients(make, program, detach, vectorized=False)
    assert loss_v == pytest.approx(loss_s, rel=1e-12, abs=1e-12)
    assert set(vectorized) == set(sequential)
    for name in vectorized:
        assert torch.count_nonzero(vectorized[name]) > 0, f"{label}: no gradient reached {name}"
        assert torch.allclose(vectorized[name], sequential[name], rtol=0, atol=1e-10), (
            f"{label}: {name}: vectorized {vectorized[name].tolist()} vs sequential {sequential[name].tolist()}"
        )
