"""Gumbel-softmax reparameterization of a categorical variable (question 3.1.20, 1.B.1).

With probabilities a = (0.1, 0.2, 0.5, 0.2) (logits = log a):

1. evaluation: the argmax of N Gumbel-softmax samples against N direct
   ``torch.distributions.Categorical`` draws and the true a, with a chi-square
   goodness-of-fit p-value for each (``histogram.png``); by the Gumbel-max trick the
   argmax does not depend on the temperature;
2. the temperature: the mean largest component of y from tau = 0.01 (one-hot) to
   tau = 100 (uniform), a few samples and E[y] at tau = 0.1, 0.5, 1, 5
   (``temperature.png``);
3. training: the gradient of E[f(y)] w.r.t. the logits for f(y) = sum_k c_k y_k
   ("linear") and f(y) = sum_k c_k y_k^2 ("square"); on one-hot y both equal c_y, so
   the discrete objective is sum_k c_k a_k for both and its exact gradient is
   a_j (c_j - c.a) (the softmax Jacobian). Estimated by our sampler, Pyro's
   ``RelaxedOneHotCategorical`` rsample and the straight-through variants (our
   ``hard=True`` and Pyro's ``RelaxedOneHotCategoricalStraightThrough``); bias
   (against the exact gradient) and variance per estimator and temperature
   (``gradients.png``). The relaxed estimators are unbiased for the relaxed
   objective E[f(y_tau)], whose gradient differs from the discrete one by a bias
   that vanishes as tau -> 0 while the variance grows like 1/tau.

Each part runs once per seed of ``--seeds``; the figures show the mean over
seeds with every seed's value, and the chi-square p-values of every seed (with
several tests, a few p-values below 0.05 are expected even for exact samplers).
Writes ``histogram.png``, ``temperature.png``, ``gradients.png`` and ``results.json``.

    python -m experiments.gumbel_softmax --out results/gumbel_softmax
"""

import math
import os

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import stats

from experiments import _cli
from experiments._figures import band_note, legend_outside, plt, save_figure, seed_band
from experiments._markdown import run_line, table
from experiments._results import fmt, spread, spreads
from experiments._study import Study
from pyro_vi.gumbel_softmax import categorical_from_relaxed, gumbel_softmax_sample

OBJECTIVES = {
    "linear": lambda y, c: (y * c).sum(-1),
    "square": lambda y, c: (y.pow(2) * c).sum(-1),
}


def chisquare(counts, probs):
    n = counts.sum()
    return float(stats.chisquare(counts, probs * n).pvalue)


def exact_gradient(logits, c):
    """Gradient of the discrete objective sum_k c_k softmax(logits)_k."""
    x = logits.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((c * torch.softmax(x, -1)).sum(), x)
    return grad


def samplers(generator):
    """name -> function (logits [N, K], tau) -> y [N, K]; the last two are straight-through."""
    return {
        "ours (relaxed)": lambda x, t: gumbel_softmax_sample(x, t, generator=generator),
        "Pyro RelaxedOneHotCategorical": lambda x, t: dist.RelaxedOneHotCategorical(
            torch.tensor(t, device=x.device), logits=x
        ).rsample(),
        "ours straight-through (hard=True)": lambda x, t: gumbel_softmax_sample(x, t, hard=True, generator=generator),
        "Pyro RelaxedOneHotCategoricalStraightThrough": lambda x, t: dist.RelaxedOneHotCategoricalStraightThrough(
            torch.tensor(t, device=x.device), logits=x
        ).rsample(),
    }


def gradient_draws(sample, logits, tau, f, c, num_draws):
    """num_draws independent one-sample estimates of d/dlogits E[f(y)], and f(y)."""
    x = logits.detach().expand(num_draws, -1).clone().requires_grad_(True)
    values = f(sample(x, tau), c)
    (grads,) = torch.autograd.grad(values.sum(), x)
    return grads, values.detach()


