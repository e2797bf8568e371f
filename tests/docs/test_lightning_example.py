"""The Lightning example of the docs (docs/examples/lightning_example.py) at
tiny settings on the CPU, logging to a temporary folder: it logs the ELBO
every step and the gradient SNR of every parameter every other step, Adam
gets every parameter of model and guide, and a run stopped after two epochs
and resumed from its checkpoint in new modules ends bit for bit where an
uninterrupted run (without the SNR callback) ends: parameters, Adam's state
and the RNG all come back, and the SNR draws do not change the fit."""

import csv
import importlib.util
import math
import os
import re

import pytest
import torch

from tests.helpers import ROOT

EXAMPLE = os.path.join(ROOT, "docs", "examples", "lightning_example.py")
TINY = dict(num_data=64, batch_size=16, num_particles=4, lr=0.05, snr_draws=3)
STEPS_PER_EPOCH = 4
PARAMS = {
    "model.noise_unconstrained",
    "guide.loc_unconstrained",
    "guide.scale_unconstrained",
    "guide.classifier.weight",
    "guide.classifier.bias",
}
SNR = {"snr/noise", "snr/loc", "snr/scale", "snr/classifier.weight", "snr/classifier.bias"}


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("lightning_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports lightning: the test extra installs it
    return module


def _rows(out, version):
    with open(os.path.join(out, "logs", f"version_{version}", "metrics.csv")) as f:
        return list(csv.DictReader(f))


def _logged(rows, key):
    """step -> value of ``key`` in the rows that have it."""
    return {int(row["step"]): float(row[key]) for row in rows if row.get(key)}


def _checkpoint(out):
    return torch.load(os.path.join(out, "checkpoints", "last.ckpt"), weights_only=False)


def test_lightning_example_logs_checkpoints_and_resumes_exactly(example, tmp_path):
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    uninterrupted = example.train(straight, 3, snr_every=0, **TINY)
    example.train(stopped, 2, snr_every=2, **TINY)
    resumed = example.train(stopped, 3, resume=True, snr_every=2, **TINY)

    # every parameter of the model and the guide is the optimizer's
    assert {name for name, _ in resumed.loss_fn.named_parameters()} == PARAMS
    for out in (straight, stopped):
        (adam,) = _checkpoint(out)["optimizer_states"]
        assert len(adam["param_groups"][0]["params"]) == len(PARAMS)
        assert len(adam["state"]) == len(PARAMS)
        assert all(state["exp_avg"].abs().sum() > 0 for state in adam["state"].values())

    # the resumed run ends where the uninterrupted one does, bit for bit
    expected = uninterrupted.state_dict()
    assert set(expected) == {"loss_fn." + name for name in PARAMS}
    for name, value in resumed.state_dict().items():
        assert torch.equal(value, expected[name]), name
    a, b = _checkpoint(straight), _checkpoint(stopped)
    assert a["global_step"] == b["global_step"] == 3 * STEPS_PER_EPOCH
    assert torch.equal(a["torch_rng_state"], b["torch_rng_state"])
    for key, state in a["optimizer_states"][0]["state"].items():
        for field in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[field], b["optimizer_states"][0]["state"][key][field])

    # the ELBO every step, the SNR every other step, in each run's own log
    for version, steps in ((0, range(0, 2 * STEPS_PER_EPOCH)), (1, range(2 * STEPS_PER_EPOCH, 3 * STEPS_PER_EPOCH))):
        rows = _rows(stopped, version)
        elbo = _logged(rows, "elbo")
        assert sorted(elbo) == list(steps)
        assert all(math.isfinite(value) for value in elbo.values())
        for key in SNR:
            snr = _logged(rows, key)
            assert sorted(snr) == list(steps)[::2], key
            assert all(value > 0 and math.isfinite(value) for value in snr.values()), key
    assert _logged(_rows(straight, 0), "elbo") == {
        **_logged(_rows(stopped, 0), "elbo"),
        **_logged(_rows(stopped, 1), "elbo"),
    }

    # and it learns: the ELBO of the last epoch is above the first's, and c moved towards the truth
    elbo = _logged(_rows(straight, 0), "elbo")
    first, last = (sum(elbo[s] for s in range(e * 4, e * 4 + 4)) / 4 for e in (0, 2))
    assert last > first
    assert 0.2 < uninterrupted.loss_fn.guide.loc[0].item() < example.TRUTH["coeff"]


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--epochs", "0"], "--epochs must be >= 1, got 0"),
        (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["--snr-every", "-1"], "--snr-every must be >= 0"),
        (["--resume"], "--resume: no checkpoint"),
    ],
)
def test_lightning_example_refuses_bad_flags(example, tmp_path, capsys, flags, message):
    with pytest.raises(SystemExit):
        example.main(["--out", str(tmp_path)] + flags)
    assert message in capsys.readouterr().err


def test_pyro_vi_never_imports_lightning():
    """Lightning is an extra for the example, not a dependency of the library."""
    library = os.path.join(ROOT, "pyro_vi")
    for folder, _, files in os.walk(library):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name)) as f:
                    text = f.read()
                assert not re.search(r"^\s*(import|from)\s+(lightning|pytorch_lightning)\b", text, re.M), name
