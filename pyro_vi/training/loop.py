"""
The fit loop: :func:`fit` runs SVI steps with any ELBO, each checked for
arguments outside their support and for NaN/inf, over epochs of batches or
full-batch steps, with tracked values, callbacks, a progress bar and
checkpoints; :class:`FitResult` is its history.
"""

import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer import RenyiELBO
from pyro.infer.util import torch_item, zero_grads
from tqdm.auto import tqdm

from . import checkpoint
from .batches import Epochs, FullBatch, check_sharded
from .distributed import (
    average_gradients,
    broadcast_params,
    check_params_agree,
    check_same,
    check_same_params,
    check_sharding,
    process,
    warn_if_group_outlives_destroy,
)
from .random_states import random_states_kept, set_rng_state
from .settings import Settings
from .support import diagnose

__all__ = ["FitResult", "NonFiniteError", "OutOfSupportError", "fit"]

_PROGRESS_MIN_STEPS = 1000


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

    def __init__(self, track_names):
        self.losses: List[float] = []
        self.tracked: Dict[str, list] = {name: [] for name in track_names}
        self.seconds = 0.0
        self.epoch_steps: List[int] = []

    @property
    def step(self) -> int:
        return len(self.losses)

    def loss_array(self, first=0, end=None) -> np.ndarray:
        return np.asarray(self.losses[first:end], dtype=np.float64)

    def epoch_losses(self) -> np.ndarray:
        """The losses of the epoch that ended last."""
        return self.loss_array(self.epoch_steps[-2] if len(self.epoch_steps) > 1 else 0, self.epoch_steps[-1])

    def state(self) -> dict:
        """As a checkpoint holds it."""
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

    def load(self, state: dict) -> None:
        """From a checkpoint's ``history`` (checked by :func:`load_checkpoint`)."""
        self.losses = state["losses"].tolist()
        self.tracked = {k: list(v.numpy()) for k, v in state["tracked"].items()}
        self.seconds = float(state["seconds"])
        self.epoch_steps = list(state["epoch_steps"])

    def result(self, resumed_from) -> FitResult:
        steps = self.step
        return FitResult(
            losses=self.loss_array(),
            tracked={k: np.asarray(v) for k, v in self.tracked.items()},
            seconds_per_step=self.seconds / steps if steps else float("nan"),
            num_steps=steps,
            epoch_steps=np.asarray(self.epoch_steps, dtype=np.int64),
            resumed_from=resumed_from,
        )


# ---- one step -------------------------------------------------------------------


def _loss_and_grads_of(elbo):
    if hasattr(elbo, "loss_and_grads"):
        return elbo.loss_and_grads

    def loss_and_grads(model, guide, *args, **kwargs):  # a plain loss callable, as SVI takes it
        loss = elbo(model, guide, *args, **kwargs)
        if getattr(loss, "requires_grad", False):
            loss.backward()
        return loss

    return loss_and_grads


