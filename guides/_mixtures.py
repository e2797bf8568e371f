"""Pieces the mixture guides (``guides.gmm``, ``guides.earthquake``) share."""

import numbers
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import pyro
import torch
from torch.distributions import constraints


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


# ------------------------------------------------ the CAVI pieces every mixture shares


def gamma_moments(a, b):
    r""":math:`E[\tau] = a/b` and :math:`E[\log\tau] = \psi(a) - \log b` under :math:`\mathrm{Gamma}(a, b)`."""
    return a / b, torch.digamma(a) - b.log()


def gamma_entropy(a, b):
    r""":math:`\mathbb{H}[\mathrm{Gamma}(a, b)] = a - \log b + \log\Gamma(a) + (1 - a)\psi(a)`."""
    return a - b.log() + torch.lgamma(a) + (1 - a) * torch.digamma(a)


def assignment_term(r, log_lik):
    r""":math:`\sum_{n,k} r_{nk} (\ell_{nk} - \log r_{nk})` with :math:`0 \log 0 = 0` and
    finite gradients at :math:`r_{nk} = 0`: the assignments' part of a mixture's ELBO,
    :math:`\ell_{nk}` the expected log joint of point n in component k."""
    positive = r > 0
    safe_r = torch.where(positive, r, torch.ones_like(r))
    neg_entropy = torch.where(positive, safe_r * safe_r.log(), torch.zeros_like(r))
    return (r * log_lik - neg_entropy).sum()


def check_params(params, cls, num_data, num_components, name="params"):
    """``params`` if it is a ``cls`` with ``num_components`` components and ``num_data``
    rows of responsibilities; otherwise ``ValueError`` naming the mismatch."""
    article = "an" if cls.__name__[0] in "AEIOU" else "a"
    if not isinstance(params, cls):
        raise ValueError(f"{name} must be {article} {cls.__name__}, got {type(params).__name__}")
    if params.num_components != num_components:
        raise ValueError(f"{name} has {params.num_components} components but pi has {num_components}")
    if params.r.shape[0] != num_data:
        raise ValueError(f"{name}.r has {params.r.shape[0]} rows but data has {num_data} points")
    return params


def check_init_kind(init, cls):
    """Refuses an ``init`` that is not ``None``, an integer seed or a ``cls``."""
    if init is None or isinstance(init, cls) or (isinstance(init, numbers.Integral) and not isinstance(init, bool)):
        return
    article = "an" if cls.__name__[0] in "AEIOU" else "a"
    raise ValueError(f"init must be None, an int seed or {article} {cls.__name__}, got {type(init).__name__}")


@dataclass(frozen=True)
class MixtureFamily:
    """How a mixture's mean-field parameters map to Pyro parameters: ``cls`` the
    parameter dataclass, ``globals`` its per-component fields as ``(field, Pyro name,
    event shape, constraint)``, ``z_probs`` the Pyro name of the responsibilities."""

    cls: type
    globals: Tuple[Tuple[str, str, Tuple[int, ...], Any], ...]
    z_probs: str = "q_z_probs"


def guide_params(family: MixtureFamily, initial: Callable, num_data, num_components, with_r):
    """The guide's Pyro parameters as a dict by field name, created from ``initial()``
    (called once, the first time only; afterwards the param store wins) in the default
    dtype; ``"r"`` (floored, :func:`floored`) only ``with_r``."""
    cache = {}
    dtype = torch.get_default_dtype()

    def start(name):
        if "params" not in cache:
            cache["params"] = initial()
        return getattr(cache["params"], name).detach().to(dtype)

    values = {
        field: shaped_param(name, lambda field=field: start(field), (num_components,) + shape, constraint)
        for field, name, shape, constraint in family.globals
    }
    if with_r:
        values["r"] = shaped_param(
            family.z_probs, lambda: floored(start("r")), (num_data, num_components), constraints.simplex
        )
    return values


def params_from_store(family: MixtureFamily, responsibilities: Optional[Callable]):
    """The stored parameters as ``family.cls``. Without ``family.z_probs`` in the store,
    ``r = responsibilities(globals)`` (the CAVI update given the stored globals), which
    needs the data: ``responsibilities`` is ``None`` when none was given."""
    store = pyro.get_param_store()
    values = {field: store[name].detach() for field, name, _, _ in family.globals}
    if family.z_probs in store:
        r = store[family.z_probs].detach().to(torch.float64)
        values["r"] = r / r.sum(-1, keepdim=True)  # float32 simplex rows, renormalized in float64
    elif responsibilities is None:
        raise ValueError(f"no {family.z_probs!r} in the param store; pass data to compute r")
    else:
        values["r"] = responsibilities(values)
    return family.cls(**values)
