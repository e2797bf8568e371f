r"""Earthquake mixture: 2-D locations and event counts (earlier course assignment).

Each of N observed sites has a location :math:`X_n \in \mathbb{R}^2` and a count
:math:`S_n \in \{0, 1, \dots\}` (e.g. of quakes) and belongs to one of K hidden
clusters with a known prior :math:`\pi`. For :math:`k = 1..K`, :math:`n = 1..N`:

.. math::

    \mu_k &\sim \mathcal{N}(\nu, \rho^{-1} I_2), \qquad
    \lambda_k \sim \mathrm{Gamma}(\alpha, \beta) \quad (\beta \text{ a rate}),\\
    Z_n &\sim \mathrm{Categorical}(\pi),\\
    S_n \mid Z_n = k &\sim \mathrm{Poisson}(\lambda_k), \qquad
    X_n \mid Z_n = k \sim \mathcal{N}(\mu_k, \tau^{-1} I_2),

with :math:`\tau, \rho, \nu, \alpha, \beta` known (:class:`EarthquakeHyper`). Its log joint is

.. math::

    \log p(X, S, Z, \mu, \lambda) &= \sum_k \Big[\log\tfrac{\rho}{2\pi}
        - \tfrac\rho2 \|\mu_k - \nu\|^2 + \alpha \log\beta - \log\Gamma(\alpha)
        + (\alpha - 1) \log\lambda_k - \beta\lambda_k\Big]\\
    &\quad + \sum_n \sum_k [Z_n = k] \Big[\log\pi_k + S_n \log\lambda_k - \lambda_k
        - \log S_n! + \log\tfrac{\tau}{2\pi} - \tfrac\tau2 \|X_n - \mu_k\|^2\Big].

The Pyro program (:func:`model`) has sites ``"lambda"``, ``"mu"`` (plate
``"components"``), ``"z"`` (marked for parallel enumeration), ``"s"`` and ``"x"``
(observed, plate ``"data"``). CAVI and the closed-form ELBO are in
:mod:`guides.earthquake`.

References

1. C. M. Bishop, *Pattern Recognition and Machine Learning*, Springer 2006, section 10.2.
2. D. M. Blei, A. Kucukelbir, J. D. McAuliffe, *Variational Inference: A Review for
   Statisticians*, JASA 2017, section 3.
"""

import math
from dataclasses import dataclass
from typing import Tuple

import pyro
import pyro.distributions as dist
import torch
from pyro.ops.indexing import Vindex

from models.checks import as_counts, as_float64, as_int, as_real, check_components
from models.gmm import check_weights

__all__ = [
    "DEFAULT_HYPER",
    "EarthquakeHyper",
    "check_data",
    "check_weights",
    "generate_data",
    "model",
]


