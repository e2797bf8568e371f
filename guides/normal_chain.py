r"""Mean-field guide and closed-form ELBO for :mod:`models.normal_chain` (the model of
question 1.C.2, studied in question 2.1.12).

The fully factorized family of equation (5) of the assignment,

.. math::

    q(w_1, w_2, z, v, y) = q_{\lambda_1}(w_1)\, q_{\lambda_2}(w_2)\, q_{\lambda_3}(z)\,
        q_{\lambda_4}(v) \prod_n q_{\lambda_{5,n}}(y_n),

with :math:`q(w_1) = \mathcal{N}(a_1, s_1^2)`, :math:`q(w_2) = \mathrm{Gamma}(c_2, d_2)`
(:math:`d_2` a rate), :math:`q(z) = \mathcal{N}(a_3, s_3^2)`, :math:`q(v) =
\mathcal{N}(a_4, s_4^2)`, :math:`q(y_n) = \mathcal{N}(a_{5n}, s_{5n}^2)`. Pyro parameters:
``"q_w1_loc", "q_w1_scale", "q_w2_concentration", "q_w2_rate", "q_v_loc", "q_v_scale",
"q_z_loc", "q_z_scale"`` (scalars) and ``"q_y_loc", "q_y_scale"`` (shape ``(N,)``);
scales, concentration and rate are constrained positive, so Pyro's unconstrained
coordinates are the locs as they are and the logarithms of the others.

Every expectation in the ELBO is closed form. With :math:`E[w_2] = c_2 / d_2`,
:math:`E[\log w_2] = \psi(c_2) - \log d_2` and :math:`h = \tfrac12 \log 2\pi`:

.. math::

    E_q[\log p(w_1)] &= -h - \tfrac12 (a_1^2 + s_1^2),\\
    E_q[\log p(w_2)] &= 2 \log 2 - \log\Gamma(2) + E[\log w_2] - 2 E[w_2],\\
    E_q[\log p(v \mid w_1)] &= -h - \tfrac12 \big((a_4 - a_1)^2 + s_4^2 + s_1^2\big),\\
    E_q[\log p(z \mid v)] &= -h - \tfrac12 \big((a_3 - a_4)^2 + s_3^2 + s_4^2\big),\\
    E_q[\log p(y_n \mid w_2)] &= -h + \tfrac12 E[\log w_2]
        - \tfrac12 E[w_2] (a_{5n}^2 + s_{5n}^2),\\
    E_q[\log p(x_n \mid z, y_n)] &= -h - \tfrac12 \big((x_n - a_3 - a_{5n})^2
        + s_3^2 + s_{5n}^2\big),\\
    \mathbb{H}[\mathcal{N}(a, s^2)] &= h + \tfrac12 + \log s, \qquad
    \mathbb{H}[\mathrm{Gamma}(c, d)] = c - \log d + \log\Gamma(c) + (1 - c) \psi(c),

and :math:`\mathcal{L}` is the sum of the six expected log-factors (the last two
summed over :math:`n`) and the entropies of all :math:`N + 4` factors (:func:`elbo`).
Setting each factor to its coordinate optimum gives the CAVI updates of
:func:`cavi_step` (every factor is conditionally conjugate, so these are closed-form
CAVI); :func:`cavi` sweeps them to the optimum.

References

1. R. Ranganath, S. Gerrish, D. M. Blei, *Black Box Variational Inference*, AISTATS 2014.
2. C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, section 10.1.
"""

import math
from dataclasses import dataclass, fields
from typing import Dict, Mapping, Optional, Tuple, Union

import pyro
import pyro.distributions as dist
import torch
from torch.distributions import constraints

from guides._cavi import CaviResult, autograd_gradient, check_settings, coordinate_ascent, real_field
from models.checks import as_int
from models.normal_chain import W2_CONCENTRATION, W2_RATE, check_data

__all__ = [
    "PARAM_NAMES",
    "POSITIVE_PARAM_NAMES",
    "CaviResult",
    "NormalChainParams",
    "cavi",
    "cavi_step",
    "elbo",
    "elbo_gradient",
    "mean_field_guide",
    "params_from_store",
]

