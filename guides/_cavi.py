"""The coordinate-ascent loop shared by the closed-form CAVI of the guides
(``guides.normal_gamma``, ``guides.gmm``, ``guides.earthquake``)."""

import math
import numbers
from dataclasses import dataclass, field, fields
from typing import Any, Callable, List

import torch


@dataclass
class CaviResult:
    """Outcome of a CAVI run.

    :ivar params: the final parameters (the guide's parameter dataclass).
    :ivar float elbo: the closed-form ELBO at ``params``.
    :ivar list elbo_history: ELBO at the initial point and after each sweep.
    :ivar int num_iters: number of sweeps run.
    :ivar bool converged: whether the parameters stopped changing within ``tol``.
    """

    params: Any
    elbo: float
    elbo_history: List[float] = field(default_factory=list)
    num_iters: int = 0
    converged: bool = False


def check_settings(max_iters, tol) -> None:
    """Refuses a ``max_iters`` that is not a positive integer and a ``tol`` that is
    not a finite non-negative number, naming the value."""
    if isinstance(max_iters, bool) or not isinstance(max_iters, numbers.Integral) or max_iters < 1:
        raise ValueError(f"max_iters must be a positive integer, got {max_iters!r}")
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
