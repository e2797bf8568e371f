"""Guide sites whose support moves with the parameters (a Uniform with
learned bounds): the score :math:`\\nabla \\log q` at a fixed sample then has a
nonzero mean, :math:`E[\\partial_{\\mathrm{high}} \\log q] = -1/(\\mathrm{high} -
\\mathrm{low})`, so the path estimators keep such a site's whole density and
the score-function estimators refuse it by name."""

import functools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO

from pyro_vi import (
    ControlVariateELBO,
    DisARMELBO,
    ImportanceWeightedELBO,
    RaoBlackwellELBO,
    ReinforceLeaveOneOutELBO,
    ScoreFunctionELBO,
    StickingTheLandingELBO,
)
from pyro_vi.diagnostics import gradient_statistics
from pyro_vi.particles.handlers import support_moves
from tests.helpers import losses_and_grads_on_the_same_draws

DATA = torch.tensor([0.3, 1.1, -0.4])
LOW, WIDTH, LOC, SCALE = -0.2, 1.5, 0.4, 0.6  # the guide's parameters (constrained)


def model(x):
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(a + b, 1.0), obs=x)


def guide(x, reparameterized=True):
    low = pyro.param("low", torch.tensor(LOW))
    width = pyro.param("width", torch.tensor(WIDTH), constraint=constraints.positive)
    uniform = dist.Uniform(low, low + width)
    pyro.sample("a", uniform if reparameterized else uniform.has_rsample_(False))
    scale = pyro.param("scale", torch.tensor(SCALE), constraint=constraints.positive)
    pyro.sample("b", dist.Normal(pyro.param("loc", torch.tensor(LOC)), scale))


def exact_loss_gradient():
    """The gradient of the negative ELBO in the unconstrained parameters,
    from its closed form: with :math:`a \\sim U(l, l + w)`,
    :math:`E[a] = l + w/2`, :math:`E[a^2] = E[a]^2 + w^2/12`, and entropy
    :math:`\\log w + \\log \\sigma + \\frac{1}{2}\\log(2\\pi e)`."""
    low, log_width, loc, log_scale = (
        torch.tensor(v, dtype=torch.float64, requires_grad=True)
        for v in (LOW, torch.tensor(WIDTH).log().item(), LOC, torch.tensor(SCALE).log().item())
    )
    width, scale = log_width.exp(), log_scale.exp()
    mean_a, mean_b = low + width / 2, loc
    square_a, square_b = mean_a**2 + width**2 / 12, loc**2 + scale**2
    x = DATA.double()
    mean_square_residual = x**2 - 2 * x * (mean_a + mean_b) + square_a + 2 * mean_a * mean_b + square_b
    log_p = -(square_a + square_b + mean_square_residual.sum()) / 2  # up to constants
    elbo = log_p + log_width + log_scale
    grads = torch.autograd.grad(-elbo, (low, log_width, loc, log_scale))
    return dict(zip(("low", "width", "loc", "scale"), (float(g) for g in grads)))


def test_support_moves_sees_learned_bounds_through_wrappers():
    learned = torch.tensor(1.0, requires_grad=True)
    assert support_moves(dist.Uniform(learned - 2, learned))
    assert support_moves(dist.Pareto(learned, 2.0))
    assert support_moves(dist.Uniform(learned - 2, learned).expand([3]).mask(False).to_event(1))
    exp_of_uniform = dist.TransformedDistribution(dist.Uniform(-learned, learned), [dist.transforms.ExpTransform()])
    assert support_moves(exp_of_uniform)
    assert not support_moves(dist.Uniform(-1.0, 1.0))
    assert not support_moves(dist.Uniform(learned.detach() - 2, learned.detach()))
    assert not support_moves(dist.Gamma(learned, learned))
    assert not support_moves(dist.Normal(learned, 1.0).to_event(0))


# The three places a site's density is stopped: at stopped parameters, in
# the pathwise surrogate (also ControlVariateELBO's and AutoELBO's), by DReG.
PATH_ESTIMATORS = {
    "stl": StickingTheLandingELBO,
    "rb-pathwise": functools.partial(RaoBlackwellELBO, pathwise=True),
    "disarm": DisARMELBO,
    "iw-stl": functools.partial(ImportanceWeightedELBO, gradient="stl"),
    "dreg": functools.partial(ImportanceWeightedELBO, gradient="dreg"),
}


