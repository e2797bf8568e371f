"""Tests for models/gmm.py and guides/gmm.py (course 1.D.4).

References are independent of the code under test: scipy.stats log densities for the
Pyro program (with z given and with z summed out by enumeration), autograd of the
closed-form ELBO for CAVI's fixed point, the true generating means for recovery, and
Monte Carlo through Pyro traces for the closed-form ELBO.
"""

import math
from functools import partial

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO
from scipy import stats
from scipy.optimize import linear_sum_assignment
from scipy.special import logsumexp

from guides.gmm import (
    GMMParams,
    cavi,
    cavi_step,
    elbo,
    elbo_gradient,
    global_guide,
    initial_params,
    mean_field_guide,
    params_from_store,
    responsibilities,
)
from models.gmm import DEFAULT_PRIOR, GMMPrior, check_data, check_weights, generate_data, model
from tests.helpers import (
    assert_cavi_optimum_is_stationary,
    assert_enumerated_svi_improves,
    assert_sampled_z_svi_improves,
    per_draw_log_prob,
)

PI = [0.3, 0.3, 0.4]
PRIOR = GMMPrior(m0=0.5, lambda0=0.2, a0=2.0, b0=1.5)


def overlapping_data():
    """Components that overlap: responsibilities are far from 0/1, so every term matters."""
    return generate_data(60, PI, mus=[-2.0, 0.0, 2.5], taus=[1.0, 4.0, 0.5], seed=1)


def separated_data():
    return generate_data(300, PI, mus=[-10.0, 0.0, 10.0], taus=[1.0, 4.0, 0.5], seed=2)


def reference_log_joint(x, z, mu, tau, pi, prior):
    """log p(x, z, mu, tau) with scipy.stats, float64."""
    x, z, mu, tau, pi = (np.asarray(v, dtype=np.float64) for v in (x, z, mu, tau, pi))
    z = z.astype(int)
    value = stats.gamma.logpdf(tau, prior.a0, scale=1 / prior.b0).sum()
    value += stats.norm.logpdf(mu, prior.m0, 1 / np.sqrt(prior.lambda0 * tau)).sum()
    value += np.log(pi)[z].sum() + stats.norm.logpdf(x, mu[z], 1 / np.sqrt(tau[z])).sum()
    return value


def reference_log_joint_z_summed(x, mu, tau, pi, prior):
    """log p(x, mu, tau) = log sum_z p(x, z, mu, tau), with scipy."""
    x, mu, tau, pi = (np.asarray(v, dtype=np.float64) for v in (x, mu, tau, pi))
    value = stats.gamma.logpdf(tau, prior.a0, scale=1 / prior.b0).sum()
    value += stats.norm.logpdf(mu, prior.m0, 1 / np.sqrt(prior.lambda0 * tau)).sum()
    per_point = np.log(pi) + stats.norm.logpdf(x[:, None], mu, 1 / np.sqrt(tau))
    return value + logsumexp(per_point, axis=1).sum()


# ---------------------------------------------------------------- data and model


