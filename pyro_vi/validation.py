"""The argument checks every public entry point runs before any work.

Each returns the value in a canonical type or raises ``ValueError`` whose
message names the argument, the value it got, and what to pass instead.
NumPy scalars are accepted where Python numbers are; booleans are not numbers.
"""

import math
import numbers

import numpy as np
import torch

__all__ = ["boolean", "choice", "function", "instance", "integer", "real"]


def _shown(value):
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _bounds(minimum, maximum, strict_minimum):
    parts = []
    if minimum is not None:
        parts.append("{} {}".format(">" if strict_minimum else ">=", minimum))
    if maximum is not None:
        parts.append(f"<= {maximum}")
    return " and ".join(parts)


def integer(name, value, minimum=None, maximum=None):
    """``value`` as an ``int``: a Python or NumPy integer (not a bool, not a
    float, not a string) within ``[minimum, maximum]``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        bounds = _bounds(minimum, maximum, False)
        raise ValueError(
            "{} must be an integer{}, got {} ({}); pass e.g. {}={}".format(
                name,
                " " + bounds if bounds else "",
                _shown(value),
                type(value).__name__,
                name,
                minimum if minimum is not None else 1,
            )
        )
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be an integer {_bounds(minimum, maximum, False)}, got {value}")
    return value


def real(name, value, minimum=None, maximum=None, strict_minimum=False, finite=True):
    """``value`` as a ``float``: a Python or NumPy real number or a
    one-element tensor (not a bool), finite unless ``finite=False``, within
    the bounds (``minimum`` excluded when ``strict_minimum``)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {_shown(value)} ({type(value).__name__})")
    value = float(value)
    if math.isnan(value) or (finite and math.isinf(value)):
        raise ValueError(f"{name} must be a finite number, got {value}")
    below = minimum is not None and (value <= minimum if strict_minimum else value < minimum)
    if below or (maximum is not None and value > maximum):
        raise ValueError(f"{name} must be {_bounds(minimum, maximum, strict_minimum)}, got {value}")
    return value


def choice(name, value, choices):
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, (str, numbers.Number, type(None))) or value not in choices:
        raise ValueError(
            "{} must be one of {}, got {}".format(name, ", ".join(repr(c) for c in choices), _shown(value))
        )
    return value


def boolean(name, value):
    """``value`` as a ``bool``: only ``True`` or ``False`` (or NumPy's)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {_shown(value)} ({type(value).__name__})")
    return bool(value)


def function(name, value, optional=False):
    """``value`` if it is callable and not a class (``None`` too when
    ``optional``): a class where an instance or function belongs is refused
    with the call to make instead."""
    if value is None and optional:
        return None
    if isinstance(value, type):
        raise ValueError(
            f"{name} must be a function or an instance, got the class {value.__name__}; pass an instance, "
            f"e.g. {value.__name__}(...)"
        )
    if not callable(value):
        raise ValueError(
            "{} must be callable{}, got {} ({})".format(
                name, " or None" if optional else "", _shown(value), type(value).__name__
            )
        )
    return value


def instance(name, value, kind, description, optional=False):
    """``value`` if it is an instance of ``kind`` (a class or a tuple of
    classes), or, when ``kind`` is a string, an object with that attribute
    (``None`` too when ``optional``). ``description`` says what to pass, e.g.
    ``"an ELBO instance such as pyro.infer.Trace_ELBO()"``; a class passed
    where its instance belongs is refused with the call to make."""
    if value is None and optional:
        return None
    ok = hasattr(value, kind) if isinstance(kind, str) else isinstance(value, kind)
    if isinstance(value, type):
        instantiable = hasattr(value, kind) if isinstance(kind, str) else issubclass(value, kind)
        raise ValueError(
            "{} must be {}, got the class {}{}".format(
                name,
                description,
                value.__name__,
                f"; pass an instance, e.g. {value.__name__}(...)" if instantiable else "",
            )
        )
    if not ok:
        raise ValueError(
            "{} must be {}{}, got {} ({})".format(
                name, description, " or None" if optional else "", _shown(value), type(value).__name__
            )
        )
    return value
