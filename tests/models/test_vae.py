"""The VAE/IWAE model, guide and MNIST loading (the vae_mnist study itself is
tested in tests/experiments/test_vae_mnist.py).

:func:`tests.helpers.write_tiny_mnist` writes the fake MNIST directory (IDX
files) that the real torchvision loading path reads.
"""

import functools
import gzip
import math
import os
import re
import struct

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO

from guides.vae import Encoder, guide
from models.mnist import NO_DOWNLOAD_ENV, MnistNotFoundError, binarize, load_mnist, split_test_only
from models.vae import Decoder, VAEConfig, check_binary, check_images, model, output_bias
from pyro_vi import ImportanceWeightedELBO
from tests.helpers import write_tiny_mnist

TINY = VAEConfig(hidden_dims=(8,), latent_dim=2)

# ----------------------------------------------------------------------------
# model and guide


def test_decoder_output_bias_is_logit_of_mean_pixel():
    mean = torch.linspace(0.05, 0.9, 784)
    decoder = Decoder(VAEConfig(), mean_pixel=mean)
    assert decoder.net[-1].bias.shape == (784,)
    torch.testing.assert_close(decoder.net[-1].bias.detach(), torch.logit(mean))
    scalar = Decoder(TINY, mean_pixel=0.13)
    torch.testing.assert_close(scalar.net[-1].bias.detach(), torch.full((784,), math.log(0.13 / 0.87)))
    # always-0 border pixels: clamped, finite
    assert torch.isfinite(output_bias(torch.zeros(784), 784)).all()
    with pytest.raises(ValueError, match="mean_pixel"):
        Decoder(TINY, mean_pixel=torch.full((10,), 0.5))


def test_burda_architecture():
    decoder, encoder = Decoder(), Encoder()
    sizes = lambda net: [m.weight.shape[::-1] for m in net if isinstance(m, torch.nn.Linear)]  # noqa: E731
    assert sizes(decoder.net) == [(50, 200), (200, 200), (200, 784)]
    assert sizes(encoder.net) == [(784, 200), (200, 200), (200, 100)]
    assert sum(isinstance(m, torch.nn.Tanh) for m in decoder.net) == 2
    loc, scale = encoder(torch.zeros(3, 784))
    assert loc.shape == scale.shape == (3, 50) and (scale > 0).all()


def test_non_binary_pixels_are_refused():
    x = torch.rand(4, 784)
    decoder, encoder = Decoder(TINY, 0.3), Encoder(TINY)
    with pytest.raises(ValueError, match="binarize first"):
        check_binary(x)
    with pytest.raises(ValueError, match="binary pixels"):
        model(x, decoder)
    with pytest.raises(ValueError, match="binary pixels"):
        Trace_ELBO().loss(functools.partial(model, decoder=decoder), functools.partial(guide, encoder=encoder), x)
    check_binary(binarize(x))


