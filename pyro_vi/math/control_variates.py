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
from .jacobians import SignalRows, distribution_gradients, particle_gradients

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
    ``(S,)``, or element-wise, the shape of ``h``), or given per particle as
    ``f``. ``coefficient``:
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
    is 0. (A variance below :math:`64` epsilons of the arithmetic times the
    sum of squares of all the particles is the rounding error of this
    arithmetic, and counts as 0 too.)

    The coefficients need only the per-parameter means of :math:`h, f` and
    the centred sums of squares and products over the particles. The
    arithmetic goes a block of parameters at a time, in the scores' dtype
    (at least float32; float64 for a given ``f``), each block's sums and
    gradient in one go, so that no temporary is larger than a block. With
    ``per_particle``, the particles' terms :math:`(f_d[s] - a_d h_d[s]) / S`
    instead, shape ``(S,) + shape``, whose sum over the particles is
    :math:`\\hat g`.
    """
    parts = [_controlled_block(block, coefficient, per_particle, h.dtype) for block in _blocks(h, signal, f)]
    joined = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return joined.to(h.dtype).reshape(h.shape if per_particle else h.shape[1:])


# Columns per block: each block's temporaries (a few of S x block) stay
# small enough to be cached and reused by the allocator.
_BLOCK_ELEMENTS = 1 << 16


@dataclass
class _Block:
    """One block of columns, shape ``(S, block)``, in the scores' dtype (at
    least float32; float64 for a given ``f``): ``h`` and ``f`` (which the
    caller must not change); their means over the particles; their centred
    values ``hc``, ``fc`` and the products ``hh`` :math:`= h^c h^c` and
    ``fh`` :math:`= f^c h^c` (which the caller may overwrite); and the
    centred sums :math:`V = \\sum_s (h^c_s)^2`, :math:`C = \\sum_s f^c_s h^c_s`.
    Centring first keeps them exact to a few epsilons of the arithmetic,
    where the one-pass :math:`\\sum h^2 - (\\sum h)^2 / S` would lose what
    the mean shares with the spread. For :math:`f = hL`, ``f`` is
    :math:`h (L - c)`, with ``shift`` :math:`c = \\bar L` (per column for an
    element-wise signal): every coefficient is then :math:`a - c`, and
    :math:`f - (a - c) h` is the same gradient, without the rounding error
    of a large :math:`|\\bar L|` (the log-likelihood of many data)."""

    h: torch.Tensor
    f: torch.Tensor
    h_mean: torch.Tensor
    f_mean: torch.Tensor
    hc: torch.Tensor
    fc: torch.Tensor
    hh: torch.Tensor
    fh: torch.Tensor
    V: torch.Tensor
    C: torch.Tensor
    shift: object = 0.0
    signal: Optional[torch.Tensor] = None

    @classmethod
    def of(cls, h, f, shift=0.0, signal=None):
        """``signal``: :math:`L - c` where :math:`f = h (L - c)`."""
        h_mean, f_mean = h.mean(0), f.mean(0)
        hc, fc = h - h_mean, f - f_mean
        hh, fh = hc * hc, fc * hc
        return cls(h, f, h_mean, f_mean, hc, fc, hh, fh, hh.sum(0), fh.sum(0), shift, signal)

    @property
    def count(self):
        """The number of particles, :math:`S`."""
        return self.h.shape[0]

    @property
    def sum_hh(self):
        """:math:`\\sum_s h_s^2`, the scale of the rounding error."""
        return self.V + self.count * self.h_mean.square()


def _blocks(h, signal, f):
    """The :class:`_Block` of each block of columns."""
    num_particles = h.shape[0]
    # A given f (a Rao-Blackwellized term h L_j) holds large |L_j| (a global
    # site's signal sums the likelihood of every datum), which float32 sums
    # would not cancel (test_the_control_variates_leave_no_rounding_floor_...).
    dtype = torch.promote_types(h.dtype, torch.float32 if f is None else torch.float64)
    h = h.detach().reshape(num_particles, -1)
    f = None if f is None else f.detach().reshape(num_particles, -1)
    if signal is not None:
        signal = signal.detach().to(dtype)
        if signal.dim() == 1:
            shift = float(signal.mean())
            column = (signal - shift).reshape(num_particles, 1)
        else:  # element-wise
            signal = signal.reshape(num_particles, -1)
    block = max(1, _BLOCK_ELEMENTS // num_particles)
    for start in range(0, h.shape[1], block):
        columns = slice(start, start + block)
        hb = h[:, columns].to(dtype)
        if f is not None:
            yield _Block.of(hb, f[:, columns].to(dtype))
        elif signal.dim() == 1:
            yield _Block.of(hb, hb * column, shift, column)
        else:
            signal_block = signal[:, columns]
            shift = signal_block.mean(0)
            shifted = signal_block - shift
            yield _Block.of(hb, hb * shifted, shift, shifted)


def _controlled_block(block, coefficient, per_particle, dtype):
    """:math:`(f_d[s] - a_d h_d[s]) / S` of one :class:`_Block`, summed over
    the particles (shape ``(block,)``) or per particle."""
    if not isinstance(coefficient, str) or coefficient == "pooled":
        a = _fixed_or_pooled_coefficient(block, coefficient, dtype)
    else:
        a = _leave_one_out_coefficients(block, dtype)
    if per_particle:
        return (block.f - a * block.h) / block.count
    return block.f_mean - (a * block.h).sum(0) / block.count


def _leave_one_out_coefficients(block, dtype):
    """Each particle's :math:`a^{(-s)}_d` for one :class:`_Block`, from the
    centred sums of all the particles: without particle :math:`s` the other
    centred values sum to :math:`-h^c_s` and :math:`-f^c_s`, so
    :math:`\\mathrm{cov}^{(-s)} = (C - k f^c_s h^c_s) / (S - 1)` and
    :math:`\\mathrm{var}^{(-s)} = (V - k (h^c_s)^2) / (S - 1)`, with
    :math:`k = S / (S - 1)`. Overwrites ``hh`` and ``fh``."""
    count = block.count
    k = count / (count - 1)
    # var^(-s) and cov^(-s), times (S - 1) / k, whose ratio is the coefficient
    denominator = torch.sub(block.V / k, block.hh, out=block.hh)
    numerator = torch.sub(block.C / k, block.fh, out=block.fh)
    # A variance below tolerance * (the others' sum of squares) is rounding
    # error of the scores; one below 64 epsilons of the arithmetic times the
    # centred sum of squares V is rounding error of this arithmetic (V/k and
    # (h^c_s)^2 cancel where the others are equal).
    tolerance, rounding = 64 * torch.finfo(dtype).eps, 64 * torch.finfo(block.h.dtype).eps
    sum_hh, noise = block.sum_hh, rounding / k * block.V
    if bool((denominator.amin(0) > tolerance / k * sum_hh + noise).all()):  # above every particle's threshold
        return numerator.div_(denominator)
    others_squares = tolerance * (sum_hh - block.h.square()).clamp(min=0)
    threshold = others_squares / k + noise
    regression = numerator / torch.where(denominator > threshold, denominator, torch.inf)
    # The others' scores all equal: the slope is undefined; the coefficient
    # is then their regression through the origin, f / h: for f = h L their
    # mean signal, which the shifted signal (of mean 0) gives without h's
    # cancellation, -(L_s - c) / (S - 1); 0 where their h is 0, up to the
    # scores' rounding and this arithmetic's.
    others = count - 1
    others_h = block.h_mean - block.hc / others
    if block.signal is None:
        slope = block.f_mean - block.fc / others
        slope = slope / torch.where(others_h == 0, 1.0, others_h)
    else:
        slope = -block.signal / others
    noise_h = rounding * (block.h_mean.abs() + block.hc.abs() / others)
    origin = others_h.abs() > (others_squares / others).sqrt() + noise_h
    through_origin = torch.where(origin, slope, -block.shift)
    return torch.where(denominator > threshold, regression, through_origin)


def _fixed_or_pooled_coefficient(block, coefficient, dtype):
    """A fixed coefficient, or :math:`a^* = C / V` of all the particles of a
    :class:`_Block` (0 where their variance is rounding error)."""
    if coefficient != "pooled":
        return float(coefficient) - block.shift
    # Below tolerance * (sum of squares), a variance is rounding error: 0.
    return torch.where(block.V > 64 * torch.finfo(dtype).eps * block.sum_hh, block.C / block.V, -block.shift)


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
    factored = [isinstance(rows, SignalRows) for _, rows in frontier]
    sizes = [rows.shape[2:].numel() for _, rows in frontier]
    surrogate = 0.0
    for group in _groups(sizes, list(zip(per_particle, factored)), max(1, _BLOCK_ELEMENTS // num_particles)):
        h = _columns([frontier[i][1][0] for i in group], num_particles)
        f, group_signal = None, signal
        if factored[group[0]]:
            group_signal = _columns([frontier[i][1].signal for i in group], num_particles)
        elif signals is not None:
            f = _columns([frontier[i][1][1] for i in group], num_particles)
        controlled = controlled_gradient(h, coefficient, group_signal, f, per_particle=per_particle[group[0]]).detach()
        if per_particle[group[0]]:
            for i, part in zip(group, controlled.split([sizes[i] for i in group], dim=-1)):
                for term, own_target in zip(part, frontier[i][0]):
                    if own_target is not None:
                        surrogate = surrogate + (term.reshape(own_target.shape) * own_target).sum()
        else:
            surrogate = surrogate + torch.dot(controlled, _columns([frontier[i][0] for i in group], 1)[0])
    return surrogate


def _groups(sizes, kinds, columns):
    """The frontier's entries (their numbers of columns ``sizes``) in groups
    of consecutive entries of the same kind and at most ``columns`` columns
    in all (an entry larger than that alone): small tensors go through the
    arithmetic together."""
    groups = []
    for i, size in enumerate(sizes):
        group = groups[-1] if groups else None
        if group and kinds[group[0]] == kinds[i] and sum(sizes[j] for j in group) + size <= columns:
            group.append(i)
        else:
            groups.append([i])
    return groups


def _columns(rows, num_particles):
    """Per-particle rows side by side, shape ``(S, columns)``."""
    if len(rows) == 1:
        return rows[0].reshape(num_particles, -1)
    return torch.cat([row.reshape(num_particles, -1) for row in rows], dim=1)
