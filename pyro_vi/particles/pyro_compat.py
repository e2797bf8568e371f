"""Every use of Pyro's and torch's internals, in one place.

The rest of the library reaches Pyro and torch through their public API
and through these functions only. Each says what it relies on, and
``tests/particles/test_pyro_compat.py`` pins that behaviour, so that a
release that changes it fails there, by name, instead of silently
somewhere else.
"""

import sys
import types

import pyro
import torch
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import scale_and_mask
from pyro.infer.elbo import ELBO

__all__ = [
    "PARTICLE_PLATE",
    "PyroELBO",
    "default_argument_holders",
    "expanded_from",
    "gradient_edge",
    "gradient_node",
    "graph_reaches",
    "param_constraint",
    "param_leaf",
    "parents_of",
    "particle_plate",
    "row_selection",
    "set_log_prob",
    "upstream_edges",
]

#: The name of the outermost plate of Pyro's vectorized ELBOs
#: (``pyro.infer.elbo.ELBO._vectorized_num_particles``): a site in it is
#: broadcast over the particles, and Pyro's messages name it.
PARTICLE_PLATE = "num_particles_vectorized"


class PyroELBO(ELBO):
    """:class:`pyro.infer.ELBO` with its one abstract method, ``_get_trace``,
    defined: Pyro's own loop over traces (``_get_traces``) is never used,
    since the particles are drawn by :class:`~pyro_vi.particles.Sampler`."""

    def _get_trace(self, model, guide, args, kwargs):
        raise NotImplementedError(f"{type(self).__name__} draws its particles with pyro_vi.particles.Sampler")


def particle_plate(num_particles, plate_dims):
    """The particle plate, left of the programs' ``plate_dims`` plate dims:
    where ``ELBO._vectorized_num_particles`` puts it (``dim =
    -max_plate_nesting``, whose value Pyro's ``ELBO.__init__`` raised by one
    for it)."""
    return pyro.plate(PARTICLE_PLATE, num_particles, dim=-(plate_dims + 1))


def param_leaf(value):
    """The unconstrained leaf an optimizer steps for the value of a param
    site: ``value.unconstrained()`` (Pyro's param store, a ``PyroParam``), or
    the value itself, a plain ``nn.Parameter`` of a ``PyroModule`` under
    ``pyro.settings.set(module_local_params=True)``."""
    leaf = getattr(value, "unconstrained", None)
    return value if leaf is None else leaf()


def param_constraint(name):
    """The constraint of param ``name`` in the param store (its private
    ``_constraints`` table; ``get_state()`` would copy every value), or
    ``None`` for a param the store does not hold."""
    return pyro.get_param_store()._constraints.get(name)


def gradient_node(tensor):
    """The autograd node a gradient of ``tensor`` flows into: its
    ``grad_fn``, or a leaf's ``AccumulateGrad``."""
    return tensor.grad_fn or torch.autograd.graph.get_gradient_edge(tensor).node


def graph_reaches(starts, targets, avoiding=(), limit=None):
    """Whether a walk over the recorded autograd graph from the nodes
    ``starts`` meets a node in the set ``targets`` without passing through a
    node in ``avoiding`` (``next_functions``; no backward pass), within
    ``limit`` nodes if given."""
    seen = set(avoiding)
    stack = list(starts)
    visited = 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        if node in targets:
            return True
        visited += 1
        if limit is not None and visited > limit:
            return False
        seen.add(node)
        stack.extend(child for child, _ in node.next_functions)
    return False


def gradient_edge(tensor):
    """``(node, output number)``: where a gradient of ``tensor`` enters the
    autograd graph (hashable; the other outputs of one node, such as the
    other chunks of a ``chunk``, have other edges)."""
    edge = torch.autograd.graph.get_gradient_edge(tensor)
    return edge.node, edge.output_nr


