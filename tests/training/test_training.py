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

from pyro_vi import ControlVariateELBO
from pyro_vi.training import FitResult, NonFiniteError, OutOfSupportError, fit
from tests.programs import normal_guide, normal_model

X = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.5, 0.9, 1.1, -0.4, 0.8, 1.9])
N = len(X)
# z ~ N(0, 1), x_n ~ N(z, 1): posterior N(sum(x) / (N + 1), 1 / (N + 1)),
# evidence x ~ N(0, I + 11^T)
POST_MEAN = X.sum().item() / (N + 1)
POST_SD = 1.0 / math.sqrt(N + 1)
LOG_EVIDENCE = dist.MultivariateNormal(torch.zeros(N), torch.eye(N) + 1.0).log_prob(X).item()


model, guide = normal_model, normal_guide


def test_fit_converges_to_exact_posterior():
    track = {"loc": lambda: pyro.param("loc").item(), "scale": lambda: pyro.param("scale")}
    result = fit(
        model,
        guide,
        Trace_ELBO(),
        ClippedAdam({"lr": 0.05, "lrd": 0.995}),
        X,
        num_steps=600,
        track=track,
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
    result = _fit_normal(
        num_steps=5,
        track={"loc": lambda: values.append(1) or pyro.param("loc").detach().clone()},
    )
    assert len(values) == 5
    loc = result.tracked["loc"]
    assert loc.shape == (5,)
    # Adam's first step moves each parameter by lr (times the sign of the gradient)
    assert abs(loc[0] - (-1.0)) == pytest.approx(0.1, rel=1e-4)


def _fit_normal(**options):
    """fit of the normal model and guide to X with Trace_ELBO and Adam(lr=0.1)."""
    return fit(model, guide, Trace_ELBO(), Adam({"lr": 0.1}), X, **options)


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
        fit(model, _nan_gradient_guide(4), Trace_ELBO(), Adam({"lr": 0.1}), X, num_steps=10, track=track)
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
        with pytest.raises(NonFiniteError, match=rf"step 3: loss is {shown}"):
            fit(bad_model, guide, Trace_ELBO(), Adam({"lr": 0.1}), X, num_steps=10)


def test_non_finite_leaves_params_at_previous_step():
    loc_after = []

    with pytest.raises(NonFiniteError):
        fit(
            model,
            _nan_gradient_guide(3),
            Trace_ELBO(),
            Adam({"lr": 0.1}),
            X,
            num_steps=10,
            track={"loc": lambda: loc_after.append(pyro.param("loc").item())},
        )
    assert len(loc_after) == 2
    assert pyro.param("loc").item() == loc_after[-1]


@pytest.mark.parametrize("num_steps", [0, -1])
def test_bad_num_steps(num_steps):
    with pytest.raises(ValueError, match="num_steps"):
        _fit_normal(num_steps=num_steps)


def test_progress_bar(capsys):
    _fit_normal(num_steps=3, progress=True)
    err = capsys.readouterr().err
    assert "3/3" in err and "loss=" in err
    _fit_normal(num_steps=3)  # None: short run
    assert capsys.readouterr().err == ""


def _run(num_steps, path=None, resume=False, seed=0, make_guide=lambda: guide):
    pyro.set_rng_seed(seed)
    return fit(
        model,
        make_guide(),
        Trace_ELBO(),
        ClippedAdam({"lr": 0.1, "lrd": 0.99}),
        X,
        num_steps=num_steps,
        track={"total": _param_sum},
        checkpoint=path,
        checkpoint_every=10,
        resume=resume,
        overwrite=not resume and path is not None,
    )


def _param_sum():
    return sum(p.sum().item() for _, p in pyro.get_param_store().named_parameters())


def _params():
    return {name: p.detach().clone() for name, p in pyro.get_param_store().named_parameters()}


# a fresh AutoNormal, as in a new process: it draws random numbers when set up lazily
@pytest.mark.parametrize("make_guide", [lambda: guide, lambda: AutoNormal(model)], ids=["hand-written", "AutoNormal"])
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
    optim = ClippedAdam({"lr": 0.1, "lrd": 0.99})
    with pytest.raises(ValueError, match="track"):
        fit(model, guide, Trace_ELBO(), optim, X, num_steps=20, checkpoint=path, resume=True)


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

        result = fit(
            model,
            guide,
            pyro.infer.Trace_ELBO(),
            pyro.optim.Adam({"lr": 0.05}),
            data,
            num_steps=num_steps,
            checkpoint=tmp_path / "ck.pt",
            checkpoint_every=5,
            resume=resume,
            progress=False,
        )
        return result, net.bias.detach().clone()

    full, bias_full = run(20, False)
    (tmp_path / "ck.pt").unlink()
    run(10, False)
    resumed, bias_resumed = run(20, True)
    assert np.array_equal(full.losses, resumed.losses)
    assert torch.equal(bias_full, bias_resumed)


# ---- every argument is checked before any work (issue 10) -------------------------


def _spy_model():
    calls = []

    def spied(x):
        calls.append(1)
        model(x)

    return spied, calls


def _bad_arguments():
    ok = dict(
        model=model, guide=guide, elbo=Trace_ELBO(), optim=Adam({"lr": 0.1}), args=(X,), options=dict(num_steps=3)
    )
    cases = {
        "num_steps float": ({"num_steps": 2.5}, r"num_steps must be an integer >= 1, got 2\.5 \(float\)"),
        "num_steps str": ({"num_steps": "3"}, r"num_steps must be an integer >= 1, got '3' \(str\)"),
        "num_steps bool": ({"num_steps": True}, r"num_steps must be an integer"),
        "num_steps zero": ({"num_steps": 0}, r"num_steps must be an integer >= 1, got 0"),
        "num_steps missing": ({"num_steps": None}, r"num_steps is required"),
        "epochs without data": ({"epochs": 2}, r"epochs counts passes over data="),
        "epochs float": ({"epochs": 1.5, "data": [(X,)], "num_steps": None, "args": ()}, r"epochs must be an integer"),
        "data without limit": ({"data": [(X,)], "num_steps": None, "args": ()}, r"with data=, pass epochs="),
        "data tensor": ({"data": X, "epochs": 1, "args": ()}, r"data must be an iterable of batches .* got Tensor"),
        "data iterator": (
            {"data": iter([(X,)]), "epochs": 1, "args": ()},
            r"data must be re-iterable, .*one-shot iterator list_iterator",
        ),
        "data with args": ({"data": [(X,)], "epochs": 1, "args": (X,)}, r"pass the other 1 positional"),
        "epoch_callback without data": ({"epoch_callback": print}, r"epoch_callback needs data="),
        "callback not callable": ({"callback": 3}, r"callback must be callable or None, got 3"),
        "callback class": ({"callback": dict}, r"callback must be a function or an instance, got the class dict"),
        "elbo class": (
            {"elbo": Trace_ELBO},
            r"elbo must be an ELBO instance, got the class Trace_ELBO; "
            r"pass Trace_ELBO\(\.\.\.\)",
        ),
        "elbo other": ({"elbo": "Trace_ELBO"}, r"elbo must be an ELBO instance"),
        "optim class": ({"optim": Adam}, r"optim must be a pyro\.optim optimizer instance"),
        "optim torch": ({"optim": torch.optim.Adam}, r"optim must be a pyro\.optim optimizer instance .* got Adam"),
        "model not callable": ({"model": "model"}, r"model must be callable, got 'model'"),
        "guide class": ({"guide": AutoNormal}, r"guide must be a function or an instance, got the class AutoNormal"),
        "track not dict": ({"track": [lambda: 1.0]}, r"track must be a dict with str keys"),
        "track value": ({"track": {"loc": 1.0}}, r"track\['loc'\] must be callable"),
        "progress": ({"progress": "yes"}, r"progress must be True or False, got 'yes'"),
        "checkpoint_every": ({"checkpoint_every": 1.5}, r"checkpoint_every must be an integer >= 1, got 1\.5"),
        "resume string": ({"resume": "yes"}, r"resume must be one of False, True, 'allow_fresh', got 'yes'"),
        "resume int": ({"resume": 1}, r"resume must be one of False, True, 'allow_fresh', got 1"),
        "resume without checkpoint": ({"resume": True}, r"resume and overwrite need checkpoint=<path>"),
        "overwrite": ({"overwrite": "no"}, r"overwrite must be True or False, got 'no'"),
        "checkpoint type": ({"checkpoint": 3}, r"checkpoint must be a file path .* got 3"),
        "fingerprint numpy": ({"fingerprint": {"lr": np.float64(0.1)}}, r"fingerprint\['lr'\] is a float64"),
        "state not dict": ({"state": [1]}, r"state must be a dict with str keys"),
        "state object": ({"state": {"f": object()}}, r"state\['f'\] is a object"),
    }
    return ok, cases


@pytest.mark.parametrize("case", list(_bad_arguments()[1]))
def test_every_argument_is_checked_before_any_work(case, tmp_path):
    ok, cases = _bad_arguments()
    change, message = cases[case]
    spied, calls = _spy_model()
    options = dict(ok["options"])
    options.update({k: v for k, v in change.items() if k not in ("model", "guide", "elbo", "optim", "args")})
    options = {k: v for k, v in options.items() if v is not None}
    with pytest.raises(ValueError, match=message):
        fit(
            change.get("model", spied),
            change.get("guide", guide),
            change.get("elbo", ok["elbo"]),
            change.get("optim", ok["optim"]),
            *change.get("args", ok["args"]),
            **options,
        )
    assert calls == [] and len(pyro.get_param_store()) == 0


def test_numpy_integers_are_accepted():
    result = _fit_normal(num_steps=np.int64(3), checkpoint_every=np.int32(2))
    assert result.num_steps == 3
    result = fit(model, guide, Trace_ELBO(), Adam({"lr": 0.1}), data=[(X,)], epochs=np.int64(2))
    assert result.num_steps == 2 and result.epochs == 2


# ---- callbacks, LR schedulers, epochs over data --------------------------------------


def _checkpointing(path, resume, every):
    """fit's options to checkpoint to ``path`` every ``every`` steps, going on from
    it with ``resume`` and starting it afresh without."""
    return {"checkpoint": path, "checkpoint_every": every, "resume": resume, "overwrite": not resume}


def _scheduled_run(num_steps, path, resume, seed=0):
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    scheduler = pyro.optim.ExponentialLR({"optimizer": torch.optim.Adam, "optim_args": {"lr": 0.1}, "gamma": 0.8})
    lrs = []

    def callback(step, loss):
        scheduler.step()
        lrs.append(next(iter(scheduler.optim_objs.values())).get_last_lr()[0])

    result = fit(
        model,
        guide,
        Trace_ELBO(),
        scheduler,
        X,
        num_steps=num_steps,
        callback=callback,
        **_checkpointing(path, resume, every=2),
    )
    return result, lrs


def test_callback_steps_an_lr_scheduler_whose_state_resumes(tmp_path):
    path = tmp_path / "ckpt.pt"
    full, lrs = _scheduled_run(8, path, False)
    assert lrs == pytest.approx([0.1 * 0.8**k for k in range(1, 9)])
    full_params = _params()
    _scheduled_run(5, path, False)
    resumed, resumed_lrs = _scheduled_run(8, path, True, seed=7)
    assert resumed_lrs == lrs[5:]  # the schedule went on from step 5, not from lr 0.1
    np.testing.assert_array_equal(resumed.losses, full.losses)
    assert all(torch.equal(p, full_params[n]) for n, p in _params().items())


def test_callback_sees_every_step_and_loss():
    seen = []
    result = _fit_normal(
        num_steps=4,
        callback=lambda step, loss: seen.append((step, loss)),
    )
    assert seen == list(zip(range(1, 5), result.losses.tolist()))


def batch_model(x, ids=None):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def test_each_step_gets_one_batch_and_epochs_are_passes():
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(X, torch.arange(N)),
        batch_size=4,
        shuffle=True,
        generator=torch.Generator().manual_seed(3),
    )
    seen, epochs = [], []

    def recording_guide(x, ids):
        seen.append(ids.tolist())
        guide(x)

    result = fit(
        batch_model,
        recording_guide,
        Trace_ELBO(),
        Adam({"lr": 0.1}),
        data=loader,
        epochs=3,
        epoch_callback=lambda epoch, losses: epochs.append((epoch, losses.tolist())),
    )
    assert result.num_steps == 9 and result.epochs == 3  # 3 batches (4, 4, 2) per epoch
    np.testing.assert_array_equal(result.epoch_steps, [3, 6, 9])
    for epoch in range(3):  # every data point once per epoch, in a shuffled order
        assert sorted(sum(seen[3 * epoch : 3 * epoch + 3], [])) == list(range(N))
    assert seen[0:3] != seen[3:6]
    assert epochs == [(0, [])] + [(e + 1, result.losses[3 * e : 3 * e + 3].tolist()) for e in range(3)]


