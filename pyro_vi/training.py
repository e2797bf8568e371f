"""
A fit loop around :class:`~pyro.infer.svi.SVI` for any ELBO: loss history, tracked
quantities, a progress bar, a guard against NaN/inf, and atomic checkpoints that
resume bit-for-bit.
"""

import math
import os
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import numpy as np
import pyro
import torch
from pyro import poutine
from pyro.infer.util import torch_item, zero_grads
from tqdm.auto import tqdm

__all__ = ["FitResult", "NonFiniteError", "fit"]

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


@dataclass
class FitResult:
    """
    History of a :func:`fit` run.

    :ivar numpy.ndarray losses: the loss (negative ELBO estimate) of every step.
    :ivar dict tracked: name -> array of the tracked value after every step,
        shape ``(num_steps, *value_shape)``.
    :ivar float seconds_per_step: wall time per step, over all steps including
        those of a run that was resumed (checkpoint writes are not counted).
    :ivar int num_steps: number of steps.
    """

    losses: np.ndarray
    tracked: Dict[str, np.ndarray] = field(default_factory=dict)
    seconds_per_step: float = float("nan")
    num_steps: int = 0

    @property
    def elbo(self) -> np.ndarray:
        """The ELBO estimate of every step, ``-losses``."""
        return -self.losses


def rng_state() -> dict:
    """The torch (and CUDA), Python and NumPy random states, for a checkpoint."""
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if cuda else None,
        "python": random.getstate(),
        "numpy": np.random.get_state(),
    }


