"""The one place that runs guide and model with particles.

Every estimator of :mod:`pyro_vi.elbo` reads the same thing: for particles
:math:`z_s \\sim q_\\lambda`, :math:`s = 1..S`, the per-particle, per-site
log-densities :math:`\\log p_i(x, z_s)` of the model and :math:`\\log q_j(z_s)`
of the guide, each with the plate dimensions of its site, together with what
an estimator may ask of a site (does it keep its pathwise derivative, its
scale, its mask) and of the programs (which factors each guide sample
reaches). This module produces them, vectorized with a particle plate as
Pyro does or one trace per particle, and leaves the arithmetic of each
estimator to its own module.

Shapes: a site term has shape ``(S,) + plate_shape`` where ``plate_shape`` has
one entry per plate dimension of the program (``max_plate_nesting`` of them,
right-aligned as in Pyro; size 1 where the site is not in that plate).
"""

import copy
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable, Dict, FrozenSet, List, Optional

import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.distributions.score_parts import ScoreParts
from pyro.distributions.util import scale_and_mask
from pyro.infer.elbo import ELBO
from pyro.infer.util import is_validation_enabled
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import prune_subsample_sites, site_is_subsample
from pyro.util import check_if_enumerated, check_model_guide_match, check_site_shape

from .. import _validation
from .._params import unconstrained
from .scores import CaptureDistributions, graph_reaches
from .structure import learning_signal_factors, read_structure

__all__ = [
    "AntitheticMessenger",
    "GuideValuesInSupport",
    "AntitheticPairs",
    "BernoulliTerm",
    "ParticleELBO",
    "ParticleTerms",
    "ScoreFunctionMessenger",
    "SiteTerm",
    "bernoulli_of",
    "is_point_mass",
    "reaches",
    "score_function_guide",
]

_PARTICLE_PLATE = "num_particles_vectorized"
_STRUCTURE_CACHE_SIZE = 16


def is_point_mass(fn):
    """Whether the distribution ``fn`` is a point mass (``Delta``, possibly
    masked, expanded or reinterpreted): its sample has no randomness, so it
    has no score and its gradient is exact through its path."""
    while not isinstance(fn, dist.Delta) and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, dist.Delta)


def _without_mask(fn):
    """``fn`` without its :meth:`~pyro.distributions.TorchDistributionMixin.mask`
    wrappers: the density the sample was drawn from."""
    if isinstance(fn, dist.MaskedDistribution):
        return _without_mask(fn.base_dist)
    if isinstance(fn, dist.Independent) and _has_mask(fn.base_dist):
        return dist.Independent(_without_mask(fn.base_dist), fn.reinterpreted_batch_ndims)
    return fn


def _has_mask(fn):
    while not isinstance(fn, dist.MaskedDistribution) and isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return isinstance(fn, dist.MaskedDistribution)


class GuideValuesInSupport(Messenger):
    """Refuses, at the model's sample site, a latent value that the guide
    drew outside the support of the model's distribution there (a Normal
    guide for a Gamma latent), before the model uses it: a ``ValueError``
    naming the site, the support, the value and the guide's distribution,
    in place of a NaN density or an error from a child site's arguments.
    Masked-out elements are not checked."""

    def __init__(self, guide_trace):
        super().__init__()
        self.guide_trace = guide_trace

    def _pyro_post_sample(self, msg):
        name = msg["name"]
        guide_site = self.guide_trace.nodes.get(name)
        if msg["is_observed"] or site_is_subsample(msg) or guide_site is None or guide_site["type"] != "sample":
            return
        if msg["mask"] is False:
            return
        support, value = msg["fn"].support, msg["value"]
        try:
            inside = torch.as_tensor(support.check(value)).detach()
        except (NotImplementedError, RuntimeError, TypeError):  # a dependent or unusual support
            return
        if isinstance(msg["mask"], torch.Tensor):
            inside = inside | ~msg["mask"].expand(inside.shape)
        if bool(inside.all()):
            return
        bad = value.detach().reshape(-1)[~inside.reshape(-1)] if inside.shape == value.shape else value.reshape(-1)
        raise ValueError(
            "site '{}': the guide drew {} outside the support {} of the model's {} ({:.6g}), from the guide's "
            "{}; give the guide site '{}' a distribution with that support (e.g. a LogNormal or Gamma for a "
            "positive latent, or an autoguide, which maps to the support)".format(
                name,
                "a value" if inside.numel() == 1 else f"{int((~inside).sum())} of {inside.numel()} values",
                support,
                type(msg["fn"]).__name__,
                float(bad[0]),
                _describe(guide_site["fn"]),
                name,
            )
        )


