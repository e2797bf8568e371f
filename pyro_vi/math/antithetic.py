"""DisARM's antithetic estimates for Bernoulli sites (Dong, Mnih and
Tucker 2020): from one uniform :math:`u`, the pair
:math:`b = 1[u < \\sigma(\\theta)]`, :math:`b' = 1[1 - u < \\sigma(\\theta)]`."""

import torch
import torch.nn.functional as F

from .bounds import log_mean_exp, log_mean_exp_replacing
from .signals import leave_one_out_signals

__all__ = ["disarm_term", "disarm_weights", "local_disarm_term"]


def _with_event_dims(signal, event_dim):
    return signal.reshape(signal.shape + (1,) * event_dim)


def disarm_weights(bernoulli):
    """For the pairs :math:`(b, b')` of a :class:`~pyro_vi.particles.record.BernoulliTerm`:
    the logits :math:`\\theta` of each pair's first particle (with graph) and
    :math:`(-1)^{b'}\\, 1[b \\ne b']\\, \\sigma(|\\theta|)` (detached), each of
    shape ``(S/2,) + plate_shape + event_shape``."""
    theta = bernoulli.logits[0::2]
    first, second = bernoulli.value[0::2], bernoulli.value[1::2]
    weight = (1 - 2 * second) * (first != second) * torch.sigmoid(theta.detach().abs())
    return theta, weight


def disarm_term(particles, signals):
    """:math:`\\frac{2}{S}\\sum_i \\sum_n \\mathrm{stop}(g_{i,n}) \\theta_{i,n}` over the
    Bernoulli score sites, whose gradient is DisARM's estimate (Dong, Mnih and
    Tucker 2020, eq. 6) for each of the :math:`S/2` pairs, element by element
    where the pair was drawn antithetically,

    .. math::

        g = \\tfrac{1}{2}\\bigl(L(b) - L(b')\\bigr)\\, (-1)^{b'}\\, 1[b \\ne b']\\,
            \\sigma(|\\theta|),

    for the Bernoulli sites of ``signals`` (``{site: (S,) + plate_shape}``,
    e.g. Markov-blanket signals), averaged over the pairs. The estimate needs
    only that both particles have the same :math:`\\theta` and that each
    particle's signal is an unbiased estimate given its own draw. Where the
    pair's :math:`\\theta` differ (their histories differ), each particle's
    element, drawn on its own, gets the score function with the other
    particles' mean signal as baseline
    (:func:`~pyro_vi.math.signals.leave_one_out_signals`) instead."""
    total = particles.zeros()
    num_particles = particles.num_particles
    for name, signal in signals.items():
        bernoulli = particles.bernoulli[name]
        difference = _with_event_dims(0.5 * (signal[0::2] - signal[1::2]), bernoulli.event_dim)
        theta, weight = disarm_weights(bernoulli)
        total = total + ((difference * weight * bernoulli.paired).detach() * theta).sum() * (2 / num_particles)
        if not bool(bernoulli.paired.all()):
            unpaired = (~bernoulli.paired).repeat_interleave(2, 0)
            centred = _with_event_dims(leave_one_out_signals({name: signal})[name], bernoulli.event_dim)
            log_q = bernoulli.value * F.logsigmoid(bernoulli.logits) + (1 - bernoulli.value) * F.logsigmoid(
                -bernoulli.logits
            )
            total = total + (log_q * (centred * unpaired).detach()).sum() / num_particles
    return total


def local_disarm_term(particles, log_w, scale=1.0):
    """Local DisARM for the importance-weighted bound over the pairs'
    first particles (:math:`b_{1:K}`) and, symmetrically, over their second
    particles (:math:`b'_{1:K}`): sample :math:`k`'s estimate holds the other
    samples of its set fixed and swaps :math:`b_k` for its antithetic partner,

    .. math::

        g_k = \\tfrac{1}{2}\\bigl(\\hat L(b_{1:K}) - \\hat L(b'_k, b_{-k})\\bigr)
            (-1)^{b'_k} 1[b_k \\ne b'_k] \\sigma(|\\theta_k|),

    unbiased for the part of :math:`\\nabla \\mathcal{L}_K` that flows through
    :math:`b_k`'s distribution because :math:`b_{-k}` is independent of
    :math:`u_k`. The two sets' estimates are averaged. ``log_w``: per-point
    log-weights of the :math:`2K` particles, ``(2K,) + plate_shape``."""
    first, second = log_w[0::2].detach(), log_w[1::2].detach()
    first_signal = 0.5 * (log_mean_exp(first).unsqueeze(0) - log_mean_exp_replacing(first, second))
    second_signal = 0.5 * (log_mean_exp(second).unsqueeze(0) - log_mean_exp_replacing(second, first))
    total = particles.zeros()
    for site in particles.score_sites():
        bernoulli = particles.bernoulli[site.name]
        theta = bernoulli.logits[0::2]
        b, b_prime = bernoulli.value[0::2], bernoulli.value[1::2]
        common = (b != b_prime) * torch.sigmoid(theta.detach().abs())
        g = (
            _with_event_dims(first_signal, bernoulli.event_dim) * (1 - 2 * b_prime)
            + _with_event_dims(second_signal, bernoulli.event_dim) * (1 - 2 * b)
        ) * common
        total = total + ((0.5 * scale * g).detach() * theta).sum()
    return total
