import math
import os

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.distributions import constraints
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoNormal
from pyro.optim import Adam, ClippedAdam

from pyro_vi.training import FitResult, NonFiniteError, fit

X = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.5, 0.9, 1.1, -0.4, 0.8, 1.9])
N = len(X)
# z ~ N(0, 1), x_n ~ N(z, 1): posterior N(sum(x) / (N + 1), 1 / (N + 1)),
# evidence x ~ N(0, I + 11^T)
POST_MEAN = X.sum().item() / (N + 1)
POST_SD = 1.0 / math.sqrt(N + 1)
LOG_EVIDENCE = dist.MultivariateNormal(torch.zeros(N), torch.eye(N) + 1.0).log_prob(X).item()


def model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def guide(x):
    loc = pyro.param("loc", torch.tensor(-1.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale))


@pytest.fixture(autouse=True)
def fresh():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def test_fit_converges_to_exact_posterior():
    track = {"loc": lambda: pyro.param("loc").item(), "scale": lambda: pyro.param("scale")}
    result = fit(
        model, guide, Trace_ELBO(), ClippedAdam({"lr": 0.05, "lrd": 0.995}), X,
        num_steps=600, track=track,
    )
    assert isinstance(result, FitResult)
    assert result.num_steps == 600
    assert result.losses.shape == (600,)
    assert np.isfinite(result.losses).all()
    np.testing.assert_array_equal(result.elbo, -result.losses)
    assert result.losses[-50:].mean() < result.losses[:50].mean() - 1.0
    assert pyro.param("loc").item() == pytest.approx(POST_MEAN, abs=0.05)  # posterior sd 0.3
    assert pyro.param("scale").item() == pytest.approx(POST_SD, rel=0.1)
    # at q = exact posterior, log p(x, z) - log q(z) = log p(x) for every z
    assert result.losses[-20:].mean() == pytest.approx(-LOG_EVIDENCE, abs=0.05)
    assert result.seconds_per_step > 0
    assert result.tracked["loc"].shape == (600,)
    assert result.tracked["scale"].shape == (600,)
    assert result.tracked["loc"][-1] == pyro.param("loc").item()
    assert result.tracked["loc"][0] != -1.0  # recorded after the step


def test_fit_tracks_each_step():
    values = []
    result = fit(
        model, guide, Trace_ELBO(), Adam({"lr": 0.1}), X, num_steps=5,
        track={"loc": lambda: values.append(1) or pyro.param("loc").detach().clone()},
    )
    assert len(values) == 5
    loc = result.tracked["loc"]
    assert loc.shape == (5,)
    # Adam's first step moves each parameter by lr (times the sign of the gradient)
    assert abs(loc[0] - (-1.0)) == pytest.approx(0.1, rel=1e-4)


def _nan_gradient_guide(bad_step):
    calls = {"n": 0}

    def bad_guide(x):
        calls["n"] += 1
        offset = pyro.param("offset", torch.tensor(0.0))
        loc = pyro.param("loc", torch.tensor(-1.0))
        if calls["n"] == bad_step:
            # value 0, gradient inf * 0 -> nan
            loc = loc + torch.sqrt(offset - offset.detach()) * 0.0
        pyro.sample("z", dist.Normal(loc, 0.5))

    return bad_guide


def test_non_finite_gradient_names_step_and_param():
    track = {"offset": lambda: pyro.param("offset").item(), "loc": lambda: pyro.param("loc").item()}
    with pytest.raises(NonFiniteError, match=r"step 4\b.*offset") as info:
        fit(model, _nan_gradient_guide(4), Trace_ELBO(), Adam({"lr": 0.1}), X,
            num_steps=10, track=track)
    err = info.value
    assert isinstance(err, FloatingPointError)
    assert err.step == 4 and "offset" in err.names and math.isfinite(err.loss)
    assert err.losses.shape == (3,)
    assert "loc" not in str(err)  # loc's gradient is finite
    # the failing step took no optimizer step and left no gradient behind
    assert pyro.param("offset").unconstrained().grad is None or torch.equal(
        pyro.param("offset").unconstrained().grad, torch.tensor(0.0)
    )


@pytest.mark.filterwarnings("ignore:Encountered")
@pytest.mark.parametrize("log_factor, shown", [(-math.inf, "inf"), (math.nan, "nan")])
def test_non_finite_loss_names_step_and_value(log_factor, shown):
    calls = {"n": 0}

    def bad_model(x):
        calls["n"] += 1
        model(x)
        if calls["n"] == 3:
            pyro.factor("bad", torch.tensor(log_factor))

    with pyro.validation_enabled(False):  # validation would refuse a NaN factor itself
        with pytest.raises(NonFiniteError, match=r"step 3: loss is {}".format(shown)):
            fit(bad_model, guide, Trace_ELBO(), Adam({"lr": 0.1}), X, num_steps=10)


