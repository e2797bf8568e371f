"""A catalogue of model/guide pairs covering the constructs that Pyro's own
ELBOs accept (the constructs of Pyro's ``tests/infer/test_valid_models.py``,
``test_gradient.py``, ``test_inference.py`` and ``test_elbo_mapdata.py``,
written anew here), each tagged with what it exercises, and the estimator
configurations they are run with (``Trace_ELBO`` among them, as the control).

Every pair must either work with every estimator, or be refused with a
``ValueError`` that names the site; :func:`expected_refusal` says which pairs an
estimator refuses and why.
"""

import functools
from dataclasses import dataclass, field
from typing import Callable, FrozenSet, Optional

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions import constraints
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import (
    AutoDelta,
    AutoDiagonalNormal,
    AutoIAFNormal,
    AutoLowRankMultivariateNormal,
    AutoMultivariateNormal,
    AutoNormal,
    AutoNormalMessenger,
    AutoStructured,
)
from pyro.infer.reparam import LatentStableReparam, LocScaleReparam
from pyro.optim import Adam
from pyro.poutine.plate_messenger import block_plate
from torch import nn

from pyro_vi import (
    AutoELBO,
    ControlVariateELBO,
    DisARMELBO,
    ImportanceWeightedELBO,
    RaoBlackwellELBO,
    ReinforceLeaveOneOutELBO,
    ScoreFunctionELBO,
    StickingTheLandingELBO,
)

DATA = torch.tensor([0.3, -1.2, 2.1, 0.7, 1.5, -0.4])


@dataclass(frozen=True)
class Pair:
    """A model, a guide factory (``make_guide(model) -> guide``) and tags.

    :ivar str kind: the guide kind, for the compatibility table: one of
        ``mean_field``, ``autoguide``, ``delta``, ``flow``, ``amortized``,
        ``discrete``, ``structured``, ``messenger``.
    :ivar frozenset tags: what the pair exercises; tags that change an
        estimator's outcome: ``not_reparameterizable`` (a guide site without a
        pathwise derivative), ``global_subsample`` (a site outside a subsampled
        plate), ``sequential_subsample``, ``structured_point_mass`` (a point
        mass in a guide whose random samples depend on one another),
        ``structured_masked`` (a masked or scaled site in such a guide),
        ``guide_messenger``, ``not_bernoulli`` (a guide site without a
        pathwise derivative that is not a Bernoulli), ``moving_support`` (a
        guide site whose support moves with the parameters); and ``poutine_scale``
        (sites under ``poutine.scale``: the importance-weighted estimators
        work, on the bound of the tempered weights).
    """

    model: Callable
    make_guide: Callable
    kind: str
    tags: FrozenSet[str] = frozenset()
    args: tuple = ()
    max_plate_nesting: Optional[int] = None
    subsample: bool = False
    #: the warning Pyro's own ELBOs give for the pair (every estimator gives it too)
    warning: Optional[str] = None

    def guide(self):
        return self.make_guide(self.model)


def _same(guide):
    return lambda model: guide


# ---------------------------------------------------------------- plates


def global_model():
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(DATA)):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=DATA)


def global_guide():
    m = pyro.param("m", torch.tensor(0.2))
    s = pyro.param("s", torch.tensor(0.8), constraint=constraints.positive)
    pyro.sample("loc", dist.Normal(m, s))


def uniform_bounds_guide():
    # a support that moves with the parameters: the score of log q has a nonzero mean
    low = pyro.param("low", torch.tensor(0.6))
    width = pyro.param("width", torch.tensor(0.3), constraint=constraints.positive)
    pyro.sample("loc", dist.Uniform(low, low + width))


def local_model():
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(DATA)):
        y = pyro.sample("y", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(y, 0.5), obs=DATA)


def local_guide():
    global_guide()
    ym = pyro.param("ym", torch.zeros(len(DATA)))
    ys = pyro.param("ys", torch.ones(len(DATA)), constraint=constraints.positive)
    with pyro.plate("data", len(DATA)):
        pyro.sample("y", dist.Normal(ym, ys))


def nested_model():
    scale = pyro.sample("scale", dist.Gamma(2.0, 2.0))
    with pyro.plate("groups", 2, dim=-2):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(DATA), dim=-1):
            pyro.sample("x", dist.Normal(g, scale), obs=DATA.expand(2, len(DATA)))


def nested_guide():
    a = pyro.param("a", torch.tensor(2.0), constraint=constraints.positive)
    b = pyro.param("b", torch.tensor(1.5), constraint=constraints.positive)
    pyro.sample("scale", dist.Gamma(a, b))
    gm = pyro.param("gm", torch.zeros(2, 1))
    with pyro.plate("groups", 2, dim=-2):
        pyro.sample("g", dist.Normal(gm, 1.0))


def plate_stack_program():
    loc = pyro.param("loc", torch.tensor(0.1))
    with pyro.plate_stack("stack", (3, 4)):
        with pyro.plate("inner", 2):
            pyro.sample("x", dist.Normal(loc, 1.0))


