"""Tests for models/normal_gamma.py and guides/normal_gamma.py.

Closed forms are checked against independent computations: a fine float64 grid over
(mu, tau) of exp(log_joint), Monte Carlo through Pyro traces, and autograd.
"""

import dataclasses
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from guides.normal_gamma import (
    DEFAULT_INIT,
    MEAN_FIELD_FACTORS,
    NormalGammaParams,
    cavi,
    cavi_step,
    closed_form_loss,
    elbo,
    elbo_gradient,
    exact_structured_params,
    mean_field_guide,
    mean_field_score,
    params_from_store,
    structured_guide,
)
from models.normal_gamma import (
    COURSE_PRIOR,
    NormalGammaPrior,
    check_data,
    generate_data,
    log_evidence,
    log_joint,
    model,
    posterior,
    posterior_means,
)
from tests.helpers import per_draw_log_prob
from tests.refusals import assert_each_refused

SMALL_PRIOR = NormalGammaPrior(mu0=-0.5, lambda0=2.0, a0=3.0, b0=1.5)


def course_data():
    return generate_data(num_data=100, mu=1.0, tau=0.5, seed=0)


def small_data():
    return generate_data(num_data=5, mu=0.3, tau=2.0, seed=7)


# Grid ranges are chosen from the data scale, not from the closed-form posterior.
CASES = {
    "course": (course_data, COURSE_PRIOR, (-0.5, 2.5), (1e-6, 1.6)),
    "small": (small_data, SMALL_PRIOR, (-6.0, 6.0), (1e-6, 16.0)),
}


class Grid:
    """Trapezoid quadrature over a (mu, tau) rectangle in float64."""

    def __init__(self, mu_range, tau_range, num=1601):
        self.mu = torch.linspace(*mu_range, num, dtype=torch.float64)[:, None]
        self.tau = torch.linspace(*tau_range, num, dtype=torch.float64)[None, :]
        w_mu = torch.full((num,), (mu_range[1] - mu_range[0]) / (num - 1), dtype=torch.float64)
        w_tau = torch.full((num,), (tau_range[1] - tau_range[0]) / (num - 1), dtype=torch.float64)
        w_mu[[0, -1]] /= 2
        w_tau[[0, -1]] /= 2
        self.log_w = w_mu.log()[:, None] + w_tau.log()[None, :]

    def log_integral(self, log_f):
        return float(torch.logsumexp((log_f + self.log_w).flatten(), 0))

    def expectation(self, log_density, f):
        """E[f] under the density exp(log_density) (normalized on the grid)."""
        weights = torch.softmax((log_density + self.log_w).flatten(), 0)
        return float((weights * f.expand_as(log_density).flatten()).sum())


def grid_posterior(case):
    make_data, prior, mu_range, tau_range = CASES[case]
    data = make_data()
    grid = Grid(mu_range, tau_range)
    log_f = log_joint(data, grid.mu, grid.tau, prior)
    # The grid must hold the whole mass: the density is negligible on its edges.
    edges = torch.cat([log_f[0], log_f[-1], log_f[:, 0], log_f[:, -1]])
    assert float(edges.max() - log_f.max()) < -15
    return data, prior, grid, log_f


@pytest.fixture(scope="module")
def course_grid():
    return grid_posterior("course")


