"""The one place that runs guide and model with particles.

Every estimator of :mod:`pyro_vi.elbo` reads the same thing: for particles
:math:`z_s \\sim q_\\lambda`, :math:`s = 1..S`, the per-particle, per-site
log-densities :math:`\\log p_i(x, z_s)` of the model and :math:`\\log q_j(z_s)`
of the guide, each with the plate dimensions of its site. This module
produces them (vectorized with a particle plate, as Pyro does, or one trace
per particle) and leaves the arithmetic of each estimator to its own module.

Shapes: a site term has shape ``(S,) + plate_shape`` where ``plate_shape`` has
one entry per plate dimension of the program (``max_plate_nesting`` of them,
right-aligned as in Pyro; size 1 where the site is not in that plate).
"""

import copy
from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Dict, List, Optional

import torch
from pyro import poutine
from pyro.infer.elbo import ELBO
from pyro.distributions.util import scale_and_mask
from pyro.infer.enum import get_importance_trace
from pyro.infer.util import is_validation_enabled
from pyro.poutine.util import prune_subsample_sites
from pyro.poutine.messenger import Messenger
from pyro.util import check_if_enumerated


class ScoreFunctionMessenger(Messenger):
    """Forces every latent sample site to be sampled without a pathwise
    derivative (``fn.has_rsample = False``), so that gradients with respect
    to the variational parameters can only flow through :math:`\\log q`.

    Pyro's own estimators honour the same flag: ``TraceGraph_ELBO`` and
    ``Trace_ELBO`` then use score-function gradients at every site.

    :param dict baseline: optional ``infer["baseline"]`` options given to every
        latent site, e.g. ``{"use_decaying_avg_baseline": True}`` for the
        decaying-average baseline of Pyro's ``TraceGraph_ELBO``.
    """

    def __init__(self, baseline=None):
        super().__init__()
        self.baseline = baseline

    def _pyro_sample(self, msg):
        if msg["is_observed"]:
            return
        if getattr(msg["fn"], "has_rsample", False):
            msg["fn"] = _without_rsample(msg["fn"])
        if self.baseline is not None:
            msg["infer"] = dict(msg["infer"], baseline=dict(self.baseline))


_SCORE_FUNCTION_CLASSES = {}


def _without_rsample(fn):
    """A copy of ``fn`` that samples without a pathwise derivative, never
    mutating a distribution the program may reuse. The copy's class is a
    subclass with ``has_rsample = False``, which survives ``expand`` (plates
    broadcast distributions after this handler has seen them) and overrides
    the property of wrappers such as ``Independent``."""
    cls = type(fn)
    if cls not in _SCORE_FUNCTION_CLASSES:
        _SCORE_FUNCTION_CLASSES[cls] = type(cls.__name__, (cls,), {"has_rsample": False})
    fn = copy.copy(fn)
    fn.__class__ = _SCORE_FUNCTION_CLASSES[cls]
    return fn


def score_function_guide(guide, baseline=None):
    """Wraps ``guide`` so that all its latent sites use score-function
    (REINFORCE) gradients, whatever their distribution could do; see
    :class:`ScoreFunctionMessenger` for ``baseline``."""
    return ScoreFunctionMessenger(baseline)(guide)


@dataclass
class SiteTerm:
    """The log-density of one sample site for every particle.

    :ivar str name: the site name.
    :ivar torch.Tensor log_prob: scaled and masked log-density, shape
        ``(S,) + plate_shape``; what the objective sums.
    :ivar torch.Tensor score_log_prob: the same, neither scaled nor masked
        (guide sites only, else ``None``): the density the particles were
        drawn from, whose gradient is the score. As in Pyro, a subsampling
        scale multiplies the learning signal, never the score.
    :ivar dict plates: plate name -> its (negative) dim in ``log_prob``, for
        the program's vectorized plates (not the particle plate).
    :ivar bool is_observed: whether the site is observed.
    """

    name: str
    log_prob: torch.Tensor
    score_log_prob: Optional[torch.Tensor]
    plates: Dict[str, int]
    is_observed: bool


