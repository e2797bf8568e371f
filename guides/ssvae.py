r"""The amortized guide of the semi-supervised VAE (:mod:`models.ssvae`) and
Kingma et al.'s objective.

.. math::

    q_\phi(y_n \mid x_n) = \mathrm{Categorical}\big(\mathrm{softmax}\, c_\phi(x_n)\big)
        \quad\text{(unlabelled images only)},\qquad
    q_\phi(z_n \mid x_n, y_n) = \mathcal{N}\big(\mu_\phi(x_n, y_n),
        \mathrm{diag}\, \sigma_\phi(x_n, y_n)^2\big),

the classifier :math:`c_\phi` an MLP ``784 -> hidden (tanh) -> K`` logits and the
encoder an MLP ``(x, one_hot(y)) -> hidden (tanh) -> (d means, d log standard
deviations)``. For a labelled image :math:`y_n` is the observed label; for an
unlabelled one it is the sample of :math:`q_\phi(y_n \mid x_n)`, a discrete site
(enumerate it with ``config_enumerate`` for ``TraceEnum_ELBO``).

Kingma et al.'s objective (their eq. 9) adds a classification term on the
labelled images, because the ELBO alone never trains :math:`q_\phi(y \mid x)` on
them:

.. math::

    J^\alpha = \sum_{(x, y)\ \mathrm{labelled}} \big[\mathcal{L}(x, y)
        + \alpha \log q_\phi(y \mid x)\big]
        + \sum_{x\ \mathrm{unlabelled}} \mathcal{U}(x),

with :math:`\mathcal{L}(x, y)` the ELBO of the labelled image (latent z only) and
:math:`\mathcal{U}(x) = \mathbb{E}_{q_\phi(y, z \mid x)}[\log p(x, y, z) - \log
q_\phi(y, z \mid x)]` that of the unlabelled one. :class:`SemiSupervisedLoss`
computes it batch by batch: the classification term enters as a separate term of
the same loss (not a model factor and not a second optimizer step).

References

1. D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling, *Semi-Supervised Learning
   with Deep Generative Models*, NeurIPS 2014, sections 3.1.2 and 3.2.
"""

import math

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from models.ssvae import DEFAULT_CONFIG, Decoder, LabelledLinear, SSVAEConfig, check_labels
from models.vae import check_images, mlp
from pyro_vi.validation import instance, integer, real

__all__ = ["Classifier", "Encoder", "SemiSupervisedLoss", "classify", "guide", "unlabelled_elbo"]


class Classifier(nn.Module):
    """``x -> logits`` of q(y | x).

    :param SSVAEConfig config: the sizes.
    """

    def __init__(self, config=DEFAULT_CONFIG):
        super().__init__()
        self.config = instance("config", config, SSVAEConfig, "a models.ssvae.SSVAEConfig")
        self.net = mlp((config.data_dim, config.hidden_dim, config.num_classes))

    def forward(self, x):
        return self.net(x)


class Encoder(nn.Module):
    """``(x, y) -> (loc, scale)`` of q(z | x, y); ``x`` and ``y`` broadcast.

    :param SSVAEConfig config: the sizes.
    """

    def __init__(self, config=DEFAULT_CONFIG):
        super().__init__()
        self.config = instance("config", config, SSVAEConfig, "a models.ssvae.SSVAEConfig")
        self.hidden = LabelledLinear(config.data_dim, config.num_classes, config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, 2 * config.latent_dim)

    def forward(self, x, y):
        loc, log_scale = self.out(torch.tanh(self.hidden(x, y))).split(self.config.latent_dim, dim=-1)
        return loc, log_scale.exp()


def guide(x, y=None, *, encoder, classifier):
    """``y_n ~ q(y | x_n)`` when the batch is unlabelled (``y=None``), then
    ``z_n ~ q(z | x_n, y_n)``, in the ``"data"`` plate; pass the networks as
    keywords (:func:`functools.partial`)."""
    instance("encoder", encoder, Encoder, "a guides.ssvae.Encoder")
    instance("classifier", classifier, Classifier, "a guides.ssvae.Classifier")
    check_images(x, encoder.config, encoder)
    check_labels(y, x.shape[0], encoder.config.num_classes)
    pyro.module("encoder", encoder)
    if y is None:
        pyro.module("classifier", classifier)
    with pyro.plate("data", x.shape[0], dim=-1):
        if y is None:
            y = pyro.sample("y", dist.Categorical(logits=classifier(x)))
        loc, scale = encoder(x, y)
        pyro.sample("z", dist.Normal(loc, scale).to_event(1))


