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

__all__ = [
    "COEFFICIENTS",
    "COORDINATES",
    "check_antithetic",
    "check_coefficient",
    "check_coordinates",
    "check_importance_weighted",
    "check_reparameterized",
    "controlled_gradient",
    "controlled_surrogate",
    "disarm_term",
    "disarm_weights",
    "gradient_from_sums",
    "independent_plates",
    "iwelbo",
    "leave_one_out_signals",
    "linear_surrogate",
    "local_disarm_term",
    "log_mean_exp",
    "log_mean_exp_replacing",
    "log_weights_per_point",
    "markov_blanket_signals",
    "normalized_weights",
    "particle_sums",
    "pathwise_surrogate",
    "per_particle",
    "per_point",
    "point_scale",
    "random_guide_ancestors",
    "rao_blackwell_term",
    "score_function_surrogate",
    "sum_to_plates",
    "vimco_signals",
]

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


def pathwise_surrogate(terms):
    """Per particle, the part of the surrogate that is differentiated through
    the samples: :math:`\\log p(x, z_s) - \\log q^{\\mathrm{path}}(z_s)
    + \\log q^{\\mathrm{path}}_{\\mathrm{stop}(\\lambda)}(z_s)` over the guide sites
    without a score. For a site that keeps its pathwise derivative (it
    ``rsample``-s) this is the sticking-the-landing gradient (Roeder et al.
    2017): the score part of :math:`\\nabla_\\lambda \\log q`, whose expectation
    is zero, is cancelled by the density at stopped parameters. Point masses
    and model parameters get their exact gradient. When every random guide
    site has a score (a score-function estimator), this is
    :math:`\\log p - \\log q^{\\mathrm{point\\ masses}}` and nothing is recomputed.
    Shape ``(S,)``."""
    surrogate = terms.log_p() - terms.path_log_q()
    sites = [s.name for s in terms.guide.values() if s.score_log_prob is None and not s.is_point_mass]
    if sites:
        stopped = terms.stopped_guide_log_prob()
        for name in sites:
            surrogate = surrogate + per_particle(stopped[name])
    return surrogate


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
    return _validation.choice(f"{estimator}: coordinates", coordinates, COORDINATES)


def check_coefficient(coefficient, estimator):
    """Validates a control-variate ``coefficient`` (``"leave_one_out"``,
    ``"pooled"`` or a finite number); returns the number of particles it
    needs."""
    if isinstance(coefficient, str):
        _validation.choice(f"{estimator}: coefficient", coefficient, COEFFICIENTS)
        return 3 if coefficient == "leave_one_out" else 2
    _validation.real(f"{estimator}: coefficient", coefficient)
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
    a time, in float64, so that no temporary is larger than a block.
    The estimate is linear in the signal (in ``f``) at fixed particles.
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


def gradient_from_sums(h, sums, coefficient, signal=None, f=None):
    """:math:`\\hat g` of the particles ``h``, ``signal`` or ``f``, whose
    :func:`particle_sums` are ``sums``."""
    num_particles, shape = h.shape[0], h.shape[1:]
    h_sum, f_sum = sums[1], sums[2]
    if not isinstance(coefficient, str):
        return ((f_sum - float(coefficient) * h_sum) / num_particles).to(h.dtype).reshape(shape)
    count, sum_hh = sums[0], sums[3]
    h_mean, f_mean = h_sum / count, f_sum / count
    cov = sums[4] - count * f_mean * h_mean
    var = sum_hh - count * h_mean.square()
    # Below tolerance * (sum of squares), a variance is rounding error: 0.
    tolerance = 64 * torch.finfo(h.dtype).eps
    if coefficient == "pooled":
        a = torch.where(var > tolerance * sum_hh, cov / var, 0.0)
        return ((f_sum - a * h_sum) / num_particles).to(h.dtype).reshape(shape)
    # Without particle s the other centred values sum to -hc[s] and -fc[s]:
    # cov(-s) = cov - k fc hc and var(-s) = var - k hc^2, with k = N / (N - 1).
    k, others = count / (count - 1), count - 1
    a_h_sum = torch.empty_like(h_sum)
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
        a_h_sum[columns] = (a * hb).sum(0)
    return ((f_sum - a_h_sum) / num_particles).to(h.dtype).reshape(shape)


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
        distributions' tensors or where a site stores them normalized, as a
        categorical does (see
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
    if not frontier:
        return terms.zeros()
    surrogate = 0.0
    for target, rows in frontier:
        f = None if signals is None else rows[1]
        g = controlled_gradient(rows[0], coefficient, signal, f)
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
                f"{estimator} needs reparameterized guide sites, but {kind} '{site.name}' has no pathwise "
                "derivative (it cannot rsample, or has_rsample=False); use "
                "RaoBlackwellELBO or ScoreFunctionELBO for it"
            )


