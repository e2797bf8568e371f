"""The discrete-latent estimators: REINFORCE leave-one-out, DisARM, VIMCO,
local DisARM and the pathwise option, against exact gradients on a Bernoulli
model small enough to enumerate; DisARM's antithetic pairs; the variance
orderings the issue asks for; refusals by name."""

import dataclasses
import functools
import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import TraceGraph_ELBO

from pyro_vi import (
    ControlVariateELBO,
    DisARMELBO,
    ImportanceWeightedELBO,
    RaoBlackwellELBO,
    ReinforceLeaveOneOutELBO,
    StickingTheLandingELBO,
)
from pyro_vi.diagnostics import gradient_statistics
from pyro_vi.particles import Sampler
from tests.refusals import assert_each_refused

# Two data points, each with two binary latents: 4 configurations per point.
W = torch.tensor([1.5, -2.0])
X = torch.tensor([1.1, -0.6])
PRIOR = torch.tensor([0.3, 0.6])
THETA = torch.tensor([[0.4, -0.3], [1.2, -1.5]])
CONFIGS = torch.tensor(list(itertools.product([0.0, 1.0], repeat=2)))


def model():
    with pyro.plate("data", 2):
        z = pyro.sample("z", dist.Bernoulli(PRIOR).to_event(1))
        pyro.sample("x", dist.Normal((W * z).sum(-1), 0.8), obs=X)


def guide():
    theta = pyro.param("theta", THETA.clone())
    with pyro.plate("data", 2):
        pyro.sample("z", dist.Bernoulli(logits=theta).to_event(1))


def probs_guide():
    p = pyro.param("p", torch.sigmoid(THETA), constraint=constraints.unit_interval)
    with pyro.plate("data", 2):
        pyro.sample("z", dist.Bernoulli(probs=p).to_event(1))


def exact_gradient(k=1):
    """The exact gradient of the loss (minus the bound L_K, per data point,
    summed) with respect to the logits, by enumerating all K-tuples."""
    theta = THETA.clone().requires_grad_()
    total = 0.0
    for n in range(2):
        q = dist.Bernoulli(logits=theta[n]).to_event(1)
        log_w = (
            dist.Bernoulli(PRIOR).to_event(1).log_prob(CONFIGS)
            + dist.Normal((W * CONFIGS).sum(-1), 0.8).log_prob(X[n])
            - q.log_prob(CONFIGS)
        )
        log_q = q.log_prob(CONFIGS)
        for tuple_ in itertools.product(range(len(CONFIGS)), repeat=k):
            index = list(tuple_)
            total = total + log_q[index].sum().exp() * (torch.logsumexp(log_w[index], 0) - math.log(k))
    return -torch.autograd.grad(total, theta)[0]


def statistics(elbo, num_draws, seed=1, guide_fn=guide, name="theta"):
    pyro.clear_param_store()
    guide_fn()
    pyro.set_rng_seed(seed)
    return gradient_statistics(elbo, model, guide_fn, num_draws=num_draws)[name]


def agrees_with(stats, exact):
    """``(agrees, powerful)``: the mean within 4.5 standard errors of the
    exact gradient everywhere, and 4.5 standard errors below half the
    largest exact entry (a gradient off by half would be seen)."""
    se = stats.standard_error
    agrees = bool(((stats.mean - exact).abs() <= 4.5 * se + 1e-6).all())
    largest = exact.abs().argmax()
    return agrees, bool(4.5 * se.flatten()[largest] < 0.5 * exact.abs().flatten()[largest])


VEC = dict(vectorize_particles=True, max_plate_nesting=1)
UNBIASED = {
    "ReinforceLeaveOneOutELBO": (lambda: ReinforceLeaveOneOutELBO(num_particles=4, **VEC), 1),
    "DisARMELBO": (lambda: DisARMELBO(num_particles=2, **VEC), 1),
    "RaoBlackwellELBO(pathwise)": (lambda: RaoBlackwellELBO(num_particles=4, pathwise=True, **VEC), 1),
    "ControlVariateELBO(pathwise)": (lambda: ControlVariateELBO(num_particles=4, pathwise=True, **VEC), 1),
    "ImportanceWeightedELBO(vimco)": (lambda: ImportanceWeightedELBO(3, gradient="vimco", **VEC), 3),
    "ImportanceWeightedELBO(disarm)": (lambda: ImportanceWeightedELBO(3, gradient="disarm", **VEC), 3),
}


