"""A user's script under ``python -m torch.distributed.run --nproc_per_node=2``
(two gloo processes on localhost, bounded by a timeout): an AutoDiagonalNormal
guide, whose initial values each process draws from its own seed, ends with
the same parameters on both processes, at the exact posterior; the obvious
shard program is refused on both, with the fix."""

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.helpers import ROOT

SCRIPT = os.path.join(ROOT, "tests", "training", "_distributed_user_script.py")
SEED, NUM_DATA, SIGMA, PRIOR = 0, 1000, 1.0, 3.0  # as in the script
TIMEOUT = 120  # seconds

# one worker runs the module, so that its fixture starts the processes once
pytestmark = pytest.mark.xdist_group("distributed_torchrun")


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        command + [SCRIPT, str(SEED), str(out)],
        cwd=out,
        # faulthandler: a process that aborts prints the Python line it was on
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT, PYTHONFAULTHANDLER="1"),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    written = sorted(path.name for path in out.glob("rank*.json"))
    stderr = proc.stderr if len(proc.stderr) < 8000 else proc.stderr[:4000] + "\n...\n" + proc.stderr[-4000:]
    assert proc.returncode == 0, f"exit {proc.returncode}; wrote {written}\n{stderr}"
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def exact_posterior():
    data = 1.0 + SIGMA * torch.randn(NUM_DATA, generator=torch.Generator().manual_seed(SEED))
    precision = 1 / PRIOR**2 + NUM_DATA / SIGMA**2
    return data.sum().item() / SIGMA**2 / precision, precision**-0.5


def test_an_autoguide_ends_equal_on_both_processes_at_the_exact_posterior(reports):
    assert reports[0]["posterior"] == reports[1]["posterior"]
    (loc, scale), (exact_loc, exact_scale) = reports[0]["posterior"], exact_posterior()
    # six seeds of this script ended within 0.02 posterior sds of the mean
    # and 12% of the sd
    assert abs(loc - exact_loc) < 0.3 * exact_scale
    assert 0.75 < scale / exact_scale < 1.33


def test_the_obvious_shard_program_is_refused_on_both_processes(reports):
    for report in reports:
        assert "observed site 'x' (plate 'data' of size 500)" in report["refused"]
        assert "pyro.plate('data', N_total, subsample=my_indices)" in report["refused"]
