"""The importance-weighted ELBO (IWAE) with reparameterized, STL, DReG,
VIMCO and local DisARM gradient estimators."""

import torch

from .. import _validation
from .particles import ParticleELBO
from .surrogate import (
    check_antithetic,
    check_importance_weighted,
    check_reparameterized,
    independent_plates,
    iwelbo,
    linear_surrogate,
    local_disarm_term,
    log_weights_per_point,
    normalized_weights,
    per_point,
    point_scale,
    random_guide_ancestors,
    sum_to_plates,
    vimco_signals,
)

__all__ = [
    "GRADIENTS",
    "ImportanceWeightedELBO",
    "dreg_surrogate_by_hooks",
    "dreg_surrogate_by_two_gradients",
    "vimco_score_term",
]

GRADIENTS = ("reparam", "stl", "dreg", "vimco", "disarm")


class ImportanceWeightedELBO(ParticleELBO):
    """The importance-weighted bound of Burda et al. [1] with
    :math:`K` = ``num_particles``:

    .. math::

        \\mathcal{L}_K = E\\left[\\log \\frac{1}{K}\\sum_{k=1}^K w_k\\right],
        \\qquad w_k = \\frac{p(x, z_k)}{q(z_k)}, \\quad z_k \\sim q,

    with :math:`\\log p(X) \\ge \\mathcal{L}_K \\ge \\mathcal{L}_{K-1} \\ge \\dots \\ge
    \\mathcal{L}_1 = \\mathrm{ELBO}`. When every model and guide site lies in a
    plate (a VAE's data plate), the weights factorize over it and the bound
    is taken per data point, :math:`\\sum_n \\log \\frac{1}{K}\\sum_k w_{k,n}`
    (the IWAE objective). When some site is global (one latent shared by all
    data), the bound is over the whole joint, as Pyro's ``RenyiELBO(alpha=0)``
    computes it. Computed with log-sum-exp, stable for K in the thousands.

    Subsampling: when the subsampled plate holds every site, each point's
    bound is estimated without bias and multiplied by :math:`N/B`; a site
    outside a subsampled plate (a global latent) is refused by name, since
    the bound of the whole joint has no unbiased minibatch estimate.

    ``poutine.scale`` acts inside the weights, as in Pyro's ``RenyiELBO``:
    with site scales :math:`c_i`, :math:`\\log w_k = \\sum_i c_i \\log p_i -
    \\sum_j c_j \\log q_j`. With one scale :math:`c` on model and guide the
    objective is :math:`\\sum_n E \\log \\frac{1}{K}\\sum_k w_{k,n}^c`, the bound
    of the tempered weights (not :math:`c` times the bound): :math:`c` times
    the ELBO at :math:`K = 1`; as :math:`K \\to \\infty` it tends to
    :math:`\\sum_n \\log E_q[w_n^c]`, which for :math:`c < 1` is :math:`c`
    times Rényi's bound of order :math:`1 - c` (below :math:`c \\log p(x)`),
    and for :math:`c > 1` lies above :math:`c \\log p(x)`: no longer a lower
    bound. The scale :math:`N/B` of subsampling is not a ``poutine.scale``: it
    multiplies each point's bound.

    Gradients, with normalized weights :math:`\\tilde w_k`:

    - ``"reparam"`` (IWAE, the default, **unbiased** for
      :math:`\\nabla \\mathcal{L}_K`): :math:`\\sum_k \\tilde w_k \\nabla \\log w_k`;
    - ``"stl"``: the same with the score part of :math:`\\log q` dropped
      from :math:`\\nabla_\\phi \\log w_k` (Roeder et al. [2]). **Biased**
      for :math:`K > 1`: the dropped term
      :math:`-\\sum_k \\tilde w_k \\nabla_\\phi \\log q_\\phi(z_k)` has a nonzero
      expectation because :math:`\\tilde w_k` depends on :math:`z_k` (Tucker et
      al. [3]); unbiased for :math:`K = 1`, where it is
      :class:`~pyro_vi.StickingTheLandingELBO`;
    - ``"dreg"`` (Tucker et al. [3], **unbiased**): guide parameters get
      :math:`\\sum_k \\tilde w_k^2 \\, \\partial_{z_k} \\log w_k \\,
      \\partial_\\phi z_k`, with a signal-to-noise ratio that does not decay
      with K; model parameters get
      :math:`\\sum_k \\tilde w_k \\nabla_\\theta \\log p_\\theta(x, z_k)` as in
      IWAE. When no random guide sample depends on another (mean-field,
      amortized, autoguides), one backward pass does both: a hook on each
      random sample :math:`z_k` multiplies its gradient by :math:`\\tilde w_k`,
      while point masses (``Delta``), which have no score to rewrite, keep the
      weight :math:`\\tilde w_k`. For a structured guide the two are taken
      as separate gradients, and point masses are refused there.

    - ``"vimco"`` (Mnih and Rezende [4], **unbiased**, ``K >= 2``): for guide
      sites without a pathwise derivative (discrete sites), sample
      :math:`k`'s score gets the local learning signal
      :math:`\\hat L - \\hat L_{-k}`, where :math:`\\hat L_{-k}` is the bound with
      :math:`w_k` replaced by the geometric mean of the other weights,
      :math:`\\exp(\\frac{1}{K-1}\\sum_{j \\ne k}\\log w_j)`; plus
      :math:`\\sum_k \\tilde w_k \\nabla \\log w_k` at fixed discrete samples,
      which carries the pathwise (IWAE) gradient of the sites that
      ``rsample``, the model parameters and the direct dependence of
      :math:`\\log q` on its parameters;
    - ``"disarm"`` (local DisARM, Dong, Mnih and Tucker [5], **unbiased**):
      for guides whose sites without a pathwise derivative are all Bernoulli,
      ``num_particles = K`` antithetic **pairs** are drawn (:math:`2K` model
      evaluations: the ``num_particles`` attribute becomes :math:`2K`). The
      bound :math:`\\mathcal{L}_K` is estimated on the pairs' first particles
      :math:`b_{1:K}` and on their second particles :math:`b'_{1:K}`, and the
      two estimates averaged; sample :math:`k`'s DisARM estimate swaps
      :math:`b_k` for its partner with the others fixed,
      :math:`\\frac{1}{2}(\\hat L(b_{1:K}) - \\hat L(b'_k, b_{-k}))
      (-1)^{b'_k} 1[b_k \\ne b'_k] \\sigma(|\\theta_k|)` (and symmetrically),
      plus the pathwise gradient at fixed Bernoulli samples as for VIMCO.
      A site that is neither Bernoulli nor reparameterizable is refused by
      name, as is a Bernoulli whose distribution depends on another random
      guide sample.

    With K = 1, ``"reparam"`` is Trace_ELBO's estimator and ``"stl"`` and
    ``"dreg"`` are StickingTheLandingELBO's. Except for ``"vimco"`` and
    ``"disarm"``, every guide site must be reparameterizable.

    **References**

    [1] Importance Weighted Autoencoders, Yuri Burda, Roger Grosse,
        Ruslan Salakhutdinov (ICLR 2016)

    [2] Sticking the Landing, Geoffrey Roeder, Yuhuai Wu, David Duvenaud (NIPS 2017)

    [3] Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives,
        George Tucker, Dieterich Lawson, Shixiang Gu, Chris J. Maddison (ICLR 2019)

    [4] Variational Inference for Monte Carlo Objectives, Andriy Mnih,
        Danilo J. Rezende (ICML 2016)

    [5] DisARM: An Antithetic Gradient Estimator for Binary Latent Variables,
        Zhe Dong, Andriy Mnih, George Tucker (NeurIPS 2020)
    """

    def __init__(self, num_particles=5, gradient="reparam", **kwargs):
        self.gradient = _validation.choice(f"{type(self).__name__}: gradient", gradient, GRADIENTS)
        self.guide_density = "path" if gradient in ("stl", "dreg") else "full"
        self.min_particles = 2 if gradient == "vimco" else 1
        self.antithetic = gradient == "disarm"
        super().__init__(num_particles=num_particles, **kwargs)

    def check(self, terms):
        name = type(self).__name__
        if self.gradient == "disarm":
            check_antithetic(terms, f"{name}(gradient='disarm')")
        elif self.gradient != "vimco":
            check_reparameterized(terms, name)
        check_importance_weighted(terms, name)
        if self.gradient == "dreg" and not _random_samples_independent(terms):
            for site in terms.guide.values():
                if site.is_point_mass:
                    raise ValueError(
                        f"{name}(gradient='dreg'): point-mass site '{site.name}' (Delta) in a guide whose "
                        "random samples depend on one another; DReG's weights apply to "
                        "random samples only: use gradient='stl' or 'reparam'"
                    )

    def elbo_value(self, terms):
        log_w = log_weights_per_point(terms)[1]
        if self.gradient == "disarm":
            return 0.5 * (iwelbo(log_w[0::2], point_scale(terms)) + iwelbo(log_w[1::2], point_scale(terms)))
        return iwelbo(log_w, point_scale(terms))

    def elbo_and_surrogate(self, terms):
        log_p, log_w = log_weights_per_point(terms)
        scale = point_scale(terms)
        if self.gradient == "disarm":
            value = 0.5 * (iwelbo(log_w[0::2], scale) + iwelbo(log_w[1::2], scale))
            return value, value + local_disarm_term(terms, log_w, scale)
        value = iwelbo(log_w, scale)
        if self.gradient == "reparam":
            return value, value
        if self.gradient == "vimco":
            return value, value + vimco_score_term(terms, scale * vimco_signals(log_w))
        weights = scale * normalized_weights(log_w)
        # log w with the guide's density at stopped parameters: its gradient
        # is the path part of log w.
        path_log_w = log_p - per_point(terms, terms.log_q_at_stopped_parameters(), terms.guide)
        if self.gradient == "stl":
            return value, (weights * path_log_w).sum()
        if _random_samples_independent(terms):
            return value, dreg_surrogate_by_hooks(terms, weights / scale, weights * path_log_w)
        return value, dreg_surrogate_by_two_gradients(terms, weights, weights / scale, path_log_w, log_p)


