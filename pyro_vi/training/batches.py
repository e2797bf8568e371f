"""
What each step of :func:`~pyro_vi.training.fit` gives the model and guide as
positional arguments: the same ``*args`` every time (:class:`FullBatch`), or
the batches of ``data``, one pass per epoch (:class:`Epochs`). Both say where
the run is, for messages and checkpoints, and put a saved position back.
"""

import collections.abc
from typing import Optional

import numpy as np
import torch

from .random_states import random_states_kept, rng_state, set_rng_state

__all__ = ["Epochs", "FullBatch", "check_data", "check_sharded"]


def check_data(data, args):
    """``data`` as :func:`~pyro_vi.training.fit` takes it: ``None``, or an
    iterable of batches that can be iterated again, with no ``*args``."""
    if data is None:
        return None
    if isinstance(data, (torch.Tensor, np.ndarray, str, bytes, dict)) or not isinstance(data, collections.abc.Iterable):
        raise ValueError(
            f"data must be an iterable of batches (a DataLoader, a list of tuples...), got {type(data).__name__}; "
            "pass a single full batch as positional arguments instead"
        )
    if isinstance(data, collections.abc.Iterator):
        raise ValueError(
            "data must be re-iterable, one pass per epoch (a DataLoader, a list), got the one-shot "
            f"iterator {type(data).__name__}; pass the iterable it came from"
        )
    if args:
        raise ValueError(
            "with data=, each batch is the model's positional arguments: pass the other "
            f"{len(args)} positional argument(s) as keywords"
        )
    return data


def _sized(data) -> Optional[int]:
    try:
        return len(data)
    except (TypeError, NotImplementedError):
        return None


def _generators(data) -> list:
    """The torch generators that drive ``data``'s order: ``data.generator``,
    ``data.sampler.generator``, ``data.batch_sampler.sampler.generator``."""
    found = []
    batch_sampler = getattr(data, "batch_sampler", None)
    for owner in (data, getattr(data, "sampler", None), getattr(batch_sampler, "sampler", None)):
        generator = getattr(owner, "generator", None)
        if isinstance(generator, torch.Generator) and all(generator is not g for g in found):
            found.append(generator)
    return found


def _distributed_sampler(data):
    """The :class:`~torch.utils.data.distributed.DistributedSampler` that
    orders ``data`` (a DataLoader's sampler or its batch sampler's), or
    ``None``."""
    batch_sampler = getattr(data, "batch_sampler", None)
    for sampler in (getattr(data, "sampler", None), getattr(batch_sampler, "sampler", None)):
        if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
            return sampler
    return None


def check_sharded(data, rank, size):
    """Under a process group, a map-style DataLoader must give each process
    its own shard: refuse one without a DistributedSampler for this process."""
    if not isinstance(data, torch.utils.data.DataLoader) or isinstance(data.dataset, torch.utils.data.IterableDataset):
        return
    sampler = _distributed_sampler(data)
    if sampler is None:
        raise ValueError(
            f"data is a DataLoader with a {type(data.sampler).__name__}: under torch.distributed, each of the "
            f"{size} processes would pass over all of the data in every epoch. Give it "
            "sampler=torch.utils.data.distributed.DistributedSampler(dataset) (shuffle=True there, not in the "
            "DataLoader): each process then gets its shard, and fit calls the sampler's set_epoch at every epoch"
        )
    if (sampler.num_replicas, sampler.rank) != (size, rank):
        raise ValueError(
            f"data's DistributedSampler has num_replicas={sampler.num_replicas}, rank={sampler.rank}, but this "
            f"process is rank {rank} of {size}: build it after init_process_group, without num_replicas and rank"
        )


def _as_args(batch) -> tuple:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


class FullBatch:
    """Without ``data``: every step gets ``args``, and there are no epochs."""

    epoch = 0  # completed epochs
    per_epoch = None  # batches per epoch

    def __init__(self, args):
        self.args = args

    def next(self) -> tuple:
        return self.args

    def first(self) -> tuple:
        return self.args

    def where(self, step) -> str:
        return f"step {step}"

    def position(self) -> dict:
        return {"epoch": 0, "batch": 0, "epoch_start": None}

    def fingerprint(self):
        return None

    def restore(self, epoch, batch, start, path) -> None:
        pass  # nothing to put back: the fingerprint has refused a checkpoint of epochs


class Epochs:
    """Passes over ``data``, each from a fresh ``iter(data)``. The random states
    at the start of the current epoch are kept: a resumed run puts them back
    and replays the epoch's first batches, which reproduces the batches of any
    iterable whose order depends only on those states (e.g. a DataLoader that
    shuffles with its ``generator`` or with the global RNG). A
    ``DistributedSampler``'s ``set_epoch`` is called at each epoch."""

    def __init__(self, data):
        self.data = data
        self.per_epoch = _sized(data)
        self.generators = _generators(data)
        self.sampler = _distributed_sampler(data)
        self.epoch = 0  # completed
        self.batch = 0  # done in the current epoch
        self.iterator = None
        self.start = None  # the random states when the current epoch began

    def _states(self):
        return {"rng": rng_state(), "generators": [g.get_state() for g in self.generators]}

    def _begin(self):
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)
        self.iterator = iter(self.data)

    def next(self) -> Optional[tuple]:
        """The next batch as positional arguments, or ``None`` when the epoch
        has just ended."""
        if self.iterator is None:
            self.start = self._states()
            self._begin()
            self.batch = 0
        try:
            batch = next(self.iterator)
        except StopIteration:
            if self.batch == 0:
                raise ValueError(f"data yielded no batch in epoch {self.epoch + 1}") from None
            self.iterator = None
            self.epoch += 1
            return None
        self.batch += 1
        return _as_args(batch)

    def first(self) -> tuple:
        """A batch for a throw-away step, leaving every random state as it was."""
        with random_states_kept(self.generators):
            for batch in self.data:
                return _as_args(batch)
        raise ValueError("data yielded no batch")

    def where(self, step) -> str:
        return f"step {step} (epoch {self.epoch + 1}, batch {self.batch})"

    def position(self) -> dict:
        if self.iterator is None:
            return {"epoch": self.epoch, "batch": 0, "epoch_start": self._states()}
        return {"epoch": self.epoch, "batch": self.batch, "epoch_start": self.start}

    def fingerprint(self) -> dict:
        return {"batches_per_epoch": self.per_epoch, "generators": len(self.generators)}

    def restore(self, epoch, batch, start, path) -> None:
        """Goes back to batch ``batch`` of epoch ``epoch + 1``, which began
        with the random states ``start``."""
        set_rng_state(start["rng"])
        for generator, state in zip(self.generators, start["generators"]):
            generator.set_state(state)
        self.epoch, self.batch, self.start = epoch, 0, start
        if batch:
            self._begin()
            for done in range(batch):
                try:
                    next(self.iterator)
                except StopIteration:
                    raise ValueError(
                        f"checkpoint {path} is at batch {batch} of epoch {epoch + 1}, but data now yields only "
                        f"{done} batches "
                        "in that epoch"
                    ) from None
            self.batch = batch
