r"""
Natural gradients for exponential-family parameters: plain-PyTorch steps and a
Pyro optimizer that drops into :class:`pyro.infer.SVI` where ``Adam`` goes.

The natural gradient of a loss :math:`\mathcal{L}` in usual parameters
:math:`\theta` is :math:`\tilde\nabla_\theta \mathcal{L} = F(\theta)^{-1}
\nabla_\theta \mathcal{L}` [1] (question 2.2.15). With :math:`\eta = \eta(\theta)`,
:math:`J = \partial\eta / \partial\theta`, :math:`F(\theta) = J^\top F(\eta) J` and
:math:`\nabla_\theta \mathcal{L} = J^\top \nabla_\eta \mathcal{L}`, so

.. math::

    \tilde\nabla_\theta \mathcal{L} = J^{-1} F(\eta)^{-1} \nabla_\eta \mathcal{L}
    = J^{-1} \nabla_\mu \mathcal{L},

the same direction expressed in any parameterization (:math:`\mu = \nabla A(\eta)`,
the mean parameters). Two discrete steps follow from it:

- :func:`natural_gradient_step`, :math:`\theta \leftarrow \theta - \rho\,
  F(\theta)^{-1} \nabla_\theta \mathcal{L}` (the step of question 2.2.18);
- :func:`natural_parameter_step`, :math:`\eta \leftarrow \eta - \rho\,
  F(\eta)^{-1} \nabla_\eta \mathcal{L}`, which :class:`NaturalGradient` takes.

They agree to first order in :math:`\rho`. The second is the step of stochastic
variational inference [2]: for a factor :math:`q(z_j \mid \eta_j)` of a mean-field
family whose complete conditional :math:`p(z_j \mid z_{-j}, x)` is in the same
family with natural parameters :math:`\eta_j^*(z_{-j}, x)`, the ELBO gradient is
:math:`\nabla_{\eta_j} \mathrm{ELBO} = F(\eta_j) (E_q[\eta_j^*] - \eta_j)`, so a
step of size :math:`\rho = 1` with exact expectations lands on
:math:`E_q[\eta^*_j]`, the CAVI update of that factor. Updating every factor in
one step therefore gives the *simultaneous* (Jacobi) CAVI update, each factor
computed from the others' old values; a Gauss-Seidel CAVI sweep is one step per
factor in turn.

A step that leaves the domain (a Gamma shape :math:`\le 0`, a negative scale, a
non-finite value) raises :class:`~pyro_vi.exponential_family.NaturalParameterDomainError`
unless ``max_halvings > 0``: then the step size is halved, up to ``max_halvings``
times, until the step stays inside (the step size taken is returned).

References

1. S. Amari, *Natural Gradient Works Efficiently in Learning*, Neural Computation 10 (1998).
2. M. D. Hoffman, D. M. Blei, C. Wang, J. Paisley, *Stochastic Variational
   Inference*, JMLR 14 (2013), section 2.3 (eq. 14: natural gradient = phi* - lambda).
"""

from typing import Callable, Dict, NamedTuple, Sequence, Tuple, Union

import numpy as np
import pyro
import torch
from pyro.optim import PyroOptim
from torch.distributions import transform_to

from .exponential_family import ExponentialFamily, NaturalParameterDomainError, get_family
from .validation import instance, integer, real

__all__ = [
    "DescentStep",
    "NaturalGradient",
    "descent_step",
    "natural_gradient",
    "natural_gradient_step",
    "natural_parameter_step",
]

FamilyLike = Union[str, ExponentialFamily]


class DescentStep(NamedTuple):
    """Result of a step: the new usual parameters and the step size actually taken."""

    theta: torch.Tensor
    step_size: float


def _check_step_size(lr, name="lr") -> float:
    return real(name, lr, minimum=0, strict_minimum=True)


def _check_max_halvings(max_halvings) -> int:
    return integer("max_halvings", max_halvings, minimum=0)


def _halve_until_inside(family, propose: Callable[[float], torch.Tensor], lr, max_halvings) -> DescentStep:
    """``propose(step_size)`` -> usual parameters; halves the step size until they are valid."""
    step_size, max_halvings = _check_step_size(lr), _check_max_halvings(max_halvings)
    for _ in range(max_halvings + 1):
        theta = propose(step_size)
        problem = family.param_problem(theta)
        if not problem:
            return DescentStep(theta, step_size)
        step_size /= 2
    raise NaturalParameterDomainError(
        f"a step of size {lr} (halved {max_halvings} times) leaves the domain of {family.name}: "
        f"it gives {problem}; use a smaller lr or a larger max_halvings"
    )


