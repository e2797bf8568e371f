r"""MNIST for the VAE/IWAE experiments (course 1.B.2, 1.A.2), through torchvision.

:func:`load_mnist` returns the images as float tensors of shape ``(N, 784)`` with
pixel intensities scaled to :math:`[0, 1]`, and their digits when the label files are
there; :func:`binarize` draws a dynamic
binarization (each pixel ~ Bernoulli(intensity)), as Burda et al. do for every
training batch. Where the data come from, in this order:

1. ``data_dir`` (or ``data_dir/MNIST/raw``, a torchvision root, or ``data_dir/raw``)
   holds raw IDX files, ``{train,t10k}-images-idx3-ubyte`` and ``-labels-idx1-ubyte``,
   each possibly ``.gz`` (decompressed in memory, nothing is written): they are read
   by :func:`read_idx`, which checks each file and names the file and the problem
   (empty, truncated, not gzip, not IDX, not unsigned bytes, images that are not
   28x28, labels that are not digits, image and label counts that differ).
   When only the 10,000-image test split is there, it is split at random, with a fixed seed
   (:data:`SPLIT_SEED`, independent of any experiment seed), into 80 % (8,000 images)
   for training and 20 % (2,000) held out for testing (:func:`split_test_only`);
   ``info["split"]`` says so. Not first/last: the first 5,000 test digits (Census
   Bureau employees) are cleaner than the last 5,000 (high-school students), and
   a first-8,000 / last-2,000 split would hold out only the harder half, ~16 nats
   per digit apart under the pixel-marginal model.
2. Otherwise, when downloads are allowed, ``torchvision.datasets.MNIST(data_dir,
   download=True)`` fetches the full data set into ``data_dir``. Downloads are off
   with ``download=False`` or the environment variable ``PYRO_VI_NO_DOWNLOAD=1``.

Nothing is ever written into the repository: the default data directory is
``$PYRO_VI_DATA_DIR`` or ``~/.cache/pyro_vi/data``.

References

1. Y. LeCun, C. Cortes, C. J. C. Burges, *The MNIST database of handwritten digits*.
2. Y. Burda, R. Grosse, R. Salakhutdinov, *Importance Weighted Autoencoders*,
   ICLR 2016, section 5.
"""

import gzip
import math
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import Dict, Optional

import numpy as np
import torch
from torchvision.datasets import MNIST

from pyro_vi.validation import boolean, instance, integer

__all__ = [
    "NO_DOWNLOAD_ENV",
    "MnistData",
    "MnistNotFoundError",
    "SPLIT_SEED",
    "TRAIN_FRACTION_OF_TEST_SPLIT",
    "binarize",
    "default_data_dir",
    "load_mnist",
    "read_idx",
    "split_test_only",
    "write_idx",
]

NO_DOWNLOAD_ENV = "PYRO_VI_NO_DOWNLOAD"
TRAIN_FRACTION_OF_TEST_SPLIT = 0.8
SPLIT_SEED = 0
_IDX_NAMES = {
    ("train", "images"): "train-images-idx3-ubyte",
    ("train", "labels"): "train-labels-idx1-ubyte",
    ("test", "images"): "t10k-images-idx3-ubyte",
    ("test", "labels"): "t10k-labels-idx1-ubyte",
}


class MnistNotFoundError(FileNotFoundError):
    """Raised by :func:`load_mnist` when there are no MNIST files and no download."""


@dataclass
class MnistData:
    """
    :ivar torch.Tensor train: training images, float32 ``(N_train, 784)`` in [0, 1].
    :ivar torch.Tensor test: held-out test images, float32 ``(N_test, 784)`` in [0, 1].
    :ivar dict info: where the images came from and how they were split.
    :ivar torch.Tensor train_labels: the digits of ``train``, int64 ``(N_train,)``;
        ``None`` when the label files are missing.
    :ivar torch.Tensor test_labels: the digits of ``test``, as ``train_labels``.
    """

    train: torch.Tensor
    test: torch.Tensor
    info: Dict[str, object] = field(default_factory=dict)
    train_labels: Optional[torch.Tensor] = None
    test_labels: Optional[torch.Tensor] = None


