"""The handlers the run phase puts around the programs: how guide sites
are drawn (score function, antithetic pairs), what is recorded of them
(their distribution before the particle plate broadcasts it), and the check
that every guide value lies in the model's support."""

import copy

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch.distributions import constraints

__all__ = [
    "AntitheticMessenger",
    "AntitheticPairs",
    "CaptureDistributions",
    "GuideValuesInSupport",
    "ScoreFunctionMessenger",
    "bernoulli_of",
    "captured_distribution",
    "has_mask",
    "is_point_mass",
    "masked_distribution",
    "score_function_guide",
    "support_moves",
    "without_mask",
]

_DISTRIBUTION = "pyro_vi_distribution"  # infer key of the captured distribution


def is_point_mass(fn):
    """Whether the distribution ``fn`` is a point mass (``Delta``, possibly
    masked, expanded or reinterpreted): its sample has no randomness, so it
    has no score and its gradient is exact through its path."""
    while not isinstance(fn, dist.Delta) and hasattr(fn, "base_dist"):
        fn = fn.base_dist
    return isinstance(fn, dist.Delta)


def support_moves(fn):
    """Whether the support of the distribution ``fn`` (or of one it wraps)
    has bounds that carry gradient: a ``Uniform`` with learned ``low`` or
    ``high``, a ``Pareto`` with a learned ``scale``. Then the score
    :math:`\\nabla_\\lambda \\log q_\\lambda(z)` at a fixed sample has a
    nonzero mean (the probability mass at a moving boundary is not in it):
    a score-function gradient of such a site is biased, and its path
    gradient must keep the score term. Bounds moved by a transform with
    parameters (``AffineTransform`` of a ``Uniform(0, 1)``) are not seen."""
    while fn is not None:
        try:
            support = fn.support
        except NotImplementedError:
            return False
        while isinstance(support, constraints.independent):
            support = support.base_constraint
        if any(isinstance(v, torch.Tensor) and v.requires_grad for v in vars(support).values()):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def without_mask(fn):
    """``fn`` without its :meth:`~pyro.distributions.TorchDistributionMixin.mask`
    wrappers: the density the sample was drawn from."""
    if isinstance(fn, dist.MaskedDistribution):
        return without_mask(fn.base_dist)
    if isinstance(fn, dist.Independent) and has_mask(fn.base_dist):
        return dist.Independent(without_mask(fn.base_dist), fn.reinterpreted_batch_ndims)
    return fn


def has_mask(fn):
    return masked_distribution(fn) is not None


def masked_distribution(fn):
    """The ``MaskedDistribution`` that ``fn`` is (through ``Independent``),
    or ``None``."""
    while not isinstance(fn, dist.MaskedDistribution) and isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn if isinstance(fn, dist.MaskedDistribution) else None


class GuideValuesInSupport(Messenger):
    """Refuses, at the model's sample site, a latent value that the guide
    drew outside the support of the model's distribution there (a Normal
    guide for a Gamma latent), before the model uses it: a ``ValueError``
    naming the site, the support, the value and the guide's distribution,
    in place of a NaN density or an error from a child site's arguments.
    Masked-out elements are not checked."""

    def __init__(self, guide_trace):
        super().__init__()
        self.guide_trace = guide_trace

    def _pyro_post_sample(self, msg):
        name = msg["name"]
        guide_site = self.guide_trace.nodes.get(name)
        if msg["is_observed"] or site_is_subsample(msg) or guide_site is None or guide_site["type"] != "sample":
            return
        if msg["mask"] is False:
            return
        support, value = msg["fn"].support, msg["value"]
        if _unconstrained(support):  # every value is inside (a NaN is refused with its log-density)
            return
        try:
            inside = torch.as_tensor(support.check(value)).detach()
        except (NotImplementedError, RuntimeError, TypeError):  # a dependent or unusual support
            return
        if isinstance(msg["mask"], torch.Tensor):
            inside = inside | ~msg["mask"].expand(inside.shape)
        if bool(inside.all()):
            return
        bad = value.detach().reshape(-1)[~inside.reshape(-1)] if inside.shape == value.shape else value.reshape(-1)
        raise ValueError(
            "site '{}': the guide drew {} outside the support {} of the model's {} ({:.6g}), from the guide's "
            "{}; give the guide site '{}' a distribution with that support (e.g. a LogNormal or Gamma for a "
            "positive latent, or an autoguide, which maps to the support)".format(
                name,
                "a value" if inside.numel() == 1 else f"{int((~inside).sum())} of {inside.numel()} values",
                support,
                type(msg["fn"]).__name__,
                float(bad[0]),
                _describe(guide_site["fn"]),
                name,
            )
        )


