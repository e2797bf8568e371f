r"""The variational bound of a small Gaussian diffusion model computed two ways
(question 4.1.26; Ho et al. 2020, eqs. 3-5).

Data: N points in 2-D from a four-mode Gaussian mixture (``--data mixture``) or from
N(0, I) (``--data gaussian``). Forward process: a linear schedule of ``--timesteps`` T
betas. Reverse model: affine-Gaussian kernels whose means are the exact reverse means
of the Gaussian fitted to the data (:func:`models.diffusion.gaussian_data_reverse_process`),
so every term of the bound and :math:`\log p_\theta(x_0)` are closed form. For every
data point, ``--samples`` forward chains :math:`x_{1:T} \sim q(\cdot \mid x_0)` give,
on the same chains,

- (a) the direct estimate :math:`\log q(x_{1:T} \mid x_0) - \log p_\theta(x_{0:T})` (eq. 3),
- (b) the KL-decomposed estimate :math:`L_T + \sum_{t > 1} L_{t-1} + L_0` (eq. 5) with
  each KL in closed form at the chain's :math:`x_t` (Rao-Blackwellized over
  :math:`x_{t-1}`),

against the closed-form bound. "Variance" is the variance of one chain's estimate of
L(x_0), averaged over the data points. The main model is picked by ``--model``; the
variance comparison runs over a family of reverse variances (``--variance-scales``
times the exact reverse variance, and Ho et al.'s two fixed choices), because which
form has the lower variance depends on how close the model is to the true reverse
process. The chains are drawn once per seed of ``--seeds`` (mean ± std over seeds).
Writes ``terms.png`` (per-term L_t and per-term spread, first seed), ``variance.png``
(variance of both forms against the looseness of the bound, every seed),
``histogram.png`` (per-chain estimates minus the exact bound, first seed) and
``results.json``.

    python -m experiments.diffusion_bound --out results/diffusion_bound

References

1. J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS 2020.
"""

import dataclasses
import math
import os

import numpy as np
import torch

from experiments import _cli
from experiments._figures import legend_outside, plt, save_figure
from experiments._markdown import run_line, table, times
from experiments._results import fmt, spreads
from experiments._study import Study
from models.diffusion import (
    decomposed_bound_terms,
    direct_bound_terms,
    exact_bound_terms,
    gaussian_data_reverse_process,
    generate_mixture_data,
    ho_reverse_variances,
    linear_schedule,
    model_log_marginal,
    sample_forward_chain,
)

MODELS = ("gaussian-fit", "ho-beta", "ho-beta-tilde")


