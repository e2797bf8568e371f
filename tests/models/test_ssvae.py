"""The semi-supervised VAE M2: its log-joint against a direct computation, the
guide's sites for labelled and unlabelled batches, every estimator of the
study on it (one step without NaN, and the sampled ones' mean gradient
against enumeration's), Kingma's objective, the balanced labelled split, the
MNIST labels and the study's batches, resume and README block (the smoke run
is in tests/experiments/test_experiments.py)."""

import functools
import json
import math

import numpy as np
import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceEnum_ELBO, config_enumerate
from pyro.poutine.util import site_is_subsample

from guides.ssvae import Classifier, Encoder, SemiSupervisedLoss, classify, guide, unlabelled_elbo
from models.mnist import load_mnist, read_idx
from models.ssvae import Decoder, SemiSupervisedBatches, SSVAEConfig, labelled_split, model
from pyro_vi import RaoBlackwellELBO, ReinforceLeaveOneOutELBO
from tests.helpers import write_tiny_mnist

TINY = SSVAEConfig(data_dim=6, num_classes=3, hidden_dim=5, latent_dim=2)
KW = dict(vectorize_particles=True, max_plate_nesting=1)


def networks(config=TINY, dtype=torch.float64):
    torch.manual_seed(0)
    decoder, encoder, classifier = Decoder(config, mean_pixel=0.3), Encoder(config), Classifier(config)
    return decoder.to(dtype), encoder.to(dtype), classifier.to(dtype)


def programs(decoder, encoder, classifier):
    return (
        functools.partial(model, decoder=decoder),
        functools.partial(guide, encoder=encoder, classifier=classifier),
    )


def images(num, config=TINY, dtype=torch.float64, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((num, config.data_dim), 0.4, dtype=dtype), generator=generator)


# ----------------------------------------------------------------------------
# model and guide