@dataclass
class ParticleTerms:
    """Per-particle, per-site log-densities of one ELBO evaluation.

    :ivar model: model sample sites (observed and latent), in program order.
    :ivar guide: guide sample sites, in program order.
    :ivar model_params: unconstrained parameters met in the model, by name.
    :ivar guide_params: unconstrained parameters met in the guide, by name.
    :ivar traces: the ``(model_trace, guide_trace)`` pairs the terms came from
        (one pair when vectorized).
    :ivar int plate_dims: the number of the program's plate dims in the terms.
    :ivar bool vectorized: whether the particles share one vectorized trace.
    :ivar replay_guide: runs the guide (with the particle plate, if any)
        against a trace of given sample values; returns its trace.
    """

    model: Dict[str, SiteTerm]
    guide: Dict[str, SiteTerm]
    model_params: Dict[str, torch.Tensor]
    guide_params: Dict[str, torch.Tensor]
    traces: List[tuple]
    plate_dims: int = 0
    vectorized: bool = False
    replay_guide: Optional[Callable] = None

    @property
    def num_particles(self):
        return next(iter(self.guide.values())).log_prob.shape[0]

    def log_p(self):
        """:math:`\\log p(x, z_s)`, shape ``(S,)``."""
        return _total(self.model.values())

    def log_q(self):
        """:math:`\\log q(z_s)`, shape ``(S,)``."""
        return _total(self.guide.values())

    def score_log_q(self):
        """:math:`\\log q(z_s)` unscaled, whose gradient is the score, shape ``(S,)``."""
        return _total(self.guide.values(), "score_log_prob")

    def stopped_guide_log_prob(self):
        """:math:`\\log q_\\lambda(\\mathrm{stop}(z_s))` per guide site: only the
        variational parameters, not the samples (nor, in a structured guide,
        the upstream samples its distributions depend on), carry gradient.
        Same shapes as the site terms."""
        return self._stopped_guide[0]

    @property
    def guide_samples_independent(self):
        """Whether no guide sample, nor its distribution, depends on another
        guide sample (mean-field and amortized guides)."""
        return self._stopped_guide[1]

    @cached_property
    def _stopped_guide(self):
        # Independent samples: each site's density at its detached sample.
        # Otherwise the guide is run again on detached copies of its samples.
        stopped = [_log_prob_at_detached(guide_trace) for _, guide_trace in self.traces]
        independent = all(log_probs is not None for log_probs in stopped)
        if not independent:
            stopped = [self._rerun_on_detached(guide_trace) for _, guide_trace in self.traces]
        log_probs = {
            name: _stack(
                [particle[name] for particle in stopped],
                self.traces[0][1].nodes[name],
                self.plate_dims,
                self.vectorized,
                self.num_particles,
            )
            for name in self.guide
        }
        return log_probs, independent

    def _rerun_on_detached(self, guide_trace):
        detached = guide_trace.copy()
        for name, site in guide_trace.nodes.items():
            if site["type"] == "sample":
                detached.nodes[name] = dict(site, value=site["value"].detach())
        rerun = prune_subsample_sites(self.replay_guide(detached))
        rerun.compute_log_prob()
        return {name: rerun.nodes[name]["log_prob"] for name in self.guide}

    def log_weights(self):
        """:math:`\\log p(x, z_s) - \\log q(z_s)`, shape ``(S,)``."""
        return self.log_p() - self.log_q()


