"""VAE, sticking-the-landing VAE and IWAE on dynamically binarized MNIST
(assignment 1.B.2, question 3.1.25, and 1.A.2, questions 4.2.27-28).

Burda et al.'s one-stochastic-layer model (784-200-200-50, tanh, Gaussian q,
Bernoulli p; :mod:`models.vae`, :mod:`guides.vae`) trained with Adam for the
course budget (20 epochs, lr 1e-3, batches of 100) by each of these runs, on the
same data, batches, binarizations and initial weights:

=============  ==============================================================
``vae``        Trace_ELBO (the standard VAE, K = 1)
``vae_stl``    StickingTheLandingELBO (Roeder et al. Algorithm 2, K = 1)
``iwae1``      ImportanceWeightedELBO(K=1, gradient="reparam") (= the VAE)
``iwae5``      ImportanceWeightedELBO(K=5, gradient="reparam")
``iwae50``     ImportanceWeightedELBO(K=50, gradient="reparam")
``iwae50_dreg`` ImportanceWeightedELBO(K=50, gradient="dreg")
``renyi5``     Pyro's RenyiELBO(alpha=0, num_particles=5, vectorized); every
               site of the VAE is in the data plate, so its log-mean-exp is
               per data point and it is the IWAE k=5 estimator: with the
               same seed it retraces ``iwae5`` (a cross-check)
=============  ==============================================================

Every epoch (and at epoch 0, before training), the ELBO L_1 and the IWELBO L_K (K = ``--monitor-k``, 50) of every
run are estimated on a fixed held-out batch and a fixed training batch with the
same importance samples for every run and epoch. At the end, on the held-out test
set: log p(x) ~ L_S with S = ``--eval-samples`` (5000) importance samples,
accumulated by log-sum-exp over chunks so that memory stays bounded, the test ELBO
(the mean log-weight over the same S samples), and the active units (Burda et al.:
dimension u is active when Cov_x(E_q[z_u | x]) > 1e-2). Writes to ``--out``:

- ``elbo_iwelbo.png``: L_1 and L_K over epochs for every run, on the fixed
  held-out batch (left) and the fixed training batch (right);
- ``reconstructions.png``: test digits and each run's reconstructions;
- ``samples.png``: decoder means of the same prior draws for every run;
- ``results.json``: histories, final numbers, data provenance, references;
- ``checkpoints/<run>.pt``: per-epoch checkpoints; ``--resume`` continues an
  interrupted study and ends with the same numbers as an uninterrupted one.

    python -m experiments.vae_mnist --data-dir ~/data --out results/vae_mnist
"""

import argparse
import contextlib
import functools
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pyro  # noqa: E402
import pyro.poutine as poutine  # noqa: E402
import torch  # noqa: E402
from pyro.infer import RenyiELBO, Trace_ELBO  # noqa: E402
from pyro.infer.util import torch_item, zero_grads  # noqa: E402
from torchvision.utils import make_grid  # noqa: E402

from experiments._figures import save_figure  # noqa: E402
from guides.vae import Encoder, guide  # noqa: E402
from models.mnist import MnistNotFoundError, binarize, default_data_dir, load_mnist  # noqa: E402
from models.vae import Decoder, VAEConfig, model  # noqa: E402
from pyro_vi import ImportanceWeightedELBO, StickingTheLandingELBO  # noqa: E402
from pyro_vi.training import NonFiniteError, atomic_save, rng_state, set_rng_state  # noqa: E402

# Burda et al. 2015, table 1, one stochastic layer, test NLL (L_5000) after 3,280
# epochs (3^8 passes schedule); ours run 20 epochs.
BURDA_TEST_NLL = {
    "VAE": {"k=1": 86.76, "k=5": 86.47, "k=50": 86.35},
    "IWAE": {"k=1": 86.76, "k=5": 85.54, "k=50": 84.78},
}
ACTIVE_UNIT_THRESHOLD = 1e-2
# Seeds of the fixed binarizations and importance samples used for evaluation:
# the same for every run and every --seed, so runs are compared on equal terms.
TEST_BINARIZATION_SEED = 20151
MONITOR_SAMPLES_SEED = 20152
EVAL_SAMPLES_SEED = 20153
FIGURE_SEED = 20154
# Elements (samples x data points x pixels) per chunk of the test evaluation.
EVAL_CHUNK_ELEMENTS = 1 << 23


