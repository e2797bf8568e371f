"""A run killed with SIGKILL at random moments while it checkpoints every step
resumes, every time, to the same bits as the uninterrupted run (issue 10)."""

import os
import signal
import subprocess
import sys

import numpy as np
import torch

from tests.helpers import ROOT

NUM_STEPS = 20
TRIALS = 24


class ForkServer:
    """tests/training/_sigkill_worker.py: imports once, forks one child per run."""

    def __init__(self, log):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, "tests", "training", "_sigkill_worker.py")],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )

    def run(self, path, out, kill_after=None):
        """``(exit status, seconds)`` of one child run."""
        self.process.stdin.write("{} {} {} {}\n".format(path, NUM_STEPS, out, kill_after or "none"))
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer, "the fork server died"
        status, seconds = answer.split()
        return int(status), float(seconds)

    def close(self):
        self.process.stdin.close()
        self.process.wait(timeout=30)


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path):
    log = open(tmp_path / "server.log", "w")
    server = ForkServer(log)
    try:
        status, duration = server.run(tmp_path / "reference.pt", tmp_path / "reference.out")
        assert status == 0, (tmp_path / "server.log").read_text()
        reference = torch.load(tmp_path / "reference.out", weights_only=True)
        kill_times = np.random.RandomState(2024).uniform(0.0, duration, size=TRIALS)
        killed_mid_run = killed_mid_write = 0
        for trial, kill_after in enumerate(kill_times):
            path, out = tmp_path / f"trial{trial}.pt", tmp_path / f"trial{trial}.out"
            status, _ = server.run(path, out, kill_after=kill_after)
            if os.WIFSIGNALED(status):
                assert os.WTERMSIG(status) == signal.SIGKILL
                saved_step = torch.load(path, weights_only=True)["step"] if path.exists() else 0
                killed_mid_run += 0 < saved_step < NUM_STEPS
                killed_mid_write += any(".tmp" in f for f in os.listdir(tmp_path))
            else:
                assert status == 0, (tmp_path / "server.log").read_text()
            status, _ = server.run(path, out)  # resume="allow_fresh": a fresh process resumes
            assert status == 0, "trial {} (killed after {:.3f} s): resume failed\n{}".format(
                trial, kill_after, (tmp_path / "server.log").read_text()
            )
            resumed = torch.load(out, weights_only=True)
            assert torch.equal(resumed["losses"], reference["losses"]), f"trial {trial}"
            assert resumed["params"].keys() == reference["params"].keys()
            for name, value in reference["params"].items():
                assert torch.equal(resumed["params"][name], value), f"trial {trial}: {name}"
            assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]  # killed writes cleaned up
        # most kills landed in a run in progress, some while it wrote
        print(
            f"{TRIALS} trials: {killed_mid_run} killed mid-run, {killed_mid_write} of them mid-write; reference "
            f"run {duration:.3f} s"
        )
        assert killed_mid_run >= TRIALS // 2, killed_mid_run
    finally:
        server.close()
        log.close()