def plate_stack_model():
    with pyro.plate_stack("stack", (3, 4)):
        with pyro.plate("inner", 2):
            x = pyro.sample("x", dist.Normal(0.0, 1.0))
            pyro.sample("y", dist.Normal(x, 1.0), obs=torch.ones(2, 3, 4))


def plate_reuse_model():
    outer = pyro.plate("outer", 3, dim=-1)
    inner = pyro.plate("inner", 2, dim=-2)
    with outer:
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
    with inner:
        y = pyro.sample("y", dist.Normal(0.0, 1.0))
    with outer, inner:
        pyro.sample("z", dist.Normal(x + y, 1.0), obs=torch.zeros(2, 3))


def plate_reuse_guide():
    xm = pyro.param("xm", torch.zeros(3))
    ym = pyro.param("ym", torch.zeros(2, 1))
    with pyro.plate("outer", 3, dim=-1):
        pyro.sample("x", dist.Normal(xm, 1.0))
    with pyro.plate("inner", 2, dim=-2):
        pyro.sample("y", dist.Normal(ym, 1.0))


def sequential_model(subsample_size=None):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    for i in pyro.plate("seq", 4, subsample_size):
        pyro.sample(f"x_{i}", dist.Normal(loc, 1.0), obs=DATA[i])


def sequential_latent_model(subsample_size=None):
    for i in pyro.plate("seq", 4, subsample_size):
        z = pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))
        pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=DATA[i])


def sequential_latent_guide(subsample_size=None):
    loc = pyro.param("zm", torch.zeros(4))
    for i in pyro.plate("seq", 4, subsample_size):
        pyro.sample(f"z_{i}", dist.Normal(loc[i], 1.0))


def sequential_subsample_model():
    sequential_latent_model(2)


def sequential_subsample_guide():
    sequential_latent_guide(2)


def plate_in_sequential_model():
    for i in pyro.plate("seq", 2):
        with pyro.plate(f"data_{i}", 3):
            z = pyro.sample(f"z_{i}", dist.Normal(0.0, 1.0))
            pyro.sample(f"x_{i}", dist.Normal(z, 1.0), obs=DATA[:3])


def plate_in_sequential_guide():
    zm = pyro.param("zm", torch.zeros(2, 3))
    for i in pyro.plate("seq", 2):
        with pyro.plate(f"data_{i}", 3):
            pyro.sample(f"z_{i}", dist.Normal(zm[i], 1.0))


def nonnested_model():
    with pyro.plate("p0", 3):
        a = pyro.sample("a", dist.Normal(0.0, 1.0))
        pyro.sample("xa", dist.Normal(a, 1.0), obs=DATA[:3])
    with pyro.plate("p1", 2):
        b = pyro.sample("b", dist.Normal(0.0, 1.0))
        pyro.sample("xb", dist.Normal(b, 1.0), obs=DATA[:2])


def nonnested_guide():
    with pyro.plate("p0", 3):
        pyro.sample("a", dist.Normal(pyro.param("am", torch.zeros(3)), 1.0))
    with pyro.plate("p1", 2):
        pyro.sample("b", dist.Normal(pyro.param("bm", torch.zeros(2)), 1.0))


def block_plate_model():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    with pyro.plate("plate", 2):
        b = pyro.sample("b", dist.Normal(a, 1.0))
        with block_plate("plate"):
            c = pyro.sample("c", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(b + c, 1.0), obs=DATA[:2])


def block_plate_guide():
    pyro.sample("c", dist.Normal(pyro.param("cm", torch.tensor(0.0)), 1.0))
    with pyro.plate("plate", 2):
        pyro.sample("b", dist.Normal(pyro.param("bm", torch.zeros(2)), 1.0))
        with block_plate("plate"):
            pyro.sample("a", dist.Normal(pyro.param("am", torch.tensor(0.0)), 1.0))


def user_particle_plate_model():
    """A user's own particle plate at dim -2 and nuisance sites without
    parameters, as in Pyro's gradient tests."""
    pyro.sample("nuisance_a", dist.Normal(0.0, 1.0))
    with pyro.plate("particles", 3, dim=-2), pyro.plate("data", 2, dim=-1):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=DATA[:2])
    pyro.sample("nuisance_b", dist.Normal(2.0, 3.0))


def user_particle_plate_guide():
    pyro.sample("nuisance_b", dist.Normal(2.0, 3.0))
    loc = pyro.param("loc", torch.zeros(2))
    scale = pyro.param("scale", torch.tensor([1.0]), constraint=constraints.positive)
    with pyro.plate("particles", 3, dim=-2), pyro.plate("data", 2, dim=-1):
        pyro.sample("z", dist.Normal(loc, scale))
    pyro.sample("nuisance_a", dist.Normal(0.0, 1.0))


# ---------------------------------------------------------------- subsampling


def subsample_global_model():
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(DATA), subsample_size=3) as idx:
        y = pyro.sample("y", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(y, 0.5), obs=DATA[idx])