@pytest.mark.parametrize("guide_fn", [guide, probs_guide], ids=["logits", "probs"])
@pytest.mark.parametrize("make", [ControlVariateELBO, RaoBlackwellELBO], ids=["ControlVariateELBO", "RaoBlackwellELBO"])
def test_sequential_particles_take_each_score_once(make, guide_fn):
    """With one trace per particle, each score is taken at the particle's own
    distribution, whose log_prob caches the logits of a probs Bernoulli and
    whose sample caches the probs of a logits one: the score is taken with
    respect to the parameter alone, not through the cache as well (which
    counted it twice). Against the exact gradient; the loss (no grad mode) runs."""
    elbo = make(num_particles=4, vectorize_particles=False, max_plate_nesting=1)
    name = "theta" if guide_fn is guide else "p"  # p's unconstrained value is the logits
    agrees, powerful = agrees_with(statistics(elbo, 300, guide_fn=guide_fn, name=name), exact_gradient())
    assert agrees and powerful
    assert math.isfinite(make(num_particles=4, vectorize_particles=True, max_plate_nesting=1).loss(model, guide_fn))


@pytest.mark.parametrize("name", sorted(UNBIASED))
def test_mean_gradient_is_the_exact_gradient(name):
    make, k = UNBIASED[name]
    agrees, powerful = agrees_with(statistics(make(), 400), exact_gradient(k))
    assert powerful
    assert agrees


def test_the_exact_comparison_detects_a_biased_estimator():
    """Power check: the same comparison rejects VIMCO's gradient taken
    against the ELBO, and an estimator of the wrong bound (L_1 instead of L_3)."""
    agrees, powerful = agrees_with(
        statistics(ImportanceWeightedELBO(3, gradient="vimco", **VEC), 400), exact_gradient(1)
    )
    assert powerful and not agrees


def test_disarm_with_probs_and_sequential_particles():
    """A ``probs=`` Bernoulli gets the gradient through its logits; sequential
    particles pair consecutive runs and give the same draws and gradient as
    vectorized ones."""
    exact = exact_gradient(1)
    # The unconstrained value of a unit_interval param is its logit: the same gradient.
    stats = statistics(DisARMELBO(num_particles=2, **VEC), 400, guide_fn=probs_guide, name="p")
    agrees, powerful = agrees_with(stats, exact)
    assert agrees and powerful
    grads = []
    for vectorize in (True, False):
        pyro.clear_param_store()
        pyro.set_rng_seed(3)
        DisARMELBO(num_particles=3, vectorize_particles=vectorize, max_plate_nesting=1).loss_and_grads(model, guide)
        grads.append(pyro.param("theta").unconstrained().grad.clone())
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


@pytest.mark.parametrize("vectorize", [True, False])
def test_antithetic_pairs(vectorize):
    """Each pair shares one uniform: where sigma(theta) > 1/2 the two draws
    are never both 0, where it is < 1/2 never both 1; the marginals are q's."""
    logits = torch.tensor([2.0, -1.0, 0.3])

    def coin_model():
        pyro.sample("c", dist.Bernoulli(0.5 * torch.ones(3)).to_event(1))

    def coin_guide():
        pyro.sample("c", dist.Bernoulli(logits=pyro.param("logits", logits)).to_event(1))

    pyro.set_rng_seed(0)
    elbo = DisARMELBO(num_particles=200 if vectorize else 20, vectorize_particles=vectorize, max_plate_nesting=0)
    terms = elbo.particles(coin_model, coin_guide)
    bernoulli = terms.bernoulli["c"]
    assert bernoulli.paired.all() and terms.num_particles == (400 if vectorize else 40)
    first, second = bernoulli.value[0::2], bernoulli.value[1::2]
    assert not ((first == 0) & (second == 0))[:, 0].any()  # sigma(2) > 1/2
    assert not ((first == 1) & (second == 1))[:, 1].any()  # sigma(-1) < 1/2
    if vectorize:
        mean = bernoulli.value.mean(0)
        assert torch.allclose(mean, torch.sigmoid(logits), atol=0.08)


def test_disarm_value_is_the_mean_log_weight_of_its_particles():
    pyro.set_rng_seed(0)
    elbo = DisARMELBO(num_particles=3, **VEC)
    terms = elbo.particles(model, guide)
    pyro.set_rng_seed(0)
    assert elbo.loss(model, guide) == pytest.approx(-float(terms.log_weights().detach().mean()), rel=1e-6)
    assert terms.num_particles == 6 and elbo.num_pairs == 3


