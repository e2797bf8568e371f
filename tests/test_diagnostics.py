import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from scipy import stats

import pyro_vi.diagnostics
from pyro_vi.diagnostics import (
    GradientStats,
    fresh_svi_step,
    gradient_statistics,
    gradient_variance_table,
    log_importance_weights,
    machine,
    psis_khat,
    step_time_ratios,
    step_time_table,
    step_times,
)

X = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.5])
N = len(X)
M0, S0 = 0.2, 0.6  # a point where every term of the gradient matters


def model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    m = pyro.param("m", torch.tensor(M0))
    s = pyro.param("s", torch.tensor(S0), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(m, s))


def exact_gradient_moments():
    r"""
    Trace_ELBO with one particle, z = m + s eps, u = log s. The loss is
    -(log p(x, z) - log q(z)) with d log p / dz = a - (N+1) s eps,
    a = sum(x) - (N+1) m, and log q(z) = -eps^2/2 - u - const, so
        g_m = (N+1)(m + s eps) - sum(x)        (Gaussian)
        g_u = -1 - a s eps + b eps^2,  b = (N+1) s^2.
    """
    a = X.sum().item() - (N + 1) * M0
    b = (N + 1) * S0**2
    c1, c2 = -a * S0, b  # g_u - E g_u = c1 eps + c2 (eps^2 - 1)
    return {
        "m": ((N + 1) * M0 - X.sum().item(), ((N + 1) * S0) ** 2, None),
        "s": (-1.0 + b, c1**2 + 2 * c2**2, 3 * c1**4 + 60 * c1**2 * c2**2 + 60 * c2**4),
    }


def test_gradient_statistics_matches_closed_form():
    num_draws = 1000
    result = gradient_statistics(Trace_ELBO(), model, guide, X, num_draws=num_draws)
    assert set(result) == {"m", "s"}
    exact = exact_gradient_moments()
    for name, (mean, variance, fourth_moment) in exact.items():
        st = result[name]
        assert st.num_draws == num_draws
        assert st.mean.shape == () and st.variance.shape == ()
        assert abs(st.mean.item() - mean) < 4 * st.standard_error.item()
        assert st.standard_error.item() == pytest.approx(math.sqrt(st.variance.item() / num_draws))
        assert st.total_variance == pytest.approx(st.variance.item())
        assert st.snr.item() == pytest.approx(abs(st.mean.item()) / math.sqrt(st.variance.item()))
        if fourth_moment is None:
            # Gaussian gradient: (D - 1) S^2 / sigma^2 ~ chi2(D - 1)
            statistic = (num_draws - 1) * st.variance.item() / variance
            lo, hi = stats.chi2.ppf([1e-4, 1 - 1e-4], num_draws - 1)
            assert lo < statistic < hi
        else:
            # Var(S^2) ~ (mu_4 - sigma^4) / D
            sd = math.sqrt((fourth_moment - variance**2) / num_draws)
            assert abs(st.variance.item() - variance) < 4 * sd


def test_gradient_statistics_variance_shrinks_with_particles():
    # K particles average K independent gradients: variance / K
    elbo = Trace_ELBO(num_particles=8, vectorize_particles=True, max_plate_nesting=1)
    result = gradient_statistics(elbo, model, guide, X, num_draws=400, params=["m"])
    assert list(result) == ["m"]
    variance = exact_gradient_moments()["m"][1] / 8
    statistic = 399 * result["m"].variance.item() / variance
    lo, hi = stats.chi2.ppf([1e-4, 1 - 1e-4], 399)
    assert lo < statistic < hi


def test_gradient_statistics_leaves_params_and_grads_alone():
    guide(X)
    store = pyro.get_param_store()
    before = {name: p.detach().clone() for name, p in store.named_parameters()}
    m_unconstrained = pyro.param("m").unconstrained()
    m_unconstrained.grad = torch.tensor(7.0)
    gradient_statistics(Trace_ELBO(), model, guide, X, num_draws=5)
    for name, p in store.named_parameters():
        assert torch.equal(p.detach(), before[name])
    assert torch.equal(pyro.param("m").unconstrained().grad, torch.tensor(7.0))
    assert pyro.param("s").unconstrained().grad is None


def test_gradient_statistics_snr_edge_cases():
    def model_with_factor(x):
        theta = pyro.param("theta", torch.tensor(1.0))
        pyro.factor("linear", 3.0 * theta)
        model(x)

    def guide_with_unused(x):
        pyro.param("unused", torch.zeros(2))
        guide(x)

    result = gradient_statistics(Trace_ELBO(), model_with_factor, guide_with_unused, X, num_draws=3)
    theta, unused = result["theta"], result["unused"]
    assert theta.mean.item() == -3.0 and theta.variance.item() == 0.0
    assert math.isinf(theta.snr.item())
    assert unused.mean.shape == (2,)
    assert torch.isnan(unused.snr).all()
    assert unused.total_variance == 0.0


