r"""The Normal guide :math:`q(\mu) = \mathcal{N}(m, s^2)` of :mod:`models.normal_mean`
(Pyro parameters ``"m"`` from 0 and ``"s"`` from 1, constrained positive), and
the exact gradient of its ELBO in Pyro's unconstrained coordinates
:math:`(m, \log s)`: with :math:`T = \sum_n x_n`,

.. math::

    \frac{\partial \mathcal{L}}{\partial m} = \frac{T - N m}{\sigma^2} - \frac{m}{\sigma_0^2},
    \qquad
    \frac{\partial \mathcal{L}}{\partial \log s} = 1 - s^2 \lambda_N,

zero at the exact posterior (:func:`models.normal_mean.exact_posterior`).
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from models.normal_mean import PRIOR, SIGMA, posterior_precision

__all__ = ["exact_gradient", "guide"]


def guide(x, indices):
    m = pyro.param("m", torch.tensor(0.0))
    s = pyro.param("s", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("loc", dist.Normal(m, s))


def exact_gradient(total, num_data, m, s):
    """The gradient of the ELBO of :math:`\\mathcal{N}(m, s^2)` with respect to
    :math:`(m, \\log s)`, for ``num_data`` points that sum to ``total``."""
    return [(total - num_data * m) / SIGMA**2 - m / PRIOR**2, 1 - s**2 * posterior_precision(num_data)]
