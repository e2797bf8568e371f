"""Which factors each guide sample reaches, read from the real traces.

The learning signal of a guide site :math:`z_j` needs only the factors whose
log-density depends on :math:`z_j` (its Markov blanket). We read that
dependence by provenance tracking: the model and the guide are replayed
against the sample values of the real traces, in the same particle plate and
with the same arguments, with each latent value tagged by its site name
(:class:`~pyro.ops.provenance.ProvenanceTensor`); the tags that reach a site's
log-density are the sites it depends on. Nothing is sampled, nothing is
differentiated, and the replay is hidden from outer handlers.

Dependence through Python control flow on values (``if z > 0``,
``int(z)``) is invisible to provenance tracking, as it is to
:func:`pyro.infer.inspect.get_dependencies`.
"""

from dataclasses import dataclass
from typing import Dict, FrozenSet

import torch
from pyro import poutine
from pyro.ops.provenance import ProvenanceTensor, detach_provenance, get_provenance
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .pyro_compat import PARTICLE_PLATE

__all__ = [
    "ProgramStructure",
    "bernoulli_ancestors",
    "learning_signal_factors",
    "markov_blankets",
    "program_structure",
    "read_structure",
]


@dataclass(frozen=True)
class ProgramStructure:
    """What a program's sample sites depend on.

    :ivar dict dependencies: site -> the latent sites its log-density depends
        on, itself included.
    :ivar frozenset observed: the observed sites.
    :ivar dict plates: site -> the names of its vectorized plates.
    """

    dependencies: Dict[str, FrozenSet[str]]
    observed: FrozenSet[str]
    plates: Dict[str, FrozenSet[str]]

    def union(self, other: "ProgramStructure") -> "ProgramStructure":
        """The structure of either program run (e.g. two particles whose
        sequential plates met different sites), in program order: this
        run's sites, then the other's new ones."""
        names = list(self.dependencies) + [n for n in other.dependencies if n not in self.dependencies]
        empty = frozenset()
        return ProgramStructure(
            dependencies={n: self.dependencies.get(n, empty) | other.dependencies.get(n, empty) for n in names},
            observed=self.observed | other.observed,
            plates={n: self.plates.get(n, empty) | other.plates.get(n, empty) for n in names},
        )


class _TagLatents(Messenger):
    """Tags each latent sample value with its own site name only, so that a
    site's provenance names its direct dependencies. Observed values (data,
    ``pyro.deterministic``, ``pyro.factor``) keep whatever provenance they
    carry, so dependence flows through them to the sites that use them."""

    def _pyro_post_sample(self, msg):
        if msg["is_observed"] or site_is_subsample(msg):
            return
        msg["value"] = ProvenanceTensor(detach_provenance(msg["value"]), frozenset({msg["name"]}))


def _structure(trace) -> ProgramStructure:
    sites = [site for site in trace.nodes.values() if site["type"] == "sample" and not site_is_subsample(site)]
    latents = frozenset(site["name"] for site in sites if not site["is_observed"])
    dependencies = {}
    for site in sites:
        log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
        dependencies[site["name"]] = (get_provenance(log_prob) & latents) | (latents & {site["name"]})
    return ProgramStructure(
        dependencies=dependencies,
        observed=frozenset(site["name"] for site in sites if site["is_observed"]),
        plates={
            site["name"]: frozenset(
                f.name for f in site["cond_indep_stack"] if f.vectorized and f.name != PARTICLE_PLATE
            )
            for site in sites
        },
    )


def _tagged_trace(fn, trace, args, kwargs):
    return poutine.trace(_TagLatents()(poutine.replay(fn, trace=trace))).get_trace(*args, **kwargs)


def program_structure(fn, trace, *args, **kwargs) -> ProgramStructure:
    """The :class:`ProgramStructure` of ``fn``, replayed against ``trace``
    (subsample sites included) under provenance tracking."""
    with torch.random.fork_rng(), torch.no_grad(), poutine.block():
        return _structure(_tagged_trace(fn, trace, args, kwargs))


def read_structure(model, guide, guide_trace, args, kwargs):
    """Replays ``guide`` against ``guide_trace`` (an unpruned trace of the
    real pass, subsample sites included) and ``model`` against the guide's
    replayed values, both under provenance tracking; returns the two
    programs' :class:`ProgramStructure`. ``model`` and ``guide`` must carry the
    same wrappers (the particle plate) as in the real pass."""
    with torch.random.fork_rng(), torch.no_grad(), poutine.block():
        guide_tagged = _tagged_trace(guide, guide_trace, args, kwargs)
        model_tagged = _tagged_trace(model, guide_tagged, args, kwargs)
        return _structure(model_tagged), _structure(guide_tagged)


