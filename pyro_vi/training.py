"""
A fit loop for any ELBO: loss history, tracked quantities, per-step and
per-epoch callbacks, epochs over batches, a progress bar, clear errors for
NaN/inf and for parameters that leave their support, and checkpoints that
hold only plain data and resume bit for bit.
"""

import collections.abc
import contextlib
import math
import os
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.util import torch_item, zero_grads
from pyro.optim import PyroOptim
from pyro.optim.lr_scheduler import PyroLRScheduler
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from . import _checkpoint
from ._checkpoint import atomic_save, rng_state, set_rng_state  # noqa: F401 (experiments use them)
from .distributed import (
    average_gradients,
    broadcast_params,
    check_params_agree,
    check_same,
    check_same_params,
    check_sharding,
    process,
)
from .validation import boolean, function, integer

__all__ = ["FitResult", "NonFiniteError", "OutOfSupportError", "fit", "load_checkpoint"]

load_checkpoint = _checkpoint.load

_PROGRESS_MIN_STEPS = 1000
_RESUME_CHOICES = (False, True, "allow_fresh")


class NonFiniteError(FloatingPointError):
    """
    Raised by :func:`fit` when a step's loss or a parameter's gradient is NaN or
    infinite. The optimizer step is not taken, so the parameters keep the values
    of the previous step (their gradients are zeroed).

    :ivar int step: the failing step, counted from 1.
    :ivar list names: names of the parameters with a non-finite gradient.
    :ivar float loss: the loss at that step.
    :ivar numpy.ndarray losses: the losses of the completed steps before it.
    """

    def __init__(self, message, step=None, names=(), loss=None, losses=None):
        super().__init__(message)
        self.step = step
        self.names = list(names)
        self.loss = loss
        self.losses = losses


class OutOfSupportError(ValueError):
    """
    Raised by :func:`fit` when a distribution of the model or guide gets an
    argument outside its constraint (a scale driven negative or NaN, say), or
    when the guide draws a latent value outside the model's support (a Normal
    guide for a Gamma latent), in place of torch's validation error. No
    optimizer step is taken.

    :ivar int step: the failing step, counted from 1.
    :ivar str role: ``"guide"`` or ``"model"``.
    :ivar str site: the sample site.
    :ivar str argument: the distribution's argument (``"value"`` for an
        observation outside the support, or for a latent site of the model
        whose value, drawn by the guide, is outside the model's support).
    :ivar list names: the Pyro params the argument is computed from.
    :ivar numpy.ndarray losses: the losses of the completed steps before it.
    """

    def __init__(self, message, step, role, site, argument, names, losses):
        super().__init__(message)
        self.step, self.role, self.site, self.argument = step, role, site, argument
        self.names = list(names)
        self.losses = losses


@dataclass
class FitResult:
    """
    History of a :func:`fit` run.

    :ivar numpy.ndarray losses: the loss (negative ELBO estimate) of every step.
    :ivar dict tracked: name -> array of the tracked value after every step,
        shape ``(num_steps, *value_shape)``.
    :ivar float seconds_per_step: wall time per step, over all steps including
        those of a run that was resumed (callbacks and checkpoint writes are
        not counted).
    :ivar int num_steps: number of steps.
    :ivar numpy.ndarray epoch_steps: the step count at the end of each
        completed epoch (empty without ``data``).
    :ivar int resumed_from: the step of the checkpoint this call resumed
        from; 0 when it started fresh.
    """

    losses: np.ndarray
    tracked: Dict[str, np.ndarray] = field(default_factory=dict)
    seconds_per_step: float = float("nan")
    num_steps: int = 0
    epoch_steps: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    resumed_from: int = 0

    @property
    def elbo(self) -> np.ndarray:
        """The ELBO estimate of every step, ``-losses``."""
        return -self.losses

    @property
    def epochs(self) -> int:
        """The number of completed epochs."""
        return len(self.epoch_steps)


