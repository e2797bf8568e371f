"""experiments/vae_mnist/: the study on tiny IDX files written by the test
(the real torchvision loading path), its flags, checkpoints, exact resume,
results.json and figures, and under ``torchrun`` with two gloo processes.

The smoke run of the study is in tests/experiments/test_experiments.py; here the study is
run in-process where that is enough (faster), as a new process would (a
child of tests/fork_server.py) where the exit status matters, and as a
subprocess under ``torchrun``.
"""

import copy
import functools
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from experiments._runs import fixed_rng
from experiments.vae_mnist import STUDY, compare, evaluate, figures, train
from guides.vae import Encoder, guide
from models.mnist import MnistNotFoundError, binarize, load_mnist
from models.vae import Decoder, VAEConfig, model
from pyro_vi import training
from tests.helpers import ROOT, write_tiny_mnist

TINY = VAEConfig(hidden_dims=(8,), latent_dim=2)
TINY_FLAGS = (
    "--epochs 2 --eval-samples 20 --runs vae_stl,iwae5 --seeds 0 1 --hidden-dims 8 --latent-dim 2 --batch-size 8 "
    "--monitor-k 3 --monitor-size 8 --no-download"
).split()
FIGURES = ["elbo_iwelbo.png", "test_loglik.png", "reconstructions.png", "samples.png"]
# wall times: everything else must be equal between a resumed and an uninterrupted study
TIMES = {"seconds_per_epoch", "train_seconds", "monitor_seconds", "eval_seconds"}


def flags(data_dir, out, *extra, epochs=None):
    result = ["--data-dir", str(data_dir), "--out", str(out)] + TINY_FLAGS + list(extra)
    if epochs is not None:
        result[result.index("--epochs") + 1] = str(epochs)
    return result


def study(data_dir, out, *extra, epochs=None):
    """The study run in this process; its results."""
    return STUDY.main(flags(data_dir, out, *extra, epochs=epochs))


def torchrun(data_dir, out, *extra, epochs=None):
    """The study run as ``torchrun --nproc_per_node=2 -m experiments.vae_mnist``."""
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + ["-m", "experiments.vae_mnist"]
        + flags(data_dir, out, *extra, epochs=epochs)
        + ["--threads", "1"],
        cwd=ROOT,
        env=dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )


def numbers(results):
    """Per run and seed everything but wall times."""
    return {
        key: {seed: {k: v for k, v in r.items() if k not in TIMES} for seed, r in run["seeds"].items()}
        for key, run in results["runs"].items()
    }


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return write_tiny_mnist(tmp_path_factory.mktemp("mnist"))


