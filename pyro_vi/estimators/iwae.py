"""The importance-weighted bound (Burda, Grosse and Salakhutdinov 2016), with
its gradient estimators as small strategy objects."""

import dataclasses

from .. import validation
from ..math.bounds import iwelbo, log_weights_per_point, normalized_weights, per_point, point_scale
from ..particles import Needs
from .base import ImportanceWeightedGradient, ParticleELBO
from .disarm import LocalDisARM
from .dreg import DReG
from .refusals import check_importance_weighted
from .vimco import VIMCO

__all__ = ["GRADIENTS", "ImportanceWeightedELBO", "Reparameterized", "StickingTheLanding"]


class Reparameterized(ImportanceWeightedGradient):
    """``gradient="reparam"`` (IWAE, **unbiased** for :math:`\\nabla
    \\mathcal{L}_K`): :math:`\\sum_k \\tilde w_k \\nabla \\log w_k`, the
    reparameterized gradient of the bound itself."""

    def estimate(self, particles):
        value = self.value(particles)
        return value, value


class StickingTheLanding(ImportanceWeightedGradient):
    """``gradient="stl"``: :math:`\\sum_k \\tilde w_k \\nabla \\log w_k` with the
    score part of :math:`\\log q` dropped from :math:`\\nabla_\\phi \\log w_k`
    (Roeder et al. [2]). **Biased** for :math:`K > 1`: the dropped term
    :math:`-\\sum_k \\tilde w_k \\nabla_\\phi \\log q_\\phi(z_k)` has a nonzero
    expectation because :math:`\\tilde w_k` depends on :math:`z_k` (Tucker et
    al. [3]); unbiased for :math:`K = 1`, where it is
    :class:`~pyro_vi.StickingTheLandingELBO`."""

    needs = Needs(path_density=True, stopped_guide=True)

    def estimate(self, particles):
        log_p, log_w = log_weights_per_point(particles)
        weights = point_scale(particles) * normalized_weights(log_w)
        path_log_w = log_p - per_point(particles, particles.log_q_at_stopped_parameters(), particles.guide)
        return iwelbo(log_w, point_scale(particles)), (weights * path_log_w).sum()


#: ``gradient=`` name -> its estimator
GRADIENTS = {
    "reparam": Reparameterized,
    "stl": StickingTheLanding,
    "dreg": DReG,
    "vimco": VIMCO,
    "disarm": LocalDisARM,
}


class ImportanceWeightedELBO(ParticleELBO):
    """The importance-weighted bound of Burda et al. [1] with
    :math:`K` = ``num_particles``:

    .. math::

        \\mathcal{L}_K = E\\left[\\log \\frac{1}{K}\\sum_{k=1}^K w_k\\right],
        \\qquad w_k = \\frac{p(x, z_k)}{q(z_k)}, \\quad z_k \\sim q,

    with :math:`\\log p(X) \\ge \\mathcal{L}_K \\ge \\mathcal{L}_{K-1} \\ge \\dots \\ge
    \\mathcal{L}_1 = \\mathrm{ELBO}`. When every model and guide site lies in a
    plate (a VAE's data plate), the weights factorize over it and the bound
    is taken per data point, :math:`\\sum_n \\log \\frac{1}{K}\\sum_k w_{k,n}`
    (the IWAE objective). When some site is global (one latent shared by all
    data), the bound is over the whole joint, as Pyro's ``RenyiELBO(alpha=0)``
    computes it. Computed with log-sum-exp, stable for K in the thousands.

    Subsampling: when the subsampled plate holds every site, each point's
    bound is estimated without bias and multiplied by :math:`N/B`; a site
    outside a subsampled plate (a global latent) is refused by name, since
    the bound of the whole joint has no unbiased minibatch estimate.

    ``poutine.scale`` acts inside the weights, as in Pyro's ``RenyiELBO``:
    with site scales :math:`c_i`, :math:`\\log w_k = \\sum_i c_i \\log p_i -
    \\sum_j c_j \\log q_j`. With one scale :math:`c` on model and guide the
    objective is :math:`\\sum_n E \\log \\frac{1}{K}\\sum_k w_{k,n}^c`, the bound
    of the tempered weights (not :math:`c` times the bound): :math:`c` times
    the ELBO at :math:`K = 1`; as :math:`K \\to \\infty` it tends to
    :math:`\\sum_n \\log E_q[w_n^c]`, which for :math:`c < 1` is :math:`c`
    times Rényi's bound of order :math:`1 - c` (below :math:`c \\log p(x)`),
    and for :math:`c > 1` lies above :math:`c \\log p(x)`: no longer a lower
    bound. The scale :math:`N/B` of subsampling is not a ``poutine.scale``: it
    multiplies each point's bound.

    :param str gradient: the gradient estimator (:data:`GRADIENTS`):
        ``"reparam"`` (IWAE, the default, :class:`Reparameterized`),
        ``"stl"`` (:class:`StickingTheLanding`, **biased** for K > 1),
        ``"dreg"`` (:class:`~pyro_vi.estimators.dreg.DReG`), ``"vimco"``
        (:class:`~pyro_vi.estimators.vimco.VIMCO`, ``K >= 2``, for discrete
        sites) and ``"disarm"`` (:class:`~pyro_vi.estimators.disarm.LocalDisARM`,
        for Bernoulli sites; ``num_particles`` then counts antithetic pairs).
        With K = 1, ``"reparam"`` is Trace_ELBO's estimator and ``"stl"`` and
        ``"dreg"`` are StickingTheLandingELBO's. Except for ``"vimco"`` and
        ``"disarm"``, every guide site must be reparameterizable.

    **References**

    [1] Importance Weighted Autoencoders, Yuri Burda, Roger Grosse,
        Ruslan Salakhutdinov (ICLR 2016)

    [2] Sticking the Landing, Geoffrey Roeder, Yuhuai Wu, David Duvenaud (NIPS 2017)

    [3] Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives,
        George Tucker, Dieterich Lawson, Shixiang Gu, Chris J. Maddison (ICLR 2019)
    """

    #: ``poutine.scale`` multiplies the log-weights inside the bound: ``fit``
    #: refuses it as the scale of a shard of the data under ``torchrun``
    scale_tempers_weights = True

    def __init__(self, num_particles=5, gradient="reparam", **kwargs):
        self.gradient = validation.choice(f"{type(self).__name__}: gradient", gradient, GRADIENTS)
        self.strategy = GRADIENTS[gradient]()
        needs = dataclasses.replace(self.strategy.needs, same_minibatch=True)
        super().__init__(num_particles, needs=needs, min_particles=self.strategy.min_particles, **kwargs)

    def check(self, particles):
        self.strategy.check(particles, type(self).__name__)
        check_importance_weighted(particles, type(self).__name__)

    def elbo_value(self, particles):
        return self.strategy.value(particles)

    def elbo_and_surrogate(self, particles):
        return self.strategy.estimate(particles)
