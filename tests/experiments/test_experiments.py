"""Every study runs as a new process would (``python -m experiments.NAME``)
with tiny flags and writes its outputs (as Pyro's tests/test_examples.py
does), redraws them with ``--plot-only``, and refuses bad flags before any
work. The runs are children of the fork server (tests/fork_server.py), which
has imported the libraries already; one test runs a real subprocess."""

import importlib
import json
import os
import pkgutil
import shutil
import subprocess
import sys

import pytest

from tests.helpers import ROOT, write_tiny_mnist

#: stands in SMOKE's flags for the folder of the ``tiny_mnist`` fixture
TINY_MNIST = "<tiny MNIST folder>"

# script -> (tiny flags, files it must write to --out)
SMOKE = {
    "air": (
        [
            "--data-dir",
            TINY_MNIST,
            "--canvas-size",
            "12",
            "--digit-size",
            "6",
            "--z-what-dim",
            "3",
            "--num-train",
            "16",
            "--num-test",
            "6",
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--eval-every",
            "2",
            "--eval-size",
            "4",
            "--eval-particles",
            "2",
            "--variance-draws",
            "2",
            "--estimators",
            "TraceGraph_ELBO",
            "ReinforceLeaveOneOutELBO",
            "DisARMELBO",
        ],
        ["curves.png", "reconstructions.png", "results.json"],
    ),
    "benchmark_scaling": (
        [
            "--sweeps",
            "particles",
            "subsample",
            "gamma",
            "--sizes",
            "3",
            "--estimators",
            "Trace_ELBO",
            "ControlVariateELBO",
            "--steps",
            "1",
            "--rounds",
            "1",
            "--seconds",
            "0",
            "--no-memory",
        ],
        ["results.json", "scaling.png"],
    ),
    "bbvi_normal_gamma": (
        ["--steps", "10", "--variance-draws", "3", "--summary-draws", "20"],
        ["elbo.png", "posterior_means.png", "results.json"],
    ),
    "benchmark": (["--steps", "3", "--rounds", "2", "--batch-size", "4"], ["results.json"]),
    "bernoulli_vae": (
        [
            "--data-dir",
            TINY_MNIST,
            "--no-download",
            "--models",
            "linear",
            "--estimators",
            "DisARMELBO",
            "--ks",
            "2",
            "--seeds",
            "0",
            "1",
            "--steps",
            "4",
            "--multi-steps",
            "2",
            "--eval-every",
            "2",
            "--eval-size",
            "8",
            "--test-samples",
            "3",
            "--batch-size",
            "8",
            "--variance-draws",
            "2",
        ],
        ["single_sample.png", "multi_sample.png", "time_per_step.png", "results.json"],
    ),
    "benchmark_vae": (
        ["--ks", "2", "--batch-size", "4", "--steps", "1", "--rounds", "2"],
        ["results.json"],
    ),
    "compatibility": (["--pairs", "global", "bernoulli"], ["results.json"]),
    "diffusion_bound": (
        ["--num-data", "4", "--samples", "20", "--timesteps", "5", "--variance-scales", "2"],
        ["terms.png", "variance.png", "histogram.png", "results.json"],
    ),
    "distributed_svi": (
        ["--num-data", "40", "--draws", "4", "--steps", "3", "--particles", "3"],
        ["variance.png", "results.json"],
    ),
    "earthquake": (
        ["--steps", "5", "--num-data", "30", "--cavi-iters", "5", "--summary-draws", "20"],
        ["elbo.png", "clusters.png", "results.json"],
    ),
    "gamma_natural_gradient": (
        ["--steps", "20", "--num-data", "50"],
        ["trajectories.png", "nll.png", "path.png", "results.json"],
    ),
    "gmm_cavi": (
        ["--steps", "5", "--num-data", "30", "--cavi-iters", "5", "--summary-draws", "20"],
        ["elbo.png", "clusters.png", "results.json"],
    ),
    "gumbel_softmax": (
        ["--num-samples", "50", "--grad-draws", "20", "--grid-points", "3", "--grad-temperatures", "0.5", "1"],
        ["histogram.png", "temperature.png", "gradients.png", "results.json"],
    ),
    "iwelbo_bounds": (["--ks", "1", "5", "--draws", "3"], ["bounds.png", "results.json"]),
    "lda_svi": (
        [
            "--num-docs",
            "40",
            "--vocab-size",
            "20",
            "--num-topics",
            "3",
            "--doc-length",
            "20",
            "--cavi-iters",
            "3",
            "--svi-updates",
            "5",
            "--batch-size",
            "10",
            "--pyro-steps",
            "5",
            "--eval-points",
            "3",
        ],
        ["elbo.png", "topics.png", "results.json"],
    ),
    "natural_gradient_svi": (
        ["--steps", "5", "--exact-steps", "5", "--particles", "2", "--cavi-iters", "3"],
        ["elbo_gap.png", "results.json"],
    ),
    "poisson_gamma": (["--steps", "20"], ["theta.png", "elbo.png", "results.json"]),
    "vae_mnist": (
        [
            "--data-dir",
            TINY_MNIST,
            "--epochs",
            "1",
            "--eval-samples",
            "5",
            "--runs",
            "vae,iwae5",
            "--seeds",
            "0",
            "1",
            "--hidden-dims",
            "8",
            "--latent-dim",
            "2",
            "--batch-size",
            "8",
            "--monitor-k",
            "3",
            "--monitor-size",
            "8",
            "--no-download",
        ],
        ["elbo_iwelbo.png", "test_loglik.png", "reconstructions.png", "samples.png", "results.json"],
    ),
    "rao_blackwell": (
        ["--steps", "5", "--variance-draws", "3", "--num-data", "4"],
        ["variance.png", "elbo.png", "results.json"],
    ),
    "ssvae": (
        [
            "--data-dir",
            TINY_MNIST,
            "--no-download",
            "--labelled",
            "20",
            "--batch-size",
            "10",
            "--steps",
            "4",
            "--eval-every",
            "2",
            "--elbo-size",
            "8",
            "--hidden-dim",
            "8",
            "--latent-dim",
            "2",
        ],
        ["steps.png", "time.png", "results.json"],
    ),
}