def _unconstrained(support):
    """Whether ``support`` is the real line (or a product of it)."""
    while isinstance(support, constraints.independent):
        support = support.base_constraint
    return support is constraints.real


def _describe(fn):
    """``Normal(loc=0.3, scale=0.5)``: the distribution's class and its
    arguments (shapes for tensors of more than one element)."""
    arguments = []
    for key in getattr(fn, "arg_constraints", {}):
        value = fn.__dict__.get(key)
        if isinstance(value, torch.Tensor):
            shown = f"{value.item():.4g}" if value.numel() == 1 else f"tensor of shape {tuple(value.shape)}"
            arguments.append(f"{key}={shown}")
    name = type(fn).__name__
    return "{}({})".format(name, ", ".join(arguments)) if arguments else name


class ScoreFunctionMessenger(Messenger):
    """Gives every random guide site a score-function (REINFORCE) gradient:
    sites that could ``rsample`` are sampled without a pathwise derivative,
    each value a fresh tensor, so that no transform reuses an inverse it
    cached without a graph (``TransformedDistribution`` flows).
    Point masses (``Delta``, ``AutoDelta``) have no randomness and no score:
    they keep their path, as in ``Trace_ELBO``. ``pyro.factor`` sites of the
    guide become score terms too: at fixed samples, they are part of the
    sampling density's gradient.

    :param dict baseline: optional ``infer["baseline"]`` options given to every
        latent site, e.g. ``{"use_decaying_avg_baseline": True}`` for the
        decaying-average baseline of Pyro's ``TraceGraph_ELBO``.
    """

    def __init__(self, baseline=None):
        super().__init__()
        self.baseline = baseline

    def _pyro_sample(self, msg):
        fn = msg["fn"]
        if site_is_subsample(msg) or is_point_mass(fn):
            return
        msg["infer"] = dict(msg["infer"], has_rsample=bool(fn.has_rsample))
        if fn.has_rsample:
            msg["fn"] = _without_rsample(fn)
        if self.baseline is not None and not msg["is_observed"]:
            msg["infer"]["baseline"] = dict(self.baseline)


_SCORE_FUNCTION_CLASSES = {}


def _without_rsample(fn):
    """A copy of ``fn`` that samples without a pathwise derivative, never
    mutating a distribution the program may reuse. The copy's class is a
    subclass with ``has_rsample = False``, which survives ``expand`` (plates
    broadcast distributions after this handler has seen them) and overrides
    the property of wrappers such as ``Independent``."""
    cls = type(fn)
    if cls not in _SCORE_FUNCTION_CLASSES:

        def sample(self, sample_shape=torch.Size()):
            # A fresh tensor: a transform's cached inverse of the sample (made
            # without a graph) must not be reused by log_prob.
            value = cls.sample(self, sample_shape)
            return value.clone() if _has_transforms(self) else value

        _SCORE_FUNCTION_CLASSES[cls] = type(cls.__name__, (cls,), {"has_rsample": False, "sample": sample})
    fn = copy.copy(fn)
    if "has_rsample" in fn.__dict__:  # set per instance (has_rsample_(), pyro.factor)
        fn.__dict__["has_rsample"] = False
    fn.__class__ = _SCORE_FUNCTION_CLASSES[cls]
    return fn


def _has_transforms(fn):
    """Whether ``fn`` or a distribution it wraps holds transforms (whose
    caches may keep the sample)."""
    while fn is not None:
        if isinstance(fn, torch.distributions.TransformedDistribution) or "transforms" in vars(fn):
            return True
        fn = getattr(fn, "base_dist", None)
    return False


