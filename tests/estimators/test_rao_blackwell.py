"""RaoBlackwellELBO: the Markov-blanket bookkeeping against brute force, the
degenerate equality with the score function and the arguments (the course's
1.C.2 model: test_rao_blackwell_course_model.py)."""

import functools
import itertools

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceGraph_ELBO

from models.normal_mean import PRIOR, SIGMA, exact_posterior, generate_data
from pyro_vi import ControlVariateELBO, RaoBlackwellELBO, ScoreFunctionELBO, score_function_guide
from pyro_vi.particles.structure import ProgramStructure, learning_signal_factors, markov_blankets, program_structure
from tests.helpers import losses_and_grads_on_the_same_draws
from tests.programs import location_guide, location_model


def chain_model():
    a = pyro.sample("a", dist.Normal(0.0, 1.0))
    b = pyro.sample("b", dist.Normal(a, 1.0))
    pyro.sample("c", dist.Normal(b, 1.0), obs=torch.tensor(0.5))


def local_model(data):
    g = pyro.sample("g", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(data)):
        y = pyro.sample("y", dist.Normal(g, 1.0))
        pyro.sample("x", dist.Normal(y, 0.5), obs=data)
    # A factor outside the plate that depends on every y_n.
    pyro.sample("total", dist.Normal(y.sum(), 3.0), obs=torch.tensor(1.0))


def nested_model(data):
    scale = pyro.sample("scale", dist.Gamma(2.0, 2.0))
    with pyro.plate("groups", 2, dim=-2):
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("data", data.shape[-1], dim=-1):
            y = pyro.sample("y", dist.Normal(g, scale))
            pyro.sample("x", dist.Normal(y, 1.0), obs=data)
    with pyro.plate("data_only", data.shape[-1], dim=-1):
        # Depends on y element-wise in "data" would be a different plate name;
        # here it depends on all groups of y through the sum over groups.
        pyro.sample("col", dist.Normal(y.sum(-2), 1.0), obs=torch.zeros(data.shape[-1]))


def crossed_model(data):
    rows, cols = pyro.plate("rows", 2, dim=-2), pyro.plate("cols", 3, dim=-1)
    with rows:
        r = pyro.sample("r", dist.Normal(0.0, 1.0))
    with cols:
        c = pyro.sample("c", dist.Normal(0.0, 1.0))
    with rows, cols:
        pyro.sample("x", dist.Normal(r + c, 1.0), obs=data)


def brute_force_blankets(model, *args):
    """For every latent element, which elements of which factors change when
    only that element changes; returns ``{latent: {factor: plates}}`` where a
    plate is listed when the dependence is element-wise along it."""
    pyro.set_rng_seed(0)
    trace = poutine.trace(model).get_trace(*args)
    trace.compute_log_prob()
    sites = {n: s for n, s in trace.nodes.items() if s["type"] == "sample" and not poutine.util.site_is_subsample(s)}
    latents = {n: s["value"] for n, s in sites.items() if not s["is_observed"]}
    result = {}
    for name, value in latents.items():
        dims = {f.name: f.dim for f in sites[name]["cond_indep_stack"] if f.vectorized}
        factors = {}
        for index in itertools.product(*(range(k) for k in value.shape)):
            perturbed = value.clone()
            perturbed[index] = perturbed[index] + 0.37
            values = dict(latents, **{name: perturbed})
            new = poutine.trace(poutine.condition(model, data=values)).get_trace(*args)
            new.compute_log_prob()
            for factor, site in sites.items():
                changed = (new.nodes[factor]["log_prob"] - site["log_prob"]).abs() > 1e-6
                if not changed.any():
                    continue
                factor_dims = {f.name: f.dim for f in site["cond_indep_stack"] if f.vectorized}
                elementwise = set()
                for plate, dim in dims.items():
                    if plate not in factor_dims:
                        continue
                    n = index[dim]
                    where = changed.nonzero()
                    positions = where[:, changed.dim() + dim] if where.numel() else where
                    if bool((positions == n).all()):
                        elementwise.add(plate)
                factors[factor] = factors.get(factor, elementwise) & elementwise
        result[name] = {f: frozenset(p) for f, p in factors.items()}
    return result


