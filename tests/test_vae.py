"""The VAE/IWAE model, guide and MNIST loading (the vae_mnist study itself is
tested in tests/test_vae_mnist.py).

:func:`write_tiny_mnist` writes a fake MNIST directory (IDX files) that the real
torchvision loading path reads; the experiment tests use it for ``--data-dir``.
"""

import functools
import math
import os

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO

from guides.vae import Encoder, guide
from models.mnist import NO_DOWNLOAD_ENV, MnistNotFoundError, binarize, load_mnist, split_test_only
from models.mnist import write_idx
from models.vae import Decoder, VAEConfig, check_binary, model, output_bias
from pyro_vi import ImportanceWeightedELBO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = VAEConfig(hidden_dims=(8,), latent_dim=2)

def write_tiny_mnist(directory, num_images=40, seed=0, gz=True, train=False):
    """Writes ``num_images`` random 28x28 uint8 images with labels as MNIST IDX
    files (``t10k-*``, and ``train-*`` with ``train=True``) into ``directory``;
    returns ``str(directory)``."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for prefix in ("t10k", "train") if train else ("t10k",):
        images = (rng.random((num_images, 28, 28)) ** 3 * 255).astype(np.uint8)
        write_idx(os.path.join(directory, prefix + "-images-idx3-ubyte" + suffix), images)
        write_idx(os.path.join(directory, prefix + "-labels-idx1-ubyte" + suffix),
                  rng.integers(0, 10, num_images))
    return str(directory)


@pytest.fixture(autouse=True)
def fresh():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


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
        Trace_ELBO().loss(functools.partial(model, decoder=decoder),
                          functools.partial(guide, encoder=encoder), x)
    check_binary(binarize(x))


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
    assert data.info["source"].startswith("torchvision.datasets.MNIST")
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


def test_dynamic_binarization_is_seeded():
    x = torch.rand(5, 784)
    a = binarize(x, torch.Generator().manual_seed(3))
    b = binarize(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and set(a.unique().tolist()) <= {0.0, 1.0}
