"""Surrogates: scalars whose gradient is (a part of) an estimator.

Each is a function of the record; the estimators add them up. A score
term multiplies :math:`\\log q` by a stopped signal; a path term keeps the
pathwise derivative of the samples.
"""

import torch

from .signals import per_particle

__all__ = ["linear_surrogate", "pathwise_surrogate", "rao_blackwell_term", "score_function_surrogate"]


def score_function_surrogate(particles, signal):
    """Per particle,
    :math:`\\log p(x, z_s) - \\log q^{\\mathrm{path}}(z_s) + \\log q^{\\mathrm{score}}(z_s)\\,\\mathrm{stop}(L_s)`:
    its gradient is the score-function estimator with learning signal
    ``signal`` (shape ``(S,)``) at the score sites, and the exact pathwise
    gradient through point masses and model parameters. Shape ``(S,)``."""
    surrogate = particles.log_p() - particles.path_log_q()
    if particles.score_sites():
        surrogate = surrogate + particles.score_log_q() * signal.detach()
    return surrogate


def pathwise_surrogate(particles):
    """Per particle, the part of the surrogate that is differentiated through
    the samples: :math:`\\log p(x, z_s) - \\log q^{\\mathrm{path}}(z_s)
    + \\log q^{\\mathrm{path}}_{\\mathrm{stop}(\\lambda)}(z_s)` over the guide sites
    without a score. For a site that keeps its pathwise derivative (it
    ``rsample``-s) this is the sticking-the-landing gradient (Roeder et al.
    2017): the score part of :math:`\\nabla_\\lambda \\log q`, whose expectation
    is zero, is cancelled by the density at stopped parameters. Point masses,
    sites whose support moves (whose score term does not average to zero)
    and model parameters get their exact gradient. When every random guide
    site has a score (a score-function estimator), this is
    :math:`\\log p - \\log q^{\\mathrm{point\\ masses}}` and nothing is recomputed.
    Shape ``(S,)``."""
    surrogate = particles.log_p() - particles.path_log_q()
    sites = [s.name for s in particles.guide.values() if s.score_log_prob is None and not s.keeps_whole_density]
    if sites:
        stopped = particles.stopped_log_q
        for name in sites:
            surrogate = surrogate + per_particle(stopped[name])
    return surrogate


def rao_blackwell_term(particles, signals):
    """Per particle, :math:`\\sum_j \\langle \\log q_j(z_{j,s}),
    \\mathrm{stop}(L^{(j)}_s)\\rangle` over the score sites :math:`j` of
    ``signals`` (``{site: (S,) + plate_shape}``): its gradient is the
    Rao-Blackwellized score-function estimator. Shape ``(S,)``."""
    total = particles.zeros(particles.num_particles)
    for name, signal in signals.items():
        total = total + per_particle(particles.guide[name].score_log_prob * signal)
    return total


def linear_surrogate(params, grads):
    """:math:`\\sum_d \\mathrm{stop}(g_d) \\lambda_d`, whose gradient is ``grads``
    (``None`` entries are skipped)."""
    surrogate = 0.0
    for param, grad in zip(params, grads):
        if grad is not None:
            surrogate = surrogate + (grad.detach() * param).sum()
    return torch.as_tensor(surrogate)