# modules of experiments/ that are not studies (tested in their own files)
TOOLS = {"render_readme"}


def test_every_experiment_is_in_the_smoke_list():
    studies = {module.name for module in pkgutil.iter_modules([os.path.join(ROOT, "experiments")])}
    assert {name for name in studies if not name.startswith("_")} - TOOLS == set(SMOKE), "add new experiments to SMOKE"


def run(server, script, out, flags):
    """``python -m experiments.SCRIPT`` with one torch thread, in a child of
    the fork ``server``; its CompletedProcess."""
    return server.run(["-m", "experiments." + script, "--out", out, "--threads", "1"] + flags)


@pytest.fixture(scope="session")
def tiny_mnist(tmp_path_factory):
    """A fake MNIST folder (IDX files) for the studies' ``--data-dir``."""
    return write_tiny_mnist(tmp_path_factory.mktemp("tiny_mnist"))


def smoke(script, request):
    """SMOKE's ``(flags, outputs)`` of ``script``, with the tiny MNIST folder
    (written on first use) in its flags."""
    flags, outputs = SMOKE[script]
    if TINY_MNIST in flags:
        folder = request.getfixturevalue("tiny_mnist")
        flags = [folder if flag == TINY_MNIST else flag for flag in flags]
    return flags, outputs


def check_outputs(out, outputs):
    for name in outputs:
        path = out / name
        assert path.exists() and path.stat().st_size > 0, name
        if name.endswith(".json"):
            json.loads(path.read_text())


# The studies that aggregate over seeds (all but vae_mnist) run two seeds in
# the smoke test, so that the mean ± std path runs too.
MULTI_SEED = sorted(set(SMOKE) - {"vae_mnist"})


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_experiment_runs(script, tmp_path, request, fork_server):
    flags, outputs = smoke(script, request)
    seeds = ["--seeds", "0", "1"] if script in MULTI_SEED else []
    proc = run(fork_server, script, tmp_path, flags + seeds)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_outputs(tmp_path, outputs)
    results = json.loads((tmp_path / "results.json").read_text())
    run_record = results["run"]
    assert run_record["seeds"] == [0, 1]
    assert run_record["machine"]["torch_threads"] == 1 and run_record["wall_seconds"] > 0
    assert run_record["command"].startswith("python -m experiments." + script)
    # --plot-only redraws every figure from results.json alone and runs nothing (in this process: faster)
    figures = [name for name in outputs if name.endswith(".png")]
    for name in figures:
        (tmp_path / name).unlink()
    importlib.import_module("experiments." + script).STUDY.main(["--out", str(tmp_path), "--plot-only"])
    check_outputs(tmp_path, figures)
    assert json.loads((tmp_path / "results.json").read_text()) == results