def _as_grad(family, theta, grad, name) -> torch.Tensor:
    """``grad`` as a tensor of ``theta``'s dtype with last dimension ``family.dim``,
    finite (a NaN or infinite component is refused, naming the parameter)."""
    if (
        isinstance(grad, (list, tuple))
        and any(isinstance(g, (bool, np.bool_)) for g in grad)
        or (isinstance(grad, torch.Tensor) and grad.dtype == torch.bool)
    ):
        raise ValueError(f"{name} must hold numbers, got booleans {grad!r:.60}")
    try:
        grad = torch.as_tensor(grad, dtype=theta.dtype)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ValueError(f"{name} must be a tensor of numbers, got {grad!r:.60}: {error}") from None
    if grad.dim() == 0 or grad.shape[-1] != family.dim:
        raise ValueError(f"{name} must have last dimension {family.dim}, got shape {tuple(grad.shape)}")
    for i, param in enumerate(family.param_names):
        bad = ~torch.isfinite(grad[..., i])
        if bool(bad.any()):
            raise ValueError(
                f"{name} for {family.name} parameter {param} is not finite "
                f"({grad[..., i][bad].flatten()[0].item()}); the natural gradient of a "
                f"non-finite gradient is meaningless: find where the loss or its gradient "
                f"became NaN/inf"
            )
    return grad


def natural_gradient(family: FamilyLike, theta, grad_theta: torch.Tensor) -> torch.Tensor:
    r""":math:`F(\theta)^{-1} \nabla_\theta \mathcal{L}` for usual parameters ``theta`` of
    ``family`` (a name in :data:`~pyro_vi.exponential_family.FAMILIES` or a description).

    :param theta: usual parameters, shape ``(..., d)`` or a sequence of ``d`` values.
    :param torch.Tensor grad_theta: :math:`\nabla_\theta \mathcal{L}`, shape ``(..., d)``, finite.
    :rtype: torch.Tensor
    :raises ValueError: for parameters outside the family's domain, a non-finite
        ``grad_theta`` (naming the parameter), or a Fisher information singular to
        working precision (computed in float64).
    """
    family = get_family(family)
    theta = family.check_params(theta)
    return family.natural_gradient(theta, _as_grad(family, theta, grad_theta, "grad_theta"))


def descent_step(family: FamilyLike, theta, direction: torch.Tensor, lr: float, max_halvings: int = 0) -> DescentStep:
    r""":math:`\theta - \rho\, d` for any direction :math:`d` (a plain gradient for gradient
    descent), halving :math:`\rho` while the result leaves the family's domain.

    :param float lr: the step size :math:`\rho > 0`.
    :param int max_halvings: how often :math:`\rho` may be halved (0: never).
    :returns: the new parameters and the step size taken.
    :rtype: DescentStep
    :raises NaturalParameterDomainError: if the step still leaves the domain after
        ``max_halvings`` halvings (nothing is changed).
    """
    family = get_family(family)
    theta = family.check_params(theta).detach()
    direction = _as_grad(family, theta, direction, "direction")
    return _halve_until_inside(family, lambda rho: theta - rho * direction, lr, max_halvings)


def natural_gradient_step(family: FamilyLike, theta, grad_theta, lr: float, max_halvings: int = 0) -> DescentStep:
    r"""Natural gradient descent in usual parameters,
    :math:`\theta \leftarrow \theta - \rho\, F(\theta)^{-1} \nabla_\theta \mathcal{L}`."""
    return descent_step(family, theta, natural_gradient(family, theta, grad_theta), lr, max_halvings)