@dataclass(frozen=True)
class RunSpec:
    label: str
    objective: str
    make_elbo: Callable[[], object]


def run_specs() -> Dict[str, RunSpec]:
    """``key -> RunSpec`` for every run of the study, in plotting order."""
    iw = functools.partial(ImportanceWeightedELBO, vectorize_particles=True, max_plate_nesting=1)
    return {
        "vae": RunSpec("VAE (Trace_ELBO)", "L_1, reparameterized",
                       lambda: Trace_ELBO(num_particles=1, max_plate_nesting=1)),
        "vae_stl": RunSpec("VAE-STL (StickingTheLandingELBO)", "L_1, path derivative",
                           lambda: StickingTheLandingELBO(num_particles=1, max_plate_nesting=1)),
        "iwae1": RunSpec("IWAE k=1", "L_1 (IWELBO, K=1)",
                         lambda: iw(num_particles=1, gradient="reparam")),
        "iwae5": RunSpec("IWAE k=5", "L_5 per data point",
                         lambda: iw(num_particles=5, gradient="reparam")),
        "iwae50": RunSpec("IWAE k=50", "L_50 per data point",
                          lambda: iw(num_particles=50, gradient="reparam")),
        "iwae50_dreg": RunSpec("IWAE-DReG k=50", "L_50 per data point, DReG gradient",
                               lambda: iw(num_particles=50, gradient="dreg")),
        "renyi5": RunSpec("RenyiELBO(alpha=0) k=5", "L_5 per data point (Pyro)",
                          lambda: RenyiELBO(alpha=0.0, num_particles=5, vectorize_particles=True,
                                            max_plate_nesting=1)),
    }


# ----------------------------------------------------------------------------
# Evaluation: importance weights, bounds, active units


@contextlib.contextmanager
def fixed_rng(seed):
    """Runs the block with ``torch.manual_seed(seed)`` and restores the global
    RNG state afterwards, so evaluation never disturbs the training stream."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def log_weights(model_fn, guide_fn, x, num_samples):
    """``log p(x_n, z_sn) - log q(z_sn | x_n)`` for ``num_samples`` draws per data
    point, shape ``(num_samples, B)``: guide and model run once, vectorized over
    the samples in a plate at ``dim=-2``."""
    with torch.no_grad(), pyro.plate("importance_samples", num_samples, dim=-2):
        guide_trace = poutine.trace(guide_fn).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(x)
    shape = (num_samples, x.shape[0])
    log_w = x.new_zeros(shape)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w + sign * site["fn"].log_prob(site["value"]).expand(shape)
    return log_w


def bounds(model_fn, guide_fn, x, num_samples, batch_size=None):
    """Per data point ``(L_S, mean log-weight)`` from ``num_samples`` importance
    samples, drawn in chunks and accumulated by log-sum-exp (memory bounded by
    ``EVAL_CHUNK_ELEMENTS``). The mean log-weight estimates the ELBO L_1."""
    data_dim = x.shape[-1]
    batch_size = batch_size or max(1, min(len(x), 100))
    chunk = max(1, EVAL_CHUNK_ELEMENTS // (data_dim * batch_size))
    log_px, elbo = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size]
        acc = xb.new_full((len(xb),), -math.inf)
        total = xb.new_zeros(len(xb))
        done = 0
        while done < num_samples:
            s = min(chunk, num_samples - done)
            lw = log_weights(model_fn, guide_fn, xb, s)
            acc = torch.logaddexp(acc, torch.logsumexp(lw, 0))
            total = total + lw.sum(0)
            done += s
        log_px.append(acc - math.log(num_samples))
        elbo.append(total / num_samples)
    return torch.cat(log_px), torch.cat(elbo)


def active_units(encoder, x, threshold=ACTIVE_UNIT_THRESHOLD):
    """Burda et al.'s active units: dimensions u with Cov_x(E_q[z_u | x]) > threshold."""
    with torch.no_grad():
        loc = torch.cat([encoder(xb)[0] for xb in x.split(1000)])
    variance = loc.var(0)
    return int((variance > threshold).sum()), variance


