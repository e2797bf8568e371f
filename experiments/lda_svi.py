"""LDA: Hoffman et al.'s stochastic variational inference against batch CAVI and
against Pyro SVI with Adam on the same mean-field family (issue 5, item 5).

All three start from the same random lambda (Hoffman et al.'s Gamma(100, 1/100)) and are
judged by one yardstick: the closed-form mean-field ELBO of the full corpus at their
global lambda, with gamma (and phi) refitted by a local step
(:func:`guides.lda.corpus_elbo`). Pyro's guide has no z (the model sums it out), so Adam
climbs the collapsed bound, which lies above that ELBO (Jensen); its own estimate is
reported as well. The benchmark of the issue: documents per second of SVI against batch
CAVI's cost per sweep on the same corpus, and the ELBO each method reaches after the same
wall time (default: the shortest of the three runs). Evaluations are not timed. On a
synthetic corpus the true topics are known and the fitted ones are matched to them by the
Hungarian algorithm.

Every method repeats for each seed of ``--seeds`` (a seed sets the random start and
SVI's minibatches; the corpus is fixed by ``--data-seed``); the table is mean ± std over
seeds. Writes ``elbo.png`` (ELBO per word against wall time and against documents
processed, one line per seed), ``topics.png`` (topic-word matrices, matched, first seed)
and ``results.json``; prints the table.

    python -m experiments.lda_svi --out results/lda_svi
    python -m experiments.lda_svi --counts docword.kos.txt --vocab vocab.kos.txt --num-topics 20 \\
        --alpha 0.05 --eta 0.01

References

1. M. D. Hoffman, D. M. Blei, C. Wang, J. Paisley, *Stochastic Variational Inference*,
   JMLR 14, 2013.
2. D. M. Blei, A. Y. Ng, M. I. Jordan, *Latent Dirichlet Allocation*, JMLR 3, 2003.
"""

import argparse
import functools
import os

import numpy as np
import pyro
import torch
from matplotlib.colors import PowerNorm
from pyro.infer import Trace_ELBO
from pyro.optim import Adam

from experiments import _cli
from experiments._figures import legend_outside, plt, save_figure
from experiments._markdown import run_line, spread_sentence, table
from experiments._results import fmt, seed_summary, seeded_fit, spread, within_spread
from experiments._study import Study
from guides.lda import (
    LAMBDA,
    LDAPrior,
    cavi,
    check_schedule,
    corpus_elbo,
    elbo,
    guide,
    initial_lambda,
    params_from_store,
    stochastic_vi,
)
from models.lda import generate_corpus, load_docword, match_topics, model
from pyro_vi.training import fit

CAVI, SVI, PYRO = "batch CAVI", "SVI (Hoffman et al.)", "Pyro SVI + Adam"
BUDGET_FRACTIONS = (0.1, 0.2, 0.5, 1.0)


def load_corpus(args):
    """``(counts float64, true topics or None, vocabulary or None)``."""
    if args.counts is not None:
        counts, vocabulary = load_docword(args.counts, args.vocab)
        return counts.double(), None, vocabulary
    counts, topics = generate_corpus(
        args.num_docs, args.vocab_size, args.num_topics, args.doc_length, args.alpha, args.eta, seed=args.data_seed
    )
    return counts.double(), topics, None


def checkpoints(num_iters, points):
    """Iterations 0 < i <= num_iters to evaluate: ``points`` geometrically spaced (for the
    start and the log axis) and ``points`` evenly spaced (for the same-wall-time ELBO)."""
    geometric = np.round(np.geomspace(1, num_iters, max(points, 2)))
    even = np.round(np.linspace(0, num_iters, max(points, 2) + 1)[1:])
    return set(np.concatenate([geometric, even]).astype(int).tolist()) | {num_iters}


def recorder(num_iters, points, docs_per_iter, init):
    """A callback ``(iteration, seconds, lam)`` that keeps snapshots at :func:`checkpoints`."""
    keep = checkpoints(num_iters, points)
    snapshots = [(0.0, 0, init.clone())]

    def callback(iteration, seconds, lam):
        if iteration in keep:
            snapshots.append((seconds, iteration * docs_per_iter, lam.detach().clone().double()))

    return snapshots, callback


