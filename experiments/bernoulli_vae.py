"""The Bernoulli VAE benchmark of the DisARM paper on dynamically binarized MNIST:
gradient estimators for 200 binary latents, linear and nonlinear models.

Single-sample ELBO, the same number of model evaluations per data point for
every estimator (``--particles``, at least 4 for the leave-one-out control
variates; DisARM draws ``--particles / 2`` antithetic pairs): ScoreFunctionELBO,
ControlVariateELBO, RaoBlackwellELBO, ReinforceLeaveOneOutELBO, DisARMELBO,
Pyro's TraceGraph_ELBO with its decaying-average baseline and Pyro's
RelaxedBernoulliStraightThrough under Trace_ELBO (biased). With
``--two-evaluations``, also the DisARM paper's budget: DisARM with one pair
against REINFORCE leave-one-out with two samples. Multi-sample bound L_K for
each ``--ks``: VIMCO with K samples, local DisARM with K antithetic pairs (2K
evaluations) and VIMCO with 2K samples (the same evaluations as local DisARM,
on the tighter L_2K).

Every run starts from the same weights for its seed; training batches are
binarized afresh (dynamic binarization), evaluation images once. At each
evaluation: the training objective (ELBO, or L_K for a multi-sample run) on a
fixed subset of training images, the 100-sample bound L_100 on a fixed subset
of test images, and the gradient variance of the encoder (mean over its
weights of the per-weight variance of the gradient of the per-image objective,
on one fixed batch). Writes ``single_sample.png``, ``two_evaluations.png``,
``multi_sample.png``, ``time_per_step.png`` and ``results.json``; each finished
run is saved under ``runs/`` so that ``--resume`` skips it.

    python -m experiments.bernoulli_vae --data-dir ../shared/data/mnist --out results/bernoulli_vae
"""

import functools
import math
import operator
import os
import time
import warnings

import numpy as np
import pyro
import torch
from pyro.infer import Trace_ELBO, TraceGraph_ELBO
from pyro.optim import Adam

import pyro_vi
from experiments import _cli
from experiments._figures import plt, save_figure
from experiments._markdown import machine_text, seconds, table
from experiments._results import finish
from experiments._runs import BinarizedBatches, SavedRuns, chosen, estimators_argument, mnist_arguments, safe_name
from experiments._study import Study
from guides.bernoulli_vae import Encoder, bound, guide
from models.bernoulli_vae import KINDS, BernoulliVAEConfig, Decoder, model
from models.mnist import binarize, load_mnist
from pyro_vi import DisARMELBO, ImportanceWeightedELBO, ReinforceLeaveOneOutELBO, score_function_guide
from pyro_vi.diagnostics import gradient_statistics
from pyro_vi.training import NonFiniteError, OutOfSupportError, fit

BASELINE = {"use_decaying_avg_baseline": True, "baseline_beta": 0.95}
EVAL_SEED = 12345  # binarization and choice of the evaluation images, not a run seed
KW = _cli.VECTORIZED  # a short name: one line per estimator below
BERNOULLI = operator.itemgetter("bernoulli")  # the guides are {"bernoulli": ..., "relaxed": ...}

# Colours, line styles and marker positions that keep every curve visible
# where they overlap: RaoBlackwellELBO is the widest translucent band,
# REINFORCE leave-one-out a narrower one and DisARM a thin line on top (the
# three nearly coincide at four evaluations per image).
STYLES = [
    dict(color="tab:gray", ls=":", marker="x"),
    dict(color="tab:olive", ls="--", marker="v"),
    dict(color="tab:purple", ls="-.", marker="^"),
    dict(color="tab:orange", ls="-", marker="s", lw=5, alpha=0.45, markersize=7),
    dict(color="tab:red", ls="-", marker="o", lw=1.2),
    dict(color="tab:blue", ls="--", marker="D"),
    dict(color="tab:green", ls=":", marker="P"),
]
RAO_BLACKWELL_STYLE = dict(color="tab:purple", ls="-", lw=10, alpha=0.3)


