"""The command line every study shares.

A study builds its parser with :func:`parser` and adds its own flags with the
validated ``type=`` functions below; :meth:`experiments._study.Study.parse`
finishes with :func:`parse`::

    def parser():
        parser = _cli.parser(__doc__, "results/study", seeds=(0, 1, 2), data_seed=True)
        _cli.add_svi_arguments(parser, steps=1000, particles=10, lr=0.05, lrd=0.999)
        parser.add_argument("--num-data", type=_cli.positive_int, default=100)
        return parser

Common flags (added by :func:`parser`):

- ``--out DIR``: where the figures and ``results.json`` go; created if missing
  and checked writable by :func:`parse`, before any work.
- ``--seed S`` or ``--seeds S [S ...]``: ``--seed`` keeps its old meaning (one
  seed) and is shorthand for ``--seeds S``. After :func:`parse`, ``args.seeds``
  is the list and ``args.seed`` its first element, so code written for one
  seed keeps working. A study that aggregates over seeds (``seeds=(0, 1, 2)``)
  runs those when neither flag is given; one that does not (no ``seeds``)
  runs seed 0 and refuses more than one.
- ``--threads N``: torch's intra-op (and, where still possible, inter-op)
  thread count, default 1, set by :func:`parse` before any work.
- ``--device {cpu,cuda}``: only for a study that uses it (``device=True``);
  ``cuda`` is refused when CUDA is not available.
- ``--plot-only``: redraw the figures from ``OUT/results.json`` (see
  :class:`experiments._study.Study`).

Every bad value exits through ``parser.error`` (status 2) with a message that
names the flag, the value and what to pass: the ``type=`` functions wrap
:mod:`pyro_vi.validation`, and a study's cross-flag ``check`` may raise
``ValueError`` (:func:`at_most` and :func:`even` raise the common ones). The
matplotlib backend is set in :mod:`experiments._figures`.

A study declares the estimators it compares as a :data:`Registry`: label ->
:class:`Estimator` (a factory, the guide it runs, its plotting style).
"""

import argparse
import dataclasses
import os
import tempfile
import types
from typing import Callable, Dict

import torch

from pyro_vi import validation

SEED_MAX = 2**32 - 1  # numpy's seeds (pyro.set_rng_seed seeds numpy too)


# ----------------------------------------------------------------------------
# argparse ``type=`` functions


def _type(name, parse):
    """An argparse ``type`` that turns ``ValueError`` into argparse's error
    (argparse otherwise prints only "invalid <name> value")."""

    def convert(text):
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    convert.__name__ = name
    return convert


def integer(minimum=None, maximum=None):
    """A whole number (written as one: ``2.5`` and ``1e3`` are refused) within
    ``[minimum, maximum]``."""

    def parse(text):
        try:
            value = int(text, 10)
        except ValueError:
            bounds = "".join(f" {op} {b}" for op, b in ((">=", minimum), ("<=", maximum)) if b is not None)
            raise ValueError(f"value must be an integer{bounds}, got {text!r}") from None
        return validation.integer("value", value, minimum=minimum, maximum=maximum)

    return _type("integer", parse)


def real(minimum=None, maximum=None, strict_minimum=False):
    """A finite real number within the bounds (``minimum`` excluded when
    ``strict_minimum``); ``inf`` and ``nan`` are refused."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"value must be a real number, got {text!r}") from None
        return validation.real("value", value, minimum=minimum, maximum=maximum, strict_minimum=strict_minimum)

    return _type("real", parse)


positive_int = integer(minimum=1)
nonnegative_int = integer(minimum=0)
seed = integer(minimum=0, maximum=SEED_MAX)
finite_real = real()
positive_real = real(minimum=0, strict_minimum=True)
nonnegative_real = real(minimum=0)
#: In (0, 1]: a per-step learning-rate decay such as ClippedAdam's ``lrd``.
decay = real(minimum=0, maximum=1, strict_minimum=True)


def existing_file(text):
    """The path of a file that exists."""
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no file at {text!r}; pass the path of an existing file")
    return text


# ----------------------------------------------------------------------------
# the parser


def parser(doc, out, *, device=False, seeds=None, seeds_help=None, data_seed=False):
    """An ``ArgumentParser`` described by the first line of ``doc``, with the
    common flags. ``out=None`` makes ``--out`` optional (no files written
    unless it is given). ``seeds``: the default seeds of a study that
    aggregates over seeds; ``seeds_help`` says what a seed changes in it
    (and, when the default is one seed, why). ``data_seed`` adds the seed
    of the study's data set, ``--data-seed``."""
    multi_seed = seeds is not None
    default_seeds = [int(s) for s in seeds] if multi_seed else [0]
    p = argparse.ArgumentParser(description=doc.strip().splitlines()[0])
    p.add_argument(
        "--out",
        default=out,
        help="folder for the outputs, created if missing" + (" (default: none)" if out is None else ""),
    )
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=seed, default=None, help="one seed; the same as --seeds SEED")
    if multi_seed:
        seeds_text = "seeds to run and aggregate (default {})".format(" ".join(map(str, default_seeds)))
        if seeds_help:
            seeds_text += "; " + seeds_help
    else:
        seeds_text = "one seed (this study runs one seed per call; default 0)"
    seeds.add_argument("--seeds", type=seed, nargs="+", default=None, help=seeds_text)
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads (default 1: fastest on a shared CPU)")
    if device:
        p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--plot-only", action="store_true", help="redraw the figures from OUT/results.json; run nothing")
    if data_seed:
        p.add_argument("--data-seed", type=seed, default=0, help="seed of the data set (default 0)")
    p.set_defaults(_multi_seed=multi_seed, _default_seeds=default_seeds)
    return p


