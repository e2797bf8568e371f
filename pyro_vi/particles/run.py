"""The one place that runs the guide and the model with particles.

A :class:`Sampler` draws ``num_particles`` particles, vectorized under an
outermost particle plate as Pyro does or one trace per particle, collects
the per-site terms, and computes, eagerly, whatever the estimator declared
in its :class:`Needs`, into a frozen :class:`~pyro_vi.particles.record.Particles`.
After it returns, nothing runs a program again.
"""

import contextlib
from collections import OrderedDict
from dataclasses import dataclass

import torch
from pyro import poutine
from pyro.distributions.util import scale_and_mask
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape

from ..training.distributed import shared_random_stream
from .distributions import functional
from .handlers import (
    AntitheticPairs,
    CaptureDistributions,
    GuideValuesInSupport,
    bernoulli_of,
    captured_distribution,
    has_mask,
    is_point_mass,
    masked_distribution,
    score_function_guide,
    support_moves,
    without_mask,
)
from .pyro_compat import PARTICLE_PLATE, gradient_node, graph_reaches, param_leaf, particle_plate, set_log_prob
from .record import BernoulliTerm, Particles, ScoreDistribution, SiteTerm
from .structure import bernoulli_ancestors, learning_signal_factors, read_structure

__all__ = ["Needs", "Sampler"]

_STRUCTURE_CACHE_SIZE = 16


@dataclass(frozen=True)
class Needs:
    """What an estimator asks of the run phase.

    :ivar bool reparameterize: guide sites that can ``rsample`` keep their
        pathwise derivative (``False``: every random guide site gets a
        score, its sample detached before the model sees it).
    :ivar bool antithetic: random Bernoulli guide sites are drawn in
        antithetic pairs (particles :math:`2i, 2i + 1`).
    :ivar bool pair_dependent_bernoulli: with ``antithetic``, also when a
        Bernoulli site depends on other latent guide sites (the pair then
        shares those); ``False``: such a guide is drawn without pairs, every
        particle on its own.
    :ivar bool path_density: only the path derivative of the guide's
        densities is needed: where a site's distribution depends on no
        other sample, its density is computed once, at stopped parameters.
    :ivar bool structure: the Markov-blanket factors of every guide site
        and the guide's dependencies.
    :ivar bool stopped_guide: :math:`\\log q_\\lambda(\\mathrm{stop}(z))` of the
        random guide sites that keep their pathwise derivative.
    :ivar bool bernoulli: the logits and values of the Bernoulli guide sites.
    :ivar bool scores: what per-particle scores need (each score site's
        distribution as built inside its plates; the guide's params; with
        one trace per particle, the structure too, to tell which
        distributions depend on other samples).
    :ivar bool samples: the guide's sample tensors (for gradient hooks).
    :ivar bool same_in_every_process: under :mod:`torch.distributed`, every
        process draws the same particles (a seed from rank 0 for each draw,
        :func:`~pyro_vi.training.distributed.shared_random_stream`).
    :ivar bool same_minibatch: with one trace per particle, every particle
        takes the first one's minibatch of each subsampled plate, as one
        vectorized trace does (a data point's importance-weighted bound needs
        all the particles at that point).
    """

    reparameterize: bool = True
    antithetic: bool = False
    pair_dependent_bernoulli: bool = True
    path_density: bool = False
    structure: bool = False
    stopped_guide: bool = False
    bernoulli: bool = False
    scores: bool = False
    samples: bool = False
    same_in_every_process: bool = False
    same_minibatch: bool = False