def vectorized_log_weights(guide, data, prior, params, num_draws):
    """log p(X, mu_s, tau_s) - log q(mu_s, tau_s) for draws s of the guide, via traces."""
    pyro.clear_param_store()
    with pyro.plate("particles", num_draws, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(data, prior, params)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(data, prior)
    log_p = per_draw_log_prob(model_trace, num_draws)
    log_q = per_draw_log_prob(guide_trace, num_draws)
    # the per-draw split agrees with Pyro's own total
    assert float(log_p.detach().sum()) == pytest.approx(float(model_trace.log_prob_sum().detach()), rel=1e-5)
    return (log_p - log_q).detach().double(), guide_trace


def as_elbo(data, params, prior=COURSE_PRIOR):
    return float(elbo(data, params, prior))


# ---------------------------------------------------------------- data


def test_generate_data_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    x = generate_data(num_data=50, mu=2.0, tau=4.0, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.shape == (50,) and x.dtype == torch.get_default_dtype()
    assert torch.equal(x, generate_data(num_data=50, mu=2.0, tau=4.0, seed=3))
    assert not torch.equal(x, generate_data(num_data=50, mu=2.0, tau=4.0, seed=4))
    big = generate_data(num_data=20000, mu=2.0, tau=4.0, seed=1)
    assert float(big.mean()) == pytest.approx(2.0, abs=4 * 0.5 / math.sqrt(20000))
    assert float(big.var()) == pytest.approx(0.25, rel=0.05)


# ---------------------------------------------------------------- exact posterior and evidence


@pytest.mark.parametrize("case", ["course", "small"])
def test_log_evidence_and_posterior_match_grid_integration(case):
    data, prior, grid, log_f = grid_posterior(case)
    assert log_evidence(data, prior) == pytest.approx(grid.log_integral(log_f), abs=1e-4)

    post = posterior(data, prior)
    means = posterior_means(data, prior)
    e_mu = grid.expectation(log_f, grid.mu)
    e_tau = grid.expectation(log_f, grid.tau)
    assert means["mu"] == post.mu0
    assert means["mu"] == pytest.approx(e_mu, rel=1e-3, abs=1e-4)
    assert means["tau"] == pytest.approx(e_tau, rel=1e-3)
    # the other two parameters, through Var[tau] = a_N / b_N^2 and E[tau (mu - mu_N)^2] = 1 / lambda_N
    var_tau = grid.expectation(log_f, (grid.tau - e_tau) ** 2)
    assert post.a0 / post.b0**2 == pytest.approx(var_tau, rel=1e-3)
    assert 1 / post.lambda0 == pytest.approx(grid.expectation(log_f, grid.tau * (grid.mu - e_mu) ** 2), rel=1e-3)


def test_model_trace_log_prob_equals_log_joint():
    data = course_data()
    mu, tau = torch.tensor(0.7), torch.tensor(0.3)
    trace = poutine.trace(poutine.condition(model, data={"mu": mu, "tau": tau})).get_trace(data)
    assert float(trace.log_prob_sum()) == pytest.approx(float(log_joint(data, mu, tau)), rel=1e-6)

    # the same inside an outer vectorized particle plate, per particle
    mus = torch.tensor([-1.0, 0.2, 1.0, 3.0])[:, None]
    taus = torch.tensor([0.05, 0.5, 1.0, 4.0])[:, None]
    with pyro.plate("particles", 4, dim=-2):
        trace = poutine.trace(poutine.condition(model, data={"mu": mus, "tau": taus})).get_trace(data, SMALL_PRIOR)
    expected = log_joint(data, mus.squeeze(-1), taus.squeeze(-1), SMALL_PRIOR)
    assert torch.allclose(per_draw_log_prob(trace, 4).double(), expected, rtol=1e-5)


def test_model_and_guides_run_under_vectorized_trace_elbo():
    data = course_data()
    for guide in (mean_field_guide, structured_guide):
        pyro.clear_param_store()
        loss_fn = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
        with pyro.plate("particles", 8, dim=-2):
            trace = poutine.trace(guide).get_trace(data)
        assert trace.nodes["mu"]["value"].shape == (8, 1)
        assert trace.nodes["tau"]["value"].shape == (8, 1)
        assert math.isfinite(loss_fn.loss(model, guide, data))
        assert params_from_store() == DEFAULT_INIT


# ---------------------------------------------------------------- closed-form ELBO


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_log_evidence_is_elbo_plus_kl_for_random_q(course_grid, seed):
    """Question 1.1.1: log p(X) = ELBO(q) + KL(q || p(.|X)), the KL by grid integration."""
    data, prior, grid, log_f = course_grid
    log_posterior = log_f - grid.log_integral(log_f)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(4, generator=gen, dtype=torch.float64).tolist()
    q = NormalGammaParams(
        m=1.05 + 0.15 * z[0],
        lam=45.0 * math.exp(0.3 * z[1]),
        a=40.0 * math.exp(0.3 * z[2]),
        b=80.0 * math.exp(0.3 * z[3]),
    )
    m, lam, a, b = (torch.tensor(v, dtype=torch.float64) for v in (q.m, q.lam, q.a, q.b))
    log_q = dist.Normal(m, lam**-0.5).log_prob(grid.mu) + dist.Gamma(a, b).log_prob(grid.tau)
    assert grid.log_integral(log_q) == pytest.approx(0.0, abs=1e-8)
    kl = grid.expectation(log_q, log_q - log_posterior)
    assert kl > 1e-3
    assert log_evidence(data, prior) == pytest.approx(as_elbo(data, q) + kl, abs=1e-6)


def test_elbo_matches_monte_carlo_through_pyro_traces():
    data = course_data()
    q = NormalGammaParams(m=0.8, lam=30.0, a=20.0, b=50.0)  # away from the optimum: every term matters
    pyro.set_rng_seed(0)
    num_draws = 20000
    log_w, _ = vectorized_log_weights(mean_field_guide, data, COURSE_PRIOR, q, num_draws)
    std_err = float(log_w.std()) / math.sqrt(num_draws)
    assert 1e-3 < std_err < 0.1
    exact = as_elbo(data, q)
    assert abs(float(log_w.mean()) - exact) < 4 * std_err

    # Pyro's own Trace_ELBO with vectorized particles estimates the same number
    pyro.clear_param_store()
    loss_fn = Trace_ELBO(num_particles=num_draws, vectorize_particles=True, max_plate_nesting=1)
    loss = loss_fn.loss(model, lambda x, prior=COURSE_PRIOR: mean_field_guide(x, prior, q), data)
    assert abs(-loss - exact) < 4 * std_err


def test_elbo_gradient_matches_finite_differences():
    data = course_data()
    q = NormalGammaParams(m=0.5, lam=3.0, a=2.0, b=5.0)
    grads = elbo_gradient(data, q)
    for name, grad in grads.items():
        eps = 1e-6 * max(1.0, abs(getattr(q, name)))
        up = as_elbo(data, dataclasses.replace(q, **{name: getattr(q, name) + eps}))
        down = as_elbo(data, dataclasses.replace(q, **{name: getattr(q, name) - eps}))
        assert float(grad) == pytest.approx((up - down) / (2 * eps), rel=1e-6, abs=1e-6)
        assert abs(float(grad)) > 1e-2  # not a stationary point, so the check has teeth


def test_closed_form_loss_is_minus_elbo_with_its_gradient_on_the_factors_params():
    data = course_data().double()
    q = NormalGammaParams(m=0.5, lam=3.0, a=2.0, b=5.0)
    pyro.clear_param_store()
    with poutine.trace(param_only=True) as tape:
        loss = closed_form_loss(model, lambda x, prior: mean_field_guide(x, prior, q), data)
    names = {name for _, pair in MEAN_FIELD_FACTORS.values() for name in pair}
    assert set(tape.trace.nodes) == names
    assert loss.item() == pytest.approx(-as_elbo(data, q), rel=1e-12)
    loss.backward()
    grads = elbo_gradient(data, q)
    store = pyro.get_param_store()
    for field, name in zip(("m", "lam", "a", "b"), ("q_mu_loc", "q_mu_precision", "q_tau_concentration", "q_tau_rate")):
        chain = 1.0 if field == "m" else getattr(q, field)  # d(value)/d(unconstrained): exp for positive params
        assert float(store[name].unconstrained().grad) == pytest.approx(-float(grads[field]) * chain, rel=1e-5)


def test_mean_field_score_matches_autograd():
    q = NormalGammaParams(m=0.3, lam=2.0, a=3.0, b=1.5)
    mu, tau = torch.tensor([0.1, 1.7], dtype=torch.float64), torch.tensor([0.4, 2.5], dtype=torch.float64)
    leaves = {k: torch.tensor(getattr(q, k), dtype=torch.float64, requires_grad=True) for k in ("m", "lam", "a", "b")}
    score = mean_field_score(q, mu, tau)
    for i in range(2):
        log_q = dist.Normal(leaves["m"], leaves["lam"] ** -0.5).log_prob(mu[i])
        log_q = log_q + dist.Gamma(leaves["a"], leaves["b"]).log_prob(tau[i])
        grads = torch.autograd.grad(log_q, list(leaves.values()))
        for name, grad in zip(leaves, grads):
            assert float(score[name][i]) == pytest.approx(float(grad), rel=1e-10)


# ---------------------------------------------------------------- CAVI


def test_cavi_converges_to_a_stationary_maximum():
    data = course_data()
    result = cavi(data)
    assert result.converged and result.num_iters < 100
    p = result.params

    # a fixed point: one more sweep changes nothing
    again = cavi_step(data, p)
    for name in ("m", "lam", "a", "b"):
        assert abs(getattr(again, name) - getattr(p, name)) < 1e-10 * max(1.0, abs(getattr(p, name)))

    # the ELBO history never decreases and starts far below
    history = torch.tensor(result.elbo_history, dtype=torch.float64)
    assert bool((history.diff() >= -1e-12 * history.abs()[1:]).all())
    assert history[0] < history[-1] - 10
    assert result.elbo == as_elbo(data, p)

    # the gradient of the closed-form ELBO vanishes there
    for name, grad in elbo_gradient(data, p).items():
        assert abs(float(grad)) * max(1.0, getattr(p, name)) < 1e-7

    # and every nearby or distant perturbation is worse
    gen = torch.Generator().manual_seed(0)
    for scale in (1e-3, 1e-2, 0.3):
        for _ in range(5):
            z = (scale * torch.randn(4, generator=gen, dtype=torch.float64)).tolist()
            q = NormalGammaParams(
                m=p.m + z[0], lam=p.lam * math.exp(z[1]), a=p.a * math.exp(z[2]), b=p.b * math.exp(z[3])
            )
            assert as_elbo(data, q) < result.elbo

    # mean field cannot reach the evidence; the gap is KL(q* || p(.|X)) > 0
    assert 0 < log_evidence(data) - result.elbo < 0.05
    assert p.m == pytest.approx(posterior(data).mu0, rel=1e-12)


def test_cavi_from_other_inits_and_prior_reaches_same_optimum():
    data = small_data()
    a = cavi(data, SMALL_PRIOR, init=NormalGammaParams(m=5.0, lam=0.01, a=0.5, b=20.0))
    b = cavi(data, SMALL_PRIOR, init=NormalGammaParams(m=-3.0, lam=100.0, a=30.0, b=0.1))
    assert a.converged and b.converged
    for name in ("m", "lam", "a", "b"):
        assert getattr(a.params, name) == pytest.approx(getattr(b.params, name), rel=1e-9)
    assert log_evidence(data, SMALL_PRIOR) > a.elbo


# ---------------------------------------------------------------- structured guide


def test_structured_guide_at_exact_params_has_constant_log_weight():
    data = course_data()
    pyro.set_rng_seed(1)
    exact = exact_structured_params(data)
    log_w, guide_trace = vectorized_log_weights(structured_guide, data, COURSE_PRIOR, exact, 2000)
    assert guide_trace.nodes["tau"]["value"].std() > 0.01  # the draws do differ
    log_z = log_evidence(data)
    tol = 1e-5 * abs(log_z)  # float32 arithmetic on terms of size ~ |log p(X)|
    assert float((log_w - log_z).abs().max()) < tol

    # elsewhere in the family the log weight varies
    off = NormalGammaParams(m=exact.m + 0.05, lam=exact.lam, a=exact.a, b=exact.b * 1.1)
    log_w, _ = vectorized_log_weights(structured_guide, data, COURSE_PRIOR, off, 2000)
    assert float(log_w.max() - log_w.min()) > 0.1


def test_guides_use_documented_param_names_and_init():
    data = course_data()
    init = NormalGammaParams(m=0.25, lam=2.0, a=3.0, b=4.0)
    for guide in (mean_field_guide, structured_guide):
        pyro.clear_param_store()
        guide(data, COURSE_PRIOR, init)
        store = pyro.get_param_store()
        assert set(store.keys()) == {"q_mu_loc", "q_mu_precision", "q_tau_concentration", "q_tau_rate"}
        assert params_from_store() == init
        assert init.means == {"mu": 0.25, "tau": 0.75}


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lambda0": 0.0}, "lambda0 must be positive, got 0.0"),
        ({"a0": -1.0}, "a0 must be positive"),
        ({"b0": float("nan")}, "b0 must be finite, got nan"),
        ({"lambda0": float("inf")}, "lambda0 must be finite"),
        ({"mu0": float("-inf")}, "mu0 must be finite"),
        ({"a0": "one"}, "a0 must be a real number"),
    ],
)
def test_prior_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NormalGammaPrior(**kwargs)


