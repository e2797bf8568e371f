"""Renders the README's result tables from the committed ``results/*/results.json``.

    python -m experiments.render_readme          # rewrites the blocks in README.md
    python -m experiments.render_readme --check  # only compares; exit 1 if they differ

A block in README.md is everything between two markers::

    <!-- results:NAME -->
    ... rendered, never edited by hand ...
    <!-- /results:NAME -->

and its content is what the function registered for ``NAME`` returns from
its JSON files. To add a block (an MNIST table, a compatibility table, a
scaling benchmark), write one function that takes the loaded JSON files and
returns Markdown, register it, and put the two markers where it goes::

    @block("vae_mnist")                              # reads results/vae_mnist/results.json
    def vae_mnist(results):
        return table(["run", "test log p(x)"], [[name, pm(row["log_px"])] for name, row in ...])

    @block("mixtures", "results/gmm_cavi/results.json", "results/earthquake/results.json")
    def mixtures(gmm, earthquake): ...

The helpers :func:`table`, :func:`pm`, :func:`run_line` and
:func:`spread_sentence` keep the blocks alike. ``tests/test_render_readme.py``
checks that README.md equals what this script renders from the committed JSON.
"""

import argparse
import difflib
import importlib
import json
import math
import os
import re
import sys

if not __package__:  # run as ``python experiments/render_readme.py``
    import _repo_root  # noqa: F401

from experiments._results import fmt, within_spread

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
MARKERS = re.compile(r"(<!-- results:([\w.-]+) -->\n)(.*?)(<!-- /results:\2 -->)", re.S)

#: name -> (function, JSON paths relative to the repository root)
BLOCKS = {}


def block(name, *paths):
    """Registers the decorated function as the renderer of block ``name``; it
    is called with the loaded JSON of each of ``paths`` (default
    ``results/NAME/results.json``) and returns Markdown."""

    def register(function):
        if name in BLOCKS:
            raise ValueError(f"block {name!r} is registered twice")
        BLOCKS[name] = (function, paths or (f"results/{name}/results.json",))
        return function

    return register


def load(path, root=ROOT):
    """The JSON at ``root/path``; a missing file says which study writes it."""
    full = os.path.join(root, path)
    if not os.path.isfile(full):
        study = path.split("/")[1] if path.startswith("results/") else path
        raise FileNotFoundError(
            f"{path} is missing: run `python -m experiments.{study} --out results/{study}` and commit "
            "the results.json it writes"
        )
    with open(full) as f:
        return json.load(f)


def render(name, root=ROOT):
    """The Markdown of block ``name`` (ending in a newline): the
    ``readme_block`` of study ``name`` (:class:`experiments._study.Study`)
    applied to its ``results/NAME/results.json``, or a renderer registered
    here with :func:`block`."""
    if name not in BLOCKS:
        study = _study(name)
        if study is None or study.readme_block is None:
            raise KeyError(
                f"README block {name!r} has no renderer: give experiments/{name}.py a STUDY with a readme_block"
            )
        return study.readme_block(load(f"results/{name}/results.json", root)).rstrip("\n") + "\n"
    function, paths = BLOCKS[name]
    return function(*(load(path, root) for path in paths)).rstrip("\n") + "\n"


def renderers():
    """The names of every block that can be rendered: the studies with a
    ``readme_block`` and the renderers registered here."""
    names = set(BLOCKS)
    for entry in os.listdir(os.path.dirname(os.path.abspath(__file__))):
        name = entry[:-3] if entry.endswith(".py") else entry
        if name.startswith("_") or name == "render_readme" or not name.isidentifier():
            continue
        study = _study(name)
        if study is not None and study.readme_block is not None:
            names.add(name)
    return names


def _study(name):
    """The ``STUDY`` of module ``experiments.NAME``, or ``None``."""
    try:
        module = importlib.import_module("experiments." + name)
    except ModuleNotFoundError as error:
        if error.name != "experiments." + name:
            raise
        return None
    return getattr(module, "STUDY", None)


def rewrite(text, root=ROOT):
    """``text`` with every marked block replaced by its rendering."""
    return MARKERS.sub(lambda m: m.group(1) + render(m.group(2), root) + m.group(4), text)


def blocks_in(text):
    """The block names marked in ``text``, in order."""
    return [m.group(2) for m in MARKERS.finditer(text)]


