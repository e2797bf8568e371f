"""
When a step of :func:`~pyro_vi.training.fit` fails with torch's validation
error, which distribution argument left its support: :func:`diagnose` reruns
the guide and the model of that step without validation, stops at the first
sample site whose distribution has an argument (or value) outside its
constraint, and finds the params the argument is computed from.
"""

from dataclasses import dataclass, replace
from typing import Optional, Tuple

import pyro
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .random_states import random_states_kept

__all__ = ["OutOfSupport", "diagnose"]


@dataclass(frozen=True)
class OutOfSupport:
    """A distribution argument outside its constraint, at a sample site.

    :ivar str role: ``"guide"`` or ``"model"``.
    :ivar str site: the sample site.
    :ivar str distribution: the distribution's class name.
    :ivar str argument: the argument, or ``"value"`` for an observation, or
        for a latent value of the model (drawn by the guide; ``latent``).
    :ivar torch.Tensor value: the argument's value.
    :ivar constraint: the constraint it breaks.
    :ivar bool latent: a latent site of the model whose value is outside the
        model's support.
    :ivar tuple names: the Pyro params ``value`` is computed from.
    """

    role: str
    site: str
    distribution: str
    argument: str
    value: torch.Tensor
    constraint: object
    latent: bool = False
    names: Tuple[str, ...] = ()

    def message(self) -> str:
        """What went wrong and what to do, for :class:`~pyro_vi.training.OutOfSupportError`."""
        if self.latent:
            text = (
                "the model's latent site {!r} got {} from the guide, outside the support {} of its {}; "
                "the guide must draw {!r} from a distribution with that support (e.g. a LogNormal or Gamma "
                "for a positive latent, or an autoguide)"
            ).format(self.site, self._values("the value"), self.constraint, self.distribution, self.site)
        elif self.argument == "value":
            text = "the {}'s observed site {!r} has {} outside the support {} of its {}".format(
                self.role, self.site, self._values("the observation"), self.constraint, self.distribution
            )
        else:
            text = (
                f"the {self.role}'s site {self.site!r} got {self.distribution}({self.argument}=...) with "
                f"{self._values(self.argument)} outside its support {self.constraint}"
            )
        names = self.names
        if names:
            text += (
                "; it is computed from param{} {}: give {} a constraint (pyro.param(..., constraint=...)) "
                "or lower the learning rate".format(
                    "s" if len(names) > 1 else "", ", ".join(map(repr, names)), "it" if len(names) == 1 else "them"
                )
            )
        return text

    def _values(self, name) -> str:
        """``"scale = -0.1"`` or ``"2 of 3 values of scale (e.g. -0.1, nan)"``."""
        value = self.value.detach()
        if value.numel() == 1:
            return f"{name} = {value.item():.6g}"
        ok = torch.as_tensor(self.constraint.check(value))
        bad = value[~ok] if ok.shape == value.shape else value.flatten()
        return "{} of {} values of {} (e.g. {})".format(
            bad.numel(), value.numel(), name, ", ".join(f"{v:.6g}" for v in bad[:3].tolist())
        )


class _Found(Exception):
    pass


def _satisfies(constraint, value) -> bool:
    try:
        return bool(torch.as_tensor(constraint.check(value)).all())
    except Exception:  # dependent constraints, odd shapes: not ours to judge
        return True


class _CheckArguments(Messenger):
    """Raises :class:`_Found` at the first sample site whose distribution
    has an argument (or observed value) outside its constraint."""

    def __init__(self, role):
        super().__init__()
        self.role = role

    def _found(self, msg, fn, argument, value, constraint, latent=False):
        return _Found(OutOfSupport(self.role, msg["name"], type(fn).__name__, argument, value, constraint, latent))

    def _process_message(self, msg):
        if msg["type"] != "sample" or site_is_subsample(msg):
            return
        fn = msg["fn"]
        while fn is not None:
            for name, constraint in getattr(fn, "arg_constraints", {}).items():
                value = fn.__dict__.get(name)  # lazy arguments not computed are skipped
                if isinstance(value, torch.Tensor) and not _satisfies(constraint, value):
                    raise self._found(msg, fn, name, value, constraint)
            fn = getattr(fn, "base_dist", None)
        if msg["is_observed"] and not _satisfies(msg["fn"].support, msg["value"]):
            raise self._found(msg, msg["fn"], "value", msg["value"], msg["fn"].support)

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
            raise self._found(msg, msg["fn"], "value", msg["value"], msg["fn"].support, latent=True)


def _params_behind(value) -> tuple:
    named = [(n, p) for n, p in pyro.get_param_store().named_parameters() if p.requires_grad]
    if not named or not value.requires_grad:
        return ()
    grads = torch.autograd.grad(value.sum(), [p for _, p in named], allow_unused=True)
    return tuple(name for (name, _), grad in zip(named, grads) if grad is not None)


def diagnose(model, guide, args, kwargs, torch_state) -> Optional[OutOfSupport]:
    """Reruns ``guide`` and ``model`` (replayed against it) from the step's
    torch random state ``torch_state``, without validation, and returns the
    first argument outside its support, or ``None`` if there is none (or the
    rerun fails otherwise). Every random state is put back."""
    with random_states_kept(), pyro.validation_enabled(False):
        torch.set_rng_state(torch_state)
        try:
            guide_trace = poutine.trace(_CheckArguments("guide")(guide)).get_trace(*args, **kwargs)
            poutine.replay(_CheckArguments("model")(model), trace=guide_trace)(*args, **kwargs)
        except _Found as found:
            return replace(found.args[0], names=_params_behind(found.args[0].value))
        except Exception:
            return None
    return None
