"""The semi-supervised VAE (Kingma et al. 2014, M2) on MNIST with 3,000
labelled images: the gradient of the unlabelled ELBO by exact enumeration of
the label against sampled estimators.

Model and guide: :mod:`models.ssvae`, :mod:`guides.ssvae`. The labelled
images are ``--labelled`` training images, the same number of each digit,
chosen by ``--split-seed``; the other training images are unlabelled, and the
label of an unlabelled image is a latent Categorical. Each step takes one batch
of ``--batch-size`` dynamically binarized images, labelled or unlabelled: an
epoch visits every image once, with the labelled batches spread evenly among
the unlabelled ones (Pyro's example does the same). The loss is Kingma's
:math:`-J^\\alpha` (:class:`guides.ssvae.SemiSupervisedLoss`): a labelled
batch gets ``Trace_ELBO`` plus :math:`-\\alpha \\sum \\log q(y|x)` in every
run, an unlabelled batch the estimator under study, so runs differ only in the
gradient of the unlabelled ELBO:

- ``TraceEnum_ELBO``: Pyro's exact sum over the K = 10 classes
  (``config_enumerate`` on the guide's y), z reparameterized (one sample per
  class);
- ``RaoBlackwellELBO(pathwise=True)``: z pathwise (sticking the landing), y by
  the Rao-Blackwellized score function with leave-one-out control variates,
  ``--particles`` samples;
- ``ReinforceLeaveOneOutELBO(pathwise=True)``: z pathwise, y by REINFORCE with
  the leave-one-out baseline, ``--particles`` samples;
- ``AutoELBO``: its own choice per site, here z pathwise and y by REINFORCE
  leave-one-out: the same estimator as the one above (its curves lie on it).

Every estimator starts from the same weights and sees the same batches for a
seed, for ``--steps`` steps. Every ``--eval-every`` steps: the test accuracy of
``argmax q(y|x)`` on the 10,000 test images (binarized once) and the held-out
ELBO (exact in y, one z per class, the same noise for every run and
evaluation) on ``--elbo-size`` of them; at the end the held-out ELBO of all test
images. Time per step: from the start of the step's ``loss_and_grads`` to the
end of its optimizer step, wall and CPU time of the one torch thread (the CPU
time is what the time axes show: the machine is shared). The accuracy at equal
time is read from each run's curve (linear interpolation between evaluations)
at the training time of the fastest estimator's whole run.

Writes ``steps.png`` and ``time.png`` (accuracy and held-out ELBO against steps
and against training time) and ``results.json``; each run has a checkpoint in
``checkpoints/`` (``--resume`` continues it) and, once finished, its record in
``runs/`` (``--resume`` skips it).

The defaults, 3 seeds x 4 estimators x 9,000 steps, took 1.7 CPU hours of
one torch thread in the committed run (CPU time per step, mean of the seeds:
41 ms for TraceEnum_ELBO, 111 ms for RaoBlackwellELBO, 45 ms for
ReinforceLeaveOneOutELBO and 43 ms for AutoELBO, with 10 particles):

    python -m experiments.ssvae --data-dir ../shared/data/mnist --out results/ssvae
"""

import functools
import math
import os
import time

import numpy as np
import pyro
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from pyro.optim import Adam

import pyro_vi
from experiments import _cli, _runs
from experiments._cli import VECTORIZED
from experiments._figures import band_note, coinciding, legend_outside, plt, save_figure, seed_band
from experiments._markdown import run_line, table
from experiments._results import fmt, spread
from experiments._study import Study
from guides.ssvae import Classifier, Encoder, SemiSupervisedLoss, classify, guide, unlabelled_elbo
from models.mnist import binarize, load_mnist
from models.ssvae import Decoder, SemiSupervisedBatches, SSVAEConfig, labelled_split, model
from pyro_vi.training import NonFiniteError, OutOfSupportError, fit

EVAL_SEED = 12345  # the test binarization, the held-out subset and its z noise: not a run seed
REFERENCE = "TraceEnum_ELBO"
CURVE = ("step", "cpu_seconds", "wall_seconds", "accuracy", "heldout_elbo")  # a run's evaluations
AUTO_STYLE = dict(color="tab:green", ls=":", marker="D")


