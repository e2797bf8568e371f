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

Writes ``histogram.png``, ``temperature.png``, ``gradients.png`` and ``results.json``.

    python -m experiments.gumbel_softmax --out results/gumbel_softmax
"""

import json
import os
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from scipy import stats

if not __package__:  # run as ``python experiments/gumbel_softmax.py``
    import _repo_root  # noqa: F401

from experiments import _cli  # noqa: E402
from experiments._figures import plt, save_figure  # noqa: E402
from pyro_vi.gumbel_softmax import categorical_from_relaxed, gumbel_softmax_sample  # noqa: E402

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
    """name -> (function (logits [N, K], tau) -> y [N, K], straight-through?)."""
    return {
        "ours (relaxed)": (lambda x, t: gumbel_softmax_sample(x, t, generator=generator), False),
        "Pyro RelaxedOneHotCategorical": (
            lambda x, t: dist.RelaxedOneHotCategorical(torch.tensor(t, device=x.device), logits=x).rsample(),
            False,
        ),
        "ours straight-through (hard=True)": (
            lambda x, t: gumbel_softmax_sample(x, t, hard=True, generator=generator),
            True,
        ),
        "Pyro RelaxedOneHotCategoricalStraightThrough": (
            lambda x, t: dist.RelaxedOneHotCategoricalStraightThrough(
                torch.tensor(t, device=x.device), logits=x
            ).rsample(),
            True,
        ),
    }


def gradient_draws(sample, logits, tau, f, c, num_draws):
    """num_draws independent one-sample estimates of d/dlogits E[f(y)], and f(y)."""
    x = logits.detach().expand(num_draws, -1).clone().requires_grad_(True)
    values = f(sample(x, tau), c)
    (grads,) = torch.autograd.grad(values.sum(), x)
    return grads, values.detach()


def histogram_experiment(logits, probs, args, generator):
    n, k = args.num_samples, len(probs)
    direct = torch.distributions.Categorical(logits=logits).sample((n,))
    counts = {"Categorical (direct)": torch.bincount(direct, minlength=k).cpu().numpy()}
    for tau in args.temperatures:
        y = gumbel_softmax_sample(logits, tau, (n,), generator=generator)
        counts["Gumbel-softmax argmax, tau={:g}".format(tau)] = (
            torch.bincount(categorical_from_relaxed(y), minlength=k).cpu().numpy()
        )
    pvalues = {name: chisquare(c, probs) for name, c in counts.items()}

    fig, ax = plt.subplots(figsize=(9, 4.5))
    width = 0.8 / (len(counts) + 1)
    xs = np.arange(k)
    ax.bar(xs, probs, width, color="k", label="true probabilities a")
    for i, (name, c) in enumerate(counts.items(), start=1):
        ax.bar(xs + i * width, c / n, width, label="{} (chi-square p = {:.2f})".format(name, pvalues[name]))
    ax.set_xticks(xs + 0.4 - width / 2)
    ax.set_xticklabels(["k = {}".format(j) for j in range(k)])
    ax.set_xlabel("category")
    ax.set_ylabel("relative frequency (N = {})".format(n))
    ax.set_title("argmax of Gumbel-softmax samples vs Categorical draws")
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(args.out, "histogram.png"))
    return {name: {"counts": c.tolist(), "chisquare_pvalue": pvalues[name]} for name, c in counts.items()}


def temperature_experiment(logits, probs, args, generator):
    n, k = args.num_samples, len(probs)
    grid = np.logspace(-2, 2, args.grid_points)
    mean_max = []
    for tau in grid:
        y = gumbel_softmax_sample(logits, float(tau), (n,), generator=generator)
        mean_max.append(float(y.max(-1).values.mean()))
    shown = {}
    for tau in args.temperatures:
        y = gumbel_softmax_sample(logits, tau, (n,), generator=generator)
        shown[tau] = y.cpu()

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    ax = axes[0]
    ax.semilogx(grid, mean_max, "o-", ms=3, label="mean max_k y_k (N = {})".format(n))
    for tau in args.temperatures:
        ax.plot([tau], [float(shown[tau].max(-1).values.mean())], "s", ms=7, label="tau = {:g}".format(tau))
    ax.axhline(1.0, color="k", ls="--", lw=1, label="one-hot (tau -> 0)")
    ax.axhline(1.0 / k, color="k", ls=":", lw=1, label="uniform 1/K (tau -> inf)")
    ax.axhline(float(probs.max()), color="grey", ls="-.", lw=1, label="max_k a_k")
    ax.set_xlabel("temperature tau")
    ax.set_ylabel("mean largest component of y")
    ax.set_title("one-hot at low, uniform at high temperature")
    ax.legend(fontsize=7)

    ax = axes[1]
    per = args.shown_samples
    left = 0
    for tau in args.temperatures:
        y = shown[tau][:per].numpy()
        bottom = np.zeros(len(y))
        for j in range(k):
            ax.bar(left + np.arange(len(y)), y[:, j], bottom=bottom, color="C{}".format(j),
                   label="y_{}".format(j) if tau == args.temperatures[0] else None)
            bottom += y[:, j]
        ax.text(left + (len(y) - 1) / 2, 1.02, "tau={:g}".format(tau), ha="center", fontsize=8)
        left += len(y) + 1
    ax.set_xticks([])
    ax.set_ylim(0, 1.1)
    ax.set_xlabel("{} samples per temperature".format(per))
    ax.set_ylabel("components of y (stacked)")
    ax.set_title("Gumbel-softmax samples")
    ax.legend(fontsize=7, loc="lower right")

    ax = axes[2]
    width = 0.8 / (len(args.temperatures) + 1)
    xs = np.arange(k)
    ax.bar(xs, probs, width, color="k", label="a (= E[one-hot])")
    for i, tau in enumerate(args.temperatures, start=1):
        ax.bar(xs + i * width, shown[tau].mean(0).numpy(), width, label="E[y], tau = {:g}".format(tau))
    ax.set_xticks(xs + 0.4 - width / 2)
    ax.set_xticklabels(["k = {}".format(j) for j in range(k)])
    ax.set_xlabel("category")
    ax.set_ylabel("mean of y_k")
    ax.set_title("E[y] tends to a as tau -> 0")
    ax.legend(fontsize=7)
    save_figure(fig, os.path.join(args.out, "temperature.png"))
    return {
        "grid": grid.tolist(),
        "mean_max_component": mean_max,
        "shown": {
            "{:g}".format(tau): {
                "mean_max_component": float(y.max(-1).values.mean()),
                "mean": y.mean(0).tolist(),
            }
            for tau, y in shown.items()
        },
    }


def gradient_experiment(logits, probs, args, generator):
    c = torch.tensor(args.coefficients, dtype=logits.dtype, device=logits.device)
    exact = exact_gradient(logits, c)
    discrete_value = float((c * probs_tensor(probs, logits)).sum())
    rows = []
    for fname, f in OBJECTIVES.items():
        for name, (sample, _) in samplers(generator).items():
            for tau in args.grad_temperatures:
                grads, values = gradient_draws(sample, logits, tau, f, c, args.grad_draws)
                mean, var = grads.mean(0), grads.var(0)
                se = (var / args.grad_draws).sqrt()
                bias = mean - exact
                rows.append({
                    "objective": fname,
                    "estimator": name,
                    "temperature": tau,
                    "mean": mean.tolist(),
                    "bias": bias.tolist(),
                    "bias_norm": float(bias.norm()),
                    "bias_norm_se": float(se.norm()),
                    "max_abs_bias_over_se": float((bias.abs() / se).max()),
                    "variance_trace": float(var.sum()),
                    "value_bias": float(values.mean()) - discrete_value,
                    "value_bias_se": float(values.std() / args.grad_draws ** 0.5),
                })

    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    styles = {"linear": "-", "square": "--"}
    markers = ["o", "x", "s", "+"]
    names = list(samplers(generator))
    for fname in OBJECTIVES:
        for i, name in enumerate(names):
            sel = [r for r in rows if r["objective"] == fname and r["estimator"] == name]
            taus = [r["temperature"] for r in sel]
            label = "{}, f {}".format(name, fname)
            kw = dict(ls=styles[fname], marker=markers[i], color="C{}".format(i), label=label, ms=6)
            axes[0].errorbar(taus, [r["bias_norm"] for r in sel], yerr=[2 * r["bias_norm_se"] for r in sel],
                             capsize=2, **kw)
            axes[1].plot(taus, [r["variance_trace"] for r in sel], **kw)
    axes[0].axhline(0.0, color="k", lw=1, label="unbiased (exact gradient)")
    axes[0].set_xscale("log")
    axes[0].set_xlabel("temperature tau")
    axes[0].set_ylabel("|mean estimate - exact gradient|_2  (+- 2 SE)")
    axes[0].set_title("bias w.r.t. d/dlogits sum_k c_k a_k")
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("temperature tau")
    axes[1].set_ylabel("trace of the covariance of one-sample estimates")
    axes[1].set_title("variance ({} draws per point)".format(args.grad_draws))
    for ax in axes:
        ax.legend(fontsize=6)
    save_figure(fig, os.path.join(args.out, "gradients.png"))
    return {"coefficients": args.coefficients, "exact_gradient": exact.tolist(),
            "discrete_value": discrete_value, "rows": rows}


def probs_tensor(probs, like):
    return torch.as_tensor(probs, dtype=like.dtype, device=like.device)


def main(args):
    start = time.perf_counter()
    pyro.set_rng_seed(args.seed)
    generator = torch.Generator(device=args.device).manual_seed(args.seed)
    probs = np.asarray(args.probs, dtype=np.float64)
    probs = probs / probs.sum()
    logits = torch.tensor(np.log(probs), dtype=torch.get_default_dtype(), device=args.device)

    hist = histogram_experiment(logits, probs, args, generator)
    temp = temperature_experiment(logits, probs, args, generator)
    grad = gradient_experiment(logits, probs, args, generator)

    print("a = {}, N = {}".format(np.round(probs, 4).tolist(), args.num_samples))
    print("{:<44} {:>28} {:>10}".format("argmax histogram", "counts", "chi2 p"))
    for name, r in hist.items():
        print("{:<44} {:>28} {:>10.3f}".format(name, str(r["counts"]), r["chisquare_pvalue"]))
    print("\n{:<8} {:>20} {:>36}".format("tau", "mean max_k y_k", "E[y]"))
    for tau, r in temp["shown"].items():
        print("{:<8} {:>20.4f} {:>36}".format(tau, r["mean_max_component"], str(np.round(r["mean"], 3).tolist())))
    print("\nc = {}, exact gradient = {}".format(args.coefficients, np.round(grad["exact_gradient"], 4).tolist()))
    print("{:<7} {:<45} {:>6} {:>10} {:>9} {:>9} {:>10} {:>11}".format(
        "f", "estimator", "tau", "|bias|", "+-SE", "max z", "tr Var", "value bias"))
    for r in grad["rows"]:
        print("{:<7} {:<45} {:>6g} {:>10.4f} {:>9.4f} {:>9.1f} {:>10.4f} {:>11.4f}".format(
            r["objective"], r["estimator"], r["temperature"], r["bias_norm"], r["bias_norm_se"],
            r["max_abs_bias_over_se"], r["variance_trace"], r["value_bias"]))
    seconds = time.perf_counter() - start
    print("\n{:.1f} s".format(seconds))
    results = {"args": vars(args), "probs": probs.tolist(), "histogram": hist, "temperature": temp,
               "gradients": grad, "seconds": seconds}
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def parse_args(argv=None):
    parser = _cli.parser(__doc__, out="results/gumbel_softmax", device=True)
    positive = _cli.positive_real
    parser.add_argument("--probs", type=positive, nargs="+", default=[0.1, 0.2, 0.5, 0.2],
                        help="category probabilities a (renormalized)")
    parser.add_argument("--num-samples", type=_cli.positive_int, default=1000, help="N for the histogram and samples")
    parser.add_argument("--temperatures", type=positive, nargs="+", default=[0.1, 0.5, 1.0, 5.0])
    parser.add_argument("--grid-points", type=_cli.integer(minimum=2), default=21,
                        help="temperatures in [0.01, 100] for the curve")
    parser.add_argument("--shown-samples", type=_cli.positive_int, default=8, help="samples drawn per temperature")
    parser.add_argument("--coefficients", type=_cli.finite_real, nargs="+", default=[1.0, 2.0, 3.0, 4.0],
                        help="c in f(y) = sum_k c_k y_k (or c_k y_k^2)")
    parser.add_argument("--grad-temperatures", type=positive, nargs="+",
                        default=[0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0])
    parser.add_argument("--grad-draws", type=_cli.integer(minimum=2), default=100000,
                        help="one-sample gradient estimates per estimator and temperature")
    return _cli.parse(parser, argv, check=check_arguments)


def check_arguments(args):
    if len(args.probs) < 2:
        raise ValueError("argument --probs: needs at least two categories, got {}".format(args.probs))
    if len(args.coefficients) != len(args.probs):
        raise ValueError("argument --coefficients: needs one number per category ({}), got {}".format(
            len(args.probs), len(args.coefficients)))


if __name__ == "__main__":
    main(parse_args())
