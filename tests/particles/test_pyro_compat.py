"""What pyro_vi relies on in Pyro's and torch's internals
(pyro_vi/particles/pyro_compat.py), pinned: a release that changes any of
it fails here, by name."""

import math
import sys
import types

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.infer.elbo import ELBO
from pyro.nn import PyroModule

from pyro_vi.particles import pyro_compat


def program():
    with pyro.plate("data", 2):
        pyro.sample("z", dist.Normal(torch.zeros(2), 1.0))


def test_pyro_elbo_has_one_abstract_method_and_ours_defines_it():
    assert ELBO.__abstractmethods__ == {"_get_trace"}
    assert not pyro_compat.PyroELBO.__abstractmethods__


def test_the_particle_plate_is_where_pyro_puts_it():
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    pyros = poutine.trace(elbo._vectorized_num_particles(program)).get_trace()
    ours = poutine.trace(pyro_compat.particle_plate(3, plate_dims=1)(program)).get_trace()
    for trace in (pyros, ours):
        frame, _ = trace.nodes["z"]["cond_indep_stack"]  # outermost first
        assert (frame.name, frame.dim, frame.size) == (pyro_compat.PARTICLE_PLATE, -2, 3)


def test_param_leaf_of_the_store_and_of_a_module_local_parameter():
    value = pyro.param("scale", torch.tensor(2.0), constraint=dist.constraints.positive)
    assert pyro_compat.param_leaf(value) is pyro.get_param_store()._params["scale"]
    assert torch.allclose(pyro_compat.param_leaf(value), torch.tensor(2.0).log())
    with pyro.settings.context(module_local_params=True):
        module = PyroModule[torch.nn.Linear](1, 1)
        assert pyro_compat.param_leaf(module.weight) is module.weight


def test_param_constraint_reads_the_store():
    pyro.param("scale", torch.tensor(2.0), constraint=dist.constraints.positive)
    assert pyro_compat.param_constraint("scale") is dist.constraints.positive
    assert pyro_compat.param_constraint("missing") is None


def test_expanded_from_an_expand_only():
    source = torch.randn(2, requires_grad=True) * 1.0
    assert pyro_compat.expanded_from(source.expand(3, 2), source)
    assert not pyro_compat.expanded_from(source * 1.0, source)
    leaf = torch.randn(2, requires_grad=True)
    assert pyro_compat.expanded_from(leaf.expand(3, 2), leaf)


def test_row_selection_reads_the_saved_index():
    param = torch.randn(5, 3, requires_grad=True)
    index = torch.tensor([4, 0, 2])
    dim, found = pyro_compat.row_selection(param[index].grad_fn)
    assert dim == 0 and torch.equal(found, index)
    dim, found = pyro_compat.row_selection(param.index_select(-1, torch.tensor([2, 1])).grad_fn)
    assert dim == -1 and torch.equal(found, torch.tensor([2, 1]))  # a negative dim, saved unsigned
    dim, found = pyro_compat.row_selection(param.index_select(0, index).grad_fn)
    assert dim == 0 and torch.equal(found, index)
    assert pyro_compat.row_selection(param[torch.tensor([1, 1])].grad_fn) is None  # repeated rows
    assert pyro_compat.row_selection(param[param[:, 0] > 0].grad_fn) is None  # a boolean mask
    assert pyro_compat.row_selection((param * 2).grad_fn) is None


def test_graph_walks():
    a = torch.randn(2, requires_grad=True)
    b = a * 2
    c = b + 1
    node_a, node_b = pyro_compat.gradient_node(a), pyro_compat.gradient_node(b)
    assert pyro_compat.graph_reaches([c.grad_fn], {node_a})
    assert not pyro_compat.graph_reaches([c.grad_fn], {node_a}, avoiding=(node_b,))
    parents = pyro_compat.parents_of([c])
    assert parents[node_b] == [c.grad_fn] and parents[node_a] == [node_b]


def test_gradient_edges_tell_the_outputs_of_one_node_apart():
    """``next_functions`` holds ``(node, output number)`` pairs, the gradient
    edges: a tensor computed from one chunk of a ``chunk`` is upstream of
    that chunk's edge, not its sibling's, though both come out of one node."""
    leaf = torch.randn(4, requires_grad=True)
    first, second = (leaf * 2).chunk(2)
    assert first.grad_fn is second.grad_fn
    edge = pyro_compat.gradient_edge
    assert len({edge(first), edge(second), edge(leaf)}) == 3
    upstream = pyro_compat.upstream_edges(second.exp())
    assert edge(second) in upstream and edge(leaf) in upstream and edge(first) not in upstream
    assert edge(leaf) not in pyro_compat.upstream_edges(second.exp(), limit=2)
    assert pyro_compat.upstream_edges(leaf) == {edge(leaf)}


def test_log_probs_set_in_a_trace_are_kept_by_pyro():
    trace = poutine.trace(program).get_trace()
    site = trace.nodes["z"]
    pyro_compat.set_log_prob(site, torch.full((2,), -7.0))
    trace.compute_log_prob()
    trace.compute_score_parts()
    assert torch.equal(site["log_prob"], torch.full((2,), -7.0))
    assert torch.equal(site["score_parts"].log_prob, torch.full((2,), -7.0))


@pytest.mark.parametrize("vectorized", [True, False])
def test_our_elbo_never_uses_pyros_trace_loop(vectorized):
    from pyro_vi import ScoreFunctionELBO

    elbo = ScoreFunctionELBO(num_particles=2, vectorize_particles=vectorized)
    with pytest.raises(NotImplementedError):
        elbo._get_trace(program, program, (), {})
    guide = lambda: pyro.sample("z", dist.Normal(pyro.param("m", torch.zeros(2)), 1.0).to_event(1))  # noqa: E731
    model = lambda: pyro.sample("z", dist.Normal(torch.zeros(2), 1.0).to_event(1))  # noqa: E731
    assert math.isfinite(elbo.loss(model, guide))  # drawn without Pyro's loop, which would raise


def test_default_argument_holders_finds_functions_and_methods_defined_in_the_package(monkeypatch):
    held, other = object(), object()
    module = types.ModuleType("torch.distributed._probe")

    def holds(x, group=held):
        return x

    def does_not(x, group=other):
        return x

    class Holder:
        def __init__(self, group=held):
            self.group = group

    def defined_elsewhere(x, group=held):  # imported into the probe: counted where it is defined
        return x

    for fn in (holds, does_not, Holder):
        fn.__module__ = module.__name__
        setattr(module, fn.__name__, fn)
    module.imported = defined_elsewhere
    monkeypatch.setitem(sys.modules, module.__name__, module)
    assert pyro_compat.default_argument_holders(held) == [
        "torch.distributed._probe.Holder.__init__",
        "torch.distributed._probe.holds",
    ]
    assert pyro_compat.default_argument_holders(held, package="pyro") == []
