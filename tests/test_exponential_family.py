"""Exponential-family descriptions: densities, mean parameters and Fisher information
against torch, closed forms, autograd and Monte Carlo (tolerances: 5 standard errors)."""

import numpy as np
import pytest
import torch
from torch.autograd.functional import hessian

from pyro_vi import FAMILIES, ExponentialFamily, NaturalParameterDomainError, get_family

NUM_DRAWS = 100_000
Z = 5.0  # standard errors allowed in Monte Carlo comparisons

# usual parameters of a small batch per family: last dimension = the family's parameters
PARAMS = {
    "poisson": [[3.0], [0.4]],
    "exponential": [[2.0], [0.3]],
    "gamma": [[3.0, 0.5], [0.7, 2.0]],
    "gamma_shape_scale": [[3.0, 2.0], [0.7, 0.5]],
    "normal": [[1.0, 2.0], [-0.5, 0.3]],
    "normal_precision": [[1.0, 4.0], [-0.5, 0.3]],
    "lognormal": [[0.3, 0.7], [-1.0, 0.2]],
}


def theta_of(name):
    return torch.tensor(PARAMS[name], dtype=torch.float64)


def moments(name, theta):
    """Closed-form E[t(x)] and Cov[t(x)] (the Hessian of A), per family."""
    p0, p1 = theta[..., 0], theta[..., -1]
    if name == "poisson":
        return p0[..., None], p0[..., None, None]
    if name == "exponential":
        return (1 / p0)[..., None], (1 / p0**2)[..., None, None]
    if name.startswith("gamma"):
        scale = p1 if name == "gamma_shape_scale" else 1 / p1
        mean = torch.stack([torch.digamma(p0) + scale.log(), p0 * scale], -1)
        cov = [[torch.polygamma(1, p0), scale], [scale, p0 * scale**2]]
        return mean, torch.stack([torch.stack(row, -1) for row in cov], -2)
    var = 1 / p1 if name == "normal_precision" else p1**2
    mean = torch.stack([p0, p0**2 + var], -1)
    cov = [[var, 2 * p0 * var], [2 * p0 * var, 4 * p0**2 * var + 2 * var**2]]
    return mean, torch.stack([torch.stack(row, -1) for row in cov], -2)


def draws(family, theta, seed):
    torch.manual_seed(seed)
    return family.distribution(*theta.unbind(-1)).sample((NUM_DRAWS,))