def test_disarm_variance_is_below_leave_one_out_at_the_same_evaluations():
    """With two model evaluations per step (one pair against two samples),
    DisARM's gradient variance on the enumerable model is below REINFORCE
    leave-one-out's: 0.63 of it (4000 draws each). It does not stay so:
    with 4 evaluations the ratio is 1.03 and with 8 it is 1.25, since
    averaging pairs divides DisARM's variance by the number of pairs while
    leave-one-out's baseline also improves with more samples."""
    disarm = statistics(DisARMELBO(num_particles=1, **VEC), 800).variance.sum()
    loo = statistics(ReinforceLeaveOneOutELBO(num_particles=2, **VEC), 800).variance.sum()
    assert disarm < 0.8 * loo, float(disarm / loo)


def test_leave_one_out_is_the_hand_formula_on_one_draw():
    """(1/(S-1)) sum_s h_s (L_s - mean L), with L_s the per-point Markov
    blanket signal (here the per-point log-weight), replayed by hand."""
    elbo = ReinforceLeaveOneOutELBO(num_particles=5, **VEC)
    pyro.set_rng_seed(4)  # the estimator's draw, with the Bernoulli values recorded too
    sampler = Sampler(5, True, dataclasses.replace(elbo.needs, bernoulli=True), "test")
    z = sampler.draw(model, guide, (), {}, plate_dims=1).bernoulli["z"].value.detach()
    pyro.set_rng_seed(4)
    elbo.loss_and_grads(model, guide)
    actual = pyro.param("theta").unconstrained().grad
    theta = THETA.clone().requires_grad_()
    log_q = dist.Bernoulli(logits=theta).to_event(1).log_prob(z)  # (S, N)
    log_w = (
        dist.Bernoulli(PRIOR).to_event(1).log_prob(z) + dist.Normal((W * z).sum(-1), 0.8).log_prob(X) - log_q.detach()
    )
    signal = log_w - log_w.mean(0)
    expected = -torch.autograd.grad((log_q * signal).sum() / 4, theta)[0]
    assert torch.allclose(actual, expected, atol=1e-5)


# ---------------------------------------------------------------- the pathwise option