def add_svi_arguments(parser, steps, particles, lr, lrd, min_particles=1):
    """``--steps``, ``--particles`` (at least ``min_particles``, which the
    study's estimators need), ``--lr`` and ``--lrd`` (ClippedAdam's)."""
    parser.add_argument("--steps", type=positive_int, default=steps, help="SVI steps")
    parser.add_argument(
        "--particles",
        type=integer(minimum=min_particles),
        default=particles,
        help=f"particles per step (at least {min_particles})",
    )
    parser.add_argument("--lr", type=positive_real, default=lr, help="learning rate")
    parser.add_argument("--lrd", type=decay, default=lrd, help="ClippedAdam's per-step lr decay, in (0, 1]")


def parse(parser, argv=None, check=None):
    """Parses ``argv``, runs ``check(args)`` (a ``ValueError`` becomes an
    argparse error), checks ``--device``, creates and checks ``--out``, and
    sets the torch threads: everything before any work. Returns ``args``."""
    args = parser.parse_args(argv)
    multi_seed, default_seeds = args._multi_seed, args._default_seeds
    del args._multi_seed, args._default_seeds
    if args.seeds is None:
        args.seeds = list(default_seeds) if args.seed is None else [args.seed]
    elif len(set(args.seeds)) != len(args.seeds):
        parser.error(f"argument --seeds: repeats a seed, got {args.seeds}; pass distinct seeds")
    elif len(args.seeds) > 1 and not multi_seed:
        parser.error(
            f"argument --seeds: this study runs one seed per call, got {args.seeds}; run it once per seed with --seed"
        )
    args.seed = args.seeds[0]
    if check is not None:
        try:
            check(args)
        except ValueError as e:
            parser.error(str(e))
    if getattr(args, "device", "cpu") == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda asked for, but CUDA is not available; pass --device cpu")
    if args.out is not None and (problem := writable_folder(args.out)):
        parser.error(f"argument --out: {problem}")
    set_threads(args.threads)
    return args


def flag_name(name):
    """The command-line flag of the argument ``name`` (``batch_size``: ``--batch-size``)."""
    return "--" + name.replace("_", "-")


def at_most(args, name, bound):
    """For a study's ``check``: refuses ``args.<name>`` above ``args.<bound>``
    (``"batch_size", "num_train"``: ``--batch-size`` above ``--num-train``)."""
    value, limit = getattr(args, name), getattr(args, bound)
    if value > limit:
        raise ValueError(f"argument {flag_name(name)}: must be at most {flag_name(bound)} ({limit}), got {value}")


def even(args, name, why):
    """For a study's ``check``: refuses an odd ``args.<name>``; ``why`` says
    what needs it even."""
    if getattr(args, name) % 2:
        raise ValueError(f"argument {flag_name(name)}: must be even ({why}), got {getattr(args, name)}")


def writable_folder(path):
    """Creates ``path`` if missing; ``None`` if a file can be written there,
    else what is wrong."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        return f"cannot write to {path!r} ({e.strerror or e}); pass a writable folder"
    return None


def set_threads(num_threads):
    """``torch.set_num_threads``, and the inter-op threads too unless torch
    has already started its inter-op pool (it can be set once per process)."""
    torch.set_num_threads(num_threads)
    try:
        torch.set_num_interop_threads(num_threads)
    except RuntimeError:
        pass


# ----------------------------------------------------------------------------
# the estimators a study compares


#: The studies' ELBO settings: the particles vectorized, in a plate left of the model's one plate
#: (read-only: every registry unpacks this one mapping).
VECTORIZED = types.MappingProxyType(dict(vectorize_particles=True, max_plate_nesting=1))


@dataclasses.dataclass(frozen=True)
class Estimator:
    """One entry of a study's :data:`Registry`.

    :param make: a factory, called once per run, that returns what the study
        runs (an ELBO instance in most studies).
    :param guide: maps the study's guide (or its dict of guides) to the guide
        this estimator runs, e.g. :func:`pyro_vi.score_function_guide`;
        the identity by default.
    :param style: matplotlib keyword arguments for its curves (``color``,
        ``ls``, ``marker``...); empty: matplotlib's defaults.
    """

    make: Callable[[], object]
    guide: Callable = lambda guide: guide
    style: Dict = dataclasses.field(default_factory=dict)


#: A study's estimators, in the order they are run and drawn: label -> Estimator.
Registry = Dict[str, Estimator]
