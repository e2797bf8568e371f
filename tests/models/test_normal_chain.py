"""Tests for models/normal_chain.py and guides/normal_chain.py (question 1.C.2 / 2.1.12).

The closed-form mean-field ELBO is checked against Monte Carlo through Pyro traces,
its autograd gradient against Pyro's reparameterized Trace_ELBO gradient with many
particles, its optimum against the CAVI fixed point, and against log p(X) computed by
quadrature over w2 (given w2 the data are jointly Gaussian).
"""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.inspect import get_dependencies

from guides.normal_chain import (
    PARAM_NAMES,
    POSITIVE_PARAM_NAMES,
    NormalChainParams,
    cavi,
    cavi_step,
    elbo,
    elbo_gradient,
    mean_field_guide,
    params_from_store,
)
from models.normal_chain import (
    W2_CONCENTRATION,
    W2_RATE,
    check_data,
    generate_data,
    log_joint,
    markov_blankets,
    model,
)
from tests.helpers import normal_chain_pyro_gradient, per_draw_log_prob

NUM_DATA = 20
GLOBAL_SITES = ("w1", "w2", "v", "z")


@pytest.fixture(scope="module")
def data():
    return generate_data(num_data=NUM_DATA, seed=0)


@pytest.fixture(scope="module")
def optimum(data):
    return cavi(data).params


def assert_params_close(a, b, rel=1e-6):
    """Field-wise comparison; the param store holds the default dtype (float32)."""
    for name in PARAM_NAMES:
        assert getattr(a, name[2:]) == pytest.approx(getattr(b, name[2:]), rel=rel), name


def vectorized_log_weights(data, params, num_draws):
    """log p(X, latents_s) - log q(latents_s) for draws s of the guide, via traces."""
    pyro.clear_param_store()
    with pyro.plate("particles", num_draws, dim=-2):
        guide_trace = poutine.trace(mean_field_guide).get_trace(data, params)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(data)
    log_p = per_draw_log_prob(model_trace, num_draws)
    log_q = per_draw_log_prob(guide_trace, num_draws)
    assert float(log_p.detach().sum()) == pytest.approx(float(model_trace.log_prob_sum().detach()), rel=1e-5)
    return (log_p - log_q).detach().double()


def log_evidence_by_quadrature(data):
    """log p(X) = log int Gamma(w2; 2, 2) N(X; 0, (1/w2 + 1) I + 3 11^T) dw2.

    Given w2, z = w1 + (v - w1) + (z - v) has variance 3 and x_n = z + y_n + eps_n,
    so X is Gaussian with that covariance (Sherman-Morrison for its inverse and det).
    """
    integrate = pytest.importorskip("scipy.integrate")
    x = data.double()
    n, total, squares = len(x), float(x.sum()), float((x**2).sum())

    def log_integrand(w2):
        var = 1 / w2 + 1
        c = 3.0
        quad_form = (squares - c * total**2 / (var + n * c)) / var
        log_det = n * math.log(var) + math.log1p(n * c / var)
        log_lik = -0.5 * (n * math.log(2 * math.pi) + log_det + quad_form)
        log_prior = W2_CONCENTRATION * math.log(W2_RATE) - math.lgamma(W2_CONCENTRATION)
        log_prior += (W2_CONCENTRATION - 1) * math.log(w2) - W2_RATE * w2
        return log_lik + log_prior

    shift = max(log_integrand(w) for w in torch.logspace(-4, 3, 2001).tolist())
    pieces = ((0, 1.0), (1.0, math.inf))
    mass = sum(
        integrate.quad(lambda w: math.exp(log_integrand(w) - shift), a, b, epsabs=0, epsrel=1e-11, limit=200)[0]
        for a, b in pieces
    )
    return shift + math.log(mass)


# ---------------------------------------------------------------- data and model