# figures --plot-only cannot redraw from results.json alone
NEEDS_CHECKPOINTS = {"vae_mnist": {"reconstructions.png", "samples.png"}}


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_the_committed_results_redraw_their_figures(script, tmp_path):
    """``--plot-only`` on the committed results/SCRIPT/results.json: the
    figures need nothing that the committed run did not save (a study whose
    figures come to need a new key must be re-run)."""
    committed = os.path.join(ROOT, "results", script, "results.json")
    shutil.copy(committed, tmp_path / "results.json")
    importlib.import_module("experiments." + script).STUDY.main(["--out", str(tmp_path), "--plot-only"])
    figures = [name for name in SMOKE[script][1] if name.endswith(".png")]
    check_outputs(tmp_path, [name for name in figures if name not in NEEDS_CHECKPOINTS.get(script, ())])


# ----------------------------------------------------------------------------
# bad flags: refused while parsing, before any work

# Every study is on the shared command line (experiments/_cli.py).
CLI_SCRIPTS = sorted(SMOKE)

# script -> (bad flags, what the message must say)
BAD_FLAGS = [
    ("bbvi_normal_gamma", ["--lr", "-0.05"], "argument --lr: value must be > 0, got -0.05"),
    ("bbvi_normal_gamma", ["--lr", "inf"], "argument --lr: value must be a finite number, got inf"),
    ("bbvi_normal_gamma", ["--particles", "1"], "argument --particles: value must be an integer >= 2, got 1"),
    ("bbvi_normal_gamma", ["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    ("poisson_gamma", ["--lr", "nan"], "argument --lr: value must be a finite number, got nan"),
    ("poisson_gamma", ["--steps", "0"], "argument --steps: value must be an integer >= 1, got 0"),
    ("rao_blackwell", ["--steps", "2.5"], "argument --steps: value must be an integer >= 1, got '2.5'"),
    ("rao_blackwell", ["--variance-draws", "1"], "argument --variance-draws: value must be an integer >= 2"),
    ("gmm_cavi", ["--lrd", "1.5"], "argument --lrd: value must be > 0 and <= 1, got 1.5"),
    ("gmm_cavi", ["--pi", "0.5", "0.6", "0.3"], "argument --pi: pi must sum to 1"),
    ("gmm_cavi", ["--taus", "1", "2"], "argument --taus: needs one value per weight of --pi (3), got 2"),
    ("earthquake", ["--pi", "0.5", "0.5"], "argument --pi: needs 3 weights"),
    ("earthquake", ["--cavi-iters", "-3"], "argument --cavi-iters: value must be an integer >= 1, got -3"),
    ("gamma_natural_gradient", ["--lr", "-0.2"], "argument --lr: value must be > 0"),
    ("gamma_natural_gradient", ["--max-halvings", "-1"], "argument --max-halvings: value must be an integer >= 0"),
    ("natural_gradient_svi", ["--ng-decay", "0.5"], "argument --ng-decay: value must be > 0.5 and <= 1"),
    ("natural_gradient_svi", ["--adam-lr", "inf"], "argument --adam-lr: value must be a finite number"),
    ("lda_svi", ["--pyro-lr", "-1"], "argument --pyro-lr: value must be > 0, got -1.0"),
    ("lda_svi", ["--kappa", "0.3"], "kappa must be in (0.5, 1]"),
    ("lda_svi", ["--counts", "/no/such/docword.txt"], "argument --counts: no file at '/no/such/docword.txt'"),
    ("lda_svi", ["--batch-size", "50", "--num-docs", "10"], "argument --batch-size: must be at most --num-docs"),
    ("iwelbo_bounds", ["--ks", "1", "0"], "argument --ks: value must be an integer >= 1, got 0"),
    ("iwelbo_bounds", ["--lam", "0"], "argument --lam: value must be > 0, got 0.0"),
    ("diffusion_bound", ["--beta-start", "0.5", "--beta-end", "0.1"], "need 0 < --beta-start <= --beta-end < 1"),
    ("diffusion_bound", ["--variance-scales", "1", "-2"], "argument --variance-scales: value must be > 0"),
    ("gumbel_softmax", ["--grad-draws", "1e5"], "argument --grad-draws: value must be an integer >= 2, got '1e5'"),
    ("gumbel_softmax", ["--coefficients", "1", "2"], "argument --coefficients: needs one number per category (4)"),
    ("benchmark", ["--rounds", "0"], "argument --rounds: value must be an integer >= 1, got 0"),
    ("benchmark_vae", ["--batch-size", "x"], "argument --batch-size: value must be an integer >= 1, got 'x'"),
    ("bernoulli_vae", ["--particles", "5"], "argument --particles: must be even"),
    ("air", ["--particles", "6", "--particles", "7"], "argument --particles: must be even"),
    ("air", ["--digit-size", "60"], "argument --digit-size: 60 is larger than --canvas-size 32"),
    ("air", ["--eval-size", "2000"], "argument --eval-size: must be at most --num-test (1000)"),
    ("air", ["--resume", "--overwrite"], "argument --overwrite: not allowed with --resume"),
    ("air", ["--estimators", "Trace_ELBO"], "argument --estimators: invalid choice: 'Trace_ELBO'"),
    ("bernoulli_vae", ["--variance-draws", "1"], "argument --variance-draws: a variance needs 2 draws or more"),
    ("bernoulli_vae", ["--ks", "1"], "argument --ks: value must be an integer >= 2, got 1"),
    ("ssvae", ["--labelled", "35"], "argument --labelled: must be a multiple of 10"),
    ("ssvae", ["--particles", "2"], "argument --particles: value must be an integer >= 3, got 2"),
    ("ssvae", ["--particles", "5"], "argument --particles: must be even (AutoELBO draws them in pairs), got 5"),
    ("ssvae", ["--batch-size", "200", "--labelled", "100"], "argument --batch-size: must be at most --labelled"),
    ("ssvae", ["--alpha", "-1"], "argument --alpha: value must be >= 0"),
    ("distributed_svi", ["--processes", "1"], "argument --processes: value must be an integer >= 2, got 1"),
    ("distributed_svi", ["--particles", "2"], "argument --particles: value must be an integer >= 3, got 2"),
    ("distributed_svi", ["--final-lr", "0.1"], "argument --final-lr: must be at most --lr (0.05), got 0.1"),
    ("distributed_svi", ["--num-data", "5", "--processes", "3"], "argument --num-data: needs at least 2 points"),
] + [
    (script, flags, message)
    for script in CLI_SCRIPTS
    for flags, message in [
        (["--seed", "-1"], "argument --seed: value must be an integer >= 0 and <= 4294967295, got -1"),
        (["--seeds", "0", "0"], "argument --seeds: repeats a seed, got [0, 0]"),
        (["--threads", "0"], "argument --threads: value must be an integer >= 1, got 0"),
        (["--out", os.path.join(os.path.abspath(__file__), "out")], "argument --out: cannot write to"),
    ]
]


@pytest.mark.parametrize("script, flags, message", BAD_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, list) else v)
def test_bad_flags_are_refused_while_parsing(script, flags, message, tmp_path, capsys):
    parse_args = importlib.import_module("experiments." + script).STUDY.parse
    out = tmp_path / "out"
    argv = flags if "--out" in flags else ["--out", str(out)] + flags
    with pytest.raises(SystemExit) as raised:
        parse_args(argv)
    assert raised.value.code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # refused before --out is created, let alone written


@pytest.mark.parametrize(
    "script, flags",
    [
        ("bbvi_normal_gamma", ["--lr", "-0.05"]),
        ("poisson_gamma", ["--lr", "inf"]),
        ("rao_blackwell", ["--steps", "0"]),
        ("gmm_cavi", ["--steps", "2.5"]),
    ],
)
def test_bad_flags_exit_with_status_2_before_any_work(script, flags, tmp_path, fork_server):
    out = tmp_path / "out"
    proc = run(fork_server, script, out, flags)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: argument " + flags[0] in proc.stderr
    assert not out.exists()


def test_a_real_subprocess_exits_with_status_2_on_a_bad_flag(tmp_path):
    """The command line itself, in a new interpreter, not a forked child."""
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.poisson_gamma", "--out", str(out), "--lr", "inf"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and "error: argument --lr: value must be a finite number, got inf" in proc.stderr
    assert not out.exists()


def test_unwritable_out_is_refused_before_any_work(tmp_path, fork_server):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    proc = run(fork_server, "rao_blackwell", blocker / "out", [])
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "error: argument --out: cannot write to" in proc.stderr


def test_common_flags(tmp_path):
    from experiments import benchmark, poisson_gamma

    out = tmp_path / "new" / "folder"
    args = poisson_gamma.STUDY.parse(["--out", str(out), "--seeds", "7", "--lr", "1e-3", "--steps", "10"])
    assert out.is_dir()  # created by the parser
    assert (args.seed, args.seeds, args.threads) == (7, [7], 1)
    assert (args.lr, args.steps) == (1e-3, 10) and isinstance(args.steps, int)
    args = poisson_gamma.STUDY.parse(["--out", str(out), "--seed", "3"])
    assert (args.seed, args.seeds) == (3, [3])
    args = poisson_gamma.STUDY.parse(["--out", str(out)])
    assert (args.seed, args.seeds) == (0, [0, 1, 2])  # three seeds by default
    assert benchmark.STUDY.parse([]).seeds == [0]  # timings: one seed, the spread is over rounds


def test_plot_only_needs_an_earlier_run(tmp_path, fork_server):
    proc = run(fork_server, "poisson_gamma", tmp_path, ["--plot-only"])
    assert proc.returncode == 1 and "--plot-only needs" in proc.stderr and "results.json" in proc.stderr


def test_seed_aggregation():
    from experiments._results import fmt, indistinguishable, spread

    a, b, c = spread([1.0, 2.0, 3.0]), spread([2.5, 3.0, 3.5]), spread([10.0, 10.5, 11.0])
    assert (a["mean"], a["std"], a["n"]) == (2.0, 1.0, 3)
    assert fmt(a, ".1f") == "2.0 ± 1.0"
    assert indistinguishable({"a": a, "b": b, "c": c}) == [["a", "b"]]
    assert spread([4.0])["std"] is None and fmt(spread([4.0]), ".1f") == "4.0"
    never = spread([3.0, None, 5.0])
    assert (never["mean"], never["missing"]) == (4.0, 1) and "(1 of 3 never)" in fmt(never)


def test_curves_are_thinned_for_the_figures():
    from experiments._results import thin

    curves = thin({"a": [list(range(1, 1001)), list(range(2, 1002))], "b": [[5.0, 6.0]]}, points=40)
    steps = curves["a"]["step"]
    assert steps[0] == 1 and steps[-1] == 1000 and len(steps) <= 40 and steps == sorted(set(steps))
    assert curves["a"]["values"] == [[float(s) for s in steps], [float(s + 1) for s in steps]]
    assert curves["b"] == {"step": [1, 2], "values": [[5.0, 6.0]]}


@pytest.mark.parametrize("group_before_main", [False, True])
def test_a_study_leaves_the_process_group_it_joined(group_before_main, tmp_path):
    """A run that joins a process group (as vae_mnist's does under torchrun)
    has it destroyed when ``main`` returns, not left to the interpreter's
    exit, where gloo sometimes aborted the finished process; a group that
    existed before ``main`` is left alone."""
    import torch.distributed

    from experiments import _cli
    from experiments._study import Study

    def join():
        torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'init'}", rank=0, world_size=1)

    def run(args):
        if not torch.distributed.is_initialized():
            join()
        return {"ran": True}

    study = Study("probe", lambda: _cli.parser("a probe", out=None), run)
    try:
        if group_before_main:
            join()
        assert study.main([])["ran"]
        assert torch.distributed.is_initialized() == group_before_main
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