def score_function_guide(guide, baseline=None):
    """Wraps ``guide`` so that all its random sites use score-function
    (REINFORCE) gradients, whatever their distribution could do; see
    :class:`ScoreFunctionMessenger` for ``baseline``."""
    return ScoreFunctionMessenger(baseline)(guide)


def bernoulli_of(fn):
    """The ``Bernoulli`` that ``fn`` samples (through ``Independent``, masks
    and expansions), or ``None`` when ``fn`` is not a Bernoulli."""
    while not isinstance(fn, torch.distributions.Bernoulli):
        if not isinstance(fn, (torch.distributions.Independent, dist.MaskedDistribution, dist.ExpandedDistribution)):
            return None
        fn = fn.base_dist
    return fn


class AntitheticPairs:
    """The antithetic pairs of one ELBO evaluation, particles :math:`2i` and
    :math:`2i + 1`.

    At a random Bernoulli guide site, where the pair's distributions agree
    (element by element), the two particles share one uniform draw :math:`u`:
    :math:`b = 1[u < \\sigma(\\theta)]` and :math:`b' = 1[1 - u <
    \\sigma(\\theta)]` (Yin and Zhou 2019; Dong et al. 2020); where they
    differ (the pair's histories differ), each particle draws its own. At
    the random guide sites in ``shared`` (those a Bernoulli site depends
    on), the pair draws one sample for both where their distributions
    agree, so that a Bernoulli site drawn given a shared history is paired
    too. Each particle is still an exact draw from the guide. Vectorized,
    the pairs are interleaved along the particle dim; sequential, they are
    consecutive runs, and the second run of a pair replays the first run's
    subsample indices, so that both draw the same data points. A Bernoulli
    site records in ``infer["antithetic"]`` where it is paired."""

    def __init__(self, num_particles, vectorized, shared=frozenset()):
        self.num_particles = num_particles
        self.vectorized = vectorized
        self.shared = shared
        self.run = -1
        self.stored = {}

    def messenger(self):
        """The handler for the next run (put it outside the particle plate)."""
        self.run += 1
        if self.run % 2 == 0:
            self.stored = {}
        return AntitheticMessenger(self, first=self.run % 2 == 0)


class AntitheticMessenger(Messenger):
    """Draws the sites of one run in antithetic pairs (see
    :class:`AntitheticPairs`)."""

    def __init__(self, pairs, first):
        super().__init__()
        self.pairs = pairs
        self.first = first

    def _pyro_sample(self, msg):
        if msg["value"] is not None or msg["done"] or msg["is_observed"]:
            return
        pairs, fn, name = self.pairs, msg["fn"], msg["name"]
        if site_is_subsample(msg):
            if not pairs.vectorized and not self.first and name in pairs.stored:
                msg["value"] = pairs.stored.pop(name)
            return
        bernoulli = bernoulli_of(fn)
        if bernoulli is None and (name not in pairs.shared or is_point_mass(fn)):
            return
        shape = fn.batch_shape + fn.event_shape
        if pairs.vectorized:
            if len(shape) == 0 or shape[0] != pairs.num_particles:
                return  # not broadcast by the particle plate: drawn as usual, unpaired
            value, agree = _vectorized_pair(fn, bernoulli, shape)
        else:
            value, agree = self._sequential_pair(name, fn, bernoulli, shape)
        msg["value"] = value
        if bernoulli is not None:
            msg["infer"] = dict(msg["infer"], antithetic=agree)

    def _sequential_pair(self, name, fn, bernoulli, shape):
        """This run's value, and for a Bernoulli site where it is paired
        (``None`` in a pair's first run), given what the first run stored."""
        parameters = _parameters(fn, bernoulli, shape)
        stored = self.pairs.stored
        if bernoulli is None:
            value = _draw(fn)
            if self.first:
                stored[name] = (parameters, value)
                return value, None
            first, first_value = stored.pop(name, (None, None))
            if first_value is None or first_value.shape != value.shape:
                return value, None
            agree = _agreement(first, parameters, fn.batch_shape)
            return torch.where(_to_value_shape(agree, value), first_value, value), None
        probs = parameters[0]
        if self.first:
            u = torch.rand(shape, dtype=probs.dtype, device=probs.device)
            stored[name] = (parameters, u)
            return (u < probs).to(probs.dtype), None
        first, u = stored.pop(name, (None, None))
        if u is None or u.shape != shape:
            fresh = torch.rand(shape, dtype=probs.dtype, device=probs.device)
            return (fresh < probs).to(probs.dtype), torch.zeros(shape, dtype=torch.bool, device=probs.device)
        agree = _agreement(first, parameters, shape)
        second = 1 - u if bool(agree.all()) else torch.where(agree, 1 - u, torch.rand_like(u))
        return (second < probs).to(probs.dtype), agree

    def _pyro_post_sample(self, msg):
        if site_is_subsample(msg) and self.first and not self.pairs.vectorized:
            self.pairs.stored[msg["name"]] = msg["value"]