def _describe(fn):
    """``Normal(loc=0.3, scale=0.5)``: the distribution's class and its
    arguments (shapes for tensors of more than one element)."""
    arguments = []
    for key in getattr(fn, "arg_constraints", {}):
        value = fn.__dict__.get(key)
        if isinstance(value, torch.Tensor):
            shown = f"{value.item():.4g}" if value.numel() == 1 else f"tensor of shape {tuple(value.shape)}"
            arguments.append(f"{key}={shown}")
    name = type(fn).__name__
    return "{}({})".format(name, ", ".join(arguments)) if arguments else name


class ScoreFunctionMessenger(Messenger):
    """Gives every random guide site a score-function (REINFORCE) gradient:
    sites that could ``rsample`` are sampled without a pathwise derivative,
    each value a fresh tensor, so that no transform reuses an inverse it
    cached without a graph (``TransformedDistribution`` flows).
    Point masses (``Delta``, ``AutoDelta``) have no randomness and no score:
    they keep their path, as in ``Trace_ELBO``. ``pyro.factor`` sites of the
    guide become score terms too: at fixed samples, they are part of the
    sampling density's gradient.

    :param dict baseline: optional ``infer["baseline"]`` options given to every
        latent site, e.g. ``{"use_decaying_avg_baseline": True}`` for the
        decaying-average baseline of Pyro's ``TraceGraph_ELBO``.
    """

    def __init__(self, baseline=None):
        super().__init__()
        self.baseline = baseline

    def _pyro_sample(self, msg):
        fn = msg["fn"]
        if site_is_subsample(msg) or is_point_mass(fn):
            return
        msg["infer"] = dict(msg["infer"], has_rsample=bool(fn.has_rsample))
        if fn.has_rsample:
            msg["fn"] = _without_rsample(fn)
        if self.baseline is not None and not msg["is_observed"]:
            msg["infer"]["baseline"] = dict(self.baseline)


_SCORE_FUNCTION_CLASSES = {}


def _without_rsample(fn):
    """A copy of ``fn`` that samples without a pathwise derivative, never
    mutating a distribution the program may reuse. The copy's class is a
    subclass with ``has_rsample = False``, which survives ``expand`` (plates
    broadcast distributions after this handler has seen them) and overrides
    the property of wrappers such as ``Independent``."""
    cls = type(fn)
    if cls not in _SCORE_FUNCTION_CLASSES:

        def sample(self, sample_shape=torch.Size()):
            # A fresh tensor: a transform's cached inverse of the sample (made
            # without a graph) must not be reused by log_prob.
            return cls.sample(self, sample_shape).clone()

        _SCORE_FUNCTION_CLASSES[cls] = type(cls.__name__, (cls,), {"has_rsample": False, "sample": sample})
    fn = copy.copy(fn)
    if "has_rsample" in fn.__dict__:  # set per instance (has_rsample_(), pyro.factor)
        fn.__dict__["has_rsample"] = False
    fn.__class__ = _SCORE_FUNCTION_CLASSES[cls]
    return fn


def score_function_guide(guide, baseline=None):
    """Wraps ``guide`` so that all its random sites use score-function
    (REINFORCE) gradients, whatever their distribution could do; see
    :class:`ScoreFunctionMessenger` for ``baseline``."""
    return ScoreFunctionMessenger(baseline)(guide)