def estimators(particles) -> _cli.Registry:
    """The estimators of the unlabelled ELBO, label -> :class:`~experiments._cli.Estimator`."""
    return {
        REFERENCE: _cli.Estimator(
            lambda: TraceEnum_ELBO(max_plate_nesting=1),
            lambda g: config_enumerate(g, "parallel"),
            dict(color="black", ls="-", marker="o"),
        ),
        "RaoBlackwellELBO": _cli.Estimator(
            lambda: pyro_vi.RaoBlackwellELBO(num_particles=particles, pathwise=True, **VECTORIZED),
            # wide and translucent: its held-out ELBO runs within 0.1 nats of leave-one-out's, beneath it
            style=dict(color="tab:purple", ls="-", marker="^", lw=6, alpha=0.35),
        ),
        "ReinforceLeaveOneOutELBO": _cli.Estimator(
            lambda: pyro_vi.ReinforceLeaveOneOutELBO(num_particles=particles, pathwise=True, **VECTORIZED),
            style=dict(color="tab:orange", ls="-.", marker="s"),
        ),
        "AutoELBO": _cli.Estimator(lambda: pyro_vi.AutoELBO(num_particles=particles, **VECTORIZED), style=AUTO_STYLE),
    }


def describe(label, particles):
    """The estimator as the table names it."""
    if label == REFERENCE:
        return "TraceEnum_ELBO (exact sum over the 10 classes)"
    options = "pathwise=True, " if label != "AutoELBO" else ""
    return f"{label}({options}num_particles={particles})"


# ----------------------------------------------------------------------------
# data


def prepare(args):
    """The data of the study: the training images and labels, the split, the
    binarized test set and its held-out-ELBO subset."""
    data = load_mnist(args.data_dir, download=not args.no_download)
    if data.train_labels is None or data.test_labels is None:
        raise SystemExit(f"ssvae: {data.info['source']} has no label files (train-labels-idx1-ubyte, t10k-...)")
    if args.elbo_size > len(data.test):
        raise SystemExit(f"ssvae: --elbo-size {args.elbo_size} is larger than the {len(data.test)} test images")
    labelled, unlabelled = labelled_split(data.train_labels, args.labelled, seed=args.split_seed)
    generator = torch.Generator().manual_seed(EVAL_SEED)
    test = binarize(data.test, generator)
    subset = torch.randperm(len(test), generator=generator)[: args.elbo_size]
    info = dict(
        data.info,
        labelled=len(labelled),
        unlabelled=len(unlabelled),
        labelled_per_class=torch.bincount(data.train_labels[labelled], minlength=10).tolist(),
        test_images=len(test),
        elbo_images=len(subset),
    )
    return dict(
        train=data.train,
        train_labels=data.train_labels,
        labelled=labelled,
        unlabelled=unlabelled,
        mean_pixel=data.train.mean(0),
        test=test,
        test_labels=data.test_labels,
        elbo_test=test[subset],
        info=info,
    )


# ----------------------------------------------------------------------------
# one run


class TimedLoss:
    """``loss`` whose :meth:`elapsed` is the time since the start of the last
    ``loss_and_grads`` (wall and CPU time of this thread): called from
    :func:`~pyro_vi.training.fit`'s step callback, the whole step."""

    def __init__(self, loss):
        self.inner = loss
        self.num_particles = loss.num_particles
        self.labelled = False
        self._wall = self._cpu = None

    def loss(self, model, guide, *args):
        return self.inner.loss(model, guide, *args)

    def loss_and_grads(self, model, guide, *args):
        self.labelled = len(args) > 1
        self._wall, self._cpu = time.perf_counter(), time.thread_time()
        return self.inner.loss_and_grads(model, guide, *args)

    def elapsed(self):
        return time.perf_counter() - self._wall, time.thread_time() - self._cpu


def settings(args):
    """What a checkpoint or a finished run must share with this call to be
    reused (not ``--steps``: a run can be extended)."""
    keys = "labelled split_seed batch_size particles lr alpha hidden_dim latent_dim eval_every elbo_size".split()
    return {k: getattr(args, k) for k in keys}


def data_fingerprint(study):
    """The data a run was trained on, as a checkpoint compares them."""
    return {
        "num_labelled": len(study["labelled"]),
        "num_unlabelled": len(study["unlabelled"]),
        "labelled_sum": int(study["labelled"].sum()),
        "train_pixel_sum": round(float(study["train"].double().sum()), 3),
        "num_test": len(study["test"]),
    }


def run_name(label, seed):
    return f"{label}-seed{seed}"


