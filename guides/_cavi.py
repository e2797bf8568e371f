r"""What the closed-form guides share.

Every closed-form guide module (``guides.normal_gamma``, ``gmm``, ``earthquake``,
``lda``, ``poisson_gamma``, ``normal_chain``) exposes the same contract:

- a frozen parameter dataclass of the variational parameters;
- ``elbo(data, params, prior)``: the closed-form ELBO, a float64 scalar;
- ``elbo_gradient(data, params, prior)``: :math:`\partial\mathcal{L}/\partial` each
  field, by :func:`autograd_gradient`;
- ``cavi(data, prior, ...)``: a :class:`CaviResult`;
- ``params_from_store()``: the fitted Pyro parameters as the dataclass.

``data`` is what the model is conditioned on besides its prior (the Pyro model is
``model(*data, prior)`` for the tuple-valued data of the mixtures); ``prior`` is the
model's hyper-parameter dataclass, ``None`` where they are fixed.
"""

import math
import numbers
from dataclasses import dataclass, field, fields, replace
from typing import Any, Callable, Dict, List

import torch

from models.checks import as_int, as_real


@dataclass
class CaviResult:
    """Outcome of a CAVI run.

    :ivar params: the final parameters (the guide's parameter dataclass).
    :ivar float elbo: the closed-form ELBO at ``params``.
    :ivar list elbo_history: ELBO at the initial point and after each sweep.
    :ivar int num_iters: number of sweeps run.
    :ivar bool converged: whether the run met its stopping rule (``tol``).
    :ivar float seconds: wall time of the sweeps, where the loop measures it.
    """

    params: Any
    elbo: float
    elbo_history: List[float] = field(default_factory=list)
    num_iters: int = 0
    converged: bool = False
    seconds: float = 0.0


def check_settings(max_iters, tol) -> None:
    """Refuses a ``max_iters`` that is not a positive integer and a ``tol`` that is
    not a finite non-negative number, naming the value."""
    as_int("max_iters", max_iters)
    if isinstance(tol, bool) or not (isinstance(tol, numbers.Real) and math.isfinite(tol) and tol >= 0):
        raise ValueError(f"tol must be a finite non-negative number, got {tol!r}")


def max_relative_change(old, new) -> float:
    """The largest change of any field between two parameter dataclasses (floats
    or tensors), relative to max(1, |old value|)."""
    change = 0.0
    for f in fields(old):
        before = torch.as_tensor(getattr(old, f.name), dtype=torch.float64)
        after = torch.as_tensor(getattr(new, f.name), dtype=torch.float64)
        change = max(change, float(((after - before).abs() / before.abs().clamp_min(1.0)).max()))
    return change


def coordinate_ascent(sweep: Callable, elbo: Callable, params, max_iters: int, tol: float) -> CaviResult:
    """Runs ``params = sweep(params)`` until no parameter changes by more than ``tol``
    (:func:`max_relative_change`) or ``max_iters`` sweeps, recording ``elbo(params)``
    at the start and after each sweep (non-decreasing when each sweep is exact
    coordinate ascent). ``max_iters`` and ``tol`` as :func:`check_settings` passes them."""
    value = float(elbo(params))
    result = CaviResult(params, value, [value])
    with torch.no_grad():
        while result.num_iters < max_iters and not result.converged:
            new = sweep(result.params)
            result.converged = max_relative_change(result.params, new) <= tol
            result.params, result.num_iters = new, result.num_iters + 1
            result.elbo_history.append(float(elbo(new)))
    result.elbo = result.elbo_history[-1]
    return result


def real_field(name, value, positive=False):
    """A scalar field of a parameter dataclass: a float (:func:`models.checks.as_real`,
    finite, > 0 when ``positive``), or, for a tensor that requires grad, that tensor
    as float64 with its graph kept (so :func:`autograd_gradient` can differentiate
    through the dataclass). ``ValueError`` names the field."""
    if isinstance(value, torch.Tensor) and value.requires_grad:
        value = value.to(torch.float64)
        with torch.no_grad():
            ok = torch.isfinite(value) & (value > 0) if positive else torch.isfinite(value)
        if not bool(ok.all()):
            raise ValueError(f"{name} must be {'finite and positive' if positive else 'finite'}, got {value.detach()}")
        return value
    value = as_real(name, value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return value


def autograd_gradient(elbo: Callable, data, params, prior) -> Dict[str, torch.Tensor]:
    r""":math:`\partial \mathcal{L} / \partial \text{field}` for every (non-``None``) field
    of the parameter dataclass ``params``, by autograd of ``elbo(data, params, prior)``
    at float64 leaves; float64 tensors keyed by field name, shaped like the fields."""
    leaves = {}
    for f in fields(params):
        value = getattr(params, f.name)
        if value is None:
            continue
        value = value.detach() if isinstance(value, torch.Tensor) else value
        leaves[f.name] = torch.as_tensor(value, dtype=torch.float64).clone().requires_grad_()
    value = elbo(data, replace(params, **leaves), prior)
    return dict(zip(leaves, torch.autograd.grad(value, list(leaves.values()))))