def bernoulli_of(fn):
    """The ``Bernoulli`` that ``fn`` samples (through ``Independent``, masks
    and expansions), or ``None`` when ``fn`` is not a Bernoulli."""
    while not isinstance(fn, torch.distributions.Bernoulli):
        if not isinstance(fn, (torch.distributions.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
            return None
        fn = fn.base_dist
    return fn


class AntitheticPairs:
    """The antithetic pairs of one ELBO evaluation: particles :math:`2i` and
    :math:`2i + 1` share one uniform draw :math:`u` at every random Bernoulli
    guide site, :math:`b = 1[u < \\sigma(\\theta)]` and
    :math:`b' = 1[1 - u < \\sigma(\\theta)]` (Yin and Zhou 2019; Dong et al.
    2020). Each particle is still an exact draw from the guide. Vectorized,
    the pairs are interleaved along the particle dim; sequential, they are
    consecutive runs, and the second run of a pair replays the first run's
    subsample indices, so that both draw the same data points."""

    def __init__(self, num_particles, vectorized):
        self.num_particles = num_particles
        self.vectorized = vectorized
        self.run = -1
        self.stored = {}

    def messenger(self):
        """The handler for the next run (put it outside the particle plate)."""
        self.run += 1
        if self.run % 2 == 0:
            self.stored = {}
        return AntitheticMessenger(self, first=self.run % 2 == 0)


class AntitheticMessenger(Messenger):
    """Draws the random Bernoulli guide sites of one run in antithetic pairs
    (see :class:`AntitheticPairs`); marks each with ``infer["antithetic"]``,
    whether its pair is complete."""

    def __init__(self, pairs, first):
        super().__init__()
        self.pairs = pairs
        self.first = first

    def _pyro_sample(self, msg):
        if msg["value"] is not None or msg["done"]:
            return
        pairs = self.pairs
        if site_is_subsample(msg):
            if not pairs.vectorized and not self.first and msg["name"] in pairs.stored:
                msg["value"] = pairs.stored.pop(msg["name"])
            return
        bernoulli = None if msg["is_observed"] else bernoulli_of(msg["fn"])
        if bernoulli is None:
            return
        shape = msg["fn"].batch_shape + msg["fn"].event_shape
        probs = bernoulli.probs.detach().expand(shape)
        paired = True
        if pairs.vectorized:
            if len(shape) == 0 or shape[0] != pairs.num_particles:
                return  # not broadcast by the particle plate: drawn as usual, unpaired
            u = torch.rand((shape[0] // 2,) + shape[1:], dtype=probs.dtype, device=probs.device)
            first, second = u < probs[0::2], (1 - u) < probs[1::2]
            value = torch.stack([first, second], 1).reshape(shape)
        else:
            stored = None if self.first else pairs.stored.pop(msg["name"], None)
            if stored is not None and stored.shape == shape:
                u = 1 - stored
            else:
                u = torch.rand(shape, dtype=probs.dtype, device=probs.device)
                paired = self.first
                if self.first:
                    pairs.stored[msg["name"]] = u
            value = u < probs
        msg["value"] = value.to(probs.dtype)
        msg["infer"] = dict(msg["infer"], antithetic=paired)

    def _pyro_post_sample(self, msg):
        if site_is_subsample(msg) and self.first and not self.pairs.vectorized:
            self.pairs.stored[msg["name"]] = msg["value"]


@dataclass
class BernoulliTerm:
    """A Bernoulli guide site's logits :math:`\\theta` and values :math:`b`,
    shape ``(S,) + plate_shape + event_shape``, and whether every particle
    was drawn in a complete antithetic pair."""

    logits: torch.Tensor
    value: torch.Tensor
    event_dim: int
    paired: bool


@dataclass
class SiteTerm:
    """The log-density of one sample site for every particle, and what an
    estimator may ask of the site.

    :ivar str name: the site name.
    :ivar torch.Tensor log_prob: scaled and masked log-density, shape
        ``(S,) + plate_shape``; what the objective sums. Zero in particles
        that did not meet the site (sequential plates).
    :ivar torch.Tensor score_log_prob: for guide sites with a score (random
        sites without a pathwise derivative, and ``pyro.factor`` sites marked
        ``has_rsample=False``), the density the particles were drawn from,
        neither scaled nor masked, whose gradient is the score (as in Pyro, a
        subsampling scale multiplies the learning signal, never the score);
        else ``None``.
    :ivar dict plates: plate name -> its (negative) dim in ``log_prob``, for
        the program's vectorized plates (not the particle plate).
    :ivar bool is_observed: observed (data, ``pyro.factor``).
    :ivar bool reparameterized: the sample keeps its pathwise derivative in
        this evaluation (it was drawn with ``rsample``, or it is a point mass).
    :ivar bool has_rsample: the distribution could ``rsample`` (before any
        score-function treatment).
    :ivar bool is_point_mass: a ``Delta`` site: no randomness, no score.
    :ivar bool path_only: ``log_prob`` was computed at stopped distribution
        parameters (for the path-derivative estimators, see
        :attr:`ParticleELBO.guide_density`): its gradient is the path part only.
    :ivar scale: the site's scale (subsampling times ``poutine.scale``).
    :ivar float subsample_scale: the part of ``scale`` due to subsampled
        plates, :math:`\\prod N / B`.
    :ivar frozenset subsampled_plates: the subsampled plates the site is in
        (sequential ones included).
    :ivar mask: the site's ``poutine.mask`` (``None`` when unmasked).
    """

    name: str
    log_prob: torch.Tensor
    score_log_prob: Optional[torch.Tensor]
    plates: Dict[str, int]
    is_observed: bool
    reparameterized: bool = True
    has_rsample: bool = True
    is_point_mass: bool = False
    path_only: bool = False
    scale: object = 1.0
    subsample_scale: float = 1.0
    subsampled_plates: FrozenSet[str] = frozenset()
    mask: object = None


@dataclass
class ParticleTerms:
    """Per-particle, per-site log-densities of one ELBO evaluation, and what
    the estimators need from the programs.

    :ivar model: model sample sites (observed and latent), in program order.
    :ivar guide: guide sample sites, in program order.
    :ivar model_params: unconstrained parameters met in the model, by name.
    :ivar guide_params: unconstrained parameters met in the guide, by name.
    :ivar int num_particles: :math:`S`.
    :ivar int plate_dims: the number of the program's plate dims in the terms.
    :ivar bool vectorized: whether the particles share one vectorized trace.
    """

    model: Dict[str, SiteTerm]
    guide: Dict[str, SiteTerm]
    model_params: Dict[str, torch.Tensor]
    guide_params: Dict[str, torch.Tensor]
    num_particles: int
    plate_dims: int = 0
    vectorized: bool = False
    # The real traces, one (model, guide, unpruned guide) triple per run.
    runs: List[tuple] = field(default_factory=list, repr=False)
    # Runs the guide (in its particle plate) against a trace; returns its trace.
    replay_guide: Optional[Callable] = field(default=None, repr=False)
    # Reads the (model, guide) ProgramStructure of the runs.
    read_structure: Optional[Callable] = field(default=None, repr=False)

    def log_p(self):
        """:math:`\\log p(x, z_s)`, shape ``(S,)``."""
        return self._totals[0]

    def log_q(self):
        """:math:`\\log q(z_s)`, shape ``(S,)``."""
        return self._totals[1]

    @cached_property
    def _totals(self):
        return (
            self._total(t.log_prob for t in self.model.values()),
            self._total(t.log_prob for t in self.guide.values()),
        )

    def check_finite(self):
        """Refuses a NaN or infinite log-density, naming the site. Checks the
        per-particle totals (a sum is finite only if every entry is), and
        looks for the site only when one is not."""
        totals = list(self._totals) + [self.score_log_q()]
        if all(bool(torch.isfinite(total).all()) for total in totals):
            return
        for site in list(self.model.values()) + list(self.guide.values()):
            for term in (site.log_prob, site.score_log_prob):
                if term is not None and not bool(torch.isfinite(term).all()):
                    raise ValueError(
                        "the log-density of {} site '{}' is not finite ({} of {} entries are "
                        "NaN or inf); check its parameters and its value's support".format(
                            "observed" if site.is_observed else "latent",
                            site.name,
                            int((~torch.isfinite(term)).sum()),
                            term.numel(),
                        )
                    )

    def log_weights(self):
        """:math:`\\log p(x, z_s) - \\log q(z_s)`, shape ``(S,)``."""
        return self.log_p() - self.log_q()

    def score_sites(self):
        """The guide sites with a score."""
        return [t for t in self.guide.values() if t.score_log_prob is not None]

    def score_log_q(self):
        """:math:`\\log q(z_s)` of the score sites, unscaled, whose gradient
        is the score :math:`h_s`, shape ``(S,)``."""
        return self._total(t.score_log_prob for t in self.score_sites())

    def path_log_q(self):
        """:math:`\\log q(z_s)` of the guide sites without a score (point
        masses, reparameterized sites), shape ``(S,)``: its gradient is
        pathwise."""
        return self._total(t.log_prob for t in self.guide.values() if t.score_log_prob is None)

    def zeros(self, *shape):
        """Zeros with the terms' dtype and device."""
        for term in list(self.model.values()) + list(self.guide.values()):
            return term.log_prob.new_zeros(shape)
        return torch.zeros(shape)

    def _total(self, terms):
        total = self.zeros(self.num_particles)
        for value in terms:
            total = total + value.reshape(value.shape[0], -1).sum(-1)
        return total

    def bernoulli(self, name):
        """The :class:`BernoulliTerm` of guide site ``name``, or ``None`` when
        its distribution is not a Bernoulli. Particles that did not meet the
        site (sequential plates) have logits and values 0."""
        nodes = [guide_trace.nodes.get(name) for _, guide_trace, _ in self.runs]
        node = next(n for n in nodes if n is not None)
        if bernoulli_of(node["fn"]) is None:
            return None
        event_dim = len(node["fn"].event_shape)
        width = self.plate_dims + event_dim + (1 if self.vectorized else 0)
        logits, values = [], []
        for n in nodes:
            if n is None:
                logits.append(None)
                values.append(None)
                continue
            value = n["value"]
            logits.append(torch.broadcast_to(bernoulli_of(n["fn"]).logits, value.shape))
            values.append(value)
        if self.vectorized:
            paired = bool(node["infer"].get("antithetic"))
        else:
            pairs = list(zip(nodes[0::2], nodes[1::2]))
            paired = len(nodes) % 2 == 0 and all(
                (a is None) == (b is None) and (b is None or bool(b["infer"].get("antithetic"))) for a, b in pairs
            )
        return BernoulliTerm(
            logits=_stack_full(logits, width, self.vectorized, self.num_particles),
            value=_stack_full(values, width, self.vectorized, self.num_particles),
            event_dim=event_dim,
            paired=paired,
        )

    def stopped_guide_log_prob(self):
        """:math:`\\log q_\\lambda(\\mathrm{stop}(z_s))` per guide site: only the
        variational parameters, not the samples (nor, in a structured guide,
        the upstream samples its distributions depend on), carry gradient.
        Same shapes as the site terms."""
        return self._stopped_guide[0]

    def log_q_at_stopped_parameters(self):
        """Per guide site, :math:`\\log q_{\\mathrm{stop}(\\lambda)}(z(\\epsilon, \\lambda))`:
        the value of :math:`\\log q(z)`, and only the gradient through the
        samples (the path derivative; the score term is stopped). A site
        already computed at stopped parameters (``SiteTerm.path_only``) is
        used as it is; for the others it is :math:`\\log q(z) - \\log
        q_\\lambda(\\mathrm{stop}(z))` plus that value, stopped."""
        if all(site.path_only for site in self.guide.values()):
            return {name: site.log_prob for name, site in self.guide.items()}
        stopped = self.stopped_guide_log_prob()
        return {
            name: site.log_prob if site.path_only else site.log_prob - stopped[name] + stopped[name].detach()
            for name, site in self.guide.items()
        }

    @property
    def guide_samples_independent(self):
        """Whether no guide sample, nor its distribution, depends on another
        guide sample (mean-field and amortized guides)."""
        return self._stopped_guide[1]

    @cached_property
    def _stopped_guide(self):
        # Independent samples: each site's density at its detached sample.
        # Otherwise the guide is run again on detached copies of its samples.
        stopped = [_log_prob_at_detached(guide_trace) for _, guide_trace, _ in self.runs]
        independent = all(log_probs is not None for log_probs in stopped)
        if not independent:
            stopped = [self._rerun_on_detached(replay) for _, _, replay in self.runs]
        log_probs = {
            name: _stack(
                [particle.get(name) for particle in stopped],
                name,
                self.plate_dims,
                self.vectorized,
                self.num_particles,
            )
            for name in self.guide
        }
        return log_probs, independent

    def _rerun_on_detached(self, replay_trace):
        detached = replay_trace.copy()
        for name, site in replay_trace.nodes.items():
            if site["type"] == "sample" and not site_is_subsample(site):
                detached.nodes[name] = dict(site, value=site["value"].detach())
        with poutine.block():
            rerun = prune_subsample_sites(self.replay_guide(detached))
        rerun.compute_log_prob()
        return {name: site["log_prob"] for name, site in rerun.nodes.items() if site["type"] == "sample"}

    @cached_property
    def signal_factors(self):
        """For each guide site :math:`j`, the model and guide factors of its
        Markov-blanket learning signal with the plates in which each stays
        element-wise (see :func:`~pyro_vi.elbo.structure.learning_signal_factors`),
        read from the real traces."""
        return learning_signal_factors(*self.read_structure())


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
        log_prob = site["fn"].log_prob(site["value"].detach(), *site["args"], **site["kwargs"])
        upstream = [v for v in samples if v is not site["value"]]
        if upstream and (reaches(log_prob, upstream) or reaches(site["value"], upstream)):
            return None
        log_probs[site["name"]] = scale_and_mask(log_prob, site["scale"], site["mask"])
    return log_probs


def _compute_path_log_prob(guide_trace):
    """The log-density of each latent guide site whose distribution depends
    on no other sample, computed at stopped parameters: the gradient through
    the sample only. Other sites are left to ``compute_score_parts``."""
    from .scores import _functional  # a distribution rebuilt from its tensors

    sites = [s for s in guide_trace.nodes.values() if s["type"] == "sample" and not s["is_observed"]]
    samples = [s["value"] for s in sites if s["value"].requires_grad]
    for site in sites:
        functional = _functional(site["fn"])
        if functional is None:
            continue
        tensors, rebuild = functional
        others = [v for v in samples if v is not site["value"]]
        if any(reaches(t, others) for t in tensors.values()):
            continue  # a structured site: only a rerun stops its parameters alone
        log_prob = rebuild({k: t.detach() for k, t in tensors.items()}).log_prob(
            site["value"], *site["args"], **site["kwargs"]
        )
        site["unscaled_log_prob"] = log_prob
        site["log_prob"] = scale_and_mask(log_prob, site["scale"], site["mask"])
        site["log_prob_sum"] = site["log_prob"].sum()
        site["score_parts"] = ScoreParts(site["log_prob"], 0, site["log_prob"])
        site["pyro_vi_path_only"] = True


def reaches(output, tensors):
    """Whether the autograd graph of ``output`` reaches any of ``tensors``
    (their own graph nodes; a walk over the recorded graph, no backward
    pass)."""
    if output.grad_fn is None or not tensors:
        return False
    targets = {torch.autograd.graph.get_gradient_edge(t).node for t in tensors if t.requires_grad}
    return graph_reaches([output.grad_fn], targets)


class ParticleELBO(ELBO):
    """Base class of the estimators: Pyro's ELBO arguments and plumbing.

    A subclass states how many particles it needs (``min_particles``),
    whether guide sites that can ``rsample`` keep their pathwise derivative
    (``reparameterize``; if not, every random guide site gets a score),
    whether random Bernoulli guide sites are drawn in antithetic pairs
    (``antithetic``; then ``num_particles`` counts pairs, and the
    ``num_particles`` attribute holds the :math:`2\\times` as many particles
    drawn), and implements

    - :meth:`check`, which refuses what the estimator cannot handle: every
      entry point (``loss``, ``loss_and_grads``, ``differentiable_loss``)
      runs it on the same terms, before any arithmetic;
    - :meth:`elbo_and_surrogate`, a function of the :class:`ParticleTerms`
      alone: it reads no state of the estimator and runs no program (it may
      attach gradient hooks to the terms' own tensors, which live as long as
      this evaluation's graph).

    The loss then carries the estimate as its value and the estimator as its
    gradient: ``-(elbo + surrogate - surrogate.detach())``.

    Every keyword of :class:`pyro.infer.ELBO` is accepted with Pyro's meaning.

    :param int num_particles: the number of particles :math:`S`.
    :param max_plate_nesting: as in Pyro; guessed by running the programs once
        (under a forked RNG) when left at infinity.
    :param bool vectorize_particles: draw the particles in one vectorized
        trace under an outermost plate, as Pyro does.
    """

    min_particles = 1
    reparameterize = True
    #: ``"full"``: the guide's log-densities carry their whole gradient.
    #: ``"path"``: the estimator needs only their path derivative
    #: (:meth:`ParticleTerms.log_q_at_stopped_parameters`); where a site's
    #: distribution depends on no other sample, its density is then computed
    #: once, at stopped parameters, instead of twice.
    guide_density = "full"
    antithetic = False
    _antithetic_pairs = None

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        max_iarange_nesting=None,
        vectorize_particles=False,
        strict_enumeration_warning=True,
        ignore_jit_warnings=False,
        jit_options=None,
        retain_graph=None,
        tail_adaptive_beta=-1.0,
    ):
        name = type(self).__name__
        num_particles = _validation.integer(f"{name}: num_particles", num_particles, minimum=self.min_particles)
        if max_plate_nesting != float("inf"):
            max_plate_nesting = _validation.integer(f"{name}: max_plate_nesting", max_plate_nesting, minimum=0)
        vectorize_particles = _validation.boolean(f"{name}: vectorize_particles", vectorize_particles)
        if self.antithetic:  # num_particles counts antithetic pairs
            self.num_pairs = num_particles
            num_particles = 2 * num_particles
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            max_iarange_nesting=max_iarange_nesting,
            vectorize_particles=vectorize_particles,
            strict_enumeration_warning=strict_enumeration_warning,
            ignore_jit_warnings=ignore_jit_warnings,
            jit_options=jit_options,
            retain_graph=retain_graph,
            tail_adaptive_beta=tail_adaptive_beta,
        )
        self._structures = OrderedDict()

    # ---- the estimator: subclasses implement these -------------------------

    def check(self, terms: ParticleTerms):
        """Raises ``ValueError`` naming the site and the reason for anything
        in ``terms`` the estimator cannot handle."""

    def elbo_and_surrogate(self, terms: ParticleTerms):
        """Returns ``(elbo, surrogate)``: the objective's estimate and a
        scalar whose gradient is the estimator."""
        raise NotImplementedError

    def elbo_value(self, terms: ParticleTerms):
        """The objective's estimate alone (default: the mean log-weight)."""
        return terms.log_weights().mean()

    # ---- Pyro's interface ---------------------------------------------------

    def _guess_max_plate_nesting(self, model, guide, args, kwargs):
        # As Pyro guesses it, from one run of both programs; under a forked
        # RNG, so that a run resumed from a checkpoint (which restores the
        # global stream) makes the same draws as an uninterrupted one; and
        # with the guide's values checked against the model's supports.
        traces = _one_run(model, guide, args, kwargs)
        if is_validation_enabled():
            for trace in traces:
                trace.compute_log_prob()
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, max_plate_nesting=float("inf"))
        self.max_plate_nesting = _plate_nesting(traces) + (self.vectorize_particles and self.num_particles > 1)

    def _get_vectorized_trace(self, model, guide, args, kwargs):
        # Each latent site's distribution is recorded before the particle
        # plate broadcasts it (for per-particle scores, pyro_vi.elbo.scores).
        return self._get_trace(
            self._vectorized_num_particles(model),
            self._vectorized_num_particles(CaptureDistributions()(guide)),
            args,
            kwargs,
        )

    def _get_trace(self, model, guide, args, kwargs):
        """One run of the guide and of the model against it: the pruned
        traces with their log-densities, and the unpruned guide trace (its
        subsample indices let the programs be replayed exactly)."""
        if isinstance(poutine.unwrap(guide), Messenger):
            raise ValueError(
                f"{type(self).__name__} needs a guide that is a Pyro program; "
                f"{type(poutine.unwrap(guide)).__name__} is a GuideMessenger "
                "(e.g. AutoNormalMessenger), which runs the model itself: use the "
                "matching autoguide (e.g. AutoNormal) instead"
            )
        if self._antithetic_pairs is not None:
            # Outside the particle plate: it sees the broadcast distributions.
            guide = self._antithetic_pairs.messenger()(guide)
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        checked_model = GuideValuesInSupport(guide_trace)(model)
        model_trace = poutine.trace(poutine.replay(checked_model, trace=guide_trace)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
            check_if_enumerated(guide_trace)
        replay_trace = guide_trace
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob()
        if self.guide_density == "path":
            _compute_path_log_prob(guide_trace)
        guide_trace.compute_score_parts()
        if is_validation_enabled():
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        check_site_shape(site, self.max_plate_nesting)
        return model_trace, guide_trace, replay_trace

    def particle_terms(self, model, guide, *args, **kwargs) -> ParticleTerms:
        """Runs the guide and the model against it with ``num_particles``
        particles and collects the per-site terms."""
        run_guide = guide if self.reparameterize else score_function_guide(guide)
        if self.max_plate_nesting == float("inf"):
            self._guess_max_plate_nesting(model, run_guide, args, kwargs)
        vectorized = self.vectorize_particles and self.num_particles > 1
        if self.antithetic:
            self._antithetic_pairs = AntitheticPairs(self.num_particles, vectorized)
        try:
            runs = list(self._get_traces(model, run_guide, args, kwargs))
        except ValueError as error:
            if "plate stack overflow" not in str(error) and f'"{_PARTICLE_PLATE}", collide' not in str(error):
                raise
            needed = _plate_nesting(_one_run(model, run_guide, args, kwargs))
            raise ValueError(
                f"{type(self).__name__}: max_plate_nesting={self.max_plate_nesting - vectorized} is less than the "
                f"{needed} plate "
                f"dims the programs use{' (the particle plate goes left of them)' if vectorized else ''}; pass "
                f"max_plate_nesting={needed}, or leave it out to have it guessed"
            ) from error
        finally:
            self._antithetic_pairs = None
        plate_dims = self.max_plate_nesting - (1 if vectorized else 0)
        wrap = self._vectorized_num_particles if vectorized else (lambda fn: fn)
        sites, params = [OrderedDict(), OrderedDict()], [OrderedDict(), OrderedDict()]
        for role in (0, 1):
            for run in runs:
                for name, site in run[role].nodes.items():
                    if site["type"] == "param":
                        params[role].setdefault(name, unconstrained(site["value"]))
                    elif site["type"] == "sample" and name not in sites[role]:
                        sites[role][name] = _site_term(
                            [r[role].nodes.get(name) for r in runs],
                            plate_dims,
                            vectorized,
                            self.num_particles,
                            is_guide=role == 1,
                        )

        def replay_guide(trace):
            return poutine.trace(poutine.replay(wrap(run_guide), trace=trace)).get_trace(*args, **kwargs)

        def read():
            return self._read_structure(wrap(model), wrap(run_guide), (model, guide), runs, args, kwargs)

        return ParticleTerms(
            model=sites[0],
            guide=sites[1],
            model_params=params[0],
            guide_params=params[1],
            num_particles=self.num_particles,
            plate_dims=plate_dims,
            vectorized=vectorized,
            runs=runs,
            replay_guide=replay_guide,
            read_structure=read,
        )

    def _read_structure(self, model, guide, key, runs, args, kwargs):
        """The programs' structure, read by replaying the real traces; reused
        only for runs with the same site names, distribution types, value
        shapes and plates (and the same model and guide)."""
        result = None
        for model_trace, _, replay_trace in runs:
            signature = key + (_signature(model_trace), _signature(replay_trace))
            if signature in self._structures:
                self._structures.move_to_end(signature)
            else:
                self._structures[signature] = read_structure(model, guide, replay_trace, args, kwargs)
                if len(self._structures) > _STRUCTURE_CACHE_SIZE:
                    self._structures.popitem(last=False)
            structure = self._structures[signature]
            result = structure if result is None else tuple(old.union(new) for old, new in zip(result, structure))
        return result

    def _terms(self, model, guide, args, kwargs):
        terms = self.particle_terms(model, guide, *args, **kwargs)
        terms.check_finite()
        self.check(terms)
        return terms

    def loss(self, model, guide, *args, **kwargs):
        """:returns: an estimate of the negative objective (no graph).
        :rtype: float"""
        with torch.no_grad():
            terms = self._terms(model, guide, args, kwargs)
            return -float(self.elbo_value(terms))

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss as a tensor, for a hand-written training loop.

        :returns: a scalar whose value is the negative estimate of the
            objective and whose gradient is the negative estimator."""
        terms = self._terms(model, guide, args, kwargs)
        elbo, surrogate = self.elbo_and_surrogate(terms)
        elbo, surrogate = torch.as_tensor(elbo), torch.as_tensor(surrogate)
        return -(elbo.detach() + (surrogate - surrogate.detach()))

    def loss_and_grads(self, model, guide, *args, **kwargs):
        """Fills ``.grad`` of every parameter the estimator touches.

        :returns: the negative estimate of the objective.
        :rtype: float"""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward(retain_graph=self.retain_graph)
        return loss.item()


def _one_run(model, guide, args, kwargs):
    """One run of the guide and of the model against it, hidden from outer
    handlers, under a forked random state: the pruned ``(model, guide)``
    traces."""
    with torch.random.fork_rng(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        checked_model = GuideValuesInSupport(guide_trace)(model)
        model_trace = poutine.trace(poutine.replay(checked_model, trace=guide_trace)).get_trace(*args, **kwargs)
    return prune_subsample_sites(model_trace), prune_subsample_sites(guide_trace)


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


def _site_term(sites, plate_dims, vectorized, num_particles, is_guide):
    """The :class:`SiteTerm` of one site from its node in each run (``None``
    in runs that did not meet it)."""
    site = next(s for s in sites if s is not None)
    name, fn = site["name"], site["fn"]
    point_mass = is_point_mass(fn)
    has_score = is_guide and not point_mass and not fn.has_rsample
    stacked = _stack([None if s is None else s["log_prob"] for s in sites], name, plate_dims, vectorized, num_particles)
    score = None
    if has_score:
        score = _stack(
            [None if s is None else _sampling_log_prob(s) for s in sites],
            name,
            plate_dims,
            vectorized,
            num_particles,
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
        plates={f.name: f.dim for f in frames if f.vectorized and f.name != _PARTICLE_PLATE},
        is_observed=site["is_observed"],
        reparameterized=not has_score,
        has_rsample=bool(site["infer"].get("has_rsample", fn.has_rsample)) or point_mass,
        is_point_mass=point_mass,
        path_only=site.get("pyro_vi_path_only", False),
        scale=site["scale"],
        subsample_scale=subsample_scale,
        subsampled_plates=frozenset(f.name for f in subsampled),
        mask=site["mask"],
    )


def _sampling_log_prob(site):
    """The unscaled log-density the site's value was drawn from (masks of
    the distribution removed: the sample was still drawn)."""
    if _has_mask(site["fn"]):
        return _without_mask(site["fn"]).log_prob(site["value"], *site["args"], **site["kwargs"])
    return site["unscaled_log_prob"]


def _stack_full(tensors, width, vectorized, num_particles):
    """Per-particle tensors (``None`` where a particle did not meet the site)
    as one ``(S,) + shape`` tensor, each left-padded to ``width`` dims."""
    padded = [None if t is None else t.reshape((1,) * (width - t.dim()) + t.shape) for t in tensors]
    if vectorized:
        return padded[0].expand((num_particles,) + padded[0].shape[1:])
    shape = torch.broadcast_shapes(*(t.shape for t in padded if t is not None))
    zero = next(t for t in padded if t is not None).new_zeros(shape)
    return torch.stack([zero if t is None else t.expand(shape) for t in padded])


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
        terms.append(log_prob.reshape((1,) * (width - log_prob.dim()) + log_prob.shape))
    if vectorized:
        (log_prob,) = terms
        return log_prob.expand((num_particles,) + log_prob.shape[1:])
    shapes = {t.shape for t in terms if t is not None}
    if len(shapes) > 1:
        raise ValueError(
            f"site '{name}' has different batch shapes in different particles: {sorted(tuple(s) for s in shapes)}; "
            "use vectorize_particles=True or give the site the same shape in "
            "every run"
        )
    (shape,) = shapes
    zero = next(t for t in terms if t is not None).new_zeros(shape)
    return torch.stack([zero if t is None else t for t in terms])
