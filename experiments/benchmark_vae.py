"""Time per SVI step on Burda et al.'s VAE (784-200-200-50, batch 100) of
StickingTheLandingELBO and ImportanceWeightedELBO (each gradient option), as
ratios to Pyro's RenyiELBO(alpha=0) and Trace_ELBO at the same K and to a
plain-PyTorch IWAE loop (our Pyro overhead).

Every configuration starts from the same network weights and the same batch
and is timed round-robin in one run, so that the ratios share the machine's
noise; the median over rounds is reported with the lowest and highest per-round
ratio (a ratio range that contains 1 cannot be told apart from RenyiELBO by this
run). The batch is random binary pixels (mean 0.13, MNIST's): the cost of a step
does not depend on the pixel values. Writes ``results.json`` to ``--out`` if given.

    python -m experiments.benchmark_vae --out results/benchmark_vae
"""

import functools
import math
import time

import numpy as np
import pyro
import torch
import torch.distributions as td
from pyro.infer import SVI, RenyiELBO, Trace_ELBO
from pyro.optim import Adam

if not __package__:  # run as ``python experiments/benchmark_vae.py``
    import _repo_root  # noqa: F401

from experiments import _cli
from experiments._results import finish
from guides.vae import Encoder, guide
from models.vae import BURDA_CONFIG, Decoder, model
from pyro_vi import ImportanceWeightedELBO, StickingTheLandingELBO

RENYI = "RenyiELBO(alpha=0)"
PLAIN = "plain PyTorch IWAE"


def pyro_estimators(k):
    """The :data:`~experiments._cli.Registry` of the Pyro estimators at ``k``
    vectorized particles (the plain-PyTorch loop is timed beside them)."""
    kw = dict(num_particles=k, vectorize_particles=True, max_plate_nesting=1)
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
    pyro.clear_param_store()
    encoder, decoder = networks(state)
    svi = SVI(
        functools.partial(model, decoder=decoder),
        functools.partial(guide, encoder=encoder),
        Adam({"lr": 1e-3}),
        elbo,
    )
    return lambda: svi.step(x)


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


def seconds_per_step(step, num_steps):
    """Seconds per call of ``step``, after one warm-up call."""
    step()
    start = time.perf_counter()
    for _ in range(num_steps):
        step()
    return (time.perf_counter() - start) / num_steps


def benchmark(k, state, x, num_steps, rounds):
    """Every configuration at ``k`` particles timed ``rounds`` times,
    round-robin: per round its ms per step and its ratios to
    RenyiELBO(alpha=0) and to the plain-PyTorch loop in that round."""
    estimators = pyro_estimators(k)
    names = list(estimators) + [PLAIN]
    times = {name: [] for name in names}
    for _ in range(rounds):
        for name in names:
            # Fresh networks, estimator and param store right before each timing:
            # pyro.module reuses whatever tensors the store already holds by that name.
            step = plain_step(state, x, k) if name == PLAIN else pyro_step(estimators[name].make(), state, x)
            torch.manual_seed(0)
            times[name].append(seconds_per_step(step, num_steps))
    table = {}
    for name in names:
        ratio = [t / r for t, r in zip(times[name], times[RENYI])]
        ratio_plain = [t / p for t, p in zip(times[name], times[PLAIN])]
        table[name] = {
            "ms_per_step": 1e3 * float(np.median(times[name])),
            "ratio": float(np.median(ratio)),
            "ratio_low": min(ratio),
            "ratio_high": max(ratio),
            "ratio_to_plain": float(np.median(ratio_plain)),
            "ratio_to_plain_low": min(ratio_plain),
            "ratio_to_plain_high": max(ratio_plain),
            "ms_per_step_rounds": [1e3 * t for t in times[name]],
            "ratio_rounds": ratio,
        }
    return table


def format_table(results, title):
    lines = [
        title,
        "{:<32} {:>10} {:>10} {:>12} {:>10} {:>12}".format(
            "estimator", "ms/step", "x Renyi", "(rounds)", "x plain", "(rounds)"
        ),
    ]
    for name, row in results.items():
        lines.append(
            "{:<32} {:>10.1f} {:>10.2f} {:>12} {:>10.2f} {:>12}".format(
                name,
                row["ms_per_step"],
                row["ratio"],
                "{:.2f}-{:.2f}".format(row["ratio_low"], row["ratio_high"]),
                row["ratio_to_plain"],
                "{:.2f}-{:.2f}".format(row["ratio_to_plain_low"], row["ratio_to_plain_high"]),
            )
        )
    like = [name for name, row in results.items() if name != RENYI and row["ratio_low"] <= 1.0 <= row["ratio_high"]]
    if like:
        lines.append("within the rounds' spread of {} (ratio range contains 1): {}".format(RENYI, ", ".join(like)))
    return "\n".join(lines) + "\n"


def main(args):
    start = time.perf_counter()
    results = {}
    for seed in args.seeds:
        torch.manual_seed(seed)
        x = torch.bernoulli(torch.full((args.batch_size, BURDA_CONFIG.data_dim), 0.13))
        encoder, decoder = Encoder(BURDA_CONFIG), Decoder(BURDA_CONFIG, mean_pixel=0.13)
        state = {"encoder": encoder.state_dict(), "decoder": decoder.state_dict()}
        for k in args.ks:
            results.setdefault(k, {})[seed] = benchmark(k, state, x, args.steps, args.rounds)
            title = (
                f"VAE, batch {args.batch_size}, K = {k}, seed {seed}, median of {args.rounds} rounds of "
                f"{args.steps} steps"
            )
            print(format_table(results[k][seed], title))
    first = {str(k): per_seed[args.seeds[0]] for k, per_seed in results.items()}
    return finish(
        "benchmark_vae",
        args,
        {
            "args": vars(args),
            "results": first,
            "other_seeds": {
                str(k): {str(s): r for s, r in per_seed.items() if s != args.seeds[0]}
                for k, per_seed in results.items()
            },
        },
        start,
    )


def parse_args(argv=None):
    parser = _cli.parser(
        __doc__,
        out=None,
        multi_seed=True,
        default_seeds=(0,),
        seeds_help="one by default: a step's cost does not depend on the weights or the batch, "
        "and the spread reported is over --rounds",
    )
    parser.add_argument("--ks", type=_cli.positive_int, nargs="+", default=[5, 50], help="particles K")
    parser.add_argument("--batch-size", type=_cli.positive_int, default=100)
    parser.add_argument("--steps", type=_cli.positive_int, default=30, help="steps per timing")
    parser.add_argument("--rounds", type=_cli.positive_int, default=7)
    return _cli.parse(parser, argv)


if __name__ == "__main__":
    main(parse_args())
