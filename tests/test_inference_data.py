import math
import warnings

import arviz as az
import matplotlib
import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer.autoguide import AutoNormal

from pyro_vi.inference_data import to_inference_data
from tests.programs import subsampled_model

matplotlib.use("Agg")

X = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.5, 0.9])
N = len(X)
LOC, SCALE = 0.7, 0.4  # q(z) = N(LOC, SCALE)
Y_LOC = torch.linspace(-1.0, 1.0, N)  # q(y_n) = N(Y_LOC[n], 0.5)


def model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    pyro.deterministic("z_squared", z**2)
    with pyro.plate("data", len(x)):
        y = pyro.sample("y", dist.Normal(0.0, 1.0))
        pyro.sample("x", dist.Normal(z + 0.1 * y, 1.0), obs=x)


def guide(x):
    pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(LOC)), SCALE))
    with pyro.plate("data", len(x)):
        pyro.sample("y", dist.Normal(pyro.param("y_loc", Y_LOC.clone()), 0.5))


@pytest.fixture(scope="module")
def idata():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    return to_inference_data(model, guide, X, num_samples=800, num_chains=4, seed=1)


def test_groups_and_shapes(idata):
    assert set(idata.groups()) == {"posterior", "posterior_predictive", "observed_data", "log_likelihood"}
    post = idata.posterior
    assert set(post.data_vars) == {"z", "z_squared", "y"}
    assert post["z"].dims == ("chain", "draw")
    assert post["z"].shape == (4, 200)
    assert post["y"].dims == ("chain", "draw", "data")
    assert post["y"].shape == (4, 200, N)
    assert np.allclose(post["z_squared"], post["z"] ** 2)
    assert idata.posterior_predictive["x"].dims == ("chain", "draw", "data")
    assert idata.log_likelihood["x"].shape == (4, 200, N)
    np.testing.assert_array_equal(idata.observed_data["x"].values, X.numpy())


def test_summary_matches_guide(idata):
    summary = az.summary(idata, var_names=["z", "y"])
    num_draws = 800
    assert abs(summary.loc["z", "mean"] - LOC) < 4 * SCALE / math.sqrt(num_draws)
    assert summary.loc["z", "sd"] == pytest.approx(SCALE, rel=0.1)
    for n in range(N):
        mean = summary.loc[f"y[{n}]", "mean"]
        assert abs(mean - Y_LOC[n].item()) < 4 * 0.5 / math.sqrt(num_draws)
    # independent draws split into chains: no between-chain difference
    assert (summary["r_hat"] < 1.02).all()
    assert (summary["ess_bulk"] > 400).all()


def test_log_likelihood_is_pointwise_and_unscaled(idata):
    z = torch.as_tensor(idata.posterior["z"].values)
    y = torch.as_tensor(idata.posterior["y"].values)
    expected = dist.Normal(z[..., None] + 0.1 * y, 1.0).log_prob(X)
    np.testing.assert_allclose(idata.log_likelihood["x"].values, expected.numpy(), rtol=1e-5)


def test_posterior_predictive_moments(idata):
    # x_rep_n = z + 0.1 y_n + eps: mean LOC + 0.1 Y_LOC[n], variance SCALE^2 + 0.01 * 0.25 + 1
    x_rep = idata.posterior_predictive["x"].values.reshape(-1, N)
    sd = math.sqrt(SCALE**2 + 0.0025 + 1.0)
    expected_mean = LOC + 0.1 * Y_LOC.numpy()
    assert np.all(np.abs(x_rep.mean(0) - expected_mean) < 4 * sd / math.sqrt(800))
    assert np.allclose(x_rep.std(0), sd, rtol=0.15)


def test_loo_runs_and_is_below_lppd(idata):
    loo = az.loo(idata)
    assert np.isfinite(loo.elpd_loo)
    log_lik = idata.log_likelihood["x"].values.reshape(-1, N)
    lppd = np.sum(np.logaddexp.reduce(log_lik, axis=0) - np.log(log_lik.shape[0]))
    assert loo.elpd_loo < lppd
    assert loo.p_loo > 0


def test_plot_posterior_runs(idata):
    import matplotlib.pyplot as plt

    axes = az.plot_posterior(idata, var_names=["z"])
    assert axes is not None
    plt.close("all")