def assert_within_standard_errors(samples, expected):
    """``samples`` of shape (n, ...): their mean is within Z standard errors of ``expected``."""
    se = samples.std(0) / samples.shape[0] ** 0.5
    error = (samples.mean(0) - expected).abs()
    assert (error <= Z * se + 1e-12).all(), (error, se)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_log_prob_matches_torch(name):
    family, theta = FAMILIES[name], theta_of(name)
    x = draws(family, theta, seed=0)[:7]
    expected = family.distribution(*theta.unbind(-1)).log_prob(x)
    assert torch.allclose(family.log_prob(theta, x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_parameter_round_trip(name):
    family, theta = FAMILIES[name], theta_of(name)
    assert torch.allclose(family.usual_params(family.natural_params(theta)), theta, rtol=1e-12)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_mean_params(name):
    family, theta = FAMILIES[name], theta_of(name)
    eta = family.natural_params(theta)
    mean = family.mean_params(eta)
    assert mean.shape == theta.shape
    eta_ = eta.clone().requires_grad_(True)
    grad_a = torch.autograd.grad(family.log_normalizer(eta_).sum(), eta_)[0]
    assert torch.allclose(mean, grad_a, rtol=1e-12)
    assert torch.allclose(mean, moments(name, theta)[0], rtol=1e-10)
    assert_within_standard_errors(family.sufficient_stats(draws(family, theta, seed=1)), mean)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_fisher_natural(name):
    family, theta = FAMILIES[name], theta_of(name)
    eta = family.natural_params(theta)
    fisher = family.fisher_natural(eta)
    assert fisher.shape == theta.shape + (family.dim,)
    assert torch.allclose(fisher, moments(name, theta)[1], rtol=1e-10)
    for i in range(len(eta)):  # an unbatched autograd Hessian, point by point
        assert torch.allclose(fisher[i], hessian(family.log_normalizer, eta[i]), rtol=1e-10)
    # covariance of the score t(x) - E[t(x)] in natural parameters
    score = family.sufficient_stats(draws(family, theta, seed=2)) - family.mean_params(eta)
    assert_within_standard_errors(score[..., :, None] * score[..., None, :], fisher)


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_fisher_usual_is_covariance_of_torch_score(name):
    family, theta = FAMILIES[name], theta_of(name)
    x = draws(family, theta, seed=3)
    theta_ = theta.expand(NUM_DRAWS, *theta.shape).clone().requires_grad_(True)
    log_prob = family.distribution(*theta_.unbind(-1)).log_prob(x).sum()
    score = torch.autograd.grad(log_prob, theta_)[0]
    assert_within_standard_errors(score[..., :, None] * score[..., None, :], family.fisher(theta))


def test_batched_shapes():
    family = FAMILIES["normal"]
    theta = family.check_params((torch.randn(4, 3, dtype=torch.float64), torch.rand(4, 3, dtype=torch.float64) + 0.5))
    eta = family.natural_params(theta)
    assert theta.shape == (4, 3, 2)
    assert family.mean_params(eta).shape == (4, 3, 2)
    assert family.fisher_natural(eta).shape == (4, 3, 2, 2)
    assert family.fisher(theta).shape == (4, 3, 2, 2)
    flat = family.fisher(theta.reshape(12, 2)).reshape(4, 3, 2, 2)
    assert torch.allclose(family.fisher(theta), flat)


def test_gamma_shape_scale_fisher_and_inverse_closed_form():
    family = FAMILIES["gamma_shape_scale"]
    a = torch.tensor([0.3, 1.0, 3.0, 40.0], dtype=torch.float64)
    b = torch.tensor([0.5, 10.0, 2.0, 0.1], dtype=torch.float64)
    trigamma = torch.polygamma(1, a)
    expected = torch.stack([torch.stack([trigamma, 1 / b], -1), torch.stack([1 / b, a / b**2], -1)], -2)
    fisher = family.fisher((a, b))
    assert torch.allclose(fisher, expected, rtol=1e-12)
    inverse = torch.stack([torch.stack([a, -b], -1), torch.stack([-b, b**2 * trigamma], -1)], -2)
    inverse = inverse / (a * trigamma - 1)[:, None, None]
    assert torch.allclose(torch.linalg.inv(fisher), inverse, rtol=1e-10)


def test_bad_input_raises_clear_errors():
    gamma = FAMILIES["gamma"]
    with pytest.raises(ValueError, match="concentration must be finite and positive, got"):
        gamma.check_params((0.0, 1.0))
    with pytest.raises(ValueError, match="rate must be finite and positive"):
        gamma.log_prob((2.0, -1.0), torch.tensor([1.0]))
    with pytest.raises(ValueError, match="gamma: data must be positive, got 0.0"):
        gamma.log_prob((2.0, 1.0), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="data must be positive, got -2.0"):
        FAMILIES["gamma_shape_scale"].log_prob((2.0, 1.0), torch.tensor([-2.0]))
    with pytest.raises(ValueError, match="data must be a non-negative integer"):
        FAMILIES["poisson"].log_prob((2.0,), torch.tensor([1.5]))
    with pytest.raises(NaturalParameterDomainError, match="outside the domain of gamma.*concentration"):
        gamma.mean_params(torch.tensor([-1.5, -1.0]))
    with pytest.raises(NaturalParameterDomainError, match="outside the domain of normal.*scale"):
        FAMILIES["normal"].fisher_natural(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="expected 2 parameters"):
        gamma.check_params((1.0,))
    with pytest.raises(ValueError, match="one of"):
        get_family("beta")
    assert isinstance(get_family("poisson"), ExponentialFamily)


# ---------------------------------------------------------------------------
# issue 10: booleans refused, float32 under/overflow


@pytest.mark.parametrize("theta", [(True, 1.0), (0.0, np.bool_(True)), torch.tensor([True, True])])
def test_boolean_parameters_are_refused(theta):
    with pytest.raises(ValueError, match=r"normal: parameter (loc|scale|theta) must be a number, got the boolean"):
        FAMILIES["normal"].check_params(theta)


def test_integer_parameters_become_floats():
    theta = FAMILIES["gamma"].check_params(torch.tensor([2, 3]))
    assert theta.dtype == torch.get_default_dtype()
    torch.testing.assert_close(
        FAMILIES["gamma"].log_prob(torch.tensor([2, 3]), torch.tensor(0.5)),
        torch.distributions.Gamma(2.0, 3.0).log_prob(torch.tensor(0.5)),
    )


@pytest.mark.parametrize("scale", [1e-20, 1e-10, 1e10, 1e20])
def test_float32_normals_with_extreme_scales_are_valid(scale):
    normal = FAMILIES["normal"]
    theta = torch.tensor([0.5 * scale, scale])
    x = torch.tensor(0.25 * scale)
    reference = torch.distributions.Normal(theta[0].double(), theta[1].double()).log_prob(x.double())
    torch.testing.assert_close(normal.log_prob(theta, x), reference.float())  # torch's float32 one is NaN at 1e20
    if 1e-15 < scale < 1e15:  # F(theta) = diag(1/s^2, 2/s^2) is representable in float32 (1/s^4 inside is not)
        expected = torch.diag(torch.tensor([1.0, 2.0], dtype=torch.float64) / scale**2)
        torch.testing.assert_close(
            normal.fisher(theta), expected.float(), rtol=1e-5, atol=1e-6 * expected.abs().max().item()
        )  # the off-diagonal cancels
    else:  # refused, not silently flushed to zero or subnormal (issue 17)
        with pytest.raises(
            ValueError, match=r"Fisher information at loc=.*outside the range of torch.float32.*float64"
        ):
            normal.fisher(theta)
    grad = torch.tensor([1.0, 1.0])
    if scale**2 < torch.finfo(torch.float32).max and scale**2 / 2 > torch.finfo(torch.float32).tiny:
        torch.testing.assert_close(normal.natural_gradient(theta, grad), torch.tensor([scale**2, scale**2 / 2]))
    else:  # s^2 overflows (or underflows) float32: refused, not inf (or 0)
        with pytest.raises(ValueError, match="natural gradient at .* outside the range of torch.float32"):
            normal.natural_gradient(theta, grad)
    torch.testing.assert_close(
        normal.natural_gradient(theta.double(), grad.double()),
        torch.tensor([scale**2, scale**2 / 2], dtype=torch.float64),
    )
    eta64 = normal.natural_params(theta.double())
    torch.testing.assert_close(
        normal.mean_params(eta64), torch.tensor([0.5 * scale, 1.25 * scale**2], dtype=torch.float64)
    )