@pytest.mark.parametrize(
    "images, match",
    [
        (
            lambda x: (x * 255).to(torch.uint8),
            r"x has dtype torch\.uint8; .*raw 0-255 pixel bytes\?\): pass "
            r"binarize\(x\.float\(\) / 255\)",
        ),
        (
            lambda x: x.double(),
            r"x has dtype torch\.float64 but the (encoder|decoder)'s weights are torch\.float32: "
            r"pass x\.to\(torch\.float32\)",
        ),
        (lambda x: x.reshape(len(x), 28, 28), r"x must have shape \(batch, 784\), got \(4, 28, 28\): flatten"),
        (lambda x: x[:, :100], r"x must have shape \(batch, 784\), got \(4, 100\)"),
        (lambda x: x * 255, r"pixel values in \[0, 255\], outside \[0, 1\].*scale 0-255 images by 1/255"),
        (lambda x: x - 1, r"pixel values in \[-1, 0\], outside \[0, 1\]"),
        (lambda x: torch.where(x > 0, torch.nan, x), r"x contains NaN pixels"),
        (lambda x: x.bool(), r"x has dtype torch\.bool; .*pass x\.float\(\)"),
        (lambda x: x.numpy(), r"x must be a tensor of binary pixels of shape \(batch, 784\), got ndarray"),
    ],
)
def test_bad_images_are_refused_before_the_networks_run(images, match, monkeypatch):
    config = VAEConfig(hidden_dims=(8,), latent_dim=2)
    decoder, encoder = Decoder(config, 0.3), Encoder(config)
    ran = []
    for net in (decoder, encoder):
        monkeypatch.setattr(net.net, "forward", lambda *a: ran.append(a))
    x = images(binarize(torch.rand(4, 784), torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError, match=match):
        model(x, decoder)
    with pytest.raises(ValueError, match=match):
        guide(x, encoder)
    with pytest.raises(ValueError, match=match):
        Trace_ELBO().loss(functools.partial(model, decoder=decoder), functools.partial(guide, encoder=encoder), x)
    assert ran == [] and len(pyro.get_param_store()) == 0


def test_float64_networks_take_float64_images():
    config = VAEConfig(data_dim=6, hidden_dims=(4,), latent_dim=2)
    decoder, encoder = Decoder(config, 0.3).double(), Encoder(config).double()
    x = torch.bernoulli(torch.full((3, 6), 0.5, dtype=torch.float64))
    check_images(x, config, encoder)
    loss = Trace_ELBO().loss(functools.partial(model, decoder=decoder), functools.partial(guide, encoder=encoder), x)
    assert math.isfinite(loss)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"latent_dim": 2.5}, r"VAEConfig\.latent_dim must be an integer >= 1, got 2\.5 \(float\)"),
        ({"latent_dim": 0}, r"VAEConfig\.latent_dim must be an integer >= 1, got 0"),
        ({"data_dim": "784"}, r"VAEConfig\.data_dim must be an integer >= 1, got '784' \(str\)"),
        ({"hidden_dims": "200"}, r"VAEConfig\.hidden_dims must be a tuple of layer widths .* got '200' \(str\)"),
        ({"hidden_dims": 200}, r"VAEConfig\.hidden_dims must be a tuple of layer widths .* got 200 \(int\)"),
        ({"hidden_dims": (200, 0)}, r"VAEConfig\.hidden_dims\[1\] must be an integer >= 1, got 0"),
        ({"hidden_dims": (200.5,)}, r"VAEConfig\.hidden_dims\[0\] must be an integer >= 1, got 200\.5"),
        ({"hidden_dims": (True,)}, r"VAEConfig\.hidden_dims\[0\] must be an integer >= 1, got True \(bool\)"),
    ],
)
def test_bad_vae_config_is_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        VAEConfig(**kwargs)


def test_vae_config_takes_numpy_integers_and_lists():
    config = VAEConfig(data_dim=np.int64(6), hidden_dims=[np.int32(4), 3], latent_dim=np.int64(2))
    assert config == VAEConfig(data_dim=6, hidden_dims=(4, 3), latent_dim=2)
    assert type(config.data_dim) is int and all(type(h) is int for h in config.hidden_dims)


def test_model_and_guide_in_a_vectorized_particle_plate():
    x = binarize(torch.rand(6, 784))
    decoder, encoder = Decoder(TINY, 0.3), Encoder(TINY)
    model_fn = functools.partial(model, decoder=decoder)
    guide_fn = functools.partial(guide, encoder=encoder)
    with pyro.plate("particles", 4, dim=-2):
        guide_trace = poutine.trace(guide_fn).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(x)
    assert model_trace.nodes["z"]["value"].shape == (4, 6, 2)
    model_trace.compute_log_prob()
    assert model_trace.nodes["x"]["log_prob"].shape == (4, 6)
    elbo = ImportanceWeightedELBO(num_particles=4, vectorize_particles=True, max_plate_nesting=1)
    loss = elbo.loss(model_fn, guide_fn, x)
    assert math.isfinite(loss)
    assert set(pyro.get_param_store()) >= {"decoder$$$net.0.weight", "encoder$$$net.0.weight"}


