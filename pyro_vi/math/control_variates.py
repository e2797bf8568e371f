"""Control variates for the score-function gradient (BBVI Algorithm 2).

For per-particle scores :math:`h_s` and score-function terms :math:`f_s`
(:math:`h_s L_s`, or a Rao-Blackwellized term), per scalar coordinate
:math:`d`: :math:`\\hat g_d = \\frac{1}{S}\\sum_s (f_d[s] - a_d h_d[s])`.
"""

import warnings
from dataclasses import dataclass
from typing import Optional

import torch

from .. import validation
from .jacobians import distribution_gradients, particle_gradients

__all__ = [
    "COEFFICIENTS",
    "COORDINATES",
    "COSTLY_WEIGHTS",
    "check_coefficient",
    "check_coordinates",
    "controlled_gradient",
    "controlled_surrogate",
    "warn_if_costly",
]

COEFFICIENTS = ("leave_one_out", "pooled")
COORDINATES = ("parameters", "distributions")
# Above this many guide weights, coordinates="parameters" costs many Trace_ELBO steps.
COSTLY_WEIGHTS = 1_000_000


def check_coordinates(coordinates, estimator):
    """Validates the control variates' ``coordinates``."""
    return validation.choice(f"{estimator}: coordinates", coordinates, COORDINATES)


def warn_if_costly(particles, estimator):
    """Warns (``UserWarning``) when the guide has more than
    :data:`COSTLY_WEIGHTS` weights, for ``coordinates="parameters"``:
    per-particle gradients of every weight then cost several whole steps.
    Returns whether it warned."""
    weights = sum(p.numel() for p in particles.guide_params.values() if p.requires_grad)
    if weights <= COSTLY_WEIGHTS:
        return False
    warnings.warn(
        f'{estimator}: coordinates="parameters" on a guide of {weights:,} weights needs per-particle gradients of '
        "every weight, about 4 x batch x particles x weights extra multiply-adds: 8 to 15 times a Trace_ELBO step "
        'on a 13.4-million-weight encoder (the README\'s scaling benchmark). coordinates="distributions" (the '
        "default) costs about one more backward pass",
        UserWarning,
        stacklevel=2,
    )
    return True


def check_coefficient(coefficient, estimator):
    """Validates a control-variate ``coefficient`` (``"leave_one_out"``,
    ``"pooled"`` or a finite number); returns the number of particles it
    needs."""
    if isinstance(coefficient, str):
        validation.choice(f"{estimator}: coefficient", coefficient, COEFFICIENTS)
        return 3 if coefficient == "leave_one_out" else 2
    validation.real(f"{estimator}: coefficient", coefficient)
    return 1


