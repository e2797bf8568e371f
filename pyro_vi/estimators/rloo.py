"""REINFORCE with a leave-one-out baseline (Kool et al. 2019), per site
with Markov-blanket signals."""

from .. import validation
from ..math.signals import leave_one_out_signals, markov_blanket_signals
from ..math.surrogates import pathwise_surrogate, rao_blackwell_term
from .base import ParticleELBO, pathwise_needs

__all__ = ["ReinforceLeaveOneOutELBO"]


class ReinforceLeaveOneOutELBO(ParticleELBO):
    """The score-function gradient with the leave-one-out baseline of Kool,
    van Hoof and Welling [1]: each particle's learning signal minus the mean
    of the other particles' signals,

    .. math::

        \\hat g_j = \\frac{1}{S} \\sum_s \\nabla_{\\lambda} \\log q_j(z_{j,s})
            \\Bigl(L^{(j)}_s - \\frac{1}{S-1} \\sum_{s' \\ne s} L^{(j)}_{s'}\\Bigr)
          = \\frac{1}{S-1} \\sum_s \\nabla_{\\lambda} \\log q_j(z_{j,s})
            \\bigl(L^{(j)}_s - \\bar L^{(j)}\\bigr),

    for every guide site :math:`j` with a score, where :math:`L^{(j)}` is the
    site's Markov-blanket learning signal (as in
    :class:`~pyro_vi.RaoBlackwellELBO`: the model and guide factors that
    contain :math:`z_j`, element-wise inside plates). The baseline of
    particle :math:`s` does not depend on :math:`z_s`, so the estimator is
    **unbiased**; it needs ``num_particles >= 2``.

    How it differs from the leave-one-out *coefficient* of
    :class:`~pyro_vi.ControlVariateELBO` and
    :class:`~pyro_vi.RaoBlackwellELBO`: those fit, for every scalar
    parameter :math:`d`, the variance-minimising multiple
    :math:`a^{(-s)}_d = \\mathrm{Cov}(f_d, h_d)/\\mathrm{Var}(h_d)` of the score
    :math:`h_d` from the other particles, which needs per-particle score
    gradients (:math:`O(S \\times P)`); here one baseline per site element,
    the other particles' mean signal, serves every parameter, and the
    estimator costs one backward pass, like the plain score function. The
    coefficient adapts to each parameter (and can beat the mean signal when
    signal and score are correlated); the baseline is cheap and exactly the
    mean of the signal, which is what :math:`a^*` tends to when the score
    and signal are nearly independent.

    With ``pathwise=True``, guide sites that can ``rsample`` keep their
    pathwise derivative in the sticking-the-landing form (unbiased), and only
    the others get the score with the leave-one-out baseline; the default
    (``False``) is REINFORCE for every random site, as the name says. Point
    masses keep their exact gradient; model parameters get
    :math:`\\frac{1}{S}\\sum_s \\nabla_\\theta \\log p_\\theta(x, z_s)`.

    **References**

    [1] Buy 4 REINFORCE Samples, Get a Baseline for Free!, Wouter Kool,
        Herke van Hoof, Max Welling (ICLR 2019 workshop DeepRLStructPred)
    """

    def __init__(self, num_particles=10, pathwise=False, **kwargs):
        self.pathwise = validation.boolean(f"{type(self).__name__}: pathwise", pathwise)
        needs = pathwise_needs(self.pathwise, structure=True)
        super().__init__(num_particles, needs=needs, min_particles=2, **kwargs)

    def elbo_and_surrogate(self, particles):
        log_weights = particles.log_weights().detach()
        surrogate = pathwise_surrogate(particles).mean()
        if particles.score_sites():
            signals = leave_one_out_signals(markov_blanket_signals(particles))
            surrogate = surrogate + rao_blackwell_term(particles, signals).mean()
        return log_weights.mean(), surrogate
