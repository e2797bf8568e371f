"""The importance-weighted ELBO (IWAE) with reparameterized, STL and DReG
gradient estimators."""

import torch

from .. import _validation
from .particles import ParticleELBO
from .surrogate import check_reparameterized, linear_surrogate, log_mean_exp, sum_to_plates

GRADIENTS = ("reparam", "stl", "dreg")


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
    ``poutine.scale`` acts inside the weights, as in Pyro.

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

    With K = 1, ``"reparam"`` is Trace_ELBO's estimator and ``"stl"`` and
    ``"dreg"`` are StickingTheLandingELBO's. Every guide site must be
    reparameterizable.

    **References**

    [1] Importance Weighted Autoencoders, Yuri Burda, Roger Grosse,
        Ruslan Salakhutdinov (ICLR 2016)

    [2] Sticking the Landing, Geoffrey Roeder, Yuhuai Wu, David Duvenaud (NIPS 2017)

    [3] Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives,
        George Tucker, Dieterich Lawson, Shixiang Gu, Chris J. Maddison (ICLR 2019)
    """

    def __init__(self, num_particles=5, gradient="reparam", **kwargs):
        self.gradient = _validation.choice("{}: gradient".format(type(self).__name__), gradient, GRADIENTS)
        self.guide_density = "full" if gradient == "reparam" else "path"
        super().__init__(num_particles=num_particles, **kwargs)

    def check(self, terms):
        name = type(self).__name__
        check_reparameterized(terms, name)
        sites = list(terms.model.values()) + list(terms.guide.values())
        per_point = set(independent_plates(terms))
        for site in sites:
            sequential = site.subsampled_plates - set(site.plates)
            if sequential:
                raise ValueError(
                    "{} does not support subsampled sequential plates: site '{}' is in "
                    "the subsampled plate '{}'; vectorize the plate".format(
                        name, site.name, sorted(sequential)[0]
                    )
                )
        subsampled = set()
        for site in sites:
            subsampled |= site.subsampled_plates
        for plate in subsampled:
            if plate not in per_point:
                outside = next(site for site in sites if plate not in site.plates)
                raise ValueError(
                    "{}: site '{}' lies outside the subsampled plate '{}'; the "
                    "importance-weighted bound of latents shared across data points has "
                    "no unbiased minibatch estimate: do not subsample, or use an ELBO "
                    "estimator".format(name, outside.name, plate)
                )
        if self.gradient == "dreg" and not _random_samples_independent(terms):
            for site in terms.guide.values():
                if site.is_point_mass:
                    raise ValueError(
                        "{}(gradient='dreg'): point-mass site '{}' (Delta) in a guide whose "
                        "random samples depend on one another; DReG's weights apply to "
                        "random samples only: use gradient='stl' or 'reparam'".format(
                            name, site.name
                        )
                    )

    def elbo_value(self, terms):
        return iwelbo(log_weights_per_point(terms)[1], point_scale(terms))

    def elbo_and_surrogate(self, terms):
        log_p, log_w = log_weights_per_point(terms)
        scale = point_scale(terms)
        value = iwelbo(log_w, scale)
        if self.gradient == "reparam":
            return value, value
        weights = scale * normalized_weights(log_w)
        # log w with the guide's density at stopped parameters: its gradient
        # is the path part of log w.
        path_log_w = log_p - per_point(terms, terms.log_q_at_stopped_parameters(), terms.guide)
        if self.gradient == "stl":
            return value, (weights * path_log_w).sum()
        if _random_samples_independent(terms):
            return value, dreg_surrogate_by_hooks(terms, weights / scale, weights * path_log_w)
        return value, dreg_surrogate_by_two_gradients(terms, weights, weights / scale, path_log_w, log_p)


def _random_samples_independent(terms):
    """Whether no random guide sample depends on another one, directly or
    through point masses (read by provenance from the programs)."""
    guide = terms.read_structure()[1]
    random = {name for name, site in terms.guide.items() if not site.is_point_mass and not site.is_observed}
    for name in random:
        ancestors, frontier = set(), set(guide.dependencies.get(name, ())) - {name}
        while frontier:
            site = frontier.pop()
            ancestors.add(site)
            if site not in random:
                frontier |= set(guide.dependencies.get(site, ())) - ancestors - {site}
        if ancestors & random:
            return False
    return True


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
