"""
The settings of one :func:`~pyro_vi.training.fit` call, checked once,
before any work.
"""

import os
from dataclasses import dataclass
from typing import Callable, Optional, Union

import numpy as np
from pyro.optim import PyroOptim

from ..validation import boolean, function, integer
from .batches import check_data
from .checkpoint import check_plain

__all__ = ["RESUME_CHOICES", "Settings"]

RESUME_CHOICES = (False, True, "allow_fresh")


def _checked_dict(name, value, keys_only=False) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{name} must be a dict with str keys, got {value!r:.60}")
    if not keys_only:
        check_plain(value, name)
    return value


@dataclass(frozen=True)
class Settings:
    """
    The arguments of :func:`~pyro_vi.training.fit` (see there), checked when
    the settings are made, before any work, each refused with a
    ``ValueError`` naming it. They are normalized on the way: ``track``,
    ``fingerprint`` and ``state`` are dicts (``state`` the caller's own, which a
    resume fills), ``checkpoint`` is a ``str`` or ``None`` and ``resume`` one of
    :data:`RESUME_CHOICES`.
    """

    model: Callable
    guide: Callable
    elbo: object
    optim: PyroOptim
    args: tuple
    kwargs: dict
    num_steps: Optional[int]
    epochs: Optional[int]
    data: object
    callback: Optional[Callable]
    epoch_callback: Optional[Callable]
    track: dict
    progress: Optional[bool]
    checkpoint: Optional[str]
    checkpoint_every: int
    resume: Union[bool, str]
    overwrite: bool
    fingerprint: dict
    state: dict

    def __post_init__(self):
        def keep(name, value):  # the checked value, in place of the given one
            object.__setattr__(self, name, value)

        function("model", self.model)
        function("guide", self.guide)
        elbo = self.elbo
        if isinstance(elbo, type):
            raise ValueError(
                f"elbo must be an ELBO instance, got the class {elbo.__name__}; pass {elbo.__name__}(...) instead"
            )
        if not hasattr(elbo, "loss_and_grads") and not callable(elbo):
            raise ValueError(f"elbo must be an ELBO instance such as pyro.infer.Trace_ELBO(), got {elbo!r:.60}")
        optim = self.optim
        if isinstance(optim, type) or not isinstance(optim, PyroOptim):
            raise ValueError(
                "optim must be a pyro.optim optimizer instance such as pyro.optim.Adam({'lr': 0.01}), "
                f"got {optim.__name__ if isinstance(optim, type) else repr(optim)[:60]}"
            )
        data = check_data(self.data, self.args)
        if self.num_steps is not None:
            keep("num_steps", integer("num_steps", self.num_steps, minimum=1))
        if self.epochs is not None:
            keep("epochs", integer("epochs", self.epochs, minimum=1))
        if data is None:
            if self.num_steps is None:
                raise ValueError("num_steps is required: pass num_steps=..., or data= with epochs=...")
            if self.epochs is not None:
                raise ValueError("epochs counts passes over data=; without data pass num_steps only")
        elif self.num_steps is None and self.epochs is None:
            raise ValueError("with data=, pass epochs=... (passes over data) or num_steps=... (or both)")
        function("callback", self.callback, optional=True)
        function("epoch_callback", self.epoch_callback, optional=True)
        if self.epoch_callback is not None and data is None:
            raise ValueError("epoch_callback needs data=: without it there are no epochs")
        keep("track", _checked_dict("track", self.track, keys_only=True))
        for name, fn in self.track.items():
            function(f"track[{name!r}]", fn)
        if self.progress is not None:
            keep("progress", boolean("progress", self.progress))
        keep("checkpoint_every", integer("checkpoint_every", self.checkpoint_every, minimum=1))
        resume = self.resume
        if isinstance(resume, (bool, np.bool_)):
            keep("resume", bool(resume))
        elif resume != "allow_fresh" or not isinstance(resume, str):
            raise ValueError(
                "resume must be one of {}, got {!r:.60}".format(", ".join(map(repr, RESUME_CHOICES)), resume)
            )
        keep("overwrite", boolean("overwrite", self.overwrite))
        keep("fingerprint", _checked_dict("fingerprint", self.fingerprint))
        keep("state", _checked_dict("state", {} if self.state is None else self.state))
        checkpoint = self.checkpoint
        if checkpoint is not None:
            if not isinstance(checkpoint, (str, os.PathLike)) or not isinstance(os.fspath(checkpoint), str):
                raise ValueError(f"checkpoint must be a file path (str or pathlib.Path), got {checkpoint!r:.60}")
            keep("checkpoint", os.fspath(checkpoint))
        elif self.resume or self.overwrite:
            raise ValueError("resume and overwrite need checkpoint=<path>")
        if self.overwrite and self.resume:
            raise ValueError(f"overwrite=True starts the run over; it cannot be combined with resume={self.resume!r}")