# ----------------------------------------------------------------------------
# helpers for the renderers


def table(header, rows, align=None):
    """A Markdown table; the first column left-aligned, the others right
    (or ``align``, a string of ``l``/``r`` per column)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = ["---" if a == "l" else "---:" for a in align]
    lines = [header, rule] + [[str(cell) for cell in row] for row in rows]
    return "\n".join("| " + " | ".join(line) + " |" for line in lines) + "\n"


def pm(stat, spec=".3f"):
    """``mean ± std`` of a spread (see :func:`experiments._results.spread`)."""
    return fmt(stat, spec)


def times(value):
    """A factor in words: 37, 1.4 million."""
    if value >= 1e6:
        return f"{value / 1e6:.2g} million"
    return "{:,.0f}".format(float(f"{value:.2g}")) if value >= 10 else f"{value:.2g}"


def seconds(value):
    """A wall time in words: 45 s, 3.5 min."""
    return f"{value:.0f} s" if value < 90 else f"{value / 60:.1f} min"


def machine_text(run):
    """``2 CPU cores (AMD EPYC), 1 torch thread``."""
    m = run["machine"]
    threads = m["torch_threads"]
    return "{} CPU cores ({}), {} torch thread{}".format(m["cpu_cores"], m["cpu"], threads, "" if threads == 1 else "s")


def run_line(results):
    """The command, seeds, wall and CPU time and machine of a run, as one line."""
    run = results["run"]
    seeds = run["seeds"]
    load = "" if run.get("load_average") is None else ", load average {:.1f} at the end".format(run["load_average"])
    return "Command: `{}`; seed{} {}; {} wall, {} CPU, on {}{}.\n".format(
        run["command"],
        "" if len(seeds) == 1 else "s",
        ", ".join(map(str, seeds)),
        seconds(run["wall_seconds"]),
        seconds(run["cpu_seconds"]),
        machine_text(run),
        load,
    )


def spread_sentence(pairs, what):
    """A sentence naming the pairs whose difference in ``what`` is within the
    seed spread (|difference of means| <= sum of the standard deviations)."""
    if not pairs:
        return f"Every difference in {what} is larger than the seed spread.\n"
    return (
        "Within the seed spread of each other in {} (|difference of means| <= sum of the standard "
        "deviations): {}.\n".format(what, "; ".join(f"{a} and {b}" for a, b in pairs))
    )


# ----------------------------------------------------------------------------
# the blocks


@block("compatibility")
def compatibility(results):
    from experiments.compatibility import render as render_compatibility

    return render_compatibility(results["records"])


@block("bbvi_normal_gamma")
def bbvi_normal_gamma(results):
    ref, summary = results["references"], results["summary"]
    rows = [
        [
            name,
            pm(s["final_elbo"]),
            pm(s["gap_to_cavi"]),
            pm(s["grad_variance_start"], ".3g"),
            pm(s["grad_variance_cavi"], ".3g"),
        ]
        for name, s in summary.items()
    ]
    names = list(summary)
    score, pooled, loo = names[0], names[1], names[2]
    cut = summary[score]["grad_variance_cavi"]["mean"] / summary[pooled]["grad_variance_cavi"]["mean"]
    cut_loo = summary[score]["grad_variance_cavi"]["mean"] / summary[loo]["grad_variance_cavi"]["mean"]
    return "\n".join(
        [
            "Exact references: log p(X) = {:.4f}; CAVI optimum of the mean-field ELBO = {:.4f} (so "
            "KL(q* || p) = {:.4f} nats).\n".format(
                ref["log_evidence"], ref["cavi_elbo"], ref["log_evidence"] - ref["cavi_elbo"]
            ),
            table(["estimator", "final ELBO", "gap to CAVI", "grad. variance at start", "at CAVI optimum"], rows),
            "Mean ± standard deviation over seeds; gradient variance summed over the four unconstrained parameters, "
            "{} draws. At the CAVI optimum the pooled control variate has {} times and leave-one-out {} times lower "
            "variance than the plain score function. ".format(
                results["args"]["variance_draws"], times(cut), times(cut_loo)
            )
            + spread_sentence(results["within_seed_spread"]["final_elbo"], "final ELBO"),
            run_line(results),
        ]
    )


def _ratio_cell(row, low="ratio_low", high="ratio_high", key="ratio"):
    return f"{row[key]:.2f} ({row[low]:.2f}-{row[high]:.2f})"


def _benchmark_table(part, target):
    baseline = part["baseline"]
    rows = [
        [name, "{:.2f}".format(row["ms_per_step"]), _ratio_cell(row), target.get(name, "")]
        for name, row in part["estimators"].items()
    ]
    text = table(["estimator", "ms/step", f"x {baseline} (rounds' range)", "target"], rows)
    like = part["like_baseline"]
    if like:
        text += "\nThe per-round ratio range contains 1 for {}: this run cannot tell {} from {}.\n".format(
            " and ".join(like), "it" if len(like) == 1 else "them", baseline
        )
    return text


@block("benchmark", "results/benchmark/results.json")
def benchmark(results):
    args = results["args"]
    return "\n".join(
        [
            "Time per SVI step with {} vectorized particles, all estimators timed round-robin in one run (median of "
            "{} rounds of {} steps), as a ratio to Trace_ELBO within each round; in brackets the lowest and highest "
            "round:\n".format(args["particles"], args["rounds"] * len(results["run"]["seeds"]), args["steps"]),
            _benchmark_table(
                results["normal_gamma"],
                {
                    "ScoreFunctionELBO": "<= 1.1",
                    "ControlVariateELBO (pooled)": "<= 2",
                    "ControlVariateELBO (leave-one-out)": "<= 2",
                },
            ),
            run_line(results),
        ]
    )


@block("benchmark_rao_blackwell", "results/benchmark/results.json")
def benchmark_rao_blackwell(results):
    return "\n".join(
        [
            "On the 1.C.2 model (N = 20, {} vectorized particles), from the same run:\n".format(
                results["args"]["particles"]
            ),
            _benchmark_table(results["rao_blackwell"], {"RaoBlackwellELBO (CV)": "<= 1.5"}),
        ]
    )


@block("rao_blackwell")
def rao_blackwell(results):
    summary, groups = results["summary"], list(results["groups"])
    reference = next(iter(summary))
    rows = [
        [name] + [pm(s["reduction_poor"][g], ".3g") for g in groups] + [pm(s["final_elbo"])]
        for name, s in summary.items()
    ]
    identical = results.get("identical", {})
    lines = [
        "Variance reduction at a poor q, var({}) / var(estimator) summed over each latent's parameters "
        "(higher is better), {} draws, and the closed-form ELBO after {} steps (maximum over the mean-field "
        "family {:.3f}):\n".format(
            reference, results["args"]["variance_draws"], results["args"]["steps"], results["max_elbo"]
        ),
        table(["estimator"] + groups + ["final ELBO"], rows),
        "Mean ± standard deviation over seeds. "
        + spread_sentence(results["within_seed_spread"]["final_elbo"], "final ELBO"),
    ]
    for a, b in identical.items():
        lines.append(f"{a} and {b} give the same ELBO history to float32 rounding (and the same variances).\n")
    names = list(summary)
    ours, pyro_baseline = "RaoBlackwellELBO (leave-one-out CV)", "TraceGraph_ELBO + baseline"
    if ours in names and pyro_baseline in names:
        for where in ("poor", "near-optimal"):
            mine, theirs = summary[ours]["reduction_" + where], summary[pyro_baseline]["reduction_" + where]
            close = [g for g in groups if within_spread(mine[g], theirs[g])]
            better = [g for g in groups if g not in close and mine[g]["mean"] > theirs[g]["mean"]]
            worse = [g for g in groups if g not in close and g not in better]
            lines.append(
                "At the {} q, {} reduces the variance more than {} for {}, less for {}, and within the "
                "seed spread for {}.\n".format(
                    where,
                    ours,
                    pyro_baseline,
                    ", ".join(better) or "no latent",
                    ", ".join(worse) or "no latent",
                    ", ".join(close) or "no latent",
                )
            )
    lines.append(run_line(results))
    return "\n".join(lines)


@block("mixtures", "results/gmm_cavi/results.json", "results/earthquake/results.json")
def mixtures(gmm, earthquake):
    rows = []
    for label, results in (
        ("GMM with unknown precisions (1.D.4)", gmm),
        ("Earthquakes (2-D locations, Poisson counts)", earthquake),
    ):
        svi = results["svi"]
        rows.append(
            [label, "{:.3f}".format(results["cavi"]["elbo"]), str(results["cavi"]["num_iters"])]
            + [pm(row["gap_to_cavi"]) for row in svi.values()]
        )
    names = list(gmm["svi"])
    lines = [
        table(
            [
                "model (N = {}, K = {})".format(gmm["args"]["num_data"], len(gmm["args"]["pi"])),
                "CAVI optimum",
                "CAVI sweeps",
            ]
            + [f"{n} gap" for n in names],
            rows,
        )
    ]
    for label, results in (("GMM", gmm), ("Earthquakes", earthquake)):
        lines.append(f"{label}: " + spread_sentence(results["within_seed_spread"]["gap_to_cavi"], "the gap to CAVI"))
    lines += [run_line(gmm), run_line(earthquake)]
    return "\n".join(lines)


@block("poisson_gamma")
def poisson_gamma(results):
    theta_star = results["theta_star"]
    rows = [
        [
            name,
            pm(s["mean_theta_last_10pct"], ".4f"),
            pm(
                {k: None if v is None else 100 * v for k, v in s["relative_error"].items() if k in ("mean", "std")},
                ".1f",
            ),
            pm(s["elbo_gap"], ".3f"),
        ]
        for name, s in results["summary"].items()
    ]
    return "\n".join(
        [
            "theta* = {:.5f}; ELBO(theta*) = {:.2f} against log p(X) = {:.2f} (the family is misspecified). Mean "
            "theta over the last 10% of {} steps with {} particles:\n".format(
                theta_star,
                results["elbo_theta_star"],
                results["log_evidence"],
                results["args"]["steps"],
                results["args"]["particles"],
            ),
            table(["estimator", "theta", "error (%)", "final ELBO gap"], rows),
            "Mean ± standard deviation over seeds. "
            + spread_sentence(results["within_seed_spread"]["relative_error"], "the error in theta"),
            run_line(results),
        ]
    )


@block("gumbel_softmax")
def gumbel_softmax(results):
    hist = results["histogram"]
    per_seed = hist["per_seed"]
    rows = [[name] + ["{:.3f}".format(seed[name]["chisquare_pvalue"]) for seed in per_seed] for name in per_seed[0]]
    seeds = results["run"]["seeds"]
    grads = results["gradients"]["rows"]
    shown = sorted({r["temperature"] for r in grads} & {0.1, 1.0})
    grad_rows = []
    for r in grads:
        if r["temperature"] in shown and r["objective"] == "square":
            grad_rows.append(
                [
                    r["estimator"],
                    "{:g}".format(r["temperature"]),
                    pm(r["bias_norm"], ".3f"),
                    pm(r["variance_trace"], ".3g"),
                ]
            )
    return "\n".join(
        [
            "Chi-square goodness-of-fit p-values of N = {} draws against a, per seed:\n".format(
                results["args"]["num_samples"]
            ),
            table(["sampler"] + [f"seed {s}" for s in seeds], rows),
            "{} of {} p-values are below 0.05. Every sampler here is exact (torch's Categorical included), so each "
            "p-value is uniform on (0, 1): about {:.2f} of {} are expected below 0.05 by chance, and {} or more with "
            "probability {:.2f}. A small p-value among many tests is not evidence of a wrong sampler.\n".format(
                hist["pvalues_below_0.05"],
                hist["num_pvalues"],
                0.05 * hist["num_pvalues"],
                hist["num_pvalues"],
                hist["pvalues_below_0.05"],
                _binomial_tail(hist["pvalues_below_0.05"], hist["num_pvalues"], 0.05),
            ),
            "Gradient of E[f(y)] for f(y) = sum_k c_k y_k^2, against the exact gradient of the discrete objective "
            "(mean ± std over seeds, {} one-sample estimates each):\n".format(results["args"]["grad_draws"]),
            table(["estimator", "tau", "bias norm", "trace of covariance"], grad_rows),
            run_line(results),
        ]
    )


def _binomial_tail(k, n, p):
    """P(X >= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(k, n + 1))