# ----------------------------------------------------------------------------
# Training with per-epoch checkpoints


def _rng_state(data_gen):
    return dict(rng_state(), data=data_gen.get_state())


def _set_rng_state(state, data_gen):
    set_rng_state(state)
    data_gen.set_state(state["data"])


def _fingerprint(key, args, config, data):
    """What must match for a checkpoint to be resumed (not the epoch count)."""
    return {
        "run": key, "seed": args.seed, "lr": args.lr, "batch_size": args.batch_size,
        "num_train": len(data.train), "train_pixel_sum": round(float(data.train.double().sum()), 3),
        "split": data.info.get("split"), "hidden_dims": list(config.hidden_dims),
        "latent_dim": config.latent_dim, "monitor_k": args.monitor_k,
        "monitor_size": args.monitor_size,
    }


def _svi_step(elbo, optim, model_fn, guide_fn, x, where):
    """SVI.step with a finiteness check before the optimizer step."""
    with poutine.trace(param_only=True) as capture:
        loss = torch_item(elbo.loss_and_grads(model_fn, guide_fn, x))
    params = {name: site["value"].unconstrained() for name, site in capture.trace.nodes.items()}
    bad = [n for n, p in params.items() if p.grad is not None and not torch.isfinite(p.grad).all()]
    if not math.isfinite(loss) or bad:
        zero_grads(params.values())
        raise NonFiniteError("{}: loss {}, non-finite gradient of {}".format(where, loss, bad or "none"),
                             names=bad, loss=loss)
    optim(params.values())
    zero_grads(params.values())
    return loss


