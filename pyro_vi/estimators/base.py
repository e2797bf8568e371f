"""What every estimator is: a :class:`pyro.infer.ELBO` whose estimate is a
function of the particles' record."""

import torch

from .. import validation
from ..math.bounds import iwelbo, log_weights_per_point, point_scale
from ..particles import Needs, Particles, Sampler
from ..particles.pyro_compat import PyroELBO
from .refusals import check_reparameterized, check_score_supports

__all__ = ["ImportanceWeightedGradient", "ParticleELBO", "pathwise_needs"]

_PLAIN = Needs()  # reparameterized particles and their terms, nothing more


def pathwise_needs(pathwise, **needs) -> Needs:
    """What a score-function estimator with the option ``pathwise`` needs:
    with ``pathwise=True``, the guide sites that can ``rsample`` keep their
    pathwise derivative in the sticking-the-landing form (their density at
    stopped parameters) and only the others get scores; ``needs``, the rest."""
    return Needs(reparameterize=pathwise, stopped_guide=pathwise, **needs)


class ParticleELBO(PyroELBO):
    """Base class of the estimators: Pyro's ELBO arguments and plumbing.

    A subclass passes to ``__init__`` what it needs from the run phase
    (``needs``, a :class:`~pyro_vi.particles.Needs`: whether guide sites keep
    their pathwise derivative, antithetic pairs, Markov blankets, ...) and
    the fewest particles it takes (``min_particles``), and implements

    - :meth:`check`, which refuses what the estimator cannot handle: every
      entry point (``loss``, ``loss_and_grads``, ``differentiable_loss``)
      runs it on the same record, before any arithmetic;
    - :meth:`elbo_and_surrogate`, a function of the record
      (:class:`~pyro_vi.particles.Particles`) alone: it reads no state of the
      estimator and runs no program (it may attach gradient hooks to the
      record's own tensors, which live as long as this evaluation's graph).

    The loss then carries the estimate as its value and the estimator as its
    gradient: ``-(elbo + surrogate - surrogate.detach())``. Every keyword of
    :class:`pyro.infer.ELBO` is accepted with Pyro's meaning. With
    ``needs.antithetic``, ``num_particles`` counts antithetic pairs and the
    ``num_particles`` attribute holds the :math:`2\\times` as many particles
    drawn.

    :param int num_particles: the number of particles :math:`S`.
    :param max_plate_nesting: as in Pyro; guessed by running the programs once
        (under a forked random state) when left at infinity.
    :param bool vectorize_particles: draw the particles in one vectorized
        trace under an outermost plate, as Pyro does.
    """

    def __init__(
        self,
        num_particles=1,
        max_plate_nesting=float("inf"),
        vectorize_particles=False,
        *,
        needs=_PLAIN,
        min_particles=1,
        **pyro_options,
    ):
        name = type(self).__name__
        num_particles = validation.integer(f"{name}: num_particles", num_particles, minimum=min_particles)
        if max_plate_nesting != float("inf"):
            max_plate_nesting = validation.integer(f"{name}: max_plate_nesting", max_plate_nesting, minimum=0)
        vectorize_particles = validation.boolean(f"{name}: vectorize_particles", vectorize_particles)
        if needs.antithetic:  # num_particles counts antithetic pairs
            self.num_pairs = num_particles
            num_particles = 2 * num_particles
        super().__init__(  # and Pyro's other options (strict_enumeration_warning, retain_graph, ...)
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=vectorize_particles,
            **pyro_options,
        )
        self.needs = needs
        self._sampler = Sampler(num_particles, vectorize_particles and num_particles > 1, needs, name)

    # ---- the estimator: subclasses implement these -------------------------

    def check(self, particles: Particles):
        """Raises ``ValueError`` naming the site and the reason for anything
        in ``particles`` the estimator cannot handle."""

    def elbo_and_surrogate(self, particles: Particles):
        """Returns ``(elbo, surrogate)``: the objective's estimate and a
        scalar whose gradient is the estimator."""
        raise NotImplementedError

    def elbo_value(self, particles: Particles):
        """The objective's estimate alone (default: the mean log-weight)."""
        return particles.log_weights().mean()

    # ---- Pyro's interface ---------------------------------------------------

    def particles(self, model, guide, *args, **kwargs) -> Particles:
        """Runs the guide and the model against it with ``num_particles``
        particles: their checked record."""
        sampler = self._sampler
        if self.max_plate_nesting == float("inf"):  # guessed once, and kept, as Pyro does
            self.max_plate_nesting = sampler.plate_nesting(model, guide, args, kwargs) + sampler.vectorized
        particles = sampler.draw(model, guide, args, kwargs, self.max_plate_nesting - sampler.vectorized)
        particles.check_finite()
        if torch.is_grad_enabled():  # a refusal about the gradient alone: loss() takes none
            check_score_supports(particles, type(self).__name__)
        self.check(particles)
        return particles

    def loss(self, model, guide, *args, **kwargs):
        """:returns: an estimate of the negative objective (no graph).
        :rtype: float"""
        with torch.no_grad():
            return -float(self.elbo_value(self.particles(model, guide, *args, **kwargs)))

    def differentiable_loss(self, model, guide, *args, **kwargs):
        """The loss as a tensor, for a hand-written training loop.

        :returns: a scalar whose value is the negative estimate of the
            objective and whose gradient is the negative estimator."""
        elbo, surrogate = self.elbo_and_surrogate(self.particles(model, guide, *args, **kwargs))
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


class ImportanceWeightedGradient:
    """One gradient estimator of the importance-weighted bound
    :math:`\\mathcal{L}_K` (see :class:`~pyro_vi.ImportanceWeightedELBO`): what
    it needs from the run phase, what it refuses, the bound's estimate and a
    surrogate whose gradient is the estimator."""

    needs = Needs(reparameterize=True)
    min_particles = 1

    def check(self, particles, estimator):
        """Refuses, by name, what the estimator cannot take (default: a guide
        site without a pathwise derivative)."""
        check_reparameterized(particles, estimator)

    def value(self, particles):
        """:math:`\\sum_n s \\log \\frac{1}{K}\\sum_k w_{k,n}` per point of the
        independent plates, times the points' subsampling scale."""
        return iwelbo(log_weights_per_point(particles)[1], point_scale(particles))

    def estimate(self, particles):
        """``(value, surrogate)``."""
        raise NotImplementedError