def subsample_global_guide():
    m = pyro.param("m", torch.tensor(1.5))
    pyro.sample("loc", dist.Normal(m, 0.8))
    ym = pyro.param("ym", -torch.ones(len(DATA)))
    with pyro.plate("data", len(DATA), subsample_size=3) as idx:
        pyro.sample("y", dist.Normal(ym[idx], 1.0))


def subsample_local_model():
    with pyro.plate("data", len(DATA), subsample_size=3) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 1.0), obs=DATA[idx])


def subsample_local_guide():
    """Per-datum params with ``event_dim`` (Pyro subsamples them), and a
    param that reaches no sample site."""
    scale = pyro.param("scale", torch.tensor([1.0]), constraint=constraints.positive)
    with pyro.plate("data", len(DATA), subsample_size=3):
        pyro.param("unused", torch.tensor(0.0), event_dim=0)
        loc = pyro.param("loc", torch.zeros(len(DATA)), event_dim=0)
        pyro.sample("z", dist.Normal(loc, scale))


def subsample_primitive_guide():
    loc = pyro.param("loc", torch.zeros(len(DATA)))
    with pyro.plate("data", len(DATA), subsample_size=3):
        pyro.sample("z", dist.Normal(pyro.subsample(loc, event_dim=0), 1.0))


def nested_subsample_model():
    with pyro.plate("outer", 5, subsample_size=3, dim=-1):
        x = pyro.sample("x", dist.Normal(0.0, 1.0))
        with pyro.plate("inner", 4, subsample_size=2, dim=-2):
            pyro.sample("y", dist.Normal(x, 1.0))


def nested_subsample_guide():
    pyro.param("p0", 0.5 * torch.ones(4, 5), event_dim=2)
    with pyro.plate("outer", 5, subsample_size=3, dim=-1):
        pyro.param("p1", 0.5 * torch.ones(5, 3), event_dim=1)
        px = pyro.param("px", torch.zeros(5), event_dim=0)
        x = pyro.sample("x", dist.Normal(px, 1.0))
        with pyro.plate("inner", 4, subsample_size=2, dim=-2):
            py = pyro.param("py", torch.zeros(4, 5), event_dim=0)
            pyro.sample("y", dist.Normal(py + x, 1.0))


# ---------------------------------------------------------------- scale, mask, factor


def scale_likelihood_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 2), poutine.scale(scale=torch.tensor([0.1, 0.9])):
        pyro.sample("y", dist.Normal(x, 1.0), obs=DATA[:2])


def scale_guide():
    pyro.sample("x", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


def mask_obs_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("data", 3), poutine.mask(mask=torch.tensor([False, True, True])):
        pyro.sample("y", dist.Normal(x, 1.0), obs=DATA[:3])


def masked_latent_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0).mask(False))
    with pyro.plate("data", 3):
        y = pyro.sample("y", dist.Normal(x, 1.0).mask(torch.tensor([True, False, True])))
        pyro.sample("obs", dist.Normal(y, 1.0), obs=DATA[:3])


def masked_latent_guide():
    loc = pyro.param("loc", torch.tensor(0.0))
    x = pyro.sample("x", dist.Normal(loc, 1.0).mask(False))
    with pyro.plate("data", 3):
        pyro.sample("y", dist.Normal(x, 1.0).mask(torch.tensor([True, False, True])))


def obs_mask_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    with pyro.plate("plate", 3):
        pyro.sample("y", dist.Normal(x, 1.0), obs=DATA[:3], obs_mask=torch.tensor([False, True, False]))


def obs_mask_guide():
    loc = pyro.param("loc", torch.zeros(()))
    scale = pyro.param("scale", torch.ones(()), constraint=constraints.positive)
    x = pyro.sample("x", dist.Normal(loc, scale))
    with pyro.plate("plate", 3), poutine.mask(mask=torch.tensor([True, False, True])):
        pyro.sample("y_unobserved", dist.Normal(x, 1.0))


def factor_model():
    x = pyro.sample("x", dist.Normal(0.0, 1.0))
    pyro.factor("f", -0.5 * (x - 1.0) ** 2)


def factor_guide(has_rsample):
    def guide():
        loc = pyro.param("loc", torch.tensor(0.0))
        x = pyro.sample("x", dist.Normal(loc, 1.0))
        pyro.factor("g", 0.1 * torch.tanh(x - loc), has_rsample=has_rsample)

    return guide


def deterministic_model():
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    shifted = pyro.deterministic("shifted", z + 1.0)
    pyro.sample("x", dist.Normal(shifted, 1.0), obs=torch.tensor(0.5))


def deterministic_guide():
    pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


def observed_only_model():
    loc = pyro.param("loc", torch.zeros(2))
    pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=torch.ones(2))


def empty_program():
    pass


# ---------------------------------------------------------------- params, reparam, distributions


def model_param_model():
    noise = pyro.param("noise", torch.tensor(1.0), constraint=constraints.positive)
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(DATA)):
        pyro.sample("x", dist.Normal(loc, noise), obs=DATA)


def unused_param_guide():
    pyro.param("unused", torch.tensor(3.0))
    global_guide()