def test_num_steps_and_epochs_stop_at_whichever_comes_first():
    batches = [(X[:5],), (X[5:],)]

    def run(**limits):
        return fit(batch_model, guide, Trace_ELBO(), Adam({"lr": 0.1}), data=batches, **limits)

    assert run(epochs=2, num_steps=3).num_steps == 3
    assert run(epochs=2, num_steps=3).epochs == 1  # stopped mid-epoch
    assert run(epochs=2, num_steps=10).num_steps == 4
    assert run(num_steps=5).epochs == 2
    with pytest.raises(ValueError, match="data yielded no batch in epoch 1"):
        fit(batch_model, guide, Trace_ELBO(), Adam({"lr": 0.1}), data=[], epochs=1)


class RandomlyFlipped:
    """Batches in a shuffled order, each with random sign flips: the order and
    the flips come from ``generator`` (as vae_mnist's dynamic binarization)."""

    def __init__(self, x, batch_size, seed):
        self.x, self.batch_size = x, batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return -(-len(self.x) // self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.x), generator=self.generator)
        for first in range(0, len(self.x), self.batch_size):
            x = self.x[order[first : first + self.batch_size]]
            signs = torch.randint(0, 2, x.shape, generator=self.generator) * 2 - 1
            yield x * signs


def _data_makers():
    dataset = torch.utils.data.TensorDataset(X)
    return {
        "DataLoader with generator": lambda: torch.utils.data.DataLoader(
            dataset, batch_size=3, shuffle=True, generator=torch.Generator().manual_seed(5)
        ),
        "DataLoader on the global RNG": lambda: torch.utils.data.DataLoader(dataset, batch_size=3, shuffle=True),
        "iterable with its own generator": lambda: RandomlyFlipped(X, 3, seed=5),
        "list": lambda: [(X[:4],), (X[4:],)],
    }


@pytest.mark.parametrize("make_data", list(_data_makers().values()), ids=list(_data_makers()))
@pytest.mark.parametrize("stop", [2, 5, 6])  # mid-epoch; mid-epoch; at an epoch's end
def test_resume_mid_epoch_is_exact(tmp_path, make_data, stop):
    path = tmp_path / "ckpt.pt"

    def run(resume, seed=0, **limits):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        state = {"evaluations": []}

        def evaluate(epoch, losses):  # an evaluation that draws from its own stream
            with torch.random.fork_rng():
                torch.manual_seed(epoch)
                state["evaluations"].append([epoch, float(losses.sum()), torch.rand(()).item()])

        result = fit(
            batch_model,
            guide,
            ControlVariateELBO(),
            ClippedAdam({"lr": 0.05, "lrd": 0.99}),
            data=make_data(),
            epochs=4,
            epoch_callback=evaluate,
            state=state,
            **_checkpointing(path, resume, every=1),
            **limits,
        )
        return result, state

    full, full_state = run(False)
    full_params = _params()
    run(False, num_steps=stop)
    resumed, state = run(True, seed=99)
    np.testing.assert_array_equal(resumed.losses, full.losses)
    np.testing.assert_array_equal(resumed.epoch_steps, full.epoch_steps)
    assert state == full_state
    assert all(torch.equal(p, full_params[n]) for n, p in _params().items())


def test_resume_refuses_a_checkpoint_past_the_limits(tmp_path):
    path = tmp_path / "ckpt.pt"

    def fit_batches(batches, epochs, **options):
        return fit(
            batch_model, guide, Trace_ELBO(), Adam({"lr": 0.1}), data=batches, epochs=epochs, checkpoint=path, **options
        )

    fit_batches([(X[:5],), (X[5:],)], epochs=2)
    with pytest.raises(ValueError, match=r"is in epoch 2, past epochs=1"):
        fit_batches([(X[:5],), (X[5:],)], epochs=1, resume=True)
    with pytest.raises(ValueError, match=r"data\['batches_per_epoch'\]: 2 in the checkpoint, 3 here"):
        fit_batches([(X[:3],), (X[3:6],), (X[6:],)], epochs=3, resume=True)


# ---- a parameter that leaves its support (issue 10) ------------------------------------


def unconstrained_scale_guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(0.05))  # no constraint: SGD drives it negative
    pyro.sample("z", dist.Normal(loc, scale))


