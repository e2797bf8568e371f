"""Per-particle score gradients in O(S x P).

The control-variate estimators need, for every particle :math:`s` and every
scalar parameter :math:`\\lambda_d`, gradients of weighted guide log-densities

.. math::

    r^{(k)}_s = \\sum_j \\sum_n W^{(k)}_{j,s,n} \\log q_j(z_{j,s,n}),

the scores :math:`h_s` (all weights 1) and Rao-Blackwellized terms (weights
the learning signals). A batched backward pass over the rows of an
``S``-particle-wide graph costs :math:`O(S^2 P)`; here the particles are
separated where they actually differ:

1. Each score site's distribution is recorded as the site built it, before
   the particle plate broadcasts it
   (:class:`~pyro_vi.particles.record.ScoreDistribution`). When it does not depend on
   the particle (mean-field guides, amortized encoders, autoguides), the
   per-particle gradients of its log-density with respect to its own tensors
   (``loc``, ``scale``, ``scale_tril``, ...) come from ``torch.func``:
   ``vmap(grad(log_prob))`` over the particles, :math:`O(S)` in the size of
   those tensors.
2. One batched backward pass of those gradients through the shared graph
   upstream of the distributions (the parameters' constraints, an encoder),
   which has no particle dimension: :math:`O(S P)`.
3. A parameter read only through a selection of distinct rows (a subsampled
   per-datum parameter, ``pyro.param(..., event_dim=0)`` in a subsampled
   plate or ``param[idx]``) through an elementwise constraint gets gradients
   for the touched rows only: :math:`O(S B)` under subsampling.

Guides whose distributions depend on other samples (structured guides) and
sequential particles take one backward pass per particle, again
:math:`O(S P)` for sequential particles.
"""

from dataclasses import dataclass
from typing import Optional

import torch
from torch.autograd.graph import GradientEdge
from torch.distributions import transform_to
from torch.func import grad, vmap

from ..particles.distributions import attribute, functional, tensors_of
from ..particles.handlers import without_mask
from ..particles.pyro_compat import (
    expanded_from,
    gradient_node,
    graph_reaches,
    param_constraint,
    parents_of,
    row_selection,
    upstream_edges,
)

__all__ = ["ParticleGradients", "SignalRows", "closed_form_scores", "distribution_gradients", "particle_gradients"]


@dataclass
class ParticleGradients:
    """Per-particle gradients of ``K`` row vectors with respect to one
    parameter, shape ``(K, S) + shape``: on the whole parameter
    (``index is None``) or on the rows ``index`` of its dim ``dim`` only."""

    rows: torch.Tensor
    dim: Optional[int] = None
    index: Optional[torch.Tensor] = None

    def coordinates(self, param):
        """The entries of ``param`` the gradients refer to."""
        return param if self.index is None else param.index_select(self.dim, self.index)

    def dense(self, param):
        """The gradients on the whole parameter (zeros elsewhere)."""
        if self.index is None:
            return self.rows
        dim = self.dim % param.dim() + 2
        out = self.rows.new_zeros(self.rows.shape[:2] + param.shape)
        return out.index_copy(dim, self.index, self.rows)


def distribution_gradients(particles, weightings):
    """Per-particle gradients of the same rows as :func:`particle_gradients`
    with respect to the tensors of the score sites' distributions, as each
    site builds them inside its plates (their ``loc``, ``scale``, ``probs``,
    ...: per data point for an amortized guide): the coordinates of
    ``coordinates="distributions"``, the same in both particle layouts.

    :returns: ``[(targets, gradients of shape (K, S) + tensor.shape)]``,
        where ``targets`` is the tensor the particles share (vectorized) or
        the list of each particle's own tensor (one trace per particle;
        ``None`` where a particle did not meet the site); or ``None`` where
        a site's distribution depends on another guide sample (structured
        guides), cannot be taken apart (flows with networks), or has tensors
        that are not free coordinates (see :func:`_free_coordinates`)."""
    sites = particles.score_sites()
    if not sites:
        return []
    distributions = (fn for site in sites for fn in _site_distributions(particles, site.name) if fn is not None)
    if not all(_free_coordinates(fn) for fn in distributions):
        return None
    weights = [[_weight(w.get(site.name), site) for site in sites] for w in weightings]
    if particles.vectorized:
        return _distribution_frontier(particles, sites, weights, factored=True)
    return _per_run_frontier(particles, sites, weights)