def test_generate_data_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    x, latents = generate_data(num_data=30, seed=3, return_latents=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.shape == (30,) and x.dtype == torch.get_default_dtype()
    assert set(latents) == {"w1", "w2", "v", "z", "y"}
    assert latents["y"].shape == (30,) and all(latents[k].shape == () for k in GLOBAL_SITES)
    assert float(latents["w2"]) > 0
    assert torch.equal(x, generate_data(num_data=30, seed=3))
    assert not torch.equal(x, generate_data(num_data=30, seed=4))
    assert generate_data().shape == (NUM_DATA,)


def test_generate_data_draws_from_the_prior():
    """Across seeds: w1 ~ N(0, 1), w2 ~ Gamma(2, 2), z - v ~ N(0, 1); within one big
    draw: x - z - y ~ N(0, 1) and y sqrt(w2) ~ N(0, 1)."""
    draws = [generate_data(num_data=1, seed=s, return_latents=True)[1] for s in range(2000)]
    w1 = torch.stack([d["w1"] for d in draws]).double()
    w2 = torch.stack([d["w2"] for d in draws]).double()
    dz = torch.stack([d["z"] - d["v"] for d in draws]).double()
    se = 1 / math.sqrt(2000)
    assert abs(float(w1.mean())) < 4 * se and float(w1.var()) == pytest.approx(1.0, abs=0.15)
    assert abs(float(dz.mean())) < 4 * se
    assert float(w2.mean()) == pytest.approx(1.0, abs=4 * math.sqrt(0.5) * se)
    assert float(w2.var()) == pytest.approx(0.5, abs=0.1)
    x, latents = generate_data(num_data=20000, seed=1, return_latents=True)
    noise = (x - latents["z"] - latents["y"]).double()
    assert abs(float(noise.mean())) < 4 / math.sqrt(20000) and float(noise.var()) == pytest.approx(1.0, rel=0.05)
    assert float((latents["y"] * latents["w2"].sqrt()).var()) == pytest.approx(1.0, rel=0.05)


def test_model_trace_log_prob_equals_hand_written_log_joint(data):
    _, latents = generate_data(num_data=NUM_DATA, seed=9, return_latents=True)
    trace = poutine.trace(poutine.condition(model, data=latents)).get_trace(data)
    expected = log_joint(data, *(latents[k] for k in ("w1", "w2", "v", "z", "y")))
    assert float(trace.log_prob_sum()) == pytest.approx(float(expected), rel=1e-6)


def test_model_and_guide_shapes_inside_a_vectorized_particle_plate(data):
    num_draws = 5
    with pyro.plate("particles", num_draws, dim=-2):
        guide_trace = poutine.trace(mean_field_guide).get_trace(data, NormalChainParams.poor_init(NUM_DATA))
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(data)
    for trace in (guide_trace, model_trace):
        for name in GLOBAL_SITES:
            assert trace.nodes[name]["value"].shape == (num_draws, 1), name
        assert trace.nodes["y"]["value"].shape == (num_draws, NUM_DATA)
        plates = {frame.name: frame.dim for frame in trace.nodes["y"]["cond_indep_stack"]}
        assert plates == {"particles": -2, "data": -1}
    assert model_trace.nodes["x"]["fn"].batch_shape == (num_draws, NUM_DATA)
    model_trace.compute_log_prob()
    assert model_trace.nodes["x"]["log_prob"].shape == (num_draws, NUM_DATA)
    assert model_trace.nodes["z"]["log_prob"].shape == (num_draws, 1)

    # per particle, the trace's log joint is the hand-written one
    values = {name: model_trace.nodes[name]["value"] for name in ("w1", "w2", "v", "z", "y")}
    expected = log_joint(data, *(values[k].squeeze(-1) for k in GLOBAL_SITES), values["y"])
    assert torch.allclose(per_draw_log_prob(model_trace, num_draws).double(), expected, rtol=1e-5)

    # Pyro's own vectorized Trace_ELBO runs on the pair
    loss_fn = Trace_ELBO(num_particles=num_draws, vectorize_particles=True, max_plate_nesting=1)
    assert math.isfinite(loss_fn.loss(model, mean_field_guide, data))


def test_markov_blankets_match_the_program(data):
    """The factors containing each latent, as Pyro's dependency inspection reads them."""
    prior_dependencies = get_dependencies(model, (data,))["prior_dependencies"]
    found = {
        site: tuple(sorted(f for f, upstream in prior_dependencies.items() if site in upstream))
        for site in ("w1", "w2", "v", "z", "y")
    }
    assert found == {site: tuple(sorted(factors)) for site, factors in markov_blankets().items()}


# ---------------------------------------------------------------- closed-form ELBO


@pytest.mark.parametrize("where", ["poor_init", "optimum"])
def test_elbo_matches_monte_carlo_through_pyro_traces(data, optimum, where):
    params = NormalChainParams.poor_init(NUM_DATA) if where == "poor_init" else optimum
    pyro.set_rng_seed(0)
    num_draws = 10000
    log_w = vectorized_log_weights(data, params, num_draws)
    std_err = float(log_w.std()) / math.sqrt(num_draws)
    assert 1e-3 < std_err < 0.5
    exact = float(elbo(data, params))
    assert abs(float(log_w.mean()) - exact) < 4 * std_err

    # Pyro's own Trace_ELBO with vectorized particles estimates the same number
    pyro.clear_param_store()
    loss_fn = Trace_ELBO(num_particles=num_draws, vectorize_particles=True, max_plate_nesting=1)
    loss = loss_fn.loss(model, lambda x: mean_field_guide(x, params), data)
    assert abs(-loss - exact) < 4 * std_err


def test_elbo_gradient_matches_finite_differences_in_unconstrained_coordinates(data):
    params = NormalChainParams.poor_init(NUM_DATA)
    grads = normal_chain_pyro_gradient(data, params)
    assert set(grads) == set(PARAM_NAMES)
    base = params.as_tensors(torch.float64)
    eps = 1e-6
    for name in PARAM_NAMES:
        for index in [None] if name not in ("q_y_loc", "q_y_scale") else [0, 7]:
            values = []
            for sign in (1, -1):
                moved = dict(base)
                value = moved[name].clone()
                target = value if index is None else value[index]
                if name in POSITIVE_PARAM_NAMES:
                    new = target * math.exp(sign * eps)
                else:
                    new = target + sign * eps
                if index is None:
                    value = new
                else:
                    value[index] = new
                moved[name] = value
                values.append(float(elbo(data, moved)))
            fd = (values[0] - values[1]) / (2 * eps)
            exact = float(grads[name] if index is None else grads[name][index])
            assert exact == pytest.approx(fd, rel=1e-5, abs=1e-6), (name, index)
            assert abs(exact) > 1e-2, (name, index)  # not stationary: the check has teeth


def test_exact_gradient_matches_pyro_reparameterized_gradient_at_poor_init(data):
    """Unbiasedness oracle: mean of R independent Trace_ELBO gradients (M particles each)
    against the autograd gradient of the closed form, tolerance 4 measured SE."""
    params = NormalChainParams.poor_init(NUM_DATA)
    exact = normal_chain_pyro_gradient(data, params)
    num_particles, num_repeats = 1000, 40
    loss_fn = Trace_ELBO(num_particles=num_particles, vectorize_particles=True, max_plate_nesting=1)
    guide = lambda x: mean_field_guide(x, params)  # noqa: E731
    pyro.set_rng_seed(0)
    draws = {name: [] for name in PARAM_NAMES}
    for _ in range(num_repeats):
        pyro.clear_param_store()
        loss_fn.loss_and_grads(model, guide, data)
        for name in PARAM_NAMES:
            # Pyro's .grad is of the loss = -ELBO, in the unconstrained coordinates
            draws[name].append(-pyro.param(name).unconstrained().grad.detach().double())
    worst = 0.0
    for name in PARAM_NAMES:
        samples = torch.stack(draws[name])
        mean, std_err = samples.mean(0), samples.std(0) / math.sqrt(num_repeats)
        assert bool((std_err > 0).all()), name
        z = ((mean - exact[name]) / std_err).abs()
        worst = max(worst, float(z.max()))
        assert bool((z < 4).all()), (name, mean, exact[name], std_err)
        assert float((exact[name].abs() / std_err).max()) > 10, name  # the check has teeth
    assert worst > 0.1  # the estimates really are noisy draws, not copies of the oracle


# ---------------------------------------------------------------- the optimum


def test_cavi_optimum_is_a_stationary_maximum(data, optimum):
    grads = elbo_gradient(data, optimum)
    assert max(float(g.abs().max()) for g in grads.values()) < 1e-8
    best = float(elbo(data, optimum))
    assert best > float(elbo(data, NormalChainParams.poor_init(NUM_DATA))) + 50
    # it is a maximum: random nearby points in unconstrained coordinates are worse
    gen = torch.Generator().manual_seed(0)
    base = optimum.as_tensors(torch.float64)
    for _ in range(5):
        moved = {}
        for name, value in base.items():
            step = 1e-3 * torch.randn(value.shape, generator=gen, dtype=torch.float64)
            moved[name] = value * step.exp() if name in POSITIVE_PARAM_NAMES else value + step
        assert float(elbo(data, moved)) < best
    # deterministic, and the same optimum from another start
    assert cavi(data).params == optimum
    other = cavi(data, init=NormalChainParams.poor_init(NUM_DATA)).params
    assert float(elbo(data, other)) == pytest.approx(best, abs=1e-9)
    assert other.z_loc == pytest.approx(optimum.z_loc, abs=1e-7)


def test_cavi_optimum_is_the_cavi_fixed_point(data, optimum):
    fixed = cavi_step(data, optimum)
    for name in PARAM_NAMES:
        a, b = getattr(fixed, name[2:]), getattr(optimum, name[2:])
        assert torch.allclose(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), atol=1e-8)
    # the closed-form coordinate optima: variances 1/2, 1/2, 1/(N+1); q(w2) concentration 2 + N/2
    assert optimum.w1_scale == pytest.approx(math.sqrt(0.5), rel=1e-8)
    assert optimum.v_scale == pytest.approx(math.sqrt(0.5), rel=1e-8)
    assert optimum.z_scale == pytest.approx(1 / math.sqrt(NUM_DATA + 1), rel=1e-8)
    assert optimum.w2_concentration == pytest.approx(W2_CONCENTRATION + NUM_DATA / 2, rel=1e-8)
    # CAVI from the poor init climbs monotonically to the same optimum
    params = NormalChainParams.poor_init(NUM_DATA)
    history = [float(elbo(data, params))]
    for _ in range(100):
        params = cavi_step(data, params)
        history.append(float(elbo(data, params)))
    assert all(b >= a - 1e-10 for a, b in zip(history, history[1:]))
    assert history[-1] == pytest.approx(float(elbo(data, optimum)), abs=1e-8)


