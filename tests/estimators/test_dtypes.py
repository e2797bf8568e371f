"""Every tensor the library creates follows the dtype (and device) of the
user's parameters and data: every estimator runs end to end in float32 and
in float64, also when torch's default dtype is the other one, and its
record, loss and gradients keep the programs' dtype."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints

from tests.helpers import CV, IW, RB, RLOO, SF, STL, Auto, DisARM

DTYPES = {"float32": (torch.float32, torch.float64), "float64": (torch.float64, torch.float32)}


def continuous(dtype):
    data = torch.tensor([0.3, -1.2, 2.1, 0.7], dtype=dtype)

    def model():
        loc = pyro.sample("loc", dist.Normal(torch.tensor(0.0, dtype=dtype), 2.0))
        with pyro.plate("data", 4):
            y = pyro.sample("y", dist.Normal(loc, 1.0))
            pyro.sample("x", dist.Normal(y, 0.5), obs=data)

    def guide():
        m = pyro.param("m", torch.tensor(0.2, dtype=dtype))
        s = pyro.param("s", torch.tensor(0.8, dtype=dtype), constraint=constraints.positive)
        pyro.sample("loc", dist.Normal(m, s))
        ym = pyro.param("ym", torch.zeros(4, dtype=dtype))
        with pyro.plate("data", 4):
            pyro.sample("y", dist.Normal(ym, 1.0))

    return model, guide


def bernoulli(dtype, with_categorical):
    data = torch.tensor([0.3, -1.2, 2.1, 0.7], dtype=dtype)

    def model():
        loc = pyro.sample("loc", dist.Normal(torch.tensor(0.0, dtype=dtype), 2.0))
        shift = torch.tensor(0.0, dtype=dtype)
        if with_categorical:
            k = pyro.sample("k", dist.Categorical(torch.tensor([0.3, 0.7], dtype=dtype)))
            shift = k.to(dtype)
        with pyro.plate("data", 4):
            b = pyro.sample("b", dist.Bernoulli(torch.full((4,), 0.4, dtype=dtype)))
            pyro.sample("x", dist.Normal(loc + b + shift, 1.0), obs=data)

    def guide():
        pyro.sample("loc", dist.Normal(pyro.param("m", torch.tensor(0.2, dtype=dtype)), 1.0))
        if with_categorical:
            pyro.sample("k", dist.Categorical(logits=pyro.param("kl", torch.zeros(2, dtype=dtype))))
        with pyro.plate("data", 4):
            pyro.sample("b", dist.Bernoulli(logits=pyro.param("bl", torch.zeros(4, dtype=dtype))))

    return model, guide


# label -> (factory, programs it takes)
ESTIMATORS = {
    "SF": (SF, "mixed"),
    "CV": (CV, "mixed"),
    "CV(parameters)": (lambda **kw: CV(coordinates="parameters", **kw), "mixed"),
    "RB": (RB, "mixed"),
    "RB(pathwise)": (lambda **kw: RB(pathwise=True, **kw), "mixed"),
    "RLOO": (RLOO, "mixed"),
    "DisARM": (DisARM, "bernoulli"),
    "Auto": (Auto, "mixed"),
    "STL": (STL, "continuous"),
    "IW": (IW, "continuous"),
    "IW(dreg)": (lambda **kw: IW(gradient="dreg", **kw), "continuous"),
    "IW(vimco)": (lambda **kw: IW(gradient="vimco", **kw), "mixed"),
    "IW(disarm)": (lambda **kw: IW(gradient="disarm", **kw), "bernoulli"),
}


def programs(kind, dtype):
    if kind == "continuous":
        return continuous(dtype)
    return bernoulli(dtype, with_categorical=kind == "mixed")


@pytest.fixture
def default_dtype():
    saved = torch.get_default_dtype()
    yield torch.set_default_dtype
    torch.set_default_dtype(saved)


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "sequential"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("label", ESTIMATORS)
def test_every_estimator_keeps_the_programs_dtype(label, dtype, vectorize, default_dtype):
    dtype, other = DTYPES[dtype]
    default_dtype(other)  # the library must not fall back on torch's default
    make, kind = ESTIMATORS[label]
    model, guide = programs(kind, dtype)
    num_particles = 2 if label in ("DisARM", "IW(disarm)") else 4
    elbo = make(num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=1)
    particles = elbo.particles(model, guide)
    assert particles.log_weights().dtype == dtype
    for site in list(particles.model.values()) + list(particles.guide.values()):
        assert site.log_prob.dtype == dtype, site.name
    loss = elbo.differentiable_loss(model, guide)
    assert loss.dtype == dtype and torch.isfinite(loss)
    loss.backward()
    for name, param in pyro.get_param_store().named_parameters():
        assert param.grad is not None and param.grad.dtype == dtype, name
        assert torch.isfinite(param.grad).all(), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("label", ESTIMATORS)
def test_every_estimator_runs_on_cuda(label):
    make, kind = ESTIMATORS[label]
    torch.set_default_device("cuda")
    try:
        model, guide = programs(kind, torch.float32)
        elbo = make(num_particles=2 if "disarm" in label.lower() else 4, vectorize_particles=True, max_plate_nesting=1)
        loss = elbo.differentiable_loss(model, guide)
        loss.backward()
        assert loss.device.type == "cuda"
        for name, param in pyro.get_param_store().named_parameters():
            assert param.grad.device.type == "cuda", name
    finally:
        torch.set_default_device("cpu")
