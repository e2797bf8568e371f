"""Argument checks shared by the models and their guides (public: the guides import them)."""

import math
import numbers

import torch


def as_real(name, value):
    """``value`` as a float, or a ``ValueError`` naming ``name``: a real
    number or a one-element tensor (not a bool)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, torch.Tensor)):
        raise ValueError(f"{name} must be a real number, got {value!r}")
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(value.shape)}")
        value = value.item()
    return float(value)


def as_counts(name, data):
    """``data`` as a float64 tensor of counts, or a ``ValueError`` naming
    ``name`` and the first entry that is not a finite non-negative integer
    (integral floats are counts; booleans and non-numbers are not)."""
    if isinstance(data, torch.Tensor) and data.dtype == torch.bool:
        raise ValueError(f"{name} must be non-negative integers, got a boolean tensor")
    try:
        counts = torch.as_tensor(data, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be an array of non-negative integers: {e}") from e
    bad = ~torch.isfinite(counts) | (counts < 0) | (counts != counts.round())
    if bad.any():
        index = tuple(bad.nonzero()[0].tolist())
        value = counts[index].item()
        shown = int(value) if math.isfinite(value) and value.is_integer() else value
        where = index[0] if len(index) == 1 else index
        raise ValueError(f"{name} must be non-negative integers, got {shown} at index {where}")
    return counts


def set_real_fields(obj, real=(), positive=()):
    """Validates the float fields of a frozen dataclass in its ``__post_init__``
    and stores them as floats: each a real number (:func:`as_real`), finite, and
    for the names in ``positive`` greater than 0; ``ValueError`` names the field."""
    for name in tuple(real) + tuple(positive):
        value = as_real(name, getattr(obj, name))
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
        if name in positive and not value > 0:
            raise ValueError(f"{name} must be positive, got {value}")
        object.__setattr__(obj, name, value)


def as_int(name, value, minimum=1, need=None) -> int:
    """``value`` as an int, or a ``ValueError`` naming ``name``: an integer (not a
    bool) of at least ``minimum``; ``need`` words the requirement (default "a positive
    integer" for ``minimum`` 1, "an integer >= minimum" otherwise)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        need = need or ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
        raise ValueError(f"{name} must be {need}, got {value!r}")
    return int(value)


def as_float64(name, values, what="an array of real numbers"):
    """``values`` as a float64 tensor, or a ``ValueError``: ``{name} must be
    {what}`` with torch's reason."""
    try:
        return torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"{name} must be {what}: {e}") from e


def check_components(name, values, num_components, positive):
    """``values`` (a float64 tensor, one entry or row per mixture component),
    or a ``ValueError`` naming ``name``: ``num_components`` of them, finite,
    and with ``positive`` greater than 0."""
    if values.shape[0] != num_components:
        raise ValueError(f"{name} has {values.shape[0]} components but pi has {num_components}")
    ok = torch.isfinite(values) & (values > 0) if positive else torch.isfinite(values)
    if not bool(ok.all()):
        need = "finite and positive" if positive else "finite"
        raise ValueError(f"{name} must be {need}, got {values.tolist()}")
    return values