def vimco_score_term(terms, signals):
    """:math:`\\sum_k \\sum_n \\log q^{\\mathrm{score}}(z_{k,n})\\, \\mathrm{stop}(s_{k,n})` for
    per-point signals ``signals`` (``(K,) + plate_shape``): each score site's
    density summed to the points of the independent plates."""
    dims = set(independent_plates(terms).values())
    total = 0.0
    for site in terms.score_sites():
        total = total + (sum_to_plates(site.score_log_prob, dims) * signals.detach()).sum()
    return torch.as_tensor(total)


def _random_samples_independent(terms):
    """Whether no random guide sample depends on another one, directly or
    through point masses (read by provenance from the programs)."""
    random = [name for name, site in terms.guide.items() if not site.is_point_mass and not site.is_observed]
    return not any(random_guide_ancestors(terms, name) for name in random)


def dreg_surrogate_by_two_gradients(terms, weights, normalized, path_log_w, log_p):
    """DReG as two gradients: :math:`\\sum_k \\tilde w_k^2 \\log w_k^{\\mathrm{path}}`
    for the guide parameters and :math:`\\sum_k \\tilde w_k \\log p(x, z_k)` for
    the model parameters (``weights`` carry the points' subsampling scale),
    returned as a surrogate linear in the parameters. Valid for any guide
    without point masses."""
    surrogate = path_log_w.new_zeros(())
    for params, objective in (
        (terms.guide_params, (weights * normalized * path_log_w).sum()),
        (terms.model_params, (weights * log_p).sum()),
    ):
        params = [p for p in params.values() if p.requires_grad]
        if params and objective.requires_grad:
            grads = torch.autograd.grad(objective, params, retain_graph=True, allow_unused=True)
            surrogate = surrogate + linear_surrogate(params, grads)
    return surrogate


