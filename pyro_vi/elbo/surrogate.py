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


def check_pool(pool_processes, coefficient, estimator):
    """The ``pool`` of :func:`controlled_surrogate` for ``pool_processes``."""
    from ..distributed import sum_over_processes

    if not _validation.boolean("{}: pool_processes".format(estimator), pool_processes):
        return None
    if not isinstance(coefficient, str):
        raise ValueError(
            "{}: pool_processes=True has no effect with a fixed coefficient={!r}; drop one of "
            "them".format(estimator, coefficient)
        )
    return sum_over_processes


def check_coefficient(coefficient, estimator):
    """Validates a control-variate ``coefficient`` (``"leave_one_out"``,
    ``"pooled"`` or a finite number); returns the number of particles it
    needs."""
    if isinstance(coefficient, str):
        _validation.choice("{}: coefficient".format(estimator), coefficient, COEFFICIENTS)
        return 3 if coefficient == "leave_one_out" else 2
    _validation.real("{}: coefficient".format(estimator), coefficient)
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
    :math:`a`. Where the variance of :math:`h_d` is 0 the coefficient is 0.

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


def gradient_from_sums(h, sums, pooled, coefficient, signal=None, f=None):
    """:math:`\\hat g` of this process's particles (``h``, ``signal`` or ``f``,
    whose :func:`particle_sums` are ``sums``), with the coefficients of the
    ``pooled`` sums (these, or those of several processes added up)."""
    num_particles, shape = h.shape[0], h.shape[1:]
    h_sum, f_sum = sums[1], sums[2]
    if not isinstance(coefficient, str):
        return ((f_sum - float(coefficient) * h_sum) / num_particles).to(h.dtype).reshape(shape)
    count = pooled[0]
    h_mean, f_mean = pooled[1] / count, pooled[2] / count
    cov = pooled[4] - count * f_mean * h_mean
    var = pooled[3] - count * h_mean.square()
    if coefficient == "pooled":
        a = cov / torch.where(var > 0, var, torch.inf)
        return ((f_sum - a * h_sum) / num_particles).to(h.dtype).reshape(shape)
    # Without particle s the other centred values sum to -hc[s] and -fc[s]:
    # cov(-s) = cov - k fc hc and var(-s) = var - k hc^2, with k = N / (N - 1).
    k = count / (count - 1)
    a_h_sum = torch.empty_like(h_sum)
    for columns, hb, fb in _blocks(h, signal, f):
        hc, fc = hb - h_mean[columns], fb - f_mean[columns]
        numerator = cov[columns] - k[columns] * fc * hc
        denominator = var[columns] - k[columns] * hc.square()
        denominator.masked_fill_(denominator <= 0, torch.inf)
        a_h_sum[columns] = numerator.mul_(hb).div_(denominator).sum(0)
    return ((f_sum - a_h_sum) / num_particles).to(h.dtype).reshape(shape)


def controlled_surrogate(
    terms, params, coefficient, signal=None, signals=None, coordinates="parameters", pool=None
):
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
    :param pool: adds up the sufficient statistics of several processes
        (:func:`pyro_vi.distributed.sum_over_processes`), in one all-reduce
        for all parameters, so that the coefficients come from every
        process's particles.
    """
    weightings = [{}] if signals is None else [{}, signals]
    frontier = distribution_gradients(terms, weightings) if coordinates == "distributions" else None
    if frontier is None:
        frontier = [
            (grads.coordinates(param), grads.rows)
            for param, grads in zip(params, particle_gradients(terms, weightings, params))
            if grads is not None
        ]
    if not frontier:
        return terms.zeros()
    sums = [particle_sums(rows[0], signal, None if signals is None else rows[1]) for _, rows in frontier]
    pooled = sums
    if pool is not None and isinstance(coefficient, str):
        # One all-reduce for the statistics of every parameter.
        sizes = [s.shape[1] for s in sums]
        pooled = list(pool(torch.cat(sums, dim=1)).split(sizes, dim=1))
    surrogate = 0.0
    for (target, rows), own, pooled_sums in zip(frontier, sums, pooled):
        f = None if signals is None else rows[1]
        g = gradient_from_sums(rows[0], own, pooled_sums, coefficient, signal, f)
        surrogate = surrogate + (g.detach() * target).sum()
    return surrogate


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
