r"""
Exponential families in canonical form, one small description per family, with
generic log densities, mean parameters and Fisher information.

A family with usual parameters :math:`\theta` (what the torch distribution takes)
is written as

.. math::

    p(x \mid \eta) = h(x) \exp\big(\eta^\top t(x) - A(\eta)\big), \qquad \eta = \eta(\theta),

with natural parameters :math:`\eta`, sufficient statistics :math:`t(x)`, log
normalizer :math:`A` and base measure :math:`h`. Everything else follows from
:math:`A` [1, 2]: the mean parameters are :math:`\nabla_\eta A = E[t(x)]`, the
Fisher information in natural parameters is
:math:`F(\eta) = \nabla^2_\eta A = \mathrm{Cov}[t(x)]`, and in usual parameters
:math:`F(\theta) = J^\top F(\eta) J` with :math:`J = \partial\eta / \partial\theta`.
These are computed here by autograd from the description, batched: an input of
shape ``(..., d)`` gives ``(..., d)`` vectors and ``(..., d, d)`` matrices.
Every computation runs in float64 and its result is returned in the dtype of the
input, so that a valid float32 distribution (a Normal scale of ``1e-20`` or
``1e20``, whose natural parameter :math:`-1/(2\sigma^2)` overflows or underflows
float32) is not mistaken for one outside the domain.

The Gamma distribution (question 2.2.14), shape :math:`\alpha`, scale :math:`\beta`:

.. math::

    \eta = (\alpha - 1, -1/\beta), \quad t(x) = (\log x, x), \quad h(x) = 1, \quad
    A(\eta) = \log\Gamma(\eta_1 + 1) - (\eta_1 + 1) \log(-\eta_2),\\
    \nabla_\eta A = \big(\psi(\eta_1 + 1) - \log(-\eta_2),\; -(\eta_1 + 1)/\eta_2\big)
                  = \big(\psi(\alpha) + \log\beta,\; \alpha\beta\big)
                  = \big(E[\log x],\; E[x]\big).

With rate :math:`b = 1/\beta` the natural parameters are :math:`(\alpha - 1, -b)`.
The registry :data:`FAMILIES` holds ``"poisson"`` (rate), ``"exponential"`` (rate),
``"gamma"`` (shape, rate: :class:`torch.distributions.Gamma`),
``"gamma_shape_scale"`` (shape, scale), ``"normal"`` (loc, scale),
``"normal_precision"`` (loc, precision) and ``"lognormal"`` (loc, scale of log x).

References

1. M. J. Wainwright, M. I. Jordan, *Graphical Models, Exponential Families, and
   Variational Inference*, Found. Trends Mach. Learn. 1 (2008), section 3.
2. S. Amari, *Natural Gradient Works Efficiently in Learning*, Neural Computation 10 (1998).
"""

import math
from dataclasses import dataclass
from typing import Callable, Dict, Tuple, Union

import numpy as np
import torch
from torch.distributions import Distribution, Exponential, Gamma, LogNormal, Normal, Poisson, constraints

__all__ = ["FAMILIES", "ExponentialFamily", "NaturalParameterDomainError", "get_family"]

_LOG_2PI = math.log(2 * math.pi)


class NaturalParameterDomainError(ValueError):
    """Natural parameters that map to no distribution of the family (e.g. a
    Gamma shape :math:`\\eta_1 + 1 \\le 0`)."""


def _float64(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.float64)


def _in_dtype(value64, dtype, family, what, at, fisher=False) -> torch.Tensor:
    """``value64`` (computed in float64) in ``dtype``, refused with a
    ``ValueError`` where an entry would underflow below ``dtype``'s smallest
    normal number or overflow: in float32 a Normal's Fisher information
    :math:`1/\\sigma^2` at :math:`\\sigma = 10^{20}` is not representable. In a
    Fisher matrix (positive semi-definite, :math:`|F_{ij}| \\le \\sqrt{F_{ii}
    F_{jj}}`) an off-diagonal entry below :math:`10^{-12}` of that bound is the
    float64 computation's rounding error of an exact zero, and not refused."""
    if dtype == torch.float64:
        return value64
    finfo = torch.finfo(dtype)
    magnitude = value64.detach().abs()
    significant = magnitude > 0
    if fisher:
        diagonal = magnitude.diagonal(dim1=-2, dim2=-1)
        significant = magnitude > 1e-12 * (diagonal.unsqueeze(-1) * diagonal.unsqueeze(-2)).sqrt()
    bad = (significant & (magnitude < finfo.tiny)) | (magnitude > finfo.max)
    if bool(bad.any()):
        raise ValueError(
            f"{family}: the {what} at {at} has an entry of magnitude {magnitude[bad][0].item():.3g}, outside the "
            f"range of {dtype} (normal numbers from {finfo.tiny:.3g} to {finfo.max:.3g}); pass the parameters "
            "in torch.float64"
        )
    return value64.to(dtype)


