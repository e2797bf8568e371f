"""Control variates for the score-function gradient (BBVI Algorithm 2).

For per-particle scores :math:`h_s` and score-function terms :math:`f_s`
(:math:`h_s L_s`, or a Rao-Blackwellized term), per scalar coordinate
:math:`d`: :math:`\\hat g_d = \\frac{1}{S}\\sum_s (f_d[s] - a_d h_d[s])`.
"""

import torch

from .. import validation
from .jacobians import distribution_gradients, particle_gradients

__all__ = [
    "COEFFICIENTS",
    "COORDINATES",
    "check_coefficient",
    "check_coordinates",
    "controlled_gradient",
    "controlled_surrogate",
    "gradient_from_sums",
    "particle_sums",
]

COEFFICIENTS = ("leave_one_out", "pooled")
COORDINATES = ("parameters", "distributions")


def check_coordinates(coordinates, estimator):
    """Validates the control variates' ``coordinates``."""
    return validation.choice(f"{estimator}: coordinates", coordinates, COORDINATES)


def check_coefficient(coefficient, estimator):
    """Validates a control-variate ``coefficient`` (``"leave_one_out"``,
    ``"pooled"`` or a finite number); returns the number of particles it
    needs."""
    if isinstance(coefficient, str):
        validation.choice(f"{estimator}: coefficient", coefficient, COEFFICIENTS)
        return 3 if coefficient == "leave_one_out" else 2
    validation.real(f"{estimator}: coefficient", coefficient)
    return 1


def controlled_gradient(h, coefficient, signal=None, f=None):
    """The controlled gradient of one parameter from its per-particle
    scores ``h`` (shape ``(S,) + shape``),

    .. math::

        \\hat g_d = \\frac{1}{S}\\sum_s \\left(f_d[s] - a_d h_d[s]\\right),
        \\qquad a^*_d = \\frac{\\mathrm{Cov}(f_d, h_d)}{\\mathrm{Var}(h_d)},

    with :math:`f_s = h_s L_s` for a learning ``signal`` :math:`L` (shape
    ``(S,)``), or given per particle as ``f``. ``coefficient``:
    ``"pooled"`` estimates :math:`a^*_d` from all ``S`` particles (BBVI's
    choice; it then depends on :math:`z_s`, a bias of order :math:`1/S`);
    ``"leave_one_out"`` gives particle :math:`s` the :math:`a^{(-s)}_d`
    estimated without it, independent of :math:`z_s`, so that
    :math:`E[a^{(-s)} h_s] = 0` and the estimator is unbiased; a number fixes
    :math:`a`. Where the (other) particles' :math:`h_d` are all equal, up to
    the rounding error of the sums (:math:`64\\,\\epsilon` times their sum of
    squares), the slope is undefined: the leave-one-out coefficient is then
    the regression through the origin, :math:`\\bar f_d / \\bar h_d` of the
    other particles (their mean signal, for :math:`f = hL`; 0 where
    :math:`\\bar h_d` is 0), still independent of :math:`z_s`; the pooled one
    is 0.

    The coefficients need only the per-parameter sums of :math:`h, f, h^2,
    fh` over the particles (:func:`particle_sums`); leave-one-out then
    takes one more pass over the particles. Both go a block of parameters at
    a time, in float64, so that no temporary is larger than a block. The
    estimate is linear in the signal (in ``f``) at fixed particles.
    """
    return gradient_from_sums(h, particle_sums(h, signal, f), coefficient, signal, f)


_BLOCK_ELEMENTS = 1 << 18