def _draw(fn):
    return fn.rsample() if fn.has_rsample else fn.sample()


def _vectorized_pair(fn, bernoulli, shape):
    """The values of a site broadcast over the particles (dim 0), drawn in
    pairs, and for a Bernoulli site where each is paired (shape ``shape``)."""
    size = shape[0]
    parameters = [t for t in _parameters(fn, bernoulli, shape) if t.dim() and t.shape[0] == size]
    pair_shape = (size // 2,) + (shape if bernoulli is not None else fn.batch_shape)[1:]
    agree = _agreement([t[0::2] for t in parameters], [t[1::2] for t in parameters], pair_shape)
    if bernoulli is None:
        value = _draw(fn)
        second = torch.where(_to_value_shape(agree, value[0::2]), value[0::2], value[1::2])
        return torch.stack([value[0::2], second], 1).reshape(value.shape), None
    probs = parameters[0]
    u = torch.rand(pair_shape, dtype=probs.dtype, device=probs.device)
    # fresh uniforms only where some pair disagrees: a mean-field guide draws what it always drew
    second = 1 - u if bool(agree.all()) else torch.where(agree, 1 - u, torch.rand_like(u))
    value = torch.stack([u < probs[0::2], second < probs[1::2]], 1).reshape(shape)
    return value.to(probs.dtype), torch.stack([agree, agree], 1).reshape(shape)


def _parameters(fn, bernoulli, shape):
    """What decides the distribution of a site: a Bernoulli's probabilities
    (shape ``shape``), or the tensors of ``fn`` and of the distributions it
    wraps, detached."""
    if bernoulli is not None:
        return [bernoulli.probs.detach().expand(shape)]
    found, owner = [], fn
    while owner is not None:
        found += [value.detach() for value in vars(owner).values() if isinstance(value, torch.Tensor)]
        owner = getattr(owner, "base_dist", None)
    return found


def _agreement(first, second, shape):
    """Where two lists of tensors agree, over ``shape``: a tensor whose
    leading dims are ``shape`` element by element (its further dims must all
    agree), any other as a whole."""
    device = second[0].device if second else None
    agree = torch.ones(shape, dtype=torch.bool, device=device)
    if first is None or len(first) != len(second):
        return ~agree
    for a, b in zip(first, second):
        if a.shape != b.shape:
            return ~agree
        equal = a == b
        if tuple(equal.shape[: len(shape)]) == tuple(shape):
            agree = agree & equal.reshape(tuple(shape) + (-1,)).all(-1)
        else:
            agree = agree & equal.all()
    return agree


def _to_value_shape(agree, value):
    """``agree`` broadcast against ``value`` (event dims appended)."""
    return agree.reshape(agree.shape + (1,) * (value.dim() - agree.dim()))


class CaptureDistributions(Messenger):
    """Records, at each latent sample site, the distribution as it is before
    the outer particle plate broadcasts it (put it just inside that plate)."""

    def _pyro_sample(self, msg):
        if not msg["is_observed"] and not site_is_subsample(msg):
            msg["infer"] = dict(msg["infer"], **{_DISTRIBUTION: msg["fn"]})


def captured_distribution(site):
    """The distribution :class:`CaptureDistributions` recorded at ``site``,
    or ``None``."""
    return site["infer"].get(_DISTRIBUTION)
