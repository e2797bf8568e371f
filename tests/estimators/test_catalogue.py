"""The drop-in contract on the catalogue (models/catalogue.py): every
estimator either works on every pair or refuses it with a ``ValueError``
naming the site, ``Trace_ELBO`` passes the same tests, and the gradients are
unbiased where they can be checked against an exact or Pyro reference."""

import functools
import json
import math
import os
import re

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, RenyiELBO, Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam

from models.catalogue import (
    CATALOGUE,
    ESTIMATORS,
    elbo_for,
    expected_refusal,
    gamma_poisson_guide,
    gamma_poisson_model,
    outcome,
    take_grads,
)
from pyro_vi import ImportanceWeightedELBO
from pyro_vi.diagnostics import gradient_statistics
from tests.helpers import ROOT

CASES = [
    (pair, estimator, vectorize)
    for pair in sorted(CATALOGUE)
    for estimator in ESTIMATORS
    for vectorize in (True, False)
]

# One worker runs the whole file, so that the outcomes cached by
# models.catalogue.outcome serve every test here.
pytestmark = pytest.mark.xdist_group("catalogue")


@pytest.mark.parametrize(
    "pair,estimator,vectorize", CASES, ids=["{}-{}-{}".format(p, e, "vec" if v else "seq") for p, e, v in CASES]
)
def test_works_or_refuses_by_name(pair, estimator, vectorize):
    result = outcome(pair, estimator, vectorize)
    refusal = expected_refusal(CATALOGUE[pair], ESTIMATORS[estimator])
    if refusal is not None:
        assert result[0] == "refused", f"expected a refusal matching {refusal!r}"
        assert re.search(refusal, result[1]), result[1]
        return
    assert result[0] == "ok", result[1]
    _, (loss, loss_and_grads, differentiable), grads, grads_again = result
    assert math.isfinite(loss)
    assert loss_and_grads == pytest.approx(loss, rel=1e-5, abs=1e-5)
    assert differentiable == pytest.approx(loss, rel=1e-5, abs=1e-5)
    assert grads.keys() == grads_again.keys()
    for name in grads:
        assert torch.isfinite(grads[name]).all(), name
        assert torch.allclose(grads[name], grads_again[name], rtol=1e-5, atol=1e-5), name
    # No silent zero: the parameters that Trace_ELBO moves, and only those.
    control = outcome(pair, "Trace_ELBO", vectorize)
    assert set(grads) == set(control[2])


WARNING_CASES = [
    (pair, estimator, vectorize)
    for pair in sorted(p for p in CATALOGUE if CATALOGUE[p].warning)
    for estimator in ESTIMATORS
    for vectorize in (True, False)
]


@pytest.mark.parametrize(
    "pair,estimator,vectorize",
    WARNING_CASES,
    ids=["{}-{}-{}".format(p, e, "vec" if v else "seq") for p, e, v in WARNING_CASES],
)
def test_warns_where_pyro_warns(pair, estimator, vectorize):
    """Sites that the model and guide do not share: every estimator warns as
    Pyro's ELBOs do (and still works)."""
    spec = CATALOGUE[pair]
    pyro.clear_param_store()
    elbo = elbo_for(estimator, vectorize, spec)
    with pytest.warns(UserWarning, match=spec.warning):
        elbo.loss_and_grads(spec.model, spec.guide(), *spec.args)


FIXED = {
    # pair -> the params poutine.block hides (Pyro's TestFixedModelGuide)
    "gamma_poisson_free": set(),
    "gamma_poisson_fixed_model": {"alpha_p_log", "beta_p_log"},
    "gamma_poisson_fixed_guide": {"alpha_q_log", "beta_q_log"},
    "gamma_poisson_fixed_both": {"alpha_p_log", "beta_p_log", "alpha_q_log", "beta_q_log"},
}
FIXED_CASES = [
    (pair, estimator, vectorize) for pair in FIXED for estimator in ESTIMATORS for vectorize in (True, False)
]


