"""Doubly reparameterized gradients of the importance-weighted bound
(Tucker, Lawson, Gu and Maddison 2019)."""

import torch

from ..math.bounds import iwelbo, log_weights_per_point, normalized_weights, per_point, point_scale
from ..math.surrogates import linear_surrogate
from ..particles import Needs
from .base import ImportanceWeightedGradient

__all__ = ["DReG"]


class DReG(ImportanceWeightedGradient):
    """``gradient="dreg"`` [1], **unbiased** for :math:`\\nabla \\mathcal{L}_K`.
    With normalized weights :math:`\\tilde w_k`, guide parameters get

    .. math::

        \\sum_k \\tilde w_k^2 \\, \\partial_{z_k} \\log w_k \\, \\partial_\\phi z_k,

    whose signal-to-noise ratio does not decay with :math:`K`, and model
    parameters :math:`\\sum_k \\tilde w_k \\nabla_\\theta \\log p_\\theta(x, z_k)`
    as in IWAE. When no random guide sample depends on another (mean-field,
    amortized, autoguides), one backward pass does both: a hook on each
    random sample :math:`z_k` multiplies its gradient by :math:`\\tilde w_k`,
    while point masses, which have no score to rewrite, and sites whose
    support moves, whose score identity fails, keep IWAE's weight
    :math:`\\tilde w_k` and their whole density. For a structured guide the
    two are taken as separate gradients, and point masses, sites whose
    support moves and scaled or masked sites are refused there. With
    :math:`K = 1` it is :class:`~pyro_vi.StickingTheLandingELBO`'s estimator.

    **References**

    [1] Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives,
        George Tucker, Dieterich Lawson, Shixiang Gu, Chris J. Maddison (ICLR 2019)
    """

    needs = Needs(path_density=True, stopped_guide=True, structure=True, samples=True)

    def check(self, particles, estimator):
        super().check(particles, estimator)
        if particles.random_samples_independent():
            return
        for site in particles.guide.values():
            if site.keeps_whole_density:
                kind = "point-mass site '{}' (Delta)" if site.is_point_mass else "site '{}', whose support moves,"
                raise ValueError(
                    f"{estimator}(gradient='dreg'): {kind.format(site.name)} in a guide whose random samples depend "
                    "on one another; DReG's weights apply only to random samples with a score to rewrite: use "
                    "gradient='stl' or 'reparam'"
                )
        for name, samples in particles.samples.items():
            if any(found is not None and not _is_one(found[2]) for found in samples):
                raise ValueError(
                    f"{estimator}(gradient='dreg'): site '{name}' is scaled or masked (poutine.scale, poutine.mask "
                    "or .mask()) in a guide whose random samples depend on one another; DReG's weight of such a "
                    "sample needs a gradient of its own: use gradient='stl' or 'reparam'"
                )

    def estimate(self, particles):
        log_p, log_w = log_weights_per_point(particles)
        scale = point_scale(particles)
        normalized = normalized_weights(log_w)
        # log w with the guide's density at stopped parameters: its gradient is the path part of log w
        path_log_w = log_p - per_point(particles, particles.log_q_at_stopped_parameters(), particles.guide)
        value = iwelbo(log_w, scale)
        if particles.random_samples_independent():
            return value, surrogate_by_hooks(particles, normalized, scale * normalized * path_log_w)
        return value, surrogate_by_two_gradients(particles, scale * normalized, normalized, path_log_w, log_p)


def surrogate_by_two_gradients(particles, weights, normalized, path_log_w, log_p):
    """DReG as two gradients: :math:`\\sum_k \\tilde w_k^2 \\log w_k^{\\mathrm{path}}`
    for the guide parameters and :math:`\\sum_k \\tilde w_k \\log p(x, z_k)` for
    the model parameters (``weights`` carry the points' subsampling scale),
    returned as a surrogate linear in the parameters. Valid for any guide
    without point masses or sites whose support moves."""
    surrogate = path_log_w.new_zeros(())
    for params, objective in (
        (particles.guide_params, (weights * normalized * path_log_w).sum()),
        (particles.model_params, (weights * log_p).sum()),
    ):
        params = [p for p in params.values() if p.requires_grad]
        if params and objective.requires_grad:
            grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
            surrogate = surrogate + linear_surrogate(params, grads)
    return surrogate


def surrogate_by_hooks(particles, normalized, weighted_path_log_w):
    """DReG in one backward pass: :math:`\\sum_k \\tilde w_k \\log w_k^{\\mathrm{path}}`
    with the gradient reaching each random sample :math:`z_k` multiplied by
    :math:`\\tilde w_k` once more. The model parameters then get
    :math:`\\sum_k \\tilde w_k \\nabla_\\theta \\log p` and the guide parameters,
    which reach the objective only through :math:`z_k` (the score part of
    :math:`\\log q` is stopped), :math:`\\sum_k \\tilde w_k^2 \\partial_{z_k} \\log w_k
    \\, \\partial_\\phi z_k`. Where the sample's own log-density enters
    :math:`\\log w_k` with a factor :math:`c` (``poutine.scale``, e.g. KL
    annealing, or 0 where masked), only :math:`c` times its score is rewritten:
    the hook multiplies by :math:`1 - c + c \\tilde w_k`. Valid when no random
    sample depends on another (else a sample's gradient would be scaled
    twice); point masses and sites whose support moves are not hooked, so
    their direct paths keep :math:`\\tilde w_k`."""
    for samples in particles.samples.values():
        for run, found in enumerate(samples):
            if found is None or not found[0].requires_grad:
                continue
            sample, batch_dim, tempering = found
            weights = _align(normalized if particles.vectorized else normalized[run], batch_dim, sample.dim())
            factor = weights if _is_one(tempering) else 1 - tempering + tempering * weights
            sample.register_hook(lambda grad, factor=factor: grad * factor)
    return weighted_path_log_w.sum()


def _is_one(tempering):
    return not torch.is_tensor(tempering) and tempering == 1


def _align(weights, batch_dim, dim):
    """``weights`` (``plate_shape`` or ``(K,) + plate_shape``) reshaped to
    broadcast against a sample with ``batch_dim`` batch dims out of ``dim``:
    its leading size-1 plate dims dropped or added, event dims appended."""
    extra = weights.dim() - batch_dim
    shape = weights.shape[extra:] if extra > 0 else (1,) * -extra + weights.shape
    return weights.reshape(tuple(shape) + (1,) * (dim - batch_dim))
