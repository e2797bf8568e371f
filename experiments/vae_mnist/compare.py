"""The VAE study's numbers over seeds, the papers' comparisons (paired by
seed and test image), the published references and the README block."""

import math

import numpy as np
import torch

from experiments._markdown import table
from experiments._results import fmt, spread
from experiments.vae_mnist.evaluate import mean_se

# Burda et al. 2015, table 1, one stochastic layer, test NLL (L_5000) after 3,280
# epochs on the standard split.
BURDA_TEST_NLL = {
    "VAE": {"k=1": 86.76, "k=5": 86.47, "k=50": 86.35},
    "IWAE": {"k=1": 86.76, "k=5": 85.54, "k=50": 84.78},
}
# Which published number each run is compared with (same objective and K).
BURDA_REFERENCE = {
    "vae": ("IWAE", "k=1"),
    "iwae1": ("IWAE", "k=1"),
    "iwae5": ("IWAE", "k=5"),
    "renyi5": ("IWAE", "k=5"),
    "iwae50": ("IWAE", "k=50"),
}
# The papers' comparisons: (better, worse) as the papers order them.
COMPARISONS = (
    ("iwae5", "vae"),
    ("iwae50", "iwae5"),
    ("iwae50", "vae"),
    ("vae_stl", "vae"),
    ("iwae50_dreg", "iwae50"),
    ("renyi5", "iwae5"),
    ("iwae1", "vae"),
)
SUMMARY_KEYS = ("test_log_likelihood", "test_elbo", "active_units", "seconds_per_epoch")


def summarize(seeds):
    """Mean ± std over seeds (:func:`experiments._results.spread`) of a run's final numbers."""
    return {name: spread([r[name] for r in seeds.values()]) for name in SUMMARY_KEYS}


def _t_quantile(df):
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def compare(log_px):
    """The papers' comparisons ``(better, worse)`` of the test L_S, paired by
    seed and test image. ``log_px``: run -> seed -> per-image tensor."""
    rows = []
    for a, b in COMPARISONS:
        seeds = [s for s in log_px.get(a, {}) if s in log_px.get(b, {})]
        if not seeds:
            continue
        per_seed = {}
        for s in seeds:
            mean, se = mean_se(log_px[a][s] - log_px[b][s])
            per_seed[str(s)] = {"difference": mean, "paired_image_se": se}
        values = np.array([per_seed[str(s)]["difference"] for s in seeds])
        mean = float(values.mean())
        if len(values) > 1:
            sd = float(values.std(ddof=1))
            half = _t_quantile(len(values) - 1) * sd / math.sqrt(len(values))
            basis = f"95% t-interval over {len(values)} seeds (seed spread)"
        else:
            sd = None
            half = 1.96 * (per_seed[str(seeds[0])]["paired_image_se"] or 0.0)
            basis = "one seed: +-1.96 paired standard errors over test images only (no seed spread)"
        if all(torch.equal(log_px[a][s], log_px[b][s]) for s in seeds):
            verdict = "identical"
        elif mean - half > 0:
            verdict = f"{a} > {b}"
        elif mean + half < 0:
            verdict = f"{a} < {b}"
        elif len(values) > 1:
            verdict = "within the seed spread"
        else:
            verdict = "not resolved by the test images (one seed)"
        rows.append(
            {
                "better": a,
                "worse": b,
                "metric": "test_log_likelihood",
                "mean_difference": mean,
                "sd_difference": sd,
                "half_width_95": half,
                "basis": basis,
                "verdict": verdict,
                "papers_order_holds": bool(mean - half > 0) if a not in ("renyi5", "iwae1") else None,
                "per_seed": per_seed,
            }
        )
    return rows


def readme_block(results):
    args = results["args"]
    rows = [
        [run["label"], str(len(run["seeds"]))]
        + [fmt(run["summary"][key], spec) for key, spec in zip(SUMMARY_KEYS, (".2f", ".2f", ".1f", ".1f"))]
        for run in results["runs"].values()
    ]
    header = ["run", "seeds", "test L_{}".format(args["eval_samples"]), "test ELBO", "active units", "s/epoch"]
    lines = [table(header, rows)]
    bases = sorted({c["basis"] for c in results["comparisons"]})
    lines.append(
        "Comparisons in the papers' order, difference ± 95% half-width ({}): {}.\n".format(
            "; ".join(bases),
            "; ".join(
                "{better} - {worse} = {mean_difference:+.2f} ± {half_width_95:.2f} nats, {verdict}".format(**c)
                for c in results["comparisons"]
            ),
        )
    )
    burda = results["references"]["burda_test_nll_3280_epochs"]
    lines.append(
        "For scale, Burda et al. (2016, table 1) report test log-likelihoods of -{} (VAE, k = 1), -{} "
        "(IWAE k = 5) and -{} (IWAE k = 50) after 3,280 epochs; {}.\n".format(
            burda["VAE"]["k=1"],
            burda["IWAE"]["k=5"],
            burda["IWAE"]["k=50"],
            results["references"]["note"].split("; ")[-1],
        )
    )
    lines.append(
        "Command: `{command}`; test images: {}; {:.1f} h of training and evaluation in all, on {cpu}, {cpu_cores} "
        "logical CPUs, {platform}, {torch_threads} torch thread, device {}; status: {}.\n".format(
            results["data"]["test_subset"]["how"],
            results["compute_seconds"] / 3600,
            args["device"],
            results["status"],
            command=results["run"]["command"],
            **results["run"]["machine"],
        )
    )
    return "\n".join(lines)
