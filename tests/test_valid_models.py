"""Every estimator against a catalogue of model/guide pairs: it runs, and its
``loss``, ``loss_and_grads`` and ``differentiable_loss`` agree."""

import pytest
import torch
from torch import nn

import pyro
import pyro.distributions as dist
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal

from pyro_vi import (
    ControlVariateELBO,
    ImportanceWeightedELBO,
    RaoBlackwellELBO,
    ScoreFunctionELBO,
    StickingTheLandingELBO,
)
from pyro_vi.diagnostics import gradient_statistics

DATA = torch.tensor([0.3, -1.2, 2.1, 0.7, 1.5, -0.4])


def global_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=data)


def global_guide(data):
    m = pyro.param("m", torch.tensor(0.2))
    s = pyro.param("s", torch.tensor(0.8), constraint=constraints.positive)
    pyro.sample("loc", dist.Normal(m, s))


def local_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(data)):
        y = pyro.sample("y", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(y, 0.5), obs=data)


def local_guide(data):
    m = pyro.param("m", torch.tensor(0.2))
    s = pyro.param("s", torch.tensor(0.8), constraint=constraints.positive)
    pyro.sample("loc", dist.Normal(m, s))
    ym = pyro.param("ym", torch.zeros(len(data)))
    ys = pyro.param("ys", torch.ones(len(data)), constraint=constraints.positive)
    with pyro.plate("data", len(data)):
        pyro.sample("y", dist.Normal(ym, ys))


def nested_model(data):
    scale = pyro.sample("scale", dist.Gamma(2.0, 2.0))
    with pyro.plate("groups", 2, dim=-2):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(data), dim=-1):
            pyro.sample("x", dist.Normal(g, scale), obs=data.expand(2, len(data)))


def nested_guide(data):
    a = pyro.param("a", torch.tensor(2.0), constraint=constraints.positive)
    b = pyro.param("b", torch.tensor(1.5), constraint=constraints.positive)
    pyro.sample("scale", dist.Gamma(a, b))
    gm = pyro.param("gm", torch.zeros(2, 1))
    with pyro.plate("groups", 2, dim=-2):
        pyro.sample("g", dist.Normal(gm, 1.0))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(1, 2)

    def forward(self, x):
        out = self.net(x.unsqueeze(-1))
        return out[..., 0], nn.functional.softplus(out[..., 1]) + 0.1


ENCODER = Encoder()


def amortized_guide(data):
    pyro.module("encoder", ENCODER)
    m = pyro.param("m", torch.tensor(0.2))
    pyro.sample("loc", dist.Normal(m, 0.7))
    loc, scale = ENCODER(data)
    with pyro.plate("data", len(data)):
        pyro.sample("y", dist.Normal(loc, scale))


def learnable_model(data):
    noise = pyro.param("noise", torch.tensor(1.0), constraint=constraints.positive)
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(loc, noise), obs=data)


def subsample_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(data), subsample_size=3) as idx:
        y = pyro.sample("y", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(y, 0.5), obs=data[idx])


def subsample_guide(data):
    m = pyro.param("m", torch.tensor(0.2))
    pyro.sample("loc", dist.Normal(m, 0.8))
    ym = pyro.param("ym", torch.zeros(len(data)))
    with pyro.plate("data", len(data), subsample_size=3) as idx:
        pyro.sample("y", dist.Normal(ym[idx], 1.0))


CATALOGUE = {
    "global": (global_model, global_guide),
    "local": (local_model, local_guide),
    "nested_plates": (nested_model, nested_guide),
    "auto_normal": (local_model, "auto"),
    "amortized": (local_model, amortized_guide),
    "model_param": (learnable_model, global_guide),
    "subsample": (subsample_model, subsample_guide),
}

ESTIMATORS = {
    "score_function": lambda **kw: ScoreFunctionELBO(**kw),
    "control_variate": lambda **kw: ControlVariateELBO(**kw),
    "rao_blackwell": lambda **kw: RaoBlackwellELBO(**kw),
    "rao_blackwell_no_cv": lambda **kw: RaoBlackwellELBO(control_variate=False, **kw),
    "sticking_the_landing": lambda **kw: StickingTheLandingELBO(**kw),
    "iwae": lambda **kw: ImportanceWeightedELBO(**kw),
    "iwae_stl": lambda **kw: ImportanceWeightedELBO(gradient="stl", **kw),
    "iwae_dreg": lambda **kw: ImportanceWeightedELBO(gradient="dreg", **kw),
}
# Importance weighting has no unbiased form under subsampling; it refuses it.
UNSUPPORTED = {("subsample", "iwae"), ("subsample", "iwae_stl"), ("subsample", "iwae_dreg")}


def _pair(name):
    model, guide = CATALOGUE[name]
    if guide == "auto":
        guide = AutoNormal(model)
    return model, guide


