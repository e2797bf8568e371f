"""The importance-weighted ELBO (IWAE) with reparameterized, STL and DReG
gradient estimators."""

import math

import torch

from .particles import ParticleELBO, sum_to_plates
from .sticking_the_landing import check_reparameterized, path_log_q

GRADIENTS = ("reparam", "stl", "dreg")


def independent_plates(terms):
    """The plates every model and guide site lies in, ``{name: dim}``: the
    particles' log-weights factorize over them (one importance-weighted bound
    per data point in a VAE). Empty when any site is global."""
    sites = list(terms.model.values()) + list(terms.guide.values())
    common = set.intersection(*(set(site.plates) for site in sites))
    return {name: sites[0].plates[name] for name in common}


def log_weights_per_point(terms, guide_terms=None):
    """:math:`\\log w_k = \\log p(x, z_k) - \\log q(z_k)`, summed over every
    plate dim except the independent ones: shape ``(K,) + plate_shape`` with
    size 1 on the summed dims. ``guide_terms`` replaces the guide's
    log-densities (e.g. by their path parts)."""
    dims = set(independent_plates(terms).values())
    if guide_terms is None:
        guide_terms = {name: t.log_prob for name, t in terms.guide.items()}
    log_w = 0.0
    for term in terms.model.values():
        log_w = log_w + sum_to_plates(term.log_prob, dims)
    for value in guide_terms.values():
        log_w = log_w - sum_to_plates(value, dims)
    return log_w


def iwelbo(log_w):
    """:math:`\\sum_n \\log \\frac{1}{K} \\sum_k w_{k,n}`, by log-sum-exp."""
    return (torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])).sum()


def normalized_weights(log_w):
    """:math:`\\tilde w_k = w_k / \\sum_j w_j`, per point, detached."""
    return torch.softmax(log_w.detach(), 0)


def _linear_surrogate(params, grads):
    surrogate = 0.0
    for param, grad in zip(params, grads):
        surrogate = surrogate + (grad.detach() * param).sum()
    return surrogate


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

    Gradients, with normalized weights :math:`\\tilde w_k`:

    - ``"reparam"`` (IWAE): :math:`\\sum_k \\tilde w_k \\nabla \\log w_k`;
    - ``"stl"``: the same with the score part of :math:`\\log q` dropped
      from :math:`\\nabla_\\phi \\log w_k` (Roeder et al. [2]);
    - ``"dreg"`` (Tucker et al. [3]): guide parameters get
      :math:`\\sum_k \\tilde w_k^2 \\, \\partial_{z_k} \\log w_k \\,
      \\partial_\\phi z_k`, unbiased for the IWAE gradient, with a
      signal-to-noise ratio that does not decay with K; model parameters get
      :math:`\\sum_k \\tilde w_k \\nabla_\\theta \\log p_\\theta(x, z_k)` as in
      IWAE. With one vectorized trace and samples that do not depend on each
      other (a VAE), one backward pass does both: a hook on each :math:`z_k`
      multiplies its gradient by :math:`\\tilde w_k`. Otherwise the two are
      taken as separate gradients (:math:`z_k` does not depend on
      :math:`\\theta`), which avoids evaluating the model again at
      :math:`\\mathrm{stop}(z_k)`.

    With K = 1, ``"reparam"`` is Trace_ELBO's estimator and ``"stl"`` and
    ``"dreg"`` are StickingTheLandingELBO's. Every guide site must be
    reparameterizable; subsampled plates are refused (the scale would have
    to act outside the log-mean-exp).

    **References**

    [1] Importance Weighted Autoencoders, Yuri Burda, Roger Grosse,
        Ruslan Salakhutdinov (ICLR 2016)

    [2] Sticking the Landing, Geoffrey Roeder, Yuhuai Wu, David Duvenaud (NIPS 2017)

    [3] Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives,
        George Tucker, Dieterich Lawson, Shixiang Gu, Chris J. Maddison (ICLR 2019)
    """

    def __init__(self, num_particles=5, gradient="reparam", **kwargs):
        if gradient not in GRADIENTS:
            raise ValueError("gradient must be one of {}, got {!r}".format(GRADIENTS, gradient))
        self.gradient = gradient
        super().__init__(num_particles=num_particles, **kwargs)

    def _check(self, terms):
        check_reparameterized(terms, type(self).__name__)
        for model_trace, guide_trace in terms.traces[:1]:
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample" and not _is_one(site["scale"]):
                        raise ValueError(
                            "ImportanceWeightedELBO does not support subsampling or "
                            "poutine.scale: site '{}' has scale {}".format(site["name"], site["scale"])
                        )

    def elbo_value(self, terms):
        self._check(terms)
        return iwelbo(log_weights_per_point(terms))

    def elbo_and_surrogate(self, terms):
        self._check(terms)
        log_w = log_weights_per_point(terms)
        value = iwelbo(log_w)
        if self.gradient == "reparam":
            return value, value
        weights = normalized_weights(log_w)
        path_log_w = log_weights_per_point(terms, path_log_q(terms))
        if self.gradient == "stl":
            return value, (weights * path_log_w).sum()
        if terms.vectorized and terms.guide_samples_independent:
            return value, dreg_surrogate_by_hooks(terms, weights, path_log_w)
        return value, dreg_surrogate_by_two_gradients(terms, weights, path_log_w)


def dreg_surrogate_by_two_gradients(terms, weights, path_log_w):
    """DReG as two gradients: :math:`\\sum_k \\tilde w_k^2 \\log w_k^{\\mathrm{path}}`
    for the guide parameters and :math:`\\sum_k \\tilde w_k \\log p(x, z_k)` for
    the model parameters, returned as a surrogate linear in the parameters.
    Valid for any guide."""
    surrogate = path_log_w.new_zeros(())
    for params, objective in (
        (terms.guide_params, (weights**2 * path_log_w).sum()),
        (terms.model_params, (weights * log_weights_per_point(terms, {})).sum()),
    ):
        params = [p for p in params.values() if p.requires_grad]
        if params and objective.requires_grad:
            grads = torch.autograd.grad(
                objective, params, retain_graph=True, allow_unused=True, materialize_grads=True
            )
            surrogate = surrogate + _linear_surrogate(params, grads)
    return surrogate


def dreg_surrogate_by_hooks(terms, weights, path_log_w):
    """DReG in one backward pass: :math:`\\sum_k \\tilde w_k \\log w_k^{\\mathrm{path}}`
    with the gradient reaching each sample :math:`z_k` multiplied by
    :math:`\\tilde w_k` once more. The model parameters then get
    :math:`\\sum_k \\tilde w_k \\nabla_\\theta \\log p` and the guide parameters,
    which reach the objective only through :math:`z_k` (the score part of
    :math:`\\log q` is stopped), :math:`\\sum_k \\tilde w_k^2 \\partial_{z_k} \\log w_k
    \\, \\partial_\\phi z_k`. Valid for one vectorized trace whose samples do not
    depend on each other (else a sample's gradient would be scaled twice)."""
    (_, guide_trace), = terms.traces
    for name in terms.guide:
        site = guide_trace.nodes[name]
        sample = site["value"]
        if sample.requires_grad:
            batch_dim = len(site["fn"].batch_shape)
            shape = (1,) * (batch_dim - weights.dim()) + weights.shape + (1,) * (sample.dim() - batch_dim)
            scale = weights.reshape(shape)
            sample.register_hook(lambda grad, scale=scale: grad * scale)
    return (weights * path_log_w).sum()


def _is_one(scale):
    return bool((torch.as_tensor(scale) == 1).all())
