"""A user's data-parallel fit, launched by tests/training/test_distributed_torchrun.py
as ``python -m torch.distributed.run --nproc_per_node=2 <this file> SEED OUT``:
a Normal mean with 1,000 points in shards, an AutoDiagonalNormal guide
(whose initial values are drawn), each process seeded by its rank. Fits it with
ControlVariateELBO(pool_processes=True), then tries the obvious shard
program. Writes ``OUT/rank<r>.json`` per process: the fitted posterior mean
and sd, and the message of the shard program's refusal."""

import json
import os
import sys

import pyro
import pyro.distributions as dist
import torch
import torch.distributed
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoDiagonalNormal
from pyro.optim import ClippedAdam

import pyro_vi

NUM_DATA, SIGMA, PRIOR, STEPS = 1000, 1.0, 3.0, 300

torch.set_num_threads(1)
torch.distributed.init_process_group("gloo")
rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
seed = int(sys.argv[1])
data = 1.0 + SIGMA * torch.randn(NUM_DATA, generator=torch.Generator().manual_seed(seed))
indices = torch.arange(rank, NUM_DATA, world)
pyro.set_rng_seed(seed * 100 + rank)


def model(x, indices):
    loc = pyro.sample("loc", dist.Normal(0.0, PRIOR))
    with pyro.plate("data", NUM_DATA, subsample=indices):
        pyro.sample("x", dist.Normal(loc, SIGMA), obs=x)


def shard_model(x, indices):
    loc = pyro.sample("loc", dist.Normal(0.0, PRIOR))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(loc, SIGMA), obs=x)


report = {"rank": rank}
pyro.clear_param_store()
guide = AutoDiagonalNormal(model)
elbo = pyro_vi.ControlVariateELBO(num_particles=10, vectorize_particles=True, pool_processes=True)
optim = ClippedAdam({"lr": 0.1, "lrd": 0.01 ** (1 / STEPS)})
pyro_vi.fit(model, guide, elbo, optim, data[indices], indices, num_steps=STEPS)
report["posterior"] = [guide.loc.item(), guide.scale.item()]
try:
    pyro_vi.fit(
        shard_model,
        AutoDiagonalNormal(shard_model),
        Trace_ELBO(),
        ClippedAdam({"lr": 0.05}),
        data[indices],
        indices,
        num_steps=1,
    )
except ValueError as error:
    report["refused"] = str(error)
with open(os.path.join(sys.argv[2], f"rank{rank}.json"), "w") as f:
    json.dump(report, f)
torch.distributed.destroy_process_group()