SHAPES = {
    "chain": (chain_model, ()),
    "local_with_global_factor": (local_model, (torch.tensor([0.1, -0.3, 0.8]),)),
    "nested_plates": (nested_model, (torch.randn(2, 3, generator=torch.Generator().manual_seed(0)),)),
    "crossed_plates": (crossed_model, (torch.zeros(2, 3),)),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_markov_blankets_match_brute_force(shape):
    model, args = SHAPES[shape]
    expected = brute_force_blankets(model, *args)
    pyro.set_rng_seed(0)
    actual = markov_blankets(program_structure(model, poutine.trace(model).get_trace(*args), *args))
    assert actual == expected


def test_markov_blanket_of_a_global_includes_all_children():
    """z-like global in the local model: g's blanket is {g, y}, summed over data."""
    model, data = SHAPES["local_with_global_factor"][0], torch.zeros(3)
    blankets = markov_blankets(program_structure(model, poutine.trace(model).get_trace(data), data))
    assert blankets["g"] == {"g": frozenset(), "y": frozenset()}
    assert blankets["y"] == {
        "y": frozenset({"data"}),
        "x": frozenset({"data"}),
        "total": frozenset(),
    }


single_latent_model = location_model
single_latent_guide = functools.partial(location_guide, m=0.3, s=0.7)


@pytest.mark.parametrize("vectorize", [True, False])
def test_single_latent_equals_score_function(vectorize):
    elbos = (
        ScoreFunctionELBO(num_particles=5, vectorize_particles=vectorize),
        RaoBlackwellELBO(num_particles=5, control_variate=False, vectorize_particles=vectorize),
    )
    data = torch.tensor([0.5, 1.5, -0.2])
    (sf_loss, sf_grads), (rb_loss, rb_grads) = losses_and_grads_on_the_same_draws(
        elbos, single_latent_model, single_latent_guide, data, seed=11
    )
    assert sf_loss == pytest.approx(rb_loss, rel=1e-6)
    for name in ("m", "s"):
        assert torch.allclose(sf_grads[name], rb_grads[name], rtol=1e-5, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="control_variate"):
        RaoBlackwellELBO(control_variate="yes")
    with pytest.raises(ValueError, match="num_particles must be an integer >= 2"):
        RaoBlackwellELBO(num_particles=1, coefficient="pooled")
    with pytest.raises(ValueError, match="num_particles must be an integer >= 3"):
        RaoBlackwellELBO(num_particles=2)
    RaoBlackwellELBO(num_particles=1, control_variate=False)  # no variance needed


def test_score_function_guide_sets_the_tracegraph_baseline():
    traced = poutine.trace(score_function_guide(single_latent_guide, baseline={"use_decaying_avg_baseline": True}))
    traced(torch.zeros(2))
    site = traced.trace.nodes["loc"]
    assert site["infer"]["baseline"] == {"use_decaying_avg_baseline": True}
    assert not site["fn"].has_rsample
    loss = TraceGraph_ELBO().loss_and_grads(
        single_latent_model,
        score_function_guide(single_latent_guide, baseline={"use_decaying_avg_baseline": True}),
        torch.zeros(2),
    )
    assert torch.isfinite(torch.tensor(loss))


def _chain_structures(order):
    """A guide chain a -> b -> c (each drawn given the previous one) and the
    model's factors of each, with the guide's sites listed in ``order``."""
    guide_deps = {"a": {"a"}, "b": {"a", "b"}, "c": {"b", "c"}}
    guide = ProgramStructure(
        dependencies={n: frozenset(guide_deps[n]) for n in order},
        observed=frozenset(),
        plates={n: frozenset() for n in order},
    )
    model_deps = {"a": {"a"}, "b": {"a", "b"}, "c": {"b", "c"}, "x": {"c"}}
    model = ProgramStructure(
        dependencies={n: frozenset(d) for n, d in model_deps.items()},
        observed=frozenset({"x"}),
        plates={n: frozenset() for n in model_deps},
    )
    return model, guide


@pytest.mark.parametrize("order", ["abc", "cba", "bca"])
def test_the_signal_reaches_every_descendant_in_any_site_order(order):
    """Every factor downstream of a reaches a's signal, through b and then c,
    whatever order the guide's sites are listed in (the union of two runs'
    structures may list them out of program order)."""
    model, guide = _chain_structures(order)
    model_factors, guide_factors = learning_signal_factors(model, guide)["a"]
    assert set(model_factors) == {"a", "b", "c", "x"} and set(guide_factors) == {"a", "b", "c"}


def test_the_union_of_two_runs_keeps_program_order():
    model, guide = _chain_structures("abc")
    assert list(guide.union(guide).dependencies) == ["a", "b", "c"]
    assert list(model.union(model).plates) == ["a", "b", "c", "x"]


# The Normal mean of models.normal_mean from 10,000 data: a global site whose
# learning signal sums every datum's log-likelihood.
LARGE_DATA = generate_data(10_000, seed=0)


def normal_mean_gradients(estimator, vectorize, loc, scale, draws):
    """``draws`` gradients in (m, unconstrained s) of ``estimator`` (10
    particles, seed 1) on the Normal mean from ``LARGE_DATA``, with the
    guide Normal(m, s) at ``loc``, ``scale``; shape ``(draws, 2)``."""

    def model():
        mu = pyro.sample("mu", dist.Normal(0.0, PRIOR))
        with pyro.plate("data", len(LARGE_DATA)):
            pyro.sample("x", dist.Normal(mu, SIGMA), obs=LARGE_DATA)

    def guide():
        pyro.sample("mu", dist.Normal(pyro.param("m", torch.tensor(loc)), pyro.param("s", torch.tensor(scale))))

    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    elbo = estimator(num_particles=10, vectorize_particles=vectorize, max_plate_nesting=1)
    grads = []
    for _ in range(draws):
        loss = elbo.differentiable_loss(model, guide)
        params = [pyro.param("m").unconstrained(), pyro.param("s").unconstrained()]
        grads.append(torch.stack(torch.autograd.grad(loss, params)))
    return torch.stack(grads)


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "sequential"])
@pytest.mark.parametrize("estimator", [ControlVariateELBO, RaoBlackwellELBO], ids=lambda cls: cls.__name__)
def test_the_control_variates_leave_no_rounding_floor_at_the_optimum(estimator, vectorize):
    """The Normal mean from N = 10,000 data, the guide at the exact
    posterior: the global site's signal sums every datum's log-likelihood
    (about -2e4), and its controlled gradient must cancel it to the Monte
    Carlo noise. Measured (400 draws): total variance 0.00178 for both
    estimators in both layouts; before SignalRows, RaoBlackwellELBO's terms
    h L_j, of about 2e4 h, were rounded to float32 first: 0.0022
    (vectorized) and 0.0052 (sequential), and summed in float32 too, 1.7 to
    3.3, a floor 1,000 times the noise."""
    loc, scale = exact_posterior(LARGE_DATA)
    grads = normal_mean_gradients(estimator, vectorize, loc, scale, 200 if vectorize else 60)
    total_variance = float(grads.double().var(0).sum())
    # 200 (60) draws estimate a variance to about 10% (18%); 0.02 is ten
    # times the noise
    assert total_variance < 0.02, total_variance


@pytest.mark.parametrize("vectorize", [True, False], ids=["vectorized", "sequential"])
def test_with_one_latent_site_rao_blackwell_is_the_control_variate_estimator(vectorize):
    """One latent site: its Markov blanket is the whole model, so
    RaoBlackwellELBO's terms are ControlVariateELBO's and the two give the
    same gradient on the same particles, to float32 rounding, even where
    the signal is a log-likelihood of about -2e4 (10,000 data). Measured
    over 20 draws: at most 1.1e-4 apart, in gradients of about 75; with
    RaoBlackwellELBO's rows h L rounded to float32 before the arithmetic
    (as before SignalRows), 0.040 apart vectorized and 0.10 sequential."""
    cv, rb = (normal_mean_gradients(cls, vectorize, 1.0, 0.02, 20) for cls in (ControlVariateELBO, RaoBlackwellELBO))
    difference = (cv - rb).abs().max()
    assert difference < 1e-3, float(difference)
