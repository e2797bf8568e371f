"""DisARM (Dong, Mnih and Tucker 2020): antithetic pairs for Bernoulli
guide sites, the augmentation integrated out."""

from .particles import ParticleELBO
from .surrogate import check_antithetic, disarm_term, markov_blanket_signals, pathwise_surrogate

__all__ = ["DisARMELBO"]


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

    Guide sites that can ``rsample`` keep their pathwise derivative, in the
    sticking-the-landing form (unbiased), drawn independently in every
    particle; point masses keep their exact gradient. A guide site that is
    neither Bernoulli nor reparameterizable (a Categorical, a
    ``has_rsample=False`` site, a guide ``pyro.factor`` without a pathwise
    derivative) is refused by name: we chose not to extend the pair to
    Categorical sites (ARSM-style antithetic sets cost more than two
    evaluations per step, and a binary encoding of categories changes the
    guide); use :class:`~pyro_vi.ReinforceLeaveOneOutELBO` or
    :class:`~pyro_vi.RaoBlackwellELBO` for them. So is a Bernoulli whose
    distribution depends on another random guide sample, since the two
    particles of a pair must share it. For the importance-weighted bound,
    ``ImportanceWeightedELBO(gradient="disarm")`` is the local DisARM
    variant.

    **References**

    [1] DisARM: An Antithetic Gradient Estimator for Binary Latent Variables,
        Zhe Dong, Andriy Mnih, George Tucker (NeurIPS 2020)

    [2] ARM: Augment-REINFORCE-Merge Gradient for Stochastic Binary Networks,
        Mingzhang Yin, Mingyuan Zhou (ICLR 2019)
    """

    antithetic = True

    def __init__(self, num_particles=1, **kwargs):
        super().__init__(num_particles=num_particles, **kwargs)

    def check(self, terms):
        check_antithetic(terms, type(self).__name__)

    def elbo_and_surrogate(self, terms):
        log_weights = terms.log_weights().detach()
        surrogate = pathwise_surrogate(terms).mean()
        if terms.score_sites():
            surrogate = surrogate + disarm_term(terms, markov_blanket_signals(terms))
        return log_weights.mean(), surrogate