def _blocks(h, signal, f):
    """``(columns, h, f)`` for blocks of parameters, in float64."""
    num_particles = h.shape[0]
    h = h.reshape(num_particles, -1)
    f = None if f is None else f.reshape(num_particles, -1)
    signal = None if signal is None else signal.detach().to(torch.float64)[:, None]
    block = max(1, _BLOCK_ELEMENTS // num_particles)
    for start in range(0, h.shape[1], block):
        columns = slice(start, start + block)
        hb = h[:, columns].to(torch.float64)
        yield columns, hb, hb * signal if f is None else f[:, columns].to(torch.float64)


def particle_sums(h, signal=None, f=None):
    """The sufficient statistics of :func:`controlled_gradient`, a float64
    tensor of shape ``(5, P)``: the number of particles and the sums over
    them of :math:`h, f, h^2, fh`, per scalar parameter."""
    sums = torch.empty(5, h[0].numel(), dtype=torch.float64, device=h.device)
    sums[0] = h.shape[0]
    for columns, hb, fb in _blocks(h, signal, f):
        sums[1:, columns] = torch.stack([hb.sum(0), fb.sum(0), hb.square().sum(0), (fb * hb).sum(0)])
    return sums


def gradient_from_sums(h, sums, coefficient, signal=None, f=None, per_particle=False):
    """:math:`\\hat g` of the particles ``h``, ``signal`` or ``f``, whose
    :func:`particle_sums` are ``sums``. With ``per_particle``, the
    particles' terms :math:`(f_d[s] - a_d h_d[s]) / S` instead, shape
    ``(S,) + shape``, whose sum over the particles is :math:`\\hat g`."""
    num_particles, shape = h.shape[0], h.shape[1:]
    if not isinstance(coefficient, str) or coefficient == "pooled":
        a = _fixed_or_pooled_coefficient(h, sums, coefficient)
        if per_particle:
            blocks = [(fb - a[columns] * hb) / num_particles for columns, hb, fb in _blocks(h, signal, f)]
            return torch.cat(blocks, 1).to(h.dtype).reshape(h.shape)
        return ((sums[2] - a * sums[1]) / num_particles).to(h.dtype).reshape(shape)
    count, h_sum, f_sum, sum_hh = sums[0], sums[1], sums[2], sums[3]
    h_mean, f_mean = h_sum / count, f_sum / count
    cov = sums[4] - count * f_mean * h_mean
    var = sum_hh - count * h_mean.square()
    tolerance = 64 * torch.finfo(h.dtype).eps
    # Without particle s the other centred values sum to -hc[s] and -fc[s]:
    # cov(-s) = cov - k fc hc and var(-s) = var - k hc^2, with k = N / (N - 1).
    k, others = count / (count - 1), count - 1
    controlled = []
    for columns, hb, fb in _blocks(h, signal, f):
        hc, fc = hb - h_mean[columns], fb - f_mean[columns]
        numerator = cov[columns] - k[columns] * fc * hc
        denominator = var[columns] - k[columns] * hc.square()
        threshold = tolerance * (sum_hh[columns] - hb.square()).clamp(min=0)
        regression = numerator / torch.where(denominator > threshold, denominator, torch.inf)
        # The others' scores all equal: the slope is undefined; the
        # coefficient is then their regression through the origin, f / h
        # (their mean signal for f = h L), 0 where their h is 0.
        others_h = (h_sum[columns] - hb) / others[columns]
        others_f = (f_sum[columns] - fb) / others[columns]
        origin = others_h.abs() > (threshold / others[columns]).sqrt()
        through_origin = torch.where(origin, others_f / torch.where(origin, others_h, 1.0), 0.0)
        a = torch.where(denominator > threshold, regression, through_origin)
        controlled.append((fb - a * hb) / num_particles)
    controlled = torch.cat(controlled, 1)
    return (controlled if per_particle else controlled.sum(0)).to(h.dtype).reshape(h.shape if per_particle else shape)


def _fixed_or_pooled_coefficient(h, sums, coefficient):
    """A fixed coefficient, or :math:`a^*` of all the particles (0 where
    their variance is rounding error)."""
    if coefficient != "pooled":
        return torch.full_like(sums[1], float(coefficient))
    count, h_sum, sum_hh = sums[0], sums[1], sums[3]
    h_mean, f_mean = h_sum / count, sums[2] / count
    cov = sums[4] - count * f_mean * h_mean
    var = sum_hh - count * h_mean.square()
    # Below tolerance * (sum of squares), a variance is rounding error: 0.
    return torch.where(var > 64 * torch.finfo(h.dtype).eps * sum_hh, cov / var, 0.0)


def controlled_surrogate(particles, coefficient, signal=None, signals=None, coordinates="parameters"):
    """The linear surrogate :math:`\\sum_d \\mathrm{stop}(\\hat g_d) \\lambda_d`
    of the controlled gradients of the score sites.

    :param signal: a learning signal :math:`L_s` (shape ``(S,)``): then
        :math:`f_s = h_s L_s`.
    :param signals: per-site Markov-blanket signals (``{site: tensor}``):
        then :math:`f_s` is the gradient of the Rao-Blackwellized term
        :math:`\\sum_j \\langle \\log q_j, L^{(j)}_s \\rangle`.
    :param str coordinates: ``"parameters"``: a coefficient per scalar
        parameter :math:`\\lambda_d` (BBVI). ``"distributions"``: a coefficient
        per scalar of the score sites' distributions (their ``loc``,
        ``scale``, ...), whose controlled gradients :math:`\\hat g_\\eta` reach
        the parameters as :math:`J^\\top \\hat g_\\eta` in one backward pass.
        The two are the same for a mean-field guide whose parameters map
        element by element onto its distributions; for an amortized guide the
        second has a coefficient per data point instead of per network
        weight, and costs about one backward pass instead of one per particle.
        The coordinates are the tensors of each site's distribution as the
        site builds them inside its plates, before any particle dimension:
        the same whether the particles share one vectorized trace or have
        one trace each. Falls back to ``"parameters"`` where a site's
        distribution depends on another guide sample (a structured guide:
        each particle has its own) or stores its tensors normalized, as a
        categorical does (see
        :func:`~pyro_vi.math.jacobians.distribution_gradients`).
    """
    params = [p for p in particles.guide_params.values() if p.requires_grad]
    weightings = [{}] if signals is None else [{}, signals]
    frontier = distribution_gradients(particles, weightings) if coordinates == "distributions" else None
    if frontier is None:
        frontier = [
            (grads.coordinates(param), grads.rows)
            for param, grads in zip(params, particle_gradients(particles, weightings, params))
            if grads is not None
        ]
    if not frontier:
        return particles.zeros()
    surrogate = 0.0
    for target, rows in frontier:
        f = None if signals is None else rows[1]
        sums = particle_sums(rows[0], signal, f)
        if isinstance(target, list):  # each particle's own tensor
            controlled = gradient_from_sums(rows[0], sums, coefficient, signal, f, per_particle=True)
            for term, own_target in zip(controlled.detach(), target):
                if own_target is not None:
                    surrogate = surrogate + (term * own_target).sum()
        else:
            g = gradient_from_sums(rows[0], sums, coefficient, signal, f)
            surrogate = surrogate + (g.detach() * target).sum()
    return surrogate