def _log_prob_at_detached(guide_trace):
    """Each guide site's scaled, masked log-density at its detached sample,
    or ``None`` when some site's value or distribution depends on another
    sample of the guide (then only a rerun stops that path)."""
    sites = [
        s for s in prune_subsample_sites(guide_trace).nodes.values()
        if s["type"] == "sample" and not s["is_observed"]
    ]
    samples = [s["value"] for s in sites if s["value"].requires_grad]
    log_probs = {}
    for site in sites:
        log_prob = site["fn"].log_prob(site["value"].detach(), *site["args"], **site["kwargs"])
        upstream = [v for v in samples if v is not site["value"]]
        if upstream:
            # The site's value and density, each connected to the graph or zero.
            reach = log_prob.sum() * 0 + site["value"].sum() * 0
            if reach.requires_grad:
                grads = torch.autograd.grad(reach, upstream, retain_graph=True, allow_unused=True)
                if any(g is not None for g in grads):
                    return None
        log_probs[site["name"]] = scale_and_mask(log_prob, site["scale"], site["mask"])
    return log_probs


def sum_to_plates(term, plate_dims):
    """Sums a ``(S,) + plate_shape`` term over every plate dim not in
    ``plate_dims`` (negative dims), keeping dims."""
    dims = [d for d in range(-(term.dim() - 1), 0) if d not in plate_dims]
    return term.sum(dims, keepdim=True) if dims else term


def _total(terms, field="log_prob"):
    total = 0.0
    for term in terms:
        value = getattr(term, field)
        total = total + value.reshape(value.shape[0], -1).sum(-1)
    return total


class ParticleELBO(ELBO):
    """Base class of the estimators: Pyro's ELBO arguments and plumbing.

    A subclass states how many particles it needs (``min_particles``), whether
    its guide keeps pathwise derivatives (``reparameterized``), and implements
    :meth:`elbo_and_surrogate`, a pure function of :class:`ParticleTerms`.
    The loss then carries the estimate as its value and the estimator as its
    gradient: ``-(elbo + surrogate - surrogate.detach())``.

    :param int num_particles: the number of particles :math:`S`.
    :param max_plate_nesting: as in Pyro; guessed by running the program once
        when left at infinity.
    :param bool vectorize_particles: draw the particles in one vectorized
        trace under an outermost plate, as Pyro does.
    """

    min_particles = 1
    reparameterized = True

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        vectorize_particles=False,
        retain_graph=None,
    ):
        if (
            isinstance(num_particles, bool)
            or not isinstance(num_particles, int)
            or num_particles < self.min_particles
        ):
            raise ValueError(
                "{} needs num_particles >= {} (an integer), got {!r}".format(
                    type(self).__name__, self.min_particles, num_particles
                )
            )
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            retain_graph=retain_graph,
        )

    # ---- the estimator: subclasses implement this --------------------------

    def elbo_and_surrogate(self, terms: ParticleTerms):
        """Returns ``(elbo, surrogate)``: the objective's estimate and a
        scalar whose gradient is the estimator."""
        raise NotImplementedError

    def elbo_value(self, terms: ParticleTerms):
        """The objective's estimate alone (default: the mean log-weight)."""
        return terms.log_weights().mean()

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        # The guess runs both programs. Under a forked RNG it draws nothing
        # from the global stream, so a run resumed from a checkpoint (which
        # restores that stream) makes the same draws as an uninterrupted one.
        with torch.random.fork_rng():
            super()._guess_max_plate_nesting(model, guide, args, kwargs)

    # ---- Pyro's interface ---------------------------------------------------

    def _get_trace(self, model, guide, args, kwargs):
        model_trace, guide_trace = get_importance_trace(
            "flat", self.max_plate_nesting, model, guide, args, kwargs
        )
        if is_validation_enabled():
            check_if_enumerated(guide_trace)
        return model_trace, guide_trace

    def particle_terms(self, model, guide, *args, **kwargs) -> ParticleTerms:
        """Runs the guide and the model against it with ``num_particles``
        particles and collects the per-site terms."""
        if not self.reparameterized:
            guide = score_function_guide(guide)
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, guide, args, kwargs)
        traces = list(self._get_traces(model, guide, args, kwargs))
        vectorized = self.vectorize_particles and self.num_particles > 1
        plate_dims = self.max_plate_nesting - (1 if vectorized else 0)
        model_sites, guide_sites = OrderedDict(), OrderedDict()
        model_params, guide_params = OrderedDict(), OrderedDict()
        for role, sites, params in (
            (0, model_sites, model_params),
            (1, guide_sites, guide_params),
        ):
            for name, site in traces[0][role].nodes.items():
                if site["type"] == "param":
                    params[name] = site["value"].unconstrained()
                elif site["type"] == "sample":
                    sites[name] = _site_term(
                        [_site(tr[role], name) for tr in traces],
                        plate_dims,
                        vectorized,
                        self.num_particles,
                        with_score=role == 1,
                    )
        if not guide_sites:
            raise ValueError("the guide has no sample sites: nothing to infer")
        run_guide = self._vectorized_num_particles(guide) if vectorized else guide

        def replay_guide(values):
            return poutine.trace(poutine.replay(run_guide, trace=values)).get_trace(*args, **kwargs)

        return ParticleTerms(
            model_sites,
            guide_sites,
            model_params,
            guide_params,
            traces,
            plate_dims,
            vectorized,
            replay_guide,
        )

    def loss(self, model, guide, *args, **kwargs):
        """:returns: an estimate of the negative objective (no graph).
        :rtype: float"""
        with torch.no_grad():
            terms = self.particle_terms(model, guide, *args, **kwargs)
            return -self.elbo_value(terms).item()

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """:returns: a scalar whose value is the negative estimate of the
        objective and whose gradient is the negative estimator."""
        terms = self.particle_terms(model, guide, *args, **kwargs)
        elbo, surrogate = self.elbo_and_surrogate(terms)
        return -(elbo.detach() + (surrogate - surrogate.detach()))

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """Fills ``.grad`` of every parameter the estimator touches.

        :returns: the negative estimate of the objective.
        :rtype: float"""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.item()