def natural_parameter_step(family: FamilyLike, theta, grad_theta, lr: float, max_halvings: int = 0) -> DescentStep:
    r"""Natural gradient descent in natural parameters,
    :math:`\eta \leftarrow \eta - \rho\, F(\eta)^{-1} \nabla_\eta \mathcal{L}` with
    :math:`\nabla_\eta \mathcal{L} = J^{-\top} \nabla_\theta \mathcal{L}`; returns
    :math:`\theta(\eta_{\text{new}})`."""
    family = get_family(family)
    theta = family.check_params(theta).detach()
    grad_theta = _as_grad(family, theta, grad_theta, "grad_theta")
    theta64 = theta.to(torch.float64)  # float64 throughout: float32 natural parameters under/overflow
    eta = family.to_natural(theta64)
    jac = family._natural_jacobian64(theta64)
    grad_eta = family.solve(jac.transpose(-1, -2), grad_theta, theta64, "Jacobian d eta / d theta")
    direction = family.solve(family._fisher_natural64(eta), grad_eta, theta64, "Fisher information")
    return _halve_until_inside(
        family, lambda rho: family.from_natural(eta - rho * direction).to(theta.dtype), lr, max_halvings
    )


def _check_factors(factors) -> Dict[str, Tuple[ExponentialFamily, Tuple[str, ...]]]:
    if not isinstance(factors, dict) or not factors:
        raise ValueError(f"factors must be a non-empty dict name -> (family, [param names]), got {factors!r}")
    checked, seen = {}, set()
    for factor, spec in factors.items():
        if not (isinstance(spec, (tuple, list)) and len(spec) == 2):
            raise ValueError(f"factors[{factor!r}] must be a pair (family, [param names]), got {spec!r}")
        family, names = get_family(spec[0]), spec[1]
        if isinstance(names, str) or not all(isinstance(n, str) for n in names) or len(names) != family.dim:
            raise ValueError(
                f"factors[{factor!r}]: {family.name} needs {family.dim} param names {family.param_names}, got {names!r}"
            )
        for name in names:
            if name in seen:
                raise ValueError(f"param {name!r} appears in more than one factor")
            seen.add(name)
        checked[factor] = (family, tuple(names))
    return checked


class NaturalGradient(PyroOptim):
    r"""Natural-gradient optimizer for :class:`pyro.infer.SVI`: for each factor, one step
    :func:`natural_parameter_step` on the loss (``-ELBO``), i.e.
    :math:`\eta \leftarrow \eta + \rho\, F(\eta)^{-1} \nabla_\eta \mathrm{ELBO}`.

    SVI hands over the unconstrained tensors with ``.grad`` of the loss; their names come
    from the param store. The gradient is moved to the constrained (usual) parameters by
    the chain rule (the constraint's transform must act elementwise), the step is taken
    in natural parameters, and the new values are written back into the same tensors in
    place. All steps of a call are computed before any is written, so an error changes
    nothing. Parameters of one factor must have the same shape (a batch of factors).

    :param dict factors: factor name -> ``(family, [param names])``, the names in the order
        of the family's usual parameters, e.g.
        ``{"mu": ("normal_precision", ["q_mu_loc", "q_mu_precision"]),
        "tau": ("gamma", ["q_tau_concentration", "q_tau_rate"])}``.
    :param lr: step size :math:`\rho`, a positive number or a callable ``step -> rho``
        (``step`` counts calls from 0), e.g. Robbins-Monro :math:`(t + 1)^{-0.7}`.
    :param int max_halvings: 0 raises :class:`NaturalParameterDomainError` when a step
        leaves the domain; ``k > 0`` halves that factor's step up to ``k`` times first.
    :param fallback: optional :class:`~pyro.optim.PyroOptim` for parameters in no factor
        (e.g. model parameters); without it such parameters raise ``ValueError``.
    """

    def __init__(
        self, factors, lr: Union[float, Callable[[int], float]] = 1.0, max_halvings: int = 0, fallback: PyroOptim = None
    ):
        # PyroOptim.__init__ builds torch optimizers per parameter; none are needed here.
        self.factors = _check_factors(factors)
        if isinstance(lr, type) or not callable(lr):
            lr = _check_step_size(lr)
        max_halvings = _check_max_halvings(max_halvings)
        instance(
            "fallback",
            fallback,
            PyroOptim,
            "a pyro.optim optimizer instance such as pyro.optim.Adam({'lr': 0.01})",
            optional=True,
        )
        self.lr, self.max_halvings, self.fallback = lr, max_halvings, fallback
        self.num_steps = 0
        self.last_step_sizes: Dict[str, float] = {}

    def _step_size(self) -> float:
        if not callable(self.lr):
            return self.lr
        return _check_step_size(self.lr(self.num_steps), f"lr({self.num_steps}) (the schedule at this step)")

    def __call__(self, params: Sequence[torch.Tensor], *args, **kwargs) -> None:
        store = pyro.get_param_store()
        named = {}
        for p in params:
            name = store.param_name(p)
            if name is None:
                raise ValueError("NaturalGradient got a tensor that is not an unconstrained Pyro param")
            named[name] = p
        owned = {name for _, names in self.factors.values() for name in names}
        unknown = sorted(owned - set(store.keys()))
        if unknown:
            raise ValueError(
                f"NaturalGradient factors name param(s) {unknown} that are not in the Pyro param "
                f"store, whose params are {sorted(store.keys())}; fix the names in factors (their "
                f"params would otherwise go to the fallback optimizer or nowhere)"
            )
        others = [p for name, p in named.items() if name not in owned]
        if others and self.fallback is None:
            unknown = sorted(name for name in named if name not in owned)
            raise ValueError(
                f"NaturalGradient has no factor for param(s) {unknown}; add them to factors "
                "or pass fallback=pyro.optim.Adam(...)"
            )
        rho, updates, sizes = self._step_size(), {}, {}
        param_constraints = store.get_state()["constraints"]
        for factor, (family, names) in self.factors.items():
            present = [name in named for name in names]
            if not any(present):
                continue
            if not all(present):
                missing = [name for name, ok in zip(names, present) if not ok]
                raise ValueError(f"factor {factor!r}: param(s) {missing} are not among the optimized params")
            transforms = [_elementwise_transform(name, param_constraints[name]) for name in names]
            theta, grad_theta = _usual_params_and_grads(names, [named[n] for n in names], transforms, factor)
            try:
                step = natural_parameter_step(family, theta, grad_theta, rho, self.max_halvings)
            except ValueError as error:  # the domain, a singular Fisher information: say which factor
                raise type(error)(f"factor {factor!r}: {error}") from None
            sizes[factor] = step.step_size
            for name, transform, value in zip(names, transforms, step.theta.unbind(-1)):
                updates[name] = transform.inv(value)
        if others:
            self.fallback(others, *args, **kwargs)
        with torch.no_grad():
            for name, value in updates.items():
                named[name].copy_(value)
        self.last_step_sizes = sizes
        self.num_steps += 1

    def get_state(self) -> dict:
        """The step counter and the fallback's state (what :func:`pyro_vi.training.fit` checkpoints)."""
        return {"num_steps": self.num_steps, "fallback": self.fallback.get_state() if self.fallback else None}

    def set_state(self, state: dict) -> None:
        """Restores a state from :meth:`get_state`."""
        self.num_steps = int(state["num_steps"])
        if self.fallback is not None and state.get("fallback") is not None:
            self.fallback.set_state(state["fallback"])