def test_scale_driven_negative_names_step_site_and_param():
    scales = []
    with pytest.raises(OutOfSupportError) as info:
        fit(
            model,
            unconstrained_scale_guide,
            Trace_ELBO(),
            pyro.optim.SGD({"lr": 0.02}),
            X,
            num_steps=50,
            track={"scale": lambda: scales.append(pyro.param("scale").item()) or 0.0},
        )
    err = info.value
    assert isinstance(err, ValueError)
    assert err.step == len(scales) + 1 and err.site == "z" and err.role == "guide"
    assert err.argument == "scale" and err.names == ["scale"] and err.losses.shape == (len(scales),)
    assert str(err).startswith(f"step {err.step}: the guide's site 'z' got Normal(scale=...) with scale = -")
    assert "computed from param 'scale': give it a constraint" in str(err)
    assert pyro.param("scale").item() == scales[-1] < 0  # no step was taken after the bad one


def test_nan_scale_from_an_encoder_names_its_params():
    net = torch.nn.Linear(1, 1)

    def amortized_guide(x):
        pyro.module("net", net)
        scale = net(x.mean().reshape(1, 1)).squeeze() * float("nan")
        pyro.sample("z", dist.Normal(0.0, scale))

    with pytest.raises(
        OutOfSupportError,
        match=r"step 1: the guide's site 'z' got Normal\(scale=\.\.\.\) "
        r"with scale = nan",
    ) as info:
        fit(model, amortized_guide, Trace_ELBO(), Adam({"lr": 0.1}), X, num_steps=3)
    assert sorted(info.value.names) == ["net$$$bias", "net$$$weight"]


