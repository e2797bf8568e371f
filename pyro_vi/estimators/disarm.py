"""DisARM (Dong, Mnih and Tucker 2020): antithetic pairs for Bernoulli
guide sites, the augmentation integrated out."""

from ..math.antithetic import disarm_term, local_disarm_term
from ..math.bounds import iwelbo, log_weights_per_point, point_scale
from ..math.signals import markov_blanket_signals
from ..math.surrogates import pathwise_surrogate
from ..particles import Needs
from .base import ImportanceWeightedGradient, ParticleELBO
from .refusals import check_antithetic

__all__ = ["DisARMELBO", "LocalDisARM"]


class DisARMELBO(ParticleELBO):
    """The DisARM gradient [1] of the ELBO for Bernoulli guide sites. For
    logits :math:`\\theta` and one uniform :math:`u` per element, the pair
    :math:`b = 1[u < \\sigma(\\theta)]`, :math:`b' = 1[1 - u < \\sigma(\\theta)]`
    (two exact, antithetic draws from :math:`q`) gives

    .. math::

        \\hat g_\\theta = \\tfrac{1}{2}\\bigl(L(b) - L(b')\\bigr)\\,
            (-1)^{b'}\\, 1[b \\ne b']\\, \\sigma(|\\theta|),

    which is ARM's estimator [2] with the augmenting uniform integrated out
    given the pair: **unbiased**, and never of higher variance than ARM.
    :math:`L` is each site's Markov-blanket learning signal (as in
    :class:`~pyro_vi.RaoBlackwellELBO`, element-wise inside plates): the
    other factors do not depend on :math:`b`, and the other sites' uniforms
    are independent of :math:`u`, so dropping them keeps the estimate
    unbiased. The gradient reaches :math:`\\theta`, and through it the
    parameters or encoder that compute the logits (``logits=`` or
    ``probs=``).

    ``num_particles`` counts antithetic **pairs**: each step runs the
    programs :math:`2M` times for ``num_particles = M`` (the ``num_particles``
    attribute becomes :math:`2M`); the ELBO is the mean log-weight of all
    :math:`2M` particles. With one pair it costs what
    :class:`~pyro_vi.ReinforceLeaveOneOutELBO` costs with two particles.

    **Sequential Bernoulli sites.** A Bernoulli site may depend on earlier
    guide sites (attend-infer-repeat's "is there another object?"). The pair
    then shares every upstream sample: at a guide site that some Bernoulli
    site depends on, the two particles draw one sample where their
    distributions agree, and each Bernoulli element whose :math:`\\theta`
    agrees in the pair is drawn antithetically, given the shared history
    (:class:`~pyro_vi.particles.handlers.AntitheticPairs`). The estimate above
    needs only the same :math:`\\theta` in both particles and each particle's
    signal unbiased given its own draw, so it stays **unbiased**. Where the
    pair's :math:`\\theta` differ (their histories diverged at an earlier
    element where :math:`b \\ne b'`), each particle's element is drawn on its
    own and gets the score function with the other particles' mean signal as
    baseline, also unbiased: the coupling never changes the law of a
    particle given its own history.

    Other guide sites that can ``rsample`` keep their pathwise derivative, in
    the sticking-the-landing form (unbiased); point masses keep their exact
    gradient. A guide site that is neither Bernoulli nor reparameterizable (a
    Categorical, a ``has_rsample=False`` site, a guide ``pyro.factor``
    without a pathwise derivative) is refused by name: use
    :class:`~pyro_vi.AutoELBO`, which gives such sites REINFORCE
    leave-one-out, or :class:`~pyro_vi.ReinforceLeaveOneOutELBO`. For the
    importance-weighted bound, ``ImportanceWeightedELBO(gradient="disarm")``
    is the local DisARM variant (:class:`LocalDisARM`).

    **References**

    [1] DisARM: An Antithetic Gradient Estimator for Binary Latent Variables,
        Zhe Dong, Andriy Mnih, George Tucker (NeurIPS 2020)

    [2] ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks,
        Mingzhang Yin, Mingyuan Zhou (ICLR 2019)
    """

    def __init__(self, num_particles=1, **kwargs):
        needs = Needs(antithetic=True, bernoulli=True, structure=True, stopped_guide=True)
        super().__init__(num_particles, needs=needs, **kwargs)

    def check(self, particles):
        check_antithetic(particles, type(self).__name__)

    def elbo_and_surrogate(self, particles):
        log_weights = particles.log_weights().detach()
        surrogate = pathwise_surrogate(particles).mean()
        if particles.score_sites():
            surrogate = surrogate + disarm_term(particles, markov_blanket_signals(particles))
        return log_weights.mean(), surrogate


class LocalDisARM(ImportanceWeightedGradient):
    """``gradient="disarm"`` of :class:`~pyro_vi.ImportanceWeightedELBO`,
    local DisARM [1], **unbiased**: for guides whose sites without a pathwise
    derivative are all Bernoulli, ``num_particles = K`` antithetic **pairs**
    are drawn (:math:`2K` model evaluations: the ``num_particles`` attribute
    becomes :math:`2K`). The bound :math:`\\mathcal{L}_K` is estimated on the
    pairs' first particles :math:`b_{1:K}` and on their second particles
    :math:`b'_{1:K}`, and the two estimates averaged; sample :math:`k`'s
    DisARM estimate swaps :math:`b_k` for its partner with the others fixed,
    :math:`\\frac{1}{2}(\\hat L(b_{1:K}) - \\hat L(b'_k, b_{-k}))
    (-1)^{b'_k} 1[b_k \\ne b'_k] \\sigma(|\\theta_k|)` (and symmetrically,
    :func:`~pyro_vi.math.antithetic.local_disarm_term`), plus the pathwise
    gradient at fixed Bernoulli samples. A site that is neither Bernoulli nor
    reparameterizable is refused by name, as is a Bernoulli whose
    distribution depends on another random guide sample.

    **References**

    [1] DisARM: An Antithetic Gradient Estimator for Binary Latent Variables,
        Zhe Dong, Andriy Mnih, George Tucker (NeurIPS 2020)
    """

    needs = Needs(antithetic=True, bernoulli=True, structure=True)

    def check(self, particles, estimator):
        check_antithetic(particles, f"{estimator}(gradient='disarm')", pairs_follow_history=False)

    def value(self, particles):
        log_w, scale = log_weights_per_point(particles)[1], point_scale(particles)
        return 0.5 * (iwelbo(log_w[0::2], scale) + iwelbo(log_w[1::2], scale))

    def estimate(self, particles):
        value = self.value(particles)
        log_w = log_weights_per_point(particles)[1]
        return value, value + local_disarm_term(particles, log_w, point_scale(particles))
