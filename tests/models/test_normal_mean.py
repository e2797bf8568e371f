"""The Normal mean of the data-parallel study: the model's log density is the
one its docstring writes, the exact posterior is the posterior, and the
guide's exact ELBO gradient is the autograd gradient of the closed-form ELBO,
zero at the exact posterior."""

import math

import pyro
import pyro.poutine as poutine
import pytest
import torch

from guides.normal_mean import exact_gradient, guide
from models.normal_mean import PRIOR, SIGMA, exact_posterior, generate_data, make_model


def normal_log_density(x, loc, sd):
    return -0.5 * ((x - loc) / sd) ** 2 - math.log(sd) - 0.5 * math.log(2 * math.pi)


def test_the_model_density_and_its_subsample_scaling():
    data = generate_data(6, seed=3)
    indices = torch.tensor([1, 4])
    trace = poutine.trace(poutine.condition(make_model(6), {"loc": torch.tensor(0.7)})).get_trace(
        data[indices], indices
    )
    expected = normal_log_density(0.7, 0.0, PRIOR) + 3 * sum(
        normal_log_density(data[i].item(), 0.7, SIGMA) for i in (1, 4)
    )
    assert trace.log_prob_sum().item() == pytest.approx(expected, rel=1e-6)


def test_the_exact_posterior_is_bayes_rule_on_a_grid():
    data = generate_data(5, seed=0).double()
    grid = torch.linspace(-15, 15, 300_001, dtype=torch.float64)
    log_post = normal_log_density(grid, 0.0, PRIOR) + sum(normal_log_density(x, grid, SIGMA) for x in data)
    weights = torch.softmax(log_post, 0)
    mean = (weights * grid).sum().item()
    sd = (weights * (grid - mean) ** 2).sum().sqrt().item()
    assert exact_posterior(data) == pytest.approx((mean, sd), rel=1e-8)


def closed_form_elbo(data, m, log_s):
    """E_q[log p(x, loc)] + H[q] for q = Normal(m, exp(log_s)), term by term."""
    s2 = torch.exp(2 * log_s)
    likelihood = sum(normal_log_density(x, m, SIGMA) - s2 / (2 * SIGMA**2) for x in data)
    prior = normal_log_density(m, 0.0, PRIOR) - s2 / (2 * PRIOR**2)
    return likelihood + prior + log_s + 0.5 * math.log(2 * math.pi * math.e)


@pytest.mark.parametrize("m, s", [(0.0, 1.0), (1.3, 0.4), (-2.0, 3.0)])
def test_the_exact_gradient_is_the_closed_form_elbo_gradient(m, s):
    data = generate_data(7, seed=1).double()
    point = torch.tensor([m, math.log(s)], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(closed_form_elbo(data, point[0], point[1]), point)
    assert exact_gradient(data.sum().item(), len(data), m, s) == pytest.approx(grad.tolist(), rel=1e-10, abs=1e-12)


def test_the_exact_gradient_is_zero_at_the_exact_posterior():
    data = generate_data(9, seed=2)
    loc, sd = exact_posterior(data)
    assert exact_gradient(data.double().sum().item(), len(data), loc, sd) == pytest.approx([0.0, 0.0], abs=1e-12)


def test_the_guide_is_normal_m_s_from_0_and_1():
    pyro.clear_param_store()
    trace = poutine.trace(guide).get_trace(None, None)
    site = trace.nodes["loc"]
    assert (pyro.param("m").item(), pyro.param("s").item()) == (0.0, 1.0)
    value = site["value"].item()
    assert site["fn"].log_prob(site["value"]).item() == pytest.approx(normal_log_density(value, 0.0, 1.0), rel=1e-6)
    pyro.get_param_store()["s"] = torch.tensor(2.5)  # constrained positive: stored as its log
    assert pyro.get_param_store().get_param("s").unconstrained().item() == pytest.approx(math.log(2.5))