def continuous_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    scale = pyro.sample("scale", dist.Gamma(2.0, 2.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(loc, scale), obs=data)


def continuous_guide(data):
    pyro.sample(
        "loc",
        dist.Normal(
            pyro.param("m", torch.tensor(0.3)), pyro.param("s", torch.tensor(0.5), constraint=constraints.positive)
        ),
    )
    pyro.sample(
        "scale",
        dist.Gamma(
            pyro.param("a", torch.tensor(3.0), constraint=constraints.positive),
            pyro.param("b", torch.tensor(2.0), constraint=constraints.positive),
        ),
    )


DATA = torch.tensor([0.3, -1.2, 2.1, 0.7, 1.5, -0.4])


@pytest.mark.parametrize(
    "make",
    [
        lambda: RaoBlackwellELBO(num_particles=4, pathwise=True, **VEC),
        lambda: ControlVariateELBO(num_particles=4, pathwise=True, **VEC),
        lambda: ReinforceLeaveOneOutELBO(num_particles=4, pathwise=True, **VEC),
    ],
    ids=["RaoBlackwellELBO", "ControlVariateELBO", "ReinforceLeaveOneOutELBO"],
)
def test_pathwise_on_a_continuous_guide_is_sticking_the_landing(make):
    """No site without a pathwise derivative: the pathwise option gives
    exactly StickingTheLandingELBO's gradient on the same samples."""
    grads = []
    for elbo in (StickingTheLandingELBO(num_particles=4, **VEC), make()):
        pyro.clear_param_store()
        pyro.set_rng_seed(2)
        elbo.loss_and_grads(continuous_model, continuous_guide, DATA)
        grads.append({n: p.unconstrained().grad.clone() for n, p in pyro.get_param_store().items()})
    for name in grads[0]:
        assert grads[0][name].abs().sum() > 0
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_pathwise_on_a_discrete_guide_changes_nothing():
    grads = []
    for elbo in (RaoBlackwellELBO(num_particles=4, **VEC), RaoBlackwellELBO(num_particles=4, pathwise=True, **VEC)):
        pyro.clear_param_store()
        pyro.set_rng_seed(2)
        elbo.loss_and_grads(model, guide)
        grads.append(pyro.param("theta").unconstrained().grad.clone())
    assert torch.equal(grads[0], grads[1])


def gmm_setup(num_data=100, seed=0):
    from guides.gmm import mean_field_guide
    from models.gmm import generate_data
    from models.gmm import model as gmm_model

    pi = torch.tensor([0.3, 0.4, 0.3])
    data, _ = generate_data(num_data, pi, [-4.0, 0.0, 4.0], [1.0, 4.0, 0.5], seed=seed)
    return gmm_model, mean_field_guide, (data.float(), pi.float())


def test_pathwise_variance_on_the_gmm_continuous_sites_is_below_the_score_function():
    """RaoBlackwellELBO's continuous GMM parameters (component means,
    precisions): the pathwise option's gradient variance is far below the
    Rao-Blackwellized, controlled score function's (measured at the initial
    q, N = 100, 10 particles: 112 times lower in total, 32 to 144 times per
    parameter; with N = 300, 70 to 660 times)."""
    gmm_model, gmm_guide, args = gmm_setup()
    names = ["q_mu_loc", "q_mu_precision", "q_tau_concentration", "q_tau_rate"]
    totals = []
    for pathwise in (False, True):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        elbo = RaoBlackwellELBO(num_particles=10, pathwise=pathwise, vectorize_particles=True, max_plate_nesting=1)
        stats = gradient_statistics(elbo, gmm_model, gmm_guide, *args, num_draws=30, params=names)
        totals.append(sum(float(s.variance.sum()) for s in stats.values()))
    assert totals[1] < totals[0] / 30, totals


def test_pathwise_variance_on_the_gmm_is_below_tracegraph_with_a_baseline():
    """RaoBlackwellELBO(pathwise=True) against Pyro's TraceGraph_ELBO,
    pathwise for the components with a decaying-average baseline for z
    (warmed up over 40 calls): the total gradient variance of the
    components' parameters is lower (measured at the initial q, N = 40, 4
    particles: 16.2 against 42.1, from the sticking-the-landing form), and
    that of z's probabilities comparable (0.57 against 0.50). The study
    (experiments/gmm_cavi.py) shows what this does to the ELBO reached."""
    from experiments._mixtures import DiscreteSiteBaselines

    gmm_model, gmm_guide, args = gmm_setup(num_data=40)
    kw = dict(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    names = ["q_mu_loc", "q_mu_precision", "q_tau_concentration", "q_tau_rate"]
    totals = []
    for elbo, run_guide in (
        (RaoBlackwellELBO(pathwise=True, **kw), gmm_guide),
        (TraceGraph_ELBO(**kw), DiscreteSiteBaselines()(gmm_guide)),
    ):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        for _ in range(40):  # TraceGraph_ELBO's baseline averages
            elbo.loss_and_grads(gmm_model, run_guide, *args)
        stats = gradient_statistics(elbo, gmm_model, run_guide, *args, num_draws=30, params=names)
        totals.append(sum(float(s.variance.sum()) for s in stats.values()))
    assert totals[0] < totals[1] / 1.5, totals


# ---------------------------------------------------------------- refusals and arguments


def test_disarm_refuses_a_categorical_site_by_name():
    def cat_model():
        with pyro.plate("data", 2):
            pyro.sample("k", dist.Categorical(torch.ones(3) / 3))

    def cat_guide():
        probs = pyro.param("probs", torch.ones(2, 3) / 3, constraint=constraints.simplex)
        with pyro.plate("data", 2):
            pyro.sample("k", dist.Categorical(probs))

    for elbo in (DisARMELBO(**VEC), ImportanceWeightedELBO(2, gradient="disarm", **VEC)):
        with pytest.raises(ValueError, match="site 'k' is not Bernoulli"):
            elbo.loss(cat_model, cat_guide)


# ---------------------------------------------------------------- sequentially dependent Bernoulli sites

SEQUENTIAL_X = torch.tensor(1.2, dtype=torch.float64)
SEQUENTIAL_INIT = {"theta1": 0.3, "m": -0.2, "c": 0.9, "s": 0.8, "theta2": -0.4, "k": 0.7}


def sequential_model():
    b1 = pyro.sample("b1", dist.Bernoulli(torch.tensor(0.4, dtype=torch.float64)))
    z = pyro.sample("z", dist.Normal(1.5 * b1, 1.0))
    b2 = pyro.sample("b2", dist.Bernoulli(logits=z))
    pyro.sample("x", dist.Normal(b1 + b2 + 0.5 * z, 0.7), obs=SEQUENTIAL_X)


def sequential_guide():
    """b1, then z drawn given b1, then b2 drawn given z: b2's distribution
    depends on both earlier samples."""
    p = {
        name: pyro.param(name, torch.tensor(value, dtype=torch.float64), constraint=constraints.positive)
        if name == "s"
        else pyro.param(name, torch.tensor(value, dtype=torch.float64))
        for name, value in SEQUENTIAL_INIT.items()
    }
    b1 = pyro.sample("b1", dist.Bernoulli(logits=p["theta1"]))
    z = pyro.sample("z", dist.Normal(p["m"] + p["c"] * b1, p["s"]))
    pyro.sample("b2", dist.Bernoulli(logits=p["theta2"] + p["k"] * z))


def sequential_exact_gradient():
    """The exact gradient of the loss (-ELBO) in Pyro's unconstrained
    coordinates: b1 and b2 enumerated, z integrated by 80-point Gauss-Hermite
    quadrature (exact to rounding for this smooth integrand)."""
    nodes, weights = np.polynomial.hermite.hermgauss(80)
    nodes, weights = torch.tensor(nodes), torch.tensor(weights) / math.sqrt(math.pi)
    raw = {
        k: torch.tensor(v if k != "s" else math.log(v), dtype=torch.float64, requires_grad=True)
        for k, v in SEQUENTIAL_INIT.items()
    }
    scale = raw["s"].exp()
    elbo = 0.0
    for b1 in (0.0, 1.0):
        q1 = dist.Bernoulli(logits=raw["theta1"]).log_prob(torch.tensor(b1, dtype=torch.float64))
        loc = raw["m"] + raw["c"] * b1
        z = loc + scale * math.sqrt(2) * nodes  # quadrature nodes of N(loc, scale)
        for b2 in (0.0, 1.0):
            b2_ = torch.full_like(z, b2)
            q2 = dist.Bernoulli(logits=raw["theta2"] + raw["k"] * z).log_prob(b2_)
            log_p = (
                dist.Bernoulli(torch.tensor(0.4, dtype=torch.float64)).log_prob(torch.tensor(b1, dtype=torch.float64))
                + dist.Normal(1.5 * b1, 1.0).log_prob(z)
                + dist.Bernoulli(logits=z).log_prob(b2_)
                + dist.Normal(b1 + b2_ + 0.5 * z, 0.7).log_prob(SEQUENTIAL_X)
            )
            log_q = q1 + dist.Normal(loc, scale).log_prob(z) + q2
            elbo = elbo + q1.exp() * (weights * q2.exp() * (log_p - log_q)).sum()
    grads = torch.autograd.grad(-elbo, list(raw.values()))
    return dict(zip(raw, grads))


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "sequential"])
def test_disarm_on_sequentially_dependent_bernoullis_is_unbiased(vectorize):
    """b2 ~ Bernoulli(theta2 + k z), z ~ N(m + c b1, s), b1 ~ Bernoulli(theta1):
    the pair shares z where b1 agreed and draws b2 antithetically given it;
    where b1 differed, b2 gets the score function. The mean gradient of
    every parameter agrees with the exact one within 4.5 standard errors,
    and the comparison would see b2's gradient off by half."""
    exact = sequential_exact_gradient()
    elbo = DisARMELBO(num_particles=20 if vectorize else 3, vectorize_particles=vectorize, max_plate_nesting=0)
    draws = {name: [] for name in exact}
    for _ in range(150 if vectorize else 200):
        elbo.loss_and_grads(sequential_model, sequential_guide)
        for name in exact:
            leaf = pyro.param(name).unconstrained()
            draws[name].append(leaf.grad.item())
            leaf.grad = None
    for name, want in exact.items():
        values = torch.tensor(draws[name], dtype=torch.float64)
        se = values.std().item() / math.sqrt(len(values))
        assert abs(values.mean().item() - want.item()) < 4.5 * se, (name, values.mean().item(), want.item(), se)
        if name == "k":  # the dependent Bernoulli's own parameter: a gradient off by half would be seen
            assert 4.5 * se < 0.5 * abs(want.item())