def test_generate_data_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    x, z = generate_data(4000, PI, mus=[-5.0, 0.0, 5.0], taus=[1.0, 4.0, 0.25], seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.shape == (4000,) and z.shape == (4000,) and x.dtype == torch.get_default_dtype()
    x2, z2 = generate_data(4000, PI, mus=[-5.0, 0.0, 5.0], taus=[1.0, 4.0, 0.25], seed=3)
    assert torch.equal(x, x2) and torch.equal(z, z2)
    assert not torch.equal(x, generate_data(4000, PI, mus=[-5.0, 0.0, 5.0], taus=[1.0, 4.0, 0.25], seed=4)[0])
    for k, (mu, tau) in enumerate(zip([-5.0, 0.0, 5.0], [1.0, 4.0, 0.25])):
        xk = x[z == k].double()
        assert len(xk) / 4000 == pytest.approx(PI[k], abs=4 * math.sqrt(PI[k] * (1 - PI[k]) / 4000))
        assert float(xk.mean()) == pytest.approx(mu, abs=4 / math.sqrt(tau * len(xk)))
        assert float(xk.var()) == pytest.approx(1 / tau, rel=0.1)


def test_model_log_prob_matches_scipy_with_z_given():
    x, z = overlapping_data()
    mu, tau = torch.tensor([-1.0, 0.5, 2.0]), torch.tensor([0.7, 3.0, 0.4])
    conditioned = poutine.condition(model, data={"mu": mu, "tau": tau, "z": z})
    trace = poutine.trace(conditioned).get_trace(x, PI, PRIOR)
    expected = reference_log_joint(x, z, mu, tau, PI, PRIOR)
    assert float(trace.log_prob_sum()) == pytest.approx(expected, rel=1e-6)

    # per draw, inside an outer vectorized particle plate at dim -2
    gen = torch.Generator().manual_seed(0)
    mus = torch.randn(4, 3, generator=gen)
    taus = torch.rand(4, 3, generator=gen) + 0.2
    zs = torch.randint(0, 3, (4, len(x)), generator=gen)
    with pyro.plate("particles", 4, dim=-2):
        trace = poutine.trace(poutine.condition(model, data={"mu": mus, "tau": taus, "z": zs})).get_trace(x, PI, PRIOR)
    assert trace.nodes["x"]["fn"].batch_shape == (4, len(x))
    got = per_draw_log_prob(trace, 4)
    for i in range(4):
        assert float(got[i]) == pytest.approx(reference_log_joint(x, zs[i], mus[i], taus[i], PI, PRIOR), rel=1e-5)


@pytest.mark.parametrize("num_particles, vectorize", [(1, False), (5, True)])
def test_enumeration_sums_z_out_exactly(num_particles, vectorize):
    """TraceEnum_ELBO with an empty guide and (mu, tau) fixed is deterministic:
    -mean_p log sum_z p(x, z, mu_p, tau_p)."""
    x, _ = overlapping_data()
    gen = torch.Generator().manual_seed(1)
    shape = (num_particles, 3) if vectorize else (3,)
    mus = 2 * torch.randn(shape, generator=gen)
    taus = torch.rand(shape, generator=gen) + 0.3
    conditioned = poutine.condition(model, data={"mu": mus, "tau": taus})
    loss_fn = TraceEnum_ELBO(max_plate_nesting=1, num_particles=num_particles, vectorize_particles=vectorize)
    loss = loss_fn.loss(conditioned, lambda *args: None, x, PI, PRIOR)
    expected = np.mean(
        [reference_log_joint_z_summed(x, m, t, PI, PRIOR) for m, t in zip(mus.reshape(-1, 3), taus.reshape(-1, 3))]
    )
    assert -loss == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- CAVI


def test_cavi_history_is_non_decreasing_and_reaches_a_fixed_point():
    x, _ = overlapping_data()
    result = cavi((x, PI), PRIOR)
    assert result.converged and result.num_iters < 500
    history = torch.tensor(result.elbo_history, dtype=torch.float64)
    assert bool((history.diff() >= -1e-9 * history.abs()[1:]).all())
    assert history[-1] > history[0] + 1.0  # the init is not already optimal
    assert result.elbo == pytest.approx(float(elbo((x, PI), result.params, PRIOR)), rel=1e-12)

    # one more sweep changes nothing
    again = cavi_step((x, PI), result.params, PRIOR)
    for name in ("r", "m", "l", "a", "b"):
        assert torch.allclose(getattr(again, name), getattr(result.params, name), rtol=1e-8, atol=1e-9)

    # the responsibilities are genuinely uncertain here, so the r-gradient has teeth
    assert float(result.params.r.max(-1).values.min()) < 0.9


def test_cavi_fixed_point_is_stationary_for_the_closed_form_elbo():
    x, _ = overlapping_data()
    optimum = cavi((x, PI), PRIOR).params
    assert float(optimum.r.min()) > 1e-200  # no underflow: the logits are finite

    # teeth: after moving every block a little, every block has a clearly non-zero gradient
    moved = GMMParams(
        r=0.9 * optimum.r + 0.1 / 3, m=optimum.m + 0.1, l=optimum.l * 0.9, a=optimum.a * 1.1, b=optimum.b * 0.9
    )
    assert_cavi_optimum_is_stationary(
        lambda q: elbo_gradient((x, PI), q, PRIOR), optimum, moved, positive=("l", "a", "b")
    )


def test_mu_update_weights_each_point_once():
    """q(mu_k) has precision E[tau_k](lambda0 + N_k) and mean
    (lambda0 m0 + sum_n r_nk x_n) / (lambda0 + N_k): checked against a direct
    quadratic fit of the expected log joint in mu_k (no extra factor N)."""
    x, _ = overlapping_data()
    p = cavi((x, PI), PRIOR, max_iters=3).params
    new = cavi_step((x, PI), p, PRIOR)
    # with r fixed at new.r and q(tau) at p: E_{-mu}[log p] as a function of mu_k on a grid
    x64 = x.double()
    e_tau = p.a / p.b
    for k in range(3):
        grid = torch.linspace(-3, 3, 7, dtype=torch.float64)
        values = (
            -0.5
            * e_tau[k]
            * (PRIOR.lambda0 * (grid - PRIOR.m0) ** 2 + (new.r[:, k, None] * (x64[:, None] - grid) ** 2).sum(0))
        )
        # exact quadratic: fit c2 mu^2 + c1 mu + c0
        design = torch.stack([grid**2, grid, torch.ones_like(grid)], -1)
        c2, c1, _ = torch.linalg.lstsq(design, values[:, None]).solution[:, 0]
        assert float(new.l[k]) == pytest.approx(float(-2 * c2), rel=1e-9)
        assert float(new.m[k]) == pytest.approx(float(-c1 / (2 * c2)), rel=1e-9, abs=1e-12)


def test_cavi_recovers_true_means_on_separated_data():
    x, z = separated_data()
    true_mus, true_taus = np.array([-10.0, 0.0, 10.0]), np.array([1.0, 4.0, 0.5])
    results = [cavi((x, PI), DEFAULT_PRIOR, init=init) for init in (None, 0, 5)]
    labelings = []
    for result in results:
        assert result.converged
        p = result.params
        cost = (p.m.numpy()[:, None] - true_mus[None, :]) ** 2
        rows, cols = linear_sum_assignment(cost)
        # tolerance: 4 standard errors of a component mean, sd / sqrt(N pi_k)
        counts = np.bincount(z.numpy(), minlength=3)
        tolerance = 4 / np.sqrt(true_taus * counts)
        assert np.all(np.abs(p.m.numpy()[rows] - true_mus[cols]) < tolerance[cols])
        e_tau = (p.a / p.b).numpy()[rows]
        assert np.all(np.abs(np.log(e_tau / true_taus[cols])) < 0.3)
        # hard assignments agree with the true labels after relabeling
        relabel = np.empty(3, dtype=int)
        relabel[rows] = cols
        assert np.mean(relabel[p.r.argmax(-1).numpy()] == z.numpy()) > 0.99
        labelings.append(tuple(relabel))
    # pi is known and unequal, so labelings are distinct optima unless they only swap
    # components of equal weight: None and seed 0 differ by swapping the two 0.3 components
    assert labelings[0] != labelings[1] and labelings[0][2] == labelings[1][2]
    assert results[0].elbo == pytest.approx(results[1].elbo, rel=1e-10)
    assert labelings[2][2] != labelings[0][2] and results[2].elbo < results[0].elbo - 0.1


# ---------------------------------------------------------------- closed form vs Pyro programs


def test_closed_form_elbo_matches_monte_carlo_through_pyro_traces():
    x, _ = overlapping_data()
    optimum = cavi((x, PI), PRIOR).params
    # away from the optimum, every global block moved; r keeps CAVI's uncertain
    # responsibilities (mixing r towards uniform would only add Monte Carlo noise)
    q = GMMParams(r=optimum.r, m=optimum.m + 0.3, l=optimum.l * 0.5, a=optimum.a * 0.7, b=optimum.b * 1.3)
    exact = float(elbo((x, PI), q, PRIOR))
    assert exact < float(elbo((x, PI), optimum, PRIOR)) - 5

    pyro.set_rng_seed(1)
    num_draws = 20000
    with pyro.plate("particles", num_draws, dim=-2):
        guide_trace = poutine.trace(mean_field_guide).get_trace(x, PI, PRIOR, q)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, PI, PRIOR)
    assert guide_trace.nodes["z"]["value"].shape == (num_draws, len(x))
    log_w = (per_draw_log_prob(model_trace, num_draws) - per_draw_log_prob(guide_trace, num_draws)).detach().double()
    std_err = float(log_w.std()) / math.sqrt(num_draws)
    assert 1e-3 < std_err < 0.1  # measured 0.031: a wrong lambda0 in the model (0.74 nats) is 24 SE
    assert abs(float(log_w.mean()) - exact) < 4 * std_err

    # the stored guide params are q, to float32 precision
    stored = params_from_store()
    for name in ("r", "m", "l", "a", "b"):
        assert torch.allclose(getattr(stored, name), getattr(q, name), rtol=1e-5, atol=1e-6)