def _as_value(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.item() if x.dim() == 0 else x.numpy()
    if isinstance(x, np.generic):
        return x.item()
    return x


class _History:
    """Losses, tracked values and epoch ends so far, and the wall time spent."""

    def __init__(self, track_names: List[str]):
        self.losses: List[float] = []
        self.tracked: Dict[str, list] = {name: [] for name in track_names}
        self.seconds = 0.0
        self.epoch_steps: List[int] = []

    @property
    def step(self) -> int:
        return len(self.losses)

    def epoch_losses(self) -> np.ndarray:
        """The losses of the epoch that ended last."""
        first = self.epoch_steps[-2] if len(self.epoch_steps) > 1 else 0
        return np.asarray(self.losses[first : self.epoch_steps[-1]], dtype=np.float64)

    def state(self) -> dict:
        tracked = {}
        for name, values in self.tracked.items():
            array = np.asarray(values)
            if array.dtype.kind not in "biuf":
                raise ValueError(
                    f"track[{name!r}] returned {type(values[-1]).__name__} values; a checkpoint holds tracked "
                    "numbers or "
                    "tensors of one shape"
                )
            tracked[name] = torch.tensor(array)
        return {
            "losses": torch.tensor(self.losses, dtype=torch.float64),
            "tracked": tracked,
            "seconds": float(self.seconds),
            "epoch_steps": list(self.epoch_steps),
        }

    def load(self, state: dict, path) -> None:
        losses = state["losses"]
        if not (isinstance(losses, torch.Tensor) and losses.dim() == 1 and losses.dtype == torch.float64):
            raise ValueError(f"checkpoint {path}: history['losses'] must be a 1-D float64 tensor")
        steps = len(losses)
        for name, values in state["tracked"].items():
            if not isinstance(values, torch.Tensor) or len(values) != steps:
                raise ValueError(f"checkpoint {path}: history['tracked'][{name!r}] must be a tensor of {steps} values")
        ends = state["epoch_steps"]
        if not (isinstance(ends, list) and all(type(e) is int and 0 < e <= steps for e in ends)):
            raise ValueError(f"checkpoint {path}: history['epoch_steps'] must be a list of step counts")
        self.losses = losses.tolist()
        self.tracked = {k: list(v.numpy()) for k, v in state["tracked"].items()}
        self.seconds = float(state["seconds"])
        self.epoch_steps = list(ends)

    def result(self) -> FitResult:
        steps = self.step
        return FitResult(
            losses=np.asarray(self.losses, dtype=np.float64),
            tracked={k: np.asarray(v) for k, v in self.tracked.items()},
            seconds_per_step=self.seconds / steps if steps else float("nan"),
            num_steps=steps,
            epoch_steps=np.asarray(self.epoch_steps, dtype=np.int64),
        )


# ---- what a checkpoint holds of the params and the optimizer ------------------------


def _param_records(names) -> dict:
    store = dict(pyro.get_param_store().get_state()["constraints"])
    values = dict(pyro.get_param_store().named_parameters())
    return {
        name: {
            "value": values[name].detach(),
            "constraint": _checkpoint.encode_constraint(store[name], f"param {name!r}"),
        }
        for name in sorted(names)
    }


def _param_fingerprint(records) -> dict:
    """Shape, dtype and constraint of each param, as compared on resume."""
    return {
        name: {
            "shape": list(r["value"].shape),
            "dtype": str(r["value"].dtype).replace("torch.", ""),
            "constraint": _checkpoint.constraint_label(r["constraint"]),
        }
        for name, r in records.items()
    }


def _describe_elbo(elbo) -> str:
    name = (
        type(elbo).__name__ if hasattr(elbo, "loss_and_grads") else getattr(elbo, "__qualname__", type(elbo).__name__)
    )
    particles = getattr(elbo, "num_particles", None)
    return name if particles is None else f"{name}(num_particles={particles})"


def _describe_optim(optim) -> str:
    if type(optim) not in (PyroOptim, PyroLRScheduler):
        return type(optim).__name__
    name = getattr(optim.pt_optim_constructor, "__name__", "PyroOptim")
    if isinstance(optim, PyroLRScheduler):
        name = "{}({})".format(getattr(optim.pt_scheduler_constructor, "__name__", "scheduler"), name)
    return name


def _optim_state(optim) -> dict:
    state = optim.get_state()
    if type(optim).get_state is PyroOptim.get_state:  # states loaded but not yet used
        state = dict(getattr(optim, "_state_waiting_to_be_consumed", {}), **state)
    return state


def _check_optim_state(optim, state, params, path):
    """The layout of a PyroOptim's saved state: one torch state dict per param
    (torch checks their contents when each param's optimizer is built)."""
    if type(optim).get_state is not PyroOptim.get_state:
        return
    keys = {"scheduler", "optimizer"} if isinstance(optim, PyroLRScheduler) else {"state", "param_groups"}
    for name, value in state.items():
        if name not in params:
            raise ValueError(f"checkpoint {path}: optim holds a state for {name!r}, which is not a param of this run")
        if not isinstance(value, dict) or not keys <= set(value):
            raise ValueError(
                "checkpoint {}: optim[{!r}] must be a dict with {}".format(path, name, " and ".join(sorted(keys)))
            )


# ---- passes over data -------------------------------------------------------------


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


@contextlib.contextmanager
def _random_states_kept(generators=()):
    """Runs the block, then puts back the global random states and ``generators``."""
    saved = rng_state(), [g.get_state() for g in generators]
    try:
        yield
    finally:
        set_rng_state(saved[0])
        for generator, state in zip(generators, saved[1]):
            generator.set_state(state)


def _batch_args(batch) -> tuple:
    return tuple(batch) if isinstance(batch, (tuple, list)) else (batch,)


def _sized(data) -> Optional[int]:
    try:
        return len(data)
    except (TypeError, NotImplementedError):
        return None


def _epoch_sampler(data):
    """The :class:`~torch.utils.data.distributed.DistributedSampler` that
    orders ``data`` (a DataLoader's sampler or its batch sampler's), or
    ``None``."""
    batch_sampler = getattr(data, "batch_sampler", None)
    for sampler in (getattr(data, "sampler", None), getattr(batch_sampler, "sampler", None)):
        if isinstance(sampler, torch.utils.data.distributed.DistributedSampler):
            return sampler
    return None


def _check_data_sharded(data, rank, size):
    """Under a process group, a map-style DataLoader must give each process
    its own shard: refuse one without a DistributedSampler for this process."""
    if not isinstance(data, torch.utils.data.DataLoader) or isinstance(data.dataset, torch.utils.data.IterableDataset):
        return
    sampler = _epoch_sampler(data)
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


class _Epochs:
    """Passes over ``data``, each from a fresh ``iter(data)``. The random states
    at the start of the current epoch are kept: a resumed run puts them back
    and replays the epoch's first batches, which reproduces the batches of any
    iterable whose order depends only on those states (e.g. a DataLoader that
    shuffles with its ``generator`` or with the global RNG)."""

    def __init__(self, data):
        self.data = data
        self.generators = _generators(data)
        self.sampler = _epoch_sampler(data)
        self.epoch = 0  # completed
        self.batch = 0  # done in the current epoch
        self.iterator = None
        self.start = None

    def _states(self):
        return {"rng": rng_state(), "generators": [g.get_state() for g in self.generators]}

    def next(self):
        """The next batch, or ``None`` when the epoch has just ended."""
        if self.iterator is None:
            self.start = self._states()
            self._set_epoch()
            self.iterator = iter(self.data)
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
        return batch

    def position(self) -> dict:
        if self.iterator is None:
            return {"epoch": self.epoch, "batch": 0, "epoch_start": self._states()}
        return {"epoch": self.epoch, "batch": self.batch, "epoch_start": self.start}

    def _set_epoch(self):
        if self.sampler is not None:
            self.sampler.set_epoch(self.epoch)

    def any_batch(self):
        """A batch for a throw-away step, leaving every random state as it was."""
        with _random_states_kept(self.generators):
            for batch in self.data:
                return batch
        raise ValueError("data yielded no batch")

    def restore(self, epoch, batch, start, path):
        set_rng_state(start["rng"])
        for generator, state in zip(self.generators, start["generators"]):
            generator.set_state(state)
        self.epoch, self.batch, self.start = epoch, 0, start
        if batch:
            self._set_epoch()
            self.iterator = iter(self.data)
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


# ---- one step -------------------------------------------------------------------


class _Invalid(Exception):
    pass


class _CheckArguments(Messenger):
    """Raises :class:`_Invalid` at the first sample site whose distribution
    has an argument (or observed value) outside its constraint."""

    def __init__(self, role):
        super().__init__()
        self.role = role

    def _process_message(self, msg):
        if msg["type"] != "sample" or site_is_subsample(msg):
            return
        fn = msg["fn"]
        while fn is not None:
            for name, constraint in getattr(fn, "arg_constraints", {}).items():
                value = fn.__dict__.get(name)  # lazy arguments not computed are skipped
                if isinstance(value, torch.Tensor) and not _satisfies(constraint, value):
                    raise _Invalid(self.role, msg["name"], type(fn).__name__, name, value, constraint, False)
            fn = getattr(fn, "base_dist", None)
        if msg["is_observed"] and not _satisfies(msg["fn"].support, msg["value"]):
            raise _Invalid(
                self.role, msg["name"], type(msg["fn"]).__name__, "value", msg["value"], msg["fn"].support, False
            )

    def _postprocess_message(self, msg):
        # a latent site of the model gets its value from the guide (replay): it
        # must lie in the model distribution's support too
        if (
            self.role == "model"
            and msg["type"] == "sample"
            and not msg["is_observed"]
            and not site_is_subsample(msg)
            and isinstance(msg["value"], torch.Tensor)
            and not _satisfies(msg["fn"].support, msg["value"])
        ):
            raise _Invalid(
                self.role, msg["name"], type(msg["fn"]).__name__, "value", msg["value"], msg["fn"].support, True
            )


def _satisfies(constraint, value) -> bool:
    try:
        return bool(torch.as_tensor(constraint.check(value)).all())
    except Exception:  # dependent constraints, odd shapes: not ours to judge
        return True


def _params_behind(value) -> list:
    named = [(n, p) for n, p in pyro.get_param_store().named_parameters() if p.requires_grad]
    if not named or not value.requires_grad:
        return []
    grads = torch.autograd.grad(value.sum(), [p for _, p in named], allow_unused=True)
    return [name for (name, _), grad in zip(named, grads) if grad is not None]


def _find_invalid(model, guide, args, kwargs, torch_state):
    """Reruns guide and model from the step's torch random state, without
    validation, to find the site whose argument left its support."""
    with _random_states_kept(), pyro.validation_enabled(False):
        torch.set_rng_state(torch_state)
        try:
            guide_trace = poutine.trace(_CheckArguments("guide")(guide)).get_trace(*args, **kwargs)
            poutine.replay(_CheckArguments("model")(model), trace=guide_trace)(*args, **kwargs)
        except _Invalid as invalid:
            role, site, dist_name, argument, value, constraint, latent = invalid.args
            return role, site, dist_name, argument, value, constraint, _params_behind(value), latent
        except Exception:
            return None
    return None


def _show_values(name, value, constraint) -> str:
    """``"scale = -0.1"`` or ``"2 of 3 values of scale (e.g. -0.1, nan)"``."""
    value = value.detach()
    if value.numel() == 1:
        return f"{name} = {value.item():.6g}"
    ok = torch.as_tensor(constraint.check(value))
    bad = value[~ok] if ok.shape == value.shape else value.flatten()
    return "{} of {} values of {} (e.g. {})".format(
        bad.numel(), value.numel(), name, ", ".join(f"{v:.6g}" for v in bad[:3].tolist())
    )


def _raise_out_of_support(found, where, step, losses, error):
    role, site, dist_name, argument, value, constraint, names, latent = found
    if latent:
        text = (
            "{}: the model's latent site {!r} got {} from the guide, outside the support {} of its {}; "
            "the guide must draw {!r} from a distribution with that support (e.g. a LogNormal or Gamma "
            "for a positive latent, or an autoguide)"
        ).format(where, site, _show_values("the value", value, constraint), constraint, dist_name, site)
    elif argument == "value":
        text = "{}: the {}'s observed site {!r} has {} outside the support {} of its {}".format(
            where, role, site, _show_values("the observation", value, constraint), constraint, dist_name
        )
    else:
        text = (
            f"{where}: the {role}'s site {site!r} got {dist_name}({argument}=...) with "
            f"{_show_values(argument, value, constraint)} outside its support {constraint}"
        )
    if names:
        text += (
            "; it is computed from param{} {}: give {} a constraint (pyro.param(..., constraint=...)) "
            "or lower the learning rate".format(
                "s" if len(names) > 1 else "", ", ".join(repr(n) for n in names), "it" if len(names) == 1 else "them"
            )
        )
    raise OutOfSupportError(text, step, role, site, argument, names, losses) from error


def _check_finite(where, step, loss, params, history):
    bad = [name for name, p in params.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if math.isfinite(loss) and not bad:
        return
    zero_grads(params.values())
    problems = [] if math.isfinite(loss) else [f"loss is {loss}"]
    if bad:
        problems.append("non-finite gradient of {}".format(", ".join(bad)))
    raise NonFiniteError(
        "{}: {}".format(where, "; ".join(problems)),
        step=step,
        names=bad,
        loss=loss,
        losses=np.asarray(history.losses, dtype=np.float64),
    )


def _loss_and_grads_of(elbo):
    if hasattr(elbo, "loss_and_grads"):
        return elbo.loss_and_grads

    def loss_and_grads(model, guide, *args, **kwargs):  # a plain loss callable, as SVI takes it
        loss = elbo(model, guide, *args, **kwargs)
        if getattr(loss, "requires_grad", False):
            loss.backward()
        return loss

    return loss_and_grads


# ---- fit ---------------------------------------------------------------------


def _checked_dict(name, value, keys_only=False):
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{name} must be a dict with str keys, got {value!r:.60}")
    if not keys_only:
        _checkpoint.check_plain(value, name)
    return value


def _checked_data(data, args):
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


class _Fit:
    """The state of one :func:`fit` call."""

    def __init__(
        self,
        model,
        guide,
        elbo,
        optim,
        args,
        kwargs,
        num_steps,
        epochs,
        data,
        callback,
        epoch_callback,
        track,
        progress,
        checkpoint,
        every,
        fingerprint,
        state,
    ):
        self.model, self.guide, self.optim = model, guide, optim
        self.loss_and_grads = _loss_and_grads_of(elbo)
        self.args, self.kwargs = args, kwargs
        self.num_steps, self.max_epochs = num_steps, epochs
        self.epochs = _Epochs(data) if data is not None else None
        self.callback, self.epoch_callback = callback, epoch_callback
        self.track, self.progress = track, progress
        self.path, self.every, self.state = checkpoint, every, state
        self.history = _History(list(track))
        self.run_params = set()
        self.unsaved = False
        self.distributed = process()[1] > 1
        self.shared = set()  # params whose values rank 0 has sent to every process
        per_epoch = _sized(data) if data is not None else None
        self.fingerprint = {
            "elbo": _describe_elbo(elbo),
            "optim": _describe_optim(optim),
            "track": sorted(track),
            "data": None
            if data is None
            else {"batches_per_epoch": per_epoch, "generators": len(self.epochs.generators)},
            "user": fingerprint,
        }
        total = num_steps
        if epochs is not None and per_epoch is not None:
            total = epochs * per_epoch if total is None else min(total, epochs * per_epoch)
        self.total = total

    # -- checkpoints

    def _where(self, step):
        if self.epochs is None:
            return f"step {step}"
        return f"step {step} (epoch {self.epochs.epoch + 1}, batch {self.epochs.batch})"

    def checkpoint_state(self) -> dict:
        params = _param_records(self.run_params)
        position = self.epochs.position() if self.epochs else {"epoch": 0, "batch": 0, "epoch_start": None}
        state = dict(
            format=_checkpoint.FORMAT,
            step=self.history.step,
            **position,
            fingerprint=dict(self.fingerprint, params=_param_fingerprint(params)),
            params=params,
            optim=_optim_state(self.optim),
            history=self.history.state(),
            rng=rng_state(),
            state=self.state,
        )
        _checkpoint.check_plain(state["optim"], "the optimizer's state")
        _checkpoint.check_plain(state["state"], "state")
        return state

    def save(self):
        self.check_processes_agree(f"at the checkpoint of step {self.history.step}")
        atomic_save(self.checkpoint_state(), self.path)
        self.unsaved = False

    def check_processes_agree(self, where):
        if self.distributed:
            values = dict(pyro.get_param_store().named_parameters())
            check_params_agree({name: values[name] for name in self.run_params}, where)

    def _refuse(self, lines):
        raise ValueError(
            "checkpoint {} belongs to another run:\n  {}\npass another checkpoint path, or "
            "resume=False with overwrite=True to start this run over there".format(self.path, "\n  ".join(lines))
        )

    def resume(self, saved):
        """Puts back the state of ``saved`` (from :func:`load_checkpoint`)."""
        path, history = self.path, self.history
        if self.num_steps is not None and saved["step"] > self.num_steps:
            raise ValueError(
                "checkpoint {} is at step {}, past num_steps={}".format(path, saved["step"], self.num_steps)
            )
        if self.max_epochs is not None and saved["epoch"] + (saved["batch"] > 0) > self.max_epochs:
            raise ValueError(
                "checkpoint {} is in epoch {}, past epochs={}".format(
                    path, saved["epoch"] + (saved["batch"] > 0), self.max_epochs
                )
            )
        ours = dict(saved["fingerprint"])
        ours.pop("params", None)
        lines = _checkpoint.differences(ours, self.fingerprint)
        if lines:
            self._refuse(lines)
        if getattr(self.optim, "optim_objs", None):
            raise ValueError(f"optim has already taken steps; pass a new optimizer to resume from checkpoint {path}")
        params = self.set_up()  # every random state is put back below
        if self.distributed:  # rank 0's params and optimizer state, on every process
            check_same_params(params, "at the set-up of the resume")
            shared = [saved["params"], saved["optim"]]
            torch.distributed.broadcast_object_list(shared, 0)
            saved = dict(saved, params=shared[0], optim=shared[1])
            self.shared = set(params)
        lines = _checkpoint.differences(
            {"params": saved["fingerprint"].get("params")}, {"params": _param_fingerprint(_param_records(params))}
        )
        if lines:
            self._refuse(lines)
        _check_optim_state(self.optim, saved["optim"], params, path)
        # The tensors the store holds now: an ELBO may have put new ones there
        # during the step (TraceGraph_ELBO's decaying-average baselines).
        current = dict(pyro.get_param_store().named_parameters())
        try:
            with torch.no_grad():
                for name, record in saved["params"].items():
                    current.get(name, params[name]).copy_(record["value"])
            self.run_params = set(params)
            self.optim.set_state(saved["optim"])
            history.load(saved["history"], path)
            self.state.clear()
            self.state.update(saved["state"])
            if self.epochs is not None:
                self.epochs.restore(saved["epoch"], saved["batch"], saved["epoch_start"], path)
            set_rng_state(saved["rng"])
        except (KeyError, TypeError, IndexError, AttributeError, RuntimeError) as error:
            raise ValueError(f"checkpoint {path} cannot be restored: {type(error).__name__}: {error}") from error

    def first_args(self):
        """The model's arguments at a first step (a batch of ``data``, drawn
        leaving every random state as it was)."""
        return _batch_args(self.epochs.any_batch()) if self.epochs else self.args

    def set_up(self):
        """One throw-away step sets up what a first step sets up (lazily built
        autoguides, pyro.module params, an ELBO's guessed max_plate_nesting),
        drawing random numbers as it likes: every global random state is put
        back. :returns: ``{name: unconstrained param}`` of the step."""
        args = self.first_args()
        with _random_states_kept(), poutine.trace(param_only=True) as capture:
            self.loss_and_grads(self.model, self.guide, *args, **self.kwargs)
        params = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
        zero_grads(params.values())
        return params

    def start_processes(self, elbo):
        """Under a process group, before the first step of a fresh run: rank
        0's params on every process. Then, fresh or resumed: the check of the
        plates' scales (see :func:`pyro_vi.distributed.check_sharding`)."""
        if not self.distributed:
            return
        if not self.shared:
            params = self.set_up()
            check_same_params(params, "at the set-up before the first step")
            broadcast_params(params)
            self.shared = set(params)
        sharded = check_sharding(self.model, self.guide, *self.first_args(), **self.kwargs)
        pool = getattr(elbo, "pool_processes", None)
        if pool and not sharded:
            raise ValueError(
                f"{type(elbo).__name__}: pool_processes=True, but the processes hold the same data: sharing their "
                "particles, every process would compute the same gradient. Give each process its shard of the data "
                "(see pyro_vi.distributed), or drop pool_processes to let each process draw its own particles"
            )
        if sharded and pool is False and process()[0] == 0:
            warnings.warn(
                "the processes hold different values of {} and {} draws independent particles on each: each "
                "process's score-function signal estimates its own shard's objective, whose gradient does not "
                "vanish at the optimum, and near it the averaged gradient is far noisier than one process's on all "
                "the data (the README's distributed SVI section measures it). Pass pool_processes=True to share "
                "the particles".format(", ".join(map(repr, sharded)), type(elbo).__name__),
                stacklevel=3,
            )

    # -- the loop

    def _done(self):
        if self.num_steps is not None and self.history.step >= self.num_steps:
            return True
        return self.max_epochs is not None and self.epochs.epoch >= self.max_epochs

    def _step(self, args):
        history = self.history
        step = history.step + 1
        where = self._where(step)
        start = time.perf_counter()
        torch_state = torch.get_rng_state()
        try:
            with poutine.trace(param_only=True) as capture:
                loss = torch_item(self.loss_and_grads(self.model, self.guide, *args, **self.kwargs))
        except ValueError as error:
            found = _find_invalid(self.model, self.guide, args, self.kwargs, torch_state)
            if found is None:
                raise
            _raise_out_of_support(found, where, step, np.asarray(history.losses, dtype=np.float64), error)
        params = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
        if self.distributed:
            check_same_params(params, where)
            new = {name: param for name, param in params.items() if name not in self.shared}
            broadcast_params(new)  # a param first met now starts from rank 0's value
            self.shared.update(new)
        loss = average_gradients([params[name] for name in sorted(params)], loss)  # over processes, if any
        _check_finite(where, step, loss, params, history)
        self.optim(params.values())
        zero_grads(params.values())
        self.run_params.update(params)
        history.losses.append(loss)
        for name, fn in self.track.items():
            history.tracked[name].append(_as_value(fn()))
        history.seconds += time.perf_counter() - start
        if self.callback is not None:
            self.callback(step, loss)
        self.unsaved = True
        return loss

    def run(self, first_step_check):
        bar = tqdm(
            total=self.total,
            initial=self.history.step,
            file=sys.stderr,
            disable=not _show_progress(self.progress, self.total),
            dynamic_ncols=True,
        )
        running = None
        with bar:
            while not self._done():
                args = self.args
                if self.epochs is not None:
                    batch = self.epochs.next()
                    if batch is None:
                        self.history.epoch_steps.append(self.history.step)
                        if self.epoch_callback is not None:
                            self.epoch_callback(self.epochs.epoch, self.history.epoch_losses())
                        if self.path is not None:
                            self.save()
                        continue
                    args = _batch_args(batch)
                loss = self._step(args)
                running = loss if running is None else 0.95 * running + 0.05 * loss
                bar.set_postfix(loss=f"{running:.4g}", refresh=False)
                bar.update(1)
                if self.path is not None:
                    if self.history.step % self.every == 0:
                        self.save()
                    elif first_step_check:
                        self.checkpoint_state()  # refuse what a checkpoint cannot hold now, not later
                    first_step_check = False
            if self.path is not None and self.unsaved:
                self.save()
            self.check_processes_agree(f"at the end, step {self.history.step}")


def _show_progress(progress: Optional[bool], total: Optional[int]) -> bool:
    if process()[0] != 0:
        return False  # one bar, from the first process
    if progress is not None:
        return bool(progress)
    return total is not None and total >= _PROGRESS_MIN_STEPS and sys.stderr.isatty()


def fit(
    model,
    guide,
    elbo,
    optim,
    *args,
    num_steps: Optional[int] = None,
    epochs: Optional[int] = None,
    data=None,
    callback: Optional[Callable[[int, float], object]] = None,
    epoch_callback: Optional[Callable[[int, np.ndarray], object]] = None,
    track: Optional[Dict[str, Callable[[], object]]] = None,
    progress: Optional[bool] = None,
    checkpoint=None,
    checkpoint_every: int = 100,
    resume=False,
    overwrite: bool = False,
    fingerprint: Optional[dict] = None,
    state: Optional[dict] = None,
    **kwargs,
) -> FitResult:
    r"""
    Runs steps of :class:`~pyro.infer.svi.SVI` with ``elbo`` and ``optim`` and
    returns the history. Every argument is checked before any work.

    Each step is :meth:`SVI.step <pyro.infer.svi.SVI.step>` (``loss_and_grads``,
    ``optim(params)``, ``zero_grads(params)``) with two checks: a distribution
    argument outside its support (a guide scale driven negative or NaN) raises
    :class:`OutOfSupportError` naming the step, the site and the params it is
    computed from; a NaN or infinite loss or gradient raises
    :class:`NonFiniteError` before the optimizer step. After the step come
    ``track``, then ``callback(step, loss)``.

    **Steps and epochs.** Without ``data``, every step gets ``*args, **kwargs``
    and the run has ``num_steps`` steps. With ``data``, an iterable of batches
    (e.g. a :class:`~torch.utils.data.DataLoader`), each epoch is one pass
    ``iter(data)`` and each step gets one batch as the model's positional
    arguments (a tuple or list batch is unpacked, anything else is the one
    argument), plus ``**kwargs``. The run ends after ``epochs`` epochs or
    ``num_steps`` steps in all, whichever comes first (at least one is
    needed); ``num_steps`` may end it mid-epoch. ``epoch_callback(epoch,
    losses)`` is called with the epoch's step losses after each completed epoch,
    and once with ``(0, [])`` before the first step of a run that does not
    resume (to record the untrained model).

    **Processes.** Under :mod:`torch.distributed` (a process group initialized,
    e.g. by ``torchrun``), every process calls ``fit`` with the same settings
    on its own shard of the data, and ``fit`` estimates the gradient of the
    objective on all of it (see :mod:`pyro_vi.distributed`):

    - before the first step it sets up the params with a throw-away step
      (every random state is put back) and copies rank 0's values to every
      process (on resume, rank 0's params and optimizer state); a param that
      first appears in a later step gets rank 0's value too;
    - after each ``loss_and_grads`` the gradients and the loss are averaged
      over the processes, as ``DistributedDataParallel`` does, so every
      process takes the same step; at every checkpoint and at the end a
      ``ValueError`` names any param whose values differ between the
      processes, with the largest difference;
    - **each shard's likelihood must be scaled to the full data**:
      ``pyro.plate("data", N, subsample=my_indices)`` with ``N`` the number
      of points in all the shards, in shards of equal size. Before the first
      step ``fit`` refuses an observed site whose values differ between the
      processes but whose scale counts fewer values than they hold together
      (the obvious ``pyro.plate("data", len(my_shard))``, which makes the
      posterior :math:`\sqrt{R}` times too wide for :math:`R` processes);
      the same data on every process may have any scale. A
      :class:`~torch.utils.data.DataLoader` as ``data`` needs a
      :class:`~torch.utils.data.distributed.DistributedSampler`, whose
      ``set_epoch`` ``fit`` calls at each epoch;
    - settings, batches per epoch or checkpoints that differ between the
      processes, or steps that touch different params, are refused on every
      process rather than left to hang;
    - with a score-function estimator on sharded data, pass
      ``pool_processes=True`` (shared particles; a warning says so).

    Each process writes its own checkpoint, ``<checkpoint>.rank<r>``.

    **Checkpoints.** With ``checkpoint`` (a file path; its directory must exist
    and be writable, checked first), the run saves its state every
    ``checkpoint_every`` steps, at the end of each epoch and at the end: the
    param store's params used by the programs, the optimizer state (including
    an LR scheduler's, for :class:`~pyro.optim.lr_scheduler.PyroLRScheduler`),
    the history, the torch/CUDA/Python/NumPy random states, the random states
    at the start of the current epoch with the generators of ``data``
    (``data.generator``, ``data.sampler.generator``), ``state``, and a
    fingerprint. Files hold plain data only and are read with
    ``torch.load(weights_only=True)`` (see :func:`load_checkpoint`); writes are
    atomic (temporary file, fsync, rename, fsync of the directory), and
    temporary files of killed runs are removed.

    ``resume=False`` refuses an existing checkpoint file unless
    ``overwrite=True``; ``resume=True`` continues from it and refuses a missing
    file; ``resume="allow_fresh"`` continues from it if it exists and starts
    fresh otherwise. A resume refuses a checkpoint whose fingerprint differs
    (the params' names, shapes, dtypes and constraints, the ELBO class and
    ``num_particles``, the optimizer, the track names, the batches per epoch,
    ``fingerprint``), listing the differences. It runs one throw-away step
    (so that lazily built guides and ELBO settings are set up), restores
    everything, replays the current epoch's batches up to the saved position,
    and continues: the run ends bit for bit as the uninterrupted one, when
    nothing outside the saved state draws random numbers differently (a
    callback that draws from the global RNG is fine: it is saved after it;
    DataLoader workers that persist across epochs and draw random numbers are
    not, their states are not saved). Module buffers (e.g. batch-norm
    statistics) are not params and are not saved.

    :param callable model: the Pyro model.
    :param callable guide: the Pyro guide.
    :param elbo: an ELBO instance (or a loss callable, as
        :class:`~pyro.infer.svi.SVI` takes), not its class.
    :param optim: a :class:`~pyro.optim.PyroOptim` instance.
    :param int num_steps: the number of steps, including resumed ones (>= 1).
    :param int epochs: the number of passes over ``data`` (>= 1).
    :param data: an iterable of batches that can be iterated again for each
        epoch (not a one-shot iterator); excludes ``*args``.
    :param callable callback: ``callback(step, loss)`` after every step, e.g.
        ``lambda step, loss: scheduler.step()`` for a
        :class:`~pyro.optim.lr_scheduler.PyroLRScheduler`.
    :param callable epoch_callback: ``epoch_callback(epoch, losses)``, see above;
        needs ``data``.
    :param dict track: name -> zero-argument callable returning a number or
        tensor, evaluated after every step, e.g.
        ``{"loc": lambda: pyro.param("loc").item()}``.
    :param bool progress: show a tqdm bar with the running loss (an exponential
        moving average, weight 0.05); ``None`` shows it only for runs of at
        least 1000 steps with stderr a terminal.
    :param checkpoint: path of the checkpoint file (``str`` or path-like).
    :param int checkpoint_every: steps between checkpoints (>= 1).
    :param resume: ``False``, ``True`` or ``"allow_fresh"``, see above.
    :param bool overwrite: with ``resume=False``, replace an existing checkpoint.
    :param dict fingerprint: the caller's plain values (str keys) that must be
        equal for a checkpoint to be resumed, e.g. data size, seed, learning rate.
    :param dict state: the caller's plain values (str keys; tensors, numbers,
        strings, lists, dicts) saved in every checkpoint and, on resume,
        restored into this same dict (``state.clear(); state.update(saved)``)
        before the first step: keep per-epoch evaluations here.
    :returns: the history.
    :rtype: FitResult
    :raises ValueError: for a bad argument, a checkpoint that cannot be read,
        written or resumed, or data that yields no batch.
    :raises NonFiniteError: at the first step with a non-finite loss or gradient.
    :raises OutOfSupportError: at the first step where a distribution argument
        leaves its support.
    """
    function("model", model)
    function("guide", guide)
    if isinstance(elbo, type):
        raise ValueError(
            f"elbo must be an ELBO instance, got the class {elbo.__name__}; pass {elbo.__name__}(...) instead"
        )
    if not hasattr(elbo, "loss_and_grads") and not callable(elbo):
        raise ValueError(f"elbo must be an ELBO instance such as pyro.infer.Trace_ELBO(), got {elbo!r:.60}")
    if isinstance(optim, type) or not isinstance(optim, PyroOptim):
        raise ValueError(
            "optim must be a pyro.optim optimizer instance such as pyro.optim.Adam({'lr': 0.01}), "
            f"got {optim.__name__ if isinstance(optim, type) else repr(optim)[:60]}"
        )
    data = _checked_data(data, args)
    if num_steps is not None:
        num_steps = integer("num_steps", num_steps, minimum=1)
    if epochs is not None:
        epochs = integer("epochs", epochs, minimum=1)
    if data is None:
        if num_steps is None:
            raise ValueError("num_steps is required: pass num_steps=..., or data= with epochs=...")
        if epochs is not None:
            raise ValueError("epochs counts passes over data=; without data pass num_steps only")
    elif num_steps is None and epochs is None:
        raise ValueError("with data=, pass epochs=... (passes over data) or num_steps=... (or both)")
    callback = function("callback", callback, optional=True)
    epoch_callback = function("epoch_callback", epoch_callback, optional=True)
    if epoch_callback is not None and data is None:
        raise ValueError("epoch_callback needs data=: without it there are no epochs")
    track = _checked_dict("track", track, keys_only=True)
    for name, fn in track.items():
        function(f"track[{name!r}]", fn)
    if progress is not None:
        progress = boolean("progress", progress)
    checkpoint_every = integer("checkpoint_every", checkpoint_every, minimum=1)
    if isinstance(resume, (bool, np.bool_)):
        resume = bool(resume)
    elif resume != "allow_fresh" or not isinstance(resume, str):
        raise ValueError("resume must be one of {}, got {!r:.60}".format(", ".join(map(repr, _RESUME_CHOICES)), resume))
    overwrite = boolean("overwrite", overwrite)
    fingerprint = _checked_dict("fingerprint", fingerprint)
    state = _checked_dict("state", {} if state is None else state)
    rank, size = process()
    if checkpoint is not None:
        if not isinstance(checkpoint, (str, os.PathLike)) or not isinstance(os.fspath(checkpoint), str):
            raise ValueError(f"checkpoint must be a file path (str or pathlib.Path), got {checkpoint!r:.60}")
        checkpoint = os.fspath(checkpoint)
        if size > 1:  # under torch.distributed, one checkpoint per process
            checkpoint = f"{checkpoint}.rank{rank}"
    elif resume or overwrite:
        raise ValueError("resume and overwrite need checkpoint=<path>")
    if overwrite and resume:
        raise ValueError(f"overwrite=True starts the run over; it cannot be combined with resume={resume!r}")

    saved = None
    if checkpoint is not None:
        _checkpoint.check_writable(checkpoint)
        _checkpoint.remove_stale_temporaries(checkpoint)
        exists = os.path.exists(checkpoint)
        if resume is True and not exists:
            raise ValueError(
                f"resume=True, but there is no checkpoint {checkpoint}; pass resume='allow_fresh' to start "
                "fresh when it is missing"
            )
        if not resume and exists and not overwrite:
            raise ValueError(
                f"checkpoint {checkpoint} exists: pass resume=True to continue it, or overwrite=True to replace it"
            )
        if resume and exists:
            saved = _checkpoint.load(checkpoint)
    if size > 1:
        if data is not None:
            _check_data_sharded(data, rank, size)
        check_same(
            "fit's settings",
            {
                "elbo": _describe_elbo(elbo),
                "optim": _describe_optim(optim),
                "num_steps": num_steps,
                "epochs": epochs,
                "batches per epoch": None if data is None else _sized(data),
                "checkpoint_every": checkpoint_every if checkpoint is not None else None,
                "resumes from step": None if saved is None else saved["step"],
            },
        )

    run = _Fit(
        model,
        guide,
        elbo,
        optim,
        args,
        kwargs,
        num_steps,
        epochs,
        data,
        callback,
        epoch_callback,
        track,
        progress,
        checkpoint,
        checkpoint_every,
        fingerprint,
        state,
    )
    if saved is not None:
        run.resume(saved)
    run.start_processes(elbo)
    if saved is None and epoch_callback is not None:
        epoch_callback(0, np.zeros(0))
    run.run(first_step_check=saved is None)
    result = run.history.result()
    result.resumed_from = saved["step"] if saved is not None else 0
    return result