@pytest.mark.parametrize("vectorize", [True, False], ids=["vec", "seq"])
@pytest.mark.parametrize("estimator", PATH_ESTIMATORS.values(), ids=PATH_ESTIMATORS.keys())
def test_path_estimators_are_unbiased_with_a_moving_support(estimator, vectorize):
    """Against the exact gradient. The Uniform's score term is
    :math:`\\partial \\log q / \\partial \\log w = -1` at every sample: dropping it,
    as for a site with a fixed support, biased the width's gradient by 1. The
    Normal site keeps the sticking-the-landing form."""
    if estimator in (PATH_ESTIMATORS["iw-stl"], PATH_ESTIMATORS["dreg"]):
        num_particles, num_draws = 1, 1000  # K = 1: the bound is the ELBO
    else:
        num_particles, num_draws = (100, 20) if vectorize else (10, 100)
    elbo = estimator(num_particles=num_particles, vectorize_particles=vectorize, max_plate_nesting=1)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    found = gradient_statistics(elbo, model, guide, DATA, num_draws=num_draws)
    for name, exact in exact_loss_gradient().items():
        mean, error = found[name].mean.item(), found[name].standard_error.item()
        assert abs(mean - exact) < 4.5 * error, (name, mean, exact, error)
    # Dropping the score term of log(width), whose mean is -1, biased the width's gradient by 1.
    assert found["width"].standard_error.item() < 0.1


@pytest.mark.parametrize("vectorize", [True, False], ids=["vec", "seq"])
@pytest.mark.parametrize("gradient", ["stl", "dreg"])
def test_a_moving_support_alone_gets_the_reparameterized_gradient(gradient, vectorize):
    """With a Uniform as the only random site, nothing is left to rewrite:
    on the same draws the importance-weighted path estimators equal IWAE's."""

    def uniform_guide(x):
        low = pyro.param("low", torch.tensor(LOW))
        width = pyro.param("width", torch.tensor(WIDTH), constraint=constraints.positive)
        pyro.sample("a", dist.Uniform(low, low + width))
        pyro.sample("b", dist.Delta(pyro.param("loc", torch.tensor(LOC))))

    kw = dict(num_particles=4, vectorize_particles=vectorize, max_plate_nesting=1)
    results = []
    for elbo in (ImportanceWeightedELBO(gradient=gradient, **kw), ImportanceWeightedELBO(gradient="reparam", **kw)):
        pyro.clear_param_store()
        results.append(losses_and_grads_on_the_same_draws([elbo], model, uniform_guide, DATA, seed=1)[0])
    (loss, grads), (ref_loss, ref_grads) = results
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for name in ("low", "width", "loc"):
        assert ref_grads[name].abs().sum() > 0, name
        assert torch.allclose(grads[name], ref_grads[name], rtol=1e-5, atol=1e-6), name


SCORE_ESTIMATORS = {
    "sf": ScoreFunctionELBO,
    "cv": ControlVariateELBO,
    "rb": RaoBlackwellELBO,
    "rloo": ReinforceLeaveOneOutELBO,
}


@pytest.mark.parametrize("estimator", SCORE_ESTIMATORS.values(), ids=SCORE_ESTIMATORS.keys())
def test_a_score_of_a_moving_support_is_refused_by_name(estimator):
    elbo = estimator(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="support of guide site 'a' moves with its parameters.*pathwise=True"):
        elbo.differentiable_loss(model, guide, DATA)
    assert Trace_ELBO().differentiable_loss(model, guide, DATA).requires_grad  # Pyro takes it pathwise


def test_loss_takes_no_gradient_and_gives_the_objectives_value():
    """``loss`` runs under ``torch.no_grad``, where no bound carries gradient:
    the one refusal about the gradient alone is not made there, and its value
    estimates the ELBO as Trace_ELBO's does."""

    def computed_bounds_guide(x):  # no bound is a leaf: under no_grad nothing shows that they move
        center = pyro.param("center", torch.tensor(LOW + WIDTH / 2))
        half = pyro.param("half", torch.tensor(WIDTH / 2), constraint=constraints.positive)
        pyro.sample("a", dist.Uniform(center - half, center + half))
        scale = pyro.param("scale", torch.tensor(SCALE), constraint=constraints.positive)
        pyro.sample("b", dist.Normal(pyro.param("loc", torch.tensor(LOC)), scale))

    pyro.clear_param_store()
    kw = dict(num_particles=5000, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(0)
    value = ScoreFunctionELBO(**kw).loss(model, computed_bounds_guide, DATA)
    pyro.set_rng_seed(0)
    assert value == pytest.approx(Trace_ELBO(**kw).loss(model, computed_bounds_guide, DATA), rel=1e-6)
    with pytest.raises(ValueError, match="support of guide site 'a' moves"):
        ScoreFunctionELBO(**kw).differentiable_loss(model, computed_bounds_guide, DATA)


def test_a_moving_support_without_rsample_is_refused_by_every_score_estimator():
    elbo = RaoBlackwellELBO(num_particles=4, pathwise=True, vectorize_particles=True, max_plate_nesting=1)
    pyro.clear_param_store()
    with pytest.raises(ValueError, match="site 'a' moves.*does not depend on its parameters"):
        elbo.differentiable_loss(model, functools.partial(guide, reparameterized=False), DATA)