def histogram_counts(logits, probs, args, generator):
    """name -> counts of N direct Categorical draws and of the argmax of N
    Gumbel-softmax samples at each temperature (one seed)."""
    n, k = args.num_samples, len(probs)
    direct = torch.distributions.Categorical(logits=logits).sample((n,))
    counts = {"Categorical (direct)": torch.bincount(direct, minlength=k).cpu().numpy()}
    for tau in args.temperatures:
        argmax = categorical_from_relaxed(gumbel_softmax_sample(logits, tau, (n,), generator=generator))
        counts[f"Gumbel-softmax argmax, tau={tau:g}"] = torch.bincount(argmax, minlength=k).cpu().numpy()
    return {name: {"counts": c.tolist(), "chisquare_pvalue": chisquare(c, probs)} for name, c in counts.items()}


def category_bars(ax, bars, colors):
    """Bars per category, side by side: for each label of ``bars`` the mean
    of its rows (one per seed), with each seed's value as a dot when there
    are several."""
    width = 0.8 / len(bars)
    xs = np.arange(len(next(iter(bars.values()))[0]))
    for i, ((label, rows), color) in enumerate(zip(bars.items(), colors)):
        rows = np.atleast_2d(np.asarray(rows, float))
        ax.bar(xs + i * width, rows.mean(0), width, color=color, label=label)
        if i > 0:  # the first: the reference, no seeds
            ax.plot(np.repeat([xs + i * width], len(rows), 0).T, rows.T, "k.", ms=3)
    ax.plot([], [], "k.", ms=3, label="one seed")
    ax.set_xticks(xs + 0.4 - width / 2, [f"k = {j}" for j in range(len(xs))])
    ax.set_xlabel("category")


def plot_histogram(per_seed, probs, n, path):
    """Bars: relative frequencies, mean over seeds; dots: each seed."""
    names = list(per_seed[0])
    fig, ax = plt.subplots(figsize=(10, 4.5))
    bars = {"true probabilities a": [probs]}
    for name in names:
        pvalues = ", ".join("{:.2f}".format(seed[name]["chisquare_pvalue"]) for seed in per_seed)
        bars[f"{name} (chi-square p = {pvalues})"] = np.array([seed[name]["counts"] for seed in per_seed]) / n
    category_bars(ax, bars, ["k"] + [f"C{i}" for i in range(len(names))])
    ax.set_ylabel(f"relative frequency (N = {n} per seed)")
    ax.set_title(
        f"argmax of Gumbel-softmax samples vs Categorical draws (bars: mean of {len(per_seed)} seeds; "
        "p-values per seed)",
        fontsize=10,
    )
    legend_outside(ax)
    save_figure(fig, path)


def temperature_values(logits, args, generator):
    """One seed: the mean largest component over a temperature grid, and the
    samples at ``--temperatures``."""
    n = args.num_samples
    grid = np.logspace(-2, 2, args.grid_points)
    mean_max = []
    for tau in grid:
        y = gumbel_softmax_sample(logits, float(tau), (n,), generator=generator)
        mean_max.append(float(y.max(-1).values.mean()))
    shown = {tau: gumbel_softmax_sample(logits, tau, (n,), generator=generator).cpu() for tau in args.temperatures}
    return grid, mean_max, shown


