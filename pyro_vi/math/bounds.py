"""Importance-weighted bounds: log-weights per data point and their
log-mean-exp, :math:`\\mathcal{L}_K = \\sum_n \\log \\frac{1}{K}\\sum_k w_{k,n}`."""

import math

import torch

from .signals import sum_to_plates

__all__ = [
    "independent_plates",
    "iwelbo",
    "log_mean_exp",
    "log_mean_exp_replacing",
    "log_weights_per_point",
    "normalized_weights",
    "per_point",
    "point_scale",
]


def log_mean_exp(log_w):
    """:math:`\\log \\frac{1}{K}\\sum_k e^{\\ell_k}` over dim 0, by log-sum-exp."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def independent_plates(particles):
    """The plates every model and guide site lies in, ``{name: dim}``: the
    particles' log-weights factorize over them (one importance-weighted bound
    per data point in a VAE). Empty when any site is global."""
    sites = list(particles.model.values()) + list(particles.guide.values())
    if not sites:
        return {}
    common = set.intersection(*(set(site.plates) for site in sites))
    return {name: sites[0].plates[name] for name in common}


def per_point(particles, log_probs, sites):
    """:math:`\\sum` of ``log_probs`` (``{name: (S,) + plate_shape}``) per
    point of the independent plates: summed over every other plate dim
    (size 1 there), each divided by its site's subsampling scale (which
    multiplies each point's bound instead; ``poutine.scale`` stays inside
    the weights, as in Pyro's ``RenyiELBO``)."""
    dims = set(independent_plates(particles).values())
    total = particles.zeros(particles.num_particles, *(1,) * particles.plate_dims)
    for name, log_prob in log_probs.items():
        log_prob = sum_to_plates(log_prob, dims)
        scale = sites[name].subsample_scale
        total = total + (log_prob if scale == 1 else log_prob / scale)
    return total


def log_weights_per_point(particles):
    """``(log p, log w)`` per point of the independent plates, shape
    ``(K,) + plate_shape``: :math:`\\log p(x, z_k)` and
    :math:`\\log w_k = \\log p(x, z_k) - \\log q(z_k)`."""
    log_p = per_point(particles, {n: t.log_prob for n, t in particles.model.items()}, particles.model)
    log_q = per_point(particles, {n: t.log_prob for n, t in particles.guide.items()}, particles.guide)
    return log_p, log_p - log_q


def point_scale(particles):
    """The subsampling scale :math:`N / B` of each point's bound: that of the
    subsampled plates, which every site lies in."""
    sites = list(particles.model.values()) + list(particles.guide.values())
    return sites[0].subsample_scale if sites else 1.0


def iwelbo(log_w, scale=1.0):
    """:math:`\\sum_n s \\log \\frac{1}{K} \\sum_k w_{k,n}`, by log-sum-exp."""
    return (scale * log_mean_exp(log_w)).sum()


def normalized_weights(log_w):
    """:math:`\\tilde w_k = w_k / \\sum_j w_j`, per point, detached."""
    return torch.softmax(log_w.detach(), 0)


def log_mean_exp_replacing(log_w, replacement):
    """For each :math:`k`, :math:`\\log \\frac{1}{K}\\bigl(\\sum_{j \\ne k} w_j
    + e^{r_k}\\bigr)`: the bound with sample :math:`k`'s log-weight replaced
    by ``replacement[k]``; both of shape ``(K,) + shape``, the result too.
    Exact in log space (a :math:`K \\times K` log-sum-exp, no subtraction)."""
    num = log_w.shape[0]
    eye = torch.eye(num, dtype=torch.bool, device=log_w.device).reshape((num, num) + (1,) * (log_w.dim() - 1))
    table = torch.where(eye, replacement.unsqueeze(1), log_w.unsqueeze(0))  # row k: log w with entry k replaced
    return torch.logsumexp(table, 1) - math.log(num)