def _batched_jacobian(outputs: torch.Tensor, inputs: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``(..., d, d)`` Jacobians of ``outputs[..., i]`` w.r.t. ``inputs[..., j]`` when
    every batch element of ``outputs`` depends on its own batch element only."""
    rows = [
        torch.autograd.grad(outputs[..., i].sum(), inputs, retain_graph=True, create_graph=create_graph)[0]
        for i in range(outputs.shape[-1])
    ]
    return torch.stack(rows, dim=-2)


@dataclass(frozen=True)
class ExponentialFamily:
    r"""Description of one exponential family and the generic quantities derived from it.

    Parameters are stacked on the last dimension: usual parameters ``theta`` and
    natural parameters ``eta`` have shape ``(..., d)``; methods also accept a sequence
    of ``d`` numbers or tensors for ``theta`` (broadcast together).

    :param str name: registry key.
    :param tuple param_names: names of the usual parameters, in order.
    :param tuple param_constraints: a constraint per usual parameter (``real``, ``positive``).
    :param support: constraint on the data :math:`x`.
    :param callable distribution: usual parameters (unpacked) -> torch distribution.
    :param callable to_natural: :math:`\theta \mapsto \eta`, ``(..., d) -> (..., d)``.
    :param callable from_natural: :math:`\eta \mapsto \theta`, its inverse.
    :param callable sufficient_stats: :math:`x \mapsto t(x)`, ``(...) -> (..., d)``.
    :param callable log_normalizer: :math:`\eta \mapsto A(\eta)`, ``(..., d) -> (...)``.
    :param callable log_base_measure: :math:`x \mapsto \log h(x)`, ``(...) -> (...)``.
    """

    name: str
    param_names: Tuple[str, ...]
    param_constraints: Tuple[constraints.Constraint, ...]
    support: constraints.Constraint
    distribution: Callable[..., Distribution]
    to_natural: Callable[[torch.Tensor], torch.Tensor]
    from_natural: Callable[[torch.Tensor], torch.Tensor]
    sufficient_stats: Callable[[torch.Tensor], torch.Tensor]
    log_normalizer: Callable[[torch.Tensor], torch.Tensor]
    log_base_measure: Callable[[torch.Tensor], torch.Tensor]

    @property
    def dim(self) -> int:
        """Number of parameters :math:`d`."""
        return len(self.param_names)

    def check_params(self, theta) -> torch.Tensor:
        """Usual parameters as a floating ``(..., d)`` tensor, each finite and inside
        its constraint. Booleans are refused; integers become the default float dtype.

        :raises ValueError: naming the family, the parameter and the bad value.
        """
        if isinstance(theta, (list, tuple)):
            if len(theta) != self.dim:
                raise ValueError(f"{self.name}: expected {self.dim} parameters {self.param_names}, got {len(theta)}")
            values = [self._param_tensor(name, v) for name, v in zip(self.param_names, theta)]
            dtype = values[0].dtype
            for v in values[1:]:
                dtype = torch.promote_types(dtype, v.dtype)
            theta = torch.stack(torch.broadcast_tensors(*[v.to(dtype) for v in values]), dim=-1)
        if not isinstance(theta, torch.Tensor) or theta.dim() == 0 or theta.shape[-1] != self.dim:
            raise ValueError(
                f"{self.name}: theta must have last dimension {self.dim} {self.param_names}, got {theta!r}"
            )
        theta = self._param_tensor("theta", theta)
        problem = self.param_problem(theta)
        if problem:
            raise ValueError(f"{self.name}: {problem}")
        return theta

    def _param_tensor(self, name, value) -> torch.Tensor:
        """``value`` (a number or a tensor) as a floating tensor; booleans and
        non-numbers are refused."""
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, torch.Tensor) and value.dtype == torch.bool):
            raise ValueError(
                f"{self.name}: parameter {name} must be a number, got the boolean {value!r}; "
                f"pass a float, e.g. {name}=1.0"
            )
        if not isinstance(value, torch.Tensor):
            if not isinstance(value, (int, float, np.integer, np.floating)):
                raise ValueError(
                    f"{self.name}: parameter {name} must be a number or a tensor, got {value!r:.60} "
                    f"({type(value).__name__})"
                )
            value = torch.as_tensor(value, dtype=torch.get_default_dtype())
        if value.is_complex():
            raise ValueError(f"{self.name}: parameter {name} must be real, got dtype {value.dtype}")
        return value if value.is_floating_point() else value.to(torch.get_default_dtype())

    def param_problem(self, theta: torch.Tensor) -> str:
        """What is wrong with usual parameters ``theta`` (``(..., d)``), or ``""`` if nothing."""
        for i, (name, constraint) in enumerate(zip(self.param_names, self.param_constraints)):
            value = theta[..., i].detach()
            if not bool((torch.isfinite(value) & constraint.check(value)).all()):
                return f"parameter {name} must be finite and {_describe(constraint)}, got {value}"
        return ""

    def check_data(self, x) -> torch.Tensor:
        """``x`` as a tensor inside the family's support.

        :raises ValueError: naming the family and the first bad value.
        """
        x = torch.as_tensor(x, dtype=torch.get_default_dtype()) if not isinstance(x, torch.Tensor) else x
        bad = ~(torch.isfinite(x) & self.support.check(x))
        if bool(bad.any()):
            raise ValueError(f"{self.name}: data must be {_describe(self.support)}, got {x[bad].flatten()[0].item()}")
        return x

    def natural_params(self, theta) -> torch.Tensor:
        r""":math:`\eta(\theta)` of checked usual parameters (computed in float64)."""
        theta = self.check_params(theta)
        return self._in_dtype(self.to_natural(_float64(theta)), theta, "natural parameters")

    def usual_params(self, eta: torch.Tensor) -> torch.Tensor:
        r""":math:`\theta(\eta)` (computed in float64).

        :raises NaturalParameterDomainError: if :math:`\eta` lies outside the natural domain.
        """
        return self._in_dtype(self._usual_params64(eta), eta, "usual parameters", natural=True)

    def _usual_params64(self, eta) -> torch.Tensor:
        if not isinstance(eta, torch.Tensor) or eta.dim() == 0 or eta.shape[-1] != self.dim:
            raise ValueError(f"{self.name}: eta must be a tensor with last dimension {self.dim}, got {eta!r}")
        if not eta.is_floating_point():
            raise ValueError(f"{self.name}: eta must be a floating-point tensor, got dtype {eta.dtype}")
        theta = self.from_natural(_float64(eta))
        problem = self.param_problem(theta)
        if problem:
            raise NaturalParameterDomainError(
                f"natural parameters eta = {eta.detach().tolist()} lie outside the domain of {self.name}: "
                f"they map to a {problem}"
            )
        return theta

    def log_prob(self, theta, x) -> torch.Tensor:
        r""":math:`\log h(x) + \eta^\top t(x) - A(\eta)`, broadcast over ``theta[..., 0]`` and ``x``
        (computed in float64, returned in the dtype of ``theta`` and a floating ``x`` promoted)."""
        theta = self.check_params(theta)
        x = self.check_data(x)
        dtype = torch.promote_types(theta.dtype, x.dtype) if x.is_floating_point() else theta.dtype
        eta, x = self.to_natural(_float64(theta)), _float64(x)
        return (self.log_base_measure(x) + (eta * self.sufficient_stats(x)).sum(-1) - self.log_normalizer(eta)).to(
            dtype
        )

    def mean_params(self, eta: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        r"""Mean parameters :math:`\nabla_\eta A(\eta) = E[t(x)]`, shape ``(..., d)``."""
        return self._in_dtype(self._mean_params64(eta, create_graph), eta, "mean parameters", natural=True)

    def _mean_params64(self, eta, create_graph=False):
        self._usual_params64(eta)
        with torch.enable_grad():
            eta_ = _float64(eta) if create_graph and eta.requires_grad else _float64(eta.detach()).requires_grad_(True)
            return torch.autograd.grad(self.log_normalizer(eta_).sum(), eta_, create_graph=create_graph)[0]

    def fisher_natural(self, eta: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        r"""Fisher information in natural parameters, :math:`F(\eta) = \nabla^2_\eta A(\eta)
        = \mathrm{Cov}[t(x)]`, shape ``(..., d, d)``."""
        return self._in_dtype(self._fisher_natural64(eta, create_graph), eta, "Fisher information", natural=True)

    def _fisher_natural64(self, eta, create_graph=False):
        self._usual_params64(eta)
        with torch.enable_grad():
            eta_ = _float64(eta) if create_graph and eta.requires_grad else _float64(eta.detach()).requires_grad_(True)
            grad = torch.autograd.grad(self.log_normalizer(eta_).sum(), eta_, create_graph=True)[0]
            return _batched_jacobian(grad, eta_, create_graph)

    def natural_jacobian(self, theta) -> torch.Tensor:
        r""":math:`J = \partial\eta / \partial\theta`, ``J[..., i, j] = d eta_i / d theta_j``."""
        theta = self.check_params(theta)
        return self._in_dtype(self._natural_jacobian64(_float64(theta)), theta, "Jacobian of eta")

    def _natural_jacobian64(self, theta64):
        with torch.enable_grad():
            theta_ = theta64.detach().requires_grad_(True)
            return _batched_jacobian(self.to_natural(theta_), theta_, create_graph=False)

    def fisher(self, theta) -> torch.Tensor:
        r"""Fisher information in usual parameters, :math:`F(\theta) = J^\top F(\eta) J`,
        shape ``(..., d, d)``."""
        theta = self.check_params(theta)
        return self._in_dtype(self._fisher64(_float64(theta)), theta, "Fisher information")

    def _fisher64(self, theta64):
        jac = self._natural_jacobian64(theta64)
        return jac.transpose(-1, -2) @ self._fisher_natural64(self.to_natural(theta64).detach()) @ jac

    def natural_gradient(self, theta, grad_theta: torch.Tensor) -> torch.Tensor:
        r""":math:`F(\theta)^{-1} \nabla_\theta \mathcal{L}`, by a linear solve in float64,
        shape ``(..., d)``.

        :raises ValueError: if :math:`F(\theta)` is singular to working precision.
        """
        theta = self.check_params(theta)
        theta64 = _float64(theta)
        solution = self.solve(self._fisher64(theta64), grad_theta, theta64, "Fisher information")
        return self._in_dtype(solution, theta, "natural gradient")

    def _in_dtype(self, value64, params, what, natural=False):
        """``value64`` in the dtype of ``params`` (usual, or ``natural``
        parameters), refused where it does not fit (see :func:`_in_dtype`)."""
        at = ", ".join(
            f"{n}={v:.6g}"
            for n, v in zip(
                [f"eta_{i + 1}" for i in range(self.dim)] if natural else self.param_names,
                params.detach().reshape(-1, self.dim)[0].tolist(),
            )
        )
        return _in_dtype(value64, params.dtype, self.name, what, at, fisher=what == "Fisher information")

    def solve(self, matrix, rhs, theta, what) -> torch.Tensor:
        r""":math:`M^{-1} r` in float64 for ``(..., d, d)`` matrices :math:`M` and ``(..., d)``
        vectors :math:`r`; a matrix singular to working precision (an LU pivot of zero,
        or a non-finite solution) raises ``ValueError`` naming ``what``, the family and
        the usual parameters ``theta`` where it happens (instead of torch's ``LinAlgError``)."""
        matrix, rhs = _float64(matrix), _float64(torch.as_tensor(rhs))
        batch = torch.broadcast_shapes(matrix.shape[:-2], rhs.shape[:-1])
        matrix, rhs = matrix.expand(batch + matrix.shape[-2:]), rhs.expand(batch + rhs.shape[-1:])
        solution, info = torch.linalg.solve_ex(matrix, rhs.unsqueeze(-1))
        solution = solution.squeeze(-1)
        bad = (info != 0) | ~torch.isfinite(solution).all(-1)
        if bool(bad.any()):
            at = _float64(theta).detach().expand(bad.shape + (self.dim,))[bad][0]
            shown = ", ".join(f"{n}={v:.6g}" for n, v in zip(self.param_names, at.tolist()))
            raise ValueError(
                f"{self.name}: the {what} at {shown} is singular to working precision (float64), so the "
                f"natural gradient is not defined there; move the parameters away from this point (e.g. a "
                f"smaller step) or use a plain gradient step for this factor"
            )
        return solution


def _describe(constraint) -> str:
    names = {
        constraints.positive: "positive",
        constraints.real: "real",
        constraints.nonnegative: "non-negative",
        constraints.nonnegative_integer: "a non-negative integer",
    }
    return names.get(constraint, str(constraint))


def _stack(*columns):
    return torch.stack(torch.broadcast_tensors(*columns), dim=-1)


def _gamma_log_normalizer(eta):
    shape = eta[..., 0] + 1
    return torch.lgamma(shape) - shape * torch.log(-eta[..., 1])


def _gaussian_log_normalizer(eta):
    return -(eta[..., 0] ** 2) / (4 * eta[..., 1]) - 0.5 * torch.log(-2 * eta[..., 1])


def _normal_to_natural(theta):
    return _stack(theta[..., 0] / theta[..., 1] ** 2, -0.5 / theta[..., 1] ** 2)


def _gamma_stats(x):
    return _stack(x.log(), x)


def _gaussian_stats(x):
    return _stack(x, x**2)


def _gaussian_base_measure(x):
    return torch.full_like(x, -0.5 * _LOG_2PI)


def _normal_from_natural(eta):
    variance = -0.5 / eta[..., 1]
    return _stack(eta[..., 0] * variance, variance.sqrt())


def _log_stats(x):
    return _stack(x.log(), x.log() ** 2)


def _zero(x):
    return torch.zeros_like(x)


def _family(name, params, support, distribution, to_natural, from_natural, stats, log_normalizer, log_h):
    return ExponentialFamily(
        name=name,
        param_names=tuple(p for p, _ in params),
        param_constraints=tuple(c for _, c in params),
        support=support,
        distribution=distribution,
        to_natural=to_natural,
        from_natural=from_natural,
        sufficient_stats=stats,
        log_normalizer=log_normalizer,
        log_base_measure=log_h,
    )


_POS, _REAL = constraints.positive, constraints.real

#: Registry of the families by name.
FAMILIES: Dict[str, ExponentialFamily] = {
    family.name: family
    for family in (
        _family(
            "poisson",
            [("rate", _POS)],
            constraints.nonnegative_integer,
            Poisson,
            lambda th: th.log(),
            lambda eta: eta.exp(),
            lambda x: x.unsqueeze(-1),
            lambda eta: eta[..., 0].exp(),
            lambda x: -torch.lgamma(x + 1),
        ),
        _family(
            "exponential",
            [("rate", _POS)],
            constraints.nonnegative,
            Exponential,
            lambda th: -th,
            lambda eta: -eta,
            lambda x: x.unsqueeze(-1),
            lambda eta: -torch.log(-eta[..., 0]),
            _zero,
        ),
        _family(
            "gamma",
            [("concentration", _POS), ("rate", _POS)],
            _POS,
            Gamma,
            lambda th: _stack(th[..., 0] - 1, -th[..., 1]),
            lambda eta: _stack(eta[..., 0] + 1, -eta[..., 1]),
            _gamma_stats,
            _gamma_log_normalizer,
            _zero,
        ),
        _family(
            "gamma_shape_scale",
            [("shape", _POS), ("scale", _POS)],
            _POS,
            lambda shape, scale: Gamma(shape, 1 / scale),
            lambda th: _stack(th[..., 0] - 1, -1 / th[..., 1]),
            lambda eta: _stack(eta[..., 0] + 1, -1 / eta[..., 1]),
            _gamma_stats,
            _gamma_log_normalizer,
            _zero,
        ),
        _family(
            "normal",
            [("loc", _REAL), ("scale", _POS)],
            _REAL,
            Normal,
            _normal_to_natural,
            _normal_from_natural,
            _gaussian_stats,
            _gaussian_log_normalizer,
            _gaussian_base_measure,
        ),
        _family(
            "normal_precision",
            [("loc", _REAL), ("precision", _POS)],
            _REAL,
            lambda loc, precision: Normal(loc, precision.rsqrt()),
            lambda th: _stack(th[..., 0] * th[..., 1], -0.5 * th[..., 1]),
            lambda eta: _stack(-0.5 * eta[..., 0] / eta[..., 1], -2 * eta[..., 1]),
            _gaussian_stats,
            _gaussian_log_normalizer,
            _gaussian_base_measure,
        ),
        _family(
            "lognormal",
            [("loc", _REAL), ("scale", _POS)],
            _POS,
            LogNormal,
            _normal_to_natural,
            _normal_from_natural,
            _log_stats,
            _gaussian_log_normalizer,
            lambda x: -0.5 * _LOG_2PI - x.log(),
        ),
    )
}


def get_family(family: Union[str, ExponentialFamily]) -> ExponentialFamily:
    """An :class:`ExponentialFamily` from itself or its name in :data:`FAMILIES`.

    :raises ValueError: for an unknown name, listing the known ones.
    """
    if isinstance(family, ExponentialFamily):
        return family
    if isinstance(family, str) and family in FAMILIES:
        return FAMILIES[family]
    raise ValueError(f"family must be an ExponentialFamily or one of {sorted(FAMILIES)}, got {family!r}")
