"""The arithmetic the estimators share: per-particle sums, learning signals,
score Jacobians, control variates and linear surrogates.

Notation: particles :math:`z_s \\sim q_\\lambda`, :math:`s = 1..S`;
:math:`L_s = \\log p(x, z_s) - \\log q(z_s)`; the score
:math:`h_s = \\nabla_\\lambda \\log q_\\lambda(z_s)`.
"""

import math

import torch

from .. import _validation

COEFFICIENTS = ("leave_one_out", "pooled")


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


def score_jacobians(rows, params):
    """Per-row gradients :math:`\\nabla_\\lambda r` of a vector ``rows`` (e.g.
    the scores :math:`h_s` of ``rows = log q(z_s)``).

    One batched backward pass (``is_grads_batched``), not one per row.

    :param rows: shape ``(R,)``; may have no graph (a guide without a score).
    :param list params: leaf tensors :math:`\\lambda`.
    :returns: per parameter, a tensor of shape ``(R,) + param.shape``, or
        ``None`` where ``rows`` does not depend on it.
    """
    if not rows.requires_grad:
        return [None] * len(params)
    eye = torch.eye(rows.shape[0], dtype=rows.dtype, device=rows.device)
    return list(
        torch.autograd.grad(
            rows, params, grad_outputs=eye, is_grads_batched=True, retain_graph=True, allow_unused=True
        )
    )


def check_coefficient(coefficient, estimator):
    """Validates a control-variate ``coefficient`` (``"leave_one_out"``,
    ``"pooled"`` or a finite number); returns the number of particles it
    needs."""
    if isinstance(coefficient, str):
        _validation.choice("{}: coefficient".format(estimator), coefficient, COEFFICIENTS)
        return 3 if coefficient == "leave_one_out" else 2
    _validation.real("{}: coefficient".format(estimator), coefficient)
    return 1


def control_variate_coefficient(f, h, leave_one_out):
    """The coefficient :math:`a^*_d = \\mathrm{Cov}(f_d, h_d) / \\mathrm{Var}(h_d)`
    of every scalar parameter :math:`d`.

    ``leave_one_out=False`` pools all ``S`` samples (BBVI's choice; the
    coefficient then depends on :math:`z_s` and the estimator has a bias of
    order :math:`1/S`). ``leave_one_out=True`` gives particle :math:`s` the
    coefficient :math:`a^{(-s)}_d` computed without it, which is independent
    of :math:`z_s`, so :math:`E[h_s a^{(-s)}] = E[h_s] E[a^{(-s)}] = 0` and the
    estimator is unbiased. Where :math:`\\mathrm{Var}(h_d) = 0` the coefficient
    is 0.

    :param f: per-particle gradient terms, shape ``(S,) + param.shape``.
    :param h: scores, shape ``(S,) + param.shape``.
    :returns: shape ``param.shape`` (pooled) or ``(S,) + param.shape``.
    """
    # Covariances are shift-invariant: centre on the full-sample means first.
    hc = h - h.mean(0)
    fc = f - f.mean(0)
    cov = (fc * hc).sum(0)
    var = (hc * hc).sum(0)
    if leave_one_out:
        # Without particle s, the other centred values sum to -hc[s], -fc[s].
        n = h.shape[0] - 1
        cov = cov - fc * hc * (1 + 1 / n)
        var = var - hc * hc * (1 + 1 / n)
    positive = var > 0
    return torch.where(positive, cov / torch.where(positive, var, 1.0), 0.0)


def controlled_gradient(f, h, coefficient):
    """:math:`\\hat g_d = \\frac{1}{S}\\sum_s (f_d[s] - a_d h_d[s])` of one
    parameter with the coefficient ``coefficient``: ``"pooled"``,
    ``"leave_one_out"`` or a fixed number."""
    if isinstance(coefficient, str):
        a = control_variate_coefficient(f, h, coefficient == "leave_one_out")
    else:
        a = torch.as_tensor(float(coefficient), dtype=h.dtype, device=h.device)
    return (f - a * h).mean(0)


def controlled_surrogate(params, h_rows, coefficient, signal=None, f_rows=None):
    """The linear surrogate :math:`\\sum_d \\mathrm{stop}(\\hat g_d) \\lambda_d`
    of the controlled gradients, for the parameters the scores depend on.

    :param h_rows: shape ``(S,)``, whose per-particle gradients are the
        scores :math:`h_s`.
    :param signal: shape ``(S,)``: then :math:`f_s = h_s L_s` with
        :math:`L_s` = ``signal``, from the same Jacobian.
    :param f_rows: shape ``(S,)``, whose per-particle gradients are
        :math:`f_s` (e.g. a Rao-Blackwellized term), if ``signal`` is not given.
    """
    num_particles = h_rows.shape[0]
    rows = h_rows if f_rows is None else torch.cat([f_rows, h_rows])
    surrogate = 0.0
    for param, jacobian in zip(params, score_jacobians(rows, params)):
        if jacobian is None:
            continue
        if f_rows is None:
            h = jacobian
            f = h * signal.detach().reshape((-1,) + (1,) * (h.dim() - 1))
        else:
            f, h = jacobian[:num_particles], jacobian[num_particles:]
        grad = controlled_gradient(f, h, coefficient)
        surrogate = surrogate + (grad.detach() * param).sum()
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