def dreg_surrogate_by_hooks(terms, normalized, weighted_path_log_w):
    """DReG in one backward pass: :math:`\\sum_k \\tilde w_k \\log w_k^{\\mathrm{path}}`
    with the gradient reaching each random sample :math:`z_k` multiplied by
    :math:`\\tilde w_k` once more. The model parameters then get
    :math:`\\sum_k \\tilde w_k \\nabla_\\theta \\log p` and the guide parameters,
    which reach the objective only through :math:`z_k` (the score part of
    :math:`\\log q` is stopped), :math:`\\sum_k \\tilde w_k^2 \\partial_{z_k} \\log w_k
    \\, \\partial_\\phi z_k`. Valid when no random sample depends on another
    (else a sample's gradient would be scaled twice); point masses are not
    hooked, so their direct paths keep :math:`\\tilde w_k`."""
    for k, (_, guide_trace, _) in enumerate(terms.runs):
        weights = normalized if terms.vectorized else normalized[k]
        for name, site_term in terms.guide.items():
            site = guide_trace.nodes.get(name)
            if site is None or site_term.is_point_mass or site_term.is_observed:
                continue
            sample = site["value"]
            if sample.requires_grad:
                scale = _align(weights, len(site["fn"].batch_shape), sample.dim())
                sample.register_hook(lambda grad, scale=scale: grad * scale)
    return weighted_path_log_w.sum()


def _align(weights, batch_dim, dim):
    """``weights`` (``plate_shape`` or ``(K,) + plate_shape``) reshaped to
    broadcast against a sample with ``batch_dim`` batch dims out of ``dim``:
    its leading size-1 plate dims dropped or added, event dims appended."""
    extra = weights.dim() - batch_dim
    shape = weights.shape[extra:] if extra > 0 else (1,) * -extra + weights.shape
    return weights.reshape(tuple(shape) + (1,) * (dim - batch_dim))
