"""Data-parallel SVI over processes with :mod:`torch.distributed`.

Each process runs the same program on its own shard of the data and draws
its own particles; after ``loss_and_grads`` the parameters' gradients (and
the loss) are averaged over the processes with one all-reduce, as
:class:`~torch.nn.parallel.DistributedDataParallel` does, so that every
process takes the same optimizer step. :func:`pyro_vi.fit` does this
whenever a process group is initialized (e.g. under ``torchrun``), and
writes one checkpoint per process. The control-variate estimators can
also estimate their coefficients from every process's particles
(``pool_processes=True``): their sufficient statistics are added up with
one all-reduce.

Launch, e.g. with gloo on CPUs::

    torchrun --nproc_per_node=2 my_script.py

where the script calls ``torch.distributed.init_process_group("gloo")``,
seeds each process differently (``pyro.set_rng_seed(seed + rank)``) and
gives each its shard of the data.
"""

import torch
import torch.distributed as dist

__all__ = ["average_gradients", "process", "sum_over_processes"]


def process():
    """``(rank, world_size)``: ``(0, 1)`` outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def average_gradients(params, loss=None):
    """Averages the ``.grad`` of ``params`` (the same list, in the same
    order, on every process; a missing gradient counts as zero) and ``loss``
    over the processes, in place, with one all-reduce per dtype.

    :returns: the averaged loss (``loss`` itself outside a process group).
    """
    _, size = process()
    if size == 1:
        return loss
    params = list(params)
    if not params:
        return loss if loss is None else float(sum_over_processes(torch.tensor([float(loss)]))) / size
    by_dtype = {}
    for param in params:
        by_dtype.setdefault(param.dtype, []).append(param)
    for dtype, group in by_dtype.items():
        parts = [(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in group]
        if loss is not None and dtype == params[0].dtype:
            parts.append(torch.tensor([float(loss)], dtype=dtype, device=group[0].device))
        flat = torch.cat(parts)
        dist.all_reduce(flat)
        flat /= size
        offset = 0
        for param in group:
            param.grad = flat[offset : offset + param.numel()].view_as(param).clone()
            offset += param.numel()
        if loss is not None and dtype == params[0].dtype:
            loss = float(flat[-1])
    return loss


def sum_over_processes(tensor):
    """``tensor`` added up over the processes (an all-reduce, in place)."""
    if process()[1] > 1:
        dist.all_reduce(tensor)
    return tensor