def single_sample_estimators(particles, temperature):
    """The :data:`~experiments._cli.Registry` of the single-sample runs, each
    with ``particles`` model evaluations per data point."""
    same = ("ScoreFunctionELBO", "ControlVariateELBO", "RaoBlackwellELBO", "ReinforceLeaveOneOutELBO")
    makers = {name: functools.partial(getattr(pyro_vi, name), num_particles=particles, **KW) for name in same}
    makers.update(
        {
            "DisARMELBO": lambda: DisARMELBO(num_particles=particles // 2, **KW),
            "TraceGraph_ELBO + baseline": lambda: TraceGraph_ELBO(num_particles=particles, **KW),
            f"RelaxedBernoulliStraightThrough (t={temperature:g})": lambda: Trace_ELBO(num_particles=particles, **KW),
        }
    )
    guides = dict.fromkeys(makers, BERNOULLI)
    guides["TraceGraph_ELBO + baseline"] = lambda guides: score_function_guide(guides["bernoulli"], baseline=BASELINE)
    guides[list(makers)[-1]] = operator.itemgetter("relaxed")
    styles = dict(zip(makers, STYLES), RaoBlackwellELBO=RAO_BLACKWELL_STYLE)
    return {name: _cli.Estimator(make, guides[name], styles[name]) for name, make in makers.items()}


def pair_estimators():
    """DisARM with one pair against REINFORCE leave-one-out with two samples:
    two model evaluations per image, the DisARM paper's comparison."""
    return {
        "ReinforceLeaveOneOutELBO (2 samples)": _cli.Estimator(
            lambda: ReinforceLeaveOneOutELBO(num_particles=2, **KW), BERNOULLI, STYLES[3]
        ),
        "DisARMELBO (1 pair)": _cli.Estimator(lambda: DisARMELBO(num_particles=1, **KW), BERNOULLI, STYLES[4]),
    }


def multi_sample_estimators(k):
    """The multi-sample runs for the bound L_K: label -> (Estimator, K of the
    bound it optimizes)."""

    def estimator(gradient, samples, style):
        return _cli.Estimator(lambda: ImportanceWeightedELBO(samples, gradient=gradient, **KW), BERNOULLI, style)

    return {
        f"VIMCO (K={k})": (estimator("vimco", k, STYLES[2]), k),
        f"local DisARM (K={k}, {k} pairs)": (estimator("disarm", k, STYLES[4]), k),
        f"VIMCO (K={2 * k}, same evaluations)": (estimator("vimco", 2 * k, STYLES[5]), 2 * k),
    }


# ----------------------------------------------------------------------------
# data and evaluation


def prepare(args):
    data = load_mnist(args.data_dir, download=not args.no_download)
    generator = torch.Generator().manual_seed(EVAL_SEED)

    def fixed(images, size):
        return binarize(images[torch.randperm(len(images), generator=generator)[:size]], generator)

    train_eval, test_eval = fixed(data.train, args.eval_size), fixed(data.test, args.eval_size)
    variance_batch = fixed(data.train, args.batch_size)
    info = dict(data.info, train_eval_images=len(train_eval), test_eval_images=len(test_eval))
    return dict(train=data.train, train_eval=train_eval, test_eval=test_eval, variance_batch=variance_batch, info=info)


def encoder_gradient_variance(elbo, model_fn, guide_fn, batch, draws):
    """Mean over the encoder's weights of the variance of the gradient of the
    per-image objective (the loss gradient divided by the batch size)."""
    stats = gradient_statistics(elbo, model_fn, guide_fn, batch, num_draws=draws)
    stats = {n: s for n, s in stats.items() if n.startswith("encoder$$$")}
    total = sum(float(s.variance.sum()) for s in stats.values())
    count = sum(s.variance.numel() for s in stats.values())
    return total / count / len(batch) ** 2


# ----------------------------------------------------------------------------
# runs


def run_one(kind, label, estimator, bound_k, seed, study, args):
    """Trains one model with one estimator and seed; returns its record."""
    config = BernoulliVAEConfig(kind=kind)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    decoder, encoder = Decoder(config, mean_pixel=study["train"].mean(0)), Encoder(config)
    model_fn = functools.partial(model, decoder=decoder)
    guides = {
        "bernoulli": functools.partial(guide, encoder=encoder),
        "relaxed": functools.partial(guide, encoder=encoder, temperature=args.temperature),
    }
    guide_fn = estimator.guide(guides)
    elbo = estimator.make()
    steps = args.steps if bound_k == 1 else args.multi_steps
    generator = torch.Generator().manual_seed(EVAL_SEED + seed)
    curve = {"step": [], "train_objective": [], "test_bound": [], "grad_variance": []}

    def evaluate(step):
        curve["step"].append(step)
        curve["train_objective"].append(
            bound(study["train_eval"], encoder, decoder, bound_k, generator, repeats=args.train_samples)
        )
        curve["test_bound"].append(bound(study["test_eval"], encoder, decoder, args.test_samples, generator))
        curve["grad_variance"].append(
            encoder_gradient_variance(elbo, model_fn, guide_fn, study["variance_batch"], args.variance_draws)
            if args.variance_draws
            else None
        )

    def callback(step, loss):
        if step % args.eval_every == 0 and step != steps:
            evaluate(step)

    evaluate(0)
    start = time.perf_counter()
    failure = None
    try:
        result = fit(
            model_fn,
            guide_fn,
            elbo,
            Adam({"lr": args.lr}),
            data=BinarizedBatches(study["train"], args.batch_size, seed, drop_last=True),
            num_steps=steps,
            callback=callback,
            progress=False,
        )
        seconds_per_step = result.seconds_per_step
        evaluate(steps)
    except (NonFiniteError, OutOfSupportError) as error:  # a diverged run is a result too
        failure = str(error).splitlines()[0]
        seconds_per_step = float("nan")
        print(f"  {kind} {label} seed {seed} stopped: {failure}", flush=True)
    wall = time.perf_counter() - start
    return dict(
        model=kind,
        estimator=label,
        seed=seed,
        bound_k=bound_k,
        steps=steps,
        failure=failure,
        seconds_per_step=seconds_per_step,
        wall_seconds=wall,
        **curve,
    )


def plan(args):
    """Every run of the study: ``(group, kind, label, estimator, K, seed)``."""
    single = chosen(single_sample_estimators(args.particles, args.temperature), args.estimators)
    groups = [("single", kind, {label: (e, 1) for label, e in single.items()}) for kind in args.models]
    if args.two_evaluations:
        groups += [
            ("2 evaluations", kind, {label: (e, 1) for label, e in pair_estimators().items()}) for kind in args.models
        ]
    groups += [(f"K={k}", kind, multi_sample_estimators(k)) for k in args.ks for kind in args.multi_models]
    return [
        (group, kind, label, estimator, bound_k, seed)
        for group, kind, estimators in groups
        for label, (estimator, bound_k) in estimators.items()
        for seed in args.seeds
    ]


def run_settings(args, bound_k):
    """What a saved run must share with this call to be resumed."""
    keys = "batch_size lr particles temperature eval_every eval_size test_samples train_samples variance_draws".split()
    return dict({k: getattr(args, k) for k in keys}, steps=args.steps if bound_k == 1 else args.multi_steps)


def run_name(group, kind, label, seed):
    return "{}__{}__{}__seed{}".format(group.replace("=", ""), kind, safe_name(label), seed)


def run(args):
    start = time.perf_counter()
    study = prepare(args)
    print("data: {}; {}".format(study["info"]["source"], study["info"]["split"]))
    planned, records = plan(args), []
    for i, (group, kind, label, estimator, k, seed) in enumerate(planned):
        name, runs = run_name(group, kind, label, seed), SavedRuns(args.out, run_settings(args, k))
        saved = runs.load(name) if args.resume else None
        if saved is not None:  # a run saved without its settings (by an older study) is reused
            if saved.get("settings", runs.settings) == runs.settings and saved["steps"] == runs.settings["steps"]:
                records.append(saved)
                continue
            print(f"  {runs.path(name)} was run with other settings: running it again")
        record = runs.save(name, dict(run_one(kind, label, estimator, k, seed, study, args), group=group))
        records.append(record)
        print(
            f"[{i + 1}/{len(planned)}] {group} {kind} {label} seed {seed}: train {record['train_objective'][-1]:.2f}, "
            f"test L_100 {record['test_bound'][-1]:.2f}, {1e3 * record['seconds_per_step']:.1f} ms/step",
            flush=True,
        )
        finish("bernoulli_vae", args, results_of(records, args, study["info"]), start, report=False)  # after every run
    return results_of(records, args, study["info"])


def results_of(records, args, info):
    """The results of the runs done so far."""
    return {
        "data": info,
        "budget": (
            f"{args.steps} steps per single-sample run and {args.multi_steps} per multi-sample run, batch "
            f"{args.batch_size}, chosen to fit the CPU budget (one thread); published runs train for orders of "
            "magnitude more steps, so these are early-training comparisons"
        ),
        # the runs' own wall time, also of those a --resume call found saved
        "run_seconds": sum(r["wall_seconds"] for r in records),
        "summary": aggregate(records),
    }


# ----------------------------------------------------------------------------
# results and figures


def aggregate(records):
    """``{group: {model: {label: summary}}}``: per evaluation step the mean
    and the min/max over seeds of each curve, and the mean wall time."""
    grouped = {}  # (group, model, estimator) -> its runs, in the order of the records
    for r in records:
        grouped.setdefault((r["group"], r["model"], r["estimator"]), []).append(r)
    summary = {}
    for (group, kind, label), runs in grouped.items():
        steps = max((r["step"] for r in runs), key=len)
        times = [r["seconds_per_step"] for r in runs if not math.isnan(r["seconds_per_step"])]
        row = {
            "seeds": [r["seed"] for r in runs],
            "step": steps,
            "bound_k": runs[0]["bound_k"],
            "ms_per_step": 1e3 * float(np.mean(times)) if times else float("nan"),
            "failures": {r["seed"]: r["failure"] for r in runs if r.get("failure")},
        }
        for key in ("train_objective", "test_bound", "grad_variance"):
            values = np.full((len(runs), len(steps)), np.nan)
            for i, r in enumerate(runs):
                values[i, : len(r[key])] = [np.nan if v is None else v for v in r[key]]
            with warnings.catch_warnings():  # all-NaN columns (a run that stopped) stay NaN
                warnings.simplefilter("ignore", RuntimeWarning)
                row[key] = {
                    "mean": np.nanmean(values, 0).tolist(),
                    "min": np.nanmin(values, 0).tolist(),
                    "max": np.nanmax(values, 0).tolist(),
                }
        summary.setdefault(group, {}).setdefault(kind, {})[label] = row
    return summary


def plot_group(summary, styles, path, title, objective_label):
    kinds = list(summary)
    columns = [
        ("train_objective", objective_label + " (train subset)"),
        ("test_bound", "test L_100 (test subset)"),
        ("grad_variance", "encoder gradient variance"),
    ]
    fig, axes = plt.subplots(len(kinds), 3, figsize=(15, 3.8 * len(kinds)), squeeze=False)
    handles = {}
    for row, kind in enumerate(kinds):
        for col, (key, ylabel) in enumerate(columns):
            ax, below = axes[row, col], []
            for i, (label, s) in enumerate(summary[kind].items()):
                steps = np.array(s["step"])
                mean = np.array(s[key]["mean"], float)  # None (NaN in results.json): a run that stopped
                if np.all(np.isnan(mean)):
                    continue
                every = max(1, len(steps) // 6)
                kwargs = dict(lw=1.4, markersize=4, markevery=(i % (2 * every), 2 * every))
                kwargs.update(styles[label])
                (line,) = ax.plot(steps, mean, **kwargs)
                ax.fill_between(steps, s[key]["min"], s[key]["max"], color=kwargs["color"], alpha=0.15, lw=0)
                handles[label] = line
            if key == "grad_variance":
                ax.set_yscale("log")
            elif any(s["step"] for s in summary[kind].values()):
                finals = [s[key]["mean"][-1] for s in summary[kind].values()]
                firsts = [s[key]["mean"][0] for s in summary[kind].values()]
                low, high = min(finals + firsts), max(finals)
                span = max(high - low, 1.0)
                ax.set_ylim(low - 0.05 * span, high + 0.1 * span)
                below = [
                    "{}, down to {:.0f}".format(label, np.nanmin(s[key]["mean"]))
                    for label, s in summary[kind].items()
                    if np.nanmin(s[key]["mean"]) < low - 0.05 * span
                ]
            ax.set_xlabel("training step" + ("\n(below the axis: {})".format("; ".join(below)) if below else ""))
            ax.set_ylabel(ylabel)
            ax.set_title("({}) {} model: {}".format("abcdefghijkl"[row * 3 + col], kind, ylabel.split(" (")[0]))
            ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.legend(
        list(handles.values()),
        list(handles),
        loc="lower center",
        ncol=min(4, len(handles)),
        bbox_to_anchor=(0.5, 0.0),
        fontsize=9,
        frameon=False,
    )
    fig.tight_layout(rect=(0, 0.04 + 0.025 * math.ceil(len(handles) / 4), 1, 0.97))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_time(summary, path):
    rows = [
        (f"{group} | {kind} | {label}", kind, s["ms_per_step"])
        for group, models in summary.items()
        for kind, estimators in models.items()
        for label, s in estimators.items()
        if s["ms_per_step"] is not None and not math.isnan(s["ms_per_step"])
    ]
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.5))
    colors = ["tab:blue" if kind == "linear" else "tab:orange" for _, kind, _ in rows]
    ax.barh(np.arange(len(rows)), [ms for _, _, ms in rows], color=colors)
    ax.set_yticks(np.arange(len(rows)), [name for name, _, _ in rows], fontsize=8)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.set_xlabel(
        "ms per training step (1 CPU thread on a shared machine whose load varied; blue: linear, orange: nonlinear)"
    )
    ax.set_title("Wall time per step")
    save_figure(fig, path)