def make_data(kind, num_data, seed):
    if kind == "mixture":
        return generate_mixture_data(num_data, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(num_data, 2, dtype=torch.float64, generator=generator)


def reverse_models(betas, data, variance_scales):
    """Name -> AffineReverseProcess: the Gaussian-fit reverse process with its exact
    variances, those variances times each scale, and Ho et al.'s two fixed choices."""
    fit = gaussian_data_reverse_process(betas, data.mean(0), data.var(0))
    models = {"gaussian-fit": fit}
    for choice in ("beta", "beta_tilde"):
        name = "ho-" + choice.replace("_", "-")
        models[name] = dataclasses.replace(fit, variance=ho_reverse_variances(betas, choice, fit.dim))
    for scale in variance_scales:
        models[f"gaussian-fit, variance x{scale:g}"] = dataclasses.replace(fit, variance=scale * fit.variance)
    return models


def summarize(per_chain):
    """Mean over data points of a (chains, points) tensor: the mean, its standard
    error, and the variance of one chain's estimate averaged over the points."""
    num_chains, num_points = per_chain.shape
    variance = per_chain.var(0).mean().item()
    return {
        "mean": per_chain.mean().item(),
        "standard_error": math.sqrt(variance / (num_chains * num_points)),
        "variance": variance,
    }


def evaluate(data, process, direct_terms, decomposed_terms, exact):
    """Both forms of the bound and the closed forms for one reverse model."""
    direct_sum, decomposed_sum = direct_terms.sum(-1), decomposed_terms.sum(-1)
    direct, decomposed = summarize(direct_sum), summarize(decomposed_sum)
    difference = summarize(direct_sum - decomposed_sum)
    term_variance = decomposed_terms.var(0)  # over the chains
    exact_bound = exact.sum(-1).mean().item()
    num_chains, num_points = decomposed_terms.shape[:2]  # (chains, points, T + 1)
    neg_log_marginal = -model_log_marginal(data, process).mean().item()
    return {
        "exact_bound": exact_bound,
        "neg_log_marginal": neg_log_marginal,
        "gap": exact_bound - neg_log_marginal,
        "direct": direct,
        "decomposed": decomposed,
        "paired_difference": difference,
        # An estimator drawing a fresh x_t for every term has no covariances between terms.
        "decomposed_independent_terms_variance": term_variance.sum(-1).mean().item(),
        "variance_ratio_direct_over_decomposed": direct["variance"] / decomposed["variance"],
        "terms": {
            "exact": exact.mean(0).tolist(),
            "decomposed_mean": decomposed_terms.mean((0, 1)).tolist(),
            "decomposed_standard_error": (term_variance.mean(0) / (num_chains * num_points)).sqrt().tolist(),
            "decomposed_std": term_variance.mean(0).sqrt().tolist(),
            "direct_mean": direct_terms.mean((0, 1)).tolist(),
            "direct_std": direct_terms.var(0).mean(0).sqrt().tolist(),
        },
    }


def scalars(result):
    """The per-seed numbers of one model's :func:`evaluate` result."""
    forms = ("direct", "decomposed")
    ratio, fresh = "variance_ratio_direct_over_decomposed", "decomposed_independent_terms_variance"
    return dict(
        {form: result[form]["mean"] for form in forms},
        **{f"{form}_variance": result[form]["variance"] for form in forms},
        paired_difference=result["paired_difference"]["mean"],
        **{ratio: result[ratio], fresh: result[fresh]},
        **{f"{form}_standard_error": result[form]["standard_error"] for form in forms},
    )


def plot_terms(r, path, title):
    terms = {key: np.asarray(value) for key, value in r["terms"].items()}
    k = np.arange(len(terms["exact"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    left.plot(k[1:], terms["exact"][1:], "k-", lw=1.2, label="closed form")
    mean, two_se = terms["decomposed_mean"][1:], 2 * terms["decomposed_standard_error"][1:]
    label = "Monte Carlo over x_t, closed-form KL (2 SE bars)"
    left.errorbar(k[1:], mean, yerr=two_se, fmt="o", ms=3, capsize=2, label=label)
    left.set(yscale="log", xlabel="k  (L_k = KL term for x_k; L_T = prior term)", ylabel="L_k (nats per data point)")
    left.set_title("{}: L_1..L_T (L_0 = {:.3f}, not on log axis)".format(title, terms["exact"][0]), fontsize=10)
    legend_outside(left, where="below", ncol=1)
    decomposed_std = np.where(terms["decomposed_std"] > 0, terms["decomposed_std"], np.nan)  # L_T is exact
    right.plot(k, terms["direct_std"], "o-", ms=3, label="one-sample log-ratio (inside the direct form)")
    right.plot(k, decomposed_std, "s-", ms=3, label="closed-form KL at x_t (decomposed form; L_T exact)")
    right.set(yscale="log", xlabel="k", ylabel="std of one chain's estimate of L_k (nats)")
    right.set_title("Per-term spread; the closed-form KL is Rao-Blackwellized over x_k", fontsize=10)
    legend_outside(right, where="below", ncol=1)
    save_figure(fig, path)


def plot_variance(summary, main, path):
    """Variance of both forms against the looseness of the bound, one column
    of markers per reverse model (mean over seeds; small dots: each seed)."""
    names = sorted(summary, key=lambda n: summary[n]["gap"])
    gaps = np.array([max(summary[n]["gap"], 1e-6) for n in names])
    num_seeds = len(summary[names[0]]["direct_variance"]["values"])
    fig, ax = plt.subplots(figsize=(9, 5.5))
    series = [
        ("direct_variance", "o", "C0", "(a) direct, eq. 3"),
        ("decomposed_variance", "s", "C1", "(b) KL-decomposed, eq. 5 (x_t from the same chain)"),
        (
            "decomposed_independent_terms_variance",
            "^",
            "C2",
            "(b) with a fresh x_t per term (sum of per-term variances)",
        ),
    ]
    direct = np.array([summary[n]["direct_variance"]["mean"] for n in names])
    decomposed = np.array([summary[n]["decomposed_variance"]["mean"] for n in names])
    ax.vlines(gaps, np.minimum(direct, decomposed), np.maximum(direct, decomposed), colors="0.8", lw=1)
    one_seed = "one seed (small dots, inside the markers where the seeds agree)"
    for key, marker, color, label in series:
        # the hollow triangle around the others where they coincide
        hollow = dict(mfc="none", ms=9) if marker == "^" else dict(mfc=color, ms=6)
        ax.plot(gaps, [summary[n][key]["mean"] for n in names], marker, color=color, ls="none", label=label, **hollow)
        if num_seeds > 1:
            for j in range(num_seeds):
                first = key == "direct_variance" and j == 0
                values = [summary[n][key]["values"][j] for n in names]
                ax.plot(gaps, values, ".", color=color, ms=2, label=one_seed if first else None)
    text = dict(fontsize=7, rotation=90, va="bottom", textcoords="offset points", xytext=(0, 8))
    for index, (gap, name) in enumerate(zip(gaps, names)):
        top = (gap, max(direct[index], decomposed[index]))
        side = "left" if index % 2 else "right"  # neighbours apart
        ax.annotate(name.replace("gaussian-fit, ", ""), top, ha=side, color="r" if name == main else "k", **text)
    ax.set(xscale="log", yscale="log", xlabel="looseness of the bound: L - (-log p_theta(x_0)) (nats, closed form)")
    ax.set_ylabel("variance of one chain's estimate of L(x_0)")
    ax.set_title(f"Which form has the lower variance depends on how good p_theta is ({num_seeds} seed(s))", fontsize=10)
    ax.set_ylim(top=ax.get_ylim()[1] * 300)
    legend_outside(ax, where="below", ncol=1)
    save_figure(fig, path)


def histogram(direct, decomposed, exact, bins=80):
    """The per-chain estimates of both forms minus the exact bound, as
    densities over shared bins, with their standard deviations."""
    errors = {"(a) direct": (direct - exact).flatten(), "(b) KL-decomposed": (decomposed - exact).flatten()}
    low = min(e.min().item() for e in errors.values())
    high = max(e.max().item() for e in errors.values())
    edges = np.linspace(low, high, bins)
    return {
        "edges": edges.tolist(),
        "density": {
            label: np.histogram(e.numpy(), bins=edges, density=True)[0].tolist() for label, e in errors.items()
        },
        "std": {label: e.std().item() for label, e in errors.items()},
    }


def plot_histogram(hist, path, title):
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for label, density in hist["density"].items():
        ax.stairs(density, hist["edges"], lw=1.5, label=f"{label} (std {hist['std'][label]:.3g})")
    ax.axvline(0, color="k", ls=":", label="exact L(x_0)")
    ax.set(yscale="log", xlabel="one chain's estimate of L(x_0) minus the closed-form L(x_0) (nats)")
    ax.set_ylabel("density (log scale)")
    ax.set_title(title, fontsize=10)
    legend_outside(ax)
    save_figure(fig, path)


def run(args):
    betas = linear_schedule(args.timesteps, args.beta_start, args.beta_end)
    data = make_data(args.data, args.num_data, args.data_seed)
    models = reverse_models(betas, data, args.variance_scales)
    first, per_seed = {}, {name: [] for name in models}
    for seed in args.seeds:
        chain = sample_forward_chain(data, betas, args.samples, torch.Generator().manual_seed(seed + 1))
        for name, process in models.items():
            terms = (
                direct_bound_terms(data, chain, betas, process),
                decomposed_bound_terms(data, chain, betas, process),
                exact_bound_terms(data, betas, process),
            )
            result = evaluate(data, process, *terms)
            per_seed[name].append(scalars(result))
            if seed == args.seeds[0]:
                first[name] = result
                if name == args.model:
                    direct_terms, decomposed_terms, exact = terms
    closed_forms = ("exact_bound", "neg_log_marginal", "gap")  # the same for every seed
    summary = {
        name: dict({key: first[name][key] for key in closed_forms}, **spreads(rows)) for name, rows in per_seed.items()
    }
    return {
        "main_model": args.model,
        "summary": summary,
        "main_model_terms_first_seed": first[args.model]["terms"],
        "histogram_first_seed": histogram(direct_terms.sum(-1), decomposed_terms.sum(-1), exact.sum(-1)),
        "per_seed": per_seed,
    }


def figures(results, out):
    args, main = results["args"], results["main_model"]
    plot_terms({"terms": results["main_model_terms_first_seed"]}, os.path.join(out, "terms.png"), main)
    plot_variance(results["summary"], main, os.path.join(out, "variance.png"))
    plot_histogram(
        results["histogram_first_seed"],
        os.path.join(out, "histogram.png"),
        f"{main}: per-chain estimates of the bound, {args['samples']} chains x {args['num_data']} points (first seed)",
    )


def readme_block(results):
    summary, main = results["summary"], results["main_model"]
    columns = {"direct": ".4f", "decomposed": ".4f", "direct_variance": ".3g", "decomposed_variance": ".3g"}
    rows = [
        [name + (" (main)" if name == main else ""), "{:.4f}".format(s["exact_bound"])]
        + [fmt(s[key], spec) for key, spec in columns.items()]
        for name, s in sorted(summary.items(), key=lambda item: item[1]["gap"])
    ]
    difference, variance = summary[main]["paired_difference"], summary[main]["decomposed_variance"]["mean"]
    samples = results["args"]["samples"]
    header = ["reverse model", "exact bound", "direct (eq. 3)", "decomposed (eq. 5)"]
    return "\n".join(
        [
            table(header + ["variance, direct", "variance, decomposed"], rows),
            f"Nats per data point, mean ± standard deviation over seeds of {samples} chains per point; variance of "
            f"one chain's estimate. For the main model the decomposed estimate lies {difference['mean']:.4f} ± "
            f"{difference['std'] or 0.0:.4f} below the direct one on the same chains; its per-chain distribution is "
            f"skewed to the right (variance {variance:.3g}), so a mean of {samples} chains usually falls short of the "
            "exact value and rare chains with large estimates make up the difference.\n",
            crossover(summary),
            run_line(results),
        ]
    )


def crossover(summary):
    """Which form has the lower variance, model by model."""

    def ratio(name):
        return summary[name]["direct_variance"]["mean"] / summary[name]["decomposed_variance"]["mean"]

    ordered = sorted(summary, key=lambda n: summary[n]["gap"])
    direct_wins = [
        "{} ({} times, bound loose by {:.2g} nats)".format(n, times(1 / ratio(n)), summary[n]["gap"])
        for n in ordered
        if ratio(n) < 1
    ]
    decomposed_wins = [
        "{} ({} times, {:.2g} nats)".format(n, times(ratio(n)), summary[n]["gap"]) for n in ordered if ratio(n) >= 1
    ]
    return "Lower variance for the direct form: {}. Lower for the decomposed form: {}.\n".format(
        "; ".join(direct_wins) or "none", "; ".join(decomposed_wins) or "none"
    )


SEEDS = "a seed draws the forward chains; the data are fixed by --data-seed"


def parser():
    parser = _cli.parser(__doc__, "results/diffusion_bound", seeds=(0, 1, 2), seeds_help=SEEDS, data_seed=True)
    parser.add_argument("--data", choices=("mixture", "gaussian"), default="mixture")
    parser.add_argument("--num-data", type=_cli.positive_int, default=32)
    parser.add_argument(
        "--samples",
        type=_cli.integer(minimum=2),
        default=500,
        help="forward chains per data point (at least 2: a variance needs two)",
    )
    parser.add_argument("--timesteps", type=_cli.positive_int, default=50, help="T")
    parser.add_argument("--beta-start", type=_cli.positive_real, default=1e-3)
    parser.add_argument("--beta-end", type=_cli.positive_real, default=0.2)
    parser.add_argument(
        "--model", choices=MODELS, default="ho-beta", help="reverse model of the per-term figure and histogram"
    )
    parser.add_argument(
        "--variance-scales",
        type=_cli.positive_real,
        nargs="*",
        default=[0.25, 0.5, 0.8, 1.25, 2.0, 4.0],
        help="extra models: the Gaussian-fit reverse variances times each scale",
    )
    return parser


def check_arguments(args):
    if not args.beta_start <= args.beta_end < 1:
        raise ValueError(f"need 0 < --beta-start <= --beta-end < 1, got {args.beta_start} and {args.beta_end}")


STUDY = Study("diffusion_bound", parser, run, figures, readme_block, check=check_arguments)

if __name__ == "__main__":
    STUDY.main()