@block("gamma_natural_gradient")
def gamma_natural_gradient(results):
    summary, args = results["summary"], results["args"]
    mles = results["mle"]
    rows = [
        [
            name,
            pm(s["iterations_to_tolerance"], ".1f"),
            pm(s["halved_steps"], ".0f"),
            ", ".join(f"{v:.0f}" for v in s["iterations_to_tolerance"]["values"]),
        ]
        for name, s in summary.items()
    ]
    return "\n".join(
        [
            "Iterations until the average NLL is within {:g} nats of the MLE, over {} data sets of {} draws (MLE "
            "alpha, beta: {}):\n".format(
                results["tolerance_nats"],
                len(mles),
                args["num_data"],
                "; ".join("{:.4f}, {:.4f}".format(m["alpha"], m["beta"]) for m in mles),
            ),
            table(["method", "iterations (mean ± std)", "halved steps", "per data set"], rows),
            "The closed-form inverse Fisher matches `torch.linalg.inv` of the autograd J^T F(eta) J to {:.0e} "
            "(relative).\n".format(results["checks"]["inverse_closed_vs_inv_of_autograd"]),
            run_line(results),
        ]
    )


@block("natural_gradient_svi")
def natural_gradient_svi(results):
    rows = []
    for name, s in results["summary"].items():
        stays = s["iterations_to_tol"]
        first = s["first_below_tol"]
        note = " (deterministic: run once)" if s.get("deterministic") else ""
        rows.append([name + note, pm(stays, ".0f"), pm(first, ".0f")])
    return "\n".join(
        [
            "Iterations until the ELBO stays within {:g} nats of the CAVI optimum ({:.4f}), and the first iteration "
            "below:\n".format(results["tolerance_nats"], results["cavi_optimum_elbo"]),
            table(["method", "iterations to stay within", "first within"], rows),
            'Mean ± standard deviation over seeds; "never": not within {} steps.\n'.format(results["args"]["steps"]),
            run_line(results),
        ]
    )