def _check_finite(where, step, loss, params, history):
    bad = [name for name, p in params.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if math.isfinite(loss) and not bad:
        return
    zero_grads(params.values())
    problems = [] if math.isfinite(loss) else [f"loss is {loss}"]
    if bad:
        problems.append("non-finite gradient of {}".format(", ".join(bad)))
    raise NonFiniteError(
        "{}: {}".format(where, "; ".join(problems)), step=step, names=bad, loss=loss, losses=history.loss_array()
    )


def _show_progress(progress: Optional[bool], total: Optional[int]) -> bool:
    if process()[0] != 0:
        return False  # one bar, from the first process
    if progress is not None:
        return bool(progress)
    return total is not None and total >= _PROGRESS_MIN_STEPS and sys.stderr.isatty()


class _Run:
    """One :func:`fit` call: its settings, its history, where it is in the
    data, and the params its steps have used."""

    def __init__(self, settings: Settings):
        s = self.settings = settings
        self.loss_and_grads = _loss_and_grads_of(s.elbo)
        self.batches = FullBatch(s.args) if s.data is None else Epochs(s.data)
        self.history = _History(s.track)
        rank, size = process()
        self.distributed = size > 1
        # under torch.distributed, one checkpoint per process
        self.path = s.checkpoint if s.checkpoint is None or size == 1 else f"{s.checkpoint}.rank{rank}"
        self.fingerprint = {
            "elbo": checkpoint.describe_elbo(s.elbo),
            "optim": checkpoint.describe_optim(s.optim),
            "track": sorted(s.track),
            "data": self.batches.fingerprint(),
            "user": s.fingerprint,
        }
        self.run_params = set()  # the params the steps have used
        self.shared = set()  # the params whose values rank 0 has sent to every process
        self.saved_step = 0  # the step of the last checkpoint written or read

    def fit(self) -> FitResult:
        s = self.settings
        saved = None if self.path is None else checkpoint.to_resume(self.path, s.resume, s.overwrite)
        if self.distributed:
            if s.data is not None:
                check_sharded(s.data, *process())
            check_same(
                "fit's settings",
                {
                    "elbo": self.fingerprint["elbo"],
                    "optim": self.fingerprint["optim"],
                    "num_steps": s.num_steps,
                    "epochs": s.epochs,
                    "batches per epoch": self.batches.per_epoch,
                    "checkpoint_every": s.checkpoint_every if self.path is not None else None,
                    "resumes from step": None if saved is None else saved["step"],
                },
            )
        if saved is not None:
            self.resume(saved)
        self.start_processes()
        if saved is None and s.epoch_callback is not None:
            s.epoch_callback(0, np.zeros(0))
        self.loop(first_step_check=saved is None)
        return self.history.result(resumed_from=0 if saved is None else saved["step"])

    # -- steps

    def loss_and_grads_with_params(self, args):
        """``loss_and_grads`` on the model's arguments ``args``: the loss, and
        ``{name: unconstrained param}`` of the params the programs used."""
        s = self.settings
        with poutine.trace(param_only=True) as capture:
            loss = self.loss_and_grads(s.model, s.guide, *args, **s.kwargs)
        return torch_item(loss), {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}

    def set_up(self):
        """One throw-away step sets up what a first step sets up (lazily built
        autoguides, pyro.module params, an ELBO's guessed max_plate_nesting),
        drawing random numbers as it likes: every global random state is put
        back. :returns: ``{name: unconstrained param}`` of the step."""
        args = self.batches.first()
        with random_states_kept():
            _, params = self.loss_and_grads_with_params(args)
        zero_grads(params.values())
        return params

    def step(self, args) -> float:
        """One SVI step on the model's arguments ``args``, checked; then
        ``track`` and ``callback``."""
        s, history = self.settings, self.history
        step = history.step + 1
        where = self.batches.where(step)
        start = time.perf_counter()
        torch_state = torch.get_rng_state()
        try:
            loss, params = self.loss_and_grads_with_params(args)
        except ValueError as error:
            found = diagnose(s.model, s.guide, args, s.kwargs, torch_state)
            if found is None:
                raise
            raise OutOfSupportError(
                f"{where}: {found.message()}",
                step=step,
                role=found.role,
                site=found.site,
                argument=found.argument,
                names=found.names,
                losses=history.loss_array(),
            ) from error
        if self.distributed:
            check_same_params(params, where)
            new = {name: param for name, param in params.items() if name not in self.shared}
            broadcast_params(new)  # a param first met now starts from rank 0's value
            self.shared.update(new)
        loss = average_gradients([params[name] for name in sorted(params)], loss)  # over processes, if any
        _check_finite(where, step, loss, params, history)
        s.optim(params.values())
        zero_grads(params.values())
        self.run_params.update(params)
        history.losses.append(loss)
        for name, fn in s.track.items():
            history.tracked[name].append(_as_value(fn()))
        history.seconds += time.perf_counter() - start
        if s.callback is not None:
            s.callback(step, loss)
        return loss

    def _done(self) -> bool:
        s = self.settings
        if s.num_steps is not None and self.history.step >= s.num_steps:
            return True
        return s.epochs is not None and self.batches.epoch >= s.epochs

    def _planned_steps(self) -> Optional[int]:
        s, per_epoch = self.settings, self.batches.per_epoch
        if s.epochs is None or per_epoch is None:
            return s.num_steps
        return s.epochs * per_epoch if s.num_steps is None else min(s.num_steps, s.epochs * per_epoch)

    def loop(self, first_step_check):
        s, history = self.settings, self.history
        total = self._planned_steps()
        bar = tqdm(
            total=total,
            initial=history.step,
            file=sys.stderr,
            disable=not _show_progress(s.progress, total),
            dynamic_ncols=True,
        )
        running = None
        with bar:
            while not self._done():
                args = self.batches.next()
                if args is None:  # an epoch has ended
                    history.epoch_steps.append(history.step)
                    if s.epoch_callback is not None:
                        s.epoch_callback(self.batches.epoch, history.epoch_losses())
                    if self.path is not None:
                        self.save()
                    continue
                loss = self.step(args)
                running = loss if running is None else 0.95 * running + 0.05 * loss
                bar.set_postfix(loss=f"{running:.4g}", refresh=False)
                bar.update(1)
                if self.path is not None:
                    if history.step % s.checkpoint_every == 0:
                        self.save()
                    elif first_step_check:
                        self.snapshot()  # refuse what a checkpoint cannot hold now, not later
                    first_step_check = False
            if self.path is not None and self.saved_step != history.step:
                self.save()
            self.check_params_agree(f"at the end, step {history.step}")

    # -- checkpoints and processes

    def snapshot(self) -> dict:
        """What a checkpoint of the run holds now."""
        return checkpoint.contents(
            step=self.history.step,
            position=self.batches.position(),
            fingerprint=self.fingerprint,
            params=self.run_params,
            optim=self.settings.optim,
            history=self.history.state(),
            state=self.settings.state,
        )

    def save(self):
        self.check_params_agree(f"at the checkpoint of step {self.history.step}")
        checkpoint.atomic_save(self.snapshot(), self.path)
        self.saved_step = self.history.step

    def check_params_agree(self, where):
        if self.distributed:
            values = dict(pyro.get_param_store().named_parameters())
            check_params_agree({name: values[name] for name in self.run_params}, where)

    def resume(self, saved):
        """Puts back the state of ``saved`` (from :func:`load_checkpoint`)."""
        s, path = self.settings, self.path
        checkpoint.check_resumable(saved, path, self.fingerprint, num_steps=s.num_steps, epochs=s.epochs)
        if getattr(s.optim, "optim_objs", None):
            raise ValueError(f"optim has already taken steps; pass a new optimizer to resume from checkpoint {path}")
        params = self.set_up()  # every random state is put back below
        if self.distributed:  # rank 0's params and optimizer state, on every process
            check_same_params(params, "at the set-up of the resume")
            shared = [saved["params"], saved["optim"]]
            torch.distributed.broadcast_object_list(shared, 0)
            saved = dict(saved, params=shared[0], optim=shared[1])
            self.shared = set(params)
        checkpoint.check_params(saved, params, s.optim, path)
        # The tensors the store holds now: an ELBO may have put new ones there
        # during the step (TraceGraph_ELBO's decaying-average baselines).
        current = dict(pyro.get_param_store().named_parameters())
        try:
            with torch.no_grad():
                for name, record in saved["params"].items():
                    current.get(name, params[name]).copy_(record["value"])
            self.run_params = set(params)
            s.optim.set_state(saved["optim"])
            self.history.load(saved["history"])
            self.saved_step = self.history.step
            s.state.clear()
            s.state.update(saved["state"])
            self.batches.restore(saved["epoch"], saved["batch"], saved["epoch_start"], path)
            set_rng_state(saved["rng"])
        except (KeyError, TypeError, IndexError, AttributeError, RuntimeError) as error:
            raise ValueError(f"checkpoint {path} cannot be restored: {type(error).__name__}: {error}") from error

    def start_processes(self):
        """Under a process group, before the first step of a fresh run: rank
        0's params on every process. Then, fresh or resumed: the check of the
        plates' scales (see :func:`pyro_vi.training.distributed.check_sharding`)
        and of the import order (:func:`~pyro_vi.training.distributed.warn_if_group_outlives_destroy`)."""
        if not self.distributed:
            return
        if process()[0] == 0:
            warn_if_group_outlives_destroy(stacklevel=4)  # fit's caller
        s = self.settings
        if not self.shared:
            params = self.set_up()
            check_same_params(params, "at the set-up before the first step")
            broadcast_params(params)
            self.shared = set(params)
        sharded = check_sharding(
            s.model, s.guide, *self.batches.first(), importance_weighted=_importance_weighted(s.elbo), **s.kwargs
        )
        pool = getattr(s.elbo, "pool_processes", None)
        if pool and not sharded:
            raise ValueError(
                f"{type(s.elbo).__name__}: pool_processes=True, but the processes hold the same data: sharing their "
                "particles, every process would compute the same gradient. Give each process its shard of the data "
                "(see pyro_vi.training.distributed), or drop pool_processes to let each process draw its own "
                "particles"
            )
        if sharded and pool is False and process()[0] == 0:
            warnings.warn(
                "the processes hold different values of {} and {} draws independent particles on each: each "
                "process's score-function signal estimates its own shard's objective, whose gradient does not "
                "vanish at the optimum, and near it the averaged gradient is far noisier than one process's on all "
                "the data (the README's distributed SVI section measures it). Pass pool_processes=True to share "
                "the particles".format(", ".join(map(repr, sharded)), type(s.elbo).__name__),
                stacklevel=4,
            )


def _importance_weighted(elbo):
    """The name of ``elbo`` where it takes ``poutine.scale`` inside importance
    weights over more than one particle (Pyro's ``RenyiELBO``,
    :class:`~pyro_vi.ImportanceWeightedELBO`), else ``None``."""
    tempers = isinstance(elbo, RenyiELBO) or getattr(elbo, "scale_tempers_weights", False)
    return type(elbo).__name__ if tempers and elbo.num_particles > 1 else None


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
    objective on all of it (see :mod:`pyro_vi.training.distributed`):

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
    settings = Settings(  # checks every argument
        model=model,
        guide=guide,
        elbo=elbo,
        optim=optim,
        args=args,
        kwargs=kwargs,
        num_steps=num_steps,
        epochs=epochs,
        data=data,
        callback=callback,
        epoch_callback=epoch_callback,
        track=track,
        progress=progress,
        checkpoint=checkpoint,
        checkpoint_every=checkpoint_every,
        resume=resume,
        overwrite=overwrite,
        fingerprint=fingerprint,
        state=state,
    )
    return _Run(settings).fit()