def figures(results, out):
    summary, args = results["summary"], results["args"]
    styles = {label: e.style for label, e in single_sample_estimators(args["particles"], args["temperature"]).items()}
    styles.update({label: e.style for label, e in pair_estimators().items()})
    for k in args["ks"]:
        styles.update({label: e.style for label, (e, _) in multi_sample_estimators(k).items()})
    multi = {}
    for group, models in summary.items():
        if group.startswith("K="):
            for kind, rows in models.items():
                multi.setdefault(f"{kind}, {group}", {}).update(rows)
    for panels, name, what, objective in (
        (
            summary.get("single"),
            "single_sample",
            f"single-sample ELBO, {args['particles']} evaluations per image",
            "ELBO",
        ),
        (summary.get("2 evaluations"), "two_evaluations", "single-sample ELBO, 2 evaluations per image", "ELBO"),
        (multi, "multi_sample", "multi-sample bound: VIMCO and local DisARM", "training bound L_K"),
    ):
        if panels:
            title = f"Bernoulli VAE, {what} (mean and min-max over seeds)"
            plot_group(panels, styles, os.path.join(out, name + ".png"), title, objective)
    plot_time(summary, os.path.join(out, "time_per_step.png"))


def readme_block(results):
    rows = []
    for group, models in results["summary"].items():
        for kind, estimators in models.items():
            if group == "single" and "DisARMELBO" in estimators and "AutoELBO" not in estimators:
                # AutoELBO is DisARMELBO on this model, bit for bit (see the sentence below the table)
                estimators = dict(estimators, **{"AutoELBO (= DisARMELBO's runs)": estimators["DisARMELBO"]})
            for label, s in estimators.items():
                train, variance = s["train_objective"]["mean"][-1], s["grad_variance"]["mean"][-1]
                test = "{:.2f} ({:.2f} to {:.2f})".format(*(s["test_bound"][k][-1] for k in ("mean", "min", "max")))
                variance = "-" if variance is None else f"{variance:.3g}"
                rows.append([group, kind, label, f"{train:.2f}", test, variance, f"{s['ms_per_step']:.1f}"])
    args = results["args"]
    header = ["group", "decoder", "estimator", "train objective", f"test L_{args['test_samples']} (seeds' min to max)"]
    return "\n".join(
        [
            table(header + ["grad. variance", "ms/step"], rows, align="lllrrrr"),
            "Mean over seeds at the last step. {}. Data: {}. Gradient variance: the mean over the encoder's weights "
            "of the variance of the per-image gradient, {} draws at the last step.\n".format(
                results["budget"][0].upper() + results["budget"][1:],
                results["data"]["split"],
                args["variance_draws"],
            ),
            "AutoELBO is not run apart: it chooses DisARM pairs at every latent of this model (independent "
            "Bernoulli units given the image), and on the same seed its loss and gradients are DisARMELBO's bit "
            "for bit "
            "(`tests/estimators/test_auto.py::test_is_disarm_on_the_bernoulli_vae`), so its rows are DisARMELBO's.\n",
            "Command: `{}`; seeds {}; the runs took {} of wall time in all (`--resume` runs only those not yet "
            "saved), on {}.\n".format(
                results["run"]["command"],
                ", ".join(map(str, results["run"]["seeds"])),
                seconds(results["run_seconds"]),
                machine_text(results["run"]),
            ),
        ]
    )