def run_cavi(counts, init, args):
    snapshots, callback = recorder(args.cavi_iters, args.eval_points, counts.shape[0], init)
    result = cavi(
        counts,
        LDAPrior(args.alpha, args.eta),
        args.num_topics,
        max_iters=args.cavi_iters,
        tol=args.cavi_tol,
        init_lambda=init,
        warm_start=args.cavi_warm_start,
        local_tol=args.local_tol,
        local_max_iters=args.local_max_iters,
        callback=callback,
    )
    if snapshots[-1][1] != result.num_iters * counts.shape[0]:  # converged before the last checkpoint
        snapshots.append((result.seconds, result.num_iters * counts.shape[0], result.params.lam.clone()))
    return dict(
        snapshots=snapshots,
        seconds=result.seconds,
        iterations=result.num_iters,
        docs=result.num_iters * counts.shape[0],
        own_elbo_history=result.elbo_history,
    )


def run_hoffman(counts, init, args):
    snapshots, callback = recorder(args.svi_updates, args.eval_points, args.batch_size, init)
    result = stochastic_vi(
        counts,
        args.num_topics,
        args.alpha,
        args.eta,
        batch_size=args.batch_size,
        tau0=args.tau0,
        kappa=args.kappa,
        num_updates=args.svi_updates,
        seed=args.seed,
        init_lambda=init,
        local_tol=args.local_tol,
        local_max_iters=args.local_max_iters,
        callback=callback,
    )
    return dict(snapshots=snapshots, seconds=result.seconds, iterations=result.num_updates, docs=result.docs_seen)


