r"""Multi-object MNIST: canvases holding 0 to ``max_digits`` MNIST digits at
random positions, for the attend-infer-repeat scene model (:mod:`models.air`).

Each canvas is ``canvas_size x canvas_size`` pixels with intensities in
:math:`[0, 1]`. Its number of digits is uniform on :math:`\{0, \dots,
\mathrm{max\_digits}\}`; each digit is an MNIST image (resized to
``digit_size x digit_size`` when that is not 28) drawn uniformly from a pool,
placed with its top-left corner uniform on the positions where it fits
entirely, and combined with the canvas by the pixel-wise maximum (digits may
overlap, as in Eslami et al.'s data). Everything is drawn from a
:class:`torch.Generator` seeded by the caller: the same arguments give the same
canvases, bit for bit.

:func:`load_multi_mnist` builds the training canvases from MNIST's training
images and the held-out canvases from its test images (through
:func:`models.mnist.load_mnist`; when only the test split is on disk, that
function splits it, and the held-out digits are still never training
digits).

References

1. S. M. A. Eslami, N. Heess, T. Weber, Y. Tassa, D. Szepesvari, K. Kavukcuoglu,
   G. E. Hinton, *Attend, Infer, Repeat: Fast Scene Understanding with
   Generative Models*, NeurIPS 2016, section 3.1.
"""

from dataclasses import dataclass, field
from typing import Dict

import torch
import torch.nn.functional as F

from models.mnist import load_mnist
from pyro_vi.validation import instance, integer

__all__ = ["MultiMnist", "MultiMnistConfig", "compose", "load_multi_mnist"]

MNIST_SIZE = 28


@dataclass(frozen=True)
class MultiMnistConfig:
    """
    :ivar int canvas_size: canvas side in pixels.
    :ivar int digit_size: side of each placed digit (MNIST's 28x28 images are
        resized to it; at most ``canvas_size``).
    :ivar int max_digits: the most digits on a canvas (the count is uniform on
        0..max_digits).
    :ivar int num_train: training canvases.
    :ivar int num_test: held-out canvases.
    :ivar int seed: seed of the generator (the held-out canvases use
        ``seed + 1``).
    """

    canvas_size: int = 50
    digit_size: int = 28
    max_digits: int = 2
    num_train: int = 3000
    num_test: int = 1000
    seed: int = 0

    def __post_init__(self):
        for name, minimum in (("canvas_size", 1), ("digit_size", 1), ("max_digits", 0), ("num_train", 1)):
            object.__setattr__(self, name, integer("MultiMnistConfig." + name, getattr(self, name), minimum=minimum))
        object.__setattr__(self, "num_test", integer("MultiMnistConfig.num_test", self.num_test, minimum=0))
        object.__setattr__(self, "seed", integer("MultiMnistConfig.seed", self.seed, minimum=0, maximum=2**63 - 2))
        if self.digit_size > self.canvas_size:
            raise ValueError(
                f"MultiMnistConfig.digit_size ({self.digit_size}) is larger than canvas_size ({self.canvas_size}); "
                "pass a digit_size of at most canvas_size"
            )


@dataclass
class MultiMnist:
    """
    :ivar torch.Tensor images: float32 ``(N, canvas_size, canvas_size)`` in [0, 1].
    :ivar torch.Tensor counts: int64 ``(N,)``, the number of digits on each canvas.
    :ivar torch.Tensor corners: int64 ``(N, max_digits, 2)``, the (row, column)
        of each digit's top-left corner; ``-1`` for the slots past ``counts``.
    :ivar torch.Tensor digits: int64 ``(N, max_digits)``, the index of each
        digit in the pool it was drawn from; ``-1`` past ``counts``.
    :ivar dict info: where the digits came from.
    """

    images: torch.Tensor
    counts: torch.Tensor
    corners: torch.Tensor
    digits: torch.Tensor
    info: Dict[str, object] = field(default_factory=dict)

    def __len__(self):
        return len(self.images)


def resize_digits(digits: torch.Tensor, digit_size: int) -> torch.Tensor:
    """``(M, 28, 28)`` images resized to ``(M, digit_size, digit_size)``
    (area-weighted, antialiased), clamped to [0, 1]; unchanged at 28."""
    if digit_size == digits.shape[-1]:
        return digits
    resized = F.interpolate(digits[:, None], size=(digit_size, digit_size), mode="bilinear", antialias=True)
    return resized[:, 0].clamp(0.0, 1.0)


def compose(
    pool: torch.Tensor, num_images: int, canvas_size: int, max_digits: int, generator: torch.Generator
) -> MultiMnist:
    """Draws ``num_images`` canvases from a ``pool`` of square digit images
    ``(M, d, d)`` with intensities in [0, 1] (see the module docstring)."""
    instance("pool", pool, torch.Tensor, "a float tensor (M, d, d) of digit images")
    if pool.dim() != 3 or pool.shape[1] != pool.shape[2] or not pool.is_floating_point() or not len(pool):
        raise ValueError(
            f"pool must be a non-empty float tensor of square digit images (M, d, d), got {tuple(pool.shape)} "
            f"{pool.dtype}"
        )
    size = pool.shape[-1]
    if size > canvas_size:
        raise ValueError(f"the pool's digits are {size} pixels wide, larger than the canvas ({canvas_size})")
    counts = torch.randint(0, max_digits + 1, (num_images,), generator=generator)
    slots = torch.arange(max_digits) < counts[:, None]  # (N, max_digits): which slots hold a digit
    digits = torch.randint(0, len(pool), (num_images, max_digits), generator=generator)
    corners = torch.randint(0, canvas_size - size + 1, (num_images, max_digits, 2), generator=generator)
    images = torch.zeros(num_images, canvas_size, canvas_size)
    for n, k in zip(*torch.nonzero(slots, as_tuple=True)):
        row, col = corners[n, k].tolist()
        window = images[n, row : row + size, col : col + size]
        torch.maximum(window, pool[digits[n, k]], out=window)
    return MultiMnist(
        images=images,
        counts=counts,
        corners=torch.where(slots[..., None], corners, -1),
        digits=torch.where(slots, digits, -1),
    )


def load_multi_mnist(data_dir=None, config: MultiMnistConfig = MultiMnistConfig()):
    """The training and held-out canvases of ``config``, from the MNIST IDX
    files in ``data_dir`` (never downloaded; see :func:`models.mnist.load_mnist`).

    :returns: ``(train, test)``, two :class:`MultiMnist`; ``info`` says where
        the digits came from and how MNIST was split.
    :raises ValueError: for a bad ``config``; :class:`models.mnist.MnistNotFoundError`
        when the files are not there.
    """
    instance("config", config, MultiMnistConfig, "a models.multi_mnist.MultiMnistConfig")
    mnist = load_mnist(data_dir, download=False)
    sets = []
    for offset, (split, pool, num) in enumerate(
        (("train", mnist.train, config.num_train), ("test", mnist.test, config.num_test))
    ):
        pool = resize_digits(pool.reshape(-1, MNIST_SIZE, MNIST_SIZE), config.digit_size)
        generator = torch.Generator().manual_seed(config.seed + offset)
        data = compose(pool, num, config.canvas_size, config.max_digits, generator)
        data.info = dict(
            mnist_source=mnist.info["source"],
            mnist_split=mnist.info["split"],
            digits_from="load_mnist's {} images ({:,} in the pool)".format(
                "training" if split == "train" else "held-out", len(pool)
            ),
            generator_seed=config.seed + offset,
        )
        sets.append(data)
    return tuple(sets)
