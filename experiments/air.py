"""Attend, infer, repeat on multi-object MNIST: which gradient estimator
learns to count the objects in a scene.

The scene model and its sequential guide (:mod:`models.air`,
:mod:`guides.air`; at most ``--max-steps`` objects) are trained on canvases
with 0 to ``--max-digits`` MNIST digits at random positions
(:mod:`models.multi_mnist`: ``--num-train`` canvases from MNIST's training
digits, ``--num-test`` held-out canvases from its test digits). Every
estimator of :func:`estimators` starts from the same weights for a seed and
gets the same budget: ``--steps`` steps of Adam on batches of
``--batch-size`` canvases, ``--particles`` model evaluations per canvas and
step (DisARM: ``--particles / 2`` antithetic pairs). Pyro's
``TraceGraph_ELBO`` gets the guide with a data-dependent baseline network
on each ``z_pres_t`` site (:class:`guides.air.Baseline`, learning rate
``--baseline-lr``), as Pyro's AIR example; the others get the guide without
it. An estimator that refuses the guide is recorded with its message.
With ``--z-pres-prior-start``, the prior probability of each further object
is annealed during training, as in Pyro's AIR example: held at that value for
``--anneal-hold`` steps, then decayed geometrically to ``--z-pres-prior`` over
``--anneal-steps`` steps (a high value first keeps every step's object on, so
that the guide learns where objects are; the low final value then turns off
the objects that explain nothing). The held-out ELBO is always that of the
final model (``--z-pres-prior``).

Every ``--eval-every`` steps, on the first ``--eval-size`` held-out
canvases: the count accuracy (how often one draw of the guide has as many
objects, :math:`\\sum_t z^{pres}_t`, as the canvas has digits; averaged over
``--eval-particles`` draws) and the held-out ELBO (the mean log-weight of
``--eval-particles`` draws per canvas, the same for every estimator); at
the end the same on all held-out canvases, with the confusion matrix and
the bound :math:`L_K` of the same draws. The gradient variance of the
presence head (the weights and bias of the linear layer that gives every
``z_pres_t`` logit) is the sum over its elements of the variance, over
``--variance-draws`` draws, of the gradient of the loss per canvas on a fixed
batch of ``--batch-size`` training canvases
(:func:`pyro_vi.diagnostics.gradient_statistics`), taken for every
estimator at two fixed points of each seed: the shared initial weights and
the weights that the first estimator (the reference) ends with. ms/step: the
medians over the training steps (evaluations excluded) of the process's CPU
time and of the wall time.

Writes ``curves.png`` (count accuracy and held-out ELBO against steps and
training CPU time), ``reconstructions.png`` (held-out canvases with the inferred
windows, and the model's reconstructions), ``results.json``; each run's
checkpoints go to ``OUT/checkpoints`` and finished runs to ``OUT/runs``, so
that ``--resume`` continues a killed study where it stopped.

    python -m experiments.air --data-dir ../shared/data/mnist --out results/air
"""

import base64
import functools
import math
import os
import time

import numpy as np
import pyro
import torch
from pyro.infer import TraceGraph_ELBO
from pyro.optim import Adam

from experiments import _cli, _runs
from experiments._figures import band_note, coinciding, plt, save_figure, seed_band
from experiments._markdown import run_line, table
from experiments._results import fmt, spread
from experiments._study import Study
from guides.air import Baseline, GuideNet, guide, log_weights
from models.air import AIRConfig, Decoder, PriorSchedule, model
from models.multi_mnist import MultiMnistConfig, load_multi_mnist
from pyro_vi import (
    AutoELBO,
    DisARMELBO,
    ImportanceWeightedELBO,
    RaoBlackwellELBO,
    ReinforceLeaveOneOutELBO,
    gradient_statistics,
    load_checkpoint,
)
from pyro_vi.training import NonFiniteError, OutOfSupportError, fit

