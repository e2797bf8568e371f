"""VIMCO: leave-one-out signals for the importance-weighted bound (Mnih and
Rezende 2016)."""

from ..math.bounds import (
    independent_plates,
    iwelbo,
    log_mean_exp,
    log_mean_exp_replacing,
    log_weights_per_point,
    point_scale,
)
from ..math.signals import sum_to_plates
from .base import ImportanceWeightedGradient

__all__ = ["VIMCO", "vimco_score_term", "vimco_signals"]


class VIMCO(ImportanceWeightedGradient):
    """``gradient="vimco"`` [1], **unbiased**, ``K >= 2``: for guide sites
    without a pathwise derivative (discrete sites), sample :math:`k`'s score
    gets the local learning signal :math:`\\hat L - \\hat L_{-k}`
    (:func:`vimco_signals`), plus :math:`\\sum_k \\tilde w_k \\nabla \\log w_k`
    at fixed discrete samples, which carries the pathwise (IWAE) gradient of
    the sites that ``rsample``, the model parameters and the direct
    dependence of :math:`\\log q` on its parameters.

    **References**

    [1] Variational Inference for Monte Carlo Objectives, Andriy Mnih,
        Danilo J. Rezende (ICML 2016)
    """

    min_particles = 2

    def check(self, particles, estimator):
        pass  # sites without a pathwise derivative are what it is for

    def estimate(self, particles):
        log_w = log_weights_per_point(particles)[1]
        scale = point_scale(particles)
        value = iwelbo(log_w, scale)
        return value, value + vimco_score_term(particles, scale * vimco_signals(log_w))


def vimco_signals(log_w):
    """VIMCO's local learning signals (eq. 9 with the geometric mean):
    :math:`\\hat L - \\hat L_{-k}`, where :math:`\\hat L = \\log \\frac{1}{K}\\sum_j w_j`
    and :math:`\\hat L_{-k}` is the same bound with :math:`w_k` replaced by the
    geometric mean of the others, :math:`\\exp(\\frac{1}{K-1}\\sum_{j \\ne k}
    \\log w_j)`. :math:`\\hat L_{-k}` does not depend on :math:`z_k`, so it is a
    baseline for sample :math:`k`'s score. ``log_w``: ``(K,) + shape``,
    ``K >= 2``; detached result."""
    log_w = log_w.detach()
    num = log_w.shape[0]
    others_mean = (log_w.sum(0, keepdim=True) - log_w) / (num - 1)
    return log_mean_exp(log_w).unsqueeze(0) - log_mean_exp_replacing(log_w, others_mean)


def vimco_score_term(particles, signals):
    """:math:`\\sum_k \\sum_n \\log q^{\\mathrm{score}}(z_{k,n})\\, \\mathrm{stop}(s_{k,n})` for
    per-point signals ``signals`` (``(K,) + plate_shape``): each score site's
    density summed to the points of the independent plates."""
    dims = set(independent_plates(particles).values())
    total = particles.zeros()
    for site in particles.score_sites():
        total = total + (sum_to_plates(site.score_log_prob, dims) * signals.detach()).sum()
    return total