def _site(trace, name):
    if name not in trace.nodes:
        raise ValueError(
            "site '{}' is missing from some particles; the estimators need the "
            "same sites in every particle".format(name)
        )
    return trace.nodes[name]


def _site_term(sites, plate_dims, vectorized, num_particles, with_score):
    site = sites[0]
    fields = ("log_prob", "unscaled_log_prob") if with_score else ("log_prob",)
    stacked = [
        _stack([s[f] for s in sites], site, plate_dims, vectorized, num_particles)
        for f in fields
    ]
    plates = {
        f.name: f.dim
        for f in site["cond_indep_stack"]
        if f.vectorized and f.name != "num_particles_vectorized"
    }
    return SiteTerm(
        site["name"],
        stacked[0],
        stacked[1] if with_score else None,
        plates,
        site["is_observed"],
    )


def _stack(values, site, plate_dims, vectorized, num_particles):
    """The particles' values of one site term as one tensor of shape
    ``(S,) + plate_shape``, refusing NaN and infinity with the site's name."""
    name = site["name"]
    terms = []
    for log_prob in values:
        if not torch.isfinite(log_prob).all():
            where = "observed" if site["is_observed"] else "latent"
            raise ValueError(
                "the log-density of {} site '{}' is not finite ({} of {} entries are "
                "NaN or inf); check its parameters and its value's support".format(
                    where,
                    name,
                    int((~torch.isfinite(log_prob)).sum()),
                    log_prob.numel(),
                )
            )
        width = plate_dims + (1 if vectorized else 0)
        log_prob = log_prob.reshape((1,) * (width - log_prob.dim()) + log_prob.shape)
        terms.append(log_prob)
    if vectorized:
        (log_prob,) = terms
        return log_prob.expand((num_particles,) + log_prob.shape[1:])
    shapes = {t.shape for t in terms}
    if len(shapes) > 1:
        raise ValueError(
            "site '{}' has different batch shapes in different particles: {}".format(
                name, sorted(tuple(s) for s in shapes)
            )
        )
    return torch.stack(terms)
