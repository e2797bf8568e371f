"""Pieces the mixture guides (``guides.gmm``, ``guides.earthquake``) share."""

import pyro
import torch
from torch.distributions import constraints


def as_float64(name, value):
    """``value`` as a float64 tensor; tensors keep their autograd graph."""
    if isinstance(value, torch.Tensor):
        return value.to(torch.float64)
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be an array of real numbers: {e}") from e


def shaped_param(name, init_fn, shape, constraint=constraints.real):
    """``pyro.param``, refusing a stored value of another shape."""
    value = pyro.param(name, init_fn, constraint=constraint)
    if tuple(value.shape) != tuple(shape):
        raise ValueError(
            f"param {name!r} in the param store has shape {tuple(value.shape)}, expected {tuple(shape)} "
            "(a different number of components or data points?); call pyro.clear_param_store()"
        )
    return value


def floored(r, floor=1e-6):
    """Responsibilities floored at ``floor`` and renormalized, for the Pyro
    parameter: on well-separated data CAVI's responsibilities underflow to
    exactly 0, which has no unconstrained (stick-breaking) value, and the
    score of a zero probability is NaN."""
    r = r.clamp_min(floor)
    return r / r.sum(-1, keepdim=True)