def _site_distributions(particles, name):
    """The distribution of score site ``name`` in each run, as the site built
    it (``None`` where a run did not meet it)."""
    return [None if d is None else d.fn for d in particles.score_distributions[name]]


def _per_run_frontier(particles, sites, weights):
    """:func:`distribution_gradients` for one trace per particle: particle
    :math:`s`'s gradients with respect to its own run's distribution
    tensors, by a backward pass per particle and row through its
    log-densities only. Rows :math:`[h, h \\odot w]` of a site whose every
    log-density entry depends only on its own entries of the tensors are
    :class:`SignalRows`, from one pass per particle."""
    if any(_depends_on_another_sample(particles, site.name) for site in sites):
        return None  # a structured guide: the distributions differ by particle
    frontier = []
    for j, site in enumerate(sites):
        distributions = _site_distributions(particles, site.name)
        per_run = [None if fn is None else tensors_of(without_mask(fn)) for fn in distributions]
        if any(t is None for t, fn in zip(per_run, distributions) if fn is not None):
            return None
        present = [t for t in per_run if t is not None]
        paths = list(present[0])
        if any(list(t) != paths or any(t[p].shape != present[0][p].shape for p in paths) for t in present):
            return None
        if paths and _factorable(site, j, distributions, per_run, weights):
            frontier += _per_run_signal_rows(site, weights[1][j], distributions, per_run, present[0])
            continue
        grads = {p: [] for p in paths}
        for s, tensors in enumerate(per_run):
            for site_weights in weights:
                weight = site_weights[j]
                row = site.score_log_prob[s] if weight is None else site.score_log_prob[s] * weight[s]
                inputs = [tensors[p] for p in paths] if tensors is not None else []
                found = torch.autograd.grad(row.sum(), inputs, retain_graph=True, allow_unused=True) if inputs else ()
                for p, g in zip(paths, found or [None] * len(paths)):
                    grads[p].append(torch.zeros_like(present[0][p]) if g is None else g)
        for p in paths:
            targets = [None if t is None else t[p] for t in per_run]
            stacked = torch.stack(grads[p]).reshape((len(per_run), len(weights)) + present[0][p].shape)
            frontier.append((targets, stacked.transpose(0, 1)))
    return frontier


def _factorable(site, j, distributions, per_run, weights):
    """Whether the site's rows are :math:`[h, h \\odot w]` with each entry of
    every run's log-density a function of its own entries of the tensors."""
    if len(weights) != 2 or weights[0][j] is not None or weights[1][j] is None:
        return False
    for s, (fn, tensors) in enumerate(zip(distributions, per_run)):
        if fn is not None:
            batch = without_mask(fn).batch_shape
            if site.score_log_prob[s].numel() != batch.numel():
                return False
            if any(t.shape[: len(batch)] != batch for t in tensors.values()):
                return False
    return True


def _per_run_signal_rows(site, weight, distributions, per_run, present):
    """The :class:`SignalRows` of a factorable site: each particle's score
    at its own tensors, and its signal spread over them (``present``: one
    run's tensors, the shapes of all)."""
    paths = list(present)
    grads, signals = {p: [] for p in paths}, {p: [] for p in paths}
    for s, (fn, tensors) in enumerate(zip(distributions, per_run)):
        if tensors is None:
            for p in paths:
                grads[p].append(torch.zeros_like(present[p]))
                signals[p].append(torch.zeros_like(present[p]))
            continue
        inputs = [tensors[p] for p in paths]
        found = torch.autograd.grad(site.score_log_prob[s].sum(), inputs, retain_graph=True, allow_unused=True)
        batch = without_mask(fn).batch_shape
        for p, g in zip(paths, found):
            grads[p].append(torch.zeros_like(present[p]) if g is None else g)
            shaped = weight[s].reshape(batch + (1,) * (present[p].dim() - len(batch)))
            signals[p].append(shaped.expand_as(present[p]))
    return [
        ([None if t is None else t[p] for t in per_run], SignalRows(torch.stack(grads[p]), torch.stack(signals[p])))
        for p in paths
    ]


