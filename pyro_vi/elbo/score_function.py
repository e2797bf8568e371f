"""Black-box variational inference, Algorithm 1 (score function, REINFORCE)."""

from .particles import ParticleELBO


def score_function_surrogate(log_p, log_q, log_weights):
    """The surrogate of BBVI Algorithm 1.

    With samples detached (no pathwise derivative),

    .. math::

        \\nabla_\\lambda \\frac{1}{S}\\sum_s \\log q_\\lambda(z_s)\\,
            \\mathrm{stop}(L_s) = \\frac{1}{S}\\sum_s h_s L_s,
        \\qquad
        \\nabla_\\theta \\frac{1}{S}\\sum_s \\log p_\\theta(x, z_s)
            = \\frac{1}{S}\\sum_s \\nabla_\\theta \\log p_\\theta(x, z_s),

    where :math:`L_s = \\log p(x, z_s) - \\log q(z_s)` and
    :math:`h_s = \\nabla_\\lambda \\log q_\\lambda(z_s)`. The term
    :math:`-\\nabla_\\lambda \\log q` of the ELBO itself is left out: its
    expectation is zero, and Algorithm 1 does not have it.

    :param log_p: :math:`\\log p(x, z_s)`, shape ``(S,)``.
    :param log_q: :math:`\\log q(z_s)` (unscaled, see
        :attr:`~pyro_vi.elbo.particles.SiteTerm.score_log_prob`), shape ``(S,)``.
    :param log_weights: :math:`L_s`, shape ``(S,)``; detached here.
    """
    return (log_q * log_weights.detach() + log_p).mean()


class ScoreFunctionELBO(ParticleELBO):
    """The score-function (REINFORCE) gradient of the ELBO, BBVI Algorithm 1
    [1]:

    .. math::

        \\hat g = \\frac{1}{S} \\sum_{s=1}^S
            \\nabla_\\lambda \\log q_\\lambda(z_s)
            \\left(\\log p(x, z_s) - \\log q_\\lambda(z_s)\\right),
        \\qquad z_s \\sim q_\\lambda.

    Every guide site is treated as non-reparameterized, even where its
    distribution could ``rsample``: the samples reach the model detached.
    Model parameters :math:`\\theta` get
    :math:`\\frac{1}{S}\\sum_s \\nabla_\\theta \\log p_\\theta(x, z_s)`.
    Works with any guide: hand-written, autoguides, ``pyro.module`` encoders.

    **References**

    [1] Black Box Variational Inference,
        Rajesh Ranganath, Sean Gerrish, David M. Blei (AISTATS 2014)
    """

    reparameterized = False

    def elbo_and_surrogate(self, terms):
        log_p = terms.log_p()
        log_weights = log_p - terms.log_q()
        return log_weights.mean(), score_function_surrogate(
            log_p, terms.score_log_q(), log_weights
        )