def bernoulli_ancestors(guide, args, kwargs):
    """The random guide sites that a Bernoulli site of ``guide`` depends on,
    directly or through other guide sites, read from one run of the guide
    alone under provenance tracking (forked random state, no gradient,
    hidden from outer handlers): the sites an antithetic pair must share
    for those Bernoulli sites to be drawn in pairs."""
    from .handlers import bernoulli_of

    with torch.random.fork_rng(), torch.no_grad(), poutine.block():
        trace = poutine.trace(_TagLatents()(guide)).get_trace(*args, **kwargs)
    structure = _structure(trace)
    sites = {name: site for name, site in trace.nodes.items() if name in structure.dependencies}
    random = {name for name, site in sites.items() if not site["is_observed"]}
    ancestors, frontier = set(), {name for name in random if bernoulli_of(sites[name]["fn"]) is not None}
    while frontier:
        name = frontier.pop()
        for parent in structure.dependencies[name] - {name} - ancestors:
            ancestors.add(parent)
            frontier.add(parent)
    return frozenset(ancestors & random)


def markov_blankets(model: ProgramStructure):
    """For each latent site :math:`z_i` of a model, the factors that contain
    it (its own and its children's) with the plates in which the factor
    depends on :math:`z_i` element-wise: ``{latent: {factor: plates}}``.

    Within a plate both sites share, element :math:`n` of a factor depends on
    element :math:`n` of the latent only: that is what a plate asserts (and
    what Pyro's own estimators assume)."""
    plates = model.plates
    return {
        latent: {
            factor: plates[factor] & plates[latent] for factor, deps in model.dependencies.items() if latent in deps
        }
        for latent in model.dependencies
        if latent not in model.observed
    }


def learning_signal_factors(model: ProgramStructure, guide: ProgramStructure):
    """For each guide site :math:`j` (latent sites and ``pyro.factor``
    sites, whose terms get the whole signal): the model factors and guide
    factors its learning signal :math:`L^{(j)}` sums, ``{j: (model_factors,
    guide_factors)}``, each ``{factor: plates}`` with the plates in which the
    factor stays element-wise.

    The signal holds every factor whose value changes when :math:`z_j` is
    drawn again: those of :math:`z_j` and of every guide site drawn from it,
    directly or through other guide sites (its descendants: a site drawn
    from a site drawn from :math:`z_j` changes with it too), and the model
    factors of their Markov blankets. A descendant stays element-wise in the
    plates shared along every path from :math:`z_j`."""
    blankets = markov_blankets(model)
    signals = {}
    for j, j_plates in guide.plates.items():
        if j in guide.observed:
            # A guide factor is a piece of the sampling density that no
            # conditional independence describes: its term gets the full signal.
            signals[j] = (
                {name: frozenset() for name in model.plates},
                {name: frozenset() for name in guide.plates},
            )
            continue
        model_factors, guide_factors = {}, {}
        for k, path in _descendants(guide, j, j_plates).items():
            _meet(guide_factors, k, path)
            for factor, plates in blankets.get(k, {}).items():
                _meet(model_factors, factor, path & plates)
        signals[j] = (model_factors, guide_factors)
    return signals


def _descendants(guide: ProgramStructure, j, j_plates):
    """``{k: plates}`` for guide site ``j`` itself and every guide site whose
    density depends on it through a chain of guide sites, each with the
    plates shared along every path from ``j``. One pass in program order
    (a site's parents first) finds them all; the passes go on until nothing
    changes, so that any order (two runs that met different sites) is
    right too."""
    reached, changed = {j: j_plates}, True
    while changed:
        changed = False
        for k, deps in guide.dependencies.items():
            paths = [reached[m] & guide.plates[k] for m in deps if m in reached and m != k]
            if k != j and paths and reached.get(k) != frozenset.intersection(*paths):
                reached[k], changed = frozenset.intersection(*paths), True
    return reached


def _meet(factors, name, plates):
    # Element-wise only if element-wise along every path.
    factors[name] = factors[name] & plates if name in factors else plates
