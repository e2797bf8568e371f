"""What the long studies share: the binarized MNIST batches the VAEs train
on, evaluation draws that leave the training stream alone, and the
round-robin timings of the benchmarks (every configuration
timed in turn, round after round, so that their ratios share the machine's
noise)."""

import contextlib
import math
import time

import numpy as np
import torch

from experiments import _cli
from models.mnist import binarize, default_data_dir
from pyro_vi.training.distributed import process

# ----------------------------------------------------------------------------
# MNIST


def mnist_arguments(parser):
    """``--data-dir`` and ``--no-download``."""
    where = f"default $PYRO_VI_DATA_DIR or ~/.cache/pyro_vi/data: {default_data_dir()}"
    parser.add_argument("--data-dir", help=f"torchvision MNIST root or folder of the IDX files ({where})")
    parser.add_argument("--no-download", action="store_true", help="never download MNIST (or PYRO_VI_NO_DOWNLOAD=1)")


@contextlib.contextmanager
def fixed_rng(seed):
    """Runs the block with ``torch.manual_seed(seed)`` and puts the global
    random states back afterwards, so evaluation never disturbs the training
    stream."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class BinarizedBatches:
    """The training images in a random order, in batches of ``batch_size``
    (the last one shorter, or left out with ``drop_last``), each binarized
    afresh (dynamic binarization); order and pixels come from
    :attr:`generator`, which :func:`pyro_vi.fit` saves and restores with a
    checkpoint. Under ``torchrun`` every process draws the same order and
    pixels and takes its share of each batch (``batch_size / world_size``
    images)."""

    def __init__(self, images, batch_size, seed, drop_last=False, device="cpu"):
        self.images, self.batch_size, self.drop_last, self.device = images, batch_size, drop_last, device
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world_size = process()

    def __len__(self):
        return len(self.images) // self.batch_size if self.drop_last else math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.images), generator=self.generator)
        for first in range(0, len(self) * self.batch_size, self.batch_size):
            batch = binarize(self.images[order[first : first + self.batch_size]], self.generator)
            yield batch[self.rank :: self.world_size].to(self.device)


# ----------------------------------------------------------------------------
# timings


def timing_arguments(parser, steps, rounds):
    """``--steps`` (timed per round) and ``--rounds``."""
    parser.add_argument("--steps", type=_cli.positive_int, default=steps, help="steps per timing")
    parser.add_argument("--rounds", type=_cli.positive_int, default=rounds, help="rounds of timings")


def seconds_per_step(step, num_steps):
    """Seconds per call of ``step`` (no arguments), after one warm-up call."""
    step()
    start = time.perf_counter()
    for _ in range(num_steps):
        step()
    return (time.perf_counter() - start) / num_steps


def round_robin(makers, rounds, num_steps):
    """``name -> [seconds per step in each round]``: every ``makers[name]()``
    (which builds a fresh step right before it is timed) timed in turn,
    ``rounds`` times over."""
    times = {name: [] for name in makers}
    for _ in range(rounds):
        for name, make in makers.items():
            times[name].append(seconds_per_step(make(), num_steps))
    return times


def ratios(times, baseline, key="ratio"):
    """Per name of ``times`` (seconds per step per round): the median ms per
    step, and its per-round ratio to ``baseline`` in the same round
    (``key``), with the median, lowest and highest over the rounds."""
    table = {}
    for name, seconds in times.items():
        per_round = [t / b for t, b in zip(seconds, times[baseline])]
        table[name] = {
            "ms_per_step": 1e3 * float(np.median(seconds)),
            key: float(np.median(per_round)),
            key + "_low": float(np.min(per_round)),
            key + "_high": float(np.max(per_round)),
            "ms_per_step_rounds": [1e3 * t for t in seconds],
            key + "_rounds": per_round,
        }
    return table