def set_rng_state(state: dict) -> None:
    """Restores random states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])


def _as_value(x):
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return x.item() if x.dim() == 0 else x.numpy()
    return x


class _History:
    """Losses and tracked values so far, plus the wall time spent on them."""

    def __init__(self, track_names: List[str]):
        self.losses: List[float] = []
        self.tracked: Dict[str, list] = {name: [] for name in track_names}
        self.seconds = 0.0

    @property
    def step(self) -> int:
        return len(self.losses)

    def state(self) -> dict:
        return {"losses": list(self.losses),
                "tracked": {k: list(v) for k, v in self.tracked.items()},
                "seconds": self.seconds}

    def load(self, state: dict) -> None:
        if set(state["tracked"]) != set(self.tracked):
            raise ValueError(
                "track names {} differ from the checkpoint's {}".format(
                    sorted(self.tracked), sorted(state["tracked"])
                )
            )
        self.losses = list(state["losses"])
        self.tracked = {k: list(v) for k, v in state["tracked"].items()}
        self.seconds = state["seconds"]

    def result(self) -> FitResult:
        steps = self.step
        return FitResult(
            losses=np.asarray(self.losses, dtype=np.float64),
            tracked={k: np.asarray(v) for k, v in self.tracked.items()},
            seconds_per_step=self.seconds / steps if steps else float("nan"),
            num_steps=steps,
        )


def _save_checkpoint(path, optim, history: _History) -> None:
    """Atomically writes the param store, optimizer, history and RNG states to ``path``."""
    state = {
        "step": history.step,
        "param_store": pyro.get_param_store().get_state(),
        "optim": optim.get_state(),
        "history": history.state(),
        "rng": rng_state(),
    }
    atomic_save(state, path)


def atomic_save(state, path) -> None:
    """``torch.save`` to a temporary file, then renamed over ``path``: an
    interrupted write never leaves a truncated checkpoint."""
    tmp = "{}.tmp{}".format(path, os.getpid())
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_checkpoint(path, svi, history: _History, num_steps, args, kwargs) -> None:
    # weights_only=False: the checkpoint holds constraints and RNG states; load
    # only checkpoints you wrote yourself.
    state = torch.load(path, weights_only=False)
    if state["step"] > num_steps:
        raise ValueError(
            "checkpoint {} is at step {}, past num_steps={}".format(
                path, state["step"], num_steps
            )
        )
    history.load(state["history"])
    # Run the programs once first: lazily initialised guides (autoguides) draw
    # random numbers on their first call, and pyro.module registers the
    # modules' own tensors, which the programs keep using afterwards. The
    # saved values are then copied into those very tensors.
    with poutine.block():
        guide_trace = poutine.trace(svi.guide).get_trace(*args, **kwargs)
        poutine.replay(svi.model, trace=guide_trace)(*args, **kwargs)
    _restore_params(state["param_store"])
    svi.optim.set_state(state["optim"])
    set_rng_state(state["rng"])


def _restore_params(saved):
    """Loads a saved param-store state, in place where a parameter exists."""
    store = pyro.get_param_store()
    fresh = {"params": {}, "constraints": {}}
    for name, value in saved["params"].items():
        if name in store:
            with torch.no_grad():
                store[name].unconstrained().copy_(value)
        else:
            fresh["params"][name] = value
            fresh["constraints"][name] = saved["constraints"][name]
    if fresh["params"]:
        store.set_state(fresh)


def _check_finite(step: int, loss: float, params: Dict[str, torch.Tensor], history):
    bad = [
        name for name, p in params.items()
        if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
    if math.isfinite(loss) and not bad:
        return
    zero_grads(params.values())
    problems = [] if math.isfinite(loss) else ["loss is {}".format(loss)]
    if bad:
        problems.append("non-finite gradient of {}".format(", ".join(bad)))
    raise NonFiniteError(
        "step {}: {}".format(step, "; ".join(problems)),
        step=step, names=bad, loss=loss,
        losses=np.asarray(history.losses, dtype=np.float64),
    )


def _svi_step(svi, step: int, history, args, kwargs) -> float:
    """What :meth:`SVI.step` does, with a finiteness check before the update."""
    with poutine.trace(param_only=True) as param_capture:
        loss = torch_item(svi.loss_and_grads(svi.model, svi.guide, *args, **kwargs))
    params = {
        name: site["value"].unconstrained()
        for name, site in param_capture.trace.nodes.items()
    }
    _check_finite(step, loss, params, history)
    svi.optim(params.values())
    zero_grads(params.values())
    return loss


def _show_progress(progress: Optional[bool], num_steps: int) -> bool:
    if progress is not None:
        return bool(progress)
    return num_steps >= _PROGRESS_MIN_STEPS and sys.stderr.isatty()


def fit(
    model,
    guide,
    elbo,
    optim,
    *args,
    num_steps: int,
    track: Optional[Dict[str, Callable[[], object]]] = None,
    progress: Optional[bool] = None,
    checkpoint=None,
    checkpoint_every: int = 100,
    resume: bool = False,
    **kwargs,
) -> FitResult:
    r"""
    Runs ``num_steps`` steps of :class:`~pyro.infer.svi.SVI` with ``elbo`` and
    ``optim`` and returns the history.

    Each step is :meth:`SVI.step <pyro.infer.svi.SVI.step>` (``loss_and_grads``,
    ``optim(params)``, ``zero_grads(params)``) with one addition: before the
    optimizer step, the loss and every parameter's gradient are checked and a
    :class:`NonFiniteError` is raised if any is NaN or infinite, so a diverging
    run stops at the first bad step instead of writing NaN into the parameters.

    With ``checkpoint``, the param store, optimizer state, history and RNG states
    (torch, python, numpy) are saved every ``checkpoint_every`` steps and at the
    end, by writing a temporary file and renaming it over ``checkpoint`` (a crash
    never leaves a half-written checkpoint). With ``resume=True`` and an existing
    checkpoint, all of that is restored (this overrides the current RNG seed and
    the current values of the saved parameters) and the run continues from the
    saved step, giving the same result as an uninterrupted run (the guide is run
    once before the RNG state is restored, so that lazily initialised guides such
    as autoguides are set up as they were in the interrupted run). With
    ``resume=True`` and no checkpoint file, the run starts fresh.

    :param callable model: the Pyro model.
    :param callable guide: the Pyro guide.
    :param elbo: an ELBO instance (anything :class:`~pyro.infer.svi.SVI` accepts
        as ``loss``).
    :param optim: a :class:`~pyro.optim.PyroOptim`.
    :param int num_steps: total number of steps (including resumed ones), >= 1.
    :param dict track: optional name -> zero-argument callable, evaluated after
        every step, e.g. ``{"loc": lambda: pyro.param("loc").item()}``.
    :param bool progress: show a tqdm bar with the running loss (an exponential
        moving average, weight 0.05); ``None`` shows it only when
        ``num_steps >= 1000`` and stderr is a terminal.
    :param checkpoint: optional path of the checkpoint file.
    :param int checkpoint_every: steps between checkpoints.
    :param bool resume: continue from ``checkpoint`` if it exists.
    :returns: the history.
    :rtype: FitResult
    :raises ValueError: if ``num_steps < 1``, ``checkpoint_every < 1``, the
        checkpoint is past ``num_steps`` or tracks other names.
    :raises NonFiniteError: at the first step with a non-finite loss or gradient.
    """
    if num_steps < 1:
        raise ValueError("num_steps must be at least 1, got {}".format(num_steps))
    if checkpoint_every < 1:
        raise ValueError("checkpoint_every must be at least 1, got {}".format(checkpoint_every))
    track = dict(track or {})
    svi = pyro.infer.SVI(model, guide, optim, elbo)  # validates optim
    if hasattr(elbo, "loss_and_grads"):  # duck-typed estimators that are not ELBOs
        svi.loss_and_grads = elbo.loss_and_grads
    history = _History(list(track))
    if resume and checkpoint is not None and os.path.exists(checkpoint):
        _load_checkpoint(checkpoint, svi, history, num_steps, args, kwargs)
    _run(svi, history, num_steps, track, progress, checkpoint, checkpoint_every, args, kwargs)
    return history.result()


def _run(svi, history, num_steps, track, progress, checkpoint, every, args, kwargs):
    bar = tqdm(
        total=num_steps, initial=history.step, file=sys.stderr,
        disable=not _show_progress(progress, num_steps), dynamic_ncols=True,
    )
    running = None
    with bar:
        while history.step < num_steps:
            start = time.perf_counter()
            loss = _svi_step(svi, history.step + 1, history, args, kwargs)
            history.losses.append(loss)
            for name, fn in track.items():
                history.tracked[name].append(_as_value(fn()))
            history.seconds += time.perf_counter() - start
            running = loss if running is None else 0.95 * running + 0.05 * loss
            bar.set_postfix(loss="{:.4g}".format(running), refresh=False)
            bar.update(1)
            if checkpoint is not None and (
                history.step % every == 0 or history.step == num_steps
            ):
                _save_checkpoint(checkpoint, svi.optim, history)
