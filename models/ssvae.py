r"""The semi-supervised VAE "M2" of Kingma et al. (2014) on binarized MNIST.

.. math::

    y_n &\sim \mathrm{Categorical}(1/K, \dots, 1/K),\qquad
    z_n \sim \mathcal{N}(0, I_d),\\
    x_n \mid y_n, z_n &\sim \prod_{j=1}^{784} \mathrm{Bernoulli}\big(x_{nj} \mid
        \sigma(f_\theta(z_n, y_n)_j)\big),

with :math:`K = 10` digit classes, the label :math:`y_n` **observed** for the
labelled images and **latent** for the others, and the decoder :math:`f_\theta` an
MLP ``(z, one_hot(y)) -> hidden (tanh) -> 784`` logits, the output bias starting
at the logit of the mean training pixel. :func:`model` takes a batch that is
either labelled (``y`` given) or unlabelled (``y=None``), its images in a plate
``"data"`` at ``dim=-1`` (``max_plate_nesting=1``). The amortized guide, the
classifier and Kingma's objective are in :mod:`guides.ssvae`.

The first layer of each network that reads a label, :class:`LabelledLinear`,
is the linear layer on ``[u, one_hot(y)]`` written as ``W u + E[y] + b``, so that
``u`` and ``y`` broadcast: an enumerated ``y`` of shape ``(K, 1)`` against a batch
``u`` of shape ``(B, d)`` (Pyro's ``TraceEnum_ELBO``), or particles ``(S, B)``.

:func:`labelled_split` picks the labelled images: the same number of each
digit, by a fixed seed; :class:`SemiSupervisedBatches` draws an epoch's
batches, labelled and unlabelled.

References

1. D. P. Kingma, D. J. Rezende, S. Mohamed, M. Welling, *Semi-Supervised Learning
   with Deep Generative Models*, NeurIPS 2014, section 3.1.2 (M2).
"""

from dataclasses import dataclass
from typing import Tuple

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from models.mnist import binarize
from models.vae import check_images, output_bias
from pyro_vi.validation import instance, integer

__all__ = [
    "DEFAULT_CONFIG",
    "LabelledLinear",
    "SSVAEConfig",
    "Decoder",
    "SemiSupervisedBatches",
    "check_labels",
    "labelled_split",
    "model",
]


@dataclass(frozen=True)
class SSVAEConfig:
    """
    :ivar int data_dim: pixels per image (784).
    :ivar int num_classes: label classes K (10 digits).
    :ivar int hidden_dim: width of the one hidden layer of every network.
    :ivar int latent_dim: dimension d of z.
    """

    data_dim: int = 784
    num_classes: int = 10
    hidden_dim: int = 256
    latent_dim: int = 32

    def __post_init__(self):
        for name in ("data_dim", "num_classes", "hidden_dim", "latent_dim"):
            minimum = 2 if name == "num_classes" else 1
            object.__setattr__(self, name, integer("SSVAEConfig." + name, getattr(self, name), minimum=minimum))


DEFAULT_CONFIG = SSVAEConfig()


class LabelledLinear(nn.Module):
    """``(u, y) -> W u + E[y] + b``: the affine map of the concatenation
    ``[u, one_hot(y)]``, with ``u`` of shape ``(..., in_dim)`` and the integer
    labels ``y`` of shape ``(...)`` broadcasting against each other."""

    def __init__(self, in_dim, num_classes, out_dim):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.label = nn.Embedding(num_classes, out_dim)
        with torch.no_grad():  # the scale nn.Linear gives the one-hot columns of a [u, one_hot(y)] input
            bound = (in_dim + num_classes) ** -0.5
            self.linear.weight.uniform_(-bound, bound)
            self.linear.bias.uniform_(-bound, bound)
            self.label.weight.uniform_(-bound, bound)

    def forward(self, u, y):
        return self.linear(u) + self.label(y)


class Decoder(nn.Module):
    """``(z, y) -> Bernoulli logits`` of the pixels.

    :param SSVAEConfig config: the sizes.
    :param mean_pixel: the mean training pixel (a float or one per pixel), for
        the output bias; ``None`` leaves PyTorch's default.
    """

    def __init__(self, config=DEFAULT_CONFIG, mean_pixel=None):
        super().__init__()
        self.config = instance("config", config, SSVAEConfig, "a models.ssvae.SSVAEConfig")
        self.hidden = LabelledLinear(config.latent_dim, config.num_classes, config.hidden_dim)
        self.out = nn.Linear(config.hidden_dim, config.data_dim)
        if mean_pixel is not None:
            with torch.no_grad():
                self.out.bias.copy_(output_bias(mean_pixel, config.data_dim))

    def forward(self, z, y):
        return self.out(torch.tanh(self.hidden(z, y)))