def test_optimal_elbo_is_below_the_log_evidence(data, optimum):
    log_z = log_evidence_by_quadrature(data)
    best = float(elbo(data, optimum))
    assert best < log_z
    assert log_z - best < 10.0  # a loose bound, but the mean field is not absurd


# ---------------------------------------------------------------- guide and params


def test_guide_uses_documented_param_names_constraints_and_init(data):
    init = NormalChainParams.poor_init(NUM_DATA)
    trace = poutine.trace(mean_field_guide).get_trace(data, init)
    store = pyro.get_param_store()
    assert set(store.keys()) == set(PARAM_NAMES)
    assert_params_close(params_from_store(), init)
    assert store["q_y_loc"].shape == (NUM_DATA,) and store["q_w1_loc"].shape == ()
    for name in POSITIVE_PARAM_NAMES:  # Pyro's unconstrained coordinate is the logarithm
        assert torch.allclose(pyro.param(name).unconstrained(), pyro.param(name).log())
    for name in set(PARAM_NAMES) - POSITIVE_PARAM_NAMES:
        assert torch.equal(pyro.param(name).unconstrained(), pyro.param(name))
    assert all(trace.nodes[site]["fn"].has_rsample for site in ("w1", "w2", "v", "z", "y"))
    # afterwards the param store wins over init; the default init is the prior's shape
    mean_field_guide(data, NormalChainParams.default_init(NUM_DATA))
    assert_params_close(params_from_store(), init)
    pyro.clear_param_store()
    mean_field_guide(data)
    assert_params_close(params_from_store(), NormalChainParams.default_init(NUM_DATA))
    # elbo accepts the param store's (constrained) tensors and differentiates through them
    value = elbo(data, {name: pyro.param(name) for name in PARAM_NAMES})
    value.backward()
    assert pyro.param("q_z_loc").unconstrained().grad is not None


