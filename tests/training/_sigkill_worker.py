"""Fork server for tests/training/test_checkpoint_sigkill.py.

Imports torch, pyro and pyro_vi once, then reads commands from stdin, one per
line: ``<checkpoint> <num_steps> <out> <kill_after>``. For each it forks a
child that runs :func:`pyro_vi.training.fit` (ControlVariateELBO() with its
default settings, a checkpoint every step, ``resume="allow_fresh"``) as a new
process would, and saves the losses and params to ``<out>``. With
``kill_after`` a number of seconds, the server sends the child SIGKILL then
(unless it has finished). It answers ``<exit status> <seconds>``. One fit
without a checkpoint runs in the server first, so that torch's lazy imports
are paid once; each child starts with an empty param store.
"""

import os
import signal
import sys
import time

import pyro
import torch

from pyro_vi import ControlVariateELBO
from pyro_vi.training import fit
from tests.programs import normal_guide, normal_model

X = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.5, 0.9])


model, guide = normal_model, normal_guide


def train(path, num_steps, out):
    pyro.set_rng_seed(0)
    result = fit(
        model,
        guide,
        ControlVariateELBO(),
        pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.99}),
        X,
        num_steps=num_steps,
        checkpoint=path,
        checkpoint_every=1,
        resume="allow_fresh",
    )
    params = {name: p.detach() for name, p in pyro.get_param_store().named_parameters()}
    torch.save({"losses": torch.tensor(result.losses), "params": params}, out)


def main():
    torch.set_num_threads(1)
    # pay torch's lazy imports (dynamo, fx: ~1 s) here once, not in every child
    fit(model, guide, ControlVariateELBO(), pyro.optim.ClippedAdam({"lr": 0.05}), X, num_steps=1)
    pyro.clear_param_store()
    for line in sys.stdin:
        path, num_steps, out, kill_after = line.split()
        start = time.perf_counter()
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                train(path, int(num_steps), out)
            except BaseException as error:  # report, never return into the server's loop
                print(f"child: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
                code = 1
            os._exit(code)
        if kill_after != "none":
            time.sleep(float(kill_after))
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        print(status, time.perf_counter() - start, flush=True)


if __name__ == "__main__":
    main()