def parser():
    parser = _cli.parser(__doc__, "results/bernoulli_vae", seeds=(0, 1, 2))
    mnist_arguments(parser)
    flag, count = parser.add_argument, _cli.positive_int
    flag("--models", nargs="+", choices=KINDS, default=list(KINDS))
    estimators_argument(parser, single_sample_estimators(4, 1.0), "single-sample estimators to run (default: all)")
    flag("--steps", type=count, default=200, help="steps per single-sample run")
    flag("--multi-steps", type=count, default=100, help="steps per multi-sample run")
    flag("--ks", type=_cli.integer(minimum=2), nargs="*", default=[5], help="K of the multi-sample bounds (none: none)")
    flag("--multi-models", nargs="+", choices=KINDS, default=["linear"], help="models of the multi-sample runs")
    flag("--two-evaluations", action="store_true", help="also DisARM (1 pair) against leave-one-out (2 samples)")
    flag("--particles", type=_cli.integer(minimum=4), default=4, help="evaluations per image (even, >= 4)")
    flag("--batch-size", type=_cli.integer(minimum=2), default=50)
    flag("--lr", type=_cli.positive_real, default=1e-3, help="Adam's learning rate")
    flag("--temperature", type=_cli.positive_real, default=2 / 3, help="of the straight-through relaxation")
    flag("--eval-every", type=count, default=100, help="steps between evaluations")
    flag("--eval-size", type=count, default=500, help="training and test images of each evaluation")
    flag("--test-samples", type=count, default=100, help="S of the test bound L_S")
    flag("--train-samples", type=count, default=2, help="draws of the training objective per image")
    flag("--variance-draws", type=_cli.nonnegative_int, default=10, help="gradient draws per variance (0: none)")
    flag("--resume", action="store_true", help="skip the runs already saved under OUT/runs")
    return parser


def check_arguments(args):
    _cli.even(args, "particles", "DisARM draws --particles / 2 pairs")
    if args.variance_draws == 1:
        raise ValueError("argument --variance-draws: a variance needs 2 draws or more (or 0 for none), got 1")


STUDY = Study("bernoulli_vae", parser, run, figures, readme_block, check=check_arguments)

if __name__ == "__main__":
    STUDY.main()