def _grads(fn):
    pyro.set_rng_seed(3)
    value = fn()
    grads = {
        name: p.grad.clone() for name, p in pyro.get_param_store().named_parameters() if p.grad is not None
    }
    for p in pyro.get_param_store().values():
        p.unconstrained().grad = None
    return value, grads


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "sequential"])
@pytest.mark.parametrize("estimator", sorted(ESTIMATORS))
@pytest.mark.parametrize("pair", sorted(CATALOGUE))
def test_loss_forms_agree(pair, estimator, vectorize):
    pyro.clear_param_store()
    model, guide = _pair(pair)
    elbo = ESTIMATORS[estimator](num_particles=4, vectorize_particles=vectorize)
    if (pair, estimator) in UNSUPPORTED:
        with pytest.raises(ValueError, match="outside the subsampled plate"):
            elbo.loss(model, guide, DATA)
        return
    pyro.set_rng_seed(0)
    guide(DATA)  # create parameters
    elbo.loss(model, guide, DATA)  # and let the estimator guess max_plate_nesting

    pyro.set_rng_seed(3)
    loss = elbo.loss(model, guide, DATA)
    value, grads = _grads(lambda: elbo.loss_and_grads(model, guide, DATA))

    def backward():
        out = elbo.differentiable_loss(model, guide, DATA)
        out.backward()
        return out.item()

    value2, grads2 = _grads(backward)
    assert loss == pytest.approx(value, rel=1e-6)
    assert value == pytest.approx(value2, rel=1e-6)
    assert grads.keys() == grads2.keys()
    expected = {n for n, _ in pyro.get_param_store().named_parameters()}
    assert set(grads) == expected, "every parameter gets a gradient"
    for name in grads:
        assert torch.isfinite(grads[name]).all(), name
        assert torch.allclose(grads[name], grads2[name], rtol=1e-5, atol=1e-5), name


@pytest.mark.parametrize("estimator", sorted(e for e in ESTIMATORS if not e.startswith("iwae")))
@pytest.mark.parametrize("pair", ["global", "local", "nested_plates", "subsample"])
def test_value_matches_trace_elbo(pair, estimator):
    """On the same seed, the reported objective equals Trace_ELBO's: both are
    the mean of log p - log q over the same particles."""
    pyro.clear_param_store()
    model, guide = _pair(pair)
    pyro.set_rng_seed(0)
    guide(DATA)
    # Each ELBO guesses max_plate_nesting on its first call (Pyro's own guess
    # draws from the RNG, ours does not): compare from the second call.
    reference = Trace_ELBO(num_particles=4, vectorize_particles=True)
    ours = ESTIMATORS[estimator](num_particles=4, vectorize_particles=True)
    for elbo in (reference, ours):
        elbo.loss(model, guide, DATA)
    pyro.set_rng_seed(5)
    expected = reference.loss(model, guide, DATA)
    pyro.set_rng_seed(5)
    actual = ours.loss(model, guide, DATA)
    assert actual == pytest.approx(expected, rel=1e-5)


UNBIASED = {
    "score_function": lambda: ScoreFunctionELBO(num_particles=100, vectorize_particles=True),
    "control_variate_loo": lambda: ControlVariateELBO(
        num_particles=100, coefficient="leave_one_out", vectorize_particles=True
    ),
    "rao_blackwell_no_cv": lambda: RaoBlackwellELBO(
        num_particles=100, control_variate=False, vectorize_particles=True
    ),
    "rao_blackwell_loo": lambda: RaoBlackwellELBO(
        num_particles=100, coefficient="leave_one_out", vectorize_particles=True
    ),
    "sticking_the_landing": lambda: StickingTheLandingELBO(num_particles=100, vectorize_particles=True),
}


@pytest.mark.parametrize("estimator", sorted(UNBIASED))
@pytest.mark.parametrize(
    "pair", ["local", "nested_plates", "auto_normal", "amortized", "model_param", "subsample"]
)
def test_mean_gradient_matches_trace_elbo(pair, estimator):
    """Unbiasedness on every shape of the catalogue, against the mean of
    Pyro's reparameterized Trace_ELBO gradient: both estimate the same
    gradient, so their means agree within 4 combined standard errors. The
    subsampled plate checks that the score is not scaled (Pyro's convention)."""
    model, guide = _pair(pair)
    stats = []
    for make in (lambda: Trace_ELBO(num_particles=100, vectorize_particles=True), UNBIASED[estimator]):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide(DATA)
        stats.append(gradient_statistics(make(), model, guide, DATA, num_draws=100))
    reference, actual = stats
    assert reference.keys() == actual.keys()
    for name in reference:
        se = (reference[name].standard_error ** 2 + actual[name].standard_error ** 2).sqrt()
        diff = (reference[name].mean - actual[name].mean).abs()
        assert (diff <= 4 * se + 1e-6).all(), (name, reference[name].mean, actual[name].mean, se)