@pytest.mark.parametrize("make", [Trace_ELBO, ImportanceWeightedELBO], ids=["Trace_ELBO", "IWAE"])
def test_a_share_of_a_batch_stands_for_the_batch(make):
    """A process's share of a batch under torchrun: with ``size`` twice its
    rows, the objective is twice the share's, the importance-weighted bound
    too (each point's bound scaled, not its weights tempered as
    ``poutine.scale`` would; the estimate differs by several nats here)."""
    x = binarize(torch.rand(6, 784), torch.Generator().manual_seed(0))
    decoder, encoder = Decoder(TINY, 0.3), Encoder(TINY)
    model_fn = functools.partial(model, decoder=decoder)
    guide_fn = functools.partial(guide, encoder=encoder)
    elbo = make(num_particles=5, vectorize_particles=True, max_plate_nesting=1)
    losses = {}
    for name, (mdl, gd) in {
        "share": (model_fn, guide_fn),
        "batch": (functools.partial(model_fn, size=12), functools.partial(guide_fn, size=12)),
        "scaled": (poutine.scale(model_fn, scale=2.0), poutine.scale(guide_fn, scale=2.0)),
    }.items():
        pyro.set_rng_seed(0)
        losses[name] = elbo.loss(mdl, gd, x)
    assert losses["batch"] == pytest.approx(2 * losses["share"], rel=1e-6)
    if make is ImportanceWeightedELBO:
        assert abs(losses["scaled"] - 2 * losses["share"]) > 1.0
    with pytest.raises(ValueError, match="size must be an integer >= 6"):
        model_fn(x, size=5)


# ----------------------------------------------------------------------------
# data


