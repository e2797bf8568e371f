"""Tests for models/diffusion.py (question 4.1.26, Ho et al. 2020 eqs. 3-7).

Closed forms are checked against independent computations: the forward chain run step
by step, Bayes' rule on a grid, Monte Carlo estimates of each term with tolerances of
4 measured standard errors, and the exact log marginal of the linear-Gaussian model.
Seeds are fixed.
"""

import dataclasses
import math

import pytest
import torch

from models.diffusion import (
    AffineReverseProcess,
    alpha_bars,
    check_betas,
    decomposed_bound_terms,
    direct_bound,
    direct_bound_terms,
    exact_bound_terms,
    forward_marginal,
    forward_posterior,
    forward_step,
    gaussian_data_reverse_process,
    gaussian_log_prob,
    generate_mixture_data,
    ho_reverse_variances,
    linear_schedule,
    model_log_marginal,
    reverse_step,
    sample_forward_chain,
)

F64 = torch.float64
BETAS = linear_schedule(20, 1e-3, 0.3)
DATA = generate_mixture_data(12, seed=1)
FIT = gaussian_data_reverse_process(BETAS, DATA.mean(0), DATA.var(0))
MODELS = {
    "gaussian-fit": FIT,
    "ho-beta": dataclasses.replace(FIT, variance=ho_reverse_variances(BETAS, "beta", 2)),
    "ho-beta-tilde": dataclasses.replace(FIT, variance=ho_reverse_variances(BETAS, "beta_tilde", 2)),
    "variance x3": dataclasses.replace(FIT, variance=3 * FIT.variance),
    "shifted mean": dataclasses.replace(FIT, shift=FIT.shift + 0.1),
}


def generator(seed):
    return torch.Generator().manual_seed(seed)


def mean_and_se(samples, dim=0):
    return samples.mean(dim), samples.std(dim) / math.sqrt(samples.shape[dim])


# ----------------------------------------------------------------------------- forward process


def test_alpha_bars_are_cumulative_products():
    expected = [1.0]
    for beta in BETAS.tolist():
        expected.append(expected[-1] * (1 - beta))
    assert torch.allclose(alpha_bars(BETAS), torch.tensor(expected, dtype=F64), rtol=1e-12)


@pytest.mark.parametrize("t", [1, 5, 20])
def test_forward_marginal_matches_the_chain_run_step_by_step(t):
    num = 20000
    x0 = torch.tensor([1.5, -0.7], dtype=F64)
    g = generator(t)
    x = x0.expand(num, 2)
    for step in range(1, t + 1):
        mean, variance = forward_step(x, step, BETAS)
        x = mean + math.sqrt(variance) * torch.randn(x.shape, dtype=F64, generator=g)
    closed_mean, closed_variance = forward_marginal(x0, t, BETAS)
    mean, mean_se = mean_and_se(x)
    assert ((mean - closed_mean).abs() < 4 * mean_se).all(), (mean, closed_mean)
    variance = x.var(0)
    variance_se = closed_variance * math.sqrt(2 / (num - 1))  # Gaussian samples
    assert ((variance - closed_variance).abs() < 4 * variance_se).all(), (variance, closed_variance)


def test_sample_forward_chain_has_the_closed_form_marginals():
    x0 = torch.tensor([[0.3, 2.0]], dtype=F64)
    chain = sample_forward_chain(x0, BETAS, 20000, generator(0))
    assert chain.shape == (20000, 1, 21, 2)
    assert torch.equal(chain[:, :, 0], x0.expand(20000, 1, 2))
    for t in (1, 10, 20):
        closed_mean, closed_variance = forward_marginal(x0, t, BETAS)
        mean, mean_se = mean_and_se(chain[:, 0, t])
        assert ((mean - closed_mean[0]).abs() < 4 * mean_se).all()
        variance_se = closed_variance * math.sqrt(2 / 19999)
        assert ((chain[:, 0, t].var(0) - closed_variance).abs() < 4 * variance_se).all()