def test_collapsed_bound_is_above_the_mean_field_elbo():
    """With z summed out (TraceEnum_ELBO + global_guide) the bound at CAVI's q(mu) q(tau)
    is at least the mean-field ELBO (Jensen over q(z))."""
    x, _ = overlapping_data()
    result = cavi((x, PI), PRIOR)
    pyro.set_rng_seed(0)
    loss_fn = TraceEnum_ELBO(max_plate_nesting=1, num_particles=200, vectorize_particles=True)

    def guide(data, pi, prior):
        return global_guide(data, pi, prior, result.params)

    estimates = np.array([-loss_fn.loss(model, guide, x, PI, PRIOR) for _ in range(10)])
    std_err = estimates.std(ddof=1) / math.sqrt(len(estimates))
    assert estimates.mean() > result.elbo - 4 * std_err
    assert set(pyro.get_param_store().keys()) == {"q_mu_loc", "q_mu_precision", "q_tau_concentration", "q_tau_rate"}


def poor_init(num_data):
    return GMMParams(
        r=torch.full((num_data, 3), 1 / 3, dtype=torch.float64),
        m=[-0.1, 0.0, 0.1],
        l=[1.0, 1.0, 1.0],
        a=[1.0, 1.0, 1.0],
        b=[1.0, 1.0, 1.0],
    )


