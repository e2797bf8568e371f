"""The VAE study's figures, from ``results.json`` (and, for the
reconstructions and samples, the first seed's checkpoints)."""

import os

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from experiments._figures import plt, save_figure
from experiments._runs import fixed_rng
from experiments.vae_mnist.compare import BURDA_REFERENCE, BURDA_TEST_NLL
from experiments.vae_mnist.evaluate import FIGURE_SEED, TEST_BINARIZATION_SEED
from experiments.vae_mnist.train import RUNS, checkpoint_path, load_networks
from models.mnist import MnistNotFoundError, binarize, load_mnist
from models.vae import VAEConfig


def _label(results, key):
    return results["runs"][key]["label"]


def _curves(run, name):
    """``(epochs, mean, min, max)`` over seeds of history ``name``, from epoch 1."""
    seeds = list(run["seeds"].values())
    epochs = np.asarray(seeds[0]["history"]["epoch"])
    length = min(len(s["history"][name]) for s in seeds)
    values = np.array([[np.nan if v is None else v for v in s["history"][name][:length]] for s in seeds])
    keep = epochs[:length] >= 1
    return epochs[:length][keep], values.mean(0)[keep], values.min(0)[keep], values.max(0)[keep]


def coincidences(results, names, fraction=0.01):
    """``{later run: (earlier run, max |difference|)}`` for runs whose mean
    curve lies within ``fraction`` of the panel's range of an earlier run's
    on at least one of the panels ``names`` (drawn on top of each other
    there); the difference is the largest over all panels."""
    keys = list(results["runs"])
    notes = {}
    for j, b in enumerate(keys):
        for a in keys[:j]:
            worst, close = 0.0, False
            for name in names:
                ea, ma, _, _ = _curves(results["runs"][a], name)
                eb, mb, _, _ = _curves(results["runs"][b], name)
                n = min(len(ma), len(mb))
                if n == 0 or not np.array_equal(ea[:n], eb[:n]):
                    continue
                span = max(np.nanmax(np.r_[ma, mb]) - np.nanmin(np.r_[ma, mb]), 1e-9)
                diff = float(np.nanmax(np.abs(ma[:n] - mb[:n])))
                worst = max(worst, diff)
                close |= diff <= fraction * span
            if close and b not in notes:
                notes[b] = (a, worst)
    return notes


def plot_bounds(results, path):
    """2 x 2 panels: L_1 and L_K per epoch on the held-out and the training
    batch; mean over seeds, min-max band; epoch 0 left out (in the title)."""
    k = results["args"]["monitor_k"]
    panels = [
        ("heldout_elbo", "(a) held-out batch: ELBO L_1"),
        ("heldout_iwelbo", f"(b) held-out batch: IWELBO L_{k}"),
        ("train_elbo", "(c) training batch: ELBO L_1"),
        ("train_iwelbo", f"(d) training batch: IWELBO L_{k}"),
    ]
    notes = coincidences(results, [name for name, _ in panels])
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    num_seeds = max(len(r["seeds"]) for r in results["runs"].values())
    longest = max(max(s["epochs"] for s in r["seeds"].values()) for r in results["runs"].values())
    # the y axis starts at the values of epoch `first`, so that the last epochs,
    # where the runs differ by a few nats, are not squashed by the first ones
    first = max(2, min(10, round(longest / 6)))
    for ax, (name, title) in zip(axes.flat, panels):
        untrained, lowest, highest = [], [], []
        for i, (key, run) in enumerate(results["runs"].items()):
            epochs, mean, low, high = _curves(run, name)
            style = dict(RUNS[key].style) if key in RUNS else {}
            every = 1 if len(epochs) < 8 else max(2, len(epochs) // 8)
            # markers of different runs on different epochs: curves on top of each other stay visible
            ax.plot(epochs, mean, lw=1.4, markevery=(i % every, every), label=key, **style)
            if len(run["seeds"]) > 1:
                ax.fill_between(epochs, low, high, color=style.get("color"), alpha=0.15, lw=0)
            untrained.extend(s["history"][name][0] for s in run["seeds"].values())
            shown = epochs >= min(first, epochs.max())
            lowest.append(np.nanmin(low[shown]))
            highest.append(np.nanmax(high))
        span = max(max(highest) - min(lowest), 1e-3)
        ax.set_ylim(min(lowest) - 0.03 * span, max(highest) + 0.05 * span)
        ax.set_title(f"{title}\n(epoch 0, untrained: {np.mean(untrained):.1f} nats, off the scale)", fontsize=10)
        ax.set_xlabel("epoch" if first <= 2 or longest <= 2 else f"epoch (axis from epoch {first}'s values)")
        ax.set_ylabel("bound per image (nats)")
        if longest > 60:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, keys = axes[0, 0].get_legend_handles_labels()
    labels = []
    for key in keys:
        n = len(results["runs"][key]["seeds"])
        text = "{} [{} seed{}]".format(_label(results, key), n, "s" if n > 1 else "")
        if key in notes:
            other, diff = notes[key]
            text += f"\n  (on top of {_label(results, other)}: max |diff| {diff:.2f} nats)"
        labels.append(text)
    band = "line: mean over seeds; band: min-max" if num_seeds > 1 else "one seed"
    fig.legend(
        handles,
        labels,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.0, 0.95),
        title=band,
        title_fontsize=8,
        frameon=False,
    )
    fig.suptitle(_figure_title(results), fontsize=10)
    save_figure(fig, path, bbox_inches="tight")