@block("diffusion_bound")
def diffusion_bound(results):
    summary, main = results["summary"], results["main_model"]
    rows = [
        [
            name + (" (main)" if name == main else ""),
            "{:.4f}".format(s["exact_bound"]),
            pm(s["direct"], ".4f"),
            pm(s["decomposed"], ".4f"),
            pm(s["direct_variance"], ".3g"),
            pm(s["decomposed_variance"], ".3g"),
        ]
        for name, s in sorted(summary.items(), key=lambda item: item[1]["gap"])
    ]
    m = summary[main]
    return "\n".join(
        [
            table(
                [
                    "reverse model",
                    "exact bound",
                    "direct (eq. 3)",
                    "decomposed (eq. 5)",
                    "variance, direct",
                    "variance, decomposed",
                ],
                rows,
            ),
            "Nats per data point, mean ± standard deviation over seeds of {} chains per point; variance of one "
            "chain's estimate. For the main model the decomposed estimate lies {:.4f} ± {:.4f} below the direct one "
            "on the same chains; its per-chain distribution is skewed to the right (variance {:.3g}), so a mean of "
            "{} chains usually falls short of the exact value and rare chains with large estimates make up the "
            "difference.\n".format(
                results["args"]["samples"],
                m["paired_difference"]["mean"],
                m["paired_difference"]["std"] or 0.0,
                m["decomposed_variance"]["mean"],
                results["args"]["samples"],
            ),
            _diffusion_crossover(summary, main),
            run_line(results),
        ]
    )