def run_pyro(counts, init, args):
    batch = args.pyro_batch_size or counts.shape[0]
    pyro_args = (counts, args.num_topics, args.alpha, args.eta, batch if batch < counts.shape[0] else None)
    pyro_guide = functools.partial(guide, init_lambda=init)
    # one discarded step first: Pyro/torch initialize themselves lazily (about 1 s, once
    # per process), which is not the cost of the algorithm
    pyro.clear_param_store()
    fit(model, pyro_guide, Trace_ELBO(), Adam({"lr": args.pyro_lr}), *pyro_args, num_steps=1, progress=False)
    history = seeded_fit(
        args.seed,
        model,
        pyro_guide,
        Trace_ELBO(),
        Adam({"lr": args.pyro_lr}),
        *pyro_args,
        num_steps=args.pyro_steps,
        track={"lam": lambda: pyro.param(LAMBDA).detach().clone()},
    )
    keep = sorted(checkpoints(args.pyro_steps, args.eval_points))
    snapshots = [(0.0, 0, init.clone())] + [
        (step * history.seconds_per_step, step * batch, torch.as_tensor(history.tracked["lam"][step - 1]).double())
        for step in keep
    ]
    own = float(elbo(counts, params_from_store(), LDAPrior(args.alpha, args.eta)))
    return dict(
        snapshots=snapshots,
        seconds=history.num_steps * history.seconds_per_step,
        iterations=history.num_steps,
        docs=history.num_steps * batch,
        collapsed_bound_estimate=float(np.mean(history.elbo[-max(1, len(history.elbo) // 20) :])),
        mean_field_elbo_own_gamma=own,
    )


def full_corpus_elbo(counts, lam, args):
    """The closed-form mean-field ELBO of the corpus at ``lam``, gamma by a local step."""
    return corpus_elbo(counts, lam, args.alpha, args.eta, args.local_tol, args.local_max_iters)[0]


def evaluate(counts, run, args):
    """Closed-form corpus ELBO at every snapshot (untimed)."""
    run["elbo"] = [full_corpus_elbo(counts, lam, args) for _, _, lam in run["snapshots"]]
    run["time"] = [seconds for seconds, _, _ in run["snapshots"]]
    run["docs_seen"] = [docs for _, docs, _ in run["snapshots"]]


def elbo_at(run, budget):
    """The ELBO of the last snapshot taken within ``budget`` seconds."""
    return [value for seconds, value in zip(run["time"], run["elbo"]) if seconds <= budget][-1]


def topic_scores(reference, lam):
    """The topics of ``lam`` matched to ``reference``, and their distances to it."""
    order, hellinger = match_topics(reference, lam)
    topics = (lam / lam.sum(-1, keepdim=True)).numpy()[order]
    total_variation = 0.5 * np.abs(topics - reference.numpy()).sum(-1)
    return topics, dict(
        mean_hellinger=float(hellinger.mean()),
        max_hellinger=float(hellinger.max()),
        mean_total_variation=float(total_variation.mean()),
        hellinger=hellinger.tolist(),
    )


def plot_elbo(seed_runs, budgets, tokens, reference_elbo, path):
    """``seed_runs``: one ``{method: {"seconds", "docs", "elbo"}}`` per seed,
    drawn as one thin line per seed in the method's colour (their wall-time
    axes differ)."""
    fig, (time_ax, docs_ax) = plt.subplots(1, 2, figsize=(14, 5.2), sharey=True)
    finals, values = [], []
    for index, runs in enumerate(seed_runs):
        for color, (name, run) in zip(("C0", "C1", "C2"), runs.items()):
            per_word = np.asarray(run["elbo"]) / tokens
            label = name if index == 0 else None
            time_ax.plot(run["seconds"], per_word, marker=".", ms=3, lw=1, color=color, label=label)
            docs_ax.plot(run["docs"][1:], per_word[1:], marker=".", ms=3, lw=1, color=color, label=label)
            finals.append(per_word[-1])
            values.append(per_word[1:])
    same = "same wall time T per seed ({})".format(", ".join(f"{b:.3g} s" for b in budgets))
    for index, budget in enumerate(budgets):
        time_ax.axvline(budget, color="0.5", ls=":", label=same if index == 0 else None)
    top = max(finals + ([reference_elbo / tokens] if reference_elbo is not None else []))
    values = np.concatenate(values)
    for ax in (time_ax, docs_ax):
        if reference_elbo is not None:
            ax.axhline(
                reference_elbo / tokens, color="k", ls="--", lw=1, label="true topics, lambda = eta + (N/K) beta"
            )
        ax.set_ylim(max(np.percentile(values, 10), top - 10 * (top - min(finals)) - 0.05), top + 0.02)
        ax.grid(alpha=0.3)
        legend_outside(ax, where="below", ncol=2)
    time_ax.set(xlabel="wall time (s, evaluations excluded)", ylabel="full-corpus ELBO per word (nats)")
    time_ax.set_title(
        f"ELBO of the global lambda (gamma by a local step); one line per seed ({len(seed_runs)})", fontsize=10
    )
    docs_ax.set(xscale="log", xlabel="documents processed (local steps or Pyro minibatch rows; log scale)")
    docs_ax.set_ylabel("full-corpus ELBO per word (nats)")
    docs_ax.tick_params(labelleft=True)
    docs_ax.set_title("the same against documents processed", fontsize=10)
    save_figure(fig, path)


def plot_topics(reference, label, matched, hellinger, seed, path):
    """The reference topics (true, or batch CAVI's) and every method's,
    matched to them, words sorted by the reference topic that favours them."""
    reference = np.asarray(reference)
    word_order = np.lexsort((-reference.max(0), reference.argmax(0)))
    rows = {label: reference}
    for name, topics in matched.items():
        if name != label:
            rows[f"{name}: mean Hellinger {hellinger[name]:.3f} (seed {seed})"] = np.asarray(topics)
    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 1.2 + 1.4 * len(rows)), sharex=True, layout="constrained")
    vmax = max(float(topics.max()) for topics in rows.values())
    for ax, (title, topics) in zip(axes, rows.items()):
        image = ax.imshow(
            topics[:, word_order], aspect="auto", cmap="viridis", norm=PowerNorm(0.5, 0, vmax), interpolation="nearest"
        )
        ax.set_title(title, fontsize=9)
        ax.set_ylabel("topic")
    axes[-1].set_xlabel(f"word (sorted by the topic that favours it most in: {label})")
    fig.colorbar(image, ax=axes, label="topic-word probability (sqrt scale)", shrink=0.9)
    save_figure(fig, path)


def run_seed(counts, true_topics, tokens, reference_elbo, args, seed):
    """Every method from the same random start drawn with ``seed``; their rows."""
    init = initial_lambda(args.num_topics, counts.shape[1], seed=seed)
    seed_args = argparse.Namespace(**{**vars(args), "seed": seed})
    runs = {
        name: run(counts, init, seed_args) for name, run in ((CAVI, run_cavi), (SVI, run_hoffman), (PYRO, run_pyro))
    }
    for run in runs.values():
        evaluate(counts, run, args)
    budget = args.budget or min(run["seconds"] for run in runs.values())
    reference, label = true_topics, "true topics"
    if true_topics is None:  # batch CAVI's topics
        lam = runs[CAVI]["snapshots"][-1][2]
        reference, label = lam / lam.sum(-1, keepdim=True), CAVI
    rows, matched = {}, {}
    for name, run in runs.items():
        matched[name], scores = topic_scores(reference, run["snapshots"][-1][2])
        rows[name] = dict(
            docs_per_second=run["docs"] / run["seconds"],
            wall_seconds=run["seconds"],
            seconds_per_iteration=run["seconds"] / run["iterations"],
            iterations=run["iterations"],
            final_elbo=run["elbo"][-1],
            final_elbo_per_word=run["elbo"][-1] / tokens,
            elbo_at_budget=elbo_at(run, budget),
            elbo_per_word_at_budget=elbo_at(run, budget) / tokens,
            elbo_per_word_at_fifth_of_budget=elbo_at(run, 0.2 * budget) / tokens,
            elbo_per_word_at_fraction_of_budget={f: elbo_at(run, f * budget) / tokens for f in BUDGET_FRACTIONS},
            topic_distance_to=label,
            **scores,
            **{key: run[key] for key in ("collapsed_bound_estimate", "mean_field_elbo_own_gamma") if key in run},
        )
    return runs, budget, rows, reference, label, matched


NUMBERS = (
    "docs_per_second",
    "wall_seconds",
    "seconds_per_iteration",
    "final_elbo_per_word",
    "elbo_per_word_at_budget",
    "elbo_per_word_at_fifth_of_budget",
    "mean_hellinger",
    "mean_total_variation",
)


def run(args):
    counts, true_topics, vocabulary = load_corpus(args)
    num_docs, vocab_size = counts.shape
    tokens = float(counts.sum())
    reference_elbo = None
    if true_topics is not None:
        reference_elbo = full_corpus_elbo(counts, args.eta + tokens / args.num_topics * true_topics, args)
    history, budgets, per_seed = [], [], []
    for seed in args.seeds:
        runs, budget, rows, reference, label, matched = run_seed(
            counts, true_topics, tokens, reference_elbo, args, seed
        )
        if seed == args.seeds[0]:
            matched = {n: t.tolist() for n, t in matched.items()}
            topics = {"reference": reference.tolist(), "label": label, "matched": matched}
        history.append({name: dict(seconds=r["time"], docs=r["docs_seen"], elbo=r["elbo"]) for name, r in runs.items()})
        budgets.append(budget)
        per_seed.append(rows)
    by_method = {name: [rows[name] for rows in per_seed] for name in per_seed[0]}
    top_words = None
    if vocabulary is not None:
        top_words = {
            name: [
                [vocabulary[w] for w in np.argsort(-np.asarray(topic))[: args.top_words]] for topic in matched_topics
            ]
            for name, matched_topics in topics["matched"].items()
        }
        for k, words in enumerate(top_words[CAVI]):
            print(f"batch CAVI topic {k}: {' '.join(words)}")
    return dict(
        num_docs=num_docs,
        vocab_size=vocab_size,
        tokens=tokens,
        same_wall_time=budgets,
        true_topics_elbo=reference_elbo,
        collapsed_bound_per_word=spread([rows[PYRO]["collapsed_bound_estimate"] / tokens for rows in per_seed]),
        top_words=top_words,
        **seed_summary(by_method, NUMBERS, within=("elbo_per_word_at_budget",)),
        history_per_seed=history,
        topics_first_seed=topics,
        per_seed=per_seed,
    )


def figures(results, out):
    plot_elbo(
        results["history_per_seed"],
        results["same_wall_time"],
        results["tokens"],
        results["true_topics_elbo"],
        os.path.join(out, "elbo.png"),
    )
    topics = results["topics_first_seed"]
    hellinger = {name: row["mean_hellinger"] for name, row in results["per_seed"][0].items()}
    seed = results["run"]["seeds"][0]
    plot_topics(
        topics["reference"], topics["label"], topics["matched"], hellinger, seed, os.path.join(out, "topics.png")
    )


def readme_block(results):
    summary = results["summary"]
    keys = ("elbo_per_word_at_fifth_of_budget", "elbo_per_word_at_budget", "final_elbo_per_word")
    rows = [
        [name, fmt(s["docs_per_second"], ",.0f"), fmt(s["seconds_per_iteration"], ".3f")]
        + [fmt(s[key], ".4f") for key in keys]
        + [fmt(s["mean_hellinger"], ".3f")]
        for name, s in summary.items()
    ]
    header = ["method", "docs/s", "s per iteration", "ELBO/word at T/5", "ELBO/word at T", "final ELBO/word"]
    lines = [
        table(header + ["mean Hellinger to true topics"], rows),
        "Mean ± standard deviation over seeds; T, the same wall time for all three, is the shortest run of each "
        "seed ({} s).".format(", ".join(f"{b:.2f}" for b in results["same_wall_time"])),
    ]
    if results.get("true_topics_elbo") is not None:
        lines[-1] += " The true topics score {:.4f} per word; Pyro's own (collapsed) bound ends at {} per word.".format(
            results["true_topics_elbo"] / results["tokens"], fmt(results["collapsed_bound_per_word"], ".4f")
        )
    lines[-1] += " " + spread_sentence(
        results["within_seed_spread"]["elbo_per_word_at_budget"], "the ELBO at the same wall time"
    )
    cavi, svi = summary.get(CAVI), summary.get(SVI)
    if cavi and svi:

        def delta(key):
            a, b = svi[key], cavi[key]
            return f"{a['mean'] - b['mean']:+.4f} ({'within' if within_spread(a, b) else 'beyond'} the seed spread)"

        lines.append(
            "SVI processes {:.2f} times as many documents per second as a batch CAVI sweep. Its ELBO per "
            "word minus CAVI's: at T/5 {}, at T {}, at the end of each run {}.\n".format(
                svi["docs_per_second"]["mean"] / cavi["docs_per_second"]["mean"], *(delta(key) for key in keys)
            )
        )

        def per_seed(s):
            """The final ELBO per word and the mean Hellinger distance of each seed."""
            columns = (("final_elbo_per_word", ".4f"), ("mean_hellinger", ".3f"))
            return [", ".join(format(v, spec) for v in s[key]["values"]) for key, spec in columns]

        lines.append(
            "Per seed, SVI ends at ELBO/word {} with mean Hellinger distance {} to the true topics (batch "
            "CAVI: {}; {}).\n".format(*per_seed(svi), *per_seed(cavi))
        )
    lines.append(run_line(results))
    return "\n".join(lines)


SEEDS = "a seed sets the random start lambda and SVI's minibatches; the corpus is fixed by --data-seed"


def parser():
    parser = _cli.parser(__doc__, "results/lda_svi", seeds=(0, 1, 2), seeds_help=SEEDS, data_seed=True)
    positive, count = _cli.positive_real, _cli.positive_int
    corpus = parser.add_argument_group("corpus (synthetic unless --counts is given)")
    corpus.add_argument("--counts", type=_cli.existing_file, help="UCI bag-of-words docword file (see models.lda)")
    corpus.add_argument("--vocab", type=_cli.existing_file, help="its vocabulary file, one word per line")
    corpus.add_argument("--top-words", type=count, default=10, help="words printed per topic with --vocab")
    corpus.add_argument("--num-docs", type=count, default=2000)
    corpus.add_argument("--vocab-size", type=count, default=150)
    corpus.add_argument("--doc-length", type=count, default=80)
    parser.add_argument("--num-topics", type=count, default=8)
    parser.add_argument("--alpha", type=positive, default=0.2, help="document-topic concentration (data and model)")
    parser.add_argument("--eta", type=positive, default=0.1, help="topic-word concentration (data and model)")
    parser.add_argument("--cavi-iters", type=count, default=40)
    parser.add_argument(
        "--cavi-tol",
        type=_cli.nonnegative_real,
        default=1e-7,
        help="relative ELBO change that stops CAVI (0: run every sweep)",
    )
    parser.add_argument("--cavi-warm-start", action="store_true", help="start each local step from the last gamma")
    parser.add_argument("--batch-size", type=count, default=100)
    parser.add_argument("--tau0", type=_cli.nonnegative_real, default=1.0, help="delay of rho_t = (tau0 + t)^-kappa")
    parser.add_argument("--kappa", type=_cli.finite_real, default=0.7, help="forgetting rate, in (0.5, 1]")
    parser.add_argument("--svi-updates", type=count, default=600)
    parser.add_argument("--pyro-steps", type=count, default=800)
    parser.add_argument("--pyro-lr", type=positive, default=0.2)
    parser.add_argument("--pyro-batch-size", type=_cli.nonnegative_int, default=0, help="0: the whole corpus per step")
    parser.add_argument("--local-tol", type=_cli.nonnegative_real, default=1e-3)
    parser.add_argument("--local-max-iters", type=count, default=100)
    parser.add_argument("--eval-points", type=count, default=20, help="ELBO evaluations per method, twice over")
    parser.add_argument("--budget", type=positive, default=None, help="seconds for the same-wall-time ELBO")
    return parser


def check_arguments(args):
    check_schedule(args.tau0, args.kappa)
    if args.vocab is not None and args.counts is None:
        raise ValueError("argument --vocab: needs --counts")
    if args.counts is None:
        _cli.at_most(args, "batch_size", "num_docs")


STUDY = Study("lda_svi", parser, run, figures, readme_block, check=check_arguments)

if __name__ == "__main__":
    STUDY.main()