# ----------------------------------------------------------------------------- posterior (eqs. 6-7)


@pytest.mark.parametrize("t", [2, 7, 20])
def test_posterior_is_ho_et_al_equation_7(t):
    beta, alpha = BETAS[t - 1].item(), 1 - BETAS[t - 1].item()
    bar_t, bar_prev = math.prod(1 - b for b in BETAS[:t].tolist()), math.prod(1 - b for b in BETAS[: t - 1].tolist())
    x0, x_t = torch.tensor([0.4, -1.0], dtype=F64), torch.tensor([1.2, 0.3], dtype=F64)
    mean, variance = forward_posterior(x_t, x0, t, BETAS)
    expected_mean = (
        math.sqrt(bar_prev) * beta / (1 - bar_t) * x0 + math.sqrt(alpha) * (1 - bar_prev) / (1 - bar_t) * x_t
    )
    assert torch.allclose(mean, expected_mean, rtol=1e-12)
    assert variance == pytest.approx((1 - bar_prev) / (1 - bar_t) * beta, rel=1e-12)


@pytest.mark.parametrize("t", [2, 3, 12, 20])
def test_posterior_is_bayes_rule_on_a_grid(t):
    """q(x_{t-1} | x_t, x_0) proportional to q(x_t | x_{t-1}) q(x_{t-1} | x_0), normalized numerically (1-D)."""
    x0, x_t = torch.tensor([0.8], dtype=F64), torch.tensor([-0.5], dtype=F64)
    prior_mean, prior_variance = forward_marginal(x0, t - 1, BETAS)
    grid = torch.linspace(-6, 6, 200001, dtype=F64)[:, None]
    step_mean, step_variance = forward_step(grid, t, BETAS)
    log_density = gaussian_log_prob(x_t, step_mean, torch.tensor([step_variance], dtype=F64)) + gaussian_log_prob(
        grid, prior_mean, torch.tensor([prior_variance], dtype=F64)
    )
    weights = torch.softmax(log_density, 0)
    grid_mean = (weights * grid[:, 0]).sum()
    grid_variance = (weights * (grid[:, 0] - grid_mean) ** 2).sum()
    mean, variance = forward_posterior(x_t, x0, t, BETAS)
    assert grid_mean.item() == pytest.approx(mean.item(), abs=1e-7)
    assert grid_variance.item() == pytest.approx(variance, rel=1e-5)


def test_gaussian_data_reverse_process_is_bayes_rule_for_gaussian_data():
    """p(x_{t-1} | x_t) = q(x_{t-1} | x_t) for x_0 ~ N(m, s^2): Bishop eqs. 2.113-2.117."""
    m, s2 = torch.tensor([0.5, -1.0], dtype=F64), torch.tensor([2.0, 0.3], dtype=F64)
    process = gaussian_data_reverse_process(BETAS, m, s2)
    x_t = torch.tensor([0.7, 0.2], dtype=F64)
    bars = alpha_bars(BETAS)
    for t in (1, 2, 10, 20):
        prior_mean, prior_variance = bars[t - 1].sqrt() * m, bars[t - 1] * s2 + 1 - bars[t - 1]
        alpha, beta = 1 - BETAS[t - 1], BETAS[t - 1]
        variance = 1 / (1 / prior_variance + alpha / beta)
        mean = variance * (alpha.sqrt() * x_t / beta + prior_mean / prior_variance)
        got_mean, got_variance = reverse_step(process, x_t, t)
        assert torch.allclose(got_mean, mean, rtol=1e-10) and torch.allclose(got_variance, variance, rtol=1e-10)


