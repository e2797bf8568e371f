"""Which estimator works with which kind of guide: every pair of the
drop-in catalogue (models/catalogue.py) run through every estimator, with
vectorized and with sequential particles, and the outcomes tabulated by
guide kind and subsampling.

    python -m experiments.compatibility --out results/compatibility

A cell reads "yes" when every pair of that kind works, "no" when every one
is refused (the footnote says why), and "k of n" otherwise.
"""

from experiments import _cli
from experiments._study import Study
from models.catalogue import CATALOGUE, ESTIMATORS, REFUSALS, outcome, refusal_tag

KINDS = {
    "mean_field": "hand-written mean field",
    "structured": "structured",
    "autoguide": "autoguides",
    "delta": "Delta, AutoDelta",
    "flow": "flows",
    "amortized": "amortized",
    "discrete": "discrete sites",
    "messenger": "GuideMessenger",
}


TEMPERED = (
    "works, where sites are under `poutine.scale` (scale c), on the bound of the tempered weights, "
    "E log (1/K) sum_k w_k^c, as Pyro's RenyiELBO does: c times the ELBO at K = 1, not c times the "
    "importance-weighted bound (`ImportanceWeightedELBO`'s docstring)"
)
SEEDS = "not used: every outcome is computed with fixed seeds"


def parser():
    parser = _cli.parser(__doc__, "results/compatibility", seeds=(0,), seeds_help=SEEDS)
    parser.add_argument(
        "--pairs",
        nargs="+",
        choices=sorted(CATALOGUE),
        default=sorted(CATALOGUE),
        help="catalogue pairs to run (default: all)",
    )
    return parser


def records(pairs):
    """One record per (pair, estimator): ``status`` is ``works`` when both
    particle modes work, else ``refused`` with the reason's tag. A refusal
    that the catalogue does not expect, or an unexpected success, is an
    error."""
    found = []
    for pair in pairs:
        spec = CATALOGUE[pair]
        for estimator, config in ESTIMATORS.items():
            results = [outcome(pair, estimator, vectorize)[0] for vectorize in (True, False)]
            tag = refusal_tag(spec, config)
            expected = "works" if tag is None else "refused"
            if any(r != ("ok" if tag is None else "refused") for r in results):
                raise RuntimeError(f"{estimator} on {pair}: {results} (expected {expected})")
            found.append(
                dict(
                    pair=pair,
                    kind=spec.kind,
                    subsampled=spec.subsample,
                    estimator=estimator,
                    status=expected,
                    reason=tag,
                    tempered=config.importance_weighted and tag is None and "poutine_scale" in spec.tags,
                )
            )
    return found


def run(args):
    return {"pairs": len(args.pairs), "estimators": list(ESTIMATORS), "records": records(args.pairs)}


def readme_block(results):
    """The compatibility table in Markdown, with footnotes for the refusals."""
    records = results["records"]
    kinds = [k for k in KINDS if any(r["kind"] == k for r in records)]
    notes = [tag for tag in REFUSALS if any(r["reason"] == tag for r in records)]
    notes += ["tempered"] * any(r["tempered"] for r in records)
    header = "| estimator | " + " | ".join(KINDS[k] for k in kinds) + " |"
    lines = [header, "|---" * (len(kinds) + 1) + "|"]
    groups = {}  # (estimator, kind, subsampled) -> its records
    for r in records:
        groups.setdefault((r["estimator"], r["kind"], r["subsampled"]), []).append(r)
    for estimator in dict.fromkeys(r["estimator"] for r in records):
        cells = []
        for kind in kinds:
            keys = [key for key in ((estimator, kind, False), (estimator, kind, True)) if key in groups]
            cells.append("; ".join(_cell(groups[key], notes) + (" (subsampled)" if key[2] else "") for key in keys))
        lines.append("| {} | {} |".format(estimator, " | ".join(cells)))
    lines.append("")
    for number, tag in enumerate(notes, 1):
        lines.append(f"{number}. " + (TEMPERED if tag == "tempered" else f"refused: {REFUSALS[tag][1]}"))
    return "\n".join(lines)


def _cell(group, notes):
    works = sum(r["status"] == "works" for r in group)
    marks = sorted({notes.index(r["reason"] or "tempered") + 1 for r in group if r["reason"] or r["tempered"]})
    verdict = "yes" if works == len(group) else "no" if works == 0 else f"{works} of {len(group)}"
    return verdict + "".join(f"<sup>{m}</sup>" for m in marks)


STUDY = Study("compatibility", parser, run, readme_block=readme_block)

if __name__ == "__main__":
    STUDY.main()
