"""The arithmetic the estimators share: per-particle sums, learning signals,
score Jacobians, control variates and linear surrogates.

Notation: particles :math:`z_s \\sim q_\\lambda`, :math:`s = 1..S`;
:math:`L_s = \\log p(x, z_s) - \\log q(z_s)`; the score
:math:`h_s = \\nabla_\\lambda \\log q_\\lambda(z_s)`.
"""

import math

import torch

from .. import _validation
from .scores import distribution_gradients, particle_gradients

COEFFICIENTS = ("leave_one_out", "pooled")
COORDINATES = ("parameters", "distributions")


def per_particle(term):
    """A ``(S,) + plate_shape`` term summed over its plate dims: shape ``(S,)``."""
    return term.reshape(term.shape[0], -1).sum(-1)


def sum_to_plates(term, plate_dims):
    """Sums a ``(S,) + plate_shape`` term over every plate dim not in
    ``plate_dims`` (negative dims), keeping dims."""
    dims = [d for d in range(-(term.dim() - 1), 0) if d not in plate_dims]
    return term.sum(dims, keepdim=True) if dims else term


def score_function_surrogate(terms, signal):
    """Per particle,
    :math:`\\log p(x, z_s) - \\log q^{\\mathrm{path}}(z_s) + \\log q^{\\mathrm{score}}(z_s)\\,\\mathrm{stop}(L_s)`:
    its gradient is the score-function estimator with learning signal
    ``signal`` (shape ``(S,)``) at the score sites, and the exact pathwise
    gradient through point masses and model parameters. Shape ``(S,)``."""
    surrogate = terms.log_p() - terms.path_log_q()
    if terms.score_sites():
        surrogate = surrogate + terms.score_log_q() * signal.detach()
    return surrogate


def markov_blanket_signals(terms):
    """For each score site :math:`j`, its Markov-blanket learning signal

    .. math::

        L^{(j)}_s = \\sum_{c \\in \\mathrm{MB}(j)} \\log p_c(x, z_s)
                  - \\sum_{k \\ni j} \\log q_k(z_s),

    element-wise inside the plates :math:`j` shares with each factor, shape
    ``(S,) + plate_shape``: ``{name: signal}``. The factors are read from the
    programs (:attr:`~pyro_vi.elbo.particles.ParticleTerms.signal_factors`)."""
    signals = {}
    factors = terms.signal_factors
    for site in terms.score_sites():
        model_factors, guide_factors = factors[site.name]
        signal = 0.0
        for table, chosen, sign in ((terms.model, model_factors, 1.0), (terms.guide, guide_factors, -1.0)):
            for name, plates in chosen.items():
                if name in table:
                    dims = {site.plates[p] for p in plates}
                    signal = signal + sign * sum_to_plates(table[name].log_prob, dims)
        signals[site.name] = torch.as_tensor(signal).detach()
    return signals


def rao_blackwell_term(terms, signals):
    """Per particle, :math:`\\sum_j \\langle \\log q_j(z_{j,s}),
    \\mathrm{stop}(L^{(j)}_s)\\rangle` over the score sites: its gradient is
    the Rao-Blackwellized score-function estimator. Shape ``(S,)``."""
    total = 0.0
    for site in terms.score_sites():
        total = total + per_particle(site.score_log_prob * signals[site.name])
    return torch.as_tensor(total)


def check_coordinates(coordinates, estimator):
    """Validates the control variates' ``coordinates``."""
    return _validation.choice("{}: coordinates".format(estimator), coordinates, COORDINATES)