def test_sequential_pairs_share_the_history_and_pair_given_it():
    """Vectorized pairs: z is one sample for both particles where b1 agreed
    (and two where it did not); b2 is paired exactly where z was shared."""
    pyro.set_rng_seed(0)
    elbo = DisARMELBO(num_particles=200, vectorize_particles=True, max_plate_nesting=0)
    particles = elbo.particles(sequential_model, sequential_guide)
    b1, b2 = particles.bernoulli["b1"], particles.bernoulli["b2"]
    agreed = b1.value[0::2] == b1.value[1::2]
    assert b1.paired.all() and agreed.any() and not agreed.all()
    assert torch.equal(b2.paired, agreed)
    # the pair's b2 logits agree exactly where b1 did: one shared z
    assert torch.equal(b2.logits[0::2] == b2.logits[1::2], agreed)


def test_importance_weighted_disarm_refuses_a_bernoulli_that_depends_on_another_sample():
    def chain_model():
        c = pyro.sample("c", dist.Normal(0.0, 1.0))
        pyro.sample("b", dist.Bernoulli(logits=c))

    def chain_guide():
        c = pyro.sample("c", dist.Normal(pyro.param("m", torch.tensor(0.0)), 1.0))
        pyro.sample("b", dist.Bernoulli(logits=c))

    with pytest.raises(ValueError, match="Bernoulli site 'b' depends on the random guide site 'c'"):
        ImportanceWeightedELBO(num_particles=2, gradient="disarm", max_plate_nesting=0).loss(chain_model, chain_guide)