def _depends_on_another_sample(particles, name):
    """Whether the distribution of guide site ``name`` depends on another
    guide sample (read from the programs' structure, which the run phase
    records for per-particle scores of sequential particles)."""
    return bool(particles.guide_dependencies.get(name, frozenset()) - {name})


def _free_coordinates(fn):
    """Whether each tensor of ``fn`` is a free coordinate of its family: its
    score, the other tensors held fixed, has mean zero, as a control variate
    needs. Not so where ``fn`` stores its tensors normalized
    (:func:`_normalizes`), nor where its constructor computed a tensor from
    what another of its tensors is computed from (``LowRankMultivariateNormal``'s
    ``_capacitance_tril`` from its ``cov_diag``, ``MixtureOfDiagNormals``'
    normalized ``categorical`` from its ``component_logits``, ``StudentT``'s
    chi-square from its ``df``): moving one alone leaves the family (a mean
    score of -1.1 on a capacitance entry, which biased ControlVariateELBO's
    gradient by 20 standard errors; the mixture's logits by up to 2.7). The
    arguments themselves (``arg_constraints``, also of a ``base_dist``) are
    free however the program computed them. The fallback, per-particle gradients of the
    parameters, is exact for all; it is also taken where the program computed
    such a tensor from the inputs of another (an amortized
    ``MultivariateNormal``'s ``scale_tril`` and ``loc``)."""
    if _normalizes(fn):
        return False
    tensors = tensors_of(fn) or {}
    computed = [path for path in tensors if not _is_argument(fn, path)]
    if not computed:
        return True
    upstream = {path: upstream_edges(tensor, limit=_DERIVATION_NODES) for path, tensor in tensors.items()}
    return not any(upstream[path] & upstream[other] for path in computed for other in tensors if other != path)


def _is_argument(fn, path):
    """Whether the tensor at ``path`` of ``fn`` is one of its arguments (or
    of its ``base_dist``'s), not a tensor its constructor computed."""
    keys = path.split(".")
    for key in keys[:-1]:
        if key != "base_dist" and key not in getattr(fn, "arg_constraints", {}):
            return False
        fn = vars(fn)[key]
    return keys[-1] in getattr(fn, "arg_constraints", {})


# How far back a distribution's tensors are searched for another of its
# tensors: far enough for a constructor's arithmetic (a Cholesky factor of a
# capacitance matrix), not through an encoder.
_DERIVATION_NODES = 32


def _normalizes(fn):
    """Whether ``fn`` stores its parameters normalized (a categorical's
    ``probs`` on the simplex, its ``logits`` shifted by their log-sum-exp):
    the score with respect to those stored tensors then has a nonzero mean
    (E[d log q / d probs_k] = 1), so a control variate per stored scalar
    would bias the gradient. The chain rule through them to the parameters
    stays exact."""
    while hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(
        fn, (torch.distributions.Categorical, torch.distributions.OneHotCategorical, torch.distributions.Multinomial)
    )


def particle_gradients(particles, weightings, params):
    """Per-particle gradients of the rows
    :math:`r^{(k)}_s = \\sum_j \\sum_n W^{(k)}_j[s, n] \\log q_j(z_{j,s,n})`
    over the score sites :math:`j`.

    :param particles: :class:`~pyro_vi.particles.record.Particles`.
    :param list weightings: ``K`` dicts site name -> weight, a tensor
        broadcastable to the site's ``score_log_prob`` (sites absent: 1).
    :param list params: the parameters (unconstrained leaves).
    :returns: one :class:`ParticleGradients` per parameter, or ``None`` for a
        parameter the rows do not depend on.
    """
    sites = particles.score_sites()
    if not sites or not params:
        return [None] * len(params)
    weights = [[_weight(w.get(site.name), site) for site in sites] for w in weightings]
    if particles.vectorized:
        frontier = _distribution_frontier(particles, sites, weights)
        if frontier == []:  # the score sites' distributions have no parameters
            return [None] * len(params)
        if frontier is not None:
            return _through_shared_graph(particles, frontier, params, len(weightings))
    return _one_particle_at_a_time(particles, sites, weights, params)


