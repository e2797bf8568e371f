"""Learning signals: the per-particle quantities a score is multiplied by.

Notation: particles :math:`z_s \\sim q_\\lambda`, :math:`s = 1..S`;
:math:`L_s = \\log p(x, z_s) - \\log q(z_s)`.
"""

import torch

__all__ = [
    "leave_one_out_signals",
    "markov_blanket_signals",
    "per_particle",
    "sum_to_plates",
]


def per_particle(term):
    """A ``(S,) + plate_shape`` term summed over its plate dims: shape ``(S,)``."""
    return term.reshape(term.shape[0], -1).sum(-1)


def sum_to_plates(term, plate_dims):
    """Sums a ``(S,) + plate_shape`` term over every plate dim not in
    ``plate_dims`` (negative dims), keeping dims."""
    dims = [d for d in range(-(term.dim() - 1), 0) if d not in plate_dims]
    return term.sum(dims, keepdim=True) if dims else term


def markov_blanket_signals(particles):
    """For each score site :math:`j`, its Markov-blanket learning signal

    .. math::

        L^{(j)}_s = \\sum_{c \\in \\mathrm{MB}(j)} \\log p_c(x, z_s)
                  - \\sum_{k \\ni j} \\log q_k(z_s),

    element-wise inside the plates :math:`j` shares with each factor, shape
    ``(S,) + plate_shape``: ``{name: signal}``. The factors are read from the
    programs (:attr:`~pyro_vi.particles.record.Particles.signal_factors`)."""
    signals = {}
    summed = {}  # (table, factor, plate dims) -> its log-density summed to them, shared by the sites
    factors = particles.signal_factors
    for site in particles.score_sites():
        model_factors, guide_factors = factors[site.name]
        signal = particles.zeros(particles.num_particles, *(1,) * particles.plate_dims)
        for table, chosen, combine in (
            (particles.model, model_factors, torch.add),
            (particles.guide, guide_factors, torch.sub),
        ):
            for name, plates in chosen.items():
                if name in table:
                    dims = frozenset(site.plates[p] for p in plates)
                    key = (id(table), name, dims)
                    if key not in summed:
                        summed[key] = sum_to_plates(table[name].log_prob, dims)
                    signal = combine(signal, summed[key])
        signals[site.name] = signal.detach()
    return signals


def leave_one_out_signals(signals):
    """REINFORCE leave-one-out (Kool et al. 2019): each particle's signal
    minus the mean of the other particles' signals,
    :math:`L_s - \\frac{1}{S-1}\\sum_{s' \\ne s} L_{s'}
    = \\frac{S}{S-1}(L_s - \\bar L)`, over dim 0 (the particles), for each
    entry of ``signals`` (``{site: (S,) + plate_shape}``)."""
    result = {}
    for name, signal in signals.items():
        num_particles = signal.shape[0]
        result[name] = (signal - signal.mean(0, keepdim=True)) * (num_particles / (num_particles - 1))
    return result