@poutine.reparam(config={"z": LocScaleReparam(0.0)})
def loc_scale_reparam_model():
    z = pyro.sample("z", dist.Normal(1.0, 2.0))
    pyro.sample("x", dist.Normal(z, 1.0), obs=torch.tensor(0.5))


def loc_scale_reparam_guide():
    pyro.sample("z_decentered", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


@poutine.reparam(config={"z": LatentStableReparam()})
def stable_reparam_model():
    stability = pyro.sample("stability", dist.Uniform(0.0, 2.0))
    skew = pyro.sample("skew", dist.Uniform(-1.0, 1.0))
    y = pyro.sample("z", dist.Stable(stability, skew))
    pyro.sample("x", dist.Poisson(y.abs()), obs=torch.tensor(1.0))


def stable_reparam_guide():
    pyro.sample("stability", dist.Delta(pyro.param("a", torch.tensor(1.5), constraint=constraints.interval(0.5, 1.9))))
    pyro.sample("skew", dist.Delta(torch.tensor(0.0)))
    pyro.sample("z_uniform", dist.Delta(torch.tensor(0.1)))
    pyro.sample("z_exponential", dist.Delta(torch.tensor(1.0)))


def delta_model():
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    scale = pyro.sample("scale", dist.LogNormal(0.0, 1.0))
    with pyro.plate("data", len(DATA)):
        pyro.sample("x", dist.Normal(loc, scale), obs=DATA)


def delta_guide():
    pyro.sample("loc", dist.Delta(pyro.param("map_loc", torch.tensor(0.0))))
    pyro.sample("scale", dist.Delta(pyro.param("map_scale", torch.tensor(1.0), constraint=constraints.positive)))


def positive_model():
    rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
    p = pyro.sample("p", dist.Beta(2.0, 2.0))
    w = pyro.sample("w", dist.Dirichlet(torch.ones(3)))
    pyro.sample("x", dist.Poisson(rate * p * w.max(-1).values), obs=torch.tensor(2.0))  # per particle


def positive_guide():
    pos = constraints.positive
    pyro.sample("rate", dist.Gamma(pyro.param("ra", torch.tensor(2.0), constraint=pos), 1.0))
    pyro.sample("p", dist.Beta(pyro.param("pa", torch.tensor(2.0), constraint=pos), 2.0))
    pyro.sample("w", dist.Dirichlet(pyro.param("wc", torch.ones(3), constraint=pos)))


def lognormal_model():
    x = pyro.sample("x", dist.LogNormal(0.0, 1.0))
    pyro.sample("y", dist.Exponential(x), obs=torch.tensor(0.7))


def transformed_guide():
    loc = pyro.param("loc", torch.tensor(0.0))
    base = dist.Normal(loc, 1.0)
    pyro.sample("x", dist.TransformedDistribution(base, [dist.transforms.ExpTransform()]))


def mvn_model():
    x = pyro.sample("x", dist.MultivariateNormal(torch.zeros(3), torch.eye(3)))
    with pyro.plate("plate", 4):
        pyro.sample(
            "y",
            dist.MultivariateNormal(x, torch.eye(3)),
            obs=torch.full((4, 3), 0.7),
            obs_mask=torch.tensor([False, True, True, False]),
        )


def mvn_guide():
    loc = pyro.param("loc", torch.zeros(3))
    cov = pyro.param("cov", torch.eye(3), constraint=constraints.positive_definite)
    x = pyro.sample("x", dist.MultivariateNormal(loc, cov))
    with pyro.plate("plate", 4), poutine.mask(mask=torch.tensor([True, False, False, True])):
        pyro.sample("y_unobserved", dist.MultivariateNormal(x, torch.eye(3)))


def to_event_model():
    x = pyro.sample("x", dist.Normal(torch.zeros(3), 1.0).to_event(1))
    pyro.sample("y", dist.Normal(x, 1.0).to_event(1), obs=torch.ones(3))


def to_event_guide():
    loc = pyro.param("loc", torch.zeros(3))
    pyro.sample("x", dist.Normal(loc, 1.0).to_event(1))


def structured_model():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(a, 1.0))
    pyro.sample("x", dist.Normal(b, 1.0), obs=torch.tensor(0.5))


def structured_guide():
    am = pyro.param("am", torch.tensor(3.0))
    w = pyro.param("w", torch.tensor(2.0))
    a = pyro.sample("a", dist.Normal(am, 1.0))
    pyro.sample("b", dist.Normal(w * a, 1.0))


def chain_model():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(a, 1.0))
    c = pyro.sample("c", dist.Normal(b, 1.0))
    pyro.sample("x", dist.Normal(c, 1.0), obs=torch.tensor(0.5))


def structured_delta_guide():
    am = pyro.param("am", torch.tensor(0.1))
    w = pyro.param("w", torch.tensor(0.5))
    a = pyro.sample("a", dist.Normal(am, 1.0))
    b = pyro.sample("b", dist.Normal(w * a, 1.0))
    pyro.sample("c", dist.Delta(b + pyro.param("shift", torch.tensor(0.2))))


