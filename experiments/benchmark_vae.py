"""Time per SVI step on Burda et al.'s VAE (784-200-200-50, batch 100) of
StickingTheLandingELBO and ImportanceWeightedELBO (each gradient option), as
ratios to Pyro's RenyiELBO(alpha=0) and Trace_ELBO at the same K and to a
plain-PyTorch IWAE loop (our Pyro overhead).

Every configuration starts from the same network weights and the same batch
and is timed round-robin in one run, so that the ratios share the machine's
noise; the median over rounds is reported with the lowest and highest per-round
ratio (a ratio range that contains 1 cannot be told apart from RenyiELBO by this
run). The batch is random binary pixels (mean 0.13, MNIST's): the cost of a step
does not depend on the pixel values. Writes ``results.json`` to ``--out`` if
given and prints the README's table.

    python -m experiments.benchmark_vae --out results/benchmark_vae
"""

import functools
import math

import torch
import torch.distributions as td
from pyro.infer import RenyiELBO, Trace_ELBO

from experiments import _cli
from experiments._markdown import ratio_cell, run_line, table
from experiments._runs import timing_arguments
from experiments._study import Study
from guides.vae import Encoder, guide
from models.vae import BURDA_CONFIG, Decoder, model
from pyro_vi import ImportanceWeightedELBO, StickingTheLandingELBO, fresh_svi_step, step_time_ratios, step_times

RENYI = "RenyiELBO(alpha=0)"
PLAIN = "plain PyTorch IWAE"


def pyro_estimators(k):
    """The :data:`~experiments._cli.Registry` of the Pyro estimators at ``k``
    vectorized particles (the plain-PyTorch loop is timed beside them)."""
    kw = dict(num_particles=k, **_cli.VECTORIZED)
    return {
        RENYI: _cli.Estimator(lambda: RenyiELBO(alpha=0.0, **kw)),
        "Trace_ELBO": _cli.Estimator(lambda: Trace_ELBO(**kw)),
        "StickingTheLandingELBO": _cli.Estimator(lambda: StickingTheLandingELBO(**kw)),
        "ImportanceWeightedELBO reparam": _cli.Estimator(lambda: ImportanceWeightedELBO(gradient="reparam", **kw)),
        "ImportanceWeightedELBO stl": _cli.Estimator(lambda: ImportanceWeightedELBO(gradient="stl", **kw)),
        "ImportanceWeightedELBO dreg": _cli.Estimator(lambda: ImportanceWeightedELBO(gradient="dreg", **kw)),
    }


def networks(state):
    """A fresh encoder/decoder pair holding the weights in ``state``."""
    encoder, decoder = Encoder(BURDA_CONFIG), Decoder(BURDA_CONFIG, mean_pixel=0.13)
    encoder.load_state_dict(state["encoder"])
    decoder.load_state_dict(state["decoder"])
    return encoder, decoder


def pyro_step(elbo, state, x):
    """``SVI.step`` of ``elbo`` on the VAE, as a zero-argument callable."""
    encoder, decoder = networks(state)
    return fresh_svi_step(functools.partial(model, decoder=decoder), functools.partial(guide, encoder=encoder), elbo, x)


def iwae_loss(encoder, decoder, x, k):
    r"""The negative IWELBO summed over the batch, in plain PyTorch:
    :math:`-\sum_n \log \frac1K \sum_k p(x_n, z_{nk}) / q(z_{nk} \mid x_n)`."""
    loc, scale = encoder(x)
    q = td.Normal(loc, scale)
    z = q.rsample((k,))
    log_w = (
        td.Normal(0.0, 1.0).log_prob(z).sum(-1)
        + td.Bernoulli(logits=decoder(z), validate_args=False).log_prob(x).sum(-1)
        - q.log_prob(z).sum(-1)
    )
    return -(torch.logsumexp(log_w, 0) - math.log(k)).sum()


