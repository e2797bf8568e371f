"""Bad inputs to the VAE's model, guide and config and to MNIST's loading:
each is refused with a ``ValueError`` (or a documented subclass) whose message
names the argument or file and the value (issue 10; the runner and the case
format are in tests/refusals.py)."""

import gzip
import struct

import numpy as np
import pytest
import torch

from guides.vae import Encoder
from guides.vae import guide as vae_guide
from models.mnist import MnistNotFoundError, binarize, load_mnist, read_idx, split_test_only
from models.vae import Decoder, VAEConfig
from models.vae import model as vae_model
from tests.refusals import assert_refused, case_ids, in_tmp, refusals


def _vae(x_of, config=VAEConfig(hidden_dims=(8,), latent_dim=2), which="model"):
    def call(tmp):
        x = x_of(torch.bernoulli(torch.full((4, config.data_dim), 0.3)))
        if which == "model":
            return vae_model(x, Decoder(config, 0.3))
        return vae_guide(x, Encoder(config))

    return call


def _idx(array, type_code=0x08):
    array = np.ascontiguousarray(array)
    return bytes([0, 0, type_code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()


IMAGES = _idx(np.zeros((3, 28, 28), np.uint8))


LABELS = _idx(np.array([1, 2, 3], np.uint8))


def _mnist(images=IMAGES, labels=LABELS, images_name="t10k-images-idx3-ubyte"):
    def call(tmp):
        (tmp / images_name).write_bytes(images)
        if labels is not None:
            (tmp / "t10k-labels-idx1-ubyte").write_bytes(labels)
        return load_mnist(str(tmp), download=False)

    return call


CASES = [
    # --- the VAE
    *refusals(
        "models.vae.model",
        (
            "uint8 images",
            _vae(lambda x: (x * 255).to(torch.uint8)),
            r"x has dtype torch\.uint8; .*binarize\(x\.float\(\) / 255\)",
        ),
        ("0-255 float pixels", _vae(lambda x: x * 255), r"x has pixel values in \[0, 255\], outside \[0, 1\]"),
        ("grey pixels", _vae(lambda x: x * 0.5), r"needs binary pixels; binarize first"),
    ),
    *refusals(
        "guides.vae.guide",
        (
            "float64 images for float32 nets",
            _vae(lambda x: x.double(), which="guide"),
            r"x has dtype torch\.float64 but the encoder's weights are torch\.float32",
        ),
        (
            "(B, 28, 28) images",
            _vae(lambda x: x.reshape(4, 28, 28), config=VAEConfig(), which="guide"),
            r"x must have shape \(batch, 784\), got \(4, 28, 28\): flatten",
        ),
    ),
    *refusals(
        "VAEConfig",
        (
            "float latent_dim",
            lambda tmp: VAEConfig(latent_dim=2.5),
            r"VAEConfig\.latent_dim must be an integer >= 1, got 2\.5",
        ),
        (
            "hidden_dims='200'",
            lambda tmp: VAEConfig(hidden_dims="200"),
            r"VAEConfig\.hidden_dims must be a tuple of layer widths .*got '200' \(str\)",
        ),
        (
            "hidden_dims=200",
            lambda tmp: VAEConfig(hidden_dims=200),
            r"VAEConfig\.hidden_dims must be a tuple of layer widths .*got 200 \(int\)",
        ),
    ),
    *refusals(
        "Decoder",
        (
            "config a dict",
            lambda tmp: Decoder({"latent_dim": 2}),
            r"config must be a models\.vae\.VAEConfig .*got \{'latent_dim': 2\} \(dict\)",
        ),
    ),
    *refusals(
        "binarize",
        (
            "uint8 images",
            lambda tmp: binarize(torch.zeros(2, 784, dtype=torch.uint8)),
            r"images must be a floating-point tensor of intensities in \[0, 1\], got Tensor of dtype torch\.uint8",
        ),
        (
            "0-255 intensities",
            lambda tmp: binarize(torch.full((2, 3), 255.0)),
            r"images must have intensities in \[0, 1\], got values in \[255, 255\]",
        ),
    ),
    *refusals(
        "split_test_only",
        ("float count", lambda tmp: split_test_only(10.5), r"num_images must be an integer >= 2, got 10\.5"),
    ),
    # --- load_mnist
    *refusals(
        "load_mnist",
        ("empty images file", _mnist(images=b""), in_tmp("t10k-images-idx3-ubyte") + r" is empty \(0 bytes\)"),
        (
            "truncated images",
            _mnist(images=IMAGES[:-100]),
            in_tmp("t10k-images-idx3-ubyte") + r" is truncated: its header promises 3 images",
        ),
        (
            "a .gz that is not gzip",
            _mnist(images_name="t10k-images-idx3-ubyte.gz"),
            in_tmp("t10k-images-idx3-ubyte.gz") + r" is not a gzip file",
        ),
        (
            "truncated gzip",
            _mnist(images=gzip.compress(IMAGES)[:-30], images_name="t10k-images-idx3-ubyte.gz"),
            in_tmp("t10k-images-idx3-ubyte.gz") + r" is a truncated gzip file",
        ),
        (
            "wrong magic",
            _mnist(images=b"PK\x03\x04" + IMAGES[4:]),
            in_tmp("t10k-images-idx3-ubyte") + r" is not an IDX file: it starts with 0x504b0304",
        ),
        (
            "float32 pixels",
            _mnist(images=_idx(np.zeros((3, 28, 28), np.float32), 0x0D)),
            in_tmp("t10k-images-idx3-ubyte") + r" holds IDX data of type float32 \(0x0d\)",
        ),
        (
            "10x10 images",
            _mnist(images=_idx(np.zeros((3, 10, 10), np.uint8))),
            in_tmp("t10k-images-idx3-ubyte") + r" holds 10x10 images; MNIST images are 28x28",
        ),
        (
            "truncated labels",
            _mnist(labels=LABELS[:-1]),
            in_tmp("t10k-labels-idx1-ubyte") + r" is truncated: its header promises 3 labels",
        ),
        (
            "image and label counts differ",
            _mnist(labels=_idx(np.array([1, 2], np.uint8))),
            in_tmp("t10k-images-idx3-ubyte")
            + r" has 3 images but "
            + in_tmp("t10k-labels-idx1-ubyte")
            + r" has 2 labels",
        ),
    ),
    *refusals(
        "load_mnist",
        (
            "no files and no download",
            lambda tmp: load_mnist(str(tmp / "nowhere"), download=False),
            r"MNIST not found in " + in_tmp("nowhere") + r" and not downloaded",
        ),
        error=MnistNotFoundError,
    ),
    *refusals(
        "load_mnist",
        (
            "string download",
            lambda tmp: load_mnist(str(tmp), download="no"),
            r"download must be True or False, got 'no'",
        ),
    ),
    *refusals(
        "read_idx",
        (
            "unknown kind",
            lambda tmp: read_idx(str(tmp / "f"), "pixels"),
            r"kind must be 'images' or 'labels', got 'pixels'",
        ),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=case_ids(CASES))
def test_bad_input_is_refused_naming_the_problem(case, tmp_path):
    assert_refused(case, tmp_path)
