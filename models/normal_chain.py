r"""The normal chain of course question 1.C.2 (the model the Rao-Blackwellization
questions 2.1.x study).

The figure of the assignment was lost; this is the structure of ``DESIGN.md``, with
global latents :math:`w_1, w_2, v, z`, local latents :math:`y_{1:N}` and observations
:math:`x_{1:N}`:

.. math::

    w_1 &\sim \mathcal{N}(0, 1), \qquad
    w_2 \sim \mathrm{Gamma}(2, 2) \quad (\text{concentration } 2, \text{ rate } 2,
        \ E[w_2] = 1),\\
    v \mid w_1 &\sim \mathcal{N}(w_1, 1), \qquad
    z \mid v \sim \mathcal{N}(v, 1),\\
    y_n \mid w_2 &\sim \mathcal{N}(0, w_2^{-1}) \quad (\text{precision } w_2), \qquad
    x_n \mid z, y_n \sim \mathcal{N}(z + y_n, 1), \quad n = 1, \dots, N.

The log joint factorizes as

.. math::

    \log p = \log p(w_1) + \log p(w_2) + \log p(v \mid w_1) + \log p(z \mid v)
        + \sum_n \big[\log p(y_n \mid w_2) + \log p(x_n \mid z, y_n)\big],

so the Markov blankets (the factors that contain each latent) are

.. math::

    \mathrm{mb}(w_1) &= \{v\}, &
    \mathrm{mb}(w_2) &= \{y_{1:N}\}, &
    \mathrm{mb}(v) &= \{w_1, z\},\\
    \mathrm{mb}(z) &= \{v, x_{1:N}, y_{1:N}\}, &
    \mathrm{mb}(y_n) &= \{w_2, z, x_n\}.

The Rao-Blackwellized score-function gradient of question 2.1.12 keeps, for
:math:`\lambda_3` (the parameters of :math:`q(z)`), only
:math:`\log p(z \mid v) + \sum_n \log p(x_n \mid z, y_n) - \log q(z)`.
The mean-field guide and the closed-form ELBO are in :mod:`guides.normal_chain`.

References

1. R. Ranganath, S. Gerrish, D. M. Blei, *Black Box Variational Inference*,
   AISTATS 2014, section 3.1 and Algorithm 2.
"""

import math
from typing import Dict, Tuple, Union

import pyro
import pyro.distributions as dist
import torch

from models.checks import as_int
from models.normal_gamma import check_data

__all__ = [
    "W2_CONCENTRATION",
    "W2_RATE",
    "check_data",
    "generate_data",
    "log_joint",
    "markov_blankets",
    "model",
]

#: Concentration of the Gamma prior on the precision ``w2``.
W2_CONCENTRATION = 2.0
#: Rate of the Gamma prior on the precision ``w2`` (so E[w2] = 1, Var[w2] = 1/2).
W2_RATE = 2.0


def generate_data(
    num_data: int = 20, seed: int = 0, return_latents: bool = False
) -> Union[torch.Tensor, Tuple[torch.Tensor, Dict[str, torch.Tensor]]]:
    r"""Draw the latents from the prior and :math:`x_{1:N}` given them.

    Uses a local :class:`torch.Generator`, so the global RNG is left untouched;
    :math:`w_2 \sim \mathrm{Gamma}(2, 2)` is drawn exactly as a sum of two
    :math:`\mathrm{Exponential}(2)` variables (integer concentration).

    :param int num_data: N >= 1.
    :param int seed: seed of the local generator.
    :param bool return_latents: also return the true latents.
    :returns: the 1-D observations ``x`` (default dtype), or ``(x, latents)`` with
        ``latents`` a dict of ``"w1", "w2", "v", "z"`` (0-D) and ``"y"`` (N,).
    """
    as_int("num_data", num_data)
    num_data = int(num_data)
    generator = torch.Generator().manual_seed(int(seed))
    dtype = torch.float64

    def normal(*shape):
        return torch.randn(shape, generator=generator, dtype=dtype)

    w1 = normal()
    uniforms = torch.rand(int(W2_CONCENTRATION), generator=generator, dtype=dtype)
    w2 = -torch.log1p(-uniforms).sum() / W2_RATE
    v = w1 + normal()
    z = v + normal()
    y = normal(num_data) * w2**-0.5
    x = z + y + normal(num_data)
    default = torch.get_default_dtype()
    x = x.to(default)
    if not return_latents:
        return x
    latents = {"w1": w1, "w2": w2, "v": v, "z": z, "y": y}
    return x, {name: value.to(default) for name, value in latents.items()}


def model(data):
    """The Pyro program: latent sites ``"w1", "w2", "v", "z"`` (global) and ``"y"``
    (local, in plate ``"data"`` at ``dim=-1``), and the observed ``"x"`` in the same plate.

    Works inside an outer vectorized particle plate (``vectorize_particles=True``,
    ``max_plate_nesting=1``): the global sites then have shape ``(S, 1)`` and ``y``
    and ``x``'s distribution ``(S, N)``.

    :param data: 1-D observations (validated by :func:`check_data`).
    """
    data = check_data(data)
    zero, one = torch.zeros((), dtype=data.dtype), torch.ones((), dtype=data.dtype)
    w1 = pyro.sample("w1", dist.Normal(zero, one))
    w2 = pyro.sample("w2", dist.Gamma(W2_CONCENTRATION * one, W2_RATE * one))
    v = pyro.sample("v", dist.Normal(w1, one))
    z = pyro.sample("z", dist.Normal(v, one))
    with pyro.plate("data", len(data), dim=-1):
        y = pyro.sample("y", dist.Normal(zero, w2**-0.5))
        pyro.sample("x", dist.Normal(z + y, one), obs=data)


def log_joint(data, w1, w2, v, z, y) -> torch.Tensor:
    r""":math:`\log p(X, w_1, w_2, v, z, y)` in float64, written out by hand.

    The global latents are tensors (or numbers) of a common batch shape ``B``; ``y``
    has shape ``B + (N,)``. Returns a float64 tensor of shape ``B``.
    """
    x = check_data(data).to(torch.float64)
    w1, w2, v, z, y = (torch.as_tensor(t, dtype=torch.float64) for t in (w1, w2, v, z, y))
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    a0, b0 = W2_CONCENTRATION, W2_RATE
    log_p_w1 = -half_log_2pi - 0.5 * w1**2
    log_p_w2 = a0 * math.log(b0) - math.lgamma(a0) + (a0 - 1) * w2.log() - b0 * w2
    log_p_v = -half_log_2pi - 0.5 * (v - w1) ** 2
    log_p_z = -half_log_2pi - 0.5 * (z - v) ** 2
    w2_, z_ = w2.unsqueeze(-1), z.unsqueeze(-1)
    log_p_y = (-half_log_2pi + 0.5 * w2_.log() - 0.5 * w2_ * y**2).sum(-1)
    log_p_x = (-half_log_2pi - 0.5 * (x - z_ - y) ** 2).sum(-1)
    return log_p_w1 + log_p_w2 + log_p_v + log_p_z + log_p_y + log_p_x


def markov_blankets() -> Dict[str, Tuple[str, ...]]:
    """Model factors (named by their sample site) that contain each latent site.

    For ``"y"`` the factors are element-wise: ``y_n`` meets only ``y_n``'s and
    ``x_n``'s factors. This is what a Rao-Blackwellized estimator should discover
    from the program; it is stated here for tests.
    """
    return {
        "w1": ("w1", "v"),
        "w2": ("w2", "y"),
        "v": ("v", "z"),
        "z": ("z", "x"),
        "y": ("y", "x"),
    }