def evaluate(decoder, encoder, classifier, study, args):
    """Test accuracy and mean held-out ELBO per image (the same noise every time)."""
    accuracy = (classify(study["test"], classifier) == study["test_labels"]).double().mean().item()
    generator = torch.Generator().manual_seed(EVAL_SEED)
    elbo = unlabelled_elbo(study["elbo_test"], decoder, encoder, classifier, generator=generator).mean().item()
    return accuracy, elbo


def train(label, estimator, seed, study, args, path):
    """Trains one run through :func:`~pyro_vi.training.fit` (from its
    checkpoint ``path`` with ``--resume``); returns its record."""
    config = SSVAEConfig(hidden_dim=args.hidden_dim, latent_dim=args.latent_dim)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)  # the same initial weights for every estimator
    decoder, encoder, classifier = Decoder(config, study["mean_pixel"]), Encoder(config), Classifier(config)
    model_fn = functools.partial(model, decoder=decoder)
    guide_fn = estimator.guide(functools.partial(guide, encoder=encoder, classifier=classifier))
    loss = TimedLoss(SemiSupervisedLoss(estimator.make(), classifier, args.alpha))
    batches = SemiSupervisedBatches(
        study["train"], study["train_labels"], study["labelled"], study["unlabelled"], args.batch_size, seed
    )
    state = {}

    def record_evaluation(step):
        accuracy, elbo = evaluate(decoder, encoder, classifier, study, args)
        state["step"].append(step)
        state["cpu_seconds"].append(math.fsum(state["step_cpu"]))
        state["wall_seconds"].append(math.fsum(state["step_wall"]))
        state["accuracy"].append(accuracy)
        state["heldout_elbo"].append(elbo)
        print(f"  {label} seed {seed} step {step}: accuracy {accuracy:.4f}, held-out ELBO {elbo:.2f}", flush=True)

    def before_training(epoch, losses):
        if epoch == 0:  # a fresh run: evaluate the initial weights
            state.update({k: [] for k in CURVE + ("step_wall", "step_cpu", "step_labelled")})
            record_evaluation(0)

    def after_step(step, _):
        wall, cpu = loss.elapsed()
        state["step_wall"].append(wall)
        state["step_cpu"].append(cpu)
        state["step_labelled"].append(int(loss.labelled))
        if step % args.eval_every == 0 or step == args.steps:
            record_evaluation(step)

    failure = None
    try:
        result = fit(
            model_fn,
            guide_fn,
            loss,
            Adam({"lr": args.lr}),
            data=batches,
            num_steps=args.steps,
            callback=after_step,
            epoch_callback=before_training,
            state=state,
            fingerprint=dict(settings(args), estimator=label, seed=seed, data=data_fingerprint(study)),
            **_runs.checkpointing(args, path),
            progress=False,
        )
        if result.resumed_from:
            print(f"  {label} seed {seed}: resumed from step {result.resumed_from} of {path}", flush=True)
    except (NonFiniteError, OutOfSupportError) as error:  # a failed run is a result too
        failure = f"{type(error).__name__}: {str(error).splitlines()[0]}"
        print(f"  {label} seed {seed} stopped: {failure}", flush=True)
    labelled = np.array(state["step_labelled"], dtype=bool)
    wall, cpu = np.array(state["step_wall"]), np.array(state["step_cpu"])
    final_elbo = None
    if failure is None:
        generator = torch.Generator().manual_seed(EVAL_SEED)
        final_elbo = unlabelled_elbo(study["test"], decoder, encoder, classifier, generator=generator).mean().item()
    return dict(
        estimator=label,
        seed=seed,
        steps=len(labelled),
        failure=failure,
        ms_per_step={
            kind: {
                "wall": 1e3 * float(np.median(wall[mask])) if mask.any() else None,
                "cpu": 1e3 * float(np.median(cpu[mask])) if mask.any() else None,
            }
            for kind, mask in (("unlabelled", ~labelled), ("labelled", labelled))
        },
        train_cpu_seconds=float(cpu.sum()),
        train_wall_seconds=float(wall.sum()),
        final_accuracy=state["accuracy"][-1],
        final_heldout_elbo_all_test=final_elbo,
        curve={k: state[k] for k in CURVE},
    )


# ----------------------------------------------------------------------------
# the study