def _weight(weight, site):
    if weight is None:
        return None
    weight = torch.as_tensor(weight, dtype=site.score_log_prob.dtype).detach()
    return weight if weight.shape == site.score_log_prob.shape else weight.expand(site.score_log_prob.shape)


# ---------------------------------------------------------------- the general path


def _one_particle_at_a_time(particles, sites, weights, params):
    """One backward pass per particle and row: exact for any guide; O(S P)
    for sequential particles, whose graphs are separate."""
    rows = []
    for site_weights in weights:
        row = 0.0
        for site, weight in zip(sites, site_weights):
            term = site.score_log_prob if weight is None else site.score_log_prob * weight
            row = row + term.reshape(term.shape[0], -1).sum(-1)
        rows.append(row)
    num_particles = particles.num_particles
    grads = [[None] * (len(rows) * num_particles) for _ in params]
    for k, row in enumerate(rows):
        if not row.requires_grad:
            continue
        for s in range(num_particles):
            for p, g in enumerate(torch.autograd.grad(row[s], params, retain_graph=True, allow_unused=True)):
                grads[p][k * num_particles + s] = g
    result = []
    for param, param_grads in zip(params, grads):
        if all(g is None for g in param_grads):
            result.append(None)
            continue
        stacked = torch.stack([torch.zeros_like(param) if g is None else g for g in param_grads])
        result.append(ParticleGradients(stacked.reshape((len(rows), num_particles) + param.shape)))
    return result


# ---------------------------------------------------------------- the fast path


def _distribution_frontier(particles, sites, weights, factored=False):
    """For each tensor of the score sites' captured distributions, the
    per-particle gradients of every row with respect to it, shape
    ``(K, S) + tensor.shape`` (or :class:`SignalRows`, with ``factored``);
    ``None`` when a site's distribution depends on the particle or cannot
    be handled."""
    particle_dim = particles.plate_dims + 1  # counted from the right of the batch shape
    broadcast, rebuilt = [], []
    for j, site in enumerate(sites):
        (recorded,) = particles.score_distributions[site.name]
        captured = recorded.fn
        if captured is None or len(captured.batch_shape) >= particle_dim and (captured.batch_shape[-particle_dim] != 1):
            return None
        pairs = _expanded_pairs(captured, recorded.broadcast, particles.num_particles)
        if pairs is not None:
            broadcast.append((j, site, pairs, recorded.broadcast.batch_shape, recorded))
            continue
        parts = functional(without_mask(captured))
        if parts is None or recorded.value.dim() - len(captured.event_shape) != particle_dim:
            return None
        rebuilt.append((j, site, parts, recorded.value))
    frontier = _through_the_broadcast(broadcast, weights, factored)
    if rebuilt:
        frontier += _by_functorch(rebuilt, weights)
    return frontier


def _expanded_pairs(captured, broadcast_fn, num_particles):
    """``[(captured tensor, its broadcast copy)]`` when the particle plate
    broadcast every tensor of the distribution by ``expand`` (Normal, Gamma,
    Beta, Dirichlet, Categorical, Bernoulli, Independent, LogNormal, ...):
    then the gradients at the broadcast copies are per particle. ``None``
    otherwise (e.g. ``MultivariateNormal`` keeps its scale unbroadcast)."""
    tensors = tensors_of(captured)
    if tensors is None:
        return None
    pairs = []
    for path, tensor in tensors.items():
        copy_ = attribute(broadcast_fn, path)
        if not isinstance(copy_, torch.Tensor) or copy_.dim() == 0 or copy_.shape[0] != num_particles:
            return None
        if not expanded_from(copy_, tensor):
            return None
        pairs.append((tensor, copy_))
    return pairs