def delta_after_random_guide():
    am = pyro.param("am", torch.tensor(1.5))
    a = pyro.sample("a", dist.Normal(am, 1.0))
    pyro.sample("b", dist.Delta(a + pyro.param("shift", torch.tensor(-1.0))))


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = nn.Linear(1, 2)

    def forward(self, x):
        out = self.net(x.unsqueeze(-1))
        return out[..., 0], nn.functional.softplus(out[..., 1]) + 0.1


def amortized_model(data):
    with pyro.plate("data", len(data)):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=data)


def amortized_subsample_model(data):
    with pyro.plate("data", len(data), subsample_size=3) as idx:
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=data[idx])


def amortized_guide(subsample=False):
    """A guide with its own freshly initialized encoder (``make_guide`` runs
    after the seed is set, so every run starts from the same weights)."""

    def make(model):
        encoder = Encoder()

        def guide(data):
            pyro.module("encoder", encoder)
            with pyro.plate("data", len(data), subsample_size=3 if subsample else None) as idx:
                loc, scale = encoder(data[idx])
                pyro.sample("z", dist.Normal(loc, scale))

        return guide

    return make


# ---------------------------------------------------------------- discrete sites


def bernoulli_model():
    z = pyro.sample("z", dist.Bernoulli(0.3))
    pyro.sample("x", dist.Normal(2.0 * z, 1.0), obs=torch.tensor(1.2))


def bernoulli_guide():
    pyro.sample("z", dist.Bernoulli(pyro.param("p", torch.tensor(0.5), constraint=constraints.unit_interval)))


def mixture_model():
    with pyro.plate("data", len(DATA)):
        k = pyro.sample("k", dist.Categorical(torch.tensor([0.3, 0.7])))
        pyro.sample("x", dist.Normal(torch.tensor([-1.0, 1.5])[k], 1.0), obs=DATA)


def mixture_guide():
    probs = pyro.param("probs", torch.ones(len(DATA), 2) / 2, constraint=constraints.simplex)
    with pyro.plate("data", len(DATA)):
        pyro.sample("k", dist.Categorical(probs))


def mixed_model():
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(DATA)):
        k = pyro.sample("k", dist.Bernoulli(0.5))
        pyro.sample("x", dist.Normal(loc + k, 1.0), obs=DATA)


def mixed_guide():
    global_guide()
    p = pyro.param("kp", torch.full((len(DATA),), 0.5), constraint=constraints.unit_interval)
    with pyro.plate("data", len(DATA)):
        pyro.sample("k", dist.Bernoulli(p))


def clamp_model():
    """Sparse pathwise gradients (Pyro's has_rsample test)."""
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.sample("x", dist.Normal((z * 100).clamp(min=0, max=1), 1.0), obs=torch.tensor(0.0))


def not_rsample_guide():
    pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0).has_rsample_(False))


def clamp_guide():
    pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(0.0)), 1.0))


# ---------------------------------------------------------------- fixed parameters, unmatched sites


def gamma_poisson_model():
    # Pyro's TestFixedModelGuide: a (1,)-shaped latent outside any plate, model params
    a, b = pyro.param("alpha_p_log", torch.tensor([0.11])).exp(), pyro.param("beta_p_log", torch.tensor([0.13])).exp()
    rate = pyro.sample("lambda_latent", dist.Gamma(a, b))
    pyro.sample("obs", dist.Poisson(rate), obs=torch.tensor([2.0]))


def gamma_poisson_guide():
    a, b = pyro.param("alpha_q_log", torch.tensor([0.17])).exp(), pyro.param("beta_q_log", torch.tensor([0.19])).exp()
    pyro.sample("lambda_latent", dist.Gamma(a, b))


def _hiding(program, *names):
    return poutine.block(program, hide=list(names))


def extra_guide_sample_guide():
    # Pyro's test_extra_samples: a guide site the model does not have (a warning)
    global_guide()
    pyro.sample("extra", dist.Normal(pyro.param("e", torch.tensor(0.1)), 1.0))


def unmatched_model_latent_model():
    # a model latent the guide does not sample: drawn from the prior (a warning)
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    shift = pyro.sample("shift", dist.Normal(0.0, 0.1))
    with pyro.plate("data", len(DATA)):
        pyro.sample("x", dist.Normal(loc + shift, 1.0), obs=DATA)


# ---------------------------------------------------------------- the catalogue

NOT_REPARAM = frozenset({"not_reparameterizable"})
NOT_BERNOULLI = frozenset({"not_reparameterizable", "not_bernoulli"})
SCALED = frozenset({"poutine_scale"})