def plot_temperature(temperature, probs, args, path):
    """The mean largest component over the grid (every seed), samples of
    the first seed and E[y] (every seed) at ``--temperatures``."""
    k = len(probs)
    grid = temperature["grid"]
    mean_max = np.array([s["values"] for s in temperature["mean_max_component"]]).T  # (seeds, grid)
    shown = {tau: temperature["shown"][f"{tau:g}"] for tau in args["temperatures"]}
    num_seeds = len(mean_max)
    fig, axes = plt.subplots(1, 3, figsize=(16, 5))
    ax = axes[0]
    label = f"mean max_k y_k (N = {args['num_samples']}; {band_note(num_seeds)})"
    seed_band(ax, grid, mean_max, label=label, marker="o", ms=3, color="C0")
    for i, (tau, values) in enumerate(shown.items()):
        ax.plot([tau], [values["mean_max_component"]["mean"]], "s", ms=7, color=f"C{i + 1}", label=f"tau = {tau:g}")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="one-hot (tau -> 0)")
    ax.axhline(1.0 / k, color="k", ls=":", lw=1, label="uniform 1/K (tau -> inf)")
    ax.axhline(float(probs.max()), color="grey", ls="-.", lw=1, label="max_k a_k")
    ax.set(xscale="log", xlabel="temperature tau (log scale, 1e-2 to 1e2)", ylabel="mean largest component of y")
    ax.set_title("one-hot at low, uniform at high temperature", fontsize=10)
    legend_outside(ax, where="below", ncol=2)

    ax = axes[1]
    left = 0
    for tau, values in shown.items():
        y = np.asarray(values["samples_first_seed"])
        bottom = np.zeros(len(y))
        first = tau == args["temperatures"][0]
        for j in range(k):
            ax.bar(left + np.arange(len(y)), y[:, j], bottom=bottom, color=f"C{j}", label=f"y_{j}" if first else None)
            bottom += y[:, j]
        ax.text(left + (len(y) - 1) / 2, 1.02, f"tau={tau:g}", ha="center", fontsize=8)
        left += len(y) + 1
    ax.set(xticks=[], ylim=(0, 1.1), ylabel="components of y (stacked)")
    ax.set_xlabel(f"{args['shown_samples']} samples per temperature (first seed)")
    ax.set_title("Gumbel-softmax samples", fontsize=10)
    legend_outside(ax, where="below", ncol=4)

    ax = axes[2]
    bars = {"a (= E[one-hot])": [probs]}
    bars.update({f"E[y], tau = {tau:g}": values["mean_per_seed"] for tau, values in shown.items()})
    category_bars(ax, bars, ["k"] + [f"C{i}" for i in range(1, len(shown) + 1)])
    ax.set_ylabel("mean of y_k")
    ax.set_title(f"E[y] tends to a as tau -> 0 (bars: mean of {num_seeds} seeds)", fontsize=10)
    legend_outside(ax, where="below", ncol=2)
    save_figure(fig, path)


def gradient_rows(logits, probs, args, generator):
    """One seed: bias and variance of every estimator, objective and temperature."""
    c = torch.tensor(args.coefficients, dtype=logits.dtype, device=logits.device)
    exact = exact_gradient(logits, c)
    discrete_value = float((c * torch.as_tensor(probs, dtype=c.dtype, device=c.device)).sum())
    rows = []
    for fname, f in OBJECTIVES.items():
        for name, sample in samplers(generator).items():
            for tau in args.grad_temperatures:
                grads, values = gradient_draws(sample, logits, tau, f, c, args.grad_draws)
                mean, var = grads.mean(0), grads.var(0)
                se = (var / args.grad_draws).sqrt()
                bias = mean - exact
                rows.append(
                    {
                        "objective": fname,
                        "estimator": name,
                        "temperature": tau,
                        "bias_norm": float(bias.norm()),
                        "bias_norm_se": float(se.norm()),
                        "max_abs_bias_over_se": float((bias.abs() / se).max()),
                        "variance_trace": float(var.sum()),
                        "value_bias": float(values.mean()) - discrete_value,
                    }
                )
    return exact.tolist(), discrete_value, rows


def summarize_gradients(per_seed):
    """Rows of the first seed with each number's mean ± std over seeds."""
    numbers = ("bias_norm", "bias_norm_se", "max_abs_bias_over_se", "variance_trace", "value_bias")
    summary = []
    for i, row in enumerate(per_seed[0]):
        labels = {key: row[key] for key in ("objective", "estimator", "temperature")}
        summary.append(dict(labels, **spreads([seed[i] for seed in per_seed], numbers)))
    return summary


#: Horizontal offsets (factors on the log axis) that keep estimators with
#: equal values apart: ours and Pyro's samplers draw from the same distribution.
OFFSETS = (0.93, 0.98, 1.02, 1.07)