def upstream_edges(tensor, limit=None):
    """The gradient edges (see :func:`gradient_edge`) that ``tensor`` is
    computed from, its own included: a walk over ``next_functions`` from its
    ``grad_fn``, over at most ``limit`` nodes if given."""
    found, seen, stack = {gradient_edge(tensor)}, set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if limit is not None and len(seen) > limit:
            break
        for edge in node.next_functions:
            found.add(edge)
            stack.append(edge[0])
    return found


def parents_of(outputs):
    """For each autograd node reachable from the tensors ``outputs``, the
    nodes that use it, each listed once (a leaf that is itself an output
    lists ``None``)."""
    parents, seen = {}, set()
    stack = [t.grad_fn for t in outputs if t.grad_fn is not None]
    for t in outputs:
        if t.grad_fn is None and t.requires_grad:
            parents.setdefault(gradient_node(t), []).append(None)
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        for child, _ in node.next_functions:
            if child is not None:
                users = parents.setdefault(child, [])
                if node not in users:
                    users.append(node)
                stack.append(child)
    return parents


def expanded_from(copy, source):
    """Whether ``copy`` was made by one ``expand`` of ``source`` (its node is
    ``ExpandBackward0`` whose input is ``source``'s node)."""
    node = copy.grad_fn
    return type(node).__name__ == "ExpandBackward0" and node.next_functions[0][0] is gradient_node(source)


def row_selection(node):
    """``(dim, index)`` when the autograd ``node`` selects distinct rows of
    one dim with a 1-D index (``index_select``, or ``param[idx]`` with one
    tensor index): read from the node's saved ``_saved_dim``,
    ``_saved_index`` or ``_saved_indices``; else ``None``."""
    name = type(node).__name__
    if name == "IndexSelectBackward0":
        dim, index = node._saved_dim, node._saved_index
        if dim >= 1 << 63:  # a negative dim, saved unsigned
            dim -= 1 << 64
    elif name == "IndexBackward0":
        indices = [(d, i) for d, i in enumerate(node._saved_indices) if i is not None]
        if len(indices) != 1:
            return None
        dim, index = indices[0]
    else:
        return None
    if index.dim() != 1 or index.dtype == torch.bool or index.unique().numel() != index.numel():
        return None
    return dim, index


def set_log_prob(site, log_prob):
    """Stores an unscaled log-density in a trace node as Pyro's
    ``Trace.compute_log_prob`` and ``compute_score_parts`` would (its keys
    ``unscaled_log_prob``, ``log_prob``, ``log_prob_sum``, ``score_parts``),
    so that they keep it."""
    site["unscaled_log_prob"] = log_prob
    site["log_prob"] = scale_and_mask(log_prob, site["scale"], site["mask"])
    site["log_prob_sum"] = site["log_prob"].sum()
    site["score_parts"] = ScoreParts(site["log_prob"], 0, site["log_prob"])


def default_argument_holders(value, package="torch.distributed"):
    """The functions and methods, defined in the imported modules of
    ``package``, that hold ``value`` as a default argument (``module.name``).
    ``torch.distributed.nn.functional`` evaluates ``group=group.WORLD`` when
    it is imported: imported after ``init_process_group`` (the first
    ``torch.optim`` optimizer imports it, through ``torch._dynamo``), ten of
    its functions hold the default process group, which
    ``destroy_process_group`` then cannot free."""
    holders = []
    for module_name, module in list(sys.modules.items()):
        if module is None or not (module_name == package or module_name.startswith(package + ".")):
            continue
        for name, obj in list(vars(module).items()):
            if type(obj) not in (types.FunctionType, type) or obj.__module__ != module_name:
                continue  # neither a function nor a class, or defined elsewhere (counted there)
            functions = vars(obj).items() if type(obj) is type else [(None, obj)]
            for attribute, fn in functions:
                if type(fn) is types.FunctionType and any(default is value for default in fn.__defaults__ or ()):
                    holders.append(f"{module_name}.{name}" + (f".{attribute}" if attribute else ""))
    return sorted(holders)