def planned(args):
    """``(label, estimator, seed)`` of every run, seed by seed, in the order
    ``--estimators`` names them (its labels are the short names; unlike
    :func:`experiments._runs.chosen`, which keeps the registry's order)."""
    registry = estimators(args.particles)
    chosen = args.estimators or list(registry)
    return [(label, registry[label], seed) for seed in args.seeds for label in chosen]


def aggregate(records, args):
    """Per estimator: the spreads over seeds and the mean curves."""
    by_label = {}
    for r in records:
        by_label.setdefault(r["estimator"], []).append(r)
    finished = {label: [r for r in runs if r["failure"] is None] for label, runs in by_label.items()}
    # the time of the fastest estimator's whole run (mean over its seeds)
    equal_time = min(
        (float(np.mean([r["train_cpu_seconds"] for r in runs])) for runs in finished.values() if runs), default=None
    )
    summary = {}
    for label, runs in by_label.items():
        done = finished[label]
        row = {
            "description": describe(label, args.particles),
            "seeds": [r["seed"] for r in runs],
            "failures": {str(r["seed"]): r["failure"] for r in runs if r["failure"]},
            "final_accuracy": spread([r["final_accuracy"] for r in done]),
            "final_heldout_elbo": spread([r["final_heldout_elbo_all_test"] for r in done]),
            "ms_per_step_wall": spread([r["ms_per_step"]["unlabelled"]["wall"] for r in done]),
            "ms_per_step_cpu": spread([r["ms_per_step"]["unlabelled"]["cpu"] for r in done]),
            "labelled_ms_per_step_cpu": spread([r["ms_per_step"]["labelled"]["cpu"] for r in done]),
            "train_cpu_seconds": spread([r["train_cpu_seconds"] for r in done]),
            "train_wall_seconds": spread([r["train_wall_seconds"] for r in done]),
        }
        if equal_time is not None and done:  # each run's curve read at equal time, linear between evaluations
            for key in ("accuracy", "heldout_elbo", "step"):
                at = [float(np.interp(equal_time, r["curve"]["cpu_seconds"], r["curve"][key])) for r in done]
                row[key + "_at_equal_time"] = spread(at)
        if done:
            length = min(len(r["curve"]["step"]) for r in done)
            row["curve"] = {
                key: np.array([r["curve"][key][:length] for r in done]).tolist()
                for key in ("step", "cpu_seconds", "accuracy", "heldout_elbo")
            }
        summary[label] = row
    return summary, equal_time


def run(args):
    study = prepare(args)
    info = study["info"]
    print(
        "data: {}; {}; {} labelled ({} per class), {} unlabelled".format(
            info["source"], info["split"], info["labelled"], info["labelled_per_class"][0], info["unlabelled"]
        ),
        flush=True,
    )
    os.makedirs(os.path.join(args.out, "checkpoints"), exist_ok=True)
    runs = _runs.SavedRuns(args.out, dict(settings(args), data=data_fingerprint(study)))
    records = []
    for label, estimator, seed in planned(args):
        name = run_name(label, seed)
        saved = runs.finished(name) if args.resume else None
        if saved is not None and saved["steps"] == args.steps:
            print(f"  {label} seed {seed}: finished earlier ({runs.path(name)})", flush=True)
            records.append(saved)
            continue
        start = time.perf_counter()
        record = train(label, estimator, seed, study, args, runs.checkpoint(name))
        record["run_wall_seconds"] = time.perf_counter() - start
        records.append(runs.save(name, record))
    summary, equal_time = aggregate(records, args)
    line = "{:<26} {:>18} {:>18} {:>16} {:>16}".format
    print(line("estimator", "test accuracy", "held-out ELBO", "ms/step (CPU)", "acc. equal time"))
    for label, row in summary.items():
        equal = fmt(row["accuracy_at_equal_time"], ".4f") if "accuracy_at_equal_time" in row else "-"
        accuracy, elbo = fmt(row["final_accuracy"], ".4f"), fmt(row["final_heldout_elbo"], ".2f")
        print(line(label, accuracy, elbo, fmt(row["ms_per_step_cpu"], ".1f"), equal))
    return {
        "args": {k: v for k, v in vars(args).items()},
        "data": info,
        "equal_time_cpu_seconds": equal_time,
        "runs_seconds": sum(r.get("run_wall_seconds", 0.0) for r in records),
        "summary": summary,
    }


# ----------------------------------------------------------------------------
# figures and the README block