# ----------------------------------------------------------------------------- the bound


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_term_matches_a_monte_carlo_estimate_of_itself(name):
    """L_{t-1} = E_{x_t ~ q(x_t|x_0)} E_{x_{t-1} ~ q(x_{t-1}|x_t,x_0)}[log q(x_{t-1}|x_t,x_0) - log p(x_{t-1}|x_t)],
    L_T = E[log q(x_T|x_0) - log p(x_T)], L_0 = -E log p(x_0|x_1), sampled with the
    per-step functions only (not sample_forward_chain)."""
    process, num = MODELS[name], 4000
    x0 = DATA[:3]
    exact = exact_bound_terms(x0, BETAS, process)
    g = generator(7)
    T = len(BETAS)
    for t in range(1, T + 1):
        mean, variance = forward_marginal(x0, t, BETAS)
        x_t = mean + math.sqrt(variance) * torch.randn((num,) + x0.shape, dtype=F64, generator=g)
        p_mean, p_variance = reverse_step(process, x_t, t)
        if t == 1:
            samples = -gaussian_log_prob(x0, p_mean, p_variance)
        else:
            q_mean, q_variance = forward_posterior(x_t, x0, t, BETAS)
            x_prev = q_mean + math.sqrt(q_variance) * torch.randn(x_t.shape, dtype=F64, generator=g)
            samples = gaussian_log_prob(x_prev, q_mean, torch.full((2,), q_variance, dtype=F64)) - gaussian_log_prob(
                x_prev, p_mean, p_variance
            )
        estimate, se = mean_and_se(samples)
        assert ((estimate - exact[:, t - 1]).abs() < 4 * se).all(), (t, estimate, exact[:, t - 1], se)
    mean, variance = forward_marginal(x0, T, BETAS)
    x_T = mean + math.sqrt(variance) * torch.randn((num,) + x0.shape, dtype=F64, generator=g)
    samples = gaussian_log_prob(x_T, mean, torch.full((2,), variance, dtype=F64)) - gaussian_log_prob(
        x_T, 0.0, torch.ones(2, dtype=F64)
    )
    estimate, se = mean_and_se(samples)
    assert ((estimate - exact[:, T]).abs() < 4 * se).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_the_two_forms_of_the_bound_agree(name):
    process = MODELS[name]
    chain = sample_forward_chain(DATA, BETAS, 2000, generator(3))
    direct = direct_bound(DATA, chain, BETAS, process)
    decomposed_terms = decomposed_bound_terms(DATA, chain, BETAS, process)
    decomposed = decomposed_terms.sum(-1)
    exact = exact_bound_terms(DATA, BETAS, process).sum(-1)
    for estimates in (direct, decomposed, direct - decomposed):
        assert estimates.shape == (2000, len(DATA))
    # per data point and for the data average, against each other (paired) and the closed form
    difference, difference_se = mean_and_se(direct - decomposed)
    assert (difference.abs() < 4 * difference_se).all(), (difference, difference_se)
    for estimates in (direct, decomposed):
        mean, se = mean_and_se(estimates)
        assert ((mean - exact).abs() < 4 * se.clamp_min(1e-12)).all(), (mean, exact, se)
    # every decomposed term is unbiased for its closed form
    term_mean, term_se = mean_and_se(decomposed_terms)
    exact_terms = exact_bound_terms(DATA, BETAS, process)
    assert ((term_mean - exact_terms).abs() <= 4 * term_se + 1e-12).all()


def test_direct_bound_terms_sum_to_the_direct_bound_for_every_chain():
    chain = sample_forward_chain(DATA, BETAS, 50, generator(4))
    for process in MODELS.values():
        terms = direct_bound_terms(DATA, chain, BETAS, process)
        assert terms.shape == (50, len(DATA), len(BETAS) + 1)
        assert torch.allclose(terms.sum(-1), direct_bound(DATA, chain, BETAS, process), atol=1e-9, rtol=0)


def test_decomposed_terms_are_rao_blackwellized_per_term():
    """Each closed-form KL at x_t has no more spread than the one-sample log-ratio it averages."""
    chain = sample_forward_chain(DATA, BETAS, 2000, generator(5))
    process = MODELS["ho-beta"]
    decomposed = decomposed_bound_terms(DATA, chain, BETAS, process).var(0).mean(0)
    direct = direct_bound_terms(DATA, chain, BETAS, process).var(0).mean(0)
    assert torch.allclose(decomposed[0], direct[0])  # L_0 is the same estimate in both forms
    assert (decomposed[1:] < direct[1:]).all()
    assert decomposed[-1] == 0  # L_T is exact


