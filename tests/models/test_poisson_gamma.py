"""Tests for models/poisson_gamma.py and guides/poisson_gamma.py.

Closed forms are checked against independent computations: adaptive quadrature
(scipy.integrate.quad) of exp(log_joint), Monte Carlo through Pyro traces, and
autograd; the numerical optimum against the analytic stationary point.
"""

import math

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO

from guides.poisson_gamma import (
    DEFAULT_INIT_THETA,
    EULER_GAMMA,
    THETA,
    PoissonGammaParams,
    elbo,
    exponential_guide,
    optimal_theta,
    params_from_store,
)
from models.poisson_gamma import (
    DEFAULT_PRIOR,
    PoissonGammaPrior,
    check_data,
    generate_data,
    log_evidence,
    log_joint,
    model,
    posterior,
    sufficient_statistics,
)
from tests.helpers import per_draw_log_prob
from tests.refusals import assert_each_refused

scipy_integrate = pytest.importorskip("scipy.integrate")

CASES = {
    "default": (lambda: generate_data(num_data=50, rate=3.0, seed=0), DEFAULT_PRIOR),
    "small_alpha_below_one": (lambda: torch.tensor([0.0, 2.0, 1.0]), PoissonGammaPrior(alpha=0.7, beta=0.5)),
    "all_zeros": (lambda: torch.zeros(4), PoissonGammaPrior(alpha=1.5, beta=2.0)),
    "large_counts": (lambda: generate_data(num_data=5, rate=40.0, seed=3), PoissonGammaPrior(alpha=3.0, beta=0.1)),
}


def quad_moments(data, prior):
    """log Z, E[lambda], Var[lambda] of exp(log_joint) by adaptive quadrature on (0, inf).

    The peak is located on a log-spaced grid (no closed form used) and the integral is
    split there, so quad cannot miss the mass.
    """
    grid = torch.logspace(-8, 4, 20001, dtype=torch.float64)
    values = log_joint(data, grid, prior)
    peak, shift = float(grid[values.argmax()]), float(values.max())

    def integral(power):
        def f(rate):
            return rate**power * math.exp(float(log_joint(data, rate, prior)) - shift)

        left = scipy_integrate.quad(f, 0.0, peak, epsabs=0, epsrel=1e-12, limit=200)[0]
        right = scipy_integrate.quad(f, peak, math.inf, epsabs=0, epsrel=1e-12, limit=200)[0]
        return left + right

    z0, z1, z2 = integral(0), integral(1), integral(2)
    mean = z1 / z0
    return shift + math.log(z0), mean, z2 / z0 - mean**2


def vectorized_log_weights(data, prior, theta, num_draws):
    """log p(X, lambda_s) - log q(lambda_s) for draws s of the guide, via traces."""
    pyro.clear_param_store()
    with pyro.plate("particles", num_draws, dim=-2):
        guide_trace = poutine.trace(exponential_guide).get_trace(data, prior, theta)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(data, prior)
    assert guide_trace.nodes["lambda"]["value"].shape == (num_draws, 1)
    assert model_trace.nodes["x"]["fn"].batch_shape == (num_draws, len(data))
    log_p = per_draw_log_prob(model_trace, num_draws)
    log_q = per_draw_log_prob(guide_trace, num_draws)
    return (log_p - log_q).detach().double()


def analytic_theta_star(data, prior):
    n, total, _ = sufficient_statistics(data)
    return (n + prior.beta) / (total + prior.alpha)


def elbo_derivatives(data, theta, prior):
    theta = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    (first,) = torch.autograd.grad(elbo(data, PoissonGammaParams(theta), prior), theta, create_graph=True)
    (second,) = torch.autograd.grad(first, theta)
    return float(first.detach()), float(second)


# ---------------------------------------------------------------- data


