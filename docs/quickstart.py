# A model with a global latent (the mean) and a guide for it, fitted with
# SVI and one of pyro_vi's estimators in place of Trace_ELBO.
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.infer import SVI
from pyro.optim import Adam

from pyro_vi import ControlVariateELBO, gradient_statistics


def model(x):
    mean = pyro.sample("mean", dist.Normal(0.0, 10.0))
    with pyro.plate("data", len(x)):
        pyro.sample("x", dist.Normal(mean, 1.0), obs=x)


def guide(x):
    loc = pyro.param("loc", torch.tensor(0.0))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("mean", dist.Normal(loc, scale))


pyro.set_rng_seed(0)
pyro.clear_param_store()
x = 3.0 + torch.randn(50)
elbo = ControlVariateELBO(num_particles=10)  # score function + control variates
svi = SVI(model, guide, Adam({"lr": 0.1}), elbo)
for _ in range(200):
    loss = svi.step(x)

# The exact posterior mean is 50 * mean(x) / (50 + 1/100).
print("posterior mean: {:.3f} (exact {:.3f})".format(pyro.param("loc").item(), (x.sum() / (len(x) + 0.01)).item()))
# The estimator's gradient variance at the fitted guide:
stats = gradient_statistics(elbo, model, guide, x, num_draws=20)
print({name: round(s.total_variance, 4) for name, s in stats.items()})
