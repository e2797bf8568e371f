"""Black-box variational inference, Algorithm 2 without Rao-Blackwellization:
the score-function gradient with a control variate per scalar parameter."""

from .. import validation
from ..math.control_variates import check_coefficient, check_coordinates, controlled_surrogate, warn_if_costly
from ..math.surrogates import pathwise_surrogate
from .base import ParticleELBO, pathwise_needs

__all__ = ["ControlVariateELBO"]


class ControlVariateELBO(ParticleELBO):
    """The score-function gradient with a control variate for every scalar
    variational parameter, BBVI Algorithm 2 without Rao-Blackwellization [1]:

    .. math::

        f_d[s] = h_d[s] L_s, \\quad
        a^*_d = \\frac{\\mathrm{Cov}(f_d, h_d)}{\\mathrm{Var}(h_d)}, \\quad
        \\hat g_d = \\frac{1}{S} \\sum_s \\left(f_d[s] - a_d h_d[s]\\right),

    with :math:`h_s = \\nabla_\\lambda \\log q_\\lambda(z_s)` and
    :math:`L_s = \\log p(x, z_s) - \\log q_\\lambda(z_s)`. The score has mean
    zero, so any coefficient independent of :math:`z_s` keeps the estimator
    unbiased; :math:`a^*` is the one that minimises its variance.

    :param coefficient: ``"leave_one_out"`` (the default) gives particle
        :math:`s` the coefficient :math:`a^{(-s)}` estimated from the other
        particles, independent of :math:`z_s`: the estimator is **unbiased**
        and SVI converges to the optimum of the ELBO at any ``S``; it needs
        ``num_particles >= 3``. ``"pooled"`` estimates :math:`a^*` from all
        ``S`` particles, as the published algorithm does; the coefficient
        then correlates with each :math:`h_s` and the gradient is **biased**
        by :math:`O(1/S)` (it needs ``num_particles >= 2``). A number fixes
        the coefficient of every parameter (``0.0`` gives
        :class:`~pyro_vi.ScoreFunctionELBO`'s estimator).
    :param str coordinates: where the coefficients live.
        ``"distributions"`` (the default): one per scalar of the guide's
        distributions (their ``loc``, ``logits``, ...) as each site builds
        them inside its plates (a Normal's ``loc`` and ``scale`` have its
        batch shape, whatever shapes the parameters have, and whatever
        ``vectorize_particles`` is), whose controlled gradients reach the
        parameters in one backward pass. ``"parameters"``
        (BBVI's): one per scalar variational parameter, from per-particle
        gradients of every parameter. The two are the same estimator for a
        mean-field guide whose parameters map element by element onto its
        distributions (every guide of the course). For an amortized guide the
        default has a coefficient per data point and latent, the other one
        per network weight: estimated from a few particles, those are noisy
        enough to multiply the gradient's variance many times over (the
        README's Bernoulli VAE section measures it), and they cost an extra
        O(S x B x P) for a batch of B (see
        :func:`~pyro_vi.math.control_variates.controlled_surrogate`): 8
        times a ``Trace_ELBO`` step on a 13.4-million-weight encoder, 5 to 6
        times on a 1.3-million one, 2 times on a 0.2-million one (10
        particles, batch 100; 12 to 15, 7 and 2 times for
        :class:`~pyro_vi.RaoBlackwellELBO`; two runs of the README's scaling
        benchmark).
        Chosen on a guide of more than a million weights, it warns once
        (``UserWarning``).
    :param bool pool_processes: under :mod:`torch.distributed`, with each
        process on its shard of the data: the processes draw the same
        particles (a seed from rank 0 at each call,
        :func:`~pyro_vi.training.distributed.shared_random_stream`). The estimator is
        linear in its learning signal at fixed particles, so the average of
        the processes' gradients is then this estimator with the signal of
        all the data: the one-process estimator, **unbiased**, with one
        process's variance. With independent particles (the default) each
        process's signal targets its own shard's objective, whose gradient
        does not vanish at the optimum, and no coefficient, per process or
        pooled, cancels it: the gradient is far noisier than one process's,
        and pooling the coefficients' statistics over the processes (what
        this option did before) made it noisier still (the README's
        distributed SVI section measures both). With the same data on every
        process, every process would compute the same gradient: ``fit``
        refuses it. Costs one broadcast per call; every process must call the
        estimator the same number of times.

    Point masses keep their exact pathwise gradient, as in
    :class:`~pyro_vi.ScoreFunctionELBO`; model parameters get
    :math:`\\frac{1}{S}\\sum_s \\nabla_\\theta \\log p_\\theta(x, z_s)`. The
    gradient is assembled per parameter; the surrogate is the linear
    function :math:`\\sum_d \\mathrm{stop}(\\hat g_d) \\lambda_d`, whose gradient
    is :math:`\\hat g`.

    With ``pathwise=True``, guide sites that can ``rsample`` keep their
    pathwise derivative in the sticking-the-landing form (Roeder et al. [2],
    **unbiased**) and only the others (discrete sites, ``has_rsample=False``)
    get the controlled score function, with the whole log-weight as their
    signal. Not the default, for the reason given in
    :class:`~pyro_vi.RaoBlackwellELBO`.

    **References**

    [1] Black Box Variational Inference,
        Rajesh Ranganath, Sean Gerrish, David M. Blei (AISTATS 2014)

    [2] Sticking the Landing: Simple, Lower-Variance Gradient Estimators for
        Variational Inference, Geoffrey Roeder, Yuhuai Wu, David Duvenaud (NIPS 2017)
    """

    def __init__(
        self,
        num_particles=10,
        coefficient="leave_one_out",
        pathwise=False,
        coordinates="distributions",
        pool_processes=False,
        **kwargs,
    ):
        name = type(self).__name__
        min_particles = check_coefficient(coefficient, name)
        self.coefficient = coefficient
        self.pathwise = validation.boolean(f"{name}: pathwise", pathwise)
        self.coordinates = check_coordinates(coordinates, name)
        self._warned_cost = False
        self.pool_processes = validation.boolean(f"{name}: pool_processes", pool_processes)
        needs = pathwise_needs(self.pathwise, scores=True, same_in_every_process=self.pool_processes)
        super().__init__(num_particles, needs=needs, min_particles=min_particles, **kwargs)

    def check(self, particles):
        if self.coordinates == "parameters" and not self._warned_cost:
            self._warned_cost = warn_if_costly(particles, type(self).__name__)

    def elbo_and_surrogate(self, particles):
        log_weights = particles.log_weights().detach()
        surrogate = pathwise_surrogate(particles).mean() + controlled_surrogate(
            particles, self.coefficient, signal=log_weights, coordinates=self.coordinates
        )
        return log_weights.mean(), surrogate