@pytest.mark.parametrize("num_draws", [0, 1])
def test_gradient_statistics_needs_two_draws(num_draws):
    with pytest.raises(ValueError, match=f"num_draws must be an integer >= 2, got {num_draws}"):
        gradient_statistics(Trace_ELBO(), model, guide, X, num_draws=num_draws)


def test_gradient_statistics_unknown_param():
    with pytest.raises(ValueError, match="nope"):
        gradient_statistics(Trace_ELBO(), model, guide, X, num_draws=2, params=["nope"])


def test_gradient_variance_table():
    def st(variance):
        return GradientStats(torch.zeros(2), torch.tensor(variance), num_draws=10)

    table = gradient_variance_table(
        {
            "Trace_ELBO": {"loc": st([1.0, 1.0]), "scale": st([0.5, 0.0])},
            "score": {"loc": st([10.0, 20.0]), "scale": st([0.0, 0.0])},
            "other": {"loc": st([0.5, 0.5])},
        },
        reference="Trace_ELBO",
    )
    lines = table.splitlines()
    assert "ratio to Trace_ELBO" in lines[0]
    assert set(lines[1]) <= {"-", " "}
    rows = [line.split() for line in lines[2:]]
    assert ["loc", "Trace_ELBO", "2", "1"] in rows
    assert ["loc", "score", "30", "15"] in rows
    assert ["loc", "other", "1", "0.5"] in rows
    assert ["scale", "score", "0", "0"] in rows
    assert ["scale", "other", "n/a", "n/a"] in rows
    with pytest.raises(ValueError, match="reference"):
        gradient_variance_table({"a": {}}, reference="b")


def _normal_log_weights(q_scale, num_draws=4000, seed=0):
    """log N(z; 0, 1) - log N(z; 0, q_scale), z ~ q."""
    torch.manual_seed(seed)
    q = dist.Normal(0.0, q_scale)
    z = q.sample((num_draws,))
    return dist.Normal(0.0, 1.0).log_prob(z) - q.log_prob(z)


def test_psis_khat_good_proposal():
    # q wider than p: bounded weights; q slightly narrower: k = 1 - 0.95^2 ~ 0.1
    assert psis_khat(_normal_log_weights(1.2)) < 0.5
    assert psis_khat(_normal_log_weights(0.95)) < 0.5


def test_psis_khat_heavy_tail():
    # q = N(0, s^2), p = N(0, 1), s < 1: P(w > t) ~ t^(-1 / (1 - s^2)), so k = 1 - s^2
    khat = psis_khat(_normal_log_weights(0.3))
    assert khat > 0.7
    assert abs(khat - 0.91) < 0.15


def test_psis_khat_generalized_pareto_weights():
    # weights drawn from a generalized Pareto with shape 0.6 have tail shape 0.6
    weights = stats.genpareto.rvs(c=0.6, size=10000, random_state=np.random.default_rng(1))
    assert abs(psis_khat(np.log(weights)) - 0.6) < 0.1


def test_psis_khat_equal_weights():
    assert psis_khat(torch.zeros(50)) == -math.inf


@pytest.mark.parametrize(
    "log_weights, match",
    [
        (np.zeros((5, 10)), "1-D"),
        (np.arange(10.0), "at least"),
        (np.array([0.0] * 29 + [np.nan]), "finite"),
        (np.array([0.0] * 29 + [np.inf]), "finite"),
    ],
)
def test_psis_khat_bad_input(log_weights, match):
    with pytest.raises(ValueError, match=match):
        psis_khat(log_weights)


def test_gradient_statistics_float_num_draws_is_refused_by_name():
    with pytest.raises(ValueError, match=r"num_draws must be an integer >= 2, got 3\.0 \(float\)"):
        gradient_statistics(Trace_ELBO(), model, guide, X, num_draws=3.0)
    assert len(pyro.get_param_store()) == 0  # refused before any draw
    stats = gradient_statistics(Trace_ELBO(), model, guide, X, num_draws=np.int64(3))
    assert stats["m"].num_draws == 3


def test_gradient_statistics_elbo_class_is_refused():
    with pytest.raises(ValueError, match=r"elbo must be an ELBO instance .*got the class Trace_ELBO; pass"):
        gradient_statistics(Trace_ELBO, model, guide, X, num_draws=3)


def test_log_importance_weights_are_log_p_minus_log_q():
    log_w = log_importance_weights(model, guide, X, num_samples=30, seed=2)
    assert log_w.shape == (30,) and log_w.dtype == torch.float64
    # the same draws by hand under the same seed
    pyro.set_rng_seed(2)
    expected = []
    for _ in range(30):
        z = dist.Normal(M0, S0).sample()
        log_p = dist.Normal(0.0, 1.0).log_prob(z) + dist.Normal(z, 1.0).log_prob(X).sum()
        expected.append(log_p - dist.Normal(M0, S0).log_prob(z))
    torch.testing.assert_close(log_w, torch.stack(expected).double(), rtol=1e-5, atol=1e-5)