def plain_step(state, x, k):
    """One Adam step of the plain-PyTorch IWAE loop, as a zero-argument callable."""
    encoder, decoder = networks(state)
    optim = torch.optim.Adam(list(encoder.parameters()) + list(decoder.parameters()), lr=1e-3)

    def step():
        optim.zero_grad()
        loss = iwae_loss(encoder, decoder, x, k)
        loss.backward()
        optim.step()
        return loss.item()

    return step


def benchmark(k, state, x, num_steps, rounds):
    """Every configuration at ``k`` particles timed ``rounds`` times,
    round-robin: its ms per step and its per-round ratios to
    RenyiELBO(alpha=0) and to the plain-PyTorch loop."""
    estimators = pyro_estimators(k)

    def step(name):
        # Fresh networks, estimator and param store right before each timing:
        # pyro.module reuses whatever tensors the store already holds by that name.
        step = plain_step(state, x, k) if name == PLAIN else pyro_step(estimators[name].make(), state, x)
        torch.manual_seed(0)
        return step

    steps = {name: functools.partial(step, name) for name in list(estimators) + [PLAIN]}
    times = step_times(steps, rounds=rounds, num_steps=num_steps)
    table = step_time_ratios(times, RENYI)
    for name, row in step_time_ratios(times, PLAIN).items():
        table[name].update({key.replace("ratio", "ratio_to_plain"): v for key, v in row.items() if "ratio" in key})
    return table


def run(args):
    results = {}
    for seed in args.seeds:
        torch.manual_seed(seed)
        x = torch.bernoulli(torch.full((args.batch_size, BURDA_CONFIG.data_dim), 0.13))
        encoder, decoder = Encoder(BURDA_CONFIG), Decoder(BURDA_CONFIG, mean_pixel=0.13)
        state = {"encoder": encoder.state_dict(), "decoder": decoder.state_dict()}
        for k in args.ks:
            results.setdefault(k, {})[seed] = benchmark(k, state, x, args.steps, args.rounds)
    return {
        "results": {str(k): per_seed[args.seeds[0]] for k, per_seed in results.items()},
        "other_seeds": {
            str(k): {str(s): r for s, r in per_seed.items() if s != args.seeds[0]} for k, per_seed in results.items()
        },
    }


def readme_block(results):
    per_k = results["results"]
    names = list(per_k[next(iter(per_k))])
    header = ["estimator"] + [column for k in per_k for column in (f"K = {k} ms", "x Renyi (rounds)", "x plain")]
    rows = []
    for name in names:
        row = [name]
        for r in (runs[name] for runs in per_k.values()):
            row += ["{:.1f}".format(r["ms_per_step"]), ratio_cell(r), "{:.2f}".format(r["ratio_to_plain"])]
        rows.append(row)
    lines = [table(header, rows)]
    for k, runs in per_k.items():
        like = [n for n, r in runs.items() if n != names[0] and r["ratio_low"] <= 1 <= r["ratio_high"]]
        over = [n for n, r in runs.items() if r["ratio"] > 1.1]
        over_plain = [n for n, r in runs.items() if r["ratio_to_plain"] > 1.5]
        lines.append(
            "K = {}: within the rounds' spread of RenyiELBO (ratio range contains 1): {}. Above the "
            "targets (median), 1.1x RenyiELBO: {}; 1.5x the plain loop: {}.\n".format(
                k, ", ".join(like) or "none", ", ".join(over) or "none", ", ".join(over_plain) or "none"
            )
        )
    lines.append("Median of {rounds} rounds of {steps} steps, batch {batch_size}. ".format(**results["args"]))
    return "\n".join(lines) + run_line(results)


SEEDS = (
    "one by default: a step's cost does not depend on the weights or the batch, and the spread reported is "
    "over --rounds"
)


def parser():
    parser = _cli.parser(__doc__, None, seeds=(0,), seeds_help=SEEDS)
    parser.add_argument("--ks", type=_cli.positive_int, nargs="+", default=[5, 50], help="particles K")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=100)
    timing_arguments(parser, steps=30, rounds=7)
    return parser


STUDY = Study("benchmark_vae", parser, run, readme_block=readme_block)

if __name__ == "__main__":
    STUDY.main()