def _diffusion_crossover(summary, main):
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


@block("lda_svi")
def lda_svi(results):
    rows = []
    for name, s in results["summary"].items():
        rows.append(
            [
                name,
                pm(s["docs_per_second"], ",.0f"),
                pm(s["seconds_per_iteration"], ".3f"),
                pm(s["elbo_per_word_at_fifth_of_budget"], ".4f"),
                pm(s["elbo_per_word_at_budget"], ".4f"),
                pm(s["final_elbo_per_word"], ".4f"),
                pm(s["mean_hellinger"], ".3f"),
            ]
        )
    budgets = results["same_wall_time"]
    lines = [
        table(
            [
                "method",
                "docs/s",
                "s per iteration",
                "ELBO/word at T/5",
                "ELBO/word at T",
                "final ELBO/word",
                "mean Hellinger to true topics",
            ],
            rows,
        ),
        "Mean ± standard deviation over seeds; T, the same wall time for all three, is the shortest run of each "
        "seed ({} s).".format(", ".join(f"{b:.2f}" for b in budgets)),
    ]
    if results.get("true_topics_elbo") is not None:
        lines[-1] += " The true topics score {:.4f} per word; Pyro's own (collapsed) bound ends at {} per word.".format(
            results["true_topics_elbo"] / results["tokens"], pm(results["collapsed_bound_per_word"], ".4f")
        )
    lines[-1] += " " + spread_sentence(
        results["within_seed_spread"]["elbo_per_word_at_budget"], "the ELBO at the same wall time"
    )
    summary = results["summary"]
    cavi, svi = summary.get("batch CAVI"), summary.get("SVI (Hoffman et al.)")
    if cavi and svi:

        def delta(key):
            a, b = svi[key], cavi[key]
            return "{:+.4f} ({} the seed spread)".format(
                a["mean"] - b["mean"], "within" if within_spread(a, b) else "beyond"
            )

        lines.append(
            "SVI processes {:.2g} times as many documents per second as a batch CAVI sweep. Its ELBO per "
            "word minus CAVI's: at T/5 {}, at T {}, at the end of each run {}.\n".format(
                svi["docs_per_second"]["mean"] / cavi["docs_per_second"]["mean"],
                delta("elbo_per_word_at_fifth_of_budget"),
                delta("elbo_per_word_at_budget"),
                delta("final_elbo_per_word"),
            )
        )
        lines.append(
            "Per seed, SVI ends at ELBO/word {} with mean Hellinger distance {} to the true topics (batch "
            "CAVI: {}; {}).\n".format(
                ", ".join(f"{v:.4f}" for v in svi["final_elbo_per_word"]["values"]),
                ", ".join(f"{v:.3f}" for v in svi["mean_hellinger"]["values"]),
                ", ".join(f"{v:.4f}" for v in cavi["final_elbo_per_word"]["values"]),
                ", ".join(f"{v:.3f}" for v in cavi["mean_hellinger"]["values"]),
            )
        )
    lines.append(run_line(results))
    return "\n".join(lines)