def test_psis_khat_from_model_and_guide():
    post_var = 1.0 / (N + 1)
    post_mean = X.sum().item() * post_var

    def exact(x):
        pyro.sample("z", dist.Normal(post_mean, math.sqrt(post_var)))

    def narrow(x):
        pyro.sample("z", dist.Normal(post_mean, 0.3 * math.sqrt(post_var)))

    log_w = log_importance_weights(model, exact, X, num_samples=50, seed=0)
    torch.testing.assert_close(log_w, log_w[:1].expand(50), rtol=0, atol=1e-4)
    assert psis_khat(log_importance_weights(model, narrow, X, num_samples=2000, seed=0)) > 0.7


def test_log_importance_weights_refuse_a_guide_without_a_model_latent():
    def two_latents(x):
        pyro.sample("w", dist.Normal(0.0, 1.0))
        model(x)

    with pytest.raises(ValueError, match=r"latent site\(s\) 'w'"):
        log_importance_weights(two_latents, guide, X, num_samples=30)
    with pytest.raises(ValueError, match=r"num_samples must be an integer >= 1, got 2\.5"):
        log_importance_weights(model, guide, X, num_samples=2.5)


def test_psis_khat_refuses_non_numbers():
    with pytest.raises(
        ValueError, match="log_weights must be a 1-D tensor or array of numbers.*log_importance_weights"
    ):
        psis_khat(["a"] * 30)


# ---- what a step costs


class FakeClock:
    """``time.perf_counter`` for :func:`step_times`: only the steps move it."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def step(self, seconds, calls):
        def step():
            calls.append(seconds)
            self.now += seconds

        return step


def test_step_times_times_each_step_in_turn_round_after_round(monkeypatch):
    clock, calls, built = FakeClock(), [], []
    monkeypatch.setattr(pyro_vi.diagnostics.time, "perf_counter", clock)
    seconds = {"fast": [0.002, 0.003], "slow": [0.006, 0.012]}  # per round

    def factory(name):
        def make():
            built.append(name)
            return clock.step(seconds[name][built.count(name) - 1], calls)

        return make

    times = step_times({name: factory(name) for name in seconds}, rounds=2, num_steps=4)
    assert built == ["fast", "slow", "fast", "slow"]  # a fresh step right before each timing
    assert len(calls) == 2 * 2 * (1 + 4)  # one untimed call, then num_steps on the clock
    assert list(times) == ["fast", "slow"]
    for name in seconds:
        assert times[name] == pytest.approx(seconds[name], rel=1e-12)
    ratios = step_time_ratios(times, "fast")
    assert ratios["slow"]["ratio_rounds"] == pytest.approx([3.0, 4.0])
    assert ratios["slow"]["ratio"] == pytest.approx(3.5)  # median of the rounds
    assert (ratios["slow"]["ratio_low"], ratios["slow"]["ratio_high"]) == pytest.approx((3.0, 4.0))
    assert ratios["slow"]["ms_per_step"] == pytest.approx(9.0)
    assert ratios["slow"]["ms_per_step_rounds"] == pytest.approx([6.0, 12.0])
    assert ratios["fast"]["ratio_rounds"] == [1.0, 1.0]


def test_step_time_table_rows_and_where_they_were_taken():
    text = step_time_table({"Trace_ELBO": [0.004, 0.002, 0.003], "other": [0.008, 0.005, 0.009]}, "Trace_ELBO")
    caption, header, rule, *rows = text.splitlines()
    assert caption.startswith("3 round(s) on ") and f"{torch.get_num_threads()} torch thread(s)" in caption
    assert header.split() == ["step", "ms/step", "ratio", "to", "Trace_ELBO", "lowest-highest"]
    assert rows[0].split() == ["Trace_ELBO", "3", "1", "1-1"]
    assert rows[1].split() == ["other", "8", "2.5", "2-3"]


def test_machine_says_how_many_threads_timed():
    where = machine()
    assert where["torch_threads"] == torch.get_num_threads()
    assert where["torch"] == torch.__version__ and where["pyro"] == pyro.__version__


def test_fresh_svi_steps_are_timed_in_a_param_store_of_their_own():
    pyro.clear_param_store()
    mine = pyro.param("mine", torch.tensor([1.0, 2.0]))
    losses = []

    def make():
        step = fresh_svi_step(model, guide, Trace_ELBO(), X, optim=pyro.optim.SGD({"lr": 0.01}))
        assert set(pyro.get_param_store()) == set()  # cleared: the first call creates m and s anew
        return lambda: losses.append(step())

    times = step_times({"Trace_ELBO": make}, rounds=2, num_steps=3)
    assert len(times["Trace_ELBO"]) == 2 and all(t > 0 for t in times["Trace_ELBO"])
    assert len(losses) == 8 and all(math.isfinite(loss) for loss in losses)
    assert set(pyro.get_param_store()) == {"mine"} and pyro.param("mine") is mine


def test_fresh_svi_step_steps_from_the_guide_initial_values():
    pyro.clear_param_store()
    pyro.param("m", torch.tensor(5.0))  # left over from an earlier fit
    step = fresh_svi_step(model, guide, Trace_ELBO(), X, optim=pyro.optim.SGD({"lr": 0.0}))
    step()
    assert pyro.param("m").item() == pytest.approx(M0)
