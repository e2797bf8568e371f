"""Every experiment script runs as a subprocess with tiny flags and writes its
outputs (as Pyro's tests/test_examples.py does)."""

import json
import os
import subprocess
import sys
import tempfile

import pytest

from tests.test_vae import write_tiny_mnist

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_MNIST = write_tiny_mnist(tempfile.mkdtemp(prefix="tiny_mnist_"))

# script -> (tiny flags, files it must write to --out)
SMOKE = {
    "bbvi_normal_gamma": (
        ["--steps", "30", "--variance-draws", "3"],
        ["elbo.png", "posterior_means.png", "results.json"],
    ),
    "benchmark": (["--steps", "3", "--rounds", "1"], ["benchmark.json"]),
    "benchmark_vae": (
        ["--ks", "2", "--batch-size", "4", "--steps", "1", "--rounds", "1"],
        ["benchmark.json"],
    ),
    "diffusion_bound": (
        ["--num-data", "4", "--samples", "20", "--timesteps", "5", "--variance-scales", "2"],
        ["terms.png", "variance.png", "histogram.png", "results.json"],
    ),
    "earthquake": (
        ["--steps", "5", "--num-data", "30", "--cavi-iters", "5"],
        ["elbo.png", "clusters.png", "results.json"],
    ),
    "gamma_natural_gradient": (
        ["--steps", "20", "--num-data", "50"],
        ["trajectories.png", "nll.png", "path.png", "results.json"],
    ),
    "gmm_cavi": (
        ["--steps", "5", "--num-data", "30", "--cavi-iters", "5"],
        ["elbo.png", "clusters.png", "results.json"],
    ),
    "gumbel_softmax": (
        ["--num-samples", "50", "--grad-draws", "20", "--grid-points", "3", "--grad-temperatures", "0.5", "1"],
        ["histogram.png", "temperature.png", "gradients.png", "results.json"],
    ),
    "iwelbo_bounds": (["--ks", "1", "5", "--draws", "3"], ["bounds.png", "results.json"]),
    "lda_svi": (
        ["--num-docs", "40", "--vocab-size", "20", "--num-topics", "3", "--doc-length", "20",
         "--cavi-iters", "3", "--svi-updates", "5", "--batch-size", "10", "--pyro-steps", "5",
         "--eval-points", "3"],
        ["elbo.png", "topics.png", "results.json"],
    ),
    "natural_gradient_svi": (
        ["--steps", "5", "--exact-steps", "5", "--particles", "2", "--cavi-iters", "3"],
        ["elbo_gap.png", "results.json"],
    ),
    "poisson_gamma": (["--steps", "20"], ["theta.png", "elbo.png", "results.json"]),
    "vae_mnist": (
        ["--data-dir", TINY_MNIST, "--epochs", "1", "--eval-samples", "5", "--runs", "vae,iwae5",
         "--hidden-dims", "8", "--latent-dim", "2", "--batch-size", "8", "--monitor-k", "3",
         "--monitor-size", "8", "--no-download"],
        ["elbo_iwelbo.png", "reconstructions.png", "samples.png", "results.json"],
    ),
    "rao_blackwell": (
        ["--steps", "20", "--variance-draws", "3", "--num-data", "4"],
        ["variance.png", "elbo.png", "results.json"],
    ),
}


def test_every_experiment_is_in_the_smoke_list():
    scripts = {
        name[:-3]
        for name in os.listdir(os.path.join(ROOT, "experiments"))
        if name.endswith(".py") and not name.startswith("_")
    }
    assert scripts == set(SMOKE), "add new experiments to SMOKE"


@pytest.mark.parametrize("script", sorted(SMOKE))
def test_experiment_runs(script, tmp_path):
    flags, outputs = SMOKE[script]
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run(
        [sys.executable, "-m", "experiments." + script, "--out", str(tmp_path)] + flags,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in outputs:
        path = tmp_path / name
        assert path.exists() and path.stat().st_size > 0, name
        if name.endswith(".json"):
            json.loads(path.read_text())