class Sampler:
    """Draws the particles of one ELBO evaluation and builds their record.

    :param int num_particles: :math:`S`.
    :param bool vectorized: one vectorized trace under a particle plate.
    :param Needs needs: what the estimator needs computed.
    :param str estimator: the estimator's name, for messages.
    """

    def __init__(self, num_particles, vectorized, needs, estimator):
        self.num_particles, self.vectorized, self.needs, self.estimator = num_particles, vectorized, needs, estimator
        # signature -> (guide structure, signal factors, both structures), most recent last
        self._structures = OrderedDict()
        self._ancestors = OrderedDict()  # guide -> the sites its antithetic pairs share

    def plate_nesting(self, model, guide, args, kwargs):
        """The programs' plate dims, guessed as Pyro guesses them, from one
        run of both (under a forked random state, so that a run resumed from
        a checkpoint draws what an uninterrupted one draws; and with the
        guide's values checked against the model's supports)."""
        traces = _one_run(model, self._guide(guide), args, kwargs)
        if is_validation_enabled():
            for trace in traces:
                trace.compute_log_prob()
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, max_plate_nesting=float("inf"))
        return _plate_nesting(traces)

    def draw(self, model, guide, args, kwargs, plate_dims):
        """Runs the guide and the model against it with the particles;
        returns their :class:`~pyro_vi.particles.record.Particles`."""
        if isinstance(poutine.unwrap(guide), Messenger):
            raise ValueError(
                f"{self.estimator} needs a guide that is a Pyro program; "
                f"{type(poutine.unwrap(guide)).__name__} is a GuideMessenger "
                "(e.g. AutoNormalMessenger), which runs the model itself: use the "
                "matching autoguide (e.g. AutoNormal) instead"
            )
        run_guide = self._guide(guide)
        try:
            with shared_random_stream() if self.needs.same_in_every_process else contextlib.nullcontext():
                runs = self._runs(model, run_guide, args, kwargs, plate_dims)
        except ValueError as error:
            if "plate stack overflow" not in str(error) and f'"{PARTICLE_PLATE}", collide' not in str(error):
                raise
            needed = _plate_nesting(_one_run(model, run_guide, args, kwargs))
            raise ValueError(
                f"{self.estimator}: max_plate_nesting={plate_dims} is less than the {needed} plate dims the "
                f"programs use{' (the particle plate goes left of them)' if self.vectorized else ''}; pass "
                f"max_plate_nesting={needed}, or leave it out to have it guessed"
            ) from error
        sites, params = [OrderedDict(), OrderedDict()], [OrderedDict(), OrderedDict()]
        for role in (0, 1):
            for run in runs:
                for name, site in run[role].nodes.items():
                    if site["type"] == "param":
                        params[role].setdefault(name, param_leaf(site["value"]))
                    elif site["type"] == "sample" and name not in sites[role]:
                        nodes = [r[role].nodes.get(name) for r in runs]
                        sites[role][name] = _site_term(nodes, plate_dims, self.vectorized, self.num_particles, role)
        guide_sites = sites[1]
        needs, extras = self.needs, {}
        if needs.structure or needs.scores and not self.vectorized:
            guide_structure, extras["signal_factors"] = self._structure(
                model, run_guide, guide, runs, plate_dims, args, kwargs
            )
            extras["guide_dependencies"] = guide_structure.dependencies
        if needs.stopped_guide and any(_needs_stopped(t) for t in guide_sites.values()):
            extras["stopped_log_q"] = self._stopped_log_q(run_guide, runs, guide_sites, args, kwargs, plate_dims)
        if needs.bernoulli:
            extras["bernoulli"] = _bernoulli_terms(runs, guide_sites, plate_dims, self.vectorized, self.num_particles)
        if needs.scores:
            extras["score_distributions"] = _score_distributions(runs, guide_sites, self.vectorized)
            extras["guide_param_values"] = {
                name: site["value"] for name, site in runs[0][1].nodes.items() if site["type"] == "param"
            }
        if needs.samples:
            extras["samples"] = {
                name: [_sample(guide.nodes.get(name), site.subsample_scale) for _, guide, _ in runs]
                for name, site in guide_sites.items()
                if not site.keeps_whole_density and not site.is_observed
            }
        return Particles(
            model=sites[0],
            guide=guide_sites,
            model_params=params[0],
            guide_params=params[1],
            num_particles=self.num_particles,
            plate_dims=plate_dims,
            vectorized=self.vectorized,
            **extras,
        )

    # ---- the runs

    def _guide(self, guide):
        return guide if self.needs.reparameterize else score_function_guide(guide)

    def _runs(self, model, guide, args, kwargs, plate_dims):
        """One ``(model trace, guide trace, unpruned guide trace)`` per run."""
        pairs = None
        if self.needs.antithetic:
            shared = self._bernoulli_ancestors(guide, args, kwargs)
            if self.needs.pair_dependent_bernoulli or not shared:
                pairs = AntitheticPairs(self.num_particles, self.vectorized, shared)
        nesting = plate_dims + self.vectorized  # as check_site_shape counts, the particle plate included
        if not self.vectorized:
            runs = [self._run(model, guide, pairs, nesting, args, kwargs)]
            if self.needs.same_minibatch:
                guide = poutine.replay(guide, trace=_subsample_sites(runs[0][2]))
            runs += [self._run(model, guide, pairs, nesting, args, kwargs) for _ in range(self.num_particles - 1)]
            return runs
        if self.needs.scores:  # each score site's distribution before the particle plate broadcasts it
            guide = CaptureDistributions()(guide)
        plate = particle_plate(self.num_particles, plate_dims)
        return [self._run(plate(model), plate(guide), pairs, nesting, args, kwargs)]

    def _run(self, model, guide, pairs, nesting, args, kwargs):
        """One run of the guide and of the model against it: the pruned
        traces with their log-densities, and the unpruned guide trace (its
        subsample indices let the guide be replayed exactly)."""
        if pairs is not None:  # outside the particle plate: it sees the broadcast distributions
            guide = pairs.messenger()(guide)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        checked_model = GuideValuesInSupport(guide_trace)(model)
        model_trace = poutine.trace(poutine.replay(checked_model, trace=guide_trace)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, nesting)
            check_if_enumerated(guide_trace)
        replay_trace = guide_trace
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        if self.needs.path_density:
            _compute_path_log_prob(guide_trace)
        guide_trace.compute_score_parts()
        if is_validation_enabled():
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, nesting)
        return model_trace, guide_trace, replay_trace

    def _particle_plate(self, fn, plate_dims):
        return particle_plate(self.num_particles, plate_dims)(fn) if self.vectorized else fn

    def _bernoulli_ancestors(self, guide, args, kwargs):
        """The guide sites a pair shares (see :class:`AntitheticPairs`), read
        once per guide."""
        if guide not in self._ancestors:
            self._ancestors[guide] = bernoulli_ancestors(guide, args, kwargs)
            if len(self._ancestors) > _STRUCTURE_CACHE_SIZE:
                self._ancestors.popitem(last=False)
        return self._ancestors[guide]

    # ---- what the estimator declared it needs

    def _structure(self, model, run_guide, guide, runs, plate_dims, args, kwargs):
        """The guide's structure and the learning signals' factors, read by
        replaying the real traces; reused only for runs with the same site
        names, distribution types, value shapes and plates (and the same
        model and guide)."""
        found = []
        for model_trace, _, replay_trace in runs:
            signature = (model, guide, _signature(model_trace), _signature(replay_trace))
            if signature in self._structures:
                self._structures.move_to_end(signature)
            else:
                replayed = (self._particle_plate(fn, plate_dims) for fn in (model, run_guide))
                structure = read_structure(*replayed, replay_trace, args, kwargs)
                self._structures[signature] = structure[1], learning_signal_factors(*structure), structure
                if len(self._structures) > _STRUCTURE_CACHE_SIZE:
                    self._structures.popitem(last=False)
            found.append(self._structures[signature])
        if len({id(entry) for entry in found}) == 1:
            return found[0][:2]
        model_structure, guide_structure = found[0][2]
        for _, _, (model_more, guide_more) in found[1:]:
            model_structure, guide_structure = model_structure.union(model_more), guide_structure.union(guide_more)
        return guide_structure, learning_signal_factors(model_structure, guide_structure)

    def _stopped_log_q(self, guide, runs, guide_sites, args, kwargs, plate_dims):
        """:math:`\\log q_\\lambda(\\mathrm{stop}(z_s))` per guide site: each
        site's density at its detached sample where no sample nor
        distribution depends on another; else the guide run again on
        detached copies of its samples."""
        stopped = [_log_prob_at_detached(guide_trace) for _, guide_trace, _ in runs]
        if any(log_probs is None for log_probs in stopped):
            replay = self._particle_plate(guide, plate_dims)
            stopped = [_rerun_on_detached(replay, trace, args, kwargs) for _, _, trace in runs]
        return {
            name: _stack([run.get(name) for run in stopped], name, plate_dims, self.vectorized, self.num_particles)
            for name, site in guide_sites.items()
            if not site.keeps_whole_density
        }