def test_generate_data_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    x = generate_data(num_data=40, rate=2.5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.shape == (40,) and x.dtype == torch.get_default_dtype()
    assert torch.equal(x, x.round()) and bool((x >= 0).all())
    assert torch.equal(x, generate_data(num_data=40, rate=2.5, seed=3))
    assert not torch.equal(x, generate_data(num_data=40, rate=2.5, seed=4))
    big = generate_data(num_data=20000, rate=2.5, seed=1)
    assert float(big.mean()) == pytest.approx(2.5, abs=4 * math.sqrt(2.5 / 20000))
    assert float(big.var()) == pytest.approx(2.5, rel=0.05)
    assert torch.equal(check_data(x), x)


def test_check_data_accepts_integer_dtypes_and_integral_floats():
    for data in ([0, 3, 7], torch.tensor([0, 3, 7]), torch.tensor([0.0, 3.0, 7.0], dtype=torch.float64), (0, 3, 7)):
        out = check_data(data)
        assert out.dtype == torch.get_default_dtype()
        assert out.tolist() == [0.0, 3.0, 7.0]


# ---------------------------------------------------------------- exact posterior and evidence


@pytest.mark.parametrize("case", sorted(CASES))
def test_log_evidence_and_posterior_match_quadrature(case):
    make_data, prior = CASES[case]
    data = make_data()
    log_z, mean, var = quad_moments(data, prior)
    assert log_evidence(data, prior) == pytest.approx(log_z, abs=1e-8)
    post = posterior(data, prior)
    assert isinstance(post, PoissonGammaPrior)
    assert post.mean == pytest.approx(mean, rel=1e-8)
    assert post.variance == pytest.approx(var, rel=1e-7)


def test_log_evidence_of_one_count_is_the_negative_binomial_pmf():
    prior = PoissonGammaPrior(alpha=2.5, beta=0.8)
    nb = pyro.distributions.NegativeBinomial(
        total_count=torch.tensor(2.5, dtype=torch.float64), probs=torch.tensor(1 / 1.8, dtype=torch.float64)
    )
    for k in (0, 1, 4, 17):
        expected = float(nb.log_prob(torch.tensor(float(k), dtype=torch.float64)))
        assert log_evidence([k], prior) == pytest.approx(expected, rel=1e-12)


def test_model_trace_log_prob_equals_log_joint():
    data = generate_data(num_data=12, rate=2.0, seed=5)
    prior = PoissonGammaPrior(alpha=1.3, beta=0.4)
    rate = torch.tensor(1.7)
    trace = poutine.trace(poutine.condition(model, data={"lambda": rate})).get_trace(data, prior)
    assert float(trace.log_prob_sum()) == pytest.approx(float(log_joint(data, rate, prior)), rel=1e-6)

    # the same inside an outer vectorized particle plate, per particle
    rates = torch.tensor([0.05, 0.9, 2.0, 11.0])[:, None]
    with pyro.plate("particles", 4, dim=-2):
        trace = poutine.trace(poutine.condition(model, data={"lambda": rates})).get_trace(data, prior)
    assert trace.nodes["x"]["fn"].batch_shape == (4, 12)
    expected = log_joint(data, rates.squeeze(-1), prior)
    assert torch.allclose(per_draw_log_prob(trace, 4).double(), expected, rtol=1e-5)


# ---------------------------------------------------------------- closed-form ELBO


@pytest.mark.parametrize("theta", [0.05, 0.33, 2.0])
def test_log_evidence_is_elbo_plus_kl_by_quadrature(theta):
    """log p(X) = ELBO(q) + KL(q || p(. | X)), the KL by quadrature of the exact posterior."""
    data, prior = CASES["default"][0](), DEFAULT_PRIOR
    log_z = log_evidence(data, prior)

    def integrand(rate):
        log_q = math.log(theta) - theta * rate
        log_post = float(log_joint(data, rate, prior)) - log_z
        return math.exp(log_q) * (log_q - log_post)

    pieces = ((0, 3.0), (3.0, math.inf))
    kl = sum(scipy_integrate.quad(integrand, a, b, limit=400, epsabs=1e-12)[0] for a, b in pieces)
    assert kl > 1.0
    assert log_z == pytest.approx(float(elbo(data, PoissonGammaParams(theta), prior)) + kl, abs=1e-6)


def test_elbo_matches_monte_carlo_through_pyro_traces():
    data, prior = CASES["default"][0](), DEFAULT_PRIOR
    theta = 0.5  # away from theta* = 0.331: every term matters
    pyro.set_rng_seed(0)
    num_draws = 20000
    log_w = vectorized_log_weights(data, prior, theta, num_draws)
    std_err = float(log_w.std()) / math.sqrt(num_draws)
    assert 1e-3 < std_err < 2.0
    exact = float(elbo(data, PoissonGammaParams(theta), prior))
    assert abs(float(log_w.mean()) - exact) < 4 * std_err

    # Pyro's own Trace_ELBO with vectorized particles estimates the same number
    pyro.clear_param_store()
    loss_fn = Trace_ELBO(num_particles=num_draws, vectorize_particles=True, max_plate_nesting=1)
    loss = loss_fn.loss(model, lambda x, p: exponential_guide(x, p, init_theta=theta), data, prior)
    assert abs(-loss - exact) < 4 * std_err


def test_elbo_expectations_are_those_of_the_exponential():
    """E[lambda] = 1/theta, E[log lambda] = -gamma - log theta, H = 1 - log theta, by quadrature."""
    theta = 1.7
    q = lambda r: theta * math.exp(-theta * r)  # noqa: E731
    e_rate = scipy_integrate.quad(lambda r: r * q(r), 0, math.inf)[0]
    e_log = scipy_integrate.quad(lambda r: math.log(r) * q(r), 0, math.inf)[0]
    entropy = scipy_integrate.quad(lambda r: (theta * r - math.log(theta)) * q(r), 0, math.inf)[0]
    assert e_rate == pytest.approx(1 / theta, rel=1e-10)
    assert e_log == pytest.approx(-EULER_GAMMA - math.log(theta), rel=1e-8)
    assert entropy == pytest.approx(1 - math.log(theta), rel=1e-8)


def test_elbo_is_differentiable_and_broadcasts():
    data, prior = CASES["default"][0](), DEFAULT_PRIOR
    log_theta = torch.tensor([-2.0, 0.0, 1.0], requires_grad=True)  # float32 leaf: result is float64
    values = elbo(data, PoissonGammaParams(log_theta.exp()), prior)
    assert values.shape == (3,) and values.dtype == torch.float64
    (grad,) = torch.autograd.grad(values.sum(), log_theta)
    n, total, _ = sufficient_statistics(data)
    # d/du of -(alpha + S) u - (beta + N) exp(-u)
    expected = -(prior.alpha + total) + (prior.beta + n) * torch.exp(-log_theta.detach().double())
    assert torch.allclose(grad.double(), expected, rtol=1e-5)


# ---------------------------------------------------------------- the optimum


@pytest.mark.parametrize("case", sorted(CASES))
def test_optimal_theta_is_the_analytic_stationary_maximum(case):
    make_data, prior = CASES[case]
    data = make_data()
    theta_star = optimal_theta(data, prior)
    n, total, _ = sufficient_statistics(data)
    assert theta_star == pytest.approx(analytic_theta_star(data, prior), rel=1e-12)
    first, second = elbo_derivatives(data, theta_star, prior)
    scale = (prior.alpha + total) / theta_star  # size of either term of the derivative
    assert abs(first) < 1e-10 * scale
    assert second < 0
    assert second == pytest.approx(-(prior.alpha + total) / theta_star**2, rel=1e-9)
    # the derivative changes sign across theta*, so the check has teeth
    assert elbo_derivatives(data, 0.5 * theta_star, prior)[0] > 0.1 * scale
    assert elbo_derivatives(data, 2.0 * theta_star, prior)[0] < -0.1 * scale
    # a maximum, not only a stationary point, and a lower bound that is strict when misspecified
    best = float(elbo(data, PoissonGammaParams(theta_star), prior))
    for factor in (0.9, 0.99, 1.01, 1.1):
        assert float(elbo(data, PoissonGammaParams(factor * theta_star), prior)) < best
    assert best <= log_evidence(data, prior)
    # q's mean matches the posterior mean at the optimum
    assert 1 / theta_star == pytest.approx(posterior(data, prior).mean, rel=1e-12)


def test_elbo_at_optimum_is_below_log_evidence_with_equality_only_when_well_specified():
    data, prior = CASES["default"][0](), DEFAULT_PRIOR
    gap = log_evidence(data, prior) - float(elbo(data, PoissonGammaParams(optimal_theta(data, prior)), prior))
    assert gap > 10.0  # alpha + S = 154: the exponential is far from the posterior
    # alpha + S = 1: the posterior Gamma(1, beta + N) IS an exponential, so the gap closes
    data, prior = torch.zeros(3), PoissonGammaPrior(alpha=1.0, beta=0.5)
    theta_star = optimal_theta(data, prior)
    assert theta_star == pytest.approx(3.5, rel=1e-12)
    assert float(elbo(data, PoissonGammaParams(theta_star), prior)) == pytest.approx(
        log_evidence(data, prior), abs=1e-12
    )


def test_guide_uses_documented_param_name_init_and_shapes():
    data = CASES["default"][0]()
    trace = poutine.trace(exponential_guide).get_trace(data)
    assert params_from_store().theta == DEFAULT_INIT_THETA
    assert trace.nodes["lambda"]["fn"].rate.item() == DEFAULT_INIT_THETA
    assert trace.nodes["lambda"]["fn"].has_rsample
    pyro.clear_param_store()
    with pyro.plate("particles", 7, dim=-2):
        trace = poutine.trace(exponential_guide).get_trace(data, DEFAULT_PRIOR, 0.25)
    assert trace.nodes["lambda"]["value"].shape == (7, 1)
    assert pyro.get_param_store().get_param(THETA).item() == pytest.approx(0.25)
    # the unconstrained parameter is log theta
    assert pyro.get_param_store()._params[THETA].item() == pytest.approx(math.log(0.25))
    # afterwards the param store wins over init_theta
    exponential_guide(data, DEFAULT_PRIOR, 9.0)
    assert params_from_store().theta == pytest.approx(0.25)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"alpha": 0.0}, "alpha must be positive, got 0.0"),
        ({"beta": -1.0}, "beta must be positive"),
        ({"alpha": float("nan")}, "alpha must be finite, got nan"),
        ({"beta": float("inf")}, "beta must be finite"),
        ({"alpha": "two"}, "alpha must be a real number"),
        ({"beta": torch.ones(2)}, r"beta must be a scalar, got shape \(2,\)"),
    ],
)
def test_prior_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PoissonGammaPrior(**kwargs)