CATALOGUE = {
    "global": Pair(global_model, _same(global_guide), "mean_field"),
    "local": Pair(local_model, _same(local_guide), "mean_field"),
    "nested_plates": Pair(nested_model, _same(nested_guide), "mean_field"),
    "plate_stack": Pair(plate_stack_model, _same(plate_stack_program), "mean_field"),
    "plate_reuse": Pair(plate_reuse_model, _same(plate_reuse_guide), "mean_field"),
    "nonnested_plates": Pair(nonnested_model, _same(nonnested_guide), "mean_field"),
    "sequential_plate": Pair(sequential_latent_model, _same(sequential_latent_guide), "mean_field"),
    "sequential_plate_subsample": Pair(
        sequential_subsample_model,
        _same(sequential_subsample_guide),
        "mean_field",
        frozenset({"sequential_subsample"}),
        subsample=True,
    ),
    "plate_in_sequential": Pair(plate_in_sequential_model, _same(plate_in_sequential_guide), "mean_field"),
    "sequential_observed": Pair(sequential_model, _same(global_guide), "mean_field"),
    "block_plate": Pair(block_plate_model, _same(block_plate_guide), "mean_field"),
    "user_particle_plate": Pair(user_particle_plate_model, _same(user_particle_plate_guide), "mean_field"),
    "subsample_global": Pair(
        subsample_global_model,
        _same(subsample_global_guide),
        "mean_field",
        frozenset({"global_subsample"}),
        subsample=True,
    ),
    "subsample_local_param_event_dim": Pair(
        subsample_local_model, _same(subsample_local_guide), "mean_field", subsample=True
    ),
    "subsample_primitive": Pair(subsample_local_model, _same(subsample_primitive_guide), "mean_field", subsample=True),
    "nested_subsample": Pair(
        nested_subsample_model,
        _same(nested_subsample_guide),
        "structured",
        frozenset({"global_subsample"}),
        subsample=True,
    ),
    "scale_likelihood": Pair(scale_likelihood_model, _same(scale_guide), "mean_field", SCALED),
    "scale_both": Pair(
        poutine.scale(global_model, scale=0.3),
        lambda m: poutine.scale(global_guide, scale=0.3),
        "mean_field",
        SCALED,
    ),
    "mask_observed": Pair(mask_obs_model, _same(scale_guide), "mean_field"),
    "masked_latent": Pair(
        masked_latent_model, _same(masked_latent_guide), "structured", frozenset({"structured_masked"})
    ),
    "obs_mask": Pair(obs_mask_model, _same(obs_mask_guide), "structured", frozenset({"structured_masked"})),
    "factor_in_model": Pair(factor_model, _same(scale_guide), "mean_field"),
    "factor_in_guide_rsample": Pair(factor_model, _same(factor_guide(True)), "mean_field"),
    "factor_in_guide_score": Pair(factor_model, _same(factor_guide(False)), "mean_field", NOT_BERNOULLI),
    "deterministic": Pair(deterministic_model, _same(deterministic_guide), "mean_field"),
    "empty_guide": Pair(observed_only_model, _same(empty_program), "mean_field"),
    "empty_model_and_guide": Pair(empty_program, _same(empty_program), "mean_field"),
    "model_param": Pair(model_param_model, _same(global_guide), "mean_field"),
    "unused_guide_param": Pair(global_model, _same(unused_param_guide), "mean_field"),
    "loc_scale_reparam": Pair(loc_scale_reparam_model, _same(loc_scale_reparam_guide), "mean_field"),
    "latent_stable_reparam": Pair(stable_reparam_model, _same(stable_reparam_guide), "delta"),
    "positive_supports": Pair(positive_model, _same(positive_guide), "mean_field"),
    "uniform_bounds": Pair(global_model, _same(uniform_bounds_guide), "mean_field", frozenset({"moving_support"})),
    "transformed": Pair(lognormal_model, _same(transformed_guide), "flow"),
    "multivariate_obs_mask": Pair(mvn_model, _same(mvn_guide), "structured", frozenset({"structured_masked"})),
    "to_event": Pair(to_event_model, _same(to_event_guide), "mean_field"),
    "structured": Pair(structured_model, _same(structured_guide), "structured"),
    "delta_after_random": Pair(structured_model, _same(delta_after_random_guide), "structured"),
    "structured_delta": Pair(
        chain_model, _same(structured_delta_guide), "structured", frozenset({"structured_point_mass"})
    ),
    "delta": Pair(delta_model, _same(delta_guide), "delta"),
    "auto_normal": Pair(local_model, AutoNormal, "autoguide"),
    "auto_diagonal_normal": Pair(local_model, AutoDiagonalNormal, "autoguide"),
    "auto_multivariate_normal": Pair(nested_model, AutoMultivariateNormal, "autoguide"),
    # a LowRankMultivariateNormal stores a tensor computed from two others
    "auto_low_rank_multivariate_normal": Pair(nested_model, AutoLowRankMultivariateNormal, "autoguide"),
    "auto_delta": Pair(delta_model, AutoDelta, "delta"),
    # its random sites are parameter-free auxiliaries; point masses carry the
    # parameters, their log_density a Jacobian term (-log det of each scale)
    "auto_structured": Pair(nested_model, AutoStructured, "autoguide"),
    "auto_iaf_normal": Pair(local_model, lambda m: AutoIAFNormal(m, hidden_dim=[8], num_transforms=1), "flow"),
    "auto_normal_messenger": Pair(global_model, AutoNormalMessenger, "messenger", frozenset({"guide_messenger"})),
    "amortized": Pair(amortized_model, amortized_guide(), "amortized", args=(DATA,)),
    "amortized_subsample": Pair(
        amortized_subsample_model, amortized_guide(subsample=True), "amortized", args=(DATA,), subsample=True
    ),
    "bernoulli": Pair(bernoulli_model, _same(bernoulli_guide), "discrete", NOT_REPARAM),
    "categorical_local": Pair(mixture_model, _same(mixture_guide), "discrete", NOT_BERNOULLI),
    "discrete_and_continuous": Pair(mixed_model, _same(mixed_guide), "discrete", NOT_REPARAM),
    "has_rsample_false": Pair(clamp_model, _same(not_rsample_guide), "mean_field", NOT_BERNOULLI),
    "sparse_path_gradient": Pair(clamp_model, _same(clamp_guide), "mean_field"),
    "gamma_poisson_free": Pair(gamma_poisson_model, _same(gamma_poisson_guide), "mean_field"),
    "gamma_poisson_fixed_model": Pair(
        _hiding(gamma_poisson_model, "alpha_p_log", "beta_p_log"), _same(gamma_poisson_guide), "mean_field"
    ),
    "gamma_poisson_fixed_guide": Pair(
        gamma_poisson_model, _same(_hiding(gamma_poisson_guide, "alpha_q_log", "beta_q_log")), "mean_field"
    ),
    "gamma_poisson_fixed_both": Pair(
        _hiding(gamma_poisson_model, "alpha_p_log", "beta_p_log"),
        _same(_hiding(gamma_poisson_guide, "alpha_q_log", "beta_q_log")),
        "mean_field",
    ),
    "extra_guide_sample": Pair(
        global_model, _same(extra_guide_sample_guide), "mean_field", warning="vars in guide but not model"
    ),
    "unmatched_model_latent": Pair(
        unmatched_model_latent_model, _same(global_guide), "mean_field", warning="vars in model but not guide"
    ),
}