@pytest.mark.parametrize(
    "data, match",
    [
        ([0.1, 0.2, 0.3, float("nan"), 0.5], "data contains NaN at index 3"),
        ([0.1, float("inf")], "data contains inf at index 1"),
        ([], "data is empty"),
        (torch.zeros(3, 2), r"data must be 1-D, got shape \(3, 2\)"),
        (torch.tensor(1.0), r"data must be 1-D, got shape \(\)"),
        (["a", "b"], "data must be a 1-D array of real numbers"),
    ],
)
def test_bad_data_is_refused_everywhere(data, match):
    with pytest.raises(ValueError, match=match):
        check_data(data)
    for entry_point in (model, cavi, posterior, log_evidence, lambda x: elbo(x, DEFAULT_INIT)):
        with pytest.raises(ValueError, match=match):
            entry_point(data)


@pytest.mark.parametrize(
    "kwargs, match, elbo_match",
    [
        ({"lam": 0.0}, "lam must be positive, got 0.0", "lam must be finite and positive"),
        ({"a": -2.0}, "a must be positive", "a must be finite and positive"),
        ({"b": float("nan")}, "b must be finite", "b must be finite and positive"),
        ({"m": float("inf")}, "m must be finite", "m must be finite"),
    ],
)
def test_bad_variational_params_are_refused(kwargs, match, elbo_match):
    values = {"m": 0.0, "lam": 1.0, "a": 1.0, "b": 1.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        NormalGammaParams(**values)
    # a tensor that requires grad is kept (elbo is differentiable in it) and checked as such
    (name,) = kwargs
    with pytest.raises(ValueError, match=elbo_match):
        NormalGammaParams(**{**values, name: torch.tensor(values[name], requires_grad=True)})


def test_bad_settings_are_refused():
    data = course_data()
    assert_each_refused(
        (lambda: mean_field_guide(data, COURSE_PRIOR, init=(0.0, 1.0, 1.0, 1.0)), "init must be a NormalGammaParams"),
        (lambda: cavi(data, max_iters=0), "max_iters must be a positive integer"),
        (lambda: cavi(data, tol=float("nan")), "tol must be a finite non-negative number"),
        (lambda: generate_data(num_data=0), "num_data must be a positive integer"),
        (lambda: generate_data(tau=-1.0), "tau must be a finite positive number"),
    )