def _through_the_broadcast(broadcast, weights, factored):
    """Per-particle gradients at the broadcast copies of the distributions'
    tensors, summed back to the captured tensors' shapes. Where each entry
    of every score site's log-density depends only on its own entries of the
    copies (a distribution's batch entries are independent, and the copies
    have its whole batch shape), the gradient of a weighted row is the
    weight times that of the unweighted one: one backward pass through the
    real graph of the score sites' log-densities for all rows; else one per
    row. With ``factored``, rows :math:`[h, h \\odot w]` stay
    :class:`SignalRows` where they need no sum."""
    copies = [copy_ for _, _, pairs, _, _ in broadcast for _, copy_ in pairs]
    if not copies:
        return []
    per_copy = []  # the rows' gradients at each copy, shape (K,) + copy.shape
    if all(_entrywise(site, pairs, batch_shape) for _, site, pairs, batch_shape, _ in broadcast):
        closed = [closed_form_scores(recorded.broadcast, recorded.value, pairs) for *_, pairs, _, recorded in broadcast]
        rest = [entry for entry, found in zip(broadcast, closed) if found is None]
        by_autograd = iter(())
        if rest:
            unweighted = sum(site.score_log_prob.sum() for _, site, _, _, _ in rest)
            rest_copies = [copy_ for _, _, pairs, _, _ in rest for _, copy_ in pairs]
            by_autograd = iter(torch.autograd.grad(unweighted, rest_copies, retain_graph=True, allow_unused=True))
        for (j, _, pairs, batch_shape, _), found in zip(broadcast, closed):
            site_weights = [w[j] for w in weights]
            for (_, copy_), g in zip(pairs, found or [next(by_autograd) for _ in pairs]):
                if g is None:
                    per_copy.append(copy_.new_zeros((len(weights),) + copy_.shape))
                elif all(w is None for w in site_weights):
                    per_copy.append(g.expand((len(weights),) + g.shape))
                else:
                    on_copy = batch_shape + (1,) * (copy_.dim() - len(batch_shape))
                    shaped = [w if w is None or w.shape == on_copy else w.reshape(on_copy) for w in site_weights]
                    if factored and len(shaped) == 2 and shaped[0] is None:  # [h, h w], where nothing is summed
                        per_copy.append((g, shaped[1]))
                        continue
                    rows = g.new_empty((len(shaped),) + g.shape)
                    for row, w in zip(rows, shaped):
                        if w is None:
                            row.copy_(g)
                        else:
                            torch.mul(g, w, out=row)
                    per_copy.append(rows)
    else:
        per_row = []
        for site_weights in weights:
            row = 0.0
            for j, site, _, _, _ in broadcast:
                weight = site_weights[j]
                term = site.score_log_prob if weight is None else site.score_log_prob * weight
                row = row + term.sum()
            per_row.append(torch.autograd.grad(row, copies, retain_graph=True, allow_unused=True))
        for i, copy_ in enumerate(copies):
            per_copy.append(torch.stack([torch.zeros_like(copy_) if row[i] is None else row[i] for row in per_row]))
    frontier, rows = [], iter(per_copy)
    for _, _, pairs, _, _ in broadcast:
        for tensor, copy_ in pairs:
            # The captured tensor, right-aligned, either lies right of the
            # particle dim or has a size-1 dim there (a batch dim outside every
            # plate, which the particle plate took over).
            new_dims = copy_.dim() - tensor.dim()
            kept = tensor.shape if new_dims >= 1 else tensor.shape[1:]
            target = (len(weights), copy_.shape[0]) + (1,) * max(new_dims - 1, 0) + kept
            entry = next(rows)
            if isinstance(entry, tuple):
                g, signal = entry
                if target[1:] == copy_.shape:
                    per_particle = (copy_.shape[0],) + tensor.shape
                    frontier.append(
                        (tensor, SignalRows(g.reshape(per_particle), signal.expand_as(g).reshape(per_particle)))
                    )
                    continue
                entry = torch.stack([g, g * signal])
            frontier.append((tensor, entry.sum_to_size(target).reshape(target[:2] + tensor.shape)))
    return frontier