def plot_gradients(summary, names, args, path):
    """Rows: the two objectives; columns: bias and variance. Points: mean over
    seeds, bars: lowest to highest seed; estimators offset horizontally."""
    num_seeds = len(summary[0]["bias_norm"]["values"])
    note = f"{band_note(num_seeds).split(',')[0]}; points offset around each tau; bars: lowest to highest seed"
    fig, axes = plt.subplots(2, 2, figsize=(14, 9.5))
    markers = ["o", "x", "s", "+"]
    styles = ["-", "--", "-", "--"]
    for row, fname in enumerate(OBJECTIVES):
        for i, name in enumerate(names):
            sel = [r for r in summary if r["objective"] == fname and r["estimator"] == name]
            taus = np.array([r["temperature"] for r in sel]) * OFFSETS[i]
            kw = dict(ls=styles[i], marker=markers[i], color=f"C{i}", ms=6, capsize=2, label=name)
            for col, key in enumerate(("bias_norm", "variance_trace")):
                mean = np.array([r[key]["mean"] for r in sel])
                low = np.array([min(r[key]["values"]) for r in sel])
                high = np.array([max(r[key]["values"]) for r in sel])
                axes[row, col].errorbar(taus, mean, yerr=[mean - low, high - mean], **kw)
        bias_ax, var_ax = axes[row]
        bias_ax.axhline(0.0, color="k", lw=1, label="0: unbiased for the discrete gradient")
        bias_ax.set_ylabel("|mean estimate - exact gradient|_2")
        bias_ax.set_title(f"f {fname}: bias w.r.t. d/dlogits sum_k c_k a_k", fontsize=10)
        var_ax.set(yscale="log", ylabel="trace of the covariance of one-sample estimates")
        var_ax.set_title(f"f {fname}: variance ({args['grad_draws']} draws per point)", fontsize=10)
        for ax in (bias_ax, var_ax):
            ax.set(xscale="log", xlabel="temperature tau (log scale, ticks at the temperatures run)")
            ax.set_xticks(args["grad_temperatures"], [f"{t:g}" for t in args["grad_temperatures"]])
            ax.minorticks_off()
            legend_outside(ax, where="below", ncol=2, title=note, title_fontsize=8)
    save_figure(fig, path)


def run(args):
    probs = np.asarray(args.probs, dtype=np.float64)
    probs = probs / probs.sum()
    logits = torch.tensor(np.log(probs), dtype=torch.get_default_dtype(), device=args.device)
    hist, mean_max, shown, grads = [], [], [], []
    for seed in args.seeds:
        pyro.set_rng_seed(seed)
        generator = torch.Generator(device=args.device).manual_seed(seed)
        hist.append(histogram_counts(logits, probs, args, generator))
        grid, seed_mean_max, seed_shown = temperature_values(logits, args, generator)
        mean_max.append(seed_mean_max)
        shown.append(seed_shown)
        exact, discrete_value, rows = gradient_rows(logits, probs, args, generator)
        grads.append(rows)
    pvalues = [seed[name]["chisquare_pvalue"] for seed in hist for name in seed]
    temperature = {
        f"{tau:g}": {
            "mean_max_component": spread([float(seed[tau].max(-1).values.mean()) for seed in shown]),
            "mean": np.mean([seed[tau].mean(0).numpy() for seed in shown], 0).tolist(),
            "mean_per_seed": [seed[tau].mean(0).tolist() for seed in shown],
            "samples_first_seed": shown[0][tau][: args.shown_samples].tolist(),
        }
        for tau in args.temperatures
    }
    return {
        "probs": probs.tolist(),
        "histogram": {
            "per_seed": hist,
            "pvalues_below_0.05": sum(p < 0.05 for p in pvalues),
            "num_pvalues": len(pvalues),
        },
        "temperature": {
            "grid": grid.tolist(),
            "mean_max_component": [spread(v) for v in zip(*mean_max)],
            "shown": temperature,
        },
        "gradients": {
            "coefficients": args.coefficients,
            "exact_gradient": exact,
            "discrete_value": discrete_value,
            "rows": summarize_gradients(grads),
        },
    }