@pytest.mark.parametrize(
    "pair,estimator,vectorize",
    FIXED_CASES,
    ids=["{}-{}-{}".format(p, e, "vec" if v else "seq") for p, e, v in FIXED_CASES],
)
def test_hidden_params_stay_fixed(pair, estimator, vectorize):
    """Three SVI steps leave the params that ``poutine.block`` hides exactly
    as they were and move every other one."""
    spec = CATALOGUE[pair]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = spec.guide()
    with poutine.block():  # create every param
        poutine.trace(gamma_poisson_guide).get_trace()
        poutine.trace(gamma_poisson_model).get_trace()
    before = {name: value.detach().clone() for name, value in pyro.get_param_store().items()}
    svi = SVI(spec.model, guide, Adam({"lr": 0.01}), elbo_for(estimator, vectorize, spec))
    for _ in range(3):
        svi.step(*spec.args)
    for name, value in pyro.get_param_store().items():
        assert torch.equal(value.detach(), before[name]) == (name in FIXED[pair]), name


@pytest.mark.parametrize("pair", sorted(CATALOGUE))
@pytest.mark.parametrize(
    "estimator",
    [
        e
        for e in ESTIMATORS
        if e != "Trace_ELBO" and not ESTIMATORS[e].importance_weighted and not ESTIMATORS[e].antithetic
    ],
)
def test_value_equals_trace_elbo_on_the_same_seed(pair, estimator):
    """Every ELBO-valued estimator reports the mean log-weight of the same
    particles as Trace_ELBO (DisARM and AutoELBO draw antithetic pairs:
    tests/estimators/test_discrete.py and tests/estimators/test_auto.py check
    their values)."""
    spec = CATALOGUE[pair]
    if expected_refusal(spec, ESTIMATORS[estimator]) is not None:
        return
    values = []
    for name in ("Trace_ELBO", estimator):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        elbo, guide = elbo_for(name, True, spec), spec.guide()
        elbo.loss(spec.model, guide, *spec.args)  # first call: guesses max_plate_nesting
        pyro.set_rng_seed(5)
        values.append(elbo.loss(spec.model, guide, *spec.args))
    assert values[1] == pytest.approx(values[0], rel=1e-5, abs=1e-5)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("pair", ["delta", "auto_delta", "latent_stable_reparam"])
@pytest.mark.parametrize("estimator", [e for e in ESTIMATORS if e != "Trace_ELBO"])
def test_point_masses_get_the_exact_map_gradient(pair, estimator):
    """A guide of point masses has no randomness: every estimator (the
    score-function ones, and DReG, whose weights would otherwise divide it by
    K) gives exactly Trace_ELBO's gradient, the MAP gradient."""
    spec = CATALOGUE[pair]
    grads = []
    for name in ("Trace_ELBO", estimator):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = spec.guide()
        elbo_for(name, True, spec, num_particles=5).loss_and_grads(spec.model, guide, *spec.args)
        grads.append(take_grads())
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for name in grads[0]:
        assert grads[0][name].abs().sum() > 0, name
        assert torch.allclose(grads[1][name], grads[0][name], rtol=1e-5, atol=1e-6), name


def _statistics(make, spec, num_draws, seed, enumerate_guide=False):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide = spec.guide()
    if enumerate_guide:
        guide = config_enumerate(guide)
    guide(*spec.args)  # create the parameters at the same values for every estimator
    make().loss(spec.model, guide, *spec.args)
    pyro.set_rng_seed(seed)
    return gradient_statistics(make(), spec.model, guide, *spec.args, num_draws=num_draws)


def _reference(spec, importance_weighted, particles):
    """An estimator of the same expected gradient, from Pyro: Trace_ELBO
    (TraceEnum_ELBO, exact in the discrete sites, where the guide has some),
    or RenyiELBO(alpha=0) for the importance-weighted bound."""
    if importance_weighted:
        return lambda: RenyiELBO(alpha=0, num_particles=particles, vectorize_particles=True)
    if "not_reparameterizable" in spec.tags:
        return lambda: TraceEnum_ELBO(num_particles=particles, vectorize_particles=True, max_plate_nesting=2)
    return lambda: Trace_ELBO(num_particles=particles, vectorize_particles=True)