@pytest.mark.parametrize(
    "data, match",
    [
        ([3, 0, 2, 5, -1, 2], "counts must be non-negative integers, got -1 at index 4"),
        ([1.0, 2.5, 3.0], "counts must be non-negative integers, got 2.5 at index 1"),
        ([1.0, float("nan")], "counts must be non-negative integers, got nan at index 1"),
        ([float("inf"), 1.0], "counts must be non-negative integers, got inf at index 0"),
        ([], "counts are empty"),
        (torch.zeros(3, 2), r"counts must be 1-D, got shape \(3, 2\)"),
        (torch.tensor(4.0), r"counts must be 1-D, got shape \(\)"),
        (["a", "b"], "counts must be an array of non-negative integers"),
        (torch.tensor([True, False]), "counts must be non-negative integers, got a boolean tensor"),
    ],
)
def test_bad_data_is_refused_everywhere(data, match):
    with pytest.raises(ValueError, match=match):
        check_data(data)
    entry_points = (
        model,
        posterior,
        log_evidence,
        sufficient_statistics,
        optimal_theta,
        lambda x: elbo(x, PoissonGammaParams(1.0)),
        lambda x: log_joint(x, 1.0),
    )
    for entry_point in entry_points:
        with pytest.raises(ValueError, match=match):
            entry_point(data)


@pytest.mark.parametrize("theta", [0.0, -1.0, float("nan"), float("inf"), torch.tensor([1.0, 0.0])])
def test_bad_theta_is_refused(theta):
    data = CASES["default"][0]()
    with pytest.raises(ValueError, match="theta must be finite and positive"):
        elbo(data, PoissonGammaParams(theta))
    if not isinstance(theta, torch.Tensor):
        with pytest.raises(ValueError, match="init_theta must be finite and positive"):
            exponential_guide(data, init_theta=theta)
    assert THETA not in pyro.get_param_store()  # nothing was created on the way


def test_bad_settings_are_refused():
    data = CASES["default"][0]()
    assert_each_refused(
        (lambda: exponential_guide(data, init_theta="1"), "init_theta must be a real number"),
        (lambda: optimal_theta(data, max_iters=0), "max_iters must be a positive integer"),
        (lambda: optimal_theta(data, tol=float("nan")), "tol must be a finite positive number"),
        (lambda: generate_data(num_data=0), "num_data must be a positive integer"),
        (lambda: generate_data(rate=-1.0), "rate must be a finite positive number"),
    )