def test_bound_is_tight_for_the_exact_time_reversal():
    """x_0 ~ N(0, I) makes q(x_T) = N(0, I) = p(x_T) and p_theta the exact reverse of q, so
    p(x_{1:T} | x_0) = q(x_{1:T} | x_0): every direct estimate equals -log p_theta(x_0)."""
    process = gaussian_data_reverse_process(BETAS, torch.zeros(2), torch.ones(2))
    x0 = torch.randn(5, 2, dtype=F64, generator=generator(6))
    chain = sample_forward_chain(x0, BETAS, 200, generator(7))
    neg_log_marginal = -gaussian_log_prob(x0, 0.0, torch.ones(2, dtype=F64))
    assert torch.allclose(-model_log_marginal(x0, process), neg_log_marginal, rtol=1e-12)
    assert torch.allclose(direct_bound(x0, chain, BETAS, process), neg_log_marginal.expand(200, 5), atol=1e-10)
    assert torch.allclose(exact_bound_terms(x0, BETAS, process).sum(-1), neg_log_marginal, atol=1e-10)
    # the decomposed form still has spread: its terms do not cancel chain by chain
    assert (decomposed_bound_terms(x0, chain, BETAS, process).sum(-1).std(0) > 0.1).all()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bound_is_above_the_negative_log_marginal(name):
    process = MODELS[name]
    gap = exact_bound_terms(DATA, BETAS, process).sum(-1) + model_log_marginal(DATA, process)
    assert (gap >= -1e-10).all(), gap


def test_model_log_marginal_for_one_step():
    """T = 1: p(x_0) = N(c_1, a_1^2 + sigma_1^2)."""
    process = AffineReverseProcess(torch.tensor([[0.5, 2.0]]), torch.tensor([[1.0, -1.0]]), torch.tensor([[0.2, 0.1]]))
    x0 = torch.tensor([[0.3, 0.4]], dtype=F64)
    expected = gaussian_log_prob(x0, torch.tensor([1.0, -1.0], dtype=F64), torch.tensor([0.45, 4.1], dtype=F64))
    assert torch.allclose(model_log_marginal(x0, process), expected, rtol=1e-12)


def test_one_step_schedule():
    betas = linear_schedule(1, 0.3, 0.5)
    assert betas.tolist() == [0.3]
    process = gaussian_data_reverse_process(betas, DATA.mean(0), DATA.var(0))
    chain = sample_forward_chain(DATA, betas, 3000, generator(8))
    terms = decomposed_bound_terms(DATA, chain, betas, process)
    assert terms.shape == (3000, len(DATA), 2)
    difference, se = mean_and_se(direct_bound(DATA, chain, betas, process) - terms.sum(-1))
    assert (difference.abs() < 4 * se).all()


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "betas, match",
    [
        ([0.1, 0.0, 0.2], r"betas must lie in \(0, 1\), got betas\[1\] = 0.0"),
        ([0.1, 1.0], r"betas\[1\] = 1.0"),
        ([-0.1, 0.2], r"betas\[0\] = -0.1"),
        ([0.5, 1.5], r"betas\[1\] = 1.5"),
        ([0.1, float("nan")], "betas must be finite"),
        ([0.2, 0.1], r"non-decreasing, got betas\[1\] = 0.1 < betas\[0\] = 0.2"),
        ([], "non-empty 1-D"),
        ([[0.1, 0.2]], "non-empty 1-D"),
        (0.1, "non-empty 1-D"),
        ("abc", "betas must be real numbers"),
        (True, "boolean"),
    ],
)
def test_bad_betas_are_refused(betas, match):
    with pytest.raises(ValueError, match=match):
        check_betas(betas)
    with pytest.raises(ValueError, match=match):
        alpha_bars(betas)