def plot_curves(results, x_key, path):
    """Test accuracy and held-out ELBO against ``x_key`` (``"step"`` or
    ``"cpu_seconds"``), each estimator's mean over seeds with its band."""
    summary = {label: row for label, row in results["summary"].items() if "curve" in row}
    registry = estimators(1)  # the styles
    num_seeds = len(results["run"]["seeds"])
    # runs equal step for step (AutoELBO is ReinforceLeaveOneOutELBO here): the
    # later one's markers sit between the earlier one's, so both show
    same = coinciding({label: row["curve"]["accuracy"] for label, row in summary.items()})
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.6))
    for ax, key, ylabel in (
        (axes[0], "accuracy", "test accuracy ({:,} images)".format(results["data"]["test_images"])),
        (axes[1], "heldout_elbo", "held-out ELBO (nats per image)"),
    ):
        for label, row in summary.items():
            curve = row["curve"]
            x = np.mean(curve[x_key], 0)
            every = max(2, len(x) // 8)
            markevery = (every // 2, every) if label in same else every
            style = dict(dict(lw=1.5, ms=4), **(registry[label].style if label in registry else {}))
            seed_band(ax, x, curve[key], label=row["description"], markevery=markevery, **style)
        late = [np.array(row["curve"][key])[:, len(row["curve"][key][0]) // 5 :] for row in summary.values()]
        low = min(float(v.min()) for v in late)
        high = max(float(v.max()) for v in late)
        margin = 0.08 * (high - low) if high > low else 1.0
        ax.set_ylim(low - margin, high + margin)
        ax.set_ylabel(ylabel + ("\n(axis from the values after the first fifth of the run)"))
        if x_key == "step":
            ax.set_xlabel("training step (batches of {} images)".format(results["args"]["batch_size"]))
        else:
            ax.set_xlabel("training time (CPU seconds of the one torch thread)")
            if results["equal_time_cpu_seconds"] is not None:
                ax.axvline(
                    results["equal_time_cpu_seconds"],
                    color="gray",
                    ls=":",
                    lw=1.2,
                    label="equal time: the fastest estimator's whole run",
                )
        ax.grid(alpha=0.3)
    axes[0].set_title("(a) test accuracy of argmax q(y|x)", fontsize=10)
    axes[1].set_title("(b) held-out ELBO, exact in y", fontsize=10)
    fig.suptitle(
        "Semi-supervised VAE (M2), {:,} labelled images: {}{}".format(
            results["data"]["labelled"],
            band_note(num_seeds),
            "".join(
                f"\nidentical runs, step for step (markers interleaved): {later} = {earlier}"
                for later, earlier in same.items()
            ),
        ),
        fontsize=11,
    )
    legend_outside(axes[1], where="right")
    save_figure(fig, path)


def figures(results, out):
    plot_curves(results, "step", os.path.join(out, "steps.png"))
    plot_curves(results, "cpu_seconds", os.path.join(out, "time.png"))


def _points(difference):
    """An accuracy difference in percentage points, rounded to two decimals
    (no "-0.00")."""
    return round(100 * difference, 2) + 0.0


def readme_block(results):
    args = results["args"]
    summary = results["summary"]
    header = [
        "estimator of the unlabelled ELBO",
        "ms per step, CPU (wall)",
        f"test accuracy after {args['steps']} steps",
        "held-out ELBO",
        "test accuracy at equal time",
        "held-out ELBO at equal time",
        "step reached at equal time",
    ]
    at_equal_time = [  # key of the row, format, what a row without it shows
        ("accuracy_at_equal_time", ".4f", "failed"),
        ("heldout_elbo_at_equal_time", ".2f", ""),
        ("step_at_equal_time", ".0f", ""),
    ]
    rows = [
        [
            row["description"],
            "{} ({})".format(fmt(row["ms_per_step_cpu"], ".1f"), fmt(row["ms_per_step_wall"], ".1f")),
            fmt(row["final_accuracy"], ".4f"),
            fmt(row["final_heldout_elbo"], ".2f"),
        ]
        + [fmt(row[key], spec) if key in row else missing for key, spec, missing in at_equal_time]
        for row in summary.values()
    ]
    lines = [table(header, rows)]
    reference = summary.get(REFERENCE)
    if reference is not None and "accuracy_at_equal_time" in reference:
        gaps = [
            "{}: {:+.2f} points after equal steps, {:+.2f} at equal time".format(
                label,
                *(_points(row[k]["mean"] - reference[k]["mean"]) for k in ("final_accuracy", "accuracy_at_equal_time")),
            )
            for label, row in summary.items()
            if label != REFERENCE and "accuracy_at_equal_time" in row
        ]
        lines.append(
            "Test accuracy against TraceEnum_ELBO (mean over seeds, in percentage points): {}. Equal time is "
            "{:.0f} CPU seconds of training, the mean time of the fastest estimator's whole run; the others' "
            "accuracy there is interpolated between their evaluations.\n".format(
                "; ".join(gaps), results["equal_time_cpu_seconds"]
            )
        )
    failures = {label: row["failures"] for label, row in summary.items() if row["failures"]}
    for label, seeds in failures.items():
        lines.append("{} stopped: {}.\n".format(label, "; ".join(f"seed {s}: {text}" for s, text in seeds.items())))
    data = results["data"]
    lines.append(
        "{} labelled images ({} of each digit), {} unlabelled; batches of {batch_size}, Adam lr {lr}, alpha = "
        "{alpha} per labelled image; networks 784-{hidden_dim}-{latent_dim} (tanh).\n".format(
            data["labelled"], data["labelled_per_class"][0], data["unlabelled"], **args
        )
    )
    lines.append(run_line(results))
    return "\n".join(lines)


def parser():
    parser = _cli.parser(
        __doc__,
        out="results/ssvae",
        seeds=(0, 1, 2),
        seeds_help="a seed sets the initial weights, the batches, their binarization and the samples",
    )
    _runs.mnist_arguments(parser)
    flag, count = parser.add_argument, _cli.positive_int
    _runs.estimators_argument(parser, estimators(3), "a subset of the estimators (default: all)")
    flag("--steps", type=count, default=9000, help="training steps of every run (9000: 15 epochs)")
    flag("--batch-size", type=count, default=100, help="images per step")
    flag(
        "--particles",
        type=_cli.integer(minimum=3),
        default=10,
        help="samples per unlabelled image of the sampled estimators (default 10: the decoder evaluations of "
        "the exact sum over 10 classes; >= 3: RaoBlackwellELBO's leave-one-out control variate needs it)",
    )
    flag("--lr", type=_cli.positive_real, default=1e-3, help="Adam's learning rate")
    flag(
        "--alpha",
        type=_cli.nonnegative_real,
        default=46.0,
        help="weight of log q(y|x) per labelled image (default 46, Pyro's example's aux_loss_multiplier; "
        "Kingma et al.'s alpha = 0.1 N spread over the labelled images is 0.1 * 60000 / 3000 = 2)",
    )
    flag("--labelled", type=count, default=3000, help="labelled training images")
    flag("--split-seed", type=_cli.seed, default=0, help="seed of the choice of the labelled images")
    flag("--hidden-dim", type=count, default=256, help="hidden units of every network")
    flag("--latent-dim", type=count, default=32, help="dimension of z")
    flag("--eval-every", type=count, default=300, help="steps between evaluations")
    flag("--elbo-size", type=count, default=2000, help="test images of the held-out ELBO curves")
    flag("--checkpoint-every", type=count, default=500, help="steps between checkpoints")
    _runs.restart_arguments(
        parser,
        "skip the finished runs in OUT/runs and continue the others from OUT/checkpoints",
        "start every run over, replacing its checkpoint",
    )
    return parser


def check(args):
    if args.labelled % 10:
        raise ValueError(
            f"argument --labelled: must be a multiple of 10 (the same number of each digit), got {args.labelled}"
        )
    _cli.at_most(args, "batch_size", "labelled")
    _cli.even(args, "particles", "AutoELBO draws them in pairs")
    if _runs.plotting(args):
        return
    if args.out is None:
        raise ValueError("argument --out: the study keeps its checkpoints there; pass a folder")
    runs, ours = _runs.SavedRuns(args.out), settings(args)
    paths = [runs.checkpoint(run_name(label, seed)) for label, _, seed in planned(args)]
    existing = _runs.existing_checkpoints(args, paths)
    if args.resume:
        _runs.check_checkpoints([(path, ours) for path in existing], "step", args.steps, flags=True)


STUDY = Study("ssvae", parser, run, figures, readme_block=readme_block, check=check)

if __name__ == "__main__":
    STUDY.main()