@dataclass
class SignalRows:
    """The two rows :math:`[h, h \\odot w]` of one tensor of the frontier,
    kept factored where the second is the first times an element-wise
    signal ``signal`` (a site's Markov-blanket signal, broadcast over the
    tensor), both of shape ``(S,) + tensor.shape``: the control variates
    then take :math:`w` as they take a scalar signal
    (:func:`~pyro_vi.math.control_variates.controlled_gradient`), without
    the rounding error of :math:`h w` for a large :math:`|w|`."""

    h: torch.Tensor
    signal: torch.Tensor

    @property
    def shape(self):
        return torch.Size((2,) + tuple(self.h.shape))

    def __getitem__(self, row):
        return (self.h, self.h * self.signal)[row]


def closed_form_scores(fn, value, pairs):
    """The gradients of :math:`\\sum \\log q(z)` (the density ``fn`` the
    particles' ``value`` were drawn from, masks removed) at each broadcast
    copy of ``pairs``, in closed form, for a Normal or a Gamma, possibly
    inside ``Independent``:

    .. math::

        \\partial_\\mu = \\frac{z - \\mu}{\\sigma^2}, \\quad
        \\partial_\\sigma = \\frac{(z - \\mu)^2 / \\sigma^2 - 1}{\\sigma}; \\qquad
        \\partial_\\alpha = \\log \\beta + \\log z - \\psi(\\alpha), \\quad
        \\partial_\\beta = \\frac{\\alpha}{\\beta} - z.

    A third of the cost of the backward pass through the log-density.
    ``None`` for any other distribution, or where a copy is not one of its
    tensors."""
    base = without_mask(fn)
    while _density_of(base, torch.distributions.Independent):
        base = base.base_dist
    normal = _density_of(base, torch.distributions.Normal)
    if normal:
        names = {id(base.loc): "loc", id(base.scale): "scale"}
    elif _density_of(base, torch.distributions.Gamma):
        names = {id(base.concentration): "concentration", id(base.rate): "rate"}
    else:
        return None
    wanted = [names.get(id(copy_)) for _, copy_ in pairs]
    if None in wanted or value.shape != base.batch_shape:
        return None
    with torch.no_grad():
        if normal:
            inverse_scale = base.scale.reciprocal()
            standardized = (value - base.loc) * inverse_scale
            found = {
                "loc": lambda: standardized * inverse_scale,
                "scale": lambda: (standardized * standardized - 1) * inverse_scale,
            }
        else:
            found = {
                "concentration": lambda: base.rate.log() + value.log() - torch.digamma(base.concentration),
                "rate": lambda: base.concentration / base.rate - value,
            }
        return [found[name]() for name in wanted]


def _density_of(fn, family):
    """Whether ``fn`` is a ``family`` whose log-density is torch's."""
    return isinstance(fn, family) and type(fn).log_prob is family.log_prob


def _entrywise(site, pairs, batch_shape):
    """Whether entry ``[s, i]`` of the site's score log-density (a reshape of
    its broadcast distribution's, of shape ``batch_shape``, with no dims
    summed) is a function of the entries ``[s, i, ...]`` of the copies
    alone."""
    return site.score_log_prob.numel() == batch_shape.numel() and all(
        copy_.shape[: len(batch_shape)] == batch_shape for _, copy_ in pairs
    )