def default_data_dir() -> str:
    """``$PYRO_VI_DATA_DIR``, else ``~/.cache/pyro_vi/data`` (outside the repository)."""
    return os.environ.get("PYRO_VI_DATA_DIR", os.path.join(os.path.expanduser("~"), ".cache", "pyro_vi", "data"))


def _downloads_forbidden() -> bool:
    return os.environ.get(NO_DOWNLOAD_ENV, "").strip().lower() not in ("", "0", "false", "no")


def _find_idx(data_dir: str, split: str, kind: str) -> Optional[str]:
    name = _IDX_NAMES[split, kind]
    for folder in (data_dir, os.path.join(data_dir, "MNIST", "raw"), os.path.join(data_dir, "raw")):
        for candidate in (name, name + ".gz"):
            path = os.path.join(folder, candidate)
            if os.path.isfile(path):
                return path
    return None


_IDX_TYPES = {
    0x08: "unsigned byte",
    0x09: "signed byte",
    0x0B: "int16",
    0x0C: "int32",
    0x0D: "float32",
    0x0E: "float64",
}
_IMAGE_SIZE = (28, 28)


def _file_bytes(path: str) -> bytes:
    """The bytes of ``path``, decompressed when it ends in ``.gz``."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except gzip.BadGzipFile as error:
        raise ValueError(f"{path} is not a gzip file although its name ends in .gz ({error})") from None
    except EOFError:
        raise ValueError(f"{path} is a truncated gzip file: it ends before its compressed data does") from None
    except zlib.error as error:
        raise ValueError(f"{path} is a corrupt gzip file ({error})") from None
    except OSError as error:
        raise ValueError(f"{path} cannot be read: {error}") from None


def read_idx(path: str, kind: str) -> torch.Tensor:
    """
    The uint8 array of an MNIST IDX file (``.gz`` compressed or not): images
    ``(N, 28, 28)`` when ``kind == "images"``, labels ``(N,)`` when
    ``kind == "labels"``.

    :raises ValueError: naming ``path`` and the problem: an empty or truncated
        file (or gzip stream), a ``.gz`` that is not gzip, a magic number that is
        not IDX, data that are not unsigned bytes, the wrong number of dimensions,
        images that are not 28x28, labels that are not digits 0-9, or bytes left
        over after the data.
    """
    if kind not in ("images", "labels"):
        raise ValueError(f"kind must be 'images' or 'labels', got {kind!r}")
    ndim = 3 if kind == "images" else 1
    data = _file_bytes(path)
    if not data:
        raise ValueError(f"{path} is empty (0 bytes); expected MNIST {kind} in the IDX format")
    if len(data) < 4:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, shorter than the 4-byte IDX magic number")
    if data[:2] != b"\0\0" or data[2] not in _IDX_TYPES:
        raise ValueError(
            f"{path} is not an IDX file: it starts with 0x{data[:4].hex()}, the IDX magic number of MNIST {kind} is "
            f"0x{0x0800 + ndim:08x}"
        )
    if data[2] != 0x08:
        raise ValueError(
            f"{path} holds IDX data of type {_IDX_TYPES[data[2]]} (0x{data[2]:02x}); MNIST {kind} are unsigned "
            "bytes (0x08)"
        )
    if data[3] != ndim:
        raise ValueError(
            "{} holds a {}-dimensional IDX array; MNIST {} have {} ({})".format(
                path, data[3], kind, ndim, "count, rows, columns" if ndim == 3 else "count"
            )
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path} is truncated: {len(data)} bytes, shorter than its {header}-byte IDX header")
    dims = struct.unpack(">" + "I" * ndim, data[4:header])
    expected, found = math.prod(dims), len(data) - header
    if found < expected:
        raise ValueError(
            f"{path} is truncated: its header promises {dims[0]} {kind} ({expected} bytes of data), the file "
            f"holds {found} "
            "bytes"
        )
    if found > expected:
        raise ValueError(
            f"{path} has {found - expected} bytes after the {dims[0]} {kind} its header promises; the file is "
            "not an MNIST IDX "
            "file or its header is wrong"
        )
    if kind == "images" and tuple(dims[1:]) != _IMAGE_SIZE:
        raise ValueError(
            f"{path} holds {dims[1]}x{dims[2]} images; MNIST images are 28x28 (load_mnist returns (N, 784))"
        )
    array = torch.from_numpy(np.frombuffer(data, dtype=np.uint8, offset=header).copy()).reshape(dims)
    if kind == "labels" and array.numel() and int(array.max()) > 9:
        raise ValueError(f"{path} holds the label {int(array.max())}; MNIST labels are digits 0-9")
    return array


def _as_float(images: torch.Tensor) -> torch.Tensor:
    return images.reshape(images.shape[0], -1).to(torch.float32) / 255.0


def _read_split(data_dir: str, split: str):
    """``(images, labels, images_path)``; ``labels`` (int64) is ``None`` without a label file."""
    images_path = _find_idx(data_dir, split, "images")
    if images_path is None:
        return None, None, None
    images = read_idx(images_path, "images")
    labels_path = _find_idx(data_dir, split, "labels")
    labels = None
    if labels_path is not None:
        labels = read_idx(labels_path, "labels").long()
        if labels.shape[0] != images.shape[0]:
            raise ValueError(
                f"{images_path} has {images.shape[0]} images but {labels_path} has {labels.shape[0]} labels"
            )
    return images, labels, images_path


def _from_torchvision(root: str, download: bool):
    train = MNIST(root, train=True, download=download)
    test = MNIST(root, train=False, download=download)
    info = {
        "source": f"torchvision.datasets.MNIST(root={root!r})",
        "split": "official: 60,000 training and 10,000 test images",
        "only_test_split": False,
    }
    return _as_float(train.data), _as_float(test.data), info, train.targets.long(), test.targets.long()


def split_test_only(num_images: int):
    """``(train_indices, test_indices)`` of the fixed random 80/20 split used when
    only the MNIST test split is available."""
    num_images = integer("num_images", num_images, minimum=2)
    num_train = int(round(TRAIN_FRACTION_OF_TEST_SPLIT * num_images))
    if num_train < 1 or num_train >= num_images:
        raise ValueError(f"{num_images} images are too few to split into train and test")
    order = torch.randperm(num_images, generator=torch.Generator().manual_seed(SPLIT_SEED))
    return order[:num_train], order[num_train:]


def load_mnist(data_dir: Optional[str] = None, download: bool = True) -> MnistData:
    """
    Loads MNIST with pixel intensities in [0, 1] (see the module docstring for
    where the data are looked for).

    :param str data_dir: a torchvision root or a directory with the raw IDX files;
        ``None`` for :func:`default_data_dir`.
    :param bool download: download the data set into ``data_dir`` when it is not
        there (ignored when ``$PYRO_VI_NO_DOWNLOAD`` is set).
    :rtype: MnistData
    :raises MnistNotFoundError: when the files are not there and cannot be
        downloaded, with what to do.
    :raises ValueError: for a bad argument, or a malformed file, naming the file
        and the problem (see :func:`read_idx`).
    """
    if data_dir is not None and not isinstance(data_dir, (str, os.PathLike)):
        raise ValueError(f"data_dir must be a directory path (str or pathlib.Path) or None, got {data_dir!r:.60}")
    download = boolean("download", download)
    data_dir = os.path.abspath(os.path.expanduser(os.fspath(data_dir) if data_dir is not None else default_data_dir()))
    if os.path.exists(data_dir) and not os.path.isdir(data_dir):
        raise ValueError(
            f"data_dir {data_dir} is a file, not a directory; pass the directory that holds the MNIST IDX files"
        )
    train_u8, train_labels, train_path = _read_split(data_dir, "train")
    test_u8, test_labels, test_path = _read_split(data_dir, "test")
    if test_u8 is not None:
        test = _as_float(test_u8)
        if train_u8 is not None:
            train = _as_float(train_u8)
            info = {
                "source": f"IDX files {train_path} and {test_path}",
                "split": "official training and test splits",
                "only_test_split": False,
            }
        else:
            train_idx, test_idx = split_test_only(len(test))
            train, test = test[train_idx], test[test_idx]
            if test_labels is not None:
                train_labels, test_labels = test_labels[train_idx], test_labels[test_idx]
            info = {
                "source": f"IDX file {test_path}",
                "split": (
                    f"only the {len(train) + len(test):,}-image MNIST test split was found: a fixed random "
                    f"{len(train):,} of "
                    f"its images (torch.randperm, seed {SPLIT_SEED}) are used for training and the other "
                    f"{len(test):,} as the held-out test set; test numbers are not comparable with the "
                    "published 60,000/10,000 ones"
                ),
                "only_test_split": True,
            }
        info = dict(info, data_dir=data_dir, num_train=len(train), num_test=len(test))
        return MnistData(train, test, info, train_labels, test_labels)
    if train_u8 is not None:
        raise MnistNotFoundError(
            "{} holds the MNIST training images but no test images ({}[.gz])".format(
                data_dir, _IDX_NAMES["test", "images"]
            )
        )
    forbidden = _downloads_forbidden()
    if not download or forbidden:
        why = f"${NO_DOWNLOAD_ENV}={os.environ.get(NO_DOWNLOAD_ENV)}" if forbidden else "downloads are off"
        raise MnistNotFoundError(
            f"MNIST not found in {data_dir} and not downloaded ({why}): pass --data-dir with the IDX "
            "files (t10k-images-idx3-ubyte[.gz], optionally the train-* files) or a "
            "torchvision root, or allow the download"
        )
    try:
        train, test, info, train_labels, test_labels = _from_torchvision(data_dir, download=True)
    except Exception as error:  # URLError, RuntimeError, OSError (read-only dir), ...
        raise MnistNotFoundError(
            f"MNIST not found in {data_dir} and could not be downloaded ({type(error).__name__}: "
            f"{_one_line(error)}): pass --data-dir "
            "with the IDX files (t10k-images-idx3-ubyte[.gz], optionally the train-* "
            "files) or a torchvision root, or download it on a machine with internet "
            "access"
        ) from error
    info = dict(info, data_dir=data_dir, num_train=len(train), num_test=len(test))
    return MnistData(train, test, info, train_labels, test_labels)


def _one_line(error, limit=300):
    text = " ".join(line.strip() for line in str(error).splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def binarize(images: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Dynamic binarization: each pixel ~ Bernoulli(its intensity in [0, 1]).

    :raises ValueError: unless ``images`` is a floating tensor with values in [0, 1]
        (scale 0-255 images by 1/255 first) and ``generator`` a torch.Generator or None.
    """
    if not isinstance(images, torch.Tensor) or not images.is_floating_point():
        raise ValueError(
            "images must be a floating-point tensor of intensities in [0, 1], got {}{}; scale "
            "0-255 images with images.float() / 255".format(
                type(images).__name__, f" of dtype {images.dtype}" if isinstance(images, torch.Tensor) else ""
            )
        )
    if images.numel() and not bool(((images >= 0) & (images <= 1)).all()):
        raise ValueError(
            f"images must have intensities in [0, 1], got values in [{images.min().item():.6g}, "
            f"{images.max().item():.6g}]; scale 0-255 "
            "images by 1/255"
        )
    instance("generator", generator, torch.Generator, "a torch.Generator", optional=True)
    return torch.bernoulli(images, generator=generator)


def write_idx(path: str, array) -> None:
    """
    Writes a uint8 array in the IDX format (``.gz`` compressed when ``path`` ends in
    ``.gz``): the big-endian magic ``0x0000 08 ndim``, the dimensions, the bytes.
    Used to build tiny fake MNIST directories for tests.
    """
    array = np.ascontiguousarray(np.asarray(array, dtype=np.uint8))
    header = struct.pack(">I", 0x0800 + array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + array.tobytes())