def test_params_round_trip_and_poor_init_is_poor_but_sensible(data):
    init = NormalChainParams.poor_init(NUM_DATA)
    assert NormalChainParams.from_tensors(init.as_tensors(torch.float64)) == init
    assert_params_close(NormalChainParams.from_tensors(init.as_tensors()), init)
    assert init.num_data == NUM_DATA
    grads = elbo_gradient(data, init)
    assert min(float(g.abs().min()) for g in grads.values()) > 0.05  # every coordinate has work to do
    assert math.isfinite(float(elbo(data, init)))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "bad, match",
    [
        ([0.1, 0.2, float("nan")], "data contains NaN at index 2"),
        ([float("-inf"), 0.2], "data contains inf at index 0"),
        ([], "data is empty"),
        (torch.zeros(3, 2), r"data must be 1-D, got shape \(3, 2\)"),
        (torch.tensor(1.0), r"data must be 1-D, got shape \(\)"),
        (["a", "b"], "data must be a 1-D array of real numbers"),
        (torch.tensor([True]), "got a boolean tensor"),
    ],
)
def test_bad_data_is_refused_everywhere(bad, match):
    with pytest.raises(ValueError, match=match):
        check_data(bad)
    init = NormalChainParams.default_init(3)
    entry_points = (
        model,
        mean_field_guide,
        lambda x: elbo(x, init),
        lambda x: elbo_gradient(x, init),
        lambda x: cavi_step(x, init),
        lambda x: log_joint(x, 0.0, 1.0, 0.0, 0.0, torch.zeros(3)),
    )
    for entry_point in entry_points:
        with pytest.raises(ValueError, match=match):
            entry_point(bad)
    assert len(pyro.get_param_store()) == 0  # nothing was created on the way


