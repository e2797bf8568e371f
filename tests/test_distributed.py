"""Data-parallel SVI over two processes (gloo, localhost, spawned here): the
averaged gradient is the mean of the per-shard gradients of one process
with the same seeds; control-variate statistics pooled over the processes
give the coefficients of one process holding all their particles; ``fit``
keeps the processes' parameters equal."""

import os
import time

import pyro
import pyro.distributions as dist
import pytest
import torch
import torch.distributed
import torch.multiprocessing as mp
from pyro.distributions import constraints
from pyro.optim import Adam

from pyro_vi import ControlVariateELBO, RaoBlackwellELBO, fit
from pyro_vi.distributed import average_gradients
from pyro_vi.math.control_variates import controlled_gradient, gradient_from_sums, particle_sums

DATA = torch.tensor([0.3, -1.2, 2.1, 0.7, 1.5, -0.4, 0.9, -0.1])
WORLD = 2
TIMEOUT = 90  # seconds, for the whole two-process run


def model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(data)):
        y = pyro.sample("y", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(y, 0.5), obs=data)


def guide(data):
    m = pyro.param("m", torch.tensor(0.2))
    s = pyro.param("s", torch.tensor(0.8), constraint=constraints.positive)
    pyro.sample("loc", dist.Normal(m, s))
    ym = pyro.param("ym", torch.zeros(len(data)))
    with pyro.plate("data", len(data)):
        pyro.sample("y", dist.Normal(ym, 1.0))


def shard(rank):
    return DATA[rank::WORLD]


def shard_gradient(rank):
    """One process's gradient on its shard, with its own seed."""
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide(shard(rank))  # the same initial values on every process
    elbo = ControlVariateELBO(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    pyro.set_rng_seed(10 + rank)
    loss = elbo.loss_and_grads(model, guide, shard(rank))
    store = pyro.get_param_store()
    names = sorted(store.keys())
    return loss, names, [store[n].unconstrained() for n in names]


def particles(rank):
    """Per-particle scores and signals of one process (made up: the
    statistics do not care where they come from)."""
    generator = torch.Generator().manual_seed(100 + rank)
    return torch.randn(6, 3, 2, generator=generator), 40 + torch.randn(6, generator=generator)


def _worker(rank, init, out):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method="file://" + init, rank=rank, world_size=WORLD)
    result = {}
    loss, names, params = shard_gradient(rank)
    result["loss"] = average_gradients(params, loss)
    result["grads"] = {n: p.grad.clone() for n, p in zip(names, params)}
    h, signal = particles(rank)
    for coefficient in ("pooled", "leave_one_out"):
        result[coefficient] = controlled_gradient(h, coefficient, signal=signal, pool=_sum)
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    guide(shard(rank))
    pyro.set_rng_seed(20 + rank)
    elbo = RaoBlackwellELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1, pool_processes=True)
    fit(model, guide, elbo, Adam({"lr": 0.05}), shard(rank), num_steps=3, checkpoint=os.path.join(out, "run.pt"))
    result["fitted"] = {n: pyro.param(n).detach().clone() for n in sorted(pyro.get_param_store().keys())}
    torch.save(result, os.path.join(out, f"rank{rank}.pt"))
    torch.distributed.destroy_process_group()


def _sum(tensor):
    torch.distributed.all_reduce(tensor)
    return tensor


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("distributed"))
    context = mp.start_processes(
        _worker, args=(os.path.join(out, "init"), out), nprocs=WORLD, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + TIMEOUT
    while not context.join(timeout=1):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            pytest.fail(f"the two processes did not finish in {TIMEOUT} s")
    assert all(os.path.exists(os.path.join(out, f"run.pt.rank{r}")) for r in range(WORLD))
    return [torch.load(os.path.join(out, f"rank{r}.pt")) for r in range(WORLD)]


def test_the_gradient_is_the_mean_of_the_shards_gradients(ranks):
    shards = [shard_gradient(rank) for rank in range(WORLD)]
    names = shards[0][1]
    expected = {n: sum(s[2][i].grad for s in shards) / WORLD for i, n in enumerate(names)}
    for result in ranks:
        assert result["loss"] == pytest.approx(sum(s[0] for s in shards) / WORLD, rel=1e-6)
        assert result["grads"].keys() == expected.keys()
        for name in names:
            assert torch.allclose(result["grads"][name], expected[name], rtol=1e-5, atol=1e-6), name


@pytest.mark.parametrize("coefficient", ["pooled", "leave_one_out"])
def test_pooled_statistics_give_the_coefficients_of_all_particles(ranks, coefficient):
    """Each process's gradient uses the coefficients of both processes'
    particles: their mean is the gradient of one process holding all of them."""
    h, signal = zip(*(particles(rank) for rank in range(WORLD)))
    expected = controlled_gradient(torch.cat(h), coefficient, signal=torch.cat(signal))
    assert torch.allclose(sum(r[coefficient] for r in ranks) / WORLD, expected, rtol=1e-5, atol=1e-6)
    # and the pooled coefficient itself is that of all the particles
    pooled = particle_sums(h[0], signal[0]) + particle_sums(h[1], signal[1])
    one = gradient_from_sums(h[0], particle_sums(h[0], signal[0]), pooled, coefficient, signal[0])
    assert torch.allclose(one, ranks[0][coefficient], rtol=1e-6, atol=1e-7)


def test_fit_keeps_the_processes_parameters_equal(ranks):
    first, second = (r["fitted"] for r in ranks)
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