@block("benchmark_vae")
def benchmark_vae(results):
    header = ["estimator"]
    ks = list(results["results"])
    for k in ks:
        header += [f"K = {k} ms", "x Renyi (rounds)", "x plain"]
    names = list(results["results"][ks[0]])
    rows = []
    for name in names:
        row = [name]
        for k in ks:
            r = results["results"][k][name]
            row += ["{:.1f}".format(r["ms_per_step"]), _ratio_cell(r), "{:.2f}".format(r["ratio_to_plain"])]
        rows.append(row)
    lines = [table(header, rows)]
    for k in ks:
        like = [n for n, r in results["results"][k].items() if n != names[0] and r["ratio_low"] <= 1 <= r["ratio_high"]]
        over = [n for n, r in results["results"][k].items() if r["ratio"] > 1.1]
        over_plain = [n for n, r in results["results"][k].items() if r["ratio_to_plain"] > 1.5]
        lines.append(
            "K = {}: within the rounds' spread of RenyiELBO (ratio range contains 1): {}. Above the "
            "targets (median), 1.1x RenyiELBO: {}; 1.5x the plain loop: {}.\n".format(
                k, ", ".join(like) or "none", ", ".join(over) or "none", ", ".join(over_plain) or "none"
            )
        )
    args = results["args"]
    lines.append(
        "Median of {} rounds of {} steps, batch {}. ".format(args["rounds"], args["steps"], args["batch_size"])
        + run_line(results)
    )
    return "\n".join(lines)


@block("benchmark_discrete", "results/benchmark/results.json")
def benchmark_discrete(results):
    args = results["args"]
    lines = []
    for key, title in [
        (
            "discrete",
            "On the Bernoulli VAE (linear, 200 binary latents, batch {}), {} model evaluations per image".format(
                args["batch_size"], args["evaluations"]
            ),
        ),
        (
            "gmm_pathwise",
            "On the GMM (N = 300, K = 3) with sampled assignments, {} vectorized particles".format(args["particles"]),
        ),
    ]:
        part = results[key]
        also = part["also"]
        rows = [
            [name, "{:.2f}".format(row["ms_per_step"]), _ratio_cell(row), "{:.2f}".format(row["ratio_" + also])]
            for name, row in part["estimators"].items()
        ]
        lines += [
            f"{title}, from the same run:\n",
            table(["estimator", "ms/step", "x {} (rounds' range)".format(part["baseline"]), f"x {also}"], rows),
        ]
    return "\n".join(lines)


@block("benchmark_scaling")
def benchmark_scaling(results):
    from experiments.benchmark_scaling import render as render_scaling

    return render_scaling(results) + "\n\n" + run_line(results)