# ---------------------------------------------------------------- estimators


@dataclass(frozen=True)
class Estimator:
    """An estimator configuration: ``make(**elbo_kwargs) -> ELBO``."""

    make: Callable
    pathwise: bool = False  # every guide site needs a pathwise derivative
    importance_weighted: bool = False
    dreg: bool = False
    bernoulli_only: bool = False  # every guide site without a pathwise derivative must be Bernoulli
    scores_every_site: bool = False  # every random guide site gets a score
    antithetic: bool = False  # draws antithetic pairs: not the particles Trace_ELBO draws on the same seed
    ours: bool = True
    options: dict = field(default_factory=dict)


ESTIMATORS = {
    "Trace_ELBO": Estimator(Trace_ELBO, ours=False),
    "ScoreFunctionELBO": Estimator(ScoreFunctionELBO, scores_every_site=True),
    "ControlVariateELBO": Estimator(ControlVariateELBO, scores_every_site=True),
    "ControlVariateELBO(pooled)": Estimator(
        lambda **kw: ControlVariateELBO(coefficient="pooled", **kw), scores_every_site=True
    ),
    "ControlVariateELBO(parameters)": Estimator(
        lambda **kw: ControlVariateELBO(coordinates="parameters", **kw), scores_every_site=True
    ),
    "RaoBlackwellELBO": Estimator(RaoBlackwellELBO, scores_every_site=True),
    "RaoBlackwellELBO(parameters)": Estimator(
        lambda **kw: RaoBlackwellELBO(coordinates="parameters", **kw), scores_every_site=True
    ),
    "RaoBlackwellELBO(no CV)": Estimator(
        lambda **kw: RaoBlackwellELBO(control_variate=False, **kw), scores_every_site=True
    ),
    "RaoBlackwellELBO(pathwise)": Estimator(lambda **kw: RaoBlackwellELBO(pathwise=True, **kw)),
    "ControlVariateELBO(pathwise)": Estimator(lambda **kw: ControlVariateELBO(pathwise=True, **kw)),
    "ReinforceLeaveOneOutELBO": Estimator(ReinforceLeaveOneOutELBO, scores_every_site=True),
    "ReinforceLeaveOneOutELBO(pathwise)": Estimator(lambda **kw: ReinforceLeaveOneOutELBO(pathwise=True, **kw)),
    "DisARMELBO": Estimator(DisARMELBO, bernoulli_only=True, antithetic=True),
    # its particles are pairs: the smallest even number at least the others'
    "AutoELBO": Estimator(
        lambda num_particles, **kw: AutoELBO(num_particles=num_particles + num_particles % 2, **kw), antithetic=True
    ),
    "StickingTheLandingELBO": Estimator(StickingTheLandingELBO, pathwise=True),
    "ImportanceWeightedELBO": Estimator(ImportanceWeightedELBO, pathwise=True, importance_weighted=True),
    "ImportanceWeightedELBO(stl)": Estimator(
        lambda **kw: ImportanceWeightedELBO(gradient="stl", **kw), pathwise=True, importance_weighted=True
    ),
    "ImportanceWeightedELBO(dreg)": Estimator(
        lambda **kw: ImportanceWeightedELBO(gradient="dreg", **kw),
        pathwise=True,
        importance_weighted=True,
        dreg=True,
    ),
    "ImportanceWeightedELBO(vimco)": Estimator(
        lambda **kw: ImportanceWeightedELBO(gradient="vimco", **kw), importance_weighted=True
    ),
    "ImportanceWeightedELBO(disarm)": Estimator(
        lambda **kw: ImportanceWeightedELBO(gradient="disarm", **kw), importance_weighted=True, bernoulli_only=True
    ),
}


