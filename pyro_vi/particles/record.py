"""The frozen record of one ELBO evaluation, which every estimator reads.

For particles :math:`z_s \\sim q_\\lambda`, :math:`s = 1..S`: the
per-particle, per-site log-densities :math:`\\log p_i(x, z_s)` of the model
and :math:`\\log q_j(z_s)` of the guide, each with the plate dims of its
site, what an estimator may ask of a site (does it keep its pathwise
derivative, its scale, its mask), and whatever else the estimator declared
it needs (:class:`~pyro_vi.particles.run.Needs`), computed by the run phase
before any arithmetic. Nothing here runs a program.

Shapes: a site term has shape ``(S,) + plate_shape``, with one entry per plate
dim of the programs (``max_plate_nesting`` of them, right-aligned as in
Pyro; size 1 where the site is not in that plate).
"""

from dataclasses import dataclass, field
from functools import cached_property
from typing import Dict, FrozenSet, List, Optional

import torch

__all__ = ["BernoulliTerm", "Particles", "ScoreDistribution", "SiteTerm"]


@dataclass(frozen=True)
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
    :ivar bool support_moves: a random guide site whose support moves with
        the parameters (see :func:`~pyro_vi.particles.handlers.support_moves`):
        its score has a nonzero mean.
    :ivar bool path_only: ``log_prob`` was computed at stopped distribution
        parameters (``Needs.path_density``): its gradient is the path part only.
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
    support_moves: bool = False
    path_only: bool = False
    scale: object = 1.0
    subsample_scale: float = 1.0
    subsampled_plates: FrozenSet[str] = frozenset()
    mask: object = None

    @property
    def keeps_whole_density(self):
        """Whether a path estimator keeps this guide site's whole
        log-density (no score term to drop): a point mass, which has no
        score, or a site whose support moves, whose score does not average
        to zero."""
        return self.is_point_mass or self.support_moves


@dataclass(frozen=True)
class BernoulliTerm:
    """A Bernoulli guide site's logits :math:`\\theta` and values :math:`b`,
    shape ``(S,) + plate_shape + event_shape``, and where each pair of
    particles (:math:`2i, 2i + 1`) was drawn antithetically, shape
    ``(S/2,) + plate_shape + event_shape``."""

    logits: torch.Tensor
    value: torch.Tensor
    event_dim: int
    paired: torch.Tensor


@dataclass(frozen=True)
class ScoreDistribution:
    """A score site's distribution in one run, for per-particle scores: as
    the site built it inside its plates (``fn``; with one vectorized run, as
    it was before the particle plate broadcast it) and as it was sampled
    (``broadcast``, over the particles), with the sample ``value``."""

    fn: object
    broadcast: object
    value: torch.Tensor