def check_labels(y, num_images, num_classes):
    """Raises :class:`ValueError` unless ``y`` is ``None`` or an integer tensor
    of ``num_images`` labels in ``0 .. num_classes - 1``."""
    if y is None:
        return
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise ValueError(
            f"y must be an integer tensor of labels (torch.int64) or None for an unlabelled batch, got "
            f"{type(y).__name__}{f' of dtype {y.dtype}' if isinstance(y, torch.Tensor) else ''}; pass y.long()"
        )
    if y.shape != (num_images,):
        raise ValueError(f"y must have shape ({num_images},), one label per image of x, got {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(
            f"y holds labels in [{int(y.min())}, {int(y.max())}]; the model has classes 0 .. {num_classes - 1}"
        )


def model(x, y=None, *, decoder):
    """The generative model for the rows of ``x`` (``(B, 784)`` binary pixels),
    with their labels ``y`` (``(B,)`` integers) observed, or latent when
    ``y=None``; pass the decoder as a keyword (:func:`functools.partial`)."""
    instance("decoder", decoder, Decoder, "a models.ssvae.Decoder")
    config = decoder.config
    check_images(x, config, decoder)
    check_labels(y, x.shape[0], config.num_classes)
    pyro.module("decoder", decoder)
    with pyro.plate("data", x.shape[0], dim=-1):
        y = pyro.sample("y", dist.Categorical(logits=x.new_zeros(config.num_classes)), obs=y)
        z = pyro.sample("z", dist.Normal(x.new_zeros(()), 1.0).expand([config.latent_dim]).to_event(1))
        pyro.sample("x", dist.Bernoulli(logits=decoder(z, y), validate_args=False).to_event(1), obs=x)


def labelled_split(labels, num_labelled, seed=0, num_classes=10) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(labelled, unlabelled)``: sorted indices into ``labels``, the labelled
    ones ``num_labelled / num_classes`` random images of each class (drawn with
    ``torch.Generator().manual_seed(seed)``), the unlabelled ones all the others.

    :raises ValueError: unless ``num_labelled`` is a positive multiple of
        ``num_classes`` that every class has enough images for.
    """
    num_classes = integer("num_classes", num_classes, minimum=2)
    num_labelled = integer("num_labelled", num_labelled, minimum=num_classes)
    seed = integer("seed", seed, minimum=0)
    if not isinstance(labels, torch.Tensor) or labels.dim() != 1:
        raise ValueError(f"labels must be a 1-D tensor of class labels, got {labels!r:.60}")
    if num_labelled % num_classes:
        raise ValueError(
            f"num_labelled={num_labelled} is not a multiple of num_classes={num_classes}: a balanced subset has "
            "the same number of images of each class"
        )
    per_class = num_labelled // num_classes
    counts = torch.bincount(labels, minlength=num_classes)
    if int(counts.min()) < per_class:
        raise ValueError(
            f"num_labelled={num_labelled} needs {per_class} images of each class, but class "
            f"{int(counts.argmin())} has {int(counts.min())}"
        )
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for k in range(num_classes):
        members = (labels == k).nonzero().squeeze(-1)
        chosen.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    labelled = torch.cat(chosen).sort().values
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[labelled] = False
    return labelled, mask.nonzero().squeeze(-1)


class SemiSupervisedBatches:
    """One epoch: the unlabelled images in random batches of ``batch_size``,
    as ``(x,)``, with the labelled ones, as ``(x, y)``, spread evenly among
    them; every batch dynamically binarized with :attr:`generator`. The last
    incomplete batch of each kind is dropped."""

    def __init__(self, images, labels, labelled, unlabelled, batch_size, seed):
        self.images, self.labels = images, labels
        self.labelled, self.unlabelled = labelled, unlabelled
        self.batch_size = batch_size
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self):
        return (len(self.labelled) + len(self.unlabelled)) // self.batch_size

    def _batches(self, indices):
        order = indices[torch.randperm(len(indices), generator=self.generator)]
        return [order[i : i + self.batch_size] for i in range(0, len(order) - self.batch_size + 1, self.batch_size)]

    def __iter__(self):
        labelled, unlabelled = self._batches(self.labelled), self._batches(self.unlabelled)
        total = len(labelled) + len(unlabelled)
        at = {int((i + 0.5) * total / len(labelled)) for i in range(len(labelled))}
        labelled, unlabelled = iter(labelled), iter(unlabelled)
        for position in range(total):
            if position in at:
                batch = next(labelled)
                yield binarize(self.images[batch], self.generator), self.labels[batch]
            else:
                yield (binarize(self.images[next(unlabelled)], self.generator),)