def check_coefficient(coefficient, estimator):
    """Validates a control-variate ``coefficient`` (``"leave_one_out"``,
    ``"pooled"`` or a finite number); returns the number of particles it
    needs."""
    if isinstance(coefficient, str):
        _validation.choice("{}: coefficient".format(estimator), coefficient, COEFFICIENTS)
        return 3 if coefficient == "leave_one_out" else 2
    _validation.real("{}: coefficient".format(estimator), coefficient)
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
    :math:`a`. Where the variance of :math:`h_d` is 0 the coefficient is 0.

    The coefficients come from per-parameter sums over the particles (of
    :math:`h`, :math:`f` and their centred products), taken a block of
    parameters at a time, so that no temporary is larger than a block. (Centring ``signal`` first changes
    :math:`a` by the same constant and leaves :math:`\\hat g` as it is.)
    """
    num_particles, shape = h.shape[0], h.shape[1:]
    h = h.reshape(num_particles, -1)
    shift = 0.0
    if f is None:
        signal = signal.detach().to(h.dtype)
        shift = signal.mean()
        signal = (signal - shift)[:, None]  # (S, 1)
    else:
        f = f.reshape(num_particles, -1)
    gradient = h.new_empty(h.shape[1])
    # Every statistic is per parameter: a block of parameters at a time, all
    # particles, so that the temporaries stay small (and in cache).
    block = max(1, _BLOCK_ELEMENTS // num_particles)
    for start in range(0, h.shape[1], block):
        columns = slice(start, start + block)
        fb = None if f is None else f[:, columns]
        gradient[columns] = _controlled(h[:, columns], coefficient, signal, fb, shift)
    return gradient.reshape(shape)


_BLOCK_ELEMENTS = 1 << 18


def _controlled(h, coefficient, signal, f, shift):
    """:func:`controlled_gradient` of a block of parameters: ``h`` and ``f``
    of shape ``(S, block)``, or ``f = h * signal`` (``signal`` centred, of
    shape ``(S, 1)``). Covariances from centred values (two passes)."""
    num_particles = h.shape[0]
    h_mean = h.mean(0)
    f_mean = (signal.T @ h).reshape(-1) / num_particles if f is None else f.mean(0)
    if not isinstance(coefficient, str):
        return f_mean + (shift - float(coefficient)) * h_mean
    hc = h - h_mean
    fc = torch.addcmul(-f_mean, h, signal) if f is None else f - f_mean
    fh, hh = fc * hc, hc.square()
    cov, var = fh.sum(0), hh.sum(0)
    if coefficient == "pooled":
        return f_mean - cov / torch.where(var > 0, var, torch.inf) * h_mean
    # Without particle s the other centred values sum to -hc[s] and -fc[s]:
    # cov(-s) = cov - k fc hc and var(-s) = var - k hc^2, with k = S / (S - 1).
    k = num_particles / (num_particles - 1)
    numerator = torch.add(cov, fh, alpha=-k)
    denominator = torch.add(var, hh, alpha=-k)
    denominator.masked_fill_(denominator <= 0, torch.inf)
    return f_mean - numerator.mul_(h).div_(denominator).sum(0) / num_particles


def controlled_surrogate(terms, params, coefficient, signal=None, signals=None, coordinates="parameters"):
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
        Falls back to ``"parameters"`` where the particles do not share the
        distributions' tensors (see
        :func:`~pyro_vi.elbo.scores.distribution_gradients`).
    """
    weightings = [{}] if signals is None else [{}, signals]
    frontier = distribution_gradients(terms, weightings) if coordinates == "distributions" else None
    if frontier is None:
        frontier = [
            (grads.coordinates(param), grads.rows)
            for param, grads in zip(params, particle_gradients(terms, weightings, params))
            if grads is not None
        ]
    surrogate = 0.0
    for target, rows in frontier:
        f = None if signals is None else rows[1]
        g = controlled_gradient(rows[0], coefficient, signal=signal, f=f)
        surrogate = surrogate + (g.detach() * target).sum()
    return torch.as_tensor(surrogate)


def linear_surrogate(params, grads):
    """:math:`\\sum_d \\mathrm{stop}(g_d) \\lambda_d`, whose gradient is ``grads``
    (``None`` entries are skipped)."""
    surrogate = 0.0
    for param, grad in zip(params, grads):
        if grad is not None:
            surrogate = surrogate + (grad.detach() * param).sum()
    return torch.as_tensor(surrogate)


def check_reparameterized(terms, estimator):
    """Refuses, by name, a guide site without a pathwise derivative."""
    for site in terms.guide.values():
        if not site.reparameterized:
            kind = "pyro.factor site" if site.is_observed else "site"
            raise ValueError(
                "{} needs reparameterized guide sites, but {} '{}' has no pathwise "
                "derivative (it cannot rsample, or has_rsample=False); use "
                "RaoBlackwellELBO or ScoreFunctionELBO for it".format(estimator, kind, site.name)
            )


def log_mean_exp(log_w):
    """:math:`\\log \\frac{1}{K}\\sum_k e^{\\ell_k}` over dim 0, by log-sum-exp."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])