REFUSALS = {
    # tag -> (the refusal's message pattern, a short reason for the table)
    "guide_messenger": ("GuideMessenger", "GuideMessenger guides run the model themselves"),
    "not_reparameterizable": (
        "site '.*' has no pathwise derivative",
        "needs a pathwise derivative at every guide site",
    ),
    "sequential_subsample": ("subsampled sequential plates: site '.*'", "subsampled sequential plates"),
    "global_subsample": (
        "site '.*' lies outside the subsampled plate",
        "a site outside the subsampled plate (the bound of shared latents has no minibatch estimate)",
    ),
    "structured_point_mass": ("point-mass site '.*'", "DReG: a point mass in a structured guide"),
    "structured_masked": ("site '.*' is scaled or masked", "DReG: a scaled or masked site in a structured guide"),
    "moving_support": (
        "support of guide site '.*' moves",
        "a site whose support moves with the parameters (its score has a nonzero mean)",
    ),
    "not_bernoulli": (
        "site '.*' is not Bernoulli",
        "DisARM: a guide site that is neither Bernoulli nor reparameterizable",
    ),
}


def refusal_tag(pair: Pair, estimator: Estimator):
    """The tag of ``pair`` for which ``estimator`` must refuse it, or ``None``
    when it must work."""
    if not estimator.ours:
        return None
    if "guide_messenger" in pair.tags:
        return "guide_messenger"
    if estimator.pathwise and "not_reparameterizable" in pair.tags:
        return "not_reparameterizable"
    if estimator.bernoulli_only and "not_bernoulli" in pair.tags:
        return "not_bernoulli"
    if estimator.scores_every_site and "moving_support" in pair.tags:
        return "moving_support"
    if estimator.importance_weighted and "sequential_subsample" in pair.tags:
        return "sequential_subsample"
    if estimator.importance_weighted and "global_subsample" in pair.tags:
        return "global_subsample"
    if estimator.dreg and "structured_point_mass" in pair.tags:
        return "structured_point_mass"
    if estimator.dreg and "structured_masked" in pair.tags:
        return "structured_masked"
    return None


def expected_refusal(pair: Pair, estimator: Estimator):
    """The message an estimator must refuse ``pair`` with (a regex naming a
    site or the guide), or ``None`` when it must work."""
    tag = refusal_tag(pair, estimator)
    return None if tag is None else REFUSALS[tag][0]


NUM_PARTICLES = 3


def elbo_for(estimator, vectorize, pair, **kwargs):
    """The ELBO of configuration ``estimator`` for ``pair``."""
    options = dict(num_particles=NUM_PARTICLES, vectorize_particles=vectorize)
    if pair.max_plate_nesting is not None:
        options["max_plate_nesting"] = pair.max_plate_nesting
    options.update(kwargs)
    return ESTIMATORS[estimator].make(**options)


def take_grads(names=None):
    """The parameters' ``.grad`` by name (those with one, among ``names`` if
    given), all cleared. Pyro's ELBOs also fill the ``.grad`` of params that
    ``poutine.block`` hides from SVI, which never steps them: ``names`` leaves
    those out."""
    grads = {}
    for name, param in pyro.get_param_store().named_parameters():
        if param.grad is not None and (names is None or name in names):
            grads[name] = param.grad.clone()
        param.grad = None
    return grads


@functools.cache
def outcome(pair_name, estimator, vectorize):
    """Runs one pair with one estimator: an SVI step, then ``loss``,
    ``loss_and_grads`` and ``differentiable_loss`` on the same seed. Returns
    ``("refused", message)`` or ``("ok", values, grads, grads_again)``."""
    pair = CATALOGUE[pair_name]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    model, guide = pair.model, pair.guide()
    elbo = elbo_for(estimator, vectorize, pair)
    try:
        SVI(model, guide, Adam({"lr": 1e-6}), elbo).step(*pair.args)
    except ValueError as error:
        return ("refused", str(error))
    take_grads()
    pyro.set_rng_seed(3)
    loss = elbo.loss(model, guide, *pair.args)
    pyro.set_rng_seed(3)
    with poutine.trace(param_only=True) as visible:  # what SVI steps: not the params poutine.block hides
        loss_and_grads = elbo.loss_and_grads(model, guide, *pair.args)
    grads = take_grads(visible.trace.nodes)
    pyro.set_rng_seed(3)
    differentiable = torch.as_tensor(elbo.differentiable_loss(model, guide, *pair.args))
    if differentiable.requires_grad:
        differentiable.backward()
    return ("ok", (loss, loss_and_grads, differentiable.item()), grads, take_grads(visible.trace.nodes))