@pytest.fixture(scope="module")
def uninterrupted(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    return out, study(tiny_dir, out)


# ----------------------------------------------------------------------------
# evaluation helpers


def test_chunked_bounds_and_active_units(monkeypatch):
    x = binarize(torch.rand(5, 784), torch.Generator().manual_seed(0))
    decoder, encoder = Decoder(TINY, 0.3), Encoder(TINY)
    model_fn = functools.partial(model, decoder=decoder)
    guide_fn = functools.partial(guide, encoder=encoder)
    with fixed_rng(0):
        log_w = evaluate.log_weights(model_fn, guide_fn, x, 12)
    chunks = iter(log_w.split(5))
    monkeypatch.setattr(evaluate, "log_weights", lambda m, g, xb, s: next(chunks)[:s])
    monkeypatch.setattr(evaluate, "EVAL_CHUNK_ELEMENTS", 5 * 784 * 5)  # chunks of 5, 5, 2 samples
    log_px, elbo = evaluate.bounds(model_fn, guide_fn, x, 12)
    torch.testing.assert_close(log_px, torch.logsumexp(log_w, 0) - math.log(12))
    torch.testing.assert_close(elbo, log_w.mean(0))
    assert (log_px >= elbo).all()

    class Fixed(torch.nn.Module):
        def forward(self, xb):
            loc = torch.stack([xb[:, 0] * 10, xb[:, 0] * 0.01, torch.zeros(len(xb))], -1)
            return loc, torch.ones_like(loc)

    units, variance = evaluate.active_units(Fixed(), torch.tensor([[0.0], [1.0]] * 4))
    assert units == 1 and variance.shape == (3,)


def test_fixed_rng_leaves_the_training_stream_alone():
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    with fixed_rng(99):
        inside = torch.rand(2)
    assert torch.equal(torch.rand(3), expected)
    with fixed_rng(99):
        assert torch.equal(torch.rand(2), inside)


def test_burda_schedule():
    stages = [train.burda_stage(e) for e in range(train.BURDA_EPOCHS)]
    assert train.BURDA_EPOCHS == 3280
    assert [stages.count(i) for i in range(8)] == [3**i for i in range(8)]
    assert stages == sorted(stages) and stages[:5] == [0, 1, 1, 1, 2]
    assert train.lr_factor("burda", 0) == 1.0 and train.lr_factor("burda", 3279) == pytest.approx(0.1)
    assert train.lr_factor("course", 3000) == 1.0
    assert train.stage_ends("burda", 20) == {1, 4, 13}


def test_test_subset_is_fixed_and_documented():
    a, b = train.test_subset(10000, 2000), train.test_subset(10000, 2000)
    assert torch.equal(a, b) and len(a.unique()) == 2000 and torch.equal(a, a.sort().values)
    assert a.max() > 9000 and a.min() < 1000  # spread over the whole test set, not its first part
    assert torch.equal(train.test_subset(10000, None), torch.arange(10000))
    assert torch.equal(train.test_subset(2000, 5000), torch.arange(2000))


def test_comparisons_say_when_a_difference_is_within_the_seed_spread():
    base = torch.linspace(-100, -90, 50)
    log_px = {
        "vae": {s: base for s in (0, 1, 2)},
        "iwae5": {0: base + 1.0, 1: base + 1.1, 2: base + 0.9},
        "iwae50": {0: base + 1.5, 1: base + 0.3, 2: base + 2.5},
    }
    rows = {(r["better"], r["worse"]): r for r in compare.compare(log_px)}
    assert rows["iwae5", "vae"]["verdict"] == "iwae5 > vae" and rows["iwae5", "vae"]["papers_order_holds"]
    assert rows["iwae5", "vae"]["mean_difference"] == pytest.approx(1.0)
    assert rows["iwae50", "iwae5"]["verdict"] == "within the seed spread"
    assert not rows["iwae50", "iwae5"]["papers_order_holds"]
    assert ("vae_stl", "vae") not in rows  # only the runs that ran


# ----------------------------------------------------------------------------
# IWAE k=1 is the VAE


def test_iwae1_is_the_vae_on_the_same_samples(tiny_dir, tmp_path):
    results = study(tiny_dir, tmp_path, "--runs", "vae", "iwae1", "--seeds", "0", epochs=1)
    vae, iwae1 = (results["runs"][k]["seeds"]["0"] for k in ("vae", "iwae1"))
    for name in ("test_log_likelihood", "test_elbo", "active_units", "latent_variances"):
        assert vae[name] == iwae1[name]
    objective = "train_objective"  # the loss values differ in float32 rounding (log-mean-exp of one weight)
    assert {k: v for k, v in vae["history"].items() if k != objective} == {
        k: v for k, v in iwae1["history"].items() if k != objective
    }
    assert vae["history"][objective][1:] == pytest.approx(iwae1["history"][objective][1:], rel=1e-6)
    assert results["comparisons"][0]["verdict"] == "identical"


# ----------------------------------------------------------------------------
# the study


def test_study_writes_results_and_figures(uninterrupted):
    out, results = uninterrupted
    for name in FIGURES:
        assert (out / name).stat().st_size > 0, name
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["status"] == "complete"
    assert on_disk["run"]["command"].startswith("python -m experiments.vae_mnist --data-dir")
    assert on_disk["run"]["machine"]["torch_threads"] == torch.get_num_threads()
    assert on_disk["run"]["machine"]["cpu_cores"] >= 1 and on_disk["run"]["processes"] == 1
    data = on_disk["data"]
    assert data["only_test_split"] and not data["standard_split"] and data["num_test_used"] == 8
    assert data["test_subset"]["all"] and data["test_subset"]["size"] == 8
    training = ("schedule", "epochs", "lr", "adam_eps", "batch_size", "seeds", "runs", "one_seed_runs")
    assert {key: on_disk["args"][key] for key in training} == {
        "schedule": "course",
        "epochs": 2,
        "lr": 1e-3,
        "adam_eps": 1e-8,
        "batch_size": 8,
        "seeds": [0, 1],
        "runs": ["vae_stl", "iwae5"],
        "one_seed_runs": [],
    }
    assert list(on_disk["runs"]) == ["vae_stl", "iwae5"]
    for run in on_disk["runs"].values():
        assert list(run["seeds"]) == ["0", "1"]
        for r in run["seeds"].values():
            h = r["history"]
            assert h["epoch"] == [0, 1, 2] and len(h["heldout_iwelbo"]) == 3 and h["train_objective"][0] is None
            assert h["lr"] == [None, 1e-3, 1e-3]
            assert r["test_log_likelihood"] >= r["test_elbo"] and r["test_log_likelihood_se"] > 0
            assert r["test_images"] == 8 and 0 <= r["active_units"] <= 2 and r["epochs"] == 2
            assert math.isfinite(r["seconds_per_epoch"])
        summary = run["summary"]["test_log_likelihood"]
        assert summary["n"] == 2 and summary["mean"] == pytest.approx(np.mean(summary["values"]))
    assert [(c["better"], c["worse"]) for c in on_disk["comparisons"]] == []  # no pair of the papers ran
    # seeds differ; runs of one seed start from the same weights and batches
    a = on_disk["runs"]["iwae5"]["seeds"]
    assert a["0"]["test_log_likelihood"] != a["1"]["test_log_likelihood"]
    assert (
        on_disk["runs"]["iwae5"]["seeds"]["0"]["history"]["heldout_elbo"][0]
        == on_disk["runs"]["vae_stl"]["seeds"]["0"]["history"]["heldout_elbo"][0]
    )
    assert sorted(os.listdir(out / "checkpoints")) == sorted(
        f"{k}-seed{s}.pt" for k in ("vae_stl", "iwae5") for s in (0, 1)
    )


def test_resume_gives_the_uninterrupted_numbers(uninterrupted, tiny_dir, tmp_path):
    _, reference = uninterrupted
    first = study(tiny_dir, tmp_path, epochs=1)
    assert all(r["epochs"] == 1 for run in first["runs"].values() for r in run["seeds"].values())
    resumed = study(tiny_dir, tmp_path, "--resume", epochs=2)
    assert numbers(resumed) == numbers(reference)
    assert resumed["comparisons"] == reference["comparisons"]


def test_a_study_killed_mid_epoch_resumes_exactly(tiny_dir, tmp_path, monkeypatch):
    """Burda's schedule (a LambdaLR stepped by fit's callback) over 5 epochs,
    stopped in epoch 3 and resumed, against the uninterrupted study."""
    extra = (
        "--schedule",
        "burda",
        "--runs",
        "iwae5",
        "--seeds",
        "3",
        "--checkpoint-every",
        "1",
        "--monitor-every",
        "1",
    )
    reference = study(tiny_dir, tmp_path / "full", *extra, epochs=5)
    lrs = reference["runs"]["iwae5"]["seeds"]["3"]["history"]["lr"]
    assert lrs == pytest.approx([None, 1e-3] + [1e-3 * 10 ** (-1 / 7)] * 3 + [1e-3 * 10 ** (-2 / 7)])
    assert reference["args"]["batch_size"] == 8 and reference["args"]["adam_eps"] == 1e-4

    class Killed(Exception):
        pass

    def killed_after(step, *args, **kwargs):  # as a SIGKILL after the checkpoint of `step`
        inner = kwargs.get("callback")

        def callback(s, loss):
            if inner is not None:
                inner(s, loss)
            if s == step:
                raise Killed

        return training.fit(*args, **dict(kwargs, callback=callback))

    monkeypatch.setattr(train, "fit", functools.partial(killed_after, 11))  # 4 steps per epoch: epoch 3
    with pytest.raises(Killed):
        study(tiny_dir, tmp_path / "killed", *extra, epochs=5)
    monkeypatch.setattr(train, "fit", training.fit)
    resumed = study(tiny_dir, tmp_path / "killed", *extra, "--resume", epochs=5)
    assert numbers(resumed) == numbers(reference)


def test_resume_refuses_another_configuration_before_any_training(uninterrupted, tiny_dir, tmp_path, capsys):
    out, _ = uninterrupted
    before = {p: p.read_bytes() for p in (out / "checkpoints").iterdir()}
    with pytest.raises(ValueError) as refused:
        study(tiny_dir, out, "--resume", "--lr", "0.002", "--batch-size", "4")
    message = str(refused.value)
    assert "--resume: checkpoint(s) of another configuration, nothing was trained" in message
    assert "lr: 0.001 in the checkpoint, 0.002 here" in message
    assert "batch_size: 8 in the checkpoint, 4 here" in message
    assert "iwae5-seed1.pt" in message and "vae_stl-seed0.pt" in message
    assert "epoch " not in capsys.readouterr().out  # no epoch ran
    assert {p: p.read_bytes() for p in (out / "checkpoints").iterdir()} == before
    with pytest.raises(ValueError, match="epoch: the checkpoint is at epoch 2, past --epochs 1"):
        study(tiny_dir, out, "--resume", epochs=1)


def test_existing_checkpoints_need_resume_or_overwrite(uninterrupted, tiny_dir, tmp_path, capsys):
    out, _ = uninterrupted
    with pytest.raises(SystemExit) as refused:
        STUDY.parse(flags(tiny_dir, out))
    assert refused.value.code == 2
    assert "pass --resume to continue them or --overwrite to start over" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        STUDY.parse(flags(tiny_dir, tmp_path / "empty", "--resume"))
    assert "argument --resume: no checkpoint of runs vae_stl, iwae5" in capsys.readouterr().err


def test_overwrite_starts_over(tiny_dir, tmp_path):
    first = study(tiny_dir, tmp_path, "--runs", "vae", "--seeds", "0", epochs=1)
    again = study(tiny_dir, tmp_path, "--runs", "vae", "--seeds", "0", "--overwrite", epochs=1)
    assert numbers(first) == numbers(again)


def test_plot_only_redraws_the_figures_from_results_json(uninterrupted, tiny_dir, tmp_path):
    out, _ = uninterrupted
    copy_out = tmp_path / "copy"
    os.makedirs(copy_out / "checkpoints")
    (copy_out / "results.json").write_bytes((out / "results.json").read_bytes())
    for name in os.listdir(out / "checkpoints"):
        (copy_out / "checkpoints" / name).write_bytes((out / "checkpoints" / name).read_bytes())
    STUDY.main(["--out", str(copy_out), "--plot-only", "--data-dir", str(tiny_dir), "--no-download"])
    for name in FIGURES:
        assert (copy_out / name).stat().st_size > 0, name
    assert (copy_out / "results.json").read_bytes() == (out / "results.json").read_bytes()


def test_plot_only_without_checkpoints_draws_the_curves(uninterrupted, tmp_path, capsys):
    out, _ = uninterrupted
    (tmp_path / "results.json").write_bytes((out / "results.json").read_bytes())
    STUDY.main(["--out", str(tmp_path), "--plot-only", "--data-dir", str(out), "--no-download"])
    assert (tmp_path / "elbo_iwelbo.png").exists() and (tmp_path / "test_loglik.png").exists()
    assert "no reconstructions/samples" in capsys.readouterr().out


def test_standard_split_and_test_subset(tmp_path):
    data_dir = write_tiny_mnist(tmp_path / "mnist", num_images=24, train=True)
    results = study(data_dir, tmp_path / "out", "--runs", "vae", "--seeds", "0", "--test-images", "5", epochs=1)
    data = results["data"]
    assert data["standard_split"] and data["num_train_used"] == 24 and data["num_test_used"] == 24
    assert data["test_subset"]["size"] == 5 and not data["test_subset"]["all"]
    assert f"seeded {evaluate.TEST_SUBSET_SEED}" in data["test_subset"]["how"]
    assert results["runs"]["vae"]["seeds"]["0"]["test_images"] == 5


def test_one_seed_runs(tiny_dir, tmp_path):
    results = study(
        tiny_dir, tmp_path, "--runs", "vae", "iwae5", "--seeds", "4", "5", "--one-seed-runs", "iwae5", epochs=1
    )
    assert list(results["runs"]["vae"]["seeds"]) == ["4", "5"] and list(results["runs"]["iwae5"]["seeds"]) == ["4"]
    assert results["args"]["one_seed_runs"] == ["iwae5"] and results["status"] == "complete"
    (row,) = results["comparisons"]
    assert (row["better"], row["worse"]) == ("iwae5", "vae") and list(row["per_seed"]) == ["4"]
    assert row["basis"].startswith("one seed")
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["iwae5-seed4.pt", "vae-seed4.pt", "vae-seed5.pt"]


def test_coinciding_curves_are_named_in_the_legend(uninterrupted):
    _, results = uninterrupted
    twin = copy.deepcopy(results)
    twin["runs"]["renyi5"] = copy.deepcopy(twin["runs"]["iwae5"])
    twin["runs"]["renyi5"]["label"] = "RenyiELBO(alpha=0) k=5"
    notes = figures.coincidences(twin, ["heldout_elbo", "heldout_iwelbo"])
    assert notes == {"renyi5": ("iwae5", 0.0)}


# ----------------------------------------------------------------------------
# the command line


@pytest.mark.parametrize(
    "bad, message",
    [
        (["--lr", "-0.05"], "argument --lr: value must be > 0, got -0.05"),
        (["--lr", "inf"], "argument --lr: value must be a finite number, got inf"),
        (["--epochs", "0"], "argument --epochs: value must be an integer >= 1, got 0"),
        (["--runs", "vae,nope"], "argument --runs: unknown run(s) nope; choose from vae, vae_stl"),
        (["--runs", "vae", "vae"], "argument --runs: repeats a run"),
        (["--runs", "vae", "--one-seed-runs", "iwae50"], "argument --one-seed-runs: iwae50 not among --runs vae"),
        (["--test-images", "0"], "argument --test-images: value must be an integer >= 1, got 0"),
        (["--hidden-dims", "200,x"], "argument --hidden-dims: value must be positive integers"),
        (["--schedule", "burda", "--epochs", "4000"], "argument --epochs: the burda schedule has 3280 epochs"),
        (["--schedule", "fast"], "argument --schedule: invalid choice: 'fast'"),
        (["--seeds", "1", "1"], "argument --seeds: repeats a seed"),
        (["--threads", "0"], "argument --threads: value must be an integer >= 1, got 0"),
        (["--resume", "--overwrite"], "argument --overwrite: not allowed with argument --resume"),
        (["--data-dir", "/no/such/folder"], "argument --data-dir: no folder '/no/such/folder'"),
    ],
)
def test_bad_flags_are_refused_while_parsing(bad, message, tmp_path, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as refused:
        STUDY.parse(["--out", str(out), "--no-download"] + bad)
    assert refused.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_defaults(tmp_path):
    args = STUDY.parse(["--out", str(tmp_path)])
    assert args.seeds == [0, 1, 2] and args.runs == list(train.DEFAULT_RUNS) and "iwae1" not in args.runs
    assert args.one_seed_runs == []
    assert (args.schedule, args.epochs, args.lr, args.batch_size, args.adam_eps) == ("course", 20, 1e-3, 100, 1e-8)
    assert (args.eval_samples, args.monitor_k, args.test_images, args.threads) == (5000, 50, 1000, 1)
    burda = STUDY.parse(["--out", str(tmp_path), "--schedule", "burda", "--seed", "4", "--full-test"])
    assert (burda.epochs, burda.batch_size, burda.adam_eps, burda.seeds, burda.test_images) == (
        3280,
        20,
        1e-4,
        [4],
        None,
    )


def test_bad_flag_exits_with_status_2_before_any_work(tmp_path, fork_server):
    out = tmp_path / "out"
    proc = fork_server.run(["-m", "experiments.vae_mnist"] + flags(tmp_path, out, "--lr", "-0.05"))
    assert proc.returncode == 2 and "error: argument --lr: value must be > 0, got -0.05" in proc.stderr
    assert not out.exists()


def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as refused:
        STUDY.parse(["--out", str(blocker / "out")])
    assert refused.value.code == 2 and "argument --out: cannot write to" in capsys.readouterr().err


def test_missing_data_fails_clearly(tmp_path, fork_server):
    argv = ["--data-dir", str(tmp_path), "--out", str(tmp_path / "out"), "--no-download"]
    with pytest.raises(MnistNotFoundError, match="pass --data-dir"):
        STUDY.main(argv)
    proc = fork_server.run(["-m", "experiments.vae_mnist"] + argv)
    assert proc.returncode == 1 and proc.stderr.startswith("vae_mnist: error: ") and "pass --data-dir" in proc.stderr


# ----------------------------------------------------------------------------
# two processes under torchrun (gloo)


def test_torchrun_with_two_processes(tiny_dir, tmp_path):
    """The same study in one process and under ``torchrun --nproc_per_node=2``:
    the training objective is the whole batch's (not divided by the number of
    processes), the run record names the torchrun launch and its two
    processes, and the evaluation, shared out over both, gives what one
    process gets for the same weights."""
    study(tiny_dir, tmp_path / "one", "--runs", "vae", "--seeds", "0")
    two = torchrun(tiny_dir, tmp_path / "two", "--runs", "vae", "--seeds", "0")
    assert two.returncode == 0, two.stderr[-3000:]
    results = {n: json.loads((tmp_path / n / "results.json").read_text()) for n in ("one", "two")}
    record = results["two"]["run"]
    assert record["command"].startswith("torchrun --nproc_per_node=2 -m experiments.vae_mnist --data-dir")
    assert record["processes"] == 2 and results["one"]["run"]["processes"] == 1
    one_seed, two_seed = (results[n]["runs"]["vae"]["seeds"]["0"] for n in ("one", "two"))
    # the same start (epoch 0: same weights, the same importance samples on the processes' shares)
    assert two_seed["history"]["heldout_elbo"][0] == one_seed["history"]["heldout_elbo"][0]
    # each process draws its own particles, so the objectives differ by Monte Carlo noise only:
    # a few nats on these 32 images, against half the objective (over 200 nats) when divided by 2
    for a, b in zip(one_seed["history"]["train_objective"][1:], two_seed["history"]["train_objective"][1:]):
        assert abs(a - b) < 0.05 * abs(a)
    # the final evaluation, shared out over the two processes, equals one process's on the same weights
    config = VAEConfig(hidden_dims=(8,), latent_dim=2)
    encoder, decoder = train.load_networks(str(tmp_path / "two" / "checkpoints" / "vae-seed0.pt.rank0"), config)
    model_fn = functools.partial(model, decoder=decoder)
    guide_fn = functools.partial(guide, encoder=encoder)
    test = binarize(load_mnist(tiny_dir, download=False).test, torch.Generator().manual_seed(20151))
    final = evaluate.evaluate(encoder, model_fn, guide_fn, test, test, 20)
    # results.json keeps 10 significant digits
    assert final["test_log_likelihood"] == pytest.approx(two_seed["test_log_likelihood"], rel=1e-9, abs=0)
    assert final["test_elbo"] == pytest.approx(two_seed["test_elbo"], rel=1e-9, abs=0)