def log_mean_exp(log_w):
    """:math:`\\log \\frac{1}{K}\\sum_k e^{\\ell_k}` over dim 0, by log-sum-exp."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


# ---------------------------------------------------------------- importance-weighted bounds


def independent_plates(terms):
    """The plates every model and guide site lies in, ``{name: dim}``: the
    particles' log-weights factorize over them (one importance-weighted bound
    per data point in a VAE). Empty when any site is global."""
    sites = list(terms.model.values()) + list(terms.guide.values())
    if not sites:
        return {}
    common = set.intersection(*(set(site.plates) for site in sites))
    return {name: sites[0].plates[name] for name in common}


def per_point(terms, log_probs, sites):
    """:math:`\\sum` of ``log_probs`` (``{name: (S,) + plate_shape}``) per
    point of the independent plates: summed over every other plate dim
    (size 1 there), each divided by its site's subsampling scale (which
    multiplies each point's bound instead; ``poutine.scale`` stays inside
    the weights, as in Pyro's ``RenyiELBO``)."""
    dims = set(independent_plates(terms).values())
    total = terms.zeros(terms.num_particles, *(1,) * terms.plate_dims)
    for name, log_prob in log_probs.items():
        log_prob = sum_to_plates(log_prob, dims)
        scale = sites[name].subsample_scale
        total = total + (log_prob if scale == 1 else log_prob / scale)
    return total


def log_weights_per_point(terms):
    """``(log p, log w)`` per point of the independent plates, shape
    ``(K,) + plate_shape``: :math:`\\log p(x, z_k)` and
    :math:`\\log w_k = \\log p(x, z_k) - \\log q(z_k)`."""
    log_p = per_point(terms, {n: t.log_prob for n, t in terms.model.items()}, terms.model)
    log_q = per_point(terms, {n: t.log_prob for n, t in terms.guide.items()}, terms.guide)
    return log_p, log_p - log_q


def point_scale(terms):
    """The subsampling scale :math:`N / B` of each point's bound: that of the
    subsampled plates, which every site lies in."""
    sites = list(terms.model.values()) + list(terms.guide.values())
    return sites[0].subsample_scale if sites else 1.0


def iwelbo(log_w, scale=1.0):
    """:math:`\\sum_n s \\log \\frac{1}{K} \\sum_k w_{k,n}`, by log-sum-exp."""
    return (scale * log_mean_exp(log_w)).sum()


def normalized_weights(log_w):
    """:math:`\\tilde w_k = w_k / \\sum_j w_j`, per point, detached."""
    return torch.softmax(log_w.detach(), 0)


def log_mean_exp_replacing(log_w, replacement):
    """For each :math:`k`, :math:`\\log \\frac{1}{K}\\bigl(\\sum_{j \\ne k} w_j
    + e^{r_k}\\bigr)`: the bound with sample :math:`k`'s log-weight replaced
    by ``replacement[k]``; both of shape ``(K,) + shape``, the result too.
    Exact in log space (a :math:`K \\times K` log-sum-exp, no subtraction)."""
    num = log_w.shape[0]
    eye = torch.eye(num, dtype=torch.bool, device=log_w.device).reshape((num, num) + (1,) * (log_w.dim() - 1))
    table = torch.where(eye, replacement.unsqueeze(1), log_w.unsqueeze(0))  # row k: log w with entry k replaced
    return torch.logsumexp(table, 1) - math.log(num)


def vimco_signals(log_w):
    """VIMCO's local learning signals (Mnih and Rezende 2016, eq. 9 with the
    geometric mean): :math:`\\hat L - \\hat L_{-k}`, where
    :math:`\\hat L = \\log \\frac{1}{K}\\sum_j w_j` and :math:`\\hat L_{-k}` is the
    same bound with :math:`w_k` replaced by the geometric mean of the others,
    :math:`\\exp(\\frac{1}{K-1}\\sum_{j \\ne k} \\log w_j)`. :math:`\\hat L_{-k}` does
    not depend on :math:`z_k`, so it is a baseline for sample :math:`k`'s
    score. ``log_w``: ``(K,) + shape``, ``K >= 2``; detached result."""
    log_w = log_w.detach()
    num = log_w.shape[0]
    others_mean = (log_w.sum(0, keepdim=True) - log_w) / (num - 1)
    return log_mean_exp(log_w).unsqueeze(0) - log_mean_exp_replacing(log_w, others_mean)


def check_importance_weighted(terms, estimator):
    """Refuses, by name, what an importance-weighted bound cannot take:
    subsampled sequential plates, and a site outside a subsampled plate
    (the bound of latents shared across data points has no unbiased
    minibatch estimate)."""
    sites = list(terms.model.values()) + list(terms.guide.values())
    common = set(independent_plates(terms))
    for site in sites:
        sequential = site.subsampled_plates - set(site.plates)
        if sequential:
            raise ValueError(
                f"{estimator} does not support subsampled sequential plates: site '{site.name}' is in "
                f"the subsampled plate '{sorted(sequential)[0]}'; vectorize the plate"
            )
    subsampled = set()
    for site in sites:
        subsampled |= site.subsampled_plates
    for plate in subsampled:
        if plate not in common:
            outside = next(site for site in sites if plate not in site.plates)
            raise ValueError(
                f"{estimator}: site '{outside.name}' lies outside the subsampled plate '{plate}'; the "
                "importance-weighted bound of latents shared across data points has "
                "no unbiased minibatch estimate: do not subsample, or use an ELBO "
                "estimator"
            )


