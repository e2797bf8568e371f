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


def check_mixture_params(values, event_shapes, real=("m",)):
    """Validates the float64 fields of a mixture's mean-field parameters in place
    of a dataclass ``__post_init__``: ``values["r"]`` (N, K) responsibilities with
    rows on the simplex (within 1e-6), every other field of shape
    ``(K,) + event_shapes.get(name, ())``, finite, and positive unless in ``real``.

    :raises ValueError: naming the offending field."""
    r = values["r"]
    if r.dim() != 2:
        raise ValueError(f"r must have shape (N, K), got {tuple(r.shape)}")
    num_components = r.shape[1]
    with torch.no_grad():
        for name, value in values.items():
            if name == "r":
                continue
            event_shape = tuple(event_shapes.get(name, ()))
            if value.dim() != 1 + len(event_shape) or tuple(value.shape[1:]) != event_shape:
                if event_shape:
                    wanted = "(K, {})".format(", ".join(map(str, event_shape)))
                    raise ValueError(f"{name} must have shape {wanted}, got {tuple(value.shape)}")
                raise ValueError(f"{name} must be 1-D of length K, got shape {tuple(value.shape)}")
            if value.shape[0] != num_components:
                raise ValueError(f"{name} has {value.shape[0]} components but r has {num_components}")
            ok = torch.isfinite(value) if name in real else torch.isfinite(value) & (value > 0)
            if not bool(ok.all()):
                need = "finite" if name in real else "finite and positive"
                raise ValueError(f"{name} must be {need}, got {value.tolist()}")
        if not bool((torch.isfinite(r) & (r >= 0)).all()):
            raise ValueError("r must be finite and non-negative")
        if not bool(((r.sum(-1) - 1).abs() <= 1e-6).all()):
            raise ValueError("every row of r must sum to 1")


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