def _elementwise_transform(name, constraint):
    transform = transform_to(constraint)
    if transform.domain.event_dim != 0 or transform.codomain.event_dim != 0:
        raise ValueError(f"param {name!r}: NaturalGradient needs an elementwise constraint, got {constraint}")
    return transform


def _usual_params_and_grads(names, unconstrained, transforms, factor):
    """Constrained values ``(..., d)`` and the loss gradient w.r.t. them by the chain rule,
    :math:`\\partial L / \\partial \\theta = (\\partial L / \\partial u) / (d\\theta / du)`;
    a non-finite gradient is refused, naming the param."""
    shapes = {tuple(u.shape) for u in unconstrained}
    if len(shapes) != 1:
        raise ValueError(f"factor {factor!r}: its params must have one shape, got {sorted(shapes)}")
    for name, u in zip(names, unconstrained):
        if u.grad is not None and not bool(torch.isfinite(u.grad).all()):
            bad = u.grad[~torch.isfinite(u.grad)].flatten()[0].item()
            raise ValueError(
                f"factor {factor!r}: the gradient of param {name!r} is not finite ({bad}); "
                f"no param was changed: find where the loss or its gradient became NaN/inf "
                f"(pyro_vi.fit stops there with NonFiniteError)"
            )
    values, grads = [], []
    with torch.enable_grad():
        for u, transform in zip(unconstrained, transforms):
            u_ = u.detach().requires_grad_(True)
            value = transform(u_)
            dvalue_du = torch.autograd.grad(value.sum(), u_)[0]
            grad_u = u.grad if u.grad is not None else torch.zeros_like(u)
            values.append(value.detach())
            grads.append(grad_u.detach() / dvalue_du)
    return torch.stack(values, dim=-1), torch.stack(grads, dim=-1)