def test_load_test_split_only_is_split_and_said(tmp_path):
    write_tiny_mnist(tmp_path, num_images=40)
    data = load_mnist(str(tmp_path), download=False)
    assert data.train.shape == (32, 784) and data.test.shape == (8, 784)
    assert data.info["only_test_split"] and "random 32" in data.info["split"]
    assert data.train.dtype == torch.float32 and 0 <= data.train.min() and data.train.max() <= 1
    # same pixels as the IDX bytes / 255
    from torchvision.datasets.mnist import read_image_file

    write_tiny_mnist(tmp_path / "plain", num_images=40, gz=False)
    raw = read_image_file(str(tmp_path / "plain" / "t10k-images-idx3-ubyte"))
    train_idx, test_idx = split_test_only(40)
    assert sorted(torch.cat([train_idx, test_idx]).tolist()) == list(range(40))
    torch.testing.assert_close(data.test, raw[test_idx].reshape(8, -1).float() / 255)
    torch.testing.assert_close(data.train, raw[train_idx].reshape(32, -1).float() / 255)
    # nothing was written next to the data
    assert sorted(os.listdir(tmp_path)) == ["plain", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def test_load_torchvision_root(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_tiny_mnist(raw, num_images=12, gz=False, train=True)
    data = load_mnist(str(tmp_path), download=False)
    assert data.info["source"] == "IDX files {} and {}".format(
        raw / "train-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte"
    )
    assert not data.info["only_test_split"]
    assert data.train.shape == (12, 784) and data.test.shape == (12, 784)


def test_missing_data_without_download_is_a_clear_error(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere")
    with pytest.raises(MnistNotFoundError, match="MNIST not found in .*pass --data-dir"):
        load_mnist(missing, download=False)
    monkeypatch.setenv(NO_DOWNLOAD_ENV, "1")
    with pytest.raises(MnistNotFoundError, match=NO_DOWNLOAD_ENV):
        load_mnist(missing, download=True)
    assert not os.path.exists(missing)


def _idx_bytes(array, type_code=0x08):
    array = np.ascontiguousarray(array)
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape)
    return header + array.tobytes()


_IMAGES = np.zeros((3, 28, 28), dtype=np.uint8)
_LABELS = np.array([1, 2, 3], dtype=np.uint8)


def _malformed(kind):
    """(file name, bytes) of a broken MNIST file, and the message that must name the problem."""
    images, labels = _idx_bytes(_IMAGES), _idx_bytes(_LABELS)
    return {
        "empty": ("t10k-images-idx3-ubyte", b"", r"is empty \(0 bytes\)"),
        "shorter than magic": ("t10k-images-idx3-ubyte", b"\0\0", r"is truncated: 2 bytes, shorter than the 4-byte"),
        "truncated header": (
            "t10k-images-idx3-ubyte",
            images[:10],
            r"is truncated: 10 bytes, shorter than its 16-byte",
        ),
        "truncated images": (
            "t10k-images-idx3-ubyte",
            images[:-100],
            r"is truncated: its header promises 3 images \(2352 bytes of data\), the file holds 2252",
        ),
        "trailing bytes": ("t10k-images-idx3-ubyte", images + b"\0" * 7, r"has 7 bytes after the 3 images"),
        "not gzip": ("t10k-images-idx3-ubyte.gz", images, r"is not a gzip file although its name ends in \.gz"),
        "truncated gzip": ("t10k-images-idx3-ubyte.gz", gzip.compress(images)[:-30], r"is a truncated gzip file"),
        "wrong magic": (
            "t10k-images-idx3-ubyte",
            b"\x1f\x8b" + images[2:],
            r"is not an IDX file: it starts with "
            r"0x1f8b0803, the IDX magic number of MNIST "
            r"images is 0x00000803",
        ),
        "float32 images": (
            "t10k-images-idx3-ubyte",
            _idx_bytes(_IMAGES.astype(np.float32), 0x0D),
            r"holds IDX data of type float32 \(0x0d\); MNIST images are unsigned bytes",
        ),
        "labels as images": (
            "t10k-images-idx3-ubyte",
            labels,
            r"holds a 1-dimensional IDX array; MNIST images "
            r"have 3",
        ),
        "10x10 images": (
            "t10k-images-idx3-ubyte",
            _idx_bytes(np.zeros((3, 10, 10), np.uint8)),
            r"holds 10x10 images; MNIST images are 28x28",
        ),
        "truncated labels": ("t10k-labels-idx1-ubyte", labels[:-1], r"is truncated: its header promises 3 labels"),
        "empty labels": ("t10k-labels-idx1-ubyte", b"", r"is empty \(0 bytes\); expected MNIST labels"),
        "label 12": (
            "t10k-labels-idx1-ubyte",
            _idx_bytes(np.array([1, 12, 3], np.uint8)),
            r"holds the label 12; MNIST labels are digits 0-9",
        ),
        "count mismatch": (
            "t10k-labels-idx1-ubyte",
            _idx_bytes(np.array([1, 2], np.uint8)),
            r"t10k-images-idx3-ubyte has 3 images but .*t10k-labels-idx1-ubyte has 2 labels",
        ),
    }[kind]


MALFORMED = [
    "empty",
    "shorter than magic",
    "truncated header",
    "truncated images",
    "trailing bytes",
    "not gzip",
    "truncated gzip",
    "wrong magic",
    "float32 images",
    "labels as images",
    "10x10 images",
    "truncated labels",
    "empty labels",
    "label 12",
    "count mismatch",
]


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_mnist_files_are_named_with_the_problem(kind, tmp_path):
    name, content, problem = _malformed(kind)
    files = {"t10k-images-idx3-ubyte": _idx_bytes(_IMAGES), "t10k-labels-idx1-ubyte": _idx_bytes(_LABELS)}
    files = {k: v for k, v in files.items() if not name.startswith(k)}
    files[name] = content
    for file_name, data in files.items():
        (tmp_path / file_name).write_bytes(data)
    with pytest.raises(
        ValueError, match=re.escape(str(tmp_path / name)) + " " + problem if kind != "count mismatch" else problem
    ):
        load_mnist(str(tmp_path), download=False)


def test_malformed_files_in_a_torchvision_root_are_named(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_tiny_mnist(raw, num_images=4, gz=False, train=True)
    (raw / "train-labels-idx1-ubyte").write_bytes(b"")
    with pytest.raises(ValueError, match=re.escape(str(raw / "train-labels-idx1-ubyte")) + " is empty"):
        load_mnist(str(tmp_path), download=False)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"data_dir": 3}, r"data_dir must be a directory path \(str or pathlib\.Path\) or None, got 3"),
        ({"download": "no"}, r"download must be True or False, got 'no'"),
    ],
)
def test_bad_load_mnist_arguments(kwargs, match, tmp_path):
    kwargs.setdefault("data_dir", str(tmp_path))
    with pytest.raises(ValueError, match=match):
        load_mnist(**kwargs)


def test_data_dir_that_is_a_file_is_refused(tmp_path):
    path = tmp_path / "mnist.npz"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match=re.escape(str(path)) + " is a file, not a directory"):
        load_mnist(str(path), download=False)


def test_dynamic_binarization_is_seeded():
    x = torch.rand(5, 784)
    a = binarize(x, torch.Generator().manual_seed(3))
    b = binarize(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