def test_other_value_errors_pass_unchanged():
    def bad_guide(x):
        raise ValueError("not about supports")

    with pytest.raises(ValueError, match="^not about supports"):
        fit(model, bad_guide, Trace_ELBO(), Adam({"lr": 0.1}), X, num_steps=3)


def test_observation_outside_the_support_names_step_and_site():
    def count_model(x):
        rate = pyro.sample("rate", dist.Gamma(2.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Poisson(rate), obs=x)

    def count_guide(x):
        pyro.sample("rate", dist.Gamma(pyro.param("a", torch.tensor(2.0), constraint=constraints.positive), 1.0))

    with pytest.raises(
        OutOfSupportError,
        match=r"step 1: the model's observed site 'x' has 1 of 3 values of "
        r"the observation \(e\.g\. -1\) outside the support",
    ) as info:
        fit(count_model, count_guide, Trace_ELBO(), Adam({"lr": 0.1}), torch.tensor([1.0, -1.0, 2.0]), num_steps=2)
    assert info.value.names == [] and info.value.argument == "value"


def test_guide_draw_outside_the_models_support_names_step_and_site():
    def gamma_model(x):
        pyro.sample("rate", dist.Gamma(2.0, 2.0))

    def normal_guide(x):  # a Normal guide for a positive latent draws negative values
        pyro.sample("rate", dist.Normal(pyro.param("loc", torch.tensor(-3.0)), 0.1))

    with pytest.raises(
        OutOfSupportError,
        match=r"step 1: the model's latent site 'rate' got the value = -[0-9.]+ "
        r"from the guide, outside the support "
        r"GreaterThanEq\(lower_bound=0\.0\) of its Gamma; the guide must "
        r"draw 'rate' from a distribution with that support",
    ) as info:
        fit(gamma_model, normal_guide, Trace_ELBO(), Adam({"lr": 0.1}), X, num_steps=2)
    err = info.value
    assert (err.step, err.role, err.site, err.argument) == (1, "model", "rate", "value")
    assert pyro.param("loc").item() == -3.0  # no step taken


def test_vae_style_study_resumes_exactly(tmp_path):
    """What experiments/vae_mnist.py needs: pyro.module networks, batches that
    are shuffled and binarized from one generator, an evaluation at epoch 0 and
    after each epoch kept in ``state``, its own fingerprint, ``allow_fresh``."""
    images = torch.rand(12, 4)
    heldout = torch.bernoulli(images, generator=torch.Generator().manual_seed(5))

    class Binarized:
        def __init__(self):
            self.generator = torch.Generator().manual_seed(1)

        def __len__(self):
            return 3

        def __iter__(self):
            order = torch.randperm(len(images), generator=self.generator)
            for first in range(0, len(images), 4):
                yield torch.bernoulli(images[order[first : first + 4]], generator=self.generator)

    def study(resume, **limits):
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        torch.manual_seed(0)
        encoder, decoder = torch.nn.Linear(4, 2), torch.nn.Linear(1, 4)

        def vae_model(x):
            pyro.module("decoder", decoder)
            with pyro.plate("data", len(x)):
                z = pyro.sample("z", dist.Normal(torch.zeros(len(x), 1), 1.0).to_event(1))
                pyro.sample("x", dist.Bernoulli(logits=decoder(z)).to_event(1), obs=x)

        def vae_guide(x):
            pyro.module("encoder", encoder)
            out = encoder(x)
            with pyro.plate("data", len(x)):
                pyro.sample("z", dist.Normal(out[:, :1], torch.nn.functional.softplus(out[:, 1:])).to_event(1))

        history = {"heldout": [], "objective": []}

        def evaluate(epoch, losses):
            with torch.random.fork_rng():
                torch.manual_seed(7)
                history["heldout"].append(-Trace_ELBO(num_particles=5).loss(vae_model, vae_guide, heldout))
            if epoch:
                history["objective"].append(-float(losses.sum()) / len(images))

        result = fit(
            vae_model,
            vae_guide,
            ControlVariateELBO(num_particles=4),
            Adam({"lr": 0.01}),
            data=Binarized(),
            epochs=3,
            epoch_callback=evaluate,
            state=history,
            fingerprint={"seed": 0, "lr": 0.01, "num_train": 12},
            checkpoint=tmp_path / "vae.pt",
            resume="allow_fresh" if resume else False,
            overwrite=not resume,
            **limits,
        )
        return result, history, decoder.weight.detach().clone()

    full, full_history, full_weight = study(False)
    assert len(full_history["heldout"]) == 4 and len(full_history["objective"]) == 3
    study(False, num_steps=5)  # killed in epoch 2
    resumed, history, weight = study(True)
    assert resumed.resumed_from == 5
    np.testing.assert_array_equal(resumed.losses, full.losses)
    assert history == full_history and torch.equal(weight, full_weight)
