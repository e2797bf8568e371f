"""What the long studies share: the shuffled batches they train on
(binarized afresh for the VAEs), evaluation draws that leave the training
stream alone, the runs they save (``--estimators``, ``--resume``,
``--overwrite``) and the benchmarks' timing flags."""

import contextlib
import json
import math
import os

import torch

from experiments import _cli
from experiments._results import write_json
from models.mnist import binarize, default_data_dir
from pyro_vi.training import load_checkpoint
from pyro_vi.training.distributed import process
from pyro_vi.training.random_states import random_states_kept

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
    with random_states_kept():
        torch.manual_seed(seed)
        yield


class Batches:
    """The images in a fresh random order each epoch, in batches of
    ``batch_size`` (the last one shorter, or left out with ``drop_last``);
    the order comes from :attr:`generator`, which :func:`pyro_vi.fit` saves
    and restores with a checkpoint. Under ``torchrun`` every process draws
    the same order and takes its share of each batch (``batch_size /
    world_size`` images)."""

    def __init__(self, images, batch_size, seed, drop_last=False, device="cpu"):
        self.images, self.batch_size, self.drop_last, self.device = images, batch_size, drop_last, device
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world_size = process()

    def __len__(self):
        return len(self.images) // self.batch_size if self.drop_last else math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.images), generator=self.generator)
        for first in range(0, len(self) * self.batch_size, self.batch_size):
            batch = self.transform(self.images[order[first : first + self.batch_size]])
            yield batch[self.rank :: self.world_size].to(self.device)

    def transform(self, batch):
        return batch


class BinarizedBatches(Batches):
    """:class:`Batches` each binarized afresh (dynamic binarization) with
    :attr:`generator`, so under ``torchrun`` with the same pixels in every
    process."""

    def transform(self, batch):
        return binarize(batch, self.generator)


# ----------------------------------------------------------------------------
# saved runs: --estimators, --resume, --overwrite


def short_name(label):
    """An estimator's name on the command line (``--estimators``): its label's first word, without parentheses."""
    return label.split(" ")[0].split("(")[0]


def chosen(registry, names):
    """The estimators of ``registry`` named in ``names`` (:func:`short_name`; ``None``: all), in registry order."""
    return {label: e for label, e in registry.items() if names is None or short_name(label) in names}


def estimators_argument(parser, registry, help):
    """``--estimators``: a subset of ``registry``, by :func:`short_name` (see :func:`chosen`)."""
    parser.add_argument("--estimators", nargs="+", choices=[short_name(label) for label in registry], help=help)


def safe_name(label):
    """``label`` as a file name: every character but letters and digits made ``_``."""
    return "".join(c if c.isalnum() else "_" for c in label)


def restart_arguments(parser, resume, overwrite, exclusive=True):
    """``--resume`` and ``--overwrite``, with their help; argparse refuses
    both at once when ``exclusive``."""
    group = parser.add_mutually_exclusive_group() if exclusive else parser
    group.add_argument("--resume", action="store_true", help=resume)
    group.add_argument("--overwrite", action="store_true", help=overwrite)


def plotting(args):
    """Whether this call only plots (``--plot-only``), which it refuses with
    ``--resume`` or ``--overwrite``: it trains nothing."""
    if args.plot_only and (args.resume or args.overwrite):
        raise ValueError("argument --plot-only: trains nothing; drop --resume/--overwrite")
    return args.plot_only


def existing_checkpoints(args, paths, error=ValueError):
    """The checkpoints among ``paths`` that exist; before any work, without
    ``--resume`` or ``--overwrite``, raises ``error`` if there are any, rather
    than replace them."""
    existing = [path for path in paths if os.path.exists(path)]
    if existing and not (args.resume or args.overwrite):
        raise error(
            "{} holds checkpoints of this study ({}); pass --resume to continue them or --overwrite to start "
            "over".format(os.path.dirname(existing[0]), ", ".join(map(os.path.basename, existing)))
        )
    return existing


def check_checkpoints(checkpoints, unit, end, flags=False):
    """With ``--resume``, before any training: reads every checkpoint of
    ``checkpoints`` (``(path, fingerprint of this call)``, those that exist)
    and refuses, naming the differences, those written with another
    fingerprint (on every key of either; with ``flags``, on this call's keys,
    named as the flags they are) or past this call's last ``unit``
    (``"step"`` or ``"epoch"``), ``end``."""
    problems = []
    for path, ours in checkpoints:
        if not os.path.exists(path):
            continue
        saved = load_checkpoint(path)
        theirs = saved["fingerprint"].get("user") or {}
        lines = [
            "{}: {!r} in the checkpoint, {!r} here".format(
                _cli.flag_name(key) if flags else key, theirs.get(key, "(absent)"), ours.get(key, "(absent)")
            )
            for key in (list(ours) if flags else sorted(set(theirs) | set(ours)))
            if theirs.get(key) != ours.get(key)
        ]
        if saved[unit] > end:
            lines.append(f"{unit}: the checkpoint is at {unit} {saved[unit]}, past --{unit}s {end}")
        if lines:
            problems.append("{}:\n    {}".format(path, "\n    ".join(lines)))
    if problems:
        raise ValueError(
            "--resume: checkpoint(s) of another configuration, nothing was trained:\n  {}\n"
            "pass the flags they were written with, another --out, or --overwrite to start "
            "over".format("\n  ".join(problems))
        )


def checkpointing(args, path):
    """:func:`pyro_vi.fit`'s checkpoint arguments: ``path`` every ``--checkpoint-every``
    steps, continued with ``--resume`` (started where there is none), replaced with ``--overwrite``."""
    resume = "allow_fresh" if args.resume else False
    return dict(checkpoint=path, checkpoint_every=args.checkpoint_every, resume=resume, overwrite=args.overwrite)


class SavedRuns:
    """The runs of a long study under ``out``: the checkpoint of run
    ``NAME`` in ``checkpoints/NAME.pt`` and, once it has finished, its record
    in ``runs/NAME.json`` (written whole or not at all), which ``--resume``
    reuses only if it was saved with the same ``settings``."""

    def __init__(self, out, settings=None):
        self.out, self.settings = out, settings

    def checkpoint(self, name):
        return os.path.join(self.out, "checkpoints", name + ".pt")

    def path(self, name):
        return os.path.join(self.out, "runs", name + ".json")

    def load(self, name):
        """The record saved as ``name``, or ``None``."""
        if not os.path.exists(self.path(name)):
            return None
        with open(self.path(name)) as f:
            return json.load(f)

    def finished(self, name):
        """The record saved as ``name`` with these settings, or ``None``."""
        record = self.load(name)
        return record if record is not None and record.get("settings") == self.settings else None

    def save(self, name, record):
        """Saves ``record`` with the settings; returns what it saved."""
        record, path = dict(record, settings=self.settings), self.path(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_json(path, record)
        return record


# ----------------------------------------------------------------------------
# timings


def timing_arguments(parser, steps, rounds):
    """``--steps`` (timed per round) and ``--rounds``."""
    parser.add_argument("--steps", type=_cli.positive_int, default=steps, help="steps per timing")
    parser.add_argument("--rounds", type=_cli.positive_int, default=rounds, help="rounds of timings")