def _needs_stopped(site):
    """Whether the guide site's :math:`\\log q_\\lambda(\\mathrm{stop}(z))` is
    needed: a random site that keeps its pathwise derivative and whose density
    was not already computed at stopped parameters. Point masses and sites
    whose support moves keep their whole density (see
    :meth:`~pyro_vi.particles.Particles.log_q_at_stopped_parameters`)."""
    return not site.path_only and site.score_log_prob is None and not site.keeps_whole_density


def _keeps_whole_density(fn):
    """:attr:`~pyro_vi.particles.record.SiteTerm.keeps_whole_density` of a
    guide site, read from its distribution ``fn`` in a trace."""
    return is_point_mass(fn) or support_moves(fn)


def _one_run(model, guide, args, kwargs):
    """One run of the guide and of the model against it, hidden from outer
    handlers, under a forked random state: the pruned ``(model, guide)``
    traces."""
    with torch.random.fork_rng(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        checked_model = GuideValuesInSupport(guide_trace)(model)
        model_trace = poutine.trace(poutine.replay(checked_model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


def _subsample_sites(trace):
    """A copy of ``trace`` with only its subsample sites (the minibatch
    indices of its subsampled plates)."""
    kept = trace.copy()
    for name, site in trace.nodes.items():
        if not (site["type"] == "sample" and site_is_subsample(site)):
            kept.remove_node(name)
    return kept


def _plate_nesting(traces):
    """The number of plate dims the programs use."""
    dims = [
        -frame.dim
        for trace in traces
        for site in trace.nodes.values()
        if site["type"] == "sample"
        for frame in site["cond_indep_stack"]
        if frame.vectorized
    ]
    return max(dims, default=0)


def _signature(trace):
    return tuple(
        (
            name,
            type(site["fn"]).__name__,
            site["is_observed"],
            tuple(site["value"].shape) if isinstance(site["value"], torch.Tensor) else None,
            tuple((f.name, f.dim, f.size) for f in site["cond_indep_stack"]),
        )
        for name, site in trace.nodes.items()
        if site["type"] == "sample"
    )


# ---------------------------------------------------------------- site terms


def _site_term(sites, plate_dims, vectorized, num_particles, role):
    """The :class:`SiteTerm` of one site from its node in each run (``None``
    in runs that did not meet it); ``role`` 1 for the guide."""
    site = next(s for s in sites if s is not None)
    name, fn = site["name"], site["fn"]
    point_mass = is_point_mass(fn)
    has_score = role == 1 and not point_mass and not fn.has_rsample
    stacked = _stack([None if s is None else s["log_prob"] for s in sites], name, plate_dims, vectorized, num_particles)
    score = None
    if has_score:
        score = _stack(
            [None if s is None else _sampling_log_prob(s) for s in sites], name, plate_dims, vectorized, num_particles
        )
    frames = site["cond_indep_stack"]
    subsampled = [f for f in frames if f.full_size is not None and f.full_size != f.size]
    subsample_scale = 1.0
    for f in subsampled:
        subsample_scale *= f.full_size / f.size
    return SiteTerm(
        name=name,
        log_prob=stacked,
        score_log_prob=score,
        plates={f.name: f.dim for f in frames if f.vectorized and f.name != PARTICLE_PLATE},
        is_observed=site["is_observed"],
        reparameterized=not has_score,
        has_rsample=bool(site["infer"].get("has_rsample", fn.has_rsample)) or point_mass,
        is_point_mass=point_mass,
        support_moves=role == 1 and not point_mass and not site["is_observed"] and support_moves(fn),
        path_only=site.get("pyro_vi_path_only", False),
        scale=site["scale"],
        subsample_scale=subsample_scale,
        subsampled_plates=frozenset(f.name for f in subsampled),
        mask=site["mask"],
    )


def _sampling_log_prob(site):
    """The unscaled log-density the site's value was drawn from (masks of
    the distribution removed: the sample was still drawn)."""
    if has_mask(site["fn"]):
        return without_mask(site["fn"]).log_prob(site["value"], *site["args"], **site["kwargs"])
    return site["unscaled_log_prob"]


def _stack(values, name, plate_dims, vectorized, num_particles):
    """The particles' values of one site term as one tensor of shape
    ``(S,) + plate_shape`` (zeros for particles that did not meet the site).
    Batch dims left of the plate dims (and of the particle plate), which no
    plate declares, are summed, as ``Trace_ELBO`` sums them."""
    width = plate_dims + (1 if vectorized else 0)
    terms = []
    for log_prob in values:
        if log_prob is None:
            terms.append(None)
            continue
        if log_prob.dim() > width:
            log_prob = log_prob.reshape((-1,) + log_prob.shape[log_prob.dim() - width :]).sum(0)
        if log_prob.dim() < width:
            log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + log_prob.shape)
        terms.append(log_prob)
    if vectorized:
        (log_prob,) = terms
        return (
            log_prob if log_prob.shape[0] == num_particles else log_prob.expand((num_particles,) + log_prob.shape[1:])
        )
    shapes = {t.shape for t in terms if t is not None}
    if len(shapes) > 1:
        raise ValueError(
            f"site '{name}' has different batch shapes in different particles: {sorted(tuple(s) for s in shapes)}; "
            "use vectorize_particles=True or give the site the same shape in every run"
        )
    (shape,) = shapes
    zero = next(t for t in terms if t is not None).new_zeros(shape)
    return torch.stack([zero if t is None else t for t in terms])


def _stack_full(tensors, width, vectorized, num_particles):
    """Per-particle tensors (``None`` where a particle did not meet the site)
    as one ``(S,) + shape`` tensor, each left-padded to ``width`` dims."""
    padded = [None if t is None else t.reshape((1,) * (width - t.dim()) + t.shape) for t in tensors]
    if vectorized:
        return padded[0].expand((num_particles,) + padded[0].shape[1:])
    shape = torch.broadcast_shapes(*(t.shape for t in padded if t is not None))
    zero = next(t for t in padded if t is not None).new_zeros(shape)
    return torch.stack([zero if t is None else t.expand(shape) for t in padded])


# ---------------------------------------------------------------- densities at stopped parameters


def _reaches(output, tensors):
    """Whether the autograd graph of ``output`` reaches any of ``tensors``."""
    if output.grad_fn is None or not tensors:
        return False
    return graph_reaches([output.grad_fn], {gradient_node(t) for t in tensors if t.requires_grad})


def _compute_path_log_prob(guide_trace):
    """The log-density of each random latent guide site whose distribution
    depends on no other sample, computed at stopped parameters: the gradient
    through the sample only. Other sites, and point masses, are left to
    ``compute_score_parts``, as are sites whose support moves (they keep their
    whole density)."""
    sites = [s for s in guide_trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
    samples = [s["value"] for s in sites if s["value"].requires_grad]
    for site in sites:
        if _keeps_whole_density(site["fn"]):
            continue
        parts = functional(site["fn"])
        if parts is None:
            continue
        tensors, rebuild = parts
        others = [v for v in samples if v is not site["value"]]
        if any(_reaches(t, others) for t in tensors.values()):
            continue  # a structured site: only a rerun stops its parameters alone
        stopped = rebuild({k: t.detach() for k, t in tensors.items()})
        set_log_prob(site, stopped.log_prob(site["value"], *site["args"], **site["kwargs"]))
        site["pyro_vi_path_only"] = True


def _log_prob_at_detached(guide_trace):
    """Each guide site's scaled, masked log-density at its detached sample,
    or ``None`` when some site's value or distribution depends on another
    sample of the guide (then only a rerun stops that path)."""
    sites = [s for s in guide_trace.nodes.values() if s["type"] == "sample"]
    samples = [s["value"] for s in sites if not s["is_observed"] and s["value"].requires_grad]
    log_probs = {}
    for site in sites:
        if site["is_observed"]:
            return None  # a guide factor: only a rerun separates its paths
        if _keeps_whole_density(site["fn"]):
            continue  # not needed: the site keeps its whole density
        log_prob = site["fn"].log_prob(site["value"].detach(), *site["args"], **site["kwargs"])
        upstream = [v for v in samples if v is not site["value"]]
        if upstream and (_reaches(log_prob, upstream) or _reaches(site["value"], upstream)):
            return None
        log_probs[site["name"]] = scale_and_mask(log_prob, site["scale"], site["mask"])
    return log_probs


def _rerun_on_detached(guide, replay_trace, args, kwargs):
    """The guide's log-densities, replayed on detached copies of its samples
    (hidden from outer handlers)."""
    detached = replay_trace.copy()
    for name, site in replay_trace.nodes.items():
        if site["type"] == "sample" and not site_is_subsample(site):
            detached.nodes[name] = dict(site, value=site["value"].detach())
    with poutine.block():
        rerun = poutine.trace(poutine.replay(guide, trace=detached)).get_trace(*args, **kwargs)
    rerun = prune_subsample_sites(rerun)
    rerun.compute_log_prob()
    return {name: site["log_prob"] for name, site in rerun.nodes.items() if site["type"] == "sample"}


# ---------------------------------------------------------------- Bernoulli sites and score distributions


def _bernoulli_terms(runs, guide_sites, plate_dims, vectorized, num_particles):
    """The :class:`BernoulliTerm` of each random Bernoulli guide site with a
    score. Particles that did not meet a site have logits and values 0 and
    are not paired there."""
    terms = {}
    for name, site_term in guide_sites.items():
        if site_term.score_log_prob is None or site_term.is_observed:
            continue
        nodes = [guide.nodes.get(name) for _, guide, _ in runs]
        node = next(n for n in nodes if n is not None)
        if bernoulli_of(node["fn"]) is None:
            continue
        event_dim = len(node["fn"].event_shape)
        width = plate_dims + event_dim + (1 if vectorized else 0)
        logits = [None if n is None else bernoulli_of(n["fn"]).logits.broadcast_to(n["value"].shape) for n in nodes]
        logits = _stack_full(logits, width, vectorized, num_particles)
        values = _stack_full([None if n is None else n["value"] for n in nodes], width, vectorized, num_particles)
        terms[name] = BernoulliTerm(logits, values, event_dim, _paired(nodes, values, width, vectorized))
    return terms


def _paired(nodes, values, width, vectorized):
    """Where each pair was drawn antithetically (``infer["antithetic"]``, in
    the one vectorized run or in each pair's second run), shape
    ``(S/2,) + values.shape[1:]``."""
    unpaired = torch.zeros(values[0::2].shape, dtype=torch.bool, device=values.device)
    if vectorized:
        mask = nodes[0]["infer"].get("antithetic")
        return unpaired if mask is None else _stack_full([mask], width, True, values.shape[0])[0::2]
    masks = [None if n is None else n["infer"].get("antithetic") for n in nodes[1::2]] if len(nodes) % 2 == 0 else []
    if all(m is None for m in masks):
        return unpaired
    return _stack_full(masks, width, False, len(masks)).expand(unpaired.shape)


def _sample(site, subsample_scale):
    """``(value, the number of batch dims of its distribution, c)``, or
    ``None``. ``c`` is the factor of the site's own log-density in the
    log-weight, per element of the value: its ``poutine.scale`` (its scale
    without the subsampling part) times its masks (``poutine.mask`` and the
    distribution's ``.mask()``); a number where no factor is a tensor."""
    if site is None:
        return None
    fn, value = site["fn"], site["value"]
    factors = [(site["scale"] / subsample_scale, fn), (site["mask"], fn)]
    masked = masked_distribution(fn)
    if masked is not None:
        factors.append((masked._mask, masked))
    c = 1.0
    for factor, owner in factors:  # each over the batch dims of its owner: event dims appended
        if isinstance(factor, (int, float)) and not isinstance(factor, bool):
            c = c * factor
        elif factor is not None:
            factor = torch.as_tensor(factor, dtype=value.dtype, device=value.device)
            c = c * factor.reshape(factor.shape + (1,) * len(owner.event_shape))
    return value, len(fn.batch_shape), c


def _score_distributions(runs, guide_sites, vectorized):
    """Per score site, its :class:`ScoreDistribution` in each run."""
    found = {}
    for name, site_term in guide_sites.items():
        if site_term.score_log_prob is None:
            continue
        found[name] = [
            None
            if name not in guide.nodes
            else ScoreDistribution(
                fn=captured_distribution(guide.nodes[name]) if vectorized else guide.nodes[name]["fn"],
                broadcast=guide.nodes[name]["fn"],
                value=guide.nodes[name]["value"].detach(),
            )
            for _, guide, _ in runs
        ]
    return found
