"""Sticking the landing: the path-derivative gradient of the ELBO."""

from .particles import ParticleELBO


def check_reparameterized(terms, estimator):
    """Refuses a guide site that cannot be reparameterized, by name."""
    for name in terms.guide:
        site = terms.traces[0][1].nodes[name]
        if not site["is_observed"] and not site["fn"].has_rsample:
            raise ValueError(
                "{} needs reparameterized guide sites, but site '{}' ({}) cannot "
                "rsample; use RaoBlackwellELBO or ScoreFunctionELBO for it".format(
                    estimator, name, type(site["fn"]).__name__
                )
            )


def path_log_q(terms):
    """Per guide site, :math:`\\log q(z) - \\log q(\\mathrm{stop}(z))`, whose
    gradient is the path part of :math:`\\log q` alone: the gradient of
    :math:`\\log q_{\\mathrm{stop}(\\lambda)}(z(\\epsilon, \\lambda))`. Its value
    is 0. An autoguide's ``Delta`` sites, whose log-density is the
    log-Jacobian of a transform of an auxiliary sample, are path entirely:
    run on stopped samples they contribute nothing to the second term."""
    stopped = terms.stopped_guide_log_prob()
    return {name: term.log_prob - stopped[name] for name, term in terms.guide.items()}


class StickingTheLandingELBO(ParticleELBO):
    """The path-derivative ("sticking the landing") gradient of the ELBO,
    Roeder et al. [1], Algorithm 2:

    .. math::

        \\hat g = \\frac{1}{S} \\sum_s \\nabla_\\lambda \\left[
            \\log p(x, z(\\epsilon_s, \\lambda))
            - \\log q_{\\mathrm{stop}(\\lambda)}(z(\\epsilon_s, \\lambda)) \\right].

    The reparameterized gradient of Trace_ELBO is this plus the score term
    :math:`-\\nabla_\\lambda \\log q_\\lambda(z)|_{z\\ \\mathrm{fixed}}`, whose
    expectation is zero; dropping it keeps the estimator unbiased and makes
    its variance vanish when q equals the posterior. The variational
    parameters are stopped inside :math:`\\log q` only; the samples keep their
    path to the model, so model (decoder) parameters get the same gradient as
    under Trace_ELBO. The surrogate
    :math:`\\log p(x, z) - \\log q(z) + \\log q(\\mathrm{stop}(z))` needs no copy of
    the guide, so hand-written guides, autoguides and ``pyro.module``
    encoders all work. Every guide site must be reparameterizable.

    **References**

    [1] Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
        Variational Inference, Geoffrey Roeder, Yuhuai Wu, David Duvenaud (NIPS 2017)
    """

    def elbo_and_surrogate(self, terms):
        check_reparameterized(terms, type(self).__name__)
        log_weights = terms.log_weights()
        surrogate = terms.log_p()
        for term in path_log_q(terms).values():
            surrogate = surrogate - term.reshape(term.shape[0], -1).sum(-1)
        return log_weights.mean(), surrogate.mean()