def test_svi_with_trace_enum_and_global_guide_improves_the_elbo():
    x, _ = overlapping_data()
    # the fitted params take r from the CAVI update: the mean-field closed form improves as well
    fitted = partial(params_from_store, (x, PI))
    assert_enumerated_svi_improves(model, global_guide, (x, PI), PRIOR, poor_init(len(x)), elbo, fitted)


def test_svi_with_vectorized_trace_elbo_and_mean_field_guide_samples_z():
    x, _ = overlapping_data()
    assert_sampled_z_svi_improves(model, mean_field_guide, (x, PI), PRIOR, poor_init(len(x)), elbo, params_from_store)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lambda0": 0.0}, "lambda0 must be positive, got 0.0"),
        ({"a0": -1.0}, "a0 must be positive"),
        ({"b0": float("nan")}, "b0 must be finite, got nan"),
        ({"m0": float("inf")}, "m0 must be finite"),
        ({"a0": "one"}, "a0 must be a real number"),
    ],
)
def test_prior_rejects_bad_hyperparameters(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GMMPrior(**kwargs)


@pytest.mark.parametrize(
    "pi, match",
    [
        ([0.5, 0.6], "pi must sum to 1, got sum 1.1"),
        ([1.2, -0.2], r"pi must be positive, got pi\[1\] = -0.2"),
        ([[0.5, 0.5]], r"pi must be 1-D, got shape \(1, 2\)"),
        ([], "pi is empty"),
        ([float("nan"), 1.0], "pi must be finite"),
        (["a"], "pi must be a 1-D array of mixing weights"),
    ],
)
def test_bad_weights_are_refused(pi, match):
    x, _ = overlapping_data()
    with pytest.raises(ValueError, match=match):
        check_weights(pi)
    for entry_point in (model, global_guide, mean_field_guide, lambda *data: cavi(data)):
        with pytest.raises(ValueError, match=match):
            entry_point(x, pi)


@pytest.mark.parametrize(
    "data, match",
    [
        ([0.1, float("nan"), 0.3], "data contains NaN at index 1"),
        ([0.1, float("inf")], "data contains inf at index 1"),
        ([], "data is empty"),
        (torch.zeros(3, 2), r"data must be 1-D, got shape \(3, 2\)"),
    ],
)
def test_bad_data_is_refused_everywhere(data, match):
    with pytest.raises(ValueError, match=match):
        check_data(data)
    closed_form = (lambda *data: cavi(data), lambda *data: initial_params(data))
    for entry_point in (model, global_guide, mean_field_guide, *closed_form):
        with pytest.raises(ValueError, match=match):
            entry_point(data, PI)


def test_mismatched_number_of_components_is_refused():
    x, _ = overlapping_data()
    two = cavi((x, [0.5, 0.5]), PRIOR, max_iters=2).params
    with pytest.raises(ValueError, match="params has 2 components but pi has 3"):
        elbo((x, PI), two, PRIOR)
    with pytest.raises(ValueError, match="params has 2 components but pi has 3"):
        cavi_step((x, PI), two, PRIOR)
    with pytest.raises(ValueError, match="init has 2 components but pi has 3"):
        cavi((x, PI), PRIOR, init=two)
    with pytest.raises(ValueError, match="init has 2 components but pi has 3"):
        mean_field_guide(x, PI, PRIOR, two)
    with pytest.raises(ValueError, match="mus has 2 components but pi has 3"):
        generate_data(10, PI, mus=[0.0, 1.0], taus=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="taus has 4 components but pi has 3"):
        generate_data(10, PI, mus=[0.0, 1.0, 2.0], taus=[1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="m has 2 components but pi has 3"):
        responsibilities((x, PI), two.m, two.l, two.a, two.b)
    with pytest.raises(ValueError, match=r"params.r has 60 rows but data has 59 points"):
        elbo((x[:59], [0.5, 0.5]), two, PRIOR)
    # the param store from a 2-component fit does not silently feed a 3-component guide
    global_guide(x, [0.5, 0.5], PRIOR)
    with pytest.raises(ValueError, match=r"param 'q_mu_loc' in the param store has shape \(2,\), expected \(3,\)"):
        global_guide(x, PI, PRIOR)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"l": [1.0, 0.0, 1.0]}, "l must be finite and positive"),
        ({"m": [0.0, float("nan"), 1.0]}, "m must be finite"),
        ({"b": [1.0, 1.0]}, "b has 2 components but r has 3"),
        ({"r": torch.full((5, 3), 0.5)}, "every row of r must sum to 1"),
        ({"r": torch.ones(3)}, r"r must have shape \(N, K\), got \(3,\)"),
    ],
)
def test_bad_variational_params_are_refused(fields, match):
    values = {"r": torch.full((5, 3), 1 / 3), "m": [0.0, 1.0, 2.0], "l": [1.0] * 3, "a": [1.0] * 3, "b": [1.0] * 3}
    with pytest.raises(ValueError, match=match):
        GMMParams(**{**values, **fields})


def test_bad_settings_are_refused():
    x, _ = overlapping_data()
    with pytest.raises(ValueError, match="max_iters must be a positive integer"):
        cavi((x, PI), max_iters=0)
    with pytest.raises(ValueError, match="tol must be a finite non-negative number"):
        cavi((x, PI), tol=-1.0)
    with pytest.raises(ValueError, match="init must be None, an int seed or a GMMParams"):
        cavi((x, PI), init="quantiles")
    with pytest.raises(ValueError, match="cannot seed 3 components from 2 data points"):
        cavi(([0.0, 1.0], PI), init=0)
    with pytest.raises(ValueError, match="num_data must be a positive integer"):
        generate_data(0, PI, [0.0, 1.0, 2.0], [1.0, 1.0, 1.0])
    global_guide(x, PI)
    with pytest.raises(ValueError, match="no 'q_z_probs' in the param store"):
        params_from_store()
