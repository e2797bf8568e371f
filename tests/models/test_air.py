"""The attend-infer-repeat workload: the multi-object MNIST generator, the
scene model's log-joint, the guide's presence mechanics and every estimator
of the study on it."""

import functools
import math
from collections import defaultdict

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.poutine.messenger import Messenger

from experiments.air import estimators
from guides.air import Baseline, GuideNet, guide, log_weights
from models.air import AIRConfig, Decoder, PriorSchedule, canvas_to_window, model, window_to_canvas
from models.multi_mnist import MultiMnistConfig, compose, load_multi_mnist
from tests.helpers import write_tiny_mnist

TINY = AIRConfig(canvas_size=12, window_size=6, max_steps=3, z_what_dim=3, decoder_hidden=8, rnn_hidden=8, embed_dim=8)


# ----------------------------------------------------------------------------
# the generator


def tiny_pool(num=5, size=4, seed=0):
    return torch.rand(num, size, size, generator=torch.Generator().manual_seed(seed))


def test_compose_is_deterministic_and_places_each_digit_where_it_says():
    pool = tiny_pool()
    data = compose(pool, 200, canvas_size=10, max_digits=2, generator=torch.Generator().manual_seed(3))
    again = compose(pool, 200, canvas_size=10, max_digits=2, generator=torch.Generator().manual_seed(3))
    other = compose(pool, 200, canvas_size=10, max_digits=2, generator=torch.Generator().manual_seed(4))
    assert torch.equal(data.images, again.images) and torch.equal(data.counts, again.counts)
    assert not torch.equal(data.images, other.images)
    assert data.images.shape == (200, 10, 10) and data.counts.dtype == torch.int64
    assert set(data.counts.tolist()) == {0, 1, 2}
    # every count is drawn (uniform on 0..2: each has 200/3 expected, sd 6.7)
    assert all(abs(int((data.counts == k).sum()) - 200 / 3) < 4 * 6.7 for k in range(3))
    for n in range(200):
        expected = torch.zeros(10, 10)
        for k in range(2):
            if k < data.counts[n]:
                row, col = data.corners[n, k].tolist()
                assert 0 <= row <= 6 and 0 <= col <= 6
                expected[row : row + 4, col : col + 4] = torch.maximum(
                    expected[row : row + 4, col : col + 4], pool[data.digits[n, k]]
                )
            else:
                assert data.corners[n, k].tolist() == [-1, -1] and data.digits[n, k] == -1
        assert torch.equal(data.images[n], expected)


def test_load_multi_mnist_uses_held_out_digits_for_the_held_out_canvases(tmp_path):
    folder = write_tiny_mnist(tmp_path / "mnist", num_images=40)
    config = MultiMnistConfig(canvas_size=20, digit_size=10, num_train=30, num_test=12, seed=5)
    train, test = load_multi_mnist(folder, config)
    train2, test2 = load_multi_mnist(folder, config)
    assert torch.equal(train.images, train2.images) and torch.equal(test.counts, test2.counts)
    assert train.images.shape == (30, 20, 20) and test.images.shape == (12, 20, 20)
    assert ((train.images >= 0) & (train.images <= 1)).all()
    # only the test split is there: load_mnist keeps 32 images for training, 8 held out
    assert "32 in the pool" in train.info["digits_from"] and "8 in the pool" in test.info["digits_from"]
    assert int(test.digits.max()) < 8


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="digit_size .* is larger than canvas_size"):
        MultiMnistConfig(canvas_size=20, digit_size=28)
    with pytest.raises(ValueError, match="AIRConfig.z_pres_prior"):
        AIRConfig(z_pres_prior=1.5)
    with pytest.raises(ValueError, match=r"images must have shape \(batch, 12, 12\)"):
        model(torch.zeros(2, 10, 10), Decoder(TINY))


# ----------------------------------------------------------------------------
# the spatial transformer and the log-joint


def where_at(row, col, config=TINY):
    """The z_where that puts the window's pixel (0, 0) on the canvas pixel
    (row, col): scale C/w, shift (C - w - 2 col)/w (then every window pixel
    lands exactly on a canvas pixel centre)."""
    c, w = config.canvas_size, config.window_size
    return torch.tensor([c / w, (c - w - 2 * col) / w, (c - w - 2 * row) / w])


