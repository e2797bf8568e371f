r"""The Normal mean of the data-parallel study (``experiments.distributed_svi``):

.. math::

    \mu \sim \mathcal{N}(0, \sigma_0^2), \qquad
    x_n \mid \mu \sim \mathcal{N}(\mu, \sigma^2), \quad n = 1, \dots, N,

with :math:`\sigma_0 = 10` (:data:`PRIOR`) and :math:`\sigma = 2` (:data:`SIGMA`).
The posterior is Normal, with precision and mean

.. math::

    \lambda_N = \sigma_0^{-2} + N \sigma^{-2}, \qquad
    m_N = \lambda_N^{-1} \sigma^{-2} \textstyle\sum_n x_n.

The data plate takes ``subsample=indices``, so that each process of a
data-parallel fit holds its shard and Pyro scales it to the whole data. The
Normal guide and its exact ELBO gradient are in :mod:`guides.normal_mean`.
"""

import pyro
import pyro.distributions as dist
import torch

__all__ = ["PRIOR", "SIGMA", "TRUE_LOC", "exact_posterior", "generate_data", "make_model", "posterior_precision"]

SIGMA, PRIOR, TRUE_LOC = 2.0, 10.0, 1.0


def generate_data(num_data, seed):
    """``num_data`` draws of :math:`\\mathcal{N}(1, 2^2)` (:data:`TRUE_LOC`, :data:`SIGMA`)."""
    return TRUE_LOC + SIGMA * torch.randn(num_data, generator=torch.Generator().manual_seed(seed))


def posterior_precision(num_data):
    """:math:`\\lambda_N = \\sigma_0^{-2} + N \\sigma^{-2}`."""
    return 1 / PRIOR**2 + num_data / SIGMA**2


def exact_posterior(data):
    """Mean and sd of the posterior of the mean given ``data``."""
    precision = posterior_precision(len(data))
    return data.double().sum().item() / SIGMA**2 / precision, precision**-0.5


def make_model(num_data):
    """The model of ``num_data`` points, called as ``model(x, indices)`` on
    the points ``x`` at ``indices`` of the whole data."""

    def model(x, indices):
        loc = pyro.sample("loc", dist.Normal(0.0, PRIOR))
        with pyro.plate("data", num_data, subsample=indices):
            pyro.sample("x", dist.Normal(loc, SIGMA), obs=x)

    return model