def figures(results, out):
    args, probs = results["args"], np.asarray(results["probs"])
    plot_histogram(results["histogram"]["per_seed"], probs, args["num_samples"], os.path.join(out, "histogram.png"))
    plot_temperature(results["temperature"], probs, args, os.path.join(out, "temperature.png"))
    plot_gradients(results["gradients"]["rows"], list(samplers(None)), args, os.path.join(out, "gradients.png"))


def readme_block(results):
    hist = results["histogram"]
    per_seed = hist["per_seed"]
    rows = [[name] + ["{:.3f}".format(seed[name]["chisquare_pvalue"]) for seed in per_seed] for name in per_seed[0]]
    seeds = results["run"]["seeds"]
    grads = results["gradients"]["rows"]
    shown = sorted({r["temperature"] for r in grads} & {0.1, 1.0})
    grad_rows = [
        [r["estimator"], "{:g}".format(r["temperature"]), fmt(r["bias_norm"], ".3f"), fmt(r["variance_trace"], ".3g")]
        for r in grads
        if r["temperature"] in shown and r["objective"] == "square"
    ]
    below, count = hist["pvalues_below_0.05"], hist["num_pvalues"]
    tail = sum(math.comb(count, j) * 0.05**j * 0.95 ** (count - j) for j in range(below, count + 1))
    return "\n".join(
        [
            f"Chi-square goodness-of-fit p-values of N = {results['args']['num_samples']} draws against a, per seed:\n",
            table(["sampler"] + [f"seed {s}" for s in seeds], rows),
            f"{below} of {count} p-values are below 0.05. Every sampler here is exact (torch's Categorical "
            f"included), so each p-value is uniform on (0, 1): about {0.05 * count:.2f} of {count} are expected "
            f"below 0.05 by chance, and {below} or more with probability {tail:.2f}. A small p-value among many "
            "tests is not evidence of a wrong sampler.\n",
            "Gradient of E[f(y)] for f(y) = sum_k c_k y_k^2, against the exact gradient of the discrete objective "
            "(mean ± std over seeds, {} one-sample estimates each):\n".format(results["args"]["grad_draws"]),
            table(["estimator", "tau", "bias norm", "trace of covariance"], grad_rows),
            run_line(results),
        ]
    )


SEEDS = "a seed sets every draw of the study"


def parser():
    parser = _cli.parser(__doc__, "results/gumbel_softmax", device=True, seeds=(0, 1, 2), seeds_help=SEEDS)
    positive = _cli.positive_real
    parser.add_argument(
        "--probs",
        type=positive,
        nargs="+",
        default=[0.1, 0.2, 0.5, 0.2],
        help="category probabilities a (renormalized)",
    )
    parser.add_argument("--num-samples", type=_cli.positive_int, default=1000, help="N for the histogram and samples")
    parser.add_argument("--temperatures", type=positive, nargs="+", default=[0.1, 0.5, 1.0, 5.0])
    parser.add_argument(
        "--grid-points", type=_cli.integer(minimum=2), default=21, help="temperatures in [0.01, 100] for the curve"
    )
    parser.add_argument("--shown-samples", type=_cli.positive_int, default=8, help="samples drawn per temperature")
    parser.add_argument(
        "--coefficients",
        type=_cli.finite_real,
        nargs="+",
        default=[1.0, 2.0, 3.0, 4.0],
        help="c in f(y) = sum_k c_k y_k (or c_k y_k^2)",
    )
    parser.add_argument("--grad-temperatures", type=positive, nargs="+", default=[0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0])
    parser.add_argument(
        "--grad-draws",
        type=_cli.integer(minimum=2),
        default=100000,
        help="one-sample gradient estimates per estimator and temperature",
    )
    return parser


def check_arguments(args):
    if len(args.probs) < 2:
        raise ValueError(f"argument --probs: needs at least two categories, got {args.probs}")
    if len(args.coefficients) != len(args.probs):
        raise ValueError(
            f"argument --coefficients: needs one number per category ({len(args.probs)}), got {len(args.coefficients)}"
        )


STUDY = Study("gumbel_softmax", parser, run, figures, readme_block, check=check_arguments)

if __name__ == "__main__":
    STUDY.main()