KW = _cli.VECTORIZED  # a short name: one line per estimator in estimators()
PRESENCE = ("guide$$$presence.weight", "guide$$$presence.bias")
EVAL_SEED = 12345  # the evaluation draws, not a run seed
VARIANCE_SEED = 54321
SHOWN = 2  # held-out canvases of each count in reconstructions.png
CURVES = ("step", "train_seconds", "train_cpu_seconds", "count_accuracy", "elbo")
COLORS = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:gray"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def plain(make):
    """An estimator run on the guide without baselines."""
    return _cli.Estimator(make, lambda guides: guides["plain"])


def with_baseline(make):
    """An estimator run on the guide whose ``z_pres`` sites carry the baseline network."""
    return _cli.Estimator(make, lambda guides: guides["baseline"])


def estimators(particles):
    """The :data:`~experiments._cli.Registry` of the study, the reference
    first: label -> Estimator, each with ``particles`` model evaluations per
    canvas and step. One line per estimator."""
    return {
        "TraceGraph_ELBO + baseline": with_baseline(lambda: TraceGraph_ELBO(particles, **KW)),
        "RaoBlackwellELBO(pathwise)": plain(lambda: RaoBlackwellELBO(particles, pathwise=True, **KW)),
        "ReinforceLeaveOneOutELBO(pathwise)": plain(lambda: ReinforceLeaveOneOutELBO(particles, pathwise=True, **KW)),
        "ImportanceWeightedELBO(vimco)": plain(lambda: ImportanceWeightedELBO(particles, "vimco", **KW)),
        "DisARMELBO": plain(lambda: DisARMELBO(particles // 2, **KW)),
        "AutoELBO": plain(lambda: AutoELBO(particles, **KW)),
    }


def styles(labels):
    """A colour and marker per estimator, in registry order."""
    return {
        label: dict(color=COLORS[i % len(COLORS)], marker=MARKERS[i % len(MARKERS)]) for i, label in enumerate(labels)
    }


# ----------------------------------------------------------------------------
# data, networks, evaluation


def configs(args):
    data = MultiMnistConfig(
        canvas_size=args.canvas_size,
        digit_size=args.digit_size,
        max_digits=args.max_digits,
        num_train=args.num_train,
        num_test=args.num_test,
        seed=args.data_seed,
    )
    air = AIRConfig(
        canvas_size=args.canvas_size,
        window_size=args.digit_size,
        max_steps=args.max_steps,
        z_what_dim=args.z_what_dim,
        z_pres_prior=args.z_pres_prior,  # the model evaluated; training may anneal it (PriorSchedule)
        likelihood_sd=args.likelihood_sd,
    )
    return data, air


def schedule(args):
    return PriorSchedule(args.z_pres_prior, args.z_pres_prior_start, args.anneal_hold, args.anneal_steps)


class Networks:
    """The decoder, the guide's networks and the baselines of one run, built
    from the seed (the same initial weights for every estimator); the model
    trained at :attr:`step` (its prior of ``schedule(step)``; the model
    evaluated has the final prior) and the two guides (``"plain"``,
    ``"baseline"``), as functions of the canvases."""

    def __init__(self, config, seed, schedule):
        pyro.clear_param_store()
        pyro.set_rng_seed(seed)
        self.decoder, self.guide, self.baseline = Decoder(config), GuideNet(config), Baseline(config)
        self.schedule, self.step = schedule, 0
        self.guides = {
            "plain": functools.partial(guide, net=self.guide),
            "baseline": functools.partial(guide, net=self.guide, baseline=self.baseline),
        }

    def training_model(self, images):
        return model(images, self.decoder, z_pres_prior=self.schedule(self.step))

    def load(self, params):
        """Loads a checkpoint's params into the networks, and any other saved
        param (Pyro's decaying-average baselines) into the param store."""
        modules = {"decoder": self.decoder, "guide": self.guide, "baseline": self.baseline}
        for prefix, module in modules.items():
            head = prefix + "$$$"
            state = {k[len(head) :]: r["value"] for k, r in params.items() if k.startswith(head)}
            if state:  # a run without baselines has none of theirs
                module.load_state_dict(state)
        for name, record in params.items():
            if "$$$" not in name:
                pyro.get_param_store()[name] = record["value"].clone()


def evaluate(nets, images, true_counts, num_particles, max_steps, chunk=200):
    """Count accuracy (one guide draw, averaged over the draws), the mean
    ELBO and bound L_K per canvas, and the confusion matrix (rows: true
    count, columns: inferred count, fractions of the draws)."""
    elbos, bounds, hits = [], [], 0.0
    confusion = torch.zeros(int(true_counts.max()) + 1, max_steps + 1, dtype=torch.float64)
    with _runs.fixed_rng(EVAL_SEED):
        for first in range(0, len(images), chunk):
            x, truth = images[first : first + chunk], true_counts[first : first + chunk]
            log_w, counts, *_ = log_weights(x, nets.decoder, nets.guide, num_particles)
            elbos.append(log_w.mean(0))
            bounds.append(torch.logsumexp(log_w, 0) - math.log(num_particles))
            hits += float((counts == truth).double().mean(0).sum())
            confusion.index_put_(
                (truth.expand_as(counts).reshape(-1), counts.reshape(-1)), confusion.new_ones(()), True
            )
    confusion /= confusion.sum(1, keepdim=True).clamp(min=1)
    return {
        "count_accuracy": hits / len(images),
        "elbo": float(torch.cat(elbos).mean()),
        "bound": float(torch.cat(bounds).mean()),
        "confusion": confusion.tolist(),
    }


def encode_image(array):
    """A ``[0, 1]`` image as base64 of its bytes at 8 bits (results.json stays small)."""
    return base64.b64encode((np.clip(array, 0, 1) * 255).round().astype(np.uint8).tobytes()).decode("ascii")


def decode_image(text, size):
    return np.frombuffer(base64.b64decode(text), dtype=np.uint8).reshape(size, size) / 255.0


def shown_indices(counts):
    """The first :data:`SHOWN` held-out canvases of each count."""
    return torch.cat([torch.nonzero(counts == k).flatten()[:SHOWN] for k in range(int(counts.max()) + 1)])


def reconstructions(nets, images):
    """The first draw of the guide for ``images``: each canvas's windows
    (``z_where`` of the present objects) and the model's mean canvas."""
    with _runs.fixed_rng(EVAL_SEED):
        _, counts, canvas, z_pres, z_where = log_weights(images, nets.decoder, nets.guide, 1)
    return [
        {
            "reconstruction": encode_image(canvas[0, n].numpy()),
            "windows": [z_where[t][0, n].tolist() for t in range(len(z_pres)) if z_pres[t][0, n] > 0],
        }
        for n in range(len(images))
    ]


# ----------------------------------------------------------------------------
# one run


def run_name(label, seed):
    return "{}-seed{}".format(_runs.safe_name(label).strip("_"), seed)


def fingerprint(label, seed, args):
    """What a checkpoint must share with this call to be resumed (not
    ``--steps``: a run can be extended)."""
    keys = (
        "canvas_size digit_size max_digits num_train num_test data_seed max_steps z_what_dim z_pres_prior "
        "z_pres_prior_start anneal_hold anneal_steps "
        "likelihood_sd batch_size particles lr baseline_lr eval_every eval_size eval_particles"
    ).split()
    return dict({k: getattr(args, k) for k in keys}, estimator=label, seed=seed)


def refusal(elbo, nets, guide_fn, batch):
    """The estimator's ``ValueError`` for this model and guide (its message),
    or ``None`` when it takes them; draws nothing from the global RNG."""
    with _runs.fixed_rng(0):
        try:
            elbo.loss(nets.training_model, guide_fn, batch)
        except ValueError as error:
            return str(error)
    return None


def train(label, estimator, seed, study, args, path):
    """Trains one estimator from the seed's initial weights (checkpoints in
    ``path``); returns the run's record."""
    nets = Networks(study["config"], seed, schedule(args))
    guide_fn = estimator.guide(nets.guides)
    elbo = estimator.make()
    refused = refusal(elbo, nets, guide_fn, study["train"].images[: args.batch_size])
    if refused:
        print(f"{label} seed {seed}: refused: {refused}", flush=True)
        return dict(estimator=label, seed=seed, refused=refused)
    test = study["test"]
    watch = (test.images[: args.eval_size], test.counts[: args.eval_size])
    state = {}
    clock = {}

    def record(step):
        state["step"].append(step)
        state["train_seconds"].append(float(sum(state["step_seconds"])))
        state["train_cpu_seconds"].append(float(sum(state["step_cpu_seconds"])))
        result = evaluate(nets, *watch, args.eval_particles, args.max_steps)
        accuracy, heldout = result["count_accuracy"], result["elbo"]
        state["count_accuracy"].append(accuracy)
        state["elbo"].append(heldout)
        print(
            f"{label} seed {seed} step {step:>5}: count accuracy {accuracy:.3f}, held-out ELBO {heldout:.1f}",
            flush=True,
        )

    def before_training(epoch, losses):
        if epoch == 0:
            state.update({key: [] for key in CURVES + ("step_seconds", "step_cpu_seconds")})
            record(0)

    def callback(step, loss):
        nets.step = step  # the prior of the next step
        state["step_seconds"].append(time.perf_counter() - clock["wall"])
        state["step_cpu_seconds"].append(time.process_time() - clock["cpu"])
        if step % args.eval_every == 0 or step == args.steps:
            record(step)
        clock.update(wall=time.perf_counter(), cpu=time.process_time())

    optim = Adam(lambda module, name: {"lr": args.baseline_lr if module == "baseline" else args.lr})
    if args.resume and os.path.exists(path):
        nets.step = load_checkpoint(path)["step"]
    failure = None
    start = time.perf_counter()
    clock.update(wall=time.perf_counter(), cpu=time.process_time())
    try:
        fit(
            nets.training_model,
            guide_fn,
            elbo,
            optim,
            data=_runs.Batches(study["train"].images, args.batch_size, seed + 1, drop_last=True),
            num_steps=args.steps,
            callback=callback,
            epoch_callback=before_training,
            state=state,
            fingerprint=fingerprint(label, seed, args),
            **_runs.checkpointing(args, path),
            progress=False,
        )
    except (NonFiniteError, OutOfSupportError) as error:  # a diverged run is a result too
        failure = str(error).splitlines()[0]
        print(f"{label} seed {seed} stopped: {failure}", flush=True)
    final = evaluate(nets, test.images, test.counts, args.eval_particles, args.max_steps)
    shown = reconstructions(nets, test.images[shown_indices(test.counts)])
    return dict(
        estimator=label,
        seed=seed,
        failure=failure,
        curves={k: state[k] for k in CURVES},
        final=final,
        ms_per_step=1e3 * float(np.median(state["step_seconds"])) if state["step_seconds"] else None,
        cpu_ms_per_step=1e3 * float(np.median(state["step_cpu_seconds"])) if state["step_cpu_seconds"] else None,
        wall_seconds=time.perf_counter() - start,
        shown=shown,
    )


# ----------------------------------------------------------------------------
# gradient variance at fixed points


def presence_gradients(estimator, nets, batch, draws):
    """Mean and variance over ``draws`` of the gradient of the loss per
    canvas with respect to the presence head's elements, at the current
    weights; ``None`` for an estimator that refuses the guide."""
    elbo = estimator.make()
    try:
        stats = gradient_statistics(
            elbo, nets.training_model, estimator.guide(nets.guides), batch, num_draws=draws, params=list(PRESENCE)
        )
    except ValueError:
        return None
    scale = len(batch)
    mean = torch.cat([stats[n].mean.reshape(-1) for n in PRESENCE]) / scale
    variance = torch.cat([stats[n].variance.reshape(-1) for n in PRESENCE]) / scale**2
    return {"mean": mean, "variance": variance, "draws": draws}


def agreement(a, b):
    """The largest |z| over the elements of two gradient estimates' means
    (the difference over its standard error): about 3 for unbiased
    estimators of the same gradient."""
    se = (a["variance"] / a["draws"] + b["variance"] / b["draws"]).sqrt()
    z = (a["mean"] - b["mean"]).abs() / se.clamp(min=1e-30)
    return float(z.max())


def variance_point(registry, nets, batch, draws, seed):
    """Total variance of every estimator's presence-head gradient at the
    networks' current weights, and the agreement of each one's mean with the
    reference's (the first estimator; for estimators of the ELBO)."""
    grads = {}
    for i, (label, estimator) in enumerate(registry.items()):
        with _runs.fixed_rng(VARIANCE_SEED + 1000 * seed + i):
            grads[label] = presence_gradients(estimator, nets, batch, draws)
    reference = next(iter(registry))
    out = {}
    for label, g in grads.items():
        if g is None:
            out[label] = None
            continue
        bound = isinstance(registry[label].make(), ImportanceWeightedELBO)
        out[label] = {
            "total_variance": float(g["variance"].sum()),
            "objective": "L_K" if bound else "ELBO",
            "max_z_vs_reference": None
            if bound or label == reference or grads[reference] is None
            else agreement(g, grads[reference]),
        }
    return out


def variances(registry, seed, study, args, reference_checkpoint):
    """:func:`variance_point` at the seed's initial weights and at the
    reference run's final weights (when its checkpoint is there)."""
    batch = study["train"].images[: args.batch_size]
    nets = Networks(study["config"], seed, schedule(args))
    result = {"start": variance_point(registry, nets, batch, args.variance_draws, seed)}
    if reference_checkpoint and os.path.exists(reference_checkpoint):
        nets = Networks(study["config"], seed, schedule(args))
        saved = load_checkpoint(reference_checkpoint)
        nets.load(saved["params"])
        nets.step = saved["step"]
        result["trained"] = variance_point(registry, nets, batch, args.variance_draws, seed)
    return result


# ----------------------------------------------------------------------------
# the study


def run(args):
    registry = _runs.chosen(estimators(args.particles), args.estimators)
    settings = fingerprint("", 0, args) | {"steps": args.steps, "variance_draws": args.variance_draws}
    runs = _runs.SavedRuns(args.out, settings)
    checkpoints = [runs.checkpoint(run_name(label, seed)) for seed in args.seeds for label in registry]
    _runs.existing_checkpoints(args, checkpoints, error=lambda text: SystemExit("air: " + text))
    os.makedirs(os.path.join(args.out, "checkpoints"), exist_ok=True)
    data_config, config = configs(args)
    train_set, test_set = load_multi_mnist(args.data_dir, data_config)
    study = {"train": train_set, "test": test_set, "config": config}
    print("data: {}; {}".format(train_set.info["mnist_source"], train_set.info["mnist_split"]), flush=True)
    records, variance = [], {}
    for seed in args.seeds:
        for label, estimator in registry.items():
            name = run_name(label, seed)
            record = runs.finished(name) if args.resume else None
            if record is None:
                record = runs.save(name, train(label, estimator, seed, study, args, runs.checkpoint(name)))
            records.append(record)
        name = f"variance-seed{seed}"
        record = runs.finished(name) if args.resume else None
        if record is None:
            reference = runs.checkpoint(run_name(next(iter(registry)), seed))
            record = runs.save(name, variances(registry, seed, study, args, reference))
        variance[seed] = record
    return summarize(records, variance, registry, args, study)


def summarize(records, variance, registry, args, study):
    """The results: per estimator the final numbers over seeds, the curves
    of every seed, the refusals and failures, and what the figures need."""
    rows = {}
    for label in registry:
        runs = [r for r in records if r["estimator"] == label]
        refused = [r["refused"] for r in runs if r.get("refused")]
        row = {"seeds": [r["seed"] for r in runs]}
        if refused:
            row["refused"] = refused[0]
        trained = [r for r in runs if not r.get("refused")]
        if trained:
            row.update(
                **{key: spread([r["final"][key] for r in trained]) for key in ("count_accuracy", "elbo", "bound")},
                **{key: spread([r[key] for r in trained]) for key in ("ms_per_step", "cpu_ms_per_step")},
                confusion=np.mean([r["final"]["confusion"] for r in trained], 0).tolist(),
                failures={str(r["seed"]): r["failure"] for r in trained if r["failure"]},
                curves={str(r["seed"]): r["curves"] for r in trained},
                shown=trained[0]["shown"],
            )
        for point in ("start", "trained"):
            values = [variance[s].get(point, {}).get(label) for s in args.seeds]
            values = [v for v in values if v]
            if values:
                row["variance_" + point] = spread([v["total_variance"] for v in values])
                zs = [v["max_z_vs_reference"] for v in values if v["max_z_vs_reference"] is not None]
                row["max_z_" + point] = max(zs) if zs else None
                row["objective"] = values[0]["objective"]
        rows[label] = row
    test = study["test"]
    return {
        "args": {k: v for k, v in vars(args).items()},
        "data": dict(test.info, train_info=study["train"].info, num_train=len(study["train"]), num_test=len(test)),
        "shown": {
            "images": [encode_image(img.numpy()) for img in test.images[shown_indices(test.counts)]],
            "counts": test.counts[shown_indices(test.counts)].tolist(),
        },
        "estimators": rows,
        "run_seconds": sum(r.get("wall_seconds", 0.0) for r in records),
    }


# ----------------------------------------------------------------------------
# figures and README


def figures(results, out):
    plot_curves(results, os.path.join(out, "curves.png"))
    plot_reconstructions(results, os.path.join(out, "reconstructions.png"))


def plot_curves(results, path):
    rows = {label: row for label, row in results["estimators"].items() if "curves" in row}
    args = results["args"]
    style = styles(results["estimators"])
    num_seeds = len(results["run"]["seeds"]) if "run" in results else 1
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    chance = 1 / (args["max_digits"] + 1)
    for label, row in rows.items():
        seeds = list(row["curves"].values())
        length = min(len(c["step"]) for c in seeds)
        steps = np.array(seeds[0]["step"][:length])
        seconds = np.mean([c["train_cpu_seconds"][:length] for c in seeds], 0)
        every = max(1, length // 8)
        kwargs = dict(style[label], markevery=(list(rows).index(label) % every, every), markersize=5, lw=1.4)
        for col, key in enumerate(("count_accuracy", "elbo")):
            curves = [c[key][:length] for c in seeds]
            seed_band(axes[0, col], steps, curves, label=label, **kwargs)
            seed_band(axes[1, col], seconds, curves, label=label, **kwargs)
    for row in range(2):
        axes[row, 0].axhline(
            chance, color="k", ls=":", lw=1, label=f"chance: one count for every canvas ({chance:.2f})"
        )
        axes[row, 0].set_ylabel("count accuracy (held-out, one guide draw)")
        axes[row, 1].set_ylabel("held-out ELBO per canvas (nats, {} draws)".format(args["eval_particles"]))
        for col in range(2):
            axes[row, col].set_xlabel(
                "training step" if row == 0 else "training CPU time (s, 1 thread, evaluations excluded)"
            )
            axes[row, col].grid(alpha=0.3)
    axes[0, 0].set_ylim(0, 1)
    axes[1, 0].set_ylim(0, 1)
    accuracy = {label: np.mean([c["count_accuracy"] for c in row["curves"].values()], 0) for label, row in rows.items()}
    same = coinciding(accuracy)
    if same:
        axes[0, 0].set_title(
            "identical runs, one drawn over the other: "
            + "; ".join(f"{later} = {earlier}" for later, earlier in same.items()),
            fontsize=7,
            wrap=True,
        )
    fig.suptitle(
        "AIR on {0}x{0} multi-MNIST, evaluated on {1} held-out canvases ({2})".format(
            args["canvas_size"], args["eval_size"], band_note(num_seeds)
        )
    )
    handles, labels = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.025 * (1 + len(labels) // 3), 1, 1))
    save_figure(fig, path)


def plot_reconstructions(results, path):
    rows = {label: row for label, row in results["estimators"].items() if "shown" in row}
    args = results["args"]
    size = args["canvas_size"]
    images = [decode_image(text, size) for text in results["shown"]["images"]]
    fig, axes = plt.subplots(
        len(rows) + 1, len(images), figsize=(1.7 * len(images), 1.8 * (len(rows) + 1)), squeeze=False
    )
    for col, image in enumerate(images):
        axes[0, col].imshow(image, cmap="gray", vmin=0, vmax=1)
        count = results["shown"]["counts"][col]
        axes[0, col].set_title("{} digit{}".format(count, "s"[: count != 1]), fontsize=8)
    axes[0, 0].set_ylabel("held-out\ncanvas", fontsize=8)
    for r, (label, row) in enumerate(rows.items(), start=1):
        for col, shown in enumerate(row["shown"]):
            ax = axes[r, col]
            ax.imshow(decode_image(shown["reconstruction"], size), cmap="gray", vmin=0, vmax=1)
            for t, (s, a, b) in enumerate(shown["windows"]):
                # the window spans 2 / s of the canvas in [-1, 1] coordinates, centred at (-a/s, -b/s)
                half, cx, cy = size / s / 2, (1 - a / s) * size / 2, (1 - b / s) * size / 2
                ax.add_patch(
                    plt.Rectangle(
                        (cx - half - 0.5, cy - half - 0.5), 2 * half, 2 * half, fill=False, color=COLORS[t], lw=1.2
                    )
                )
            ax.set_title("inferred {}".format(len(shown["windows"])), fontsize=8)
        axes[r, 0].set_ylabel(label.replace(" + ", "\n+ ").replace("(", "\n("), fontsize=7)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(
        "Held-out canvases (top) and each estimator's reconstruction with its inferred windows\n"
        "(one guide draw, first seed; box colour = step: blue 1st, orange 2nd, green 3rd)",
        fontsize=9,
    )
    save_figure(fig, path)


def readme_block(results):
    args = results["args"]
    columns = [  # header, key of the row, format
        ("count accuracy", "count_accuracy", ".3f"),
        ("held-out ELBO", "elbo", ".1f"),
        ("grad. variance at start", "variance_start", ".3g"),
        ("at trained weights", "variance_trained", ".3g"),
        ("ms/step: CPU", "cpu_ms_per_step", ".0f"),
        ("wall", "ms_per_step", ".0f"),
    ]
    body, refusals = [], []
    for label, row in results["estimators"].items():
        if "count_accuracy" not in row:
            body.append([label, "refused"] + [""] * 5)
            refusals.append(row["refused"])
        else:
            body.append([label] + [fmt(row[key], spec) if key in row else "" for _, key, spec in columns])
    lines = [table(["estimator"] + [header for header, _, _ in columns], body)]
    anneal = ""
    if args.get("z_pres_prior_start") is not None:
        anneal = " (annealed from {z_pres_prior_start:g}: held {anneal_hold} steps, then decayed over {anneal_steps})"
    lines.append(
        (
            "Mean ± std over seeds. {canvas_size}x{canvas_size} canvases with 0 to {max_digits} digits of "
            "{digit_size}x{digit_size} pixels, {num_train} training and {num_test} held-out canvases; at most "
            "{max_steps} objects, prior probability {z_pres_prior:g} of each further one" + anneal + "; {steps} steps "
            "of Adam (lr {lr}), batch {batch_size}, {particles} model evaluations per canvas and step. Count "
            "accuracy: one guide draw per held-out canvas (chance {chance:.2f}). ELBO: {eval_particles} draws per "
            "held-out canvas. Gradient variance: the presence head's gradient per canvas, summed over its elements, "
            "{variance_draws} draws on one training batch, at the seed's initial weights and at the weights the "
            "first row ends with. ms/step: medians over the training steps, of the process's CPU time and of the "
            "wall time (one torch thread, on a machine shared with other jobs: the wall time varies with their "
            "load).\n"
        ).format(**args, chance=1 / (args["max_digits"] + 1))
    )
    bounds = [label for label, row in results["estimators"].items() if row.get("objective") == "L_K"]
    if bounds:
        lines.append(
            "{} train the bound L_K with K = {}: their gradient variance is that of L_K's gradient, not the "
            "ELBO's.\n".format(" and ".join(bounds), args["particles"])
        )
    for point, where in (("start", "at the initial weights"), ("trained", "at the trained weights")):
        agreement = {
            label: row["max_z_" + point]
            for label, row in results["estimators"].items()
            if row.get("max_z_" + point) is not None
        }
        if agreement:
            lines.append(
                "Mean presence-head gradient against the first row's {}, largest |z| over the head's elements and "
                "the seeds: {}.\n".format(where, ", ".join(f"{label} {z:.1f}" for label, z in agreement.items()))
            )
    lines.append(
        "About 3 to 4 is expected of unbiased estimators of the same gradient with this number of draws and "
        "elements, where the draws show each element's variance.\n"
    )
    for text in refusals:
        lines.append(f"Refused: {text}\n")
    lines.append(run_line(results))
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# command line


def parser():
    p = _cli.parser(
        __doc__,
        out="results/air",
        seeds=(0, 1, 2),
        seeds_help="a seed sets the initial weights, the batches and the particles; the canvases are fixed by "
        "--data-seed",
        data_seed=True,
    )
    flag, count, probability = p.add_argument, _cli.positive_int, _cli.real(minimum=0, maximum=1, strict_minimum=True)
    flag("--data-dir", help="MNIST IDX files (default: models.mnist's data dir)")
    flag("--canvas-size", type=count, default=32, help="canvas side in pixels")
    flag("--digit-size", type=count, default=16, help="digit (and window) side in pixels (MNIST's are resized)")
    flag("--max-digits", type=_cli.nonnegative_int, default=2, help="the most digits on a canvas")
    flag("--num-train", type=count, default=3000, help="training canvases")
    flag("--num-test", type=count, default=1000, help="held-out canvases")
    flag("--max-steps", type=count, default=3, help="T, the most objects the model has")
    flag("--z-what-dim", type=count, default=20, help="dimension of z_what")
    flag(
        "--z-pres-prior",
        type=probability,
        default=0.01,
        help="the model's prior probability of each further object (after annealing)",
    )
    flag(
        "--z-pres-prior-start",
        type=probability,
        default=0.5,
        help="anneal the prior from this value (the same as --z-pres-prior: no annealing)",
    )
    flag("--anneal-hold", type=_cli.nonnegative_int, default=500, help="steps at --z-pres-prior-start before it decays")
    flag(
        "--anneal-steps",
        type=count,
        default=1000,
        help="steps over which the prior decays geometrically to --z-pres-prior",
    )
    flag("--likelihood-sd", type=_cli.positive_real, default=0.3, help="pixel noise of the model")
    flag("--steps", type=count, default=3000, help="training steps per run")
    flag("--batch-size", type=_cli.integer(minimum=2), default=32, help="canvases per step")
    flag(
        "--particles",
        type=_cli.integer(minimum=4),
        default=4,
        help="model evaluations per canvas and step (even, >= 4: DisARM draws half as many pairs, the "
        "leave-one-out control variates need 3)",
    )
    flag("--lr", type=_cli.positive_real, default=1e-3, help="Adam's learning rate")
    flag("--baseline-lr", type=_cli.positive_real, default=1e-2, help="the baseline networks' learning rate")
    flag("--eval-every", type=count, default=250, help="steps between evaluations")
    flag("--eval-size", type=count, default=500, help="held-out canvases of each evaluation")
    flag("--eval-particles", type=count, default=10, help="guide draws per held-out canvas")
    flag("--variance-draws", type=_cli.integer(minimum=2), default=20, help="gradient draws per variance (>= 2)")
    flag("--checkpoint-every", type=count, default=250, help="steps between checkpoints")
    _runs.estimators_argument(
        p,
        estimators(4),
        "estimators to run (default: all); the first one run is the reference of the gradient variance",
    )
    _runs.restart_arguments(
        p, "continue the runs saved under OUT", "start over, replacing the runs saved under OUT", exclusive=False
    )
    return p


def check(args):
    _cli.even(args, "particles", "DisARM draws --particles / 2 pairs")
    if args.digit_size > args.canvas_size:
        raise ValueError(f"argument --digit-size: {args.digit_size} is larger than --canvas-size {args.canvas_size}")
    _cli.at_most(args, "eval_size", "num_test")
    _cli.at_most(args, "batch_size", "num_train")
    if args.resume and args.overwrite:
        raise ValueError("argument --overwrite: not allowed with --resume (one continues the runs, one replaces them)")


STUDY = Study("air", parser, run, figures, readme_block=readme_block, check=check)

if __name__ == "__main__":
    STUDY.main()