class SemiSupervisedLoss:
    r"""The loss :math:`-J^\alpha` (module docstring) for :func:`pyro_vi.fit` or
    ``SVI``, one batch at a time: a batch is labelled, ``(x, y)``, or unlabelled,
    ``(x,)``.

    - An unlabelled batch: ``unlabelled_elbo`` (the estimator under study) on
      :math:`-\sum_n \mathcal{U}(x_n)`.
    - A labelled batch: ``labelled_elbo`` (default ``Trace_ELBO()``: z is
      reparameterized, nothing discrete is left) on :math:`-\sum_n
      \mathcal{L}(x_n, y_n)`, plus the separate term :math:`-\alpha \sum_n
      \log q_\phi(y_n \mid x_n)`, differentiated exactly.

    So two runs that differ only in ``unlabelled_elbo`` differ only in the
    gradient of the unlabelled ELBO.

    :param unlabelled_elbo: an ELBO instance for the unlabelled batches.
    :param Classifier classifier: the guide's classifier.
    :param float alpha: the weight :math:`\alpha` of the classification term
        per labelled image (>= 0).
    :param labelled_elbo: an ELBO instance for the labelled batches.
    """

    def __init__(self, unlabelled_elbo, classifier, alpha, labelled_elbo=None):
        for name, elbo in (("unlabelled_elbo", unlabelled_elbo), ("labelled_elbo", labelled_elbo)):
            if elbo is not None and (isinstance(elbo, type) or not hasattr(elbo, "loss_and_grads")):
                raise ValueError(f"{name} must be an ELBO instance such as pyro.infer.Trace_ELBO(), got {elbo!r:.60}")
        self.unlabelled_elbo = unlabelled_elbo
        self.labelled_elbo = Trace_ELBO(max_plate_nesting=1) if labelled_elbo is None else labelled_elbo
        self.classifier = instance("classifier", classifier, Classifier, "a guides.ssvae.Classifier")
        self.alpha = real("alpha", alpha, minimum=0)

    @property
    def num_particles(self):
        return self.unlabelled_elbo.num_particles

    def classification_loss(self, x, y):
        r""":math:`-\alpha \sum_n \log q_\phi(y_n \mid x_n)`, a tensor."""
        pyro.module("classifier", self.classifier)
        log_q = dist.Categorical(logits=self.classifier(x)).log_prob(y)
        return -self.alpha * log_q.sum()

    def loss(self, model, guide, x, y=None):
        """The loss as a float, no gradients."""
        if y is None:
            return self.unlabelled_elbo.loss(model, guide, x)
        with torch.no_grad():
            return self.labelled_elbo.loss(model, guide, x, y) + self.classification_loss(x, y).item()

    def loss_and_grads(self, model, guide, x, y=None):
        """The loss as a float; the gradients are accumulated into ``.grad``."""
        if y is None:
            return self.unlabelled_elbo.loss_and_grads(model, guide, x)
        loss = self.labelled_elbo.loss_and_grads(model, guide, x, y)
        classification = self.classification_loss(x, y)
        classification.backward()
        return loss + classification.item()


@torch.no_grad()
def classify(x, classifier):
    """The most probable class under q(y | x) of each row of ``x``."""
    return classifier(x).argmax(-1)


@torch.no_grad()
def unlabelled_elbo(x, decoder, encoder, classifier, num_samples=1, generator=None, chunk=500):
    r"""The ELBO :math:`\mathcal{U}(x_n)` of each unlabelled image, shape
    ``(len(x),)``, exact in y and Monte Carlo in z:

    .. math::

        \mathcal{U}(x) = \sum_y q(y \mid x) \Big[\log p(y) - \log q(y \mid x)
            + \frac{1}{M} \sum_{m=1}^{M} \big(\log p(x \mid y, z_{y,m}) + \log p(z_{y,m})
            - \log q(z_{y,m} \mid x, y)\big)\Big],

    with :math:`z_{y,m} \sim q(z \mid x, y)` drawn from ``generator``
    (:math:`M` = ``num_samples``), ``chunk`` images at a time.
    """
    instance("decoder", decoder, Decoder, "a models.ssvae.Decoder")
    config = decoder.config
    check_images(x, config, decoder)
    num_samples = integer("num_samples", num_samples, minimum=1)
    num_classes = config.num_classes
    classes = torch.arange(num_classes, device=x.device).unsqueeze(-1)  # (K, 1) against (B,)
    values = []
    for first in range(0, len(x), chunk):
        xb = x[first : first + chunk]
        log_q_y = torch.log_softmax(classifier(xb), -1).T  # (K, B)
        loc, scale = encoder(xb, classes)  # (K, B, d)
        noise = torch.randn((num_samples,) + loc.shape, generator=generator, dtype=loc.dtype, device=loc.device)
        z = loc + scale * noise
        log_pz = dist.Normal(0.0, 1.0).log_prob(z).sum(-1)
        log_qz = dist.Normal(loc, scale).log_prob(z).sum(-1)
        log_px = dist.Bernoulli(logits=decoder(z, classes), validate_args=False).log_prob(xb).sum(-1)
        inner = (log_px + log_pz - log_qz).mean(0) - math.log(num_classes) - log_q_y  # (K, B)
        values.append((log_q_y.exp() * inner).sum(0))
    return torch.cat(values)