def test_seed_reproducible_and_restores_global_rng():
    pyro.set_rng_seed(5)
    expected_next = torch.rand(3)
    pyro.set_rng_seed(5)
    a = to_inference_data(model, guide, X, num_samples=8, num_chains=2, seed=3)
    assert torch.equal(torch.rand(3), expected_next)
    b = to_inference_data(model, guide, X, num_samples=8, num_chains=2, seed=3)
    np.testing.assert_array_equal(a.posterior["y"].values, b.posterior["y"].values)
    c = to_inference_data(model, guide, X, num_samples=8, num_chains=2, seed=4)
    assert not np.array_equal(a.posterior["z"].values, c.posterior["z"].values)


def test_autoguide_and_observed_argument():
    def unconditioned(x):
        s = pyro.sample("s", dist.Gamma(2.0, 2.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(0.0, s))

    pyro.set_rng_seed(0)
    conditioned = pyro.poutine.condition(unconditioned, data={"x": X})
    auto = AutoNormal(conditioned)
    idata = to_inference_data(unconditioned, auto, X, num_samples=40, num_chains=2, observed={"x": X}, seed=0)
    assert list(idata.posterior.data_vars) == ["s"]  # no "s_unconstrained"
    assert (idata.posterior["s"].values > 0).all()
    np.testing.assert_array_equal(idata.observed_data["x"].values, X.numpy())
    assert idata.log_likelihood["x"].shape == (2, 20, N)


def test_group_flags():
    idata = to_inference_data(
        model,
        guide,
        X,
        num_samples=4,
        num_chains=1,
        posterior_predictive=False,
        log_likelihood=False,
        seed=0,
    )
    assert set(idata.groups()) == {"posterior", "observed_data"}


def _no_latent_model(x):
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(0.0, 1.0), obs=x)


