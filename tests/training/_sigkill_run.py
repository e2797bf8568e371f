"""``python -m tests.training._sigkill_run CHECKPOINT NUM_STEPS OUT``, for
tests/training/test_checkpoint_sigkill.py: runs :func:`pyro_vi.training.fit`
(ControlVariateELBO() with its default settings, a checkpoint every step,
``resume="allow_fresh"``) from a fixed seed and saves the losses and params
to ``OUT``."""

import sys

import pyro
import torch

from pyro_vi import ControlVariateELBO
from pyro_vi.training import fit
from tests.programs import normal_guide, normal_model

X = torch.tensor([0.3, -1.2, 2.0, 0.7, 1.5, 0.9])


def train(path, num_steps, out):
    pyro.set_rng_seed(0)
    result = fit(
        normal_model,
        normal_guide,
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


if __name__ == "__main__":
    train(sys.argv[1], int(sys.argv[2]), sys.argv[3])