def controlled_gradient(h, coefficient, signal=None, f=None, per_particle=False):
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
    is 0. (A variance below :math:`64` float64 epsilons times the sum of
    squares of all the particles is the rounding error of this arithmetic,
    and counts as 0 too.)

    The coefficients need only the per-parameter sums of :math:`h, f, h^2,
    fh` over the particles. The arithmetic goes a block of parameters at a
    time, in float64, each block's sums and gradient in one go, so that no
    temporary is larger than a block. With ``per_particle``, the particles'
    terms :math:`(f_d[s] - a_d h_d[s]) / S` instead, shape ``(S,) + shape``,
    whose sum over the particles is :math:`\\hat g`.
    """
    parts = [_controlled_block(block, coefficient, per_particle, h.dtype) for block in _blocks(h, signal, f)]
    joined = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return joined.to(h.dtype).reshape(h.shape if per_particle else h.shape[1:])


# Columns per block: each block's float64 temporaries (a few of S x block)
# stay small enough to be cached and reused by the allocator.
_BLOCK_ELEMENTS = 1 << 16


@dataclass
class _Block:
    """One block of columns, in float64, shape ``(S, block)``: ``h``, and
    ``f`` or the ``signal`` column :math:`L` (``(S, 1)``, then
    :math:`f = hL`); the sums over the particles of :math:`h, f, h^2, fh`;
    and a ``spare`` temporary of the block's shape. The caller may overwrite
    ``h``, ``f`` and ``spare``."""

    h: torch.Tensor
    f: Optional[torch.Tensor]
    signal: Optional[torch.Tensor]
    sum_h: torch.Tensor
    sum_f: torch.Tensor
    sum_hh: torch.Tensor
    sum_fh: torch.Tensor
    spare: torch.Tensor

    @property
    def count(self):
        """The number of particles, :math:`S`."""
        return self.h.shape[0]

    def f_values(self):
        """:math:`f`, a fresh tensor where it is :math:`hL`."""
        return self.f if self.signal is None else self.h * self.signal


def _blocks(h, signal, f):
    """The :class:`_Block` of each block of columns."""
    num_particles = h.shape[0]
    h = h.detach().reshape(num_particles, -1)
    f = None if f is None else f.detach().reshape(num_particles, -1)
    if signal is not None:  # the sums of h and hL, of h^2 and h^2 L, as two products
        weights = torch.stack(
            [torch.ones(num_particles, dtype=torch.float64, device=h.device), signal.detach().to(torch.float64)]
        )
        column = weights[1, :, None]
    block = max(1, _BLOCK_ELEMENTS // num_particles)
    for start in range(0, h.shape[1], block):
        columns = slice(start, start + block)
        hb = h[:, columns].to(torch.float64, copy=True)
        squares = hb * hb
        if f is None:
            (sum_h, sum_f), (sum_hh, sum_fh) = weights @ hb, weights @ squares
            yield _Block(hb, None, column, sum_h, sum_f, sum_hh, sum_fh, squares)
        else:
            fb = f[:, columns].to(torch.float64, copy=True)
            sums = hb.sum(0), fb.sum(0), squares.sum(0), torch.mul(fb, hb, out=squares).sum(0)
            yield _Block(hb, fb, None, *sums, squares)


def _controlled_block(block, coefficient, per_particle, dtype):
    """:math:`(f_d[s] - a_d h_d[s]) / S` of one :class:`_Block`, summed over
    the particles (shape ``(block,)``) or per particle."""
    hb = block.h
    if not isinstance(coefficient, str) or coefficient == "pooled":
        a = _fixed_or_pooled_coefficient(block, coefficient, dtype)
        if per_particle:
            return block.f_values().sub_(a * hb).div_(block.count)
        return (block.sum_f - a * block.sum_h) / block.count
    a = _leave_one_out_coefficients(block, dtype)
    if per_particle:
        return block.f_values().sub_(a.mul_(hb)).div_(block.count)
    return (block.sum_f - a.mul_(hb).sum(0)) / block.count


def _leave_one_out_coefficients(block, dtype):
    """Each particle's :math:`a^{(-s)}_d` for one :class:`_Block` (its ``h``
    and ``f`` left unchanged), from the sums of all the particles: without
    particle :math:`s` the other centred values sum to :math:`-h^c_s` and
    :math:`-f^c_s`, so :math:`\\mathrm{cov}^{(-s)} = \\mathrm{cov} - k f^c_s h^c_s`
    and :math:`\\mathrm{var}^{(-s)} = \\mathrm{var} - k (h^c_s)^2`, with
    :math:`k = S / (S - 1)`."""
    hb, count = block.h, block.count
    sum_h, sum_f, sum_hh, sum_fh = block.sum_h, block.sum_f, block.sum_hh, block.sum_fh
    h_mean, f_mean = sum_h / count, sum_f / count
    # cov^(-s) / k and var^(-s) / k, whose ratio is the coefficient
    k = count / (count - 1)
    cov, var = (sum_fh - f_mean * sum_h) / k, (sum_hh - h_mean * sum_h) / k
    hc = hb - h_mean
    denominator = torch.addcmul(var, hc, hc, value=-1, out=block.spare)
    centred_f = block.f - f_mean if block.signal is None else torch.addcmul(-f_mean, hb, block.signal)
    numerator = torch.addcmul(cov, centred_f, hc, value=-1, out=hc)
    # A variance below tolerance * (the others' sum of squares) is rounding
    # error of the scores; one below 64 float64 epsilons times the sum of
    # squares of all the particles is rounding error of this arithmetic.
    tolerance, rounding = 64 * torch.finfo(dtype).eps, 64 * torch.finfo(torch.float64).eps
    if bool((denominator.amin(0) > (tolerance + rounding) / k * sum_hh).all()):  # above every particle's threshold
        return numerator.div_(denominator)
    threshold = (tolerance * (sum_hh - hb.square()).clamp(min=0) + rounding * sum_hh) / k
    regression = numerator / torch.where(denominator > threshold, denominator, torch.inf)
    # The others' scores all equal: the slope is undefined; the coefficient
    # is then their regression through the origin, f / h (their mean signal
    # for f = h L), 0 where their h is 0.
    others = count - 1
    others_h = (sum_h - hb) / others
    others_f = (sum_f - block.f_values()) / others
    origin = others_h.abs() > (k * threshold / others).sqrt()
    through_origin = torch.where(origin, others_f / torch.where(origin, others_h, 1.0), 0.0)
    return torch.where(denominator > threshold, regression, through_origin)


def _fixed_or_pooled_coefficient(block, coefficient, dtype):
    """A fixed coefficient, or :math:`a^*` of all the particles of a
    :class:`_Block` (0 where their variance is rounding error)."""
    if coefficient != "pooled":
        return float(coefficient)
    count, sum_h, sum_hh = block.count, block.sum_h, block.sum_hh
    cov, var = block.sum_fh - block.sum_f * sum_h / count, sum_hh - sum_h * sum_h / count
    # Below tolerance * (sum of squares), a variance is rounding error: 0.
    return torch.where(var > 64 * torch.finfo(dtype).eps * sum_hh, cov / var, 0.0)


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
        each particle has its own), stores its tensors normalized, as a
        categorical does, or stores a tensor computed from another, as a
        ``LowRankMultivariateNormal`` does (see
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
    num_particles = particles.num_particles
    per_particle = [isinstance(target, list) for target, _ in frontier]  # each particle's own tensor
    sizes = [rows.shape[2:].numel() for _, rows in frontier]
    surrogate = 0.0
    for group in _groups(sizes, per_particle, max(1, _BLOCK_ELEMENTS // num_particles)):
        h = _columns([frontier[i][1][0] for i in group], num_particles)
        f = None if signals is None else _columns([frontier[i][1][1] for i in group], num_particles)
        controlled = controlled_gradient(h, coefficient, signal, f, per_particle=per_particle[group[0]]).detach()
        if per_particle[group[0]]:
            for i, part in zip(group, controlled.split([sizes[i] for i in group], dim=-1)):
                for term, own_target in zip(part, frontier[i][0]):
                    if own_target is not None:
                        surrogate = surrogate + (term.reshape(own_target.shape) * own_target).sum()
        else:
            surrogate = surrogate + torch.dot(controlled, _columns([frontier[i][0] for i in group], 1)[0])
    return surrogate


def _groups(sizes, per_particle, columns):
    """The frontier's entries (their numbers of columns ``sizes``) in groups
    of consecutive entries of the same kind and at most ``columns`` columns
    in all (an entry larger than that alone): small tensors go through the
    arithmetic together."""
    groups = []
    for i, size in enumerate(sizes):
        group = groups[-1] if groups else None
        if group and per_particle[group[0]] == per_particle[i] and sum(sizes[j] for j in group) + size <= columns:
            group.append(i)
        else:
            groups.append([i])
    return groups


def _columns(rows, num_particles):
    """Per-particle rows side by side, shape ``(S, columns)``."""
    if len(rows) == 1:
        return rows[0].reshape(num_particles, -1)
    return torch.cat([row.reshape(num_particles, -1) for row in rows], dim=1)
