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
    "check_pool",
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


def check_pool(pool_processes, coefficient, estimator):
    """The ``pool`` of :func:`controlled_surrogate` for ``pool_processes``."""
    from ..distributed import sum_over_processes

    if not validation.boolean(f"{estimator}: pool_processes", pool_processes):
        return None
    if not isinstance(coefficient, str):
        raise ValueError(
            f"{estimator}: pool_processes=True has no effect with a fixed coefficient={coefficient!r}; drop one of them"
        )
    return sum_over_processes


def check_coefficient(coefficient, estimator):
    """Validates a control-variate ``coefficient`` (``"leave_one_out"``,
    ``"pooled"`` or a finite number); returns the number of particles it
    needs."""
    if isinstance(coefficient, str):
        validation.choice(f"{estimator}: coefficient", coefficient, COEFFICIENTS)
        return 3 if coefficient == "leave_one_out" else 2
    validation.real(f"{estimator}: coefficient", coefficient)
    return 1


def controlled_gradient(h, coefficient, signal=None, f=None, pool=None):
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
    fh` over the particles (:func:`particle_sums`); ``pool`` may add up
    those of other processes first (one all-reduce), so that the
    coefficients come from every process's particles. Leave-one-out then
    takes one more pass over the particles. Both go a block of parameters at
    a time, in float64, so that no temporary is larger than a block.
    """
    sums = particle_sums(h, signal, f)
    pooled = pool(sums.clone()) if pool is not None and isinstance(coefficient, str) else sums
    return gradient_from_sums(h, sums, pooled, coefficient, signal, f)


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


def gradient_from_sums(h, sums, pooled, coefficient, signal=None, f=None, per_particle=False):
    """:math:`\\hat g` of this process's particles (``h``, ``signal`` or ``f``,
    whose :func:`particle_sums` are ``sums``), with the coefficients of the
    ``pooled`` sums (these, or those of several processes added up). With
    ``per_particle``, the particles' terms
    :math:`(f_d[s] - a_d h_d[s]) / S` instead, shape ``(S,) + shape``, whose
    sum over the particles is :math:`\\hat g`."""
    num_particles, shape = h.shape[0], h.shape[1:]
    if not isinstance(coefficient, str) or coefficient == "pooled":
        a = _fixed_or_pooled_coefficient(h, pooled, coefficient)
        if per_particle:
            return (
                torch.cat([(fb - a[columns] * hb) / num_particles for columns, hb, fb in _blocks(h, signal, f)], 1)
                .to(h.dtype)
                .reshape(h.shape)
            )
        return ((sums[2] - a * sums[1]) / num_particles).to(h.dtype).reshape(shape)
    count, pooled_h, pooled_f, pooled_hh = pooled[0], pooled[1], pooled[2], pooled[3]
    h_mean, f_mean = pooled_h / count, pooled_f / count
    cov = pooled[4] - count * f_mean * h_mean
    var = pooled_hh - count * h_mean.square()
    tolerance = 64 * torch.finfo(h.dtype).eps
    # Without particle s the other centred values sum to -hc[s] and -fc[s]:
    # cov(-s) = cov - k fc hc and var(-s) = var - k hc^2, with k = N / (N - 1).
    k, others = count / (count - 1), count - 1
    controlled = []
    for columns, hb, fb in _blocks(h, signal, f):
        hc, fc = hb - h_mean[columns], fb - f_mean[columns]
        numerator = cov[columns] - k[columns] * fc * hc
        denominator = var[columns] - k[columns] * hc.square()
        threshold = tolerance * (pooled_hh[columns] - hb.square()).clamp(min=0)
        regression = numerator / torch.where(denominator > threshold, denominator, torch.inf)
        # The others' scores all equal: the slope is undefined; the
        # coefficient is then their regression through the origin, f / h
        # (their mean signal for f = h L), 0 where their h is 0.
        others_h = (pooled_h[columns] - hb) / others[columns]
        others_f = (pooled_f[columns] - fb) / others[columns]
        origin = others_h.abs() > (threshold / others[columns]).sqrt()
        through_origin = torch.where(origin, others_f / torch.where(origin, others_h, 1.0), 0.0)
        a = torch.where(denominator > threshold, regression, through_origin)
        controlled.append((fb - a * hb) / num_particles)
    controlled = torch.cat(controlled, 1)
    return (controlled if per_particle else controlled.sum(0)).to(h.dtype).reshape(h.shape if per_particle else shape)


def _fixed_or_pooled_coefficient(h, pooled, coefficient):
    """A fixed coefficient, or :math:`a^*` of all the ``pooled`` particles (0
    where their variance is rounding error)."""
    if coefficient != "pooled":
        return torch.full_like(pooled[1], float(coefficient))
    count, pooled_h, pooled_hh = pooled[0], pooled[1], pooled[3]
    h_mean, f_mean = pooled_h / count, pooled[2] / count
    cov = pooled[4] - count * f_mean * h_mean
    var = pooled_hh - count * h_mean.square()
    # Below tolerance * (sum of squares), a variance is rounding error: 0.
    return torch.where(var > 64 * torch.finfo(h.dtype).eps * pooled_hh, cov / var, 0.0)


def controlled_surrogate(particles, coefficient, signal=None, signals=None, coordinates="parameters", pool=None):
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
    :param pool: adds up the sufficient statistics of several processes
        (:func:`pyro_vi.distributed.sum_over_processes`), in one all-reduce
        for all parameters, so that the coefficients come from every
        process's particles.
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
    sums = [particle_sums(rows[0], signal, None if signals is None else rows[1]) for _, rows in frontier]
    pooled = sums
    if pool is not None and isinstance(coefficient, str):
        # One all-reduce for the statistics of every parameter.
        sizes = [s.shape[1] for s in sums]
        pooled = list(pool(torch.cat(sums, dim=1)).split(sizes, dim=1))
    surrogate = 0.0
    for (target, rows), own, pooled_sums in zip(frontier, sums, pooled):
        f = None if signals is None else rows[1]
        if isinstance(target, list):  # each particle's own tensor
            controlled = gradient_from_sums(rows[0], own, pooled_sums, coefficient, signal, f, per_particle=True)
            for term, own_target in zip(controlled.detach(), target):
                if own_target is not None:
                    surrogate = surrogate + (term * own_target).sum()
        else:
            g = gradient_from_sums(rows[0], own, pooled_sums, coefficient, signal, f)
            surrogate = surrogate + (g.detach() * target).sum()
    return surrogate