def test_non_finite_leaves_params_at_previous_step():
    loc_after = []

    with pytest.raises(NonFiniteError):
        fit(model, _nan_gradient_guide(3), Trace_ELBO(), Adam({"lr": 0.1}), X,
            num_steps=10, track={"loc": lambda: loc_after.append(pyro.param("loc").item())})
    assert len(loc_after) == 2
    assert pyro.param("loc").item() == loc_after[-1]


@pytest.mark.parametrize("num_steps", [0, -1])
def test_bad_num_steps(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        fit(model, guide, Trace_ELBO(), Adam({"lr": 0.1}), X, num_steps=num_steps)


def test_progress_bar(capsys):
    fit(model, guide, Trace_ELBO(), Adam({"lr": 0.1}), X, num_steps=3, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "loss=" in err
    fit(model, guide, Trace_ELBO(), Adam({"lr": 0.1}), X, num_steps=3)  # None: short run
    assert capsys.readouterr().err == ""


def _run(num_steps, path=None, resume=False, seed=0, make_guide=lambda: guide):
    pyro.set_rng_seed(seed)
    return fit(
        model, make_guide(), Trace_ELBO(), ClippedAdam({"lr": 0.1, "lrd": 0.99}), X,
        num_steps=num_steps, track={"total": _param_sum},
        checkpoint=path, checkpoint_every=10, resume=resume, overwrite=not resume and path is not None,
    )


def _param_sum():
    return sum(p.sum().item() for _, p in pyro.get_param_store().named_parameters())


def _params():
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


# a fresh AutoNormal, as in a new process: it draws random numbers when set up lazily
@pytest.mark.parametrize("make_guide", [lambda: guide, lambda: AutoNormal(model)],
                         ids=["hand-written", "AutoNormal"])
def test_checkpoint_resume_is_identical(tmp_path, make_guide):
    full = _run(20, tmp_path / "full.pt", make_guide=make_guide)
    full_params = _params()

    path = tmp_path / "part.pt"
    pyro.clear_param_store()
    _run(10, path, make_guide=make_guide)
    saved = torch.load(path, weights_only=True)
    assert saved["step"] == 10
    assert {"params", "optim", "history", "rng"} <= set(saved)

    pyro.clear_param_store()
    # the checkpoint's RNG state wins over the seed
    resumed = _run(20, path, resume=True, seed=123, make_guide=make_guide)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    np.testing.assert_array_equal(resumed.tracked["total"], full.tracked["total"])
    assert resumed.num_steps == 20
    params = _params()
    assert set(params) == set(full_params)
    for name in params:
        assert torch.equal(params[name], full_params[name])
    assert torch.load(path, weights_only=True)["step"] == 20
    assert sorted(os.listdir(tmp_path)) == ["full.pt", "part.pt"]  # no temporary files


def test_resume_allow_fresh_without_checkpoint_starts_fresh(tmp_path):
    fresh_run = _run(5)
    fresh_params = _params()
    pyro.clear_param_store()
    resumed = _run(5, tmp_path / "missing.pt", resume="allow_fresh")
    np.testing.assert_array_equal(resumed.losses, fresh_run.losses)
    assert torch.equal(pyro.param("loc").detach(), fresh_params["loc"])
    assert (tmp_path / "missing.pt").exists()


def test_resume_errors(tmp_path):
    path = tmp_path / "ckpt.pt"
    _run(10, path)
    with pytest.raises(ValueError, match="past num_steps"):
        _run(5, path, resume=True)
    with pytest.raises(ValueError, match="track"):
        fit(model, guide, Trace_ELBO(), ClippedAdam({"lr": 0.1, "lrd": 0.99}), X, num_steps=20,
            checkpoint=path, resume=True)


def test_resume_with_pyro_module_is_identical(tmp_path):
    """pyro.module keeps using the module's own tensors: a resume must load
    the saved values into them, not swap new tensors into the store."""
    import torch.nn as nn

    data = torch.tensor([0.5, -0.3, 1.2, 0.8])

    def run(num_steps, resume):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        torch.manual_seed(0)
        net = nn.Linear(1, 2)

        def guide(x):
            pyro.module("net", net)
            out = net(x.unsqueeze(-1))
            with pyro.plate("data", len(x)):
                pyro.sample("y", pyro.distributions.Normal(out[:, 0], nn.functional.softplus(out[:, 1]) + 0.1))

        def model(x):
            with pyro.plate("data", len(x)):
                y = pyro.sample("y", pyro.distributions.Normal(0.0, 1.0))
                pyro.sample("x", pyro.distributions.Normal(y, 0.5), obs=x)

        result = fit(model, guide, pyro.infer.Trace_ELBO(), pyro.optim.Adam({"lr": 0.05}), data,
                     num_steps=num_steps, checkpoint=tmp_path / "ck.pt", checkpoint_every=5,
                     resume=resume, progress=False)
        return result, net.bias.detach().clone()

    full, bias_full = run(20, False)
    (tmp_path / "ck.pt").unlink()
    run(10, False)
    resumed, bias_resumed = run(20, True)
    assert np.array_equal(full.losses, resumed.losses)
    assert torch.equal(bias_full, bias_resumed)