@block("bernoulli_vae")
def bernoulli_vae(results):
    rows = []
    for group, models in results["summary"].items():
        for kind, estimators in models.items():
            for label, s in estimators.items():
                last = {
                    k: {stat: s[k][stat][-1] for stat in ("mean", "min", "max")}
                    for k in ("train_objective", "test_bound", "grad_variance")
                }
                variance = last["grad_variance"]["mean"]
                rows.append(
                    [
                        group,
                        kind,
                        label,
                        "{:.2f}".format(last["train_objective"]["mean"]),
                        "{:.2f} ({:.2f} to {:.2f})".format(*(last["test_bound"][k] for k in ("mean", "min", "max"))),
                        "-" if variance is None else f"{variance:.3g}",
                        "{:.1f}".format(s["ms_per_step"]),
                    ]
                )
    args = results["args"]
    return "\n".join(
        [
            table(
                [
                    "group",
                    "decoder",
                    "estimator",
                    "train objective",
                    "test L_{} (seeds' min to max)".format(args["test_samples"]),
                    "grad. variance",
                    "ms/step",
                ],
                rows,
                align="lllrrrr",
            ),
            "Mean over seeds at the last step. {}. Data: {}. Gradient variance: the mean over the encoder's weights "
            "of the variance of the per-image gradient, {} draws at the last step.\n".format(
                results["budget"][0].upper() + results["budget"][1:],
                results["data"]["split"],
                args["variance_draws"],
            ),
            "Command: `{}`; seeds {}; the runs took {} of wall time in all (`--resume` runs only those not yet "
            "saved), on {}.\n".format(
                results["run"]["command"],
                ", ".join(map(str, results["run"]["seeds"])),
                seconds(results["run_seconds"]),
                machine_text(results["run"]),
            ),
        ]
    )


@block("vae_mnist")
def vae_mnist(results):
    ev = results["evaluation"]
    rows = []
    for run in results["runs"].values():
        m = run["summary"]
        rows.append(
            [
                run["label"],
                str(len(run["seeds"])),
                _mean_sd(m["test_log_likelihood"]),
                _mean_sd(m["test_elbo"]),
                _mean_sd(m["active_units"], 1),
                _mean_sd(m["seconds_per_epoch"], 1),
            ]
        )
    lines = [
        table(["run", "seeds", "test L_{}".format(ev["eval_samples"]), "test ELBO", "active units", "s/epoch"], rows)
    ]
    bases = sorted({c["basis"] for c in results["comparisons"]})
    lines.append(
        "Comparisons in the papers' order, difference ± 95% half-width ({}): {}.\n".format(
            "; ".join(bases),
            "; ".join(
                "{} - {} = {:+.2f} ± {:.2f} nats, {}".format(
                    c["better"], c["worse"], c["mean_difference"], c["half_width_95"], c["verdict"]
                )
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
    env = results["environment"]
    lines.append(
        "Command: `{}`; test images: {}; {:.1f} h of training and evaluation in all, on {}, {} torch thread, "
        "device {}; "
        "status: {}.\n".format(
            results["command"],
            results["data"]["test_subset"]["how"],
            results["compute_seconds"] / 3600,
            env["machine"],
            env["threads"],
            env["device"],
            results["status"],
        )
    )
    return "\n".join(lines)


def _mean_sd(summary, digits=2):
    if summary is None or summary["mean"] is None:
        return "-"
    sd = "" if summary["sd"] is None else " ± {:.{}f}".format(summary["sd"], digits)
    return "{:.{}f}{}".format(summary["mean"], digits, sd)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if README.md differs")
    parser.add_argument("--readme", default=README, help="the file to render (default: README.md)")
    args = parser.parse_args(argv)
    with open(args.readme) as f:
        text = f.read()
    new = rewrite(text)
    if args.check:
        if new != text:
            sys.stdout.writelines(
                difflib.unified_diff(text.splitlines(True), new.splitlines(True), args.readme, "rendered")
            )
            print(f"\n{args.readme} differs from its results; run python -m experiments.render_readme")
            return 1
        print(f"{args.readme}: {len(blocks_in(text))} blocks up to date")
        return 0
    if new != text:
        with open(args.readme, "w") as f:
            f.write(new)
    print(f"{args.readme}: rendered {len(blocks_in(text))} blocks")
    return 0


if __name__ == "__main__":
    sys.exit(main())