def test_wrong_length_schedules_are_refused():
    with pytest.raises(ValueError, match="betas has length 3, expected num_steps = 4"):
        check_betas([0.1, 0.2, 0.3], num_steps=4)
    chain = sample_forward_chain(DATA, BETAS, 2, generator(0))
    for function in (direct_bound, direct_bound_terms, decomposed_bound_terms):
        with pytest.raises(ValueError, match="betas has length 19, expected num_steps = 20"):
            function(DATA, chain, BETAS[:-1], FIT)
    with pytest.raises(ValueError, match="betas has length 19, expected num_steps = 20"):
        exact_bound_terms(DATA, BETAS[:-1], FIT)


@pytest.mark.parametrize("num_steps", [0, -3, 2.5, True, "10"])
def test_fewer_than_one_step_is_refused(num_steps):
    with pytest.raises(ValueError, match="num_steps must be an integer >= 1"):
        linear_schedule(num_steps)


@pytest.mark.parametrize("start, end", [(0.0, 0.1), (0.2, 0.1), (0.1, 1.0), (-0.1, 0.5)])
def test_bad_linear_schedule_endpoints_are_refused(start, end):
    with pytest.raises(ValueError, match="need 0 < beta_start <= beta_end < 1"):
        linear_schedule(10, start, end)


def test_bad_steps_and_shapes_are_refused():
    x = torch.zeros(2, dtype=F64)
    with pytest.raises(ValueError, match=r"t must be in \[1, 20\]"):
        forward_step(x, 21, BETAS)
    with pytest.raises(ValueError, match="t must be an integer >= 1"):
        forward_step(x, 0, BETAS)
    with pytest.raises(ValueError, match=r"t must be an integer >= 2"):
        forward_posterior(x, x, 1, BETAS)
    with pytest.raises(ValueError, match=r"t must be in \[0, 20\]"):
        forward_marginal(x, 21, BETAS)
    with pytest.raises(ValueError, match="x_t has last dimension 3, expected D = 2"):
        forward_posterior(torch.zeros(3), x, 2, BETAS)
    with pytest.raises(ValueError, match="x_t has last dimension 3, expected D = 2"):
        reverse_step(FIT, torch.zeros(3), 1)
    with pytest.raises(ValueError, match="x0 must be finite"):
        forward_marginal(torch.tensor([float("inf"), 0.0]), 1, BETAS)
    chain = sample_forward_chain(DATA, BETAS, 2, generator(0))
    with pytest.raises(ValueError, match=r"chain must have shape \(\.\.\., T \+ 1 = 21, D\)"):
        direct_bound(DATA, chain[..., :-1, :], BETAS, FIT)
    with pytest.raises(ValueError, match=r"chain\[\.\.\., 0, :\] must equal x0"):
        direct_bound(DATA + 1, chain, BETAS, FIT)
    with pytest.raises(ValueError, match="num_samples must be an integer >= 1"):
        sample_forward_chain(DATA, BETAS, 0)


def test_bad_reverse_processes_are_refused():
    ones = torch.ones(3, 2)
    with pytest.raises(ValueError, match="variance must be positive"):
        AffineReverseProcess(ones, ones, torch.zeros(3, 2))
    with pytest.raises(ValueError, match=r"shift must have shape \(T, D\) equal to scale's, got \(3, 1\)"):
        AffineReverseProcess(ones, torch.ones(3, 1), ones)
    with pytest.raises(ValueError, match="process must be an AffineReverseProcess"):
        exact_bound_terms(DATA, BETAS, "model")
    with pytest.raises(ValueError, match=r"data_variance must be positive, got \[1.0, -1.0\]"):
        gaussian_data_reverse_process(BETAS, torch.zeros(2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="choice must be 'beta' or 'beta_tilde', got 'sigma'"):
        ho_reverse_variances(BETAS, "sigma", 2)
    with pytest.raises(ValueError, match="num_data must be an integer >= 1"):
        generate_mixture_data(0)
    with pytest.raises(ValueError, match="std must be a positive number, got -1"):
        generate_mixture_data(5, std=-1)
