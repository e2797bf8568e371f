# A new estimator in a dozen lines: the score-function gradient with a fixed
# baseline b, g = (1/S) sum_s h_s (L_s - b). It is unbiased for any b that does
# not depend on the samples, since E[h_s] = 0.
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints

from pyro_vi import Needs, ParticleELBO


class FixedBaselineELBO(ParticleELBO):
    def __init__(self, baseline=0.0, **kwargs):
        self.baseline = float(baseline)
        # what the run phase must provide: every random guide site with a score
        super().__init__(needs=Needs(reparameterize=False), **kwargs)

    def check(self, particles):
        if not particles.score_sites():
            raise ValueError("FixedBaselineELBO: the guide has no random site")

    def elbo_and_surrogate(self, particles):
        log_weights = particles.log_weights()  # L_s, shape (S,)
        signal = (log_weights - self.baseline).detach()
        # log p - log q(point masses): exact gradient for model params and point masses;
        # log q(score sites) * stop(L_s - b): the score-function term.
        surrogate = particles.log_p() - particles.path_log_q() + particles.score_log_q() * signal
        return log_weights.mean(), surrogate.mean()


def model():
    pyro.sample("z", dist.Normal(0.0, 1.0))


def guide():
    loc = pyro.param("loc", torch.tensor(0.5))
    scale = pyro.param("scale", torch.tensor(1.0), constraint=constraints.positive)
    pyro.sample("z", dist.Normal(loc, scale))


pyro.clear_param_store()
pyro.set_rng_seed(0)
elbo = FixedBaselineELBO(baseline=-0.5, num_particles=2000, vectorize_particles=True, max_plate_nesting=0)
loss = elbo.loss_and_grads(model, guide)
# The ELBO is -KL(N(loc, scale) || N(0, 1)) = -loc^2 / 2 here: d loss / d loc = loc = 0.5.
print("loss {:.3f}, d loss / d loc {:.3f}".format(loss, pyro.param("loc").grad.item()))