@pytest.mark.parametrize(
    "change, match",
    [
        ({"w1_scale": 0.0}, "w1_scale must be positive, got 0.0"),
        ({"w2_rate": -1.0}, "w2_rate must be positive"),
        ({"z_loc": float("nan")}, "z_loc must be finite, got nan"),
        ({"y_scale": (1.0, -0.5)}, r"y_scale\[1\] must be positive"),
        ({"y_loc": (0.0, float("inf"))}, r"y_loc\[1\] must be finite"),
        ({"y_loc": (0.0,)}, "y_loc and y_scale differ in length: 1 != 2"),
        ({"y_loc": ()}, "y_loc is empty"),
        ({"y_loc": torch.zeros(2, 1)}, r"y_loc must be 1-D, got shape \(2, 1\)"),
        ({"v_loc": "zero"}, "v_loc must be a real number"),
    ],
)
def test_bad_params_are_refused(change, match):
    values = {**NormalChainParams.default_init(2).__dict__, **change}
    with pytest.raises(ValueError, match=match):
        NormalChainParams(**values)


def test_bad_params_to_elbo_and_settings_are_refused(data):
    good = NormalChainParams.default_init(NUM_DATA).as_tensors(torch.float64)
    with pytest.raises(ValueError, match="q_z_scale must be finite and positive"):
        elbo(data, {**good, "q_z_scale": torch.tensor(-1.0)})
    with pytest.raises(ValueError, match="q_w1_loc must be finite"):
        elbo(data, {**good, "q_w1_loc": float("nan")})
    with pytest.raises(ValueError, match=r"q_y_loc must have shape \(20,\) for N = 20, got \(3,\)"):
        elbo(data, {**good, "q_y_loc": torch.zeros(3)})
    with pytest.raises(ValueError, match="params is missing 'q_v_loc'"):
        elbo(data, {k: v for k, v in good.items() if k != "q_v_loc"})
    with pytest.raises(ValueError, match="params must be a NormalChainParams or a mapping"):
        elbo(data, [1.0] * 10)
    with pytest.raises(ValueError, match="init must be a NormalChainParams"):
        mean_field_guide(data, init=good)
    with pytest.raises(ValueError, match="init has 3 local parameters but the data has N = 20"):
        mean_field_guide(data, init=NormalChainParams.default_init(3))
    with pytest.raises(ValueError, match="params have 3 local parameters but the data has N = 20"):
        cavi_step(data, NormalChainParams.default_init(3))
    with pytest.raises(ValueError, match="num_data must be a positive integer"):
        NormalChainParams.poor_init(0)
    with pytest.raises(ValueError, match="num_data must be a positive integer"):
        generate_data(num_data=True)
    with pytest.raises(ValueError, match="max_iters must be a positive integer"):
        cavi(data, max_iters=0)
    with pytest.raises(ValueError, match="tol must be a finite non-negative number"):
        cavi(data, tol=-1.0)
    with pytest.raises(ValueError, match="prior must be None"):
        cavi(data, prior=1.0)
    with pytest.raises(ValueError, match="missing parameters: q_w1_loc"):
        params_from_store()
    # a stale param store from another data set is named, not silently broadcast
    mean_field_guide(data[:5])
    with pytest.raises(ValueError, match=r"param store holds q_y_loc of shape \(5,\) but the data has N = 20"):
        mean_field_guide(data)
