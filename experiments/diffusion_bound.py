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
process. Writes ``terms.png`` (per-term L_t and per-term spread), ``variance.png``
(variance of both forms against the looseness of the bound), ``histogram.png``
(per-chain estimates minus the exact bound) and ``results.json``.

    python -m experiments.diffusion_bound --out results/diffusion_bound

References

1. J. Ho, A. Jain, P. Abbeel, *Denoising Diffusion Probabilistic Models*, NeurIPS 2020.
"""

import dataclasses
import json
import math
import os

import numpy as np
import torch

if not __package__:  # run as ``python experiments/diffusion_bound.py``
    import _repo_root  # noqa: F401

from experiments import _cli  # noqa: E402
from experiments._figures import plt, save_figure  # noqa: E402
from models.diffusion import (  # noqa: E402
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
        models["gaussian-fit, variance x{:g}".format(scale)] = dataclasses.replace(fit, variance=scale * fit.variance)
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


def estimates(data, chain, betas, process):
    """Per-chain terms of both forms, (chains, points, T + 1), and the exact terms (points, T + 1)."""
    return (
        direct_bound_terms(data, chain, betas, process),
        decomposed_bound_terms(data, chain, betas, process),
        exact_bound_terms(data, betas, process),
    )


def summarize_terms(terms):
    """Per-term mean and standard error of a (chains, points, T + 1) tensor."""
    num_chains, num_points = terms.shape[:2]
    se = (terms.var(0).mean(0) / (num_chains * num_points)).sqrt()
    return terms.mean((0, 1)).tolist(), se.tolist()


def evaluate(data, process, direct_terms, decomposed_terms, exact):
    """Both forms of the bound and the closed forms for one reverse model."""
    direct, decomposed = summarize(direct_terms.sum(-1)), summarize(decomposed_terms.sum(-1))
    difference = summarize(direct_terms.sum(-1) - decomposed_terms.sum(-1))
    exact_bound = exact.sum(-1).mean().item()
    neg_log_marginal = -model_log_marginal(data, process).mean().item()
    return {
        "exact_bound": exact_bound,
        "neg_log_marginal": neg_log_marginal,
        "gap": exact_bound - neg_log_marginal,
        "direct": direct,
        "decomposed": decomposed,
        "paired_difference": difference,
        # An estimator drawing a fresh x_t for every term has no covariances between terms.
        "decomposed_independent_terms_variance": decomposed_terms.var(0).sum(-1).mean().item(),
        "variance_ratio_direct_over_decomposed": direct["variance"] / decomposed["variance"],
        "terms": {
            "exact": exact.mean(0).tolist(),
            "decomposed_mean": decomposed_terms.mean((0, 1)).tolist(),
            "decomposed_standard_error": summarize_terms(decomposed_terms)[1],
            "decomposed_std": decomposed_terms.var(0).mean(0).sqrt().tolist(),
            "direct_mean": direct_terms.mean((0, 1)).tolist(),
            "direct_std": direct_terms.var(0).mean(0).sqrt().tolist(),
        },
    }


def print_table(results, main):
    print("{:<32} {:>8} {:>8} {:>18} {:>18} {:>10} {:>10} {:>10}".format(
        "reverse model", "exact L", "-log p", "direct +- SE", "decomposed +- SE", "Var dir", "Var dec", "dir/dec"))
    for name, r in results.items():
        print("{:<32} {:>8.4f} {:>8.4f} {:>10.4f} +- {:<6.4f} {:>10.4f} +- {:<6.4f} {:>10.3g} {:>10.3g} {:>10.3g}{}".format(
            name, r["exact_bound"], r["neg_log_marginal"], r["direct"]["mean"], r["direct"]["standard_error"],
            r["decomposed"]["mean"], r["decomposed"]["standard_error"], r["direct"]["variance"],
            r["decomposed"]["variance"], r["variance_ratio_direct_over_decomposed"], "  <- main" if name == main else ""))


def print_terms(r, num_terms=6):
    terms = r["terms"]
    print("{:>6} {:>10} {:>20} {:>12} {:>12}".format("term", "exact", "decomposed +- SE", "std (RB)", "std (MC)"))
    shown = list(range(min(num_terms, len(terms["exact"])))) + [len(terms["exact"]) - 1]
    for k in sorted(set(shown)):
        print("{:>6} {:>10.4f} {:>12.4f} +- {:<6.4f} {:>12.4f} {:>12.4f}".format(
            "L_{}".format(k), terms["exact"][k], terms["decomposed_mean"][k], terms["decomposed_standard_error"][k],
            terms["decomposed_std"][k], terms["direct_std"][k]))


def plot_terms(r, path, title):
    terms = {key: np.asarray(value) for key, value in r["terms"].items()}
    k = np.arange(len(terms["exact"]))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot(k[1:], terms["exact"][1:], "k-", lw=1.2, label="closed form")
    left.errorbar(k[1:], terms["decomposed_mean"][1:], yerr=2 * terms["decomposed_standard_error"][1:], fmt="o",
                  ms=3, capsize=2, label="Monte Carlo over x_t, closed-form KL (2 SE bars)")
    left.set_yscale("log")
    left.set_xlabel("k  (L_k = KL term for x_k; L_T = prior term)")
    left.set_ylabel("L_k (nats per data point)")
    left.set_title("{}: L_1..L_T (L_0 = {:.3f}, not on log axis)".format(title, terms["exact"][0]), fontsize=10)
    left.legend(fontsize=8)
    decomposed_std = np.where(terms["decomposed_std"] > 0, terms["decomposed_std"], np.nan)  # L_T is exact
    right.plot(k, terms["direct_std"], "o-", ms=3, label="one-sample log-ratio (inside the direct form)")
    right.plot(k, decomposed_std, "s-", ms=3, label="closed-form KL at x_t (decomposed form; L_T exact)")
    right.set_yscale("log")
    right.set_xlabel("k")
    right.set_ylabel("std of one chain's estimate of L_k (nats)")
    right.set_title("Per-term spread; the closed-form KL is Rao-Blackwellized over x_k", fontsize=10)
    right.legend(fontsize=8)
    save_figure(fig, path)


def plot_variance(results, main, path):
    names = sorted(results, key=lambda n: results[n]["gap"])
    gaps = np.array([max(results[n]["gap"], 1e-6) for n in names])
    fig, ax = plt.subplots(figsize=(8, 5))
    direct = [results[n]["direct"]["variance"] for n in names]
    decomposed = [results[n]["decomposed"]["variance"] for n in names]
    ax.vlines(gaps, np.minimum(direct, decomposed), np.maximum(direct, decomposed), colors="0.8", lw=1)
    ax.plot(gaps, direct, "o", label="(a) direct, eq. 3")
    ax.plot(gaps, decomposed, "s", label="(b) KL-decomposed, eq. 5 (x_t from the same chain)")
    ax.plot(gaps, [results[n]["decomposed_independent_terms_variance"] for n in names], "^", mfc="none",
            label="(b) with a fresh x_t per term (sum of per-term variances)")
    for index, (gap, name) in enumerate(zip(gaps, names)):
        ax.annotate(name.replace("gaussian-fit, ", ""), (gap, max(direct[index], decomposed[index])), fontsize=7,
                    rotation=90, ha="left" if index % 2 else "right", va="bottom",  # neighbours apart
                    textcoords="offset points", xytext=(0, 8),
                    color="r" if name == main else "k")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("looseness of the bound: L - (-log p_theta(x_0)) (nats, closed form)")
    ax.set_ylabel("variance of one chain's estimate of L(x_0)")
    ax.set_title("Which form has the lower variance depends on how good p_theta is", fontsize=11)
    ax.set_ylim(top=ax.get_ylim()[1] * 300)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_histogram(direct, decomposed, exact, path, title):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    errors = {"(a) direct": direct - exact, "(b) KL-decomposed": decomposed - exact}
    low = min(e.min().item() for e in errors.values())
    high = max(e.max().item() for e in errors.values())
    bins = np.linspace(low, high, 80)
    for label, error in errors.items():
        ax.hist(error.flatten().numpy(), bins=bins, density=True, histtype="step", lw=1.5,
                label="{} (std {:.3g})".format(label, error.std().item()))
    ax.axvline(0, color="k", ls=":", label="exact L(x_0)")
    ax.set_yscale("log")
    ax.set_xlabel("one chain's estimate of L(x_0) minus the closed-form L(x_0) (nats)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    save_figure(fig, path)


def main(args):
    betas = linear_schedule(args.timesteps, args.beta_start, args.beta_end)
    data = make_data(args.data, args.num_data, args.seed)
    chain = sample_forward_chain(data, betas, args.samples, torch.Generator().manual_seed(args.seed + 1))
    models = reverse_models(betas, data, args.variance_scales)
    results = {}
    for name, process in models.items():
        terms = estimates(data, chain, betas, process)
        results[name] = evaluate(data, process, *terms)
        if name == args.model:
            direct_terms, decomposed_terms, exact = terms
    main_result = results[args.model]

    print("data: {} ({} points, 2-D); T = {}, betas linear {:g}..{:g}; {} chains per point".format(
        args.data, args.num_data, args.timesteps, args.beta_start, args.beta_end, args.samples))
    print_table(results, args.model)
    print("\nmain model {}: per-term L_k (nats per data point)".format(args.model))
    print_terms(main_result)
    difference = main_result["paired_difference"]
    print("direct - decomposed = {:.4f} +- {:.4f} (paired SE); variance ratio direct/decomposed = {:.3g}".format(
        difference["mean"], difference["standard_error"], main_result["variance_ratio_direct_over_decomposed"]))

    plot_terms(main_result, os.path.join(args.out, "terms.png"), args.model)
    plot_variance(results, args.model, os.path.join(args.out, "variance.png"))
    plot_histogram(
        direct_terms.sum(-1),
        decomposed_terms.sum(-1),
        exact.sum(-1),
        os.path.join(args.out, "histogram.png"),
        "{}: per-chain estimates of the bound, {} chains x {} points".format(args.model, args.samples, args.num_data),
    )
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump({"args": vars(args), "betas": betas.tolist(), "main_model": args.model, "models": results}, f, indent=2)
    return results


def parse_args(argv=None):
    parser = _cli.parser(__doc__, out="results/diffusion_bound")
    parser.add_argument("--data", choices=("mixture", "gaussian"), default="mixture")
    parser.add_argument("--num-data", type=_cli.positive_int, default=32)
    parser.add_argument("--samples", type=_cli.integer(minimum=2), default=500,
                        help="forward chains per data point (at least 2: a variance needs two)")
    parser.add_argument("--timesteps", type=_cli.positive_int, default=50, help="T")
    parser.add_argument("--beta-start", type=_cli.positive_real, default=1e-3)
    parser.add_argument("--beta-end", type=_cli.positive_real, default=0.2)
    parser.add_argument("--model", choices=MODELS, default="ho-beta",
                        help="reverse model of the per-term figure and histogram")
    parser.add_argument("--variance-scales", type=_cli.positive_real, nargs="*",
                        default=[0.25, 0.5, 0.8, 1.25, 2.0, 4.0],
                        help="extra models: the Gaussian-fit reverse variances times each scale")
    return _cli.parse(parser, argv, check=check_arguments)


def check_arguments(args):
    if not args.beta_start <= args.beta_end < 1:
        raise ValueError("need 0 < --beta-start <= --beta-end < 1, got {} and {}".format(
            args.beta_start, args.beta_end))


if __name__ == "__main__":
    main(parse_args())