def random_guide_ancestors(terms, name):
    """The random guide sites (not point masses, not factors) that the
    sample or the distribution of guide site ``name`` depends on, directly or
    through point masses (read by provenance from the programs)."""
    guide = terms.read_structure()[1]
    random = {n for n, site in terms.guide.items() if not site.is_point_mass and not site.is_observed}
    found, seen, frontier = set(), set(), set(guide.dependencies.get(name, ())) - {name}
    while frontier:
        site = frontier.pop()
        seen.add(site)
        if site in random:
            found.add(site)
        else:
            frontier |= set(guide.dependencies.get(site, ())) - seen - {site, name}
    return found


# ---------------------------------------------------------------- antithetic pairs (DisARM)


def check_antithetic(terms, estimator):
    """Refuses, by name, a guide site that DisARM cannot take: a site with a
    score that is not a Bernoulli, a Bernoulli whose distribution depends on
    another random guide sample (the two particles of a pair would not share
    it), and a Bernoulli that could not be drawn in complete pairs."""
    for site in terms.score_sites():
        bernoulli = terms.bernoulli(site.name) if not site.is_observed else None
        if bernoulli is None:
            kind = "pyro.factor site" if site.is_observed else "site"
            raise ValueError(
                f"{estimator}: {kind} '{site.name}' is not Bernoulli and has no pathwise derivative; DisARM's "
                "antithetic pairs are defined for binary sites only: use "
                "ReinforceLeaveOneOutELBO or RaoBlackwellELBO for this guide"
            )
        ancestors = random_guide_ancestors(terms, site.name)
        if ancestors:
            raise ValueError(
                f"{estimator}: the distribution of Bernoulli site '{site.name}' depends on the random guide "
                f"site '{sorted(ancestors)[0]}'; the two particles of an antithetic pair must share it: use "
                "ReinforceLeaveOneOutELBO or RaoBlackwellELBO for this guide"
            )
        if not bernoulli.paired:
            raise ValueError(
                f"{estimator}: Bernoulli site '{site.name}' could not be drawn in antithetic pairs (it is met in "
                "only one particle of a pair, or the particle plate does not broadcast it); "
                "give both particles of a pair the same sites"
            )


def _with_event_dims(signal, event_dim):
    return signal.reshape(signal.shape + (1,) * event_dim)


def disarm_weights(bernoulli):
    """For the pairs :math:`(b, b')` of a :class:`~pyro_vi.elbo.particles.BernoulliTerm`:
    the logits :math:`\\theta` of each pair's first particle (with graph) and
    :math:`(-1)^{b'}\\, 1[b \\ne b']\\, \\sigma(|\\theta|)` (detached), each of
    shape ``(S/2,) + plate_shape + event_shape``."""
    theta = bernoulli.logits[0::2]
    first, second = bernoulli.value[0::2], bernoulli.value[1::2]
    weight = (1 - 2 * second) * (first != second) * torch.sigmoid(theta.detach().abs())
    return theta, weight


def disarm_term(terms, signals):
    """:math:`\\frac{2}{S}\\sum_i \\sum_n \\mathrm{stop}(g_{i,n}) \\theta_{i,n}` over the
    Bernoulli score sites, whose gradient is DisARM's estimate (Dong, Mnih and
    Tucker 2020, eq. 6) for each of the :math:`S/2` pairs,

    .. math::

        g = \\tfrac{1}{2}\\bigl(L(b) - L(b')\\bigr)\\, (-1)^{b'}\\, 1[b \\ne b']\\,
            \\sigma(|\\theta|),

    with each site's learning ``signals`` (``{site: (S,) + plate_shape}``,
    e.g. Markov-blanket signals), averaged over the pairs."""
    total = 0.0
    num_pairs = terms.num_particles // 2
    for site in terms.score_sites():
        bernoulli = terms.bernoulli(site.name)
        signal = signals[site.name]
        difference = _with_event_dims(0.5 * (signal[0::2] - signal[1::2]), bernoulli.event_dim)
        theta, weight = disarm_weights(bernoulli)
        total = total + ((difference * weight).detach() * theta).sum()
    return torch.as_tensor(total) / num_pairs


def local_disarm_term(terms, log_w, scale=1.0):
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
    total = 0.0
    for site in terms.score_sites():
        bernoulli = terms.bernoulli(site.name)
        theta = bernoulli.logits[0::2]
        b, b_prime = bernoulli.value[0::2], bernoulli.value[1::2]
        common = (b != b_prime) * torch.sigmoid(theta.detach().abs())
        g = (
            _with_event_dims(first_signal, bernoulli.event_dim) * (1 - 2 * b_prime)
            + _with_event_dims(second_signal, bernoulli.event_dim) * (1 - 2 * b)
        ) * common
        total = total + ((0.5 * scale * g).detach() * theta).sum()
    return torch.as_tensor(total)