def direct_log_joint(x, y, z, decoder):
    """log p(x, y, z) per image, from the decoder's weights by hand."""
    hidden = torch.tanh(
        z @ decoder.hidden.linear.weight.T + decoder.hidden.linear.bias + decoder.hidden.label.weight[y]
    )
    logits = hidden @ decoder.out.weight.T + decoder.out.bias
    log_px = (x * logits - F.softplus(logits)).sum(-1)
    log_pz = (-0.5 * z**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    return -math.log(decoder.config.num_classes) + log_pz + log_px


@pytest.mark.parametrize("labelled", [True, False], ids=["labelled", "unlabelled"])
def test_log_joint_matches_a_direct_computation(labelled):
    decoder, encoder, classifier = networks()
    x, y, z = images(3), torch.tensor([0, 2, 1]), torch.randn(3, TINY.latent_dim, dtype=torch.float64)
    if labelled:  # y observed, z given
        trace = poutine.trace(poutine.condition(model, {"z": z})).get_trace(x, y, decoder=decoder)
        assert trace.nodes["y"]["is_observed"]
    else:  # y latent: its value given like z's
        trace = poutine.trace(poutine.condition(model, {"y": y, "z": z})).get_trace(x, decoder=decoder)
    trace.compute_log_prob()
    per_image = sum(trace.nodes[name]["log_prob"] for name in ("y", "z", "x"))
    torch.testing.assert_close(per_image, direct_log_joint(x, y, z, decoder))
    torch.testing.assert_close(trace.log_prob_sum(), direct_log_joint(x, y, z, decoder).sum())


def random_sites(trace):
    return [
        n for n, s in trace.nodes.items() if s["type"] == "sample" and not s["is_observed"] and not site_is_subsample(s)
    ]


def test_guide_samples_y_only_for_an_unlabelled_batch():
    decoder, encoder, classifier = networks()
    x, y = images(4), torch.tensor([0, 1, 2, 0])
    labelled = poutine.trace(guide).get_trace(x, y, encoder=encoder, classifier=classifier)
    assert random_sites(labelled) == ["z"]
    assert not any(name.startswith("classifier$$$") for name in labelled.nodes)
    loc, scale = encoder(x, y)
    torch.testing.assert_close(labelled.nodes["z"]["fn"].base_dist.loc, loc)
    torch.testing.assert_close(labelled.nodes["z"]["fn"].base_dist.scale, scale)

    unlabelled = poutine.trace(guide).get_trace(x, encoder=encoder, classifier=classifier)
    assert random_sites(unlabelled) == ["y", "z"]
    y_site = unlabelled.nodes["y"]
    assert y_site["fn"].batch_shape == (4,) and y_site["value"].shape == (4,)
    torch.testing.assert_close(y_site["fn"].probs, torch.softmax(classifier(x), -1))
    loc, _ = encoder(x, y_site["value"])
    torch.testing.assert_close(unlabelled.nodes["z"]["fn"].base_dist.loc, loc)
    assert [f.name for f in unlabelled.nodes["y"]["cond_indep_stack"]] == ["data"]


def test_networks_broadcast_an_enumerated_label():
    decoder, encoder, classifier = networks()
    x = images(4)
    classes = torch.arange(TINY.num_classes).unsqueeze(-1)  # (K, 1), as TraceEnum_ELBO enumerates y
    loc, scale = encoder(x, classes)
    assert loc.shape == (TINY.num_classes, 4, TINY.latent_dim)
    for k in range(TINY.num_classes):
        torch.testing.assert_close(loc[k], encoder(x, torch.full((4,), k))[0])
    assert decoder(loc, classes).shape == (TINY.num_classes, 4, TINY.data_dim)


@pytest.mark.parametrize(
    "y, message",
    [
        (torch.tensor([0.0, 1.0]), "y must be an integer tensor of labels"),
        (torch.tensor([0, 3]), "y holds labels in \\[0, 3\\]; the model has classes 0 .. 2"),
        (torch.tensor([0, 1, 2]), "y must have shape \\(2,\\)"),
    ],
)
def test_bad_labels_are_refused(y, message):
    decoder, encoder, classifier = networks()
    with pytest.raises(ValueError, match=message):
        model(images(2), y, decoder=decoder)
    with pytest.raises(ValueError, match=message):
        guide(images(2), y, encoder=encoder, classifier=classifier)


def test_held_out_elbo_agrees_with_trace_enum_elbo():
    """unlabelled_elbo (exact in y, z sampled) and Pyro's TraceEnum_ELBO
    estimate the same sum of per-image ELBOs: their means over independent
    draws agree within 4 standard errors."""
    decoder, encoder, classifier = networks()
    model_fn, guide_fn = programs(decoder, encoder, classifier)
    x, draws = images(5), 400
    elbo = TraceEnum_ELBO(max_plate_nesting=1)
    enumerated = config_enumerate(guide_fn, "parallel")
    with torch.no_grad():
        pyro_values = torch.tensor([-elbo.loss(model_fn, enumerated, x) for _ in range(draws)])
        ours = torch.stack([unlabelled_elbo(x, decoder, encoder, classifier).sum() for _ in range(draws)])
    se = math.hypot(pyro_values.std() / math.sqrt(draws), ours.std() / math.sqrt(draws))
    assert ours.std() > 0 and abs(pyro_values.mean() - ours.mean()) < 4 * se


# ----------------------------------------------------------------------------
# the estimators on the model


def study_estimators():
    return {
        "TraceEnum_ELBO": (TraceEnum_ELBO(max_plate_nesting=1), lambda g: config_enumerate(g, "parallel")),
        "RaoBlackwellELBO": (RaoBlackwellELBO(num_particles=4, pathwise=True, **KW), lambda g: g),
        "ReinforceLeaveOneOutELBO": (ReinforceLeaveOneOutELBO(num_particles=4, pathwise=True, **KW), lambda g: g),
    }


def loss_and_grads(objective, model_fn, guide_fn, *batch):
    """The loss and ``name -> gradient`` of every param the step touched."""
    with poutine.trace(param_only=True) as capture:
        loss = objective.loss_and_grads(model_fn, guide_fn, *batch)
    params = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
    grads = {name: p.grad.clone() for name, p in params.items() if p.grad is not None}
    for p in params.values():
        p.grad = None
    return loss, grads


@pytest.mark.parametrize("estimator", list(study_estimators()))
@pytest.mark.parametrize("labelled", [True, False], ids=["labelled", "unlabelled"])
def test_each_estimator_takes_a_finite_step(estimator, labelled):
    config = SSVAEConfig(hidden_dim=16, latent_dim=4)  # MNIST-sized images
    decoder, encoder, classifier = networks(config, torch.float32)
    model_fn, guide_fn = programs(decoder, encoder, classifier)
    elbo, wrap = study_estimators()[estimator]
    objective = SemiSupervisedLoss(elbo, classifier, alpha=2.0)
    batch = (images(6, config, torch.float32),) + ((torch.arange(6) % 10,) if labelled else ())
    loss, grads = loss_and_grads(objective, model_fn, wrap(guide_fn), *batch)
    assert math.isfinite(loss) and loss > 0
    networks_seen = {name.split("$$$")[0] for name in grads}
    assert networks_seen == {"decoder", "encoder", "classifier"}
    for name, grad in grads.items():
        assert torch.isfinite(grad).all(), name
    # the unlabelled ELBO (or the classification term) reaches the classifier
    assert grads["classifier$$$net.2.bias"].abs().sum() > 0


def test_sampled_estimators_are_unbiased_on_the_unlabelled_elbo():
    """The mean gradient of the classifier's output bias and the encoder's and
    decoder's label embeddings under RaoBlackwellELBO(pathwise=True) and
    ReinforceLeaveOneOutELBO(pathwise=True) against TraceEnum_ELBO's (exact in
    y, z reparameterized): within 4.5 standard errors per coordinate (9
    coordinates) over independent draws."""
    decoder, encoder, classifier = networks()
    model_fn, guide_fn = programs(decoder, encoder, classifier)
    x, draws = images(3), 300
    names = ["classifier$$$net.2.bias", "encoder$$$hidden.label.weight", "decoder$$$hidden.label.weight"]

    def mean_and_se(elbo, g):
        rows = []
        for _ in range(draws):
            _, grads = loss_and_grads(elbo, model_fn, g, x)
            rows.append(torch.cat([grads[n][:, 0] if grads[n].dim() > 1 else grads[n] for n in names]))
        rows = torch.stack(rows)
        return rows.mean(0), rows.std(0) / math.sqrt(draws)

    estimators = study_estimators()
    exact, exact_se = mean_and_se(TraceEnum_ELBO(max_plate_nesting=1), config_enumerate(guide_fn, "parallel"))
    del estimators["TraceEnum_ELBO"]
    # power: an estimator without the score of y (no classifier gradient from the ELBO) would fail
    num_classes = TINY.num_classes
    assert (exact[:num_classes].abs() / exact_se[:num_classes]).min() > 5
    for name, (elbo, _) in estimators.items():
        mean, se = mean_and_se(elbo, guide_fn)
        z = (mean - exact) / torch.sqrt(se**2 + exact_se**2)
        assert z.abs().max() < 4.5, (name, z)


def test_the_classification_term_is_alpha_times_the_cross_entropy():
    """On a labelled batch the loss is Trace_ELBO's plus alpha times the
    summed cross-entropy of q(y|x), and the classifier's gradient is exactly
    that term's (the labelled ELBO does not contain the classifier)."""
    decoder, encoder, classifier = networks()
    model_fn, guide_fn = programs(decoder, encoder, classifier)
    x, y, alpha = images(4), torch.tensor([2, 0, 1, 1]), 3.5
    objective = SemiSupervisedLoss(RaoBlackwellELBO(num_particles=4, pathwise=True, **KW), classifier, alpha)
    pyro.set_rng_seed(5)
    loss, grads = loss_and_grads(objective, model_fn, guide_fn, x, y)
    pyro.set_rng_seed(5)
    elbo_loss = Trace_ELBO(max_plate_nesting=1).loss(model_fn, guide_fn, x, y)
    cross_entropy = F.cross_entropy(classifier(x), y, reduction="sum")
    assert loss == pytest.approx(elbo_loss + alpha * cross_entropy.item(), rel=1e-12)
    expected = torch.autograd.grad(alpha * cross_entropy, list(classifier.parameters()))
    for (name, _), grad in zip(classifier.named_parameters(), expected):
        torch.testing.assert_close(grads["classifier$$$" + name], grad)


def test_semi_supervised_loss_refuses_bad_arguments():
    _, _, classifier = networks()
    with pytest.raises(ValueError, match="unlabelled_elbo must be an ELBO instance"):
        SemiSupervisedLoss(TraceEnum_ELBO, classifier, 1.0)
    with pytest.raises(ValueError, match="alpha"):
        SemiSupervisedLoss(Trace_ELBO(), classifier, -1.0)
    with pytest.raises(ValueError, match="classifier"):
        SemiSupervisedLoss(Trace_ELBO(), object(), 1.0)


# ----------------------------------------------------------------------------
# data


def test_labelled_split_is_balanced_disjoint_and_deterministic():
    labels = torch.randint(0, 10, (700,), generator=torch.Generator().manual_seed(3))
    labelled, unlabelled = labelled_split(labels, 100, seed=4)
    assert torch.bincount(labels[labelled], minlength=10).tolist() == [10] * 10
    assert torch.equal(torch.sort(torch.cat([labelled, unlabelled])).values, torch.arange(700))
    again, _ = labelled_split(labels, 100, seed=4)
    assert torch.equal(again, labelled)
    other, _ = labelled_split(labels, 100, seed=5)
    assert not torch.equal(other, labelled)
    with pytest.raises(ValueError, match="num_labelled=105 is not a multiple of num_classes=10"):
        labelled_split(labels, 105)
    with pytest.raises(ValueError, match="needs 100 images of each class, but class"):
        labelled_split(labels, 1000)


@pytest.mark.parametrize("train", [True, False], ids=["both splits", "test split only"])
def test_mnist_labels_follow_their_images(tmp_path, train):
    """Each image keeps its own label, also through the 80/20 split of a
    test-only folder."""
    folder = write_tiny_mnist(tmp_path, num_images=30, train=train)
    data = load_mnist(folder, download=False)

    def raw(prefix):
        images_ = read_idx(str(tmp_path / f"{prefix}-images-idx3-ubyte.gz"), "images").reshape(30, -1).float() / 255
        return images_, read_idx(str(tmp_path / f"{prefix}-labels-idx1-ubyte.gz"), "labels").long()

    splits = [
        (data.test, data.test_labels, raw("t10k")),
        (data.train, data.train_labels, raw("train" if train else "t10k")),
    ]
    for split_images, split_labels, (raw_images, raw_labels) in splits:
        assert split_labels.dtype == torch.int64 and split_labels.shape == (len(split_images),)
        for image, label in zip(split_images, split_labels):
            rows = (raw_images == image).all(-1).nonzero().squeeze(-1)
            assert len(rows) and raw_labels[rows].eq(label).all()


def test_study_batches_visit_every_image_once_per_epoch():
    labels = torch.arange(60) % 10
    images_ = torch.rand(60, 784)
    labelled, unlabelled = labelled_split(labels, 20, seed=0)
    batches = SemiSupervisedBatches(images_, labels, labelled, unlabelled, batch_size=5, seed=0)
    epoch = list(batches)
    assert len(epoch) == len(batches) == 12
    kinds = [len(b) for b in epoch]
    assert kinds.count(2) == 4 and kinds.count(1) == 8
    assert kinds[0] == 1 and kinds[-1] == 1  # the labelled batches are spread, not bunched at an end
    for batch in epoch:
        assert set(batch[0].unique().tolist()) <= {0.0, 1.0} and batch[0].shape == (5, 784)
    # the labels are those of the labelled images (every one used once)
    seen = torch.cat([b[1] for b in epoch if len(b) == 2])
    assert sorted(seen.tolist()) == sorted(labels[labelled].tolist())


# ----------------------------------------------------------------------------
# the study: resume and README block


def tiny_flags(folder, out, steps):
    return [
        "--data-dir",
        folder,
        "--no-download",
        "--out",
        str(out),
        "--seeds",
        "0",
        "--labelled",
        "40",
        "--batch-size",
        "10",
        "--steps",
        str(steps),
        "--eval-every",
        "4",
        "--elbo-size",
        "20",
        "--hidden-dim",
        "8",
        "--latent-dim",
        "2",
        "--estimators",
        "TraceEnum_ELBO",
        "ReinforceLeaveOneOutELBO",
    ]


def test_a_resumed_study_ends_as_an_uninterrupted_one(tmp_path):
    from experiments.ssvae import STUDY, readme_block

    folder = write_tiny_mnist(tmp_path / "mnist", num_images=200, train=True)
    whole = STUDY.main(tiny_flags(folder, tmp_path / "whole", 10))
    STUDY.main(tiny_flags(folder, tmp_path / "parts", 8))
    parts = STUDY.main(tiny_flags(folder, tmp_path / "parts", 10) + ["--resume"])
    for label in ("TraceEnum_ELBO", "ReinforceLeaveOneOutELBO"):
        a, b = whole["summary"][label], parts["summary"][label]
        assert a["final_accuracy"] == b["final_accuracy"]
        assert a["final_heldout_elbo"] == b["final_heldout_elbo"]
        assert a["curve"]["accuracy"] == b["curve"]["accuracy"]
        assert a["curve"]["step"] == [[0, 4, 8, 10]]
    record = json.loads((tmp_path / "parts" / "runs" / "TraceEnum_ELBO-seed0.json").read_text())
    assert record["steps"] == 10 and np.isfinite(record["ms_per_step"]["unlabelled"]["cpu"])
    block = readme_block(json.loads((tmp_path / "parts" / "results.json").read_text()))
    assert "| TraceEnum_ELBO (exact sum over the 10 classes) |" in block
    assert "ReinforceLeaveOneOutELBO(pathwise=True, num_particles=10)" in block
    assert "Test accuracy against TraceEnum_ELBO" in block and "Command: `python -m experiments.ssvae" in block


def test_classify_is_the_argmax_of_q():
    _, _, classifier = networks()
    x = images(7)
    assert torch.equal(classify(x, classifier), torch.softmax(classifier(x), -1).argmax(-1))