def _figure_title(results):
    d = results["data"]
    return "{schedule} schedule: {epochs} epochs, Adam lr {lr:g}, batch {batch_size}; {} ({:,} training images)".format(
        "standard MNIST split" if d["standard_split"] else "FALLBACK split of the test images",
        d["num_train_used"],
        **results["args"],
    )


def plot_final(results, path):
    """Test L_S, test ELBO, and L_S minus the VAE's of the same seed, per run:
    every seed (small markers) and the mean +- sd over seeds; Burda et al.'s
    test log-likelihoods where comparable."""
    s, subset, runs = results["args"]["eval_samples"], results["data"]["test_subset"], results["runs"]
    panels = [
        ("test_log_likelihood", f"(a) test log p(x) ~ L_{s}"),
        ("test_elbo", "(b) test ELBO (mean log-weight, same samples)"),
    ]
    if "vae" in runs and len(runs) > 1:
        panels.append(("difference", f"(c) test L_{s} minus the VAE's, same seed\n(paired: same images)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.8), squeeze=False)
    reference_label = ["Burda et al. (3,280 epochs), same objective"]
    vae = runs.get("vae", {}).get("seeds", {})
    for ax, (name, title) in zip(axes[0], panels):
        for i, (key, run) in enumerate(runs.items()):
            style = RUNS[key].style if key in RUNS else {}
            if name == "difference":
                values = [
                    r["test_log_likelihood"] - vae[seed]["test_log_likelihood"]
                    for seed, r in run["seeds"].items()
                    if seed in vae
                ]
                errors = [0.0] * len(values)
            else:
                values = [r[name] for r in run["seeds"].values()]
                errors = [r[name + "_se"] or 0.0 for r in run["seeds"].values()]
            if not values:
                continue
            offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
            first = i == 0
            ax.errorbar(
                i + np.asarray(offsets),
                values,
                yerr=errors,
                fmt=style.get("marker", "o"),
                color=style.get("color"),
                ms=5,
                alpha=0.6,
                lw=0.8,
                capsize=0,
                label="one seed (+-1 SE over test images in a, b)" if first else None,
            )
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            ax.errorbar(
                [i + 0.3],
                [np.mean(values)],
                yerr=[sd],
                fmt="_",
                color="k",
                ms=14,
                capsize=4,
                lw=1.5,
                label="mean +- sd over seeds" if first else None,
            )
            if name == "test_log_likelihood" and key in BURDA_REFERENCE and results["data"]["standard_split"]:
                ref = -BURDA_TEST_NLL[BURDA_REFERENCE[key][0]][BURDA_REFERENCE[key][1]]
                label = reference_label.pop() if reference_label else None
                ax.plot([i - 0.3, i + 0.3], [ref, ref], color="k", ls=":", lw=1.5, label=label)
        if name == "difference":
            ax.axhline(0.0, color="C0", lw=0.8)
        labels = [f"{_label(results, k)} [{len(runs[k]['seeds'])}]".replace(" (", "\n(") for k in runs]
        ax.set_xticks(range(len(runs)))
        ax.set_xticklabels(labels, fontsize=8, rotation=30, ha="right")
        ax.set_xlim(-0.6, len(runs) - 0.4)
        ax.set_ylabel("nats per test image")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    legend = {label: handle for ax in axes[0] for handle, label in zip(*ax.get_legend_handles_labels())}
    fig.legend(
        legend.values(),
        legend.keys(),
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.0, 0.9),
        frameon=False,
        title="[n]: seeds of the run",
        title_fontsize=8,
    )
    where = (
        f"all {subset['of']:,} test images"
        if subset["all"]
        else f"a fixed random {subset['size']:,} of the {subset['of']:,} test images"
    )
    fig.suptitle(f"{_figure_title(results)}\ntest numbers on {where}", fontsize=10)
    save_figure(fig, path, bbox_inches="tight")


def _image_rows(rows, labels, title, path):
    from torchvision.utils import make_grid

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


def plot_images(results, networks, x, out):
    """Reconstructions of ``x`` and decoder means of fixed prior draws, one
    row per run (``networks``: run -> (encoder, decoder))."""
    with fixed_rng(FIGURE_SEED):
        z = torch.randn(x.shape[0], results["config"]["latent_dim"], device=x.device)
    with torch.no_grad():
        recon = [x] + [torch.sigmoid(decoder(encoder(x)[0])) for encoder, decoder in networks.values()]
        samples = [torch.sigmoid(decoder(z)) for _, decoder in networks.values()]
    labels = [_label(results, key) for key in networks]
    after = "seed {}, after {} epochs".format(results["figures_seed"], results["args"]["epochs"])
    _image_rows(
        recon,
        ["test data (binarized)"] + labels,
        f"Reconstructions: Bernoulli means of p(x | z = E_q[z | x]) ({after})",
        os.path.join(out, "reconstructions.png"),
    )
    _image_rows(
        samples,
        labels,
        f"Samples: Bernoulli means of p(x | z), the same z ~ N(0, I) per column ({after})",
        os.path.join(out, "samples.png"),
    )


def draw(results, out):
    """Every figure from ``results``; the reconstructions and samples from
    the final weights of the first seed, read from its checkpoints (written
    by one process or by the first of a ``torchrun`` job) when they are
    there, of test digits of the study's data."""
    plot_bounds(results, os.path.join(out, "elbo_iwelbo.png"))
    plot_final(results, os.path.join(out, "test_loglik.png"))
    seed = results["figures_seed"]
    config = VAEConfig(hidden_dims=tuple(results["config"]["hidden_dims"]), latent_dim=results["config"]["latent_dim"])
    networks, missing = {}, []
    for key in results["runs"]:
        path = checkpoint_path(out, key, seed)
        found = [p for p in (path, path + ".rank0") if os.path.exists(p)]
        if found:
            networks[key] = load_networks(found[0], config)
        else:
            missing.append(path)
    if missing:
        print("no reconstructions/samples: missing checkpoint(s) {}".format(", ".join(missing)))
        return
    try:
        data = load_mnist(results["data"].get("data_dir"), download=False)
    except MnistNotFoundError as error:
        print(f"no reconstructions/samples: {error}")
        return
    test = binarize(data.test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
    plot_images(results, networks, test[:10], out)