@dataclass(frozen=True)
class Particles:
    """Per-particle, per-site log-densities of one ELBO evaluation, and what
    the estimator declared it needs.

    :ivar model: model sample sites (observed and latent), in program order.
    :ivar guide: guide sample sites, in program order.
    :ivar model_params: unconstrained parameters met in the model, by name.
    :ivar guide_params: unconstrained parameters met in the guide, by name.
    :ivar int num_particles: :math:`S`.
    :ivar int plate_dims: the number of the programs' plate dims in the terms.
    :ivar bool vectorized: whether the particles share one vectorized trace.
    :ivar signal_factors: for each guide site, the model and guide factors
        of its Markov-blanket learning signal (``Needs.structure``; see
        :func:`~pyro_vi.particles.structure.learning_signal_factors`).
    :ivar guide_dependencies: guide site -> the latent guide sites its
        density depends on directly (``Needs.structure``).
    :ivar stopped_log_q: :math:`\\log q_\\lambda(\\mathrm{stop}(z_s))` per random
        guide site with a fixed support: only the variational parameters, not the samples (nor, in a
        structured guide, the upstream samples) carry gradient
        (``Needs.stopped_guide``).
    :ivar bernoulli: the :class:`BernoulliTerm` of each Bernoulli guide site
        (``Needs.bernoulli``).
    :ivar score_distributions: per score site, its :class:`ScoreDistribution`
        in each run (``None`` where a run did not meet it) (``Needs.scores``).
    :ivar guide_param_values: the guide params' constrained values, by name
        (``Needs.scores``).
    :ivar samples: per random guide site with a fixed support, ``(its sample tensor, the number
        of batch dims of its distribution, c)`` in each run (``None`` where a
        run did not meet it), ``c`` the factor of the site's own log-density
        in the log-weight, per element (``poutine.scale`` and masks; ``1.0``
        without) (``Needs.samples``).
    """

    model: Dict[str, SiteTerm]
    guide: Dict[str, SiteTerm]
    model_params: Dict[str, torch.Tensor]
    guide_params: Dict[str, torch.Tensor]
    num_particles: int
    plate_dims: int = 0
    vectorized: bool = False
    signal_factors: Optional[dict] = field(default=None, repr=False)
    guide_dependencies: Optional[dict] = field(default=None, repr=False)
    stopped_log_q: Optional[Dict[str, torch.Tensor]] = field(default=None, repr=False)
    bernoulli: Optional[Dict[str, BernoulliTerm]] = field(default=None, repr=False)
    score_distributions: Optional[Dict[str, List[Optional[ScoreDistribution]]]] = field(default=None, repr=False)
    guide_param_values: Optional[Dict[str, torch.Tensor]] = field(default=None, repr=False)
    samples: Optional[Dict[str, list]] = field(default=None, repr=False)

    def log_p(self):
        """:math:`\\log p(x, z_s)`, shape ``(S,)``."""
        return self._totals[0]

    def log_q(self):
        """:math:`\\log q(z_s)`, shape ``(S,)``."""
        return self._totals[1]

    def log_weights(self):
        """:math:`\\log p(x, z_s) - \\log q(z_s)`, shape ``(S,)``."""
        return self.log_p() - self.log_q()

    @cached_property
    def _totals(self):
        return (
            self._total(t.log_prob for t in self.model.values()),
            self._total(t.log_prob for t in self.guide.values()),
        )

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

    def log_q_at_stopped_parameters(self):
        """Per guide site, :math:`\\log q_{\\mathrm{stop}(\\lambda)}(z(\\epsilon, \\lambda))`:
        the value of :math:`\\log q(z)` and only the gradient through the
        samples (the path derivative; the score term is stopped). A site
        already computed at stopped parameters (``SiteTerm.path_only``) is
        used as it is; for the others it is :math:`\\log q(z) - \\log
        q_\\lambda(\\mathrm{stop}(z))` plus that value, stopped.

        A point mass keeps its whole gradient: it has no score. Its
        ``log_density`` is the Jacobian term of a transform (an autoguide's
        constrained sites; ``AutoStructured``'s :math:`-\\log \\sigma` of
        :math:`z = \\mu + \\sigma \\epsilon` with a parameter-free
        :math:`\\epsilon`), whose gradient in the parameters has a nonzero
        mean: stopping it would bias the estimator. So does a site whose
        support moves with the parameters (a ``Uniform`` with learned
        bounds: :math:`E[\\partial_{\\mathrm{high}} \\log q] = -1/(\\mathrm{high} - \\mathrm{low})`),
        which therefore keeps it too (``SiteTerm.keeps_whole_density``)."""
        stopped = self.stopped_log_q
        return {
            name: (
                site.log_prob
                if site.path_only or site.keeps_whole_density
                else site.log_prob - stopped[name] + stopped[name].detach()
            )
            for name, site in self.guide.items()
        }

    def random_ancestors(self, name):
        """The random guide sites (not point masses, not factors) that the
        sample or the distribution of guide site ``name`` depends on,
        directly or through point masses (``Needs.structure``)."""
        random = {n for n, site in self.guide.items() if not site.is_point_mass and not site.is_observed}
        dependencies = self.guide_dependencies
        found, seen, frontier = set(), set(), set(dependencies.get(name, ())) - {name}
        while frontier:
            site = frontier.pop()
            seen.add(site)
            if site in random:
                found.add(site)
            else:
                frontier |= set(dependencies.get(site, ())) - seen - {site, name}
        return found

    def random_samples_independent(self):
        """Whether no random guide sample depends on another one, directly or
        through point masses (``Needs.structure``)."""
        random = [name for name, site in self.guide.items() if not site.is_point_mass and not site.is_observed]
        return not any(self.random_ancestors(name) for name in random)

    def check_finite(self):
        """Refuses a NaN or infinite log-density, naming the site. Checks the
        sum of the per-particle totals (not finite when an entry is not: an
        infinity, or NaN from two of opposite signs), and looks for the site
        only when it is not."""
        log_p, log_q = self._totals
        # a score density that is not the site's log_prob (a mask or a scale) is checked too
        other = [t.score_log_prob for t in self.score_sites() if t.score_log_prob is not t.log_prob]
        total = log_p + log_q + self._total(other) if other else log_p + log_q
        if bool(torch.isfinite(total).all()):
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

    def zeros(self, *shape):
        """Zeros with the terms' dtype and device."""
        first = self._first_term
        return torch.zeros(shape) if first is None else first.new_zeros(shape)

    @cached_property
    def _first_term(self):
        return next((term.log_prob for term in (*self.model.values(), *self.guide.values())), None)

    def _total(self, terms):
        """The sum of ``terms`` per particle, in (at least) the terms' dtype."""
        total = None
        for value in terms:
            value = value.reshape(value.shape[0], -1).sum(-1)
            total = value if total is None else total + value
        if total is None or total.dtype != self._first_term.dtype:
            return self.zeros(self.num_particles) if total is None else self.zeros(self.num_particles) + total
        return total
