"""An estimator that chooses, per guide site, the gradient estimator this
library's evidence says is best for that kind of site."""

import logging

from .. import validation
from ..math.antithetic import disarm_term
from ..math.signals import leave_one_out_signals, markov_blanket_signals
from ..math.surrogates import pathwise_surrogate, rao_blackwell_term
from ..particles import Needs
from .base import ParticleELBO

__all__ = ["AutoELBO"]

logger = logging.getLogger(__name__)

PATHWISE = "pathwise (sticking the landing)"
DISARM = "DisARM pairs"
REINFORCE = "REINFORCE leave-one-out"
EXACT = "exact (point mass)"


class AutoELBO(ParticleELBO):
    """The ELBO with, at each guide site, its own gradient estimator:

    - a site that can ``rsample``: the pathwise gradient in the
      sticking-the-landing form [1],
      :math:`\\nabla_\\lambda[\\log p(x, z) - \\log q_{\\mathrm{stop}(\\lambda)}(z)]`;
    - a Bernoulli site: DisARM [2] on antithetic pairs of particles, where
      no Bernoulli site of the guide depends on another latent guide site
      (a layer of Bernoulli units given the data, as in the Bernoulli VAE);
      where one does (a sequence, as in attend-infer-repeat), every
      Bernoulli site gets REINFORCE leave-one-out below instead, the
      particles drawn without pairs;
    - any other site without a pathwise derivative (a Categorical, a
      ``has_rsample=False`` site, a guide ``pyro.factor``): the score function
      with its Markov-blanket signal and the mean signal of the other
      particles as baseline (REINFORCE leave-one-out [3]: a pair's coupling
      never changes the law of one particle given its own history, so the
      partner's signal is a valid baseline too);
    - a point mass: its exact gradient, as in ``Trace_ELBO``.

    Each piece is **unbiased**, so the sum is. The choice follows the
    measurements of the README: the pathwise gradient beats the score
    function with control variates wherever it exists on the course's models;
    DisARM has the lowest variance of the Bernoulli estimators at two
    evaluations per element on the Bernoulli VAE, while on the scene model's
    sequence of Bernoulli sites REINFORCE leave-one-out ends with the better
    ELBO and counts (the README's "Counting objects"); on Categorical sites REINFORCE leave-one-out has
    far lower variance than per-weight control-variate coefficients at a few
    particles (the semi-supervised VAE study). What it chose is
    :attr:`summary`, also logged once at ``INFO`` level.

    :param int num_particles: the number of particles :math:`S`, even: they
        are drawn as :math:`S/2` antithetic pairs.

    **References**

    [1] Sticking the Landing, Geoffrey Roeder, Yuhuai Wu, David Duvenaud (NIPS 2017)

    [2] DisARM: An Antithetic Gradient Estimator for Binary Latent Variables,
        Zhe Dong, Andriy Mnih, George Tucker (NeurIPS 2020)

    [3] Buy 4 REINFORCE Samples, Get a Baseline for Free!, Wouter Kool,
        Herke van Hoof, Max Welling (ICLR 2019 workshop DeepRLStructPred)
    """

    def __init__(self, num_particles=10, **kwargs):
        num_particles = validation.integer("AutoELBO: num_particles", num_particles, minimum=2)
        if num_particles % 2:
            raise ValueError(
                f"AutoELBO: num_particles must be even (the particles are drawn in antithetic pairs), got "
                f"{num_particles}; pass {num_particles + 1}"
            )
        needs = Needs(
            antithetic=True, pair_dependent_bernoulli=False, bernoulli=True, structure=True, stopped_guide=True
        )
        super().__init__(num_particles // 2, needs=needs, **kwargs)
        self.summary = None

    def check(self, particles):
        self._report(particles)

    def elbo_and_surrogate(self, particles):
        log_weights = particles.log_weights().detach()
        surrogate = pathwise_surrogate(particles).mean()
        signals = markov_blanket_signals(particles) if particles.score_sites() else {}
        pairs = {name: signal for name, signal in signals.items() if name in particles.bernoulli}
        if pairs:
            surrogate = surrogate + disarm_term(particles, pairs)
        others = leave_one_out_signals({name: signal for name, signal in signals.items() if name not in pairs})
        if others:
            surrogate = surrogate + rao_blackwell_term(particles, others).mean()
        return log_weights.mean(), surrogate

    def choices(self, particles):
        """``{site: the estimator it gets}`` for the latent guide sites."""
        found = {}
        for name, site in particles.guide.items():
            if site.is_point_mass:
                found[name] = EXACT
            elif site.score_log_prob is None:
                found[name] = PATHWISE
            else:
                paired = name in particles.bernoulli and bool(particles.bernoulli[name].paired.any())
                found[name] = DISARM if paired else REINFORCE
        return found

    def _report(self, particles):
        by_kind = {}
        for name, kind in self.choices(particles).items():
            by_kind.setdefault(kind, []).append(name)
        summary = "AutoELBO: " + "; ".join(f"{kind}: {', '.join(names)}" for kind, names in by_kind.items())
        if summary != self.summary:
            self.summary = summary
            logger.info(summary)