#: Pyro parameter names, in the order of the fields of :class:`NormalChainParams`.
PARAM_NAMES = (
    "q_w1_loc",
    "q_w1_scale",
    "q_w2_concentration",
    "q_w2_rate",
    "q_v_loc",
    "q_v_scale",
    "q_z_loc",
    "q_z_scale",
    "q_y_loc",
    "q_y_scale",
)
#: Parameters constrained positive (unconstrained coordinate: the logarithm).
POSITIVE_PARAM_NAMES = frozenset(name for name in PARAM_NAMES if not name.endswith("_loc"))
_LOCAL = ("q_y_loc", "q_y_scale")

ParamsLike = Union["NormalChainParams", Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class NormalChainParams:
    r"""Variational parameters of :func:`mean_field_guide`, as floats.

    Field ``f`` is the Pyro parameter ``"q_" + f``. ``y_loc`` and ``y_scale`` are
    tuples of length N (lists, 1-D tensors and arrays are accepted and converted).

    :raises ValueError: naming the offending field (and index) when a value is not
        finite, a scale/concentration/rate is not positive, or the two local vectors
        are empty or differ in length.
    """

    w1_loc: float
    w1_scale: float
    w2_concentration: float
    w2_rate: float
    v_loc: float
    v_scale: float
    z_loc: float
    z_scale: float
    y_loc: Tuple[float, ...]
    y_scale: Tuple[float, ...]

    def __post_init__(self):
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            positive = not name.endswith("_loc")
            if name in ("y_loc", "y_scale") and isinstance(value, torch.Tensor) and value.requires_grad:
                checked = self._check_vector(name, value, positive)
            elif name in ("y_loc", "y_scale"):
                if isinstance(value, torch.Tensor):
                    if value.dim() != 1:
                        raise ValueError(f"{name} must be 1-D, got shape {tuple(value.shape)}")
                    value = value.tolist()
                try:
                    items = list(value)
                except TypeError:
                    raise ValueError(f"{name} must be a 1-D sequence of real numbers, got {value!r}") from None
                if not items:
                    raise ValueError(f"{name} is empty; need one entry per data point")
                checked = tuple(self._check(f"{name}[{i}]", item, positive) for i, item in enumerate(items))
            else:
                checked = self._check(name, value, positive)
            object.__setattr__(self, name, checked)
        if len(self.y_loc) != len(self.y_scale):
            raise ValueError(f"y_loc and y_scale differ in length: {len(self.y_loc)} != {len(self.y_scale)}")

    @staticmethod
    def _check(name, value, positive) -> float:
        return real_field(name, value, positive)

    @staticmethod
    def _check_vector(name, value, positive) -> torch.Tensor:
        if value.dim() != 1 or value.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D sequence, got shape {tuple(value.shape)}")
        return real_field(name, value, positive)

    @property
    def num_data(self) -> int:
        """N, the length of the local parameter vectors."""
        return len(self.y_loc)

    @classmethod
    def default_init(cls, num_data: int) -> "NormalChainParams":
        r"""The prior's shape: locs 0, scales 1, :math:`q(w_2) = \mathrm{Gamma}(2, 2)`."""
        n = _check_num_data(num_data)
        return cls(0.0, 1.0, W2_CONCENTRATION, W2_RATE, 0.0, 1.0, 0.0, 1.0, (0.0,) * n, (1.0,) * n)

    @classmethod
    def poor_init(cls, num_data: int) -> "NormalChainParams":
        r"""A deterministic starting point far from the optimum but sensible.

        Every mean is off (:math:`a_1 = 2`, :math:`a_4 = -1.5`, :math:`a_3 = 3`,
        :math:`a_{5n} = \pm 1` alternating), every scale is too small or too large
        (:math:`s_1 = 0.3`, :math:`s_4 = 1.5`, :math:`s_3 = 0.1`, :math:`s_{5n} = 0.5`),
        and :math:`q(w_2) = \mathrm{Gamma}(1.5, 6)` puts :math:`E[w_2] = 1/4`, so every
        term of the ELBO has a non-zero gradient and all values stay moderate.
        """
        n = _check_num_data(num_data)
        y_loc = tuple(1.0 if i % 2 == 0 else -1.0 for i in range(n))
        return cls(2.0, 0.3, 1.5, 6.0, -1.5, 1.5, 3.0, 0.1, y_loc, (0.5,) * n)

    def as_tensors(self, dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
        """The parameters as tensors keyed by Pyro parameter name (``dtype`` defaults
        to the default dtype)."""
        dtype = torch.get_default_dtype() if dtype is None else dtype
        return {name: torch.as_tensor(getattr(self, name[2:]), dtype=dtype) for name in PARAM_NAMES}

    @classmethod
    def from_tensors(cls, values: Mapping[str, torch.Tensor]) -> "NormalChainParams":
        """Inverse of :meth:`as_tensors`: a mapping of Pyro parameter name to value."""
        missing = [name for name in PARAM_NAMES if name not in values]
        if missing:
            raise ValueError(f"missing parameters: {', '.join(missing)}")
        args = {}
        for name in PARAM_NAMES:
            value = values[name]
            value = value.detach() if isinstance(value, torch.Tensor) else value
            args[name[2:]] = value
        return cls(**args)


def _check_num_data(num_data) -> int:
    as_int("num_data", num_data)
    return int(num_data)


def params_from_store() -> NormalChainParams:
    """Read the current guide parameters (constrained values) from Pyro's param store."""
    store = pyro.get_param_store()
    return NormalChainParams.from_tensors({name: store[name] for name in PARAM_NAMES if name in store})


def mean_field_guide(data, init: Optional[NormalChainParams] = None):
    r"""The fully factorized guide of equation (5): sites ``"w1", "w2", "v", "z"`` and
    ``"y"`` (in plate ``"data"`` at ``dim=-1``), all reparameterizable.

    Parameters are created from ``init`` (default :meth:`NormalChainParams.default_init`)
    the first time only; afterwards the param store wins. Works inside an outer
    vectorized particle plate.

    :raises ValueError: for bad data, an ``init`` that is not a
        :class:`NormalChainParams` or whose N differs from the data's, or a param store
        holding local parameters of another N.
    """
    data = check_data(data)
    num_data = len(data)
    if init is None:
        init = NormalChainParams.default_init(num_data)
    elif not isinstance(init, NormalChainParams):
        raise ValueError(f"init must be a NormalChainParams, got {type(init).__name__}")
    elif init.num_data != num_data:
        raise ValueError(f"init has {init.num_data} local parameters but the data has N = {num_data}")
    values = init.as_tensors(data.dtype)
    params = {}
    for name in PARAM_NAMES:
        constraint = constraints.positive if name in POSITIVE_PARAM_NAMES else constraints.real
        params[name] = pyro.param(name, lambda name=name: values[name], constraint=constraint)
    for name in _LOCAL:
        if params[name].shape != (num_data,):
            raise ValueError(
                f"the param store holds {name} of shape {tuple(params[name].shape)} but the data has "
                f"N = {num_data}; call pyro.clear_param_store()"
            )
    pyro.sample("w1", dist.Normal(params["q_w1_loc"], params["q_w1_scale"]))
    pyro.sample("w2", dist.Gamma(params["q_w2_concentration"], params["q_w2_rate"]))
    pyro.sample("v", dist.Normal(params["q_v_loc"], params["q_v_scale"]))
    pyro.sample("z", dist.Normal(params["q_z_loc"], params["q_z_scale"]))
    with pyro.plate("data", num_data, dim=-1):
        pyro.sample("y", dist.Normal(params["q_y_loc"], params["q_y_scale"]))


def _float64_params(params: ParamsLike, num_data: int) -> Dict[str, torch.Tensor]:
    """float64 tensors keyed by Pyro name, graph kept; shapes and domains checked."""
    if isinstance(params, NormalChainParams):
        params = params.as_tensors(torch.float64)
    elif not isinstance(params, Mapping):
        raise ValueError(f"params must be a NormalChainParams or a mapping of Pyro names, got {type(params).__name__}")
    out = {}
    for name in PARAM_NAMES:
        if name not in params:
            raise ValueError(f"params is missing {name!r}")
        value = params[name]
        value = value.to(torch.float64) if isinstance(value, torch.Tensor) else torch.tensor(value, dtype=torch.float64)
        shape = (num_data,) if name in _LOCAL else ()
        if value.shape != shape:
            raise ValueError(f"{name} must have shape {shape} for N = {num_data}, got {tuple(value.shape)}")
        with torch.no_grad():
            ok = torch.isfinite(value) & (value > 0) if name in POSITIVE_PARAM_NAMES else torch.isfinite(value)
        if not bool(ok.all()):
            need = "finite and positive" if name in POSITIVE_PARAM_NAMES else "finite"
            raise ValueError(f"{name} must be {need}, got {value.detach()}")
        out[name] = value
    return out


def _check_prior(prior):
    if prior is not None:
        raise ValueError(f"the normal chain's hyper-parameters are fixed: prior must be None, got {prior!r}")


def elbo(data, params: ParamsLike, prior=None) -> torch.Tensor:
    r"""Closed-form mean-field ELBO :math:`E_q[\log p(X, w_1, w_2, v, z, y) - \log q]`
    (formulas in the module docstring).

    :param data: 1-D observations.
    :param params: a :class:`NormalChainParams`, or a mapping from the Pyro parameter
        names to **constrained** values (numbers or tensors, e.g. the param store's
        ``pyro.param(name)``); tensors keep their graph, so the result is differentiable
        in them and in whatever they are computed from.
    :param prior: ``None`` (the hyper-parameters are fixed, :mod:`models.normal_chain`).
    :returns: a float64 scalar tensor.
    :raises ValueError: for bad data, missing parameters, wrong shapes, or values out of
        their domain.
    """
    _check_prior(prior)
    x = check_data(data).to(torch.float64)
    return _elbo(x, _float64_params(params, len(x)))


def _elbo(x, p):
    a1, s1 = p["q_w1_loc"], p["q_w1_scale"]
    c2, d2 = p["q_w2_concentration"], p["q_w2_rate"]
    a4, s4 = p["q_v_loc"], p["q_v_scale"]
    a3, s3 = p["q_z_loc"], p["q_z_scale"]
    a5, s5 = p["q_y_loc"], p["q_y_scale"]

    h = 0.5 * math.log(2 * math.pi)
    e_w2 = c2 / d2
    e_log_w2 = torch.digamma(c2) - d2.log()
    a0, b0 = W2_CONCENTRATION, W2_RATE

    e_log_p_w1 = -h - 0.5 * (a1**2 + s1**2)
    e_log_p_w2 = a0 * math.log(b0) - math.lgamma(a0) + (a0 - 1) * e_log_w2 - b0 * e_w2
    e_log_p_v = -h - 0.5 * ((a4 - a1) ** 2 + s4**2 + s1**2)
    e_log_p_z = -h - 0.5 * ((a3 - a4) ** 2 + s3**2 + s4**2)
    e_log_p_y = (-h + 0.5 * e_log_w2 - 0.5 * e_w2 * (a5**2 + s5**2)).sum()
    e_log_p_x = (-h - 0.5 * ((x - a3 - a5) ** 2 + s3**2 + s5**2)).sum()

    def normal_entropy(scale):
        return h + 0.5 + scale.log()

    entropy = (
        normal_entropy(s1)
        + normal_entropy(s4)
        + normal_entropy(s3)
        + normal_entropy(s5).sum()
        + c2
        - d2.log()
        + torch.lgamma(c2)
        + (1 - c2) * torch.digamma(c2)
    )
    return e_log_p_w1 + e_log_p_w2 + e_log_p_v + e_log_p_z + e_log_p_y + e_log_p_x + entropy


def elbo_gradient(data, params: NormalChainParams, prior=None) -> Dict[str, torch.Tensor]:
    r""":math:`\partial\mathcal{L}/\partial` each field of ``params`` (the constrained
    values: locs, scales, concentration, rate), by autograd of :func:`elbo`; float64
    tensors keyed by field name. In Pyro's unconstrained coordinates the gradient of a
    positive field ``f`` is ``value * gradient``; after ``loss_and_grads`` Pyro's
    ``.unconstrained().grad`` estimates the **negative** of that (the loss gradient).
    """
    return autograd_gradient(elbo, data, params, prior)


def cavi_step(data, params: NormalChainParams) -> NormalChainParams:
    r"""One sweep of coordinate-ascent updates, each factor set to its optimum given
    the others (:math:`q^*(\cdot) \propto \exp E_{-\cdot}[\log p]`), in the order
    :math:`w_1, v, z, y_{1:N}, w_2`:

    .. math::

        q(w_1) &= \mathcal{N}\big(a_4 / 2,\ 1/2\big), &
        q(v) &= \mathcal{N}\big((a_1 + a_3) / 2,\ 1/2\big),\\
        q(z) &= \mathcal{N}\Big(\frac{a_4 + \sum_n (x_n - a_{5n})}{N + 1},\ \frac{1}{N + 1}\Big), &
        q(y_n) &= \mathcal{N}\Big(\frac{x_n - a_3}{E[w_2] + 1},\ \frac{1}{E[w_2] + 1}\Big),\\
        q(w_2) &= \mathrm{Gamma}\Big(2 + \frac N2,\ 2 + \frac12 \sum_n (a_{5n}^2 + s_{5n}^2)\Big).

    (The second argument of :math:`\mathcal{N}` is the variance.) Each update can only
    increase :func:`elbo`; a fixed point is a stationary point of it.
    """
    x = check_data(data).to(torch.float64)
    return _step(x, _checked(params, len(x)))


def _checked(params, num_data, name="params") -> NormalChainParams:
    if not isinstance(params, NormalChainParams):
        raise ValueError(f"{name} must be a NormalChainParams, got {type(params).__name__}")
    if params.num_data != num_data:
        raise ValueError(f"{name} have {params.num_data} local parameters but the data has N = {num_data}")
    return params


def _step(x, params):
    n = len(x)
    w1_loc, w1_scale = 0.5 * params.v_loc, math.sqrt(0.5)
    v_loc, v_scale = 0.5 * (w1_loc + params.z_loc), math.sqrt(0.5)
    y_loc = torch.tensor(params.y_loc, dtype=torch.float64)
    z_loc, z_scale = (v_loc + float((x - y_loc).sum())) / (n + 1), 1 / math.sqrt(n + 1)
    e_w2 = params.w2_concentration / params.w2_rate
    y_loc = (x - z_loc) / (e_w2 + 1)
    y_scale = torch.full((n,), 1 / math.sqrt(e_w2 + 1), dtype=torch.float64)
    w2_concentration = W2_CONCENTRATION + 0.5 * n
    w2_rate = W2_RATE + 0.5 * float((y_loc**2 + y_scale**2).sum())
    return NormalChainParams(
        w1_loc, w1_scale, w2_concentration, w2_rate, v_loc, v_scale, z_loc, z_scale, y_loc, y_scale
    )


def cavi(
    data, prior=None, init: Optional[NormalChainParams] = None, max_iters: int = 10000, tol: float = 1e-12
) -> CaviResult:
    r"""Coordinate-ascent VI: sweeps of :func:`cavi_step` from ``init`` (default
    :meth:`NormalChainParams.default_init`) until no parameter changes by more than
    ``tol`` (relative to :math:`\max(1, |\text{value}|)`) or ``max_iters`` sweeps. The
    ELBO is concave in each factor's block, so the history never decreases; the model
    is a linear-Gaussian chain with one Gamma precision, and CAVI converges linearly.

    :param prior: ``None`` (fixed hyper-parameters).
    :rtype: CaviResult
    """
    _check_prior(prior)
    x = check_data(data).to(torch.float64)
    init = NormalChainParams.default_init(len(x)) if init is None else _checked(init, len(x), "init")
    check_settings(max_iters, tol)
    return coordinate_ascent(
        lambda p: _step(x, p), lambda p: _elbo(x, p.as_tensors(torch.float64)), init, max_iters, tol
    )
