"""Tests for models/earthquake.py and guides/earthquake.py.

References are independent of the code under test: scipy.stats log densities for the
Pyro program (z given, and z summed out by enumeration), autograd of the closed-form
ELBO at CAVI's fixed point, the generating parameters for recovery, and Monte Carlo
through Pyro traces for the closed-form ELBO.
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

from guides import earthquake
from guides.earthquake import EarthquakeParams
from models.earthquake import DEFAULT_HYPER, EarthquakeHyper, check_data, generate_data, model
from tests.helpers import (
    assert_cavi_optimum_is_stationary,
    assert_enumerated_svi_improves,
    assert_sampled_z_svi_improves,
    per_draw_log_prob,
)

PI = [0.3, 0.3, 0.4]
HYPER = EarthquakeHyper(tau=1.0, rho=0.05, nu=(0.5, -0.5), alpha=2.0, beta=0.3)
SEPARATED_MUS = np.array([[-8.0, 0.0], [0.0, 8.0], [8.0, -2.0]])
SEPARATED_RATES = np.array([2.0, 10.0, 30.0])


def overlapping_data():
    """Nearby clusters with similar rates: responsibilities stay uncertain."""
    return generate_data(60, PI, [[-1.5, 0.0], [0.0, 1.5], [1.5, -0.5]], [4.0, 6.0, 9.0], tau=1.0, seed=1)


def separated_data():
    return generate_data(300, PI, SEPARATED_MUS, SEPARATED_RATES, tau=1.0, seed=2)


def reference_log_prior(mu, rate, hyper):
    mu, rate = np.asarray(mu, dtype=np.float64), np.asarray(rate, dtype=np.float64)
    value = stats.gamma.logpdf(rate, hyper.alpha, scale=1 / hyper.beta).sum()
    return value + stats.multivariate_normal.logpdf(mu, mean=hyper.nu, cov=np.eye(2) / hyper.rho).sum()


def reference_log_lik_table(x, s, mu, rate, pi, hyper):
    """log pi_k + log Poisson(s_n | rate_k) + log N(x_n | mu_k, I / tau), shape (N, K)."""
    x, s, mu, rate = (np.asarray(v, dtype=np.float64) for v in (x, s, mu, rate))
    table = np.log(np.asarray(pi, dtype=np.float64)) + stats.poisson.logpmf(s[:, None], rate)
    for k in range(len(rate)):
        table[:, k] += stats.multivariate_normal.logpdf(x, mean=mu[k], cov=np.eye(2) / hyper.tau)
    return table


# ---------------------------------------------------------------- data and model


def test_generate_data_is_seeded_and_leaves_global_rng_alone():
    state = torch.get_rng_state()
    x, s, z = generate_data(3000, PI, SEPARATED_MUS, SEPARATED_RATES, tau=4.0, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    assert x.shape == (3000, 2) and s.shape == (3000,) and z.shape == (3000,)
    assert bool((s >= 0).all()) and torch.equal(s, s.round())
    again = generate_data(3000, PI, SEPARATED_MUS, SEPARATED_RATES, tau=4.0, seed=3)
    assert all(torch.equal(u, v) for u, v in zip((x, s, z), again))
    for k in range(3):
        xk, sk = x[z == k].double(), s[z == k].double()
        assert len(sk) / 3000 == pytest.approx(PI[k], abs=4 * math.sqrt(PI[k] * (1 - PI[k]) / 3000))
        assert np.allclose(xk.mean(0).numpy(), SEPARATED_MUS[k], atol=4 * 0.5 / math.sqrt(len(xk)))
        assert float(xk.var(0).mean()) == pytest.approx(0.25, rel=0.1)
        assert float(sk.mean()) == pytest.approx(SEPARATED_RATES[k], abs=4 * math.sqrt(SEPARATED_RATES[k] / len(sk)))


def test_model_log_prob_matches_scipy_with_z_given():
    x, s, z = overlapping_data()
    gen = torch.Generator().manual_seed(0)
    mus = torch.randn(4, 3, 2, generator=gen)
    rates = 10 * torch.rand(4, 3, generator=gen) + 0.5
    zs = torch.randint(0, 3, (4, len(s)), generator=gen)

    def reference(i):
        table = reference_log_lik_table(x, s, mus[i], rates[i], PI, HYPER)
        return reference_log_prior(mus[i], rates[i], HYPER) + table[np.arange(len(s)), zs[i].numpy()].sum()

    conditioned = poutine.condition(model, data={"mu": mus[0], "lambda": rates[0], "z": zs[0]})
    trace = poutine.trace(conditioned).get_trace(x, s, PI, HYPER)
    assert float(trace.log_prob_sum()) == pytest.approx(reference(0), rel=1e-6)

    with pyro.plate("particles", 4, dim=-2):
        conditioned = poutine.condition(model, data={"mu": mus, "lambda": rates, "z": zs})
        trace = poutine.trace(conditioned).get_trace(x, s, PI, HYPER)
    assert trace.nodes["x"]["fn"].batch_shape == (4, len(s))
    got = per_draw_log_prob(trace, 4)
    for i in range(4):
        assert float(got[i]) == pytest.approx(reference(i), rel=1e-5)


@pytest.mark.parametrize("num_particles, vectorize", [(1, False), (5, True)])
def test_enumeration_sums_z_out_exactly(num_particles, vectorize):
    x, s, _ = overlapping_data()
    gen = torch.Generator().manual_seed(1)
    mus = 2 * torch.randn((num_particles, 3, 2) if vectorize else (3, 2), generator=gen)
    rates = 10 * torch.rand((num_particles, 3) if vectorize else (3,), generator=gen) + 0.5
    conditioned = poutine.condition(model, data={"mu": mus, "lambda": rates})
    loss_fn = TraceEnum_ELBO(max_plate_nesting=1, num_particles=num_particles, vectorize_particles=vectorize)
    loss = loss_fn.loss(conditioned, lambda *args: None, x, s, PI, HYPER)
    expected = np.mean(
        [
            reference_log_prior(m, r, HYPER) + logsumexp(reference_log_lik_table(x, s, m, r, PI, HYPER), axis=1).sum()
            for m, r in zip(mus.reshape(-1, 3, 2), rates.reshape(-1, 3))
        ]
    )
    assert -loss == pytest.approx(expected, rel=1e-5)


# ---------------------------------------------------------------- CAVI


def test_cavi_history_is_non_decreasing_and_reaches_a_fixed_point():
    x, s, _ = overlapping_data()
    result = earthquake.cavi((x, s, PI), HYPER)
    assert result.converged and result.num_iters < 500
    history = torch.tensor(result.elbo_history, dtype=torch.float64)
    assert bool((history.diff() >= -1e-9 * history.abs()[1:]).all())
    assert history[-1] > history[0] + 1.0
    assert result.elbo == pytest.approx(float(earthquake.elbo((x, s, PI), result.params, HYPER)), rel=1e-12)
    again = earthquake.cavi_step((x, s, PI), result.params, HYPER)
    for name in ("r", "m", "p", "a", "b"):
        assert torch.allclose(getattr(again, name), getattr(result.params, name), rtol=1e-8, atol=1e-9)
    assert float(result.params.r.max(-1).values.min()) < 0.9


def test_cavi_fixed_point_is_stationary_for_the_closed_form_elbo():
    x, s, _ = overlapping_data()
    optimum = earthquake.cavi((x, s, PI), HYPER).params
    assert float(optimum.r.min()) > 1e-200

    # teeth: after moving every block a little, every block has a clearly non-zero gradient
    moved = EarthquakeParams(
        r=0.9 * optimum.r + 0.1 / 3, m=optimum.m + 0.1, p=optimum.p * 0.9, a=optimum.a * 1.1, b=optimum.b * 0.9
    )
    assert_cavi_optimum_is_stationary(
        lambda q: earthquake.elbo_gradient((x, s, PI), q, HYPER), optimum, moved, positive=("p", "a", "b")
    )


def test_global_updates_match_the_course_formulas():
    """q(mu_k): precision rho + tau N_k, mean (rho nu + tau sum_n r_nk x_n) / precision;
    q(lambda_k) = Gamma(alpha + sum_n r_nk S_n, beta + N_k): written out per component."""
    x, s, _ = overlapping_data()
    start = earthquake.cavi((x, s, PI), HYPER, max_iters=2).params
    new = earthquake.cavi_step((x, s, PI), start, HYPER)
    r, xs, ss = new.r.numpy(), x.double().numpy(), s.double().numpy()
    for k in range(3):
        n_k = sum(r[n, k] for n in range(len(ss)))
        precision = HYPER.rho + HYPER.tau * n_k
        mean = (HYPER.rho * np.array(HYPER.nu) + HYPER.tau * sum(r[n, k] * xs[n] for n in range(len(ss)))) / precision
        assert float(new.p[k]) == pytest.approx(precision, rel=1e-12)
        assert np.allclose(new.m[k].numpy(), mean, rtol=1e-12)
        assert float(new.a[k]) == pytest.approx(HYPER.alpha + sum(r[n, k] * ss[n] for n in range(len(ss))), rel=1e-12)
        assert float(new.b[k]) == pytest.approx(HYPER.beta + n_k, rel=1e-12)


def test_cavi_recovers_true_parameters_on_separated_data():
    x, s, z = separated_data()
    counts = np.bincount(z.numpy(), minlength=3)
    for init in (None, 0):
        result = earthquake.cavi((x, s, PI), DEFAULT_HYPER, init=init)
        assert result.converged
        p = result.params
        cost = ((p.m.numpy()[:, None, :] - SEPARATED_MUS[None]) ** 2).sum(-1)
        rows, cols = linear_sum_assignment(cost)
        # 4 standard errors of a cluster centre (per coordinate sd 1 / sqrt(tau N_k))
        error = np.abs(p.m.numpy()[rows] - SEPARATED_MUS[cols]).max(-1)
        assert np.all(error < 4 / np.sqrt(counts[cols]))
        rate_error = np.abs((p.a / p.b).numpy()[rows] - SEPARATED_RATES[cols])
        assert np.all(rate_error < 4 * np.sqrt(SEPARATED_RATES[cols] / counts[cols]))
        relabel = np.empty(3, dtype=int)
        relabel[rows] = cols
        assert np.mean(relabel[p.r.argmax(-1).numpy()] == z.numpy()) > 0.99


# ---------------------------------------------------------------- closed form vs Pyro programs


def test_closed_form_elbo_matches_monte_carlo_through_pyro_traces():
    x, s, _ = overlapping_data()
    optimum = earthquake.cavi((x, s, PI), HYPER).params
    q = EarthquakeParams(r=optimum.r, m=optimum.m + 0.3, p=optimum.p * 0.5, a=optimum.a * 0.7, b=optimum.b * 1.3)
    exact = float(earthquake.elbo((x, s, PI), q, HYPER))
    assert exact < float(earthquake.elbo((x, s, PI), optimum, HYPER)) - 5

    pyro.set_rng_seed(1)
    num_draws = 20000
    with pyro.plate("particles", num_draws, dim=-2):
        guide_trace = poutine.trace(earthquake.mean_field_guide).get_trace(x, s, PI, HYPER, q)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x, s, PI, HYPER)
    assert guide_trace.nodes["z"]["value"].shape == (num_draws, len(s))
    assert guide_trace.nodes["mu"]["value"].shape == (num_draws, 3, 2)
    log_w = (per_draw_log_prob(model_trace, num_draws) - per_draw_log_prob(guide_trace, num_draws)).detach().double()
    std_err = float(log_w.std()) / math.sqrt(num_draws)
    assert 1e-3 < std_err < 0.1
    assert abs(float(log_w.mean()) - exact) < 4 * std_err

    stored = earthquake.params_from_store()
    for name in ("r", "m", "p", "a", "b"):
        assert torch.allclose(getattr(stored, name), getattr(q, name), rtol=1e-5, atol=1e-6)


def poor_init(num_data):
    return EarthquakeParams(
        r=torch.full((num_data, 3), 1 / 3, dtype=torch.float64),
        m=[[-0.1, 0.0], [0.0, 0.1], [0.1, 0.0]],
        p=[1.0, 1.0, 1.0],
        a=[1.0, 1.0, 1.0],
        b=[0.2, 0.2, 0.2],
    )


def test_svi_with_trace_enum_and_global_guide_improves_the_elbo():
    x, s, _ = overlapping_data()
    fitted = partial(earthquake.params_from_store, (x, s, PI), HYPER)
    assert_enumerated_svi_improves(
        model, earthquake.global_guide, (x, s, PI), HYPER, poor_init(len(s)), earthquake.elbo, fitted
    )


def test_svi_with_vectorized_trace_elbo_and_mean_field_guide_samples_z():
    x, s, _ = overlapping_data()
    init = poor_init(len(s))
    assert_sampled_z_svi_improves(
        model, earthquake.mean_field_guide, (x, s, PI), HYPER, init, earthquake.elbo, earthquake.params_from_store
    )


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"tau": 0.0}, "tau must be finite and positive, got 0.0"),
        ({"rho": -1.0}, "rho must be finite and positive"),
        ({"beta": float("nan")}, "beta must be finite and positive, got nan"),
        ({"alpha": "two"}, "alpha must be a real number"),
        ({"nu": (0.0, 1.0, 2.0)}, "nu must be a pair of real numbers"),
        ({"nu": (0.0, float("inf"))}, "nu must be finite"),
    ],
)
def test_hyperparameters_are_validated(kwargs, match):
    with pytest.raises(ValueError, match=match):
        EarthquakeHyper(**kwargs)


GOOD_X = [[0.0, 1.0], [1.0, 2.0], [2.0, 0.5]]
GOOD_S = [0, 3, 7]


@pytest.mark.parametrize(
    "locations, counts, match",
    [
        (GOOD_X, [0, -1, 7], "counts must be non-negative integers, got -1 at index 1"),
        (GOOD_X, [0, 1.5, 7], "counts must be non-negative integers, got 1.5 at index 1"),
        (GOOD_X, [0, 3], "locations has 3 rows but counts has 2 entries"),
        ([0.0, 1.0, 2.0], GOOD_S, r"locations must have shape \(N, 2\), got \(3,\)"),
        ([[0.0, 1.0, 2.0]] * 3, GOOD_S, r"locations must have shape \(N, 2\), got \(3, 3\)"),
        (GOOD_X, [[0, 3, 7]], r"counts must be 1-D, got shape \(1, 3\)"),
        ([[0.0, 1.0], [float("nan"), 2.0], [2.0, 0.5]], GOOD_S, "locations contains NaN at row 1"),
        (GOOD_X, [0, float("nan"), 7], "counts must be non-negative integers, got nan at index 1"),
        (GOOD_X, [0, 3, float("inf")], "counts must be non-negative integers, got inf at index 2"),
        (torch.zeros(0, 2), [], "locations is empty"),
        ("abc", GOOD_S, r"locations must be an \(N, 2\) array of real numbers"),
    ],
)
def test_bad_data_is_refused_everywhere(locations, counts, match):
    with pytest.raises(ValueError, match=match):
        check_data(locations, counts)
    closed_form = (lambda *data: earthquake.cavi(data), lambda *data: earthquake.initial_params(data))
    for entry_point in (model, earthquake.global_guide, earthquake.mean_field_guide, *closed_form):
        with pytest.raises(ValueError, match=match):
            entry_point(locations, counts, PI)


def test_mismatched_number_of_components_is_refused():
    x, s, _ = overlapping_data()
    two = earthquake.cavi((x, s, [0.5, 0.5]), HYPER, max_iters=2).params
    with pytest.raises(ValueError, match="params has 2 components but pi has 3"):
        earthquake.elbo((x, s, PI), two, HYPER)
    with pytest.raises(ValueError, match="params has 2 components but pi has 3"):
        earthquake.cavi_step((x, s, PI), two, HYPER)
    with pytest.raises(ValueError, match="init has 2 components but pi has 3"):
        earthquake.cavi((x, s, PI), HYPER, init=two)
    with pytest.raises(ValueError, match="init has 2 components but pi has 3"):
        earthquake.global_guide(x, s, PI, HYPER, two)
    with pytest.raises(ValueError, match="mus has 2 components but pi has 3"):
        generate_data(10, PI, [[0.0, 0.0], [1.0, 1.0]], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="rates has 2 components but pi has 3"):
        generate_data(10, PI, SEPARATED_MUS, [1.0, 2.0])
    with pytest.raises(ValueError, match=r"mus must have shape \(K, 2\), got \(3,\)"):
        generate_data(10, PI, [0.0, 1.0, 2.0], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match=r"m must have shape \(3, 2\) for 3 components, got \(2, 2\)"):
        earthquake.responsibilities((x, s, PI), two.m, two.p, two.a, two.b)
    with pytest.raises(ValueError, match="params.r has 60 rows but data has 59 points"):
        earthquake.elbo((x[:59], s[:59], [0.5, 0.5]), two, HYPER)
    earthquake.mean_field_guide(x, s, [0.5, 0.5], HYPER)
    with pytest.raises(ValueError, match=r"param 'q_mu_loc' in the param store has shape \(2, 2\), expected \(3, 2\)"):
        earthquake.mean_field_guide(x, s, PI, HYPER)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"p": [1.0, -1.0, 1.0]}, "p must be finite and positive"),
        ({"m": [[0.0, 0.0], [1.0, float("nan")], [2.0, 2.0]]}, "m must be finite"),
        ({"m": [0.0, 1.0, 2.0]}, r"m must have shape \(K, 2\), got \(3,\)"),
        ({"a": [1.0, 1.0]}, "a has 2 components but r has 3"),
        ({"r": torch.full((4, 3), 0.2)}, "every row of r must sum to 1"),
    ],
)
def test_bad_variational_params_are_refused(fields, match):
    values = {
        "r": torch.full((4, 3), 1 / 3),
        "m": [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]],
        "p": [1.0] * 3,
        "a": [1.0] * 3,
        "b": [1.0] * 3,
    }
    with pytest.raises(ValueError, match=match):
        EarthquakeParams(**{**values, **fields})


def test_bad_settings_are_refused():
    x, s, _ = overlapping_data()
    with pytest.raises(ValueError, match="max_iters must be a positive integer"):
        earthquake.cavi((x, s, PI), max_iters=0)
    with pytest.raises(ValueError, match="tol must be a finite non-negative number"):
        earthquake.cavi((x, s, PI), tol=float("inf"))
    with pytest.raises(ValueError, match="init must be None, an int seed or an EarthquakeParams"):
        earthquake.cavi((x, s, PI), init=1.5)
    with pytest.raises(ValueError, match="cannot initialize 3 components from 2 data points"):
        earthquake.cavi((GOOD_X[:2], GOOD_S[:2], PI))
    with pytest.raises(ValueError, match="tau must be finite and positive"):
        generate_data(10, PI, SEPARATED_MUS, SEPARATED_RATES, tau=0.0)
    with pytest.raises(ValueError, match="pi must sum to 1"):
        generate_data(10, [0.5, 0.6, 0.1], SEPARATED_MUS, SEPARATED_RATES)
    earthquake.global_guide(x, s, PI)
    with pytest.raises(ValueError, match="no 'q_z_probs' in the param store"):
        earthquake.params_from_store()
