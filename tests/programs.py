"""Toy model/guide pairs shared by the test modules.

- :func:`normal_model` / :func:`normal_guide`: ``z ~ N(0, 1)``,
  ``x_n ~ N(z, 1)``, guide ``N(loc, scale)`` (params ``loc``, ``scale``;
  started at ``N(-1, 1)``). The posterior is
  ``N(sum(x) / (N + 1), 1 / (N + 1))``.
- :func:`subsampled_model`: :func:`normal_model` with the data plate
  subsampled to 2 points.
- :func:`location_model` / :func:`location_guide`: one global location
  ``loc ~ N(0, 2)``, ``x_n ~ N(loc, 1)``, guide ``N(m, s)`` (params ``m``,
  ``s``); ``functools.partial(location_guide, m=..., s=...)`` starts it
  elsewhere.
"""

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

__all__ = ["location_guide", "location_model", "normal_guide", "normal_model", "subsampled_model"]


def normal_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(z, 1.0), obs=x)


def normal_guide(x):
    loc = pyro.param("loc", torch.tensor(-1.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale))


def subsampled_model(x):
    z = pyro.sample("z", dist.Normal(0.0, 1.0))
    with pyro.plate("data", len(x), subsample_size=2) as idx:
        pyro.sample("x", dist.Normal(z, 1.0), obs=x[idx])


def location_model(data):
    loc = pyro.sample("loc", dist.Normal(0.0, 2.0))
    with pyro.plate("data", len(data)):
        pyro.sample("x", dist.Normal(loc, 1.0), obs=data)


def location_guide(data, m=0.2, s=0.8):
    m = pyro.param("m", torch.tensor(m))
    s = pyro.param("s", torch.tensor(s), constraint=constraints.positive)
    pyro.sample("loc", dist.Normal(m, s))
