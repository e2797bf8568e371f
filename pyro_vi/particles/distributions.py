"""A distribution taken apart into its tensors and rebuilt with others:
what the path-derivative densities and the per-particle scores need."""

import copy

import torch
from pyro.distributions import Delta
from torch.distributions import Distribution, Transform, constraints
from torch.distributions.utils import lazy_property

from .pyro_compat import gradient_node, graph_reaches

__all__ = ["attribute", "functional", "tensors_of"]


def tensors_of(fn):
    """``{path: tensor}`` of the tensors of a distribution (nested ones
    included) that carry gradient, each once, without the cached values of
    its lazy properties computed from them (a Bernoulli's ``logits``, cached
    by ``log_prob``, from its ``probs``: both would count the same gradient
    twice); ``None`` when its state holds anything but tensors, plain
    values, nested distributions and parameter-free transforms (e.g. a
    flow's neural network)."""
    found, seen = {}, set()

    def collect(obj, path):
        own = {}
        for key, value in vars(obj).items():
            if isinstance(value, torch.Tensor):
                if value.requires_grad and id(value) not in seen:
                    seen.add(id(value))
                    own[key] = value
            elif isinstance(value, Distribution):
                if not collect(value, path + key + "."):
                    return False
            elif key == "transforms" and isinstance(value, (list, tuple)):
                if not all(_plain_transform(t) for t in value):
                    return False
            elif not _plain(value):
                return False
        for key, value in own.items():
            if not _cached_from(obj, key, value, own):
                found[path + key] = value
        return True

    return found if collect(fn, "") else None


def _cached_from(obj, key, value, tensors):
    """Whether ``value``, at ``key`` of ``obj``, is the cache of a lazy
    property computed from another of ``obj``'s ``tensors`` (within a few
    autograd nodes: the conversions between probabilities and logits)."""
    if not torch.is_grad_enabled():  # no gradient is taken (and views made now have no gradient edge)
        return False
    if value.grad_fn is None or not isinstance(getattr(type(obj), key, None), lazy_property):
        return False
    others = {gradient_node(t) for k, t in tensors.items() if k != key}
    return graph_reaches([value.grad_fn], others, limit=32)


def _plain(value):
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return isinstance(value, _PLAIN)


def attribute(fn, path):
    """The attribute at ``path`` (``"base_dist.loc"``) of ``fn``."""
    for key in path.split("."):
        fn = vars(fn).get(key)
    return fn


def functional(fn):
    """``(tensors, rebuild)``: the tensors of ``fn`` that carry gradient, and
    a function that rebuilds ``fn`` with other tensors in their place; or
    ``None`` for a distribution whose state is not only tensors, plain
    values, nested distributions and parameter-free transforms."""
    tensors = tensors_of(fn)
    if isinstance(fn, Delta) or not tensors:
        return None

    paths = {id(tensor): path for path, tensor in tensors.items()}  # a tensor may sit in several attributes

    def rebuild(new_tensors, obj=fn):
        copied = copy.copy(obj)
        copied.__dict__ = dict(vars(obj))
        copied._validate_args = False
        for key, value in vars(obj).items():
            if isinstance(value, torch.Tensor) and id(value) in paths:
                copied.__dict__[key] = new_tensors[paths[id(value)]]
            elif isinstance(value, torch.Tensor) and isinstance(getattr(type(obj), key, None), lazy_property):
                del copied.__dict__[key]  # a cache computed from the old tensors: recomputed from the new
            elif isinstance(value, Distribution):
                copied.__dict__[key] = rebuild(new_tensors, value)
            elif key == "transforms":
                copied.__dict__[key] = [t.with_cache(0) for t in value]
        return copied

    return tensors, rebuild


_PLAIN = (bool, int, float, str, type(None), torch.Size, torch.dtype, torch.device, constraints.Constraint)


def _plain_transform(transform):
    """A transform without parameters of its own that can drop its cache."""
    if not isinstance(transform, Transform) or isinstance(transform, torch.nn.Module):
        return False
    if any(isinstance(v, torch.Tensor) and v.requires_grad for v in vars(transform).values()):
        return False
    try:
        transform.with_cache(0)
    except NotImplementedError:
        return False
    return True