def train_run(key, spec, data, monitor, config, mean_pixel, args, device):
    """Trains one run for ``args.epochs`` epochs (resuming from its checkpoint with
    ``--resume``); returns ``(encoder, decoder, history)``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    decoder = Decoder(config, mean_pixel).to(device)
    encoder = Encoder(config).to(device)
    model_fn = functools.partial(model, decoder=decoder)
    guide_fn = functools.partial(guide, encoder=encoder)
    optim = pyro.optim.Adam({"lr": args.lr})
    elbo = spec.make_elbo()
    data_gen = torch.Generator().manual_seed(args.seed + 1)
    history = {name: [] for name in (
        "train_objective", "heldout_elbo", "heldout_iwelbo", "train_elbo", "train_iwelbo",
        "seconds", "monitor_seconds")}
    path = os.path.join(args.out, "checkpoints", key + ".pt")
    fingerprint = _fingerprint(key, args, config, data)
    if args.resume and os.path.exists(path):
        # weights_only=False: RNG states; load only checkpoints you wrote yourself.
        state = torch.load(path, weights_only=False, map_location=device)
        if state["fingerprint"] != fingerprint:
            raise ValueError("checkpoint {} was written with other settings: {} != {}".format(
                path, state["fingerprint"], fingerprint))
        if state["epoch"] > args.epochs:
            raise ValueError("checkpoint {} is at epoch {}, past --epochs {}".format(
                path, state["epoch"], args.epochs))
        decoder.load_state_dict(state["decoder"])
        encoder.load_state_dict(state["encoder"])
        optim.set_state(state["optim"])
        history = state["history"]
        _set_rng_state(state["rng"], data_gen)
        print("{}: resumed from {} at epoch {}".format(key, path, state["epoch"]), flush=True)
    def record_bounds():
        start = time.perf_counter()
        for split in ("heldout", "train"):
            with fixed_rng(MONITOR_SAMPLES_SEED):
                iw, l1 = bounds(model_fn, guide_fn, monitor[split], args.monitor_k)
            history[split + "_elbo"].append(l1.mean().item())
            history[split + "_iwelbo"].append(iw.mean().item())
        return time.perf_counter() - start

    if not history["heldout_elbo"]:  # epoch 0: the untrained model
        record_bounds()
    num_train = len(data.train)
    while len(history["seconds"]) < args.epochs:
        epoch = len(history["seconds"]) + 1
        start = time.perf_counter()
        order = torch.randperm(num_train, generator=data_gen)
        total = 0.0
        for step, first in enumerate(range(0, num_train, args.batch_size)):
            x = binarize(data.train[order[first:first + args.batch_size]], data_gen).to(device)
            where = "run {} epoch {} step {}".format(key, epoch, step + 1)
            total += _svi_step(elbo, optim, model_fn, guide_fn, x, where)
        history["seconds"].append(time.perf_counter() - start)
        history["train_objective"].append(-total / num_train)
        history["monitor_seconds"].append(record_bounds())
        print("{:<12} epoch {:>3}: objective {:9.3f}  held-out L_1 {:9.3f}  L_{} {:9.3f}  "
              "({:.1f} s + {:.1f} s monitor)".format(
                  key, epoch, history["train_objective"][-1], history["heldout_elbo"][-1],
                  args.monitor_k, history["heldout_iwelbo"][-1], history["seconds"][-1],
                  history["monitor_seconds"][-1]), flush=True)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_save({
            "epoch": epoch, "fingerprint": fingerprint,
            "decoder": decoder.state_dict(), "encoder": encoder.state_dict(),
            "optim": optim.get_state(), "history": history, "rng": _rng_state(data_gen),
        }, path)
    return encoder, decoder, history


def evaluate(encoder, decoder, test, args):
    model_fn = functools.partial(model, decoder=decoder)
    guide_fn = functools.partial(guide, encoder=encoder)
    start = time.perf_counter()
    with fixed_rng(EVAL_SAMPLES_SEED):
        log_px, elbo = bounds(model_fn, guide_fn, test, args.eval_samples)
    units, variance = active_units(encoder, test)
    return {
        "test_log_likelihood": log_px.mean().item(),
        "test_log_likelihood_se": (log_px.std() / math.sqrt(len(log_px))).item() if len(log_px) > 1 else None,
        "test_elbo": elbo.mean().item(),
        "active_units": units,
        "latent_variances": variance.tolist(),
        "eval_seconds": time.perf_counter() - start,
    }


# ----------------------------------------------------------------------------
# Figures and table


def plot_bounds(results, monitor_k, path):
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8), sharey=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, split, title in ((axes[0], "heldout", "held-out batch"), (axes[1], "train", "training batch")):
        for i, (key, r) in enumerate(results.items()):
            h = r["history"]
            epochs = np.arange(len(h[split + "_elbo"]))  # from epoch 0, the untrained model
            color = colors[i % len(colors)]
            ax.plot(epochs, h[split + "_elbo"], color=color, ls="-", marker=".", label=r["label"] + ": ELBO L_1")
            ax.plot(epochs, h[split + "_iwelbo"], color=color, ls="--", marker=".",
                    label=r["label"] + ": IWELBO L_{}".format(monitor_k))
        top = max(max(r["history"][split + "_iwelbo"]) for r in results.values())
        reference = -BURDA_TEST_NLL["IWAE"]["k=50"]
        if reference - top < 30:  # drawn only where it does not squash the curves
            ax.axhline(reference, color="k", ls=":", lw=1,
                       label="Burda et al. IWAE k=50 test log p(x) (3,280 epochs)")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        ax.set_title("ELBO (solid) and IWELBO L_{} (dashed), {}".format(monitor_k, title))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("bound per data point (nats)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    save_figure(fig, path, bbox_inches="tight")


def _image_rows(rows, labels, title, path):
    images = torch.cat(rows).reshape(-1, 1, 28, 28).clamp(0, 1).cpu()
    per_row = rows[0].shape[0]
    grid = make_grid(images, nrow=per_row, padding=2, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(per_row * 0.6 + 2.5, len(rows) * 0.6 + 0.8))
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_yticks([2 + 30 * i + 14 for i in range(len(rows))])
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xticks([])
    ax.set_title(title, fontsize=10)
    save_figure(fig, path, bbox_inches="tight")


def plot_reconstructions(trained, results, x, path):
    rows, labels = [x], ["test data (binarized)"]
    with torch.no_grad():
        for key, (encoder, decoder) in trained.items():
            rows.append(torch.sigmoid(decoder(encoder(x)[0])))
            labels.append(results[key]["label"])
    _image_rows(rows, labels, "Reconstructions: Bernoulli means of p(x | z = E_q[z | x])", path)


def plot_samples(trained, results, z, path):
    rows, labels = [], []
    with torch.no_grad():
        for key, (encoder, decoder) in trained.items():
            rows.append(torch.sigmoid(decoder(z)))
            labels.append(results[key]["label"])
    _image_rows(rows, labels, "Samples: Bernoulli means of p(x | z), the same z ~ N(0, I) per column", path)


def format_table(results, eval_samples):
    header = "{:<34} {:>12} {:>10} {:>8} {:>9} {:>9} {:>8}".format(
        "run", "log p(x) L_{}".format(eval_samples), "test ELBO", "gap", "active", "s/epoch", "eval s")
    lines = [header, "-" * len(header)]
    for r in results.values():
        f = r["final"]
        lines.append("{:<34} {:>12.3f} {:>10.3f} {:>8.3f} {:>9} {:>9.2f} {:>8.1f}".format(
            r["label"], f["test_log_likelihood"], f["test_elbo"],
            f["test_log_likelihood"] - f["test_elbo"], f["active_units"],
            r["seconds_per_epoch"], f["eval_seconds"]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------


def main(args):
    if args.device != "cpu" and not torch.cuda.is_available():
        raise ValueError("--device {} asked for, but CUDA is not available".format(args.device))
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    specs = run_specs()
    os.makedirs(args.out, exist_ok=True)
    start_all = time.perf_counter()
    data = load_mnist(args.data_dir, download=not args.no_download)
    if args.max_train:
        data.train = data.train[:args.max_train]
    if args.max_test:
        data.test = data.test[:args.max_test]
    data.info.update(num_train_used=len(data.train), num_test_used=len(data.test))
    print("MNIST from {}\n  {}\n  training on {:,} images (dynamic binarization per batch), "
          "testing on {:,} (binarized once, fixed seed)".format(
              data.info["source"], data.info["split"], len(data.train), len(data.test)), flush=True)
    config = VAEConfig(hidden_dims=tuple(args.hidden_dims), latent_dim=args.latent_dim)
    mean_pixel = data.train.mean(0)
    test_gen = torch.Generator().manual_seed(TEST_BINARIZATION_SEED)
    test = binarize(data.test, test_gen).to(device)
    train_gen = torch.Generator().manual_seed(TEST_BINARIZATION_SEED + 1)
    train_fixed = binarize(data.train[:args.monitor_size], train_gen).to(device)
    monitor = {"heldout": test[:args.monitor_size], "train": train_fixed}

    trained, results = {}, {}
    for key in args.runs:
        spec = specs[key]
        encoder, decoder, history = train_run(key, spec, data, monitor, config, mean_pixel, args, device)
        final = evaluate(encoder, decoder, test, args)
        trained[key] = (encoder, decoder)
        results[key] = {
            "label": spec.label, "objective": spec.objective, "history": history,
            "seconds_per_epoch": float(np.mean(history["seconds"])), "final": final,
        }
        print("{:<12} test log p(x) ~ L_{} = {:.3f}, test ELBO = {:.3f}, active units {}/{} "
              "({:.1f} s)".format(key, args.eval_samples, final["test_log_likelihood"],
                                  final["test_elbo"], final["active_units"], config.latent_dim,
                                  final["eval_seconds"]), flush=True)

    show = test[:10]
    plot_bounds(results, args.monitor_k, os.path.join(args.out, "elbo_iwelbo.png"))
    plot_reconstructions(trained, results, show, os.path.join(args.out, "reconstructions.png"))
    with fixed_rng(FIGURE_SEED):
        z = torch.randn(10, config.latent_dim, device=device)
    plot_samples(trained, results, z, os.path.join(args.out, "samples.png"))
    table = format_table(results, args.eval_samples)
    print("\n1-stochastic-layer model {}, {} epochs of Adam(lr={}), batch {}; test set of {:,} "
          "images".format(config, args.epochs, args.lr, args.batch_size, len(test)))
    if data.info.get("only_test_split"):
        print("NOTE: " + data.info["split"])
    print(table)
    output = {
        "args": vars(args),
        "data": data.info,
        "config": {"data_dim": config.data_dim, "hidden_dims": list(config.hidden_dims),
                   "latent_dim": config.latent_dim},
        "runs": results,
        "references": {
            "burda_test_nll_3280_epochs": BURDA_TEST_NLL,
            "note": "Burda et al. 2015 table 1 (L_5000 on the official 10,000 test images, "
                    "3,280 epochs); this study runs {} epochs".format(args.epochs),
        },
        "wall_seconds": time.perf_counter() - start_all,
    }
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(output, f, indent=2, default=float)
    return output


def _positive_ints(text):
    values = [int(v) for v in text.replace(",", " ").split()]
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError("expected positive integers, got {!r}".format(text))
    return values


def parse_args(argv=None):
    specs = run_specs()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None,
                        help="torchvision MNIST root or directory with the IDX files "
                             "(default $PYRO_VI_DATA_DIR or ~/.cache/pyro_vi/data: {})".format(default_data_dir()))
    parser.add_argument("--no-download", action="store_true",
                        help="never download MNIST (also: PYRO_VI_NO_DOWNLOAD=1)")
    parser.add_argument("--runs", default=",".join(specs),
                        help="comma-separated subset of: {}".format(", ".join(specs)))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--eval-samples", type=int, default=5000,
                        help="importance samples S of the test log-likelihood L_S")
    parser.add_argument("--monitor-k", type=int, default=50, help="K of the per-epoch IWELBO L_K")
    parser.add_argument("--monitor-size", type=int, default=500,
                        help="images in the fixed held-out and training batches of the per-epoch curves")
    parser.add_argument("--max-train", type=int, default=None, help="use only the first N training images")
    parser.add_argument("--max-test", type=int, default=None, help="use only the first N test images")
    parser.add_argument("--hidden-dims", type=_positive_ints, default=[200, 200],
                        help="encoder hidden widths, e.g. 200,200 (decoder mirrored)")
    parser.add_argument("--latent-dim", type=int, default=50)
    parser.add_argument("--resume", action="store_true",
                        help="continue every run from its checkpoint in OUT/checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: torch's default); 1 can be faster on a busy machine")
    parser.add_argument("--out", default="results/vae_mnist")
    args = parser.parse_args(argv)
    args.runs = [r.strip() for r in args.runs.replace(" ", ",").split(",") if r.strip()]
    unknown = [r for r in args.runs if r not in specs]
    if unknown or not args.runs:
        parser.error("--runs: unknown {} (choose from {})".format(unknown, ", ".join(specs)))
    if len(set(args.runs)) != len(args.runs):
        parser.error("--runs: duplicates in {}".format(args.runs))
    if args.threads < 0:
        parser.error("--threads must be >= 0")
    for name in ("epochs", "batch_size", "eval_samples", "monitor_k", "monitor_size", "latent_dim"):
        if getattr(args, name) < 1:
            parser.error("--{} must be at least 1".format(name.replace("_", "-")))
    for name in ("max_train", "max_test"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.error("--{} must be at least 1".format(name.replace("_", "-")))
    if args.lr <= 0:
        parser.error("--lr must be positive")
    return args


if __name__ == "__main__":
    try:
        main(parse_args())
    except MnistNotFoundError as error:
        sys.exit("vae_mnist: error: {}".format(error))