def compare(actual, reference):
    """``(agrees, powerful)``: whether every parameter's mean gradient agrees
    within 4.5 combined standard errors, and whether the comparison could
    see a gradient off by half (the tolerance is below half the largest
    reference gradient of some parameter), as a missing term, a silent zero
    or a weight off by a factor K would be."""
    agrees, powerful = True, False
    assert actual.keys() == reference.keys()
    for name in reference:
        se = (actual[name].standard_error ** 2 + reference[name].standard_error ** 2).sqrt()
        diff = (actual[name].mean - reference[name].mean).abs()
        # The floor allows for float rounding where the variance vanishes
        # (e.g. leave-one-out control variates on a two-valued site are exact).
        agrees &= bool((diff <= 4.5 * se + 1e-5 * reference[name].mean.abs() + 1e-6).all())
        largest = reference[name].mean.abs().argmax()
        powerful |= bool(4.5 * se.flatten()[largest] < 0.5 * reference[name].mean.abs().flatten()[largest])
    return agrees, powerful


UNBIASED = {
    # pair -> estimators whose mean gradient must equal the reference's
    "local": [
        "ScoreFunctionELBO",
        "ControlVariateELBO",
        "RaoBlackwellELBO",
        "RaoBlackwellELBO(no CV)",
        "StickingTheLandingELBO",
    ],
    "subsample_global": ["ControlVariateELBO", "RaoBlackwellELBO", "StickingTheLandingELBO"],
    "auto_iaf_normal": ["ScoreFunctionELBO", "ControlVariateELBO", "StickingTheLandingELBO"],
    "auto_diagonal_normal": ["RaoBlackwellELBO", "ImportanceWeightedELBO(dreg)", "ImportanceWeightedELBO(disarm)"],
    "auto_structured": ["StickingTheLandingELBO", "ImportanceWeightedELBO(dreg)"],
    "auto_low_rank_multivariate_normal": ["ControlVariateELBO", "RaoBlackwellELBO"],
    "uniform_bounds": ["StickingTheLandingELBO", "RaoBlackwellELBO(pathwise)", "ImportanceWeightedELBO(dreg)"],
    "scale_both": ["ImportanceWeightedELBO(dreg)"],
    "delta_after_random": ["ControlVariateELBO", "ImportanceWeightedELBO(dreg)"],
    "structured": ["RaoBlackwellELBO", "ImportanceWeightedELBO(dreg)", "RaoBlackwellELBO(pathwise)"],
    "factor_in_guide_score": ["ScoreFunctionELBO", "RaoBlackwellELBO"],
    "categorical_local": ["ControlVariateELBO", "RaoBlackwellELBO", "ReinforceLeaveOneOutELBO", "AutoELBO"],
    "discrete_and_continuous": [
        "RaoBlackwellELBO",
        "RaoBlackwellELBO(pathwise)",
        "ControlVariateELBO(pathwise)",
        "ReinforceLeaveOneOutELBO",
        "ReinforceLeaveOneOutELBO(pathwise)",
        "DisARMELBO",
        "AutoELBO",
    ],
    "amortized": [
        "ControlVariateELBO",
        "ControlVariateELBO(parameters)",
        "RaoBlackwellELBO",
        "RaoBlackwellELBO(parameters)",
        "ImportanceWeightedELBO(dreg)",
        "ImportanceWeightedELBO(vimco)",
    ],
}
GRADIENT_CASES = [(pair, estimator) for pair, estimators in UNBIASED.items() for estimator in estimators]
# Draws where 60 leave too little power: the plain score function, the
# structured guide, whose reference (RenyiELBO) is noisy, and the tempered one.
DRAWS = {"ScoreFunctionELBO": 200, "structured": 200, "scale_both": 600}


def _compare_with_reference(pair, estimator, draws, vectorize=True, particles=None):
    spec, config = CATALOGUE[pair], ESTIMATORS[estimator]
    particles = particles or (5 if config.importance_weighted else 50)
    actual = _statistics(
        lambda: elbo_for(estimator, vectorize, spec, num_particles=particles), spec, num_draws=draws, seed=1
    )
    enumerate_guide = "not_reparameterizable" in spec.tags and not config.importance_weighted
    reference = _statistics(
        _reference(spec, config.importance_weighted, particles),
        spec,
        num_draws=draws,
        seed=2,
        enumerate_guide=enumerate_guide,
    )
    return compare(actual, reference)