def test_bad_arguments():
    assert_each_refused(
        (lambda: RaoBlackwellELBO(pathwise="yes"), "pathwise"),
        (lambda: ControlVariateELBO(pathwise=1), "pathwise"),
        (lambda: ReinforceLeaveOneOutELBO(num_particles=1), "num_particles must be an integer >= 2"),
        (lambda: ImportanceWeightedELBO(num_particles=1, gradient="vimco"), "num_particles must be an integer >= 2"),
        (lambda: DisARMELBO(num_particles=0), "num_particles must be an integer >= 1"),
    )


@pytest.mark.parametrize(
    "make",
    [
        lambda: RaoBlackwellELBO(num_particles=20, pathwise=True, **VEC),
        lambda: RaoBlackwellELBO(num_particles=20, pathwise=True, coordinates="parameters", **VEC),
        lambda: RaoBlackwellELBO(num_particles=20, **VEC),
        lambda: ControlVariateELBO(num_particles=20, **VEC),
        lambda: ReinforceLeaveOneOutELBO(num_particles=20, pathwise=True, **VEC),
        lambda: ReinforceLeaveOneOutELBO(num_particles=20, **VEC),
    ],
    ids=[
        "RaoBlackwellELBO(pathwise)",
        "RaoBlackwellELBO(pathwise, parameters)",
        "RaoBlackwellELBO",
        "ControlVariateELBO",
        "ReinforceLeaveOneOutELBO(pathwise)",
        "ReinforceLeaveOneOutELBO",
    ],
)
def test_unbiased_on_the_gmm_against_enumerated_z(make):
    """The mean gradient of every GMM guide parameter (components and the
    assignment probabilities) equals TraceEnum_ELBO's with z enumerated in
    the guide (exact in z, pathwise in the components), within 4.5 combined
    standard errors, with a comparison that would see a gradient off by half."""
    import dataclasses

    from pyro.infer import TraceEnum_ELBO, config_enumerate

    from guides.gmm import initial_params

    gmm_model, gmm_guide, args = gmm_setup(num_data=12, seed=1)
    # Assignment probabilities away from 0: a class drawn once in 10^6 draws
    # has an exact gradient that no finite sample's standard error sees.
    start = initial_params((args[0].double(), args[1].double()))
    start = dataclasses.replace(start, r=0.5 * start.r + 0.5 / 3)
    gmm_guide = functools.partial(gmm_guide, init=start)
    stats = []
    for seed, elbo, run_guide in [
        (1, make(), gmm_guide),
        (2, TraceEnum_ELBO(num_particles=20, **VEC), config_enumerate(gmm_guide)),
    ]:
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        run_guide(*args)
        pyro.set_rng_seed(seed)
        stats.append(gradient_statistics(elbo, gmm_model, run_guide, *args, num_draws=60))
    actual, reference = stats
    powerful = False
    for name in reference:
        se = (actual[name].standard_error ** 2 + reference[name].standard_error ** 2).sqrt()
        diff = (actual[name].mean - reference[name].mean).abs()
        assert bool((diff <= 4.5 * se + 1e-5).all()), name
        largest = reference[name].mean.abs().argmax()
        powerful |= bool(4.5 * se.flatten()[largest] < 0.5 * reference[name].mean.abs().flatten()[largest])
    assert powerful