def _by_functorch(rebuilt, weights):
    """Per-particle gradients with respect to the captured distributions'
    tensors by ``vmap(grad(log_prob))`` over the particles and rows, for
    distributions that the particle plate does not broadcast by ``expand``."""
    rebuilds, tensors, values, site_weights = [], [], [], []
    for j, site, (site_tensors, rebuild), value in rebuilt:
        rebuilds.append(rebuild)
        tensors.append(site_tensors)
        values.append(value)
        ones = torch.ones_like(site.score_log_prob)
        site_weights.append(torch.stack([ones if w[j] is None else w[j] for w in weights]))

    def weighted_log_prob(tensors, values, weights):
        total = 0.0
        for rebuild, site_tensors, value, weight in zip(rebuilds, tensors, values, weights):
            total = total + (rebuild(site_tensors).log_prob(value) * weight).sum()
        return total

    per_particle = vmap(grad(weighted_log_prob), in_dims=(None, 0, 0))  # over the particles
    per_row = vmap(per_particle, in_dims=(None, None, 0))(tensors, values, site_weights)  # and the rows
    return [
        (tensor, grads[name]) for site_tensors, grads in zip(tensors, per_row) for name, tensor in site_tensors.items()
    ]


def _through_shared_graph(particles, frontier, params, num_rows):
    """Pushes the per-particle gradients at the distributions' tensors back
    through the shared graph to the parameters, in one batched pass."""
    outputs = [tensor for tensor, _ in frontier]
    grad_outputs = [grads.flatten(0, 1) for _, grads in frontier]  # (K * S,) + shape
    inputs, sparse = [], {}
    selections = _row_selections(outputs, params, particles)
    for p, param in enumerate(params):
        selection = selections.get(p)
        if selection is None:
            inputs.append(param)
        else:
            node, dim, index, derivative = selection
            inputs.append(GradientEdge(node, 0))
            sparse[p] = (dim, index, derivative)
    grads = torch.autograd.grad(
        outputs, inputs, grad_outputs=grad_outputs, is_grads_batched=True, retain_graph=True, allow_unused=True
    )
    num_particles = particles.num_particles
    result = []
    for p, g in enumerate(grads):
        if g is None:
            result.append(None)
            continue
        g = g.reshape((num_rows, num_particles) + g.shape[1:])
        if p in sparse:
            dim, index, derivative = sparse[p]
            result.append(ParticleGradients(g * derivative, dim, index))
        else:
            result.append(ParticleGradients(g))
    return result


# ---------------------------------------------------------------- subsampled rows


def _row_selections(outputs, params, particles):
    """Parameters read only through one selection of distinct rows
    (``index_select`` or ``param[idx]``) of their constrained value, with an
    elementwise constraint: ``{position: (selection node, dim, index,
    derivative)}``, the derivative of the constrained rows with respect to
    the unconstrained ones, shaped to multiply the rows' gradients."""
    constrained = {id(param): found for param, found in _constrained_values(particles).items()}
    parents = parents_of(outputs)
    result = {}
    for p, param in enumerate(params):
        found = constrained.get(id(param))
        if found is None:
            continue
        value, constraint = found
        leaf = gradient_node(param)
        node = leaf if value is param else value.grad_fn
        users = parents.get(node, [])
        if len(users) != 1 or users[0] is None:
            continue
        selection = row_selection(users[0])
        if selection is None:
            continue
        if node is not leaf and _reaches(outputs, leaf, avoiding=node):
            continue  # the parameter is also read other than through its constrained value
        dim, index = selection
        rows = param.detach().index_select(dim, index).requires_grad_()
        with torch.enable_grad():
            derivative = torch.autograd.grad(transform_to(constraint)(rows).sum(), rows)[0]
        result[p] = (users[0], dim, index, derivative)
    return result


def _constrained_values(particles):
    """unconstrained leaf -> (its constrained value in the guide, its
    constraint), for the guide's params with an elementwise constraint."""
    found = {}
    for name, value in particles.guide_param_values.items():
        constraint = param_constraint(name)
        if constraint is None or transform_to(constraint).codomain.event_dim != 0:
            continue
        found[particles.guide_params[name]] = (value, constraint)
    return found


def _reaches(outputs, target, avoiding):
    """Whether the graph of ``outputs`` reaches the node ``target`` on a path
    that does not pass through the node ``avoiding``."""
    starts = [gradient_node(t) for t in outputs if t.requires_grad]
    return graph_reaches(starts, {target}, avoiding=(avoiding,))