@pytest.mark.parametrize("pair,estimator", GRADIENT_CASES, ids=["{}-{}".format(*c) for c in GRADIENT_CASES])
def test_mean_gradient_matches_the_reference(pair, estimator):
    draws = max(DRAWS.get(estimator, 60), DRAWS.get(pair, 60))
    agrees, powerful = _compare_with_reference(pair, estimator, draws)
    assert powerful, "the comparison cannot see a gradient off by half"
    assert agrees


SEQUENTIAL_CASES = [
    ("bernoulli", "ControlVariateELBO"),
    ("bernoulli", "RaoBlackwellELBO"),
    ("discrete_and_continuous", "RaoBlackwellELBO(pathwise)"),
    ("discrete_and_continuous", "ControlVariateELBO(pathwise)"),
    ("amortized_subsample", "ImportanceWeightedELBO"),
    ("amortized_subsample", "ImportanceWeightedELBO(dreg)"),
]


@pytest.mark.parametrize("pair,estimator", SEQUENTIAL_CASES, ids=["{}-{}".format(*c) for c in SEQUENTIAL_CASES])
def test_mean_gradient_matches_the_reference_with_sequential_particles(pair, estimator):
    """One trace per particle: each particle's score is taken at its own
    distribution, whose lazily cached logits (computed from its probs by
    log_prob) once counted the Bernoulli's gradient a second time; and every
    particle takes the first one's minibatch, without which a data point's
    importance-weighted bound mixed the particles of different points."""
    importance_weighted = ESTIMATORS[estimator].importance_weighted
    draws, particles = (100, 5) if importance_weighted else (60, 20)
    agrees, powerful = _compare_with_reference(pair, estimator, draws, vectorize=False, particles=particles)
    assert powerful, "the comparison cannot see a gradient off by half"
    assert agrees


def test_importance_weighted_stl_is_biased():
    """Power check, and a documented property: the STL gradient of the
    importance-weighted bound drops a score term whose expectation is not
    zero for K > 1 (Tucker et al. 2019); the comparison sees its bias."""
    agrees, powerful = _compare_with_reference("delta_after_random", "ImportanceWeightedELBO(stl)", 200)
    assert powerful and not agrees


def test_importance_weighting_under_subsampling_estimates_the_full_bound():
    """With every latent in the subsampled plate, (N/B) times the minibatch
    bounds estimates the bound of the whole data set without bias."""
    subsampled, full = CATALOGUE["amortized_subsample"], CATALOGUE["amortized"]
    make = functools.partial(ImportanceWeightedELBO, num_particles=5, vectorize_particles=True)
    actual = _statistics(make, subsampled, num_draws=300, seed=1)
    reference = _statistics(make, full, num_draws=100, seed=2)
    agrees, powerful = compare(actual, reference)
    assert powerful and agrees


def test_the_comparison_detects_a_biased_estimator():
    """Power check: the same comparison fails for the pooled coefficient,
    whose O(1/S) bias is large at S = 3."""
    spec = CATALOGUE["local"]
    actual = _statistics(
        lambda: elbo_for("ControlVariateELBO(pooled)", True, spec, num_particles=3), spec, num_draws=300, seed=1
    )
    reference = _statistics(_reference(spec, False, 50), spec, num_draws=60, seed=2)
    agrees, powerful = compare(actual, reference)
    assert powerful and not agrees


def test_flow_weights_get_a_score():
    """The score of a flow guide reaches the flow's own weights (no inverse
    cached without a graph)."""
    spec = CATALOGUE["auto_iaf_normal"]
    pyro.set_rng_seed(0)
    guide = spec.guide()
    elbo_for("ScoreFunctionELBO", True, spec, num_particles=4).loss_and_grads(spec.model, guide)
    flow = {name: g for name, g in take_grads().items() if "arn" in name}
    assert flow and all(g.abs().sum() > 0 for g in flow.values())


def test_the_compatibility_results_are_current():
    """results/compatibility/results.json (rendered into the README) holds the
    catalogue's outcomes as they are now."""
    from experiments import compatibility

    path = os.path.join(ROOT, "results", "compatibility", "results.json")
    with open(path) as f:
        committed = json.load(f)["records"]
    assert committed == compatibility.records(sorted(CATALOGUE))