@dataclass(frozen=True)
class EarthquakeHyper:
    r"""Known hyperparameters of the earthquake mixture.

    Defaults: :math:`\tau = 1` (location noise s.d. 1), :math:`\rho = 0.01` (prior s.d.
    of a cluster centre 10), :math:`\nu = (0, 0)`, :math:`\alpha = 1`,
    :math:`\beta = 0.1` (prior mean rate 10).

    :param float tau: precision of a location around its cluster centre; > 0.
    :param float rho: prior precision of a cluster centre; > 0.
    :param nu: prior mean of a cluster centre, two finite numbers (stored as a tuple).
    :param float alpha: Gamma concentration of a cluster's rate; > 0.
    :param float beta: Gamma **rate** of a cluster's rate; > 0.
    :raises ValueError: naming the offending argument and value.
    """

    tau: float = 1.0
    rho: float = 0.01
    nu: Tuple[float, float] = (0.0, 0.0)
    alpha: float = 1.0
    beta: float = 0.1

    def __post_init__(self):
        for name in ("tau", "rho", "alpha", "beta"):
            value = as_real(name, getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be finite and positive, got {value}")
            object.__setattr__(self, name, value)
        nu = self.nu
        if isinstance(nu, torch.Tensor):
            nu = nu.tolist()
        if isinstance(nu, (str, bytes)) or not hasattr(nu, "__len__") or len(nu) != 2:
            raise ValueError(f"nu must be a pair of real numbers, got {self.nu!r}")
        nu = tuple(as_real("nu", v) for v in nu)
        if not all(math.isfinite(v) for v in nu):
            raise ValueError(f"nu must be finite, got {nu}")
        object.__setattr__(self, "nu", nu)


#: Default hyperparameters: tau = 1, rho = 0.01, nu = (0, 0), alpha = 1, beta = 0.1 (rate).
DEFAULT_HYPER = EarthquakeHyper()


def _first_bad(mask):
    return int(mask.nonzero()[0][0])


def check_data(locations, counts) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate locations and counts; return them as tensors of the default dtype.

    :param locations: (N, 2) array-like of finite real numbers, N >= 1.
    :param counts: (N,) array-like of non-negative integers (integer-valued floats are
        accepted).
    :returns: ``(locations, counts)``, shapes (N, 2) and (N,).
    :raises ValueError: naming the problem: non-numeric input, ``locations`` not of
        shape (N, 2), ``counts`` not 1-D, empty data, lengths that differ, NaN or
        infinite values, negative or non-integer counts (with the first bad index).
    """
    try:
        x = torch.as_tensor(locations, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as e:
        raise ValueError(f"locations must be an (N, 2) array of real numbers: {e}") from e
    s = as_counts("counts", counts)
    if x.dim() != 2 or x.shape[1] != 2:
        raise ValueError(f"locations must have shape (N, 2), got {tuple(x.shape)}")
    if s.dim() != 1:
        raise ValueError(f"counts must be 1-D, got shape {tuple(s.shape)}")
    if x.shape[0] == 0:
        raise ValueError("locations is empty; need at least one observation")
    if x.shape[0] != s.shape[0]:
        raise ValueError(f"locations has {x.shape[0]} rows but counts has {s.shape[0]} entries")
    bad = ~torch.isfinite(x).all(-1)
    if bad.any():
        row = _first_bad(bad)
        kind = "NaN" if torch.isnan(x[row]).any() else "inf"
        raise ValueError(f"locations contains {kind} at row {row}")
    dtype = torch.get_default_dtype()
    return x.to(dtype), s.to(dtype)


def _check_component_values(name, values, shape, positive):
    values = as_float64(name, values)
    if values.dim() != len(shape) or tuple(values.shape[1:]) != tuple(shape[1:]):
        want = "(K, 2)" if len(shape) == 2 else "(K,)"
        raise ValueError(f"{name} must have shape {want}, got {tuple(values.shape)}")
    return check_components(name, values, shape[0], positive)


def generate_data(num_data: int, pi, mus, rates, tau: float = 1.0, seed: int = 0):
    r"""Draw a synthetic catalogue: :math:`Z_n \sim \mathrm{Categorical}(\pi)`,
    :math:`S_n \sim \mathrm{Poisson}(\lambda_{Z_n})`,
    :math:`X_n \sim \mathcal{N}(\mu_{Z_n}, \tau^{-1} I_2)`.

    Uses a local :class:`torch.Generator`, so the global RNG is left untouched.

    :param int num_data: N >= 1.
    :param pi: mixing weights (see :func:`check_weights`).
    :param mus: (K, 2) true cluster centres.
    :param rates: (K,) true Poisson rates, > 0.
    :param float tau: location precision, > 0.
    :param int seed: seed of the local generator.
    :returns: ``(locations, counts, z)``: (N, 2) and (N,) in the default dtype
        (counts integer-valued), labels (N,) int64.
    :raises ValueError: for a bad ``num_data`` or ``tau``, bad weights, or ``mus`` /
        ``rates`` whose number of components differs from ``len(pi)``.
    """
    as_int("num_data", num_data)
    tau = as_real("tau", tau)
    if not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be finite and positive, got {tau}")
    pi = check_weights(pi, dtype=torch.float64)
    num_components = len(pi)
    mus = _check_component_values("mus", mus, (num_components, 2), positive=False)
    rates = _check_component_values("rates", rates, (num_components,), positive=True)
    generator = torch.Generator().manual_seed(int(seed))
    z = torch.multinomial(pi, int(num_data), replacement=True, generator=generator)
    noise = torch.randn(int(num_data), 2, generator=generator, dtype=torch.float64)
    locations = mus[z] + noise / math.sqrt(tau)
    counts = torch.poisson(rates[z], generator=generator)
    dtype = torch.get_default_dtype()
    return locations.to(dtype), counts.to(dtype), z


def model(locations, counts, pi, hyper: EarthquakeHyper = DEFAULT_HYPER):
    r"""The Pyro program: ``"lambda"`` (K,) and ``"mu"`` (K, 2) in plate
    ``"components"`` (dim -1); ``"z"``, observed ``"s"`` and ``"x"`` (N, 2) in plate
    ``"data"`` (dim -1).

    ``"z"`` carries ``infer={"enumerate": "parallel"}`` (summed out by
    ``TraceEnum_ELBO(max_plate_nesting=1)`` when the guide has no ``"z"``, replayed
    when it has). Components are picked with :class:`~pyro.ops.indexing.Vindex` on
    ``lambda[..., None, :]`` and ``mu[..., None, :, :]``, which broadcasts with
    enumeration and inside an outer vectorized particle plate at dim -2.

    :param locations: (N, 2) locations; :param counts: (N,) counts (see :func:`check_data`).
    :param pi: known mixing weights; :param EarthquakeHyper hyper: hyperparameters.
    """
    x, s = check_data(locations, counts)
    pi = check_weights(pi)
    nu = torch.tensor(hyper.nu)
    rho, tau, alpha, beta = (torch.as_tensor(v) for v in (hyper.rho, hyper.tau, hyper.alpha, hyper.beta))
    with pyro.plate("components", len(pi), dim=-1):
        rate = pyro.sample("lambda", dist.Gamma(alpha, beta))
        mu = pyro.sample("mu", dist.Normal(nu, rho**-0.5).to_event(1))
    with pyro.plate("data", len(s), dim=-1):
        z = pyro.sample("z", dist.Categorical(pi), infer={"enumerate": "parallel"})
        pyro.sample("s", dist.Poisson(Vindex(rate.unsqueeze(-2))[..., z]), obs=s)
        loc = Vindex(mu.unsqueeze(-3))[..., z, :]
        pyro.sample("x", dist.Normal(loc, tau**-0.5).to_event(1), obs=x)
