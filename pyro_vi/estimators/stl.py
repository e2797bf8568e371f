"""Sticking the landing: the path-derivative gradient of the ELBO."""

from ..math.signals import per_particle
from ..particles import Needs
from .base import ParticleELBO
from .refusals import check_reparameterized

__all__ = ["StickingTheLandingELBO"]


class StickingTheLandingELBO(ParticleELBO):
    """The path-derivative ("sticking the landing") gradient of the ELBO,
    Roeder et al. [1], Algorithm 2:

    .. math::

        \\hat g = \\frac{1}{S} \\sum_s \\nabla_\\lambda \\left[
            \\log p(x, z(\\epsilon_s, \\lambda))
            - \\log q_{\\mathrm{stop}(\\lambda)}(z(\\epsilon_s, \\lambda)) \\right].

    The reparameterized gradient of Trace_ELBO is this plus the score term
    :math:`-\\nabla_\\lambda \\log q_\\lambda(z)|_{z\\ \\mathrm{fixed}}`, whose
    expectation is zero; dropping it keeps the estimator **unbiased** and
    makes its variance vanish when q equals the posterior. The variational
    parameters are stopped inside :math:`\\log q` only; the samples keep their
    path to the model, so model (decoder) parameters get the same gradient as
    under Trace_ELBO. The surrogate
    :math:`\\log p(x, z) - \\log q(z) + \\log q(\\mathrm{stop}(z))` needs no copy of
    the guide, so hand-written guides, autoguides, flows and ``pyro.module``
    encoders all work. Every guide site must be reparameterizable. Point
    masses are, and keep their whole gradient, the MAP gradient and that of
    their ``log_density``: an autoguide's Jacobian term has no score to drop
    (on ``AutoStructured``, whose random sites are parameter-free, this is
    ``Trace_ELBO``'s gradient).

    **References**

    [1] Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
        Variational Inference, Geoffrey Roeder, Yuhuai Wu, David Duvenaud (NIPS 2017)
    """

    def __init__(self, num_particles=1, **kwargs):
        super().__init__(num_particles, needs=Needs(path_density=True, stopped_guide=True), **kwargs)

    def check(self, particles):
        check_reparameterized(particles, type(self).__name__)

    def elbo_and_surrogate(self, particles):
        # log p - log q_stop(lambda)(z(eps, lambda)): the value of log p - log q,
        # the path derivative only.
        surrogate = particles.log_p()
        for term in particles.log_q_at_stopped_parameters().values():
            surrogate = surrogate - per_particle(term)
        return particles.log_weights().mean(), surrogate.mean()
