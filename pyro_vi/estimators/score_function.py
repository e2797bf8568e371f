"""Black-box variational inference, Algorithm 1 (score function, REINFORCE)."""

from ..math.surrogates import score_function_surrogate
from ..particles import Needs
from .base import ParticleELBO

__all__ = ["ScoreFunctionELBO"]


class ScoreFunctionELBO(ParticleELBO):
    """The score-function (REINFORCE) gradient of the ELBO, BBVI Algorithm 1
    [1]:

    .. math::

        \\hat g = \\frac{1}{S} \\sum_{s=1}^S
            \\nabla_\\lambda \\log q_\\lambda(z_s)
            \\left(\\log p(x, z_s) - \\log q_\\lambda(z_s)\\right),
        \\qquad z_s \\sim q_\\lambda.

    Every random guide site is treated as non-reparameterized, even where
    its distribution could ``rsample``: the samples reach the model detached.
    The term :math:`-\\nabla_\\lambda \\log q` of the ELBO itself is left out:
    its expectation is zero, and Algorithm 1 does not have it. Point masses
    (``Delta``, ``AutoDelta``) have no score: their gradient is exact through
    their path, as in ``Trace_ELBO``. Model parameters :math:`\\theta` get
    :math:`\\frac{1}{S}\\sum_s \\nabla_\\theta \\log p_\\theta(x, z_s)`.
    Unbiased; works with any guide: hand-written, autoguides, ``pyro.module``
    encoders, flows, discrete sites.

    **References**

    [1] Black Box Variational Inference,
        Rajesh Ranganath, Sean Gerrish, David M. Blei (AISTATS 2014)
    """

    def __init__(self, num_particles=1, **kwargs):
        super().__init__(num_particles, needs=Needs(reparameterize=False), **kwargs)

    def elbo_and_surrogate(self, particles):
        log_weights = particles.log_weights()
        return log_weights.mean(), score_function_surrogate(particles, log_weights).mean()