def placed(window, row, col, config=TINY):
    canvas = torch.zeros(config.canvas_size, config.canvas_size)
    canvas[row : row + config.window_size, col : col + config.window_size] = window
    return canvas


def test_the_spatial_transformer_places_and_reads_windows_exactly():
    window = torch.rand(6, 6)
    for row, col in [(0, 0), (3, 5), (6, 6), (2, 0)]:
        where = where_at(row, col)
        torch.testing.assert_close(window_to_canvas(window, where, 12), placed(window, row, col))
        torch.testing.assert_close(canvas_to_window(placed(window, row, col), where, 6), window)
    # batch shapes broadcast: (2, 3) windows, one canvas per row
    wheres = torch.stack([where_at(1, 2), where_at(4, 0)])
    windows = torch.rand(2, 3, 6, 6)
    out = window_to_canvas(windows, wheres[:, None], 12)
    assert out.shape == (2, 3, 12, 12)
    torch.testing.assert_close(out[1, 2], placed(windows[1, 2], 4, 0))


def normal_log_density(x, loc, scale):
    scale = torch.as_tensor(scale, dtype=x.dtype).expand(x.shape)
    return (-0.5 * ((x - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)).sum()


def test_model_log_joint_on_a_hand_made_canvas():
    decoder = Decoder(TINY)
    rho = TINY.z_pres_prior
    wheres = [where_at(1, 2), where_at(5, 4), where_at(0, 0) + 0.3]  # the third object is absent
    whats = [torch.randn(3) for _ in range(3)]
    values = {"z_pres_0": torch.tensor([1.0]), "z_pres_1": torch.tensor([1.0]), "z_pres_2": torch.tensor([0.0])}
    for t in range(3):
        values[f"z_where_{t}"], values[f"z_what_{t}"] = wheres[t][None], whats[t][None]
    images = torch.rand(1, 12, 12)
    trace = poutine.trace(poutine.condition(model, values)).get_trace(images, decoder)
    with torch.no_grad():
        windows = [decoder(w) for w in whats]
        canvas = placed(windows[0], 1, 2) + placed(windows[1], 5, 4)
        expected = 2 * math.log(rho) + math.log(1 - rho)
        prior_loc, prior_scale = torch.tensor([12 / 6, 0.0, 0.0]), torch.tensor([0.1, 1.0, 1.0])
        for t in range(2):
            expected += normal_log_density(wheres[t], prior_loc, prior_scale)
            expected += normal_log_density(whats[t], 0.0, 1.0)
        expected += normal_log_density(images[0], canvas, 0.3)
        torch.testing.assert_close(trace.log_prob_sum().detach(), torch.as_tensor(expected), rtol=1e-5, atol=1e-4)
        # another prior probability of objects: only the three z_pres factors change
        other = poutine.trace(poutine.condition(model, values)).get_trace(images, decoder, z_pres_prior=0.2)
        torch.testing.assert_close(
            other.log_prob_sum() - trace.log_prob_sum(),
            torch.tensor(2 * math.log(0.2 / rho) + math.log(0.8 / (1 - rho))),
            rtol=1e-5,
            atol=1e-4,
        )
        # the absent object's position and appearance change nothing
        values["z_where_2"], values["z_what_2"] = torch.randn(1, 3), torch.randn(1, 3)
        again = poutine.trace(poutine.condition(model, values)).get_trace(images, decoder)
        torch.testing.assert_close(again.log_prob_sum(), trace.log_prob_sum())


# ----------------------------------------------------------------------------
# the guide


def guide_draws(num_draws, images, net, baseline=None):
    with pyro.plate("draws", num_draws, dim=-2):
        return poutine.trace(guide).get_trace(images, net, baseline)


def test_guide_presence_once_zero_stays_zero():
    net = GuideNet(TINY)
    with torch.no_grad():  # presence probability 1/2 at every step, so every path is drawn
        net.presence.weight.zero_()
        net.presence.bias.zero_()
    images = torch.rand(3, 12, 12)
    trace = guide_draws(400, images, net)
    trace.compute_log_prob()
    pres = [trace.nodes[f"z_pres_{t}"] for t in range(3)]
    for t in range(1, 3):
        before, now = pres[t - 1]["value"], pres[t]["value"]
        assert now.shape == (400, 3)
        assert ((before == 0) <= (now == 0)).all()  # a 0 stays 0
        after_zero = before == 0
        assert after_zero.any() and (~after_zero & (now == 0)).any() and (now == 1).any()
        probs = pres[t]["fn"].probs.expand(now.shape)
        assert (probs[after_zero] == 0).all()  # Bernoulli(p * 0), exactly
        assert (pres[t]["log_prob"][after_zero] == 0).all()  # log q(0 | p = 0) = 0, finite
        torch.testing.assert_close(probs[~after_zero], torch.full_like(probs[~after_zero], 0.5))
    for t in range(3):
        absent = pres[t]["value"] == 0
        for name in (f"z_where_{t}", f"z_what_{t}"):
            log_prob = trace.nodes[name]["log_prob"]
            assert (log_prob[absent] == 0).all() and (log_prob[~absent] != 0).all()
    # one draw's count is the number of its leading ones
    counts = sum(p["value"] for p in pres)
    assert set(counts.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}


def test_log_weights_are_the_vectorized_single_particle_elbo():
    """Each of log_weights' K particles is one draw of Trace_ELBO's: with the
    same random stream, K = 1 gives minus its loss, canvas by canvas summed,
    and the counts are the draws' numbers of present objects."""
    decoder, net, images = Decoder(TINY), GuideNet(TINY), torch.rand(5, 12, 12)
    pyro.set_rng_seed(0)
    log_w, counts, canvas, z_pres, _ = log_weights(images, decoder, net, 1)
    pyro.set_rng_seed(0)
    loss = pyro.infer.Trace_ELBO().loss(
        functools.partial(model, decoder=decoder), functools.partial(guide, net=net), images
    )
    assert log_w.shape == counts.shape == (1, 5) and canvas.shape == (1, 5, 12, 12)
    assert math.isclose(float(log_w.sum()), -loss, rel_tol=1e-5)
    assert torch.equal(counts, torch.stack(z_pres).sum(0).long())
    log_w, counts, *_ = log_weights(images, decoder, net, 7)
    assert log_w.shape == counts.shape == (7, 5) and torch.isfinite(log_w).all()


def test_baseline_options_reach_the_z_pres_sites():
    net, baseline = GuideNet(TINY), Baseline(TINY, hidden=4)
    trace = guide_draws(2, torch.rand(3, 12, 12), net, baseline)
    for t in range(3):
        options = trace.nodes[f"z_pres_{t}"]["infer"]["baseline"]
        assert options["nn_baseline"] is baseline.steps[t]
        assert options["nn_baseline_input"].shape == (2, 3, TINY.rnn_hidden)
        assert options["nn_baseline"](options["nn_baseline_input"]).shape == (2, 3)
        assert options["use_decaying_avg_baseline"] is True
        assert "baseline" not in trace.nodes[f"z_where_{t}"]["infer"]


# ----------------------------------------------------------------------------
# every estimator of the study


class RecordPresence(Messenger):
    """Keeps the z_pres values the guide draws."""

    def __init__(self):
        super().__init__()
        self.values = defaultdict(list)

    def _pyro_post_sample(self, msg):
        if msg["name"].startswith("z_pres_"):
            self.values[msg["name"]].append(msg["value"].detach())


# estimators that refuse the AIR guide, with what their message names
REFUSALS = {}


@pytest.mark.parametrize("label", list(estimators(4)))
def test_every_estimator_takes_a_step_without_nan(label):
    estimator = estimators(4)[label]
    decoder, net, baseline = Decoder(TINY), GuideNet(TINY), Baseline(TINY, hidden=4)
    with torch.no_grad():
        net.presence.bias.fill_(0.0)  # presence 1/2: draws that stop after 0, 1, 2 objects
    recorder = RecordPresence()
    guides = {
        "plain": recorder(functools.partial(guide, net=net)),
        "baseline": recorder(functools.partial(guide, net=net, baseline=baseline)),
    }
    elbo = estimator.make()
    images = compose(tiny_pool(size=6), 4, 12, 2, torch.Generator().manual_seed(0)).images
    model_fn = functools.partial(model, decoder=decoder)
    if label in REFUSALS:
        with pytest.raises(ValueError, match=REFUSALS[label]):
            elbo.loss_and_grads(model_fn, estimator.guide(guides), images)
        return
    with poutine.trace(param_only=True) as params:
        loss = elbo.loss_and_grads(model_fn, estimator.guide(guides), images)
    assert math.isfinite(loss)
    # every run of the guide (the estimators may run it once more, to read its structure), flattened
    z_pres = torch.stack([torch.cat([v.reshape(-1) for v in recorder.values[f"z_pres_{t}"]]) for t in range(2)])
    assert ((z_pres[0] == 0) & (z_pres[1] == 0)).any()  # a Bernoulli(0) was drawn
    for name, site in params.trace.nodes.items():
        grad = site["value"].unconstrained().grad
        if grad is not None:
            assert torch.isfinite(grad).all(), f"{label}: non-finite gradient of {name}"
    presence = pyro.param("guide$$$presence.weight").unconstrained().grad
    assert presence is not None and presence.abs().sum() > 0
    if label.startswith("TraceGraph"):  # the baseline network is trained too
        assert pyro.param("baseline$$$steps.0.net.0.weight").unconstrained().grad.abs().sum() > 0


def test_a_probability_zero_bernoulli_written_with_logits_is_nan_in_torch():
    """Why the guide writes Bernoulli(probs=p * z_pres) and not logits: torch's
    log_prob at logits = -inf is NaN (0 * inf), even for Trace_ELBO."""
    assert torch.isnan(dist.Bernoulli(logits=torch.tensor(-math.inf)).log_prob(torch.tensor(0.0)))
    assert dist.Bernoulli(probs=torch.tensor(0.0)).log_prob(torch.tensor(0.0)) == 0


# ----------------------------------------------------------------------------
# the study


def test_study_resumes_bit_for_bit_and_renders_its_readme_block(tmp_path):
    from experiments.air import STUDY, readme_block

    folder = write_tiny_mnist(tmp_path / "mnist", num_images=40)
    flags = (
        f"--data-dir {folder} --canvas-size 12 --digit-size 6 --z-what-dim 3 --num-train 16 --num-test 6 "
        "--batch-size 4 --eval-every 2 --eval-size 4 --eval-particles 2 --variance-draws 2 --seeds 0 "
        "--estimators TraceGraph_ELBO"
    ).split()

    def finals(results):
        return {
            label: (
                row["count_accuracy"]["values"],
                row["elbo"]["values"],
                {seed: (c["step"], c["count_accuracy"], c["elbo"]) for seed, c in row["curves"].items()},
            )
            for label, row in results["estimators"].items()
        }

    whole = STUDY.main(flags + ["--out", str(tmp_path / "whole"), "--steps", "4"])
    STUDY.main(flags + ["--out", str(tmp_path / "parts"), "--steps", "2"])
    with pytest.raises(SystemExit, match="pass --resume to continue them or --overwrite"):
        STUDY.main(flags + ["--out", str(tmp_path / "parts"), "--steps", "4"])
    parts = STUDY.main(flags + ["--out", str(tmp_path / "parts"), "--steps", "4", "--resume"])
    assert finals(parts) == finals(whole)  # continued from the step-2 checkpoints, bit for bit
    assert [c[2]["0"][0] for c in finals(whole).values()] == [[0, 2, 4]]
    # a finished study is read back, not run again
    again = STUDY.main(flags + ["--out", str(tmp_path / "parts"), "--steps", "4", "--resume"])
    assert finals(again) == finals(parts)
    block = readme_block(parts)
    assert "| TraceGraph_ELBO + baseline |" in block and "Command: `python -m experiments.air" in block


def test_prior_schedule_holds_then_decays_geometrically():
    schedule = PriorSchedule(final=1e-4, start=0.5, hold=10, decay=20)
    assert schedule(0) == schedule(10) == 0.5
    assert schedule(20) == pytest.approx(math.sqrt(0.5 * 1e-4))
    assert schedule(30) == schedule(1000) == 1e-4
    assert PriorSchedule(final=0.3)(0) == 0.3