def _empty_guide(x):
    pass


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(num_samples=10, num_chains=4), "num_samples"),
        (dict(num_samples=0), "num_samples"),
        (dict(num_samples=-4), "num_samples"),
        (dict(num_samples=4, num_chains=0), "num_chains"),
        (dict(num_samples=4, observed={"nope": X}), "nope"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        to_inference_data(model, guide, X, **kwargs)


def test_model_without_latents():
    with pytest.raises(ValueError, match="model"):
        to_inference_data(_no_latent_model, _empty_guide, X, num_samples=4)


def test_subsampled_plate_rejected():
    def q(x):
        pyro.sample("z", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="subsampled"):
        to_inference_data(subsampled_model, q, X, num_samples=4)


def test_positive_constraint_param_guide():
    def q(x):
        scale = pyro.param("q_scale", torch.tensor(0.5), constraint=constraints.positive)
        pyro.sample("z", dist.Normal(0.0, scale))
        with pyro.plate("data", len(x)):
            pyro.sample("y", dist.Normal(0.0, 1.0))

    idata = to_inference_data(model, q, X, num_samples=4, num_chains=2, seed=0)
    assert idata.posterior["z"].shape == (2, 2)


# ---------------------------------------------------------------------------
# issue 10: guides that lack a latent, pyro.factor, masks, argument types

MASK = torch.tensor([True, True, False, True, False, True])


def _z_guide(x):
    pyro.sample("z", dist.Normal(pyro.param("loc", torch.tensor(LOC)), SCALE))


def test_guide_without_a_model_latent_is_refused_naming_it():
    # model has z and y; this guide samples z only: y would be prior draws
    with pytest.raises(ValueError, match=r"no sample site for the model's latent site\(s\) 'y'.*prior"):
        to_inference_data(model, _z_guide, X, num_samples=4, num_chains=2)


def test_float_num_samples_is_refused_by_name():
    with pytest.raises(ValueError, match=r"num_samples must be an integer >= 1, got 8\.0 \(float\)"):
        to_inference_data(model, guide, X, num_samples=8.0, num_chains=2)
    idata = to_inference_data(model, guide, X, num_samples=np.int64(4), num_chains=np.int32(2), seed=0)
    assert idata.posterior["z"].shape == (2, 2)


def test_factor_is_a_density_term_not_an_observation():
    def with_factor(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        pyro.factor("penalty", -(z**2))
        with pyro.plate("data", len(x)):
            pyro.factor("pointwise", -0.1 * x.abs())
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    idata = to_inference_data(with_factor, _z_guide, X, num_samples=8, num_chains=2, seed=0)
    for group in ("observed_data", "posterior_predictive", "log_likelihood"):
        assert list(getattr(idata, group).data_vars) == ["x"]
    assert list(idata.posterior.data_vars) == ["z"]


def _masked_model(how):
    def masked(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            if how == "dist":
                pyro.sample("x", dist.Normal(z, 1.0).mask(MASK), obs=x)
            elif how == "poutine":
                with pyro.poutine.mask(mask=MASK):
                    pyro.sample("x", dist.Normal(z, 1.0), obs=x)
            else:
                pyro.sample("x", dist.Normal(z, 1.0), obs=x, obs_mask=MASK)

    return masked


def _imputing_guide(x):
    _z_guide(x)
    with pyro.plate("data", len(x)):
        pyro.sample("x_unobserved", dist.Normal(pyro.param("x_loc", torch.zeros(len(x))), 1.0))


@pytest.mark.parametrize("how", ["dist", "poutine", "obs_mask"])
def test_masked_observations_are_left_out_of_the_likelihood(how):
    q = _imputing_guide if how == "obs_mask" else _z_guide
    idata = to_inference_data(_masked_model(how), q, X, num_samples=40, num_chains=2, seed=0)
    site = "x_observed" if how == "obs_mask" else "x"
    observed = MASK.nonzero().squeeze(-1).numpy()
    log_lik = idata.log_likelihood[site]
    assert log_lik.dims == ("chain", "draw", site + "_point")
    np.testing.assert_array_equal(log_lik[site + "_point"].values, observed)
    np.testing.assert_array_equal(idata.observed_data[site].values, X.numpy()[observed])
    assert idata.posterior_predictive[site].shape == (2, 20, len(observed))
    z = torch.as_tensor(idata.posterior["z"].values)
    expected = dist.Normal(z[..., None], 1.0).log_prob(X[MASK])
    np.testing.assert_allclose(log_lik.values, expected.numpy(), rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 40 draws: arviz may warn about the k-hats
        loo = az.loo(idata, var_name=site)
    assert loo.n_data_points == len(observed)


def test_obs_mask_posterior_holds_only_the_imputed_points():
    idata = to_inference_data(_masked_model("obs_mask"), _imputing_guide, X, num_samples=8, num_chains=2, seed=0)
    imputed = idata.posterior["x_unobserved"].values
    assert np.isnan(imputed[:, :, MASK.numpy()]).all()
    assert np.isfinite(imputed[:, :, ~MASK.numpy()]).all()
    # the deterministic x: data where observed, the imputed draws elsewhere
    x = idata.posterior["x"].values
    np.testing.assert_array_equal(x[:, :, MASK.numpy()], np.broadcast_to(X[MASK].numpy(), (2, 4, 4)))
    np.testing.assert_array_equal(x[:, :, ~MASK.numpy()], imputed[:, :, ~MASK.numpy()])


def test_obs_mask_guide_without_the_imputed_site_is_refused():
    with pytest.raises(ValueError, match="'x_unobserved'"):
        to_inference_data(_masked_model("obs_mask"), _z_guide, X, num_samples=4, num_chains=2)


def test_a_fully_masked_observation_is_left_out():
    def masked(x):
        z = pyro.sample("z", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(z, 1.0).mask(False), obs=x)
            pyro.sample("x2", dist.Normal(z, 1.0), obs=x)

    idata = to_inference_data(masked, _z_guide, X, num_samples=4, num_chains=2, seed=0)
    assert list(idata.log_likelihood.data_vars) == ["x2"]
    assert list(idata.observed_data.data_vars) == ["x2"]


def _enumerated_mixture(x):
    loc = pyro.sample("loc", dist.Normal(0.0, 3.0))
    with pyro.plate("data", len(x)):
        c = pyro.sample("c", dist.Bernoulli(0.5), infer={"enumerate": "parallel"})
        pyro.sample("x", dist.Normal(loc * (2 * c - 1), 1.0), obs=x)


def _global_guide(x):
    pyro.sample("loc", dist.Normal(pyro.param("q_loc", torch.tensor(1.0)), 0.3))


def test_enumerated_sites_the_guide_lacks_are_left_out_of_the_posterior_only():
    # summed out by TraceEnum_ELBO: not in the posterior, and no group may rest on prior draws of them
    idata = to_inference_data(
        _enumerated_mixture,
        _global_guide,
        X,
        num_samples=8,
        num_chains=2,
        seed=0,
        log_likelihood=False,
        posterior_predictive=False,
    )
    assert list(idata.posterior.data_vars) == ["loc"]
    with pytest.raises(
        ValueError,
        match=r"latent site\(s\) 'c'.*the model enumerates 'c': to_inference_data leaves "
        r"them out only with log_likelihood=False and posterior_predictive=False",
    ):
        to_inference_data(_enumerated_mixture, _global_guide, X, num_samples=8, num_chains=2)
