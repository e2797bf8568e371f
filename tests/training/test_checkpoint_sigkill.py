"""A run killed with SIGKILL at random moments while it checkpoints every step
resumes, every time, to the same bits as the uninterrupted run (issue 10)."""

import os
import signal

import numpy as np
import torch

NUM_STEPS = 20
TRIALS = 24


def test_sigkill_at_random_moments_then_resume_is_bit_identical(tmp_path, fork_server):
    """Each run is a child of the fork server (tests/fork_server.py), as a new
    process: ``python -m tests.training._sigkill_run``."""

    def run(path, out, kill_after=None):
        return fork_server.run(["-m", "tests.training._sigkill_run", path, NUM_STEPS, out], kill_after=kill_after)

    reference_run = run(tmp_path / "reference.pt", tmp_path / "reference.out")
    assert reference_run.returncode == 0, reference_run.stderr
    duration = reference_run.seconds
    reference = torch.load(tmp_path / "reference.out", weights_only=True)
    kill_times = np.random.RandomState(2024).uniform(0.0, duration, size=TRIALS)
    killed_mid_run = killed_mid_write = 0
    for trial, kill_after in enumerate(kill_times):
        path, out = tmp_path / f"trial{trial}.pt", tmp_path / f"trial{trial}.out"
        killed = run(path, out, kill_after=kill_after)
        if killed.returncode < 0:
            assert killed.returncode == -signal.SIGKILL
            saved_step = torch.load(path, weights_only=True)["step"] if path.exists() else 0
            killed_mid_run += 0 < saved_step < NUM_STEPS
            killed_mid_write += any(".tmp" in f for f in os.listdir(tmp_path))
        else:
            assert killed.returncode == 0, killed.stderr
        resumed_run = run(path, out)  # resume="allow_fresh": a fresh process resumes
        assert resumed_run.returncode == 0, f"trial {trial} (killed after {kill_after:.3f} s): {resumed_run.stderr}"
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
