"""Training the VAE study's runs: the estimators, the schedules, the data,
the checkpoints (``--resume``), one run and seed through :func:`pyro_vi.fit`,
and the study's loop over runs and seeds."""

import functools
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import Callable

import pyro
import torch
import torch.distributed
from pyro.infer import RenyiELBO, Trace_ELBO

from experiments._cli import VECTORIZED
from experiments._results import finish
from experiments._runs import BinarizedBatches, check_checkpoints, checkpointing, fixed_rng
from experiments.vae_mnist.compare import BURDA_TEST_NLL, compare, summarize
from experiments.vae_mnist.evaluate import (
    ACTIVE_UNIT_THRESHOLD,
    EVAL_SAMPLES_SEED,
    MONITOR_SAMPLES_SEED,
    TEST_BINARIZATION_SEED,
    TEST_SUBSET_SEED,
    bounds,
    evaluate,
)
from guides.vae import Encoder, guide
from models.mnist import binarize, load_mnist
from models.vae import Decoder, VAEConfig, model
from pyro_vi import ImportanceWeightedELBO, StickingTheLandingELBO
from pyro_vi.training import fit, load_checkpoint
from pyro_vi.training.distributed import in_process_group, process

BURDA_STAGES = 8  # i = 0..7: 3^i epochs at lr * 10^(-i/7)
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))  # 3280
HISTORY_KEYS = ("epoch", "lr", "train_objective", "heldout_elbo", "heldout_iwelbo", "train_elbo", "train_iwelbo")
#: Process r of a ``torchrun`` job draws its particles from seed + r * this.
PROCESS_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Run:
    """One run of the study: its label, the objective it trains, a factory
    of its estimator and its plotting style."""

    label: str
    objective: str
    make: Callable
    style: dict


def _iw(k, gradient="reparam"):
    return lambda: ImportanceWeightedELBO(k, gradient=gradient, **VECTORIZED)


#: The study's runs, in the order they are run and drawn.
RUNS = {
    "vae": Run(
        "VAE (Trace_ELBO)",
        "L_1, reparameterized",
        lambda: Trace_ELBO(num_particles=1, max_plate_nesting=1),
        dict(color="C0", marker="o", ls="-"),
    ),
    "vae_stl": Run(
        "VAE-STL (StickingTheLandingELBO)",
        "L_1, path derivative",
        lambda: StickingTheLandingELBO(num_particles=1, max_plate_nesting=1),
        dict(color="C1", marker="s", ls="-"),
    ),
    "iwae1": Run("IWAE k=1", "L_1 (IWELBO, K=1)", _iw(1), dict(color="0.35", marker="x", ls=":", mfc="none")),
    "iwae5": Run("IWAE k=5", "L_5 per data point", _iw(5), dict(color="C2", marker="^", ls="-")),
    "iwae50": Run("IWAE k=50", "L_50 per data point", _iw(50), dict(color="C3", marker="D", ls="-")),
    "iwae50_dreg": Run(
        "IWAE-DReG k=50", "L_50 per data point, DReG gradient", _iw(50, "dreg"), dict(color="C4", marker="v", ls="-")
    ),
    "renyi5": Run(
        "RenyiELBO(alpha=0) k=5",
        "L_5 per data point (Pyro)",
        lambda: RenyiELBO(alpha=0.0, num_particles=5, **VECTORIZED),
        dict(color="C8", marker="+", ls="--", ms=9),
    ),
}
#: Run by default: every run but ``iwae1``, which repeats ``vae`` exactly (tested).
DEFAULT_RUNS = ("vae", "vae_stl", "iwae5", "iwae50", "iwae50_dreg", "renyi5")

# ----------------------------------------------------------------------------
# schedules


def burda_stage(epoch_index):
    """The stage i of Burda et al.'s schedule that the ``epoch_index``-th epoch
    (from 0) belongs to: epochs 0 | 1-3 | 4-12 | ... (3^i epochs in stage i)."""
    stage, end = 0, 1
    while epoch_index >= end and stage < BURDA_STAGES - 1:
        stage += 1
        end += 3**stage
    return stage


def lr_factor(schedule, epoch_index):
    """The learning rate of the ``epoch_index``-th epoch (from 0), as a factor of ``--lr``."""
    return 10.0 ** (-burda_stage(epoch_index) / 7.0) if schedule == "burda" else 1.0


def stage_ends(schedule, epochs):
    """The epochs (from 1) after which the learning rate changes."""
    if schedule != "burda":
        return set()
    return {sum(3**j for j in range(i + 1)) for i in range(BURDA_STAGES)} & set(range(1, epochs + 1))


def monitored(epoch, args):
    """Whether the bounds are recorded after ``epoch`` (0: before training)."""
    ends = stage_ends(args.schedule, args.epochs)
    return epoch in (0, args.epochs) or epoch % args.monitor_every == 0 or epoch in ends


def make_optim(args, steps_per_epoch):
    """``(optim, callback)``: Adam, and for ``burda`` a LambdaLR that fit's
    per-step callback steps (the factor of step k is that of its epoch)."""
    optim_args = {"lr": args.lr, "eps": args.adam_eps}
    if args.schedule == "course":
        return pyro.optim.Adam(optim_args), None

    def factor(steps_done):
        return lr_factor("burda", steps_done // steps_per_epoch)

    scheduler = pyro.optim.LambdaLR({"optimizer": torch.optim.Adam, "optim_args": optim_args, "lr_lambda": factor})
    return scheduler, lambda step, loss: scheduler.step()


# ----------------------------------------------------------------------------
# data


@dataclass
class Data:
    """What every run of the study shares: the training images (floats in
    [0, 1], on the CPU), the test set binarized once and the images of its
    L_S, the fixed batches of the per-epoch curves, the network sizes."""

    train: torch.Tensor
    test: torch.Tensor
    test_eval: torch.Tensor
    test_subset: dict
    monitor: dict
    config: VAEConfig
    info: dict
    device: torch.device


def test_subset(num_test, size):
    """The indices of the test L_S: all for ``size`` None or >= ``num_test``,
    else a fixed random ``size`` of them (sorted)."""
    if size is None or size >= num_test:
        return torch.arange(num_test)
    order = torch.randperm(num_test, generator=torch.Generator().manual_seed(TEST_SUBSET_SEED))
    return order[:size].sort().values


def prepare(args):
    device = torch.device(args.device)
    mnist = load_mnist(args.data_dir, download=not args.no_download)
    train = mnist.train[: args.max_train] if args.max_train else mnist.train
    test = binarize(mnist.test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED)).to(device)
    indices = test_subset(len(test), args.test_images)
    everything = len(indices) == len(test)
    how = (
        "the whole test set"
        if everything
        else (
            f"a fixed random subset (torch.randperm(num_test, generator seeded {TEST_SUBSET_SEED}), first "
            f"{len(indices)}, sorted)"
        )
    )
    train_fixed = binarize(train[: args.monitor_size], torch.Generator().manual_seed(TEST_BINARIZATION_SEED + 1))
    standard = not mnist.info.get("only_test_split", False)
    return Data(
        train=train,
        test=test,
        test_eval=test[indices.to(device)],
        test_subset={"size": len(indices), "of": len(test), "all": everything, "how": how},
        monitor={"heldout": test[: args.monitor_size], "train": train_fixed.to(device)},
        config=VAEConfig(hidden_dims=tuple(args.hidden_dims), latent_dim=args.latent_dim),
        info=dict(mnist.info, num_train_used=len(train), num_test_used=len(test), standard_split=standard),
        device=device,
    )


# ----------------------------------------------------------------------------
# checkpoints


def planned(args):
    """``(seed, run)`` pairs in the order they are trained: seed-major, the
    runs of ``--one-seed-runs`` only with the first seed."""
    seeds = args.seeds
    return [(s, key) for s in seeds for key in args.runs if s == seeds[0] or key not in args.one_seed_runs]


def checkpoint_path(out, key, seed):
    return os.path.join(out, "checkpoints", f"{key}-seed{seed}.pt")


def process_file(path):
    """The checkpoint file :func:`~pyro_vi.training.fit` writes for ``path``
    in this process (``<path>.rank<r>`` under ``torchrun``; from torchrun's
    environment, so that the flags are checked before the processes join)."""
    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    return path if world_size == 1 else f"{path}.rank{rank}"


def fingerprint(key, seed, args, data):
    """What must match for a checkpoint to be resumed (not ``--epochs``: a run
    can be extended)."""
    flags = ("schedule", "lr", "adam_eps", "batch_size", "monitor_k", "monitor_size", "monitor_every", "eval_samples")
    return dict(
        {name: getattr(args, name) for name in flags},
        run=key,
        seed=seed,
        num_train=len(data.train),
        train_pixel_sum=round(float(data.train.double().sum()), 3),
        split=str(data.info.get("split")),
        hidden_dims=list(data.config.hidden_dims),
        latent_dim=data.config.latent_dim,
        test_images=data.test_subset["size"],
        device=data.device.type,
    )


def load_networks(path, config):
    """The encoder and decoder holding a checkpoint's params (on the CPU)."""
    params = load_checkpoint(path)["params"]
    networks = {"encoder": Encoder(config), "decoder": Decoder(config)}
    for name, net in networks.items():
        prefix = name + "$$$"
        net.load_state_dict({k[len(prefix) :]: r["value"].cpu() for k, r in params.items() if k.startswith(prefix)})
        net.eval()
    return networks["encoder"], networks["decoder"]


# ----------------------------------------------------------------------------
# one run and seed


def train_run(key, seed, args, data):
    """Trains run ``key`` with ``seed`` through :func:`~pyro_vi.training.fit`
    (resuming from its checkpoint with ``--resume``), evaluating after the
    last epoch; returns ``(state, fit_result)``, ``state`` holding the history
    and ``state["final"]``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)  # the same initial weights in every process
    decoder = Decoder(data.config, data.train.mean(0)).to(data.device)
    encoder = Encoder(data.config).to(data.device)
    model_fn = functools.partial(model, decoder=decoder)
    guide_fn = functools.partial(guide, encoder=encoder)
    batches = BinarizedBatches(data.train, args.batch_size, seed + 1, device=data.device)
    optim, step_callback = make_optim(args, len(batches))
    rank, world_size = process()
    # Each process holds 1/world_size of every batch, standing for the whole
    # batch (a plate subsampled from it, so that the importance-weighted runs
    # scale each point's bound, not temper its weights): its objective
    # estimates the whole batch's, and so does the average of the processes'
    # gradients (fit refuses shards that count for less).
    train_model, train_guide = model_fn, guide_fn
    if world_size > 1:
        train_model, train_guide = (lambda x, fn=fn: fn(x, size=world_size * x.shape[0]) for fn in (model_fn, guide_fn))
        pyro.set_rng_seed(seed + PROCESS_SEED_STRIDE * rank)  # each process its own particles
    state = {}

    def after_epoch(epoch, losses):
        if epoch == 0:
            state.update({name: [] for name in HISTORY_KEYS}, monitor_seconds=0.0)
        if monitored(epoch, args):
            start = time.perf_counter()
            state["epoch"].append(epoch)
            state["lr"].append(args.lr * lr_factor(args.schedule, epoch - 1) if epoch else None)
            # fit averages the processes' losses, each its share of the batches
            # scaled to the whole batches: the loss of the whole batches
            state["train_objective"].append(-float(losses.sum()) / len(data.train) if epoch else None)
            for split in ("heldout", "train"):
                with fixed_rng(MONITOR_SAMPLES_SEED):
                    iw, l1 = bounds(model_fn, guide_fn, data.monitor[split], args.monitor_k)
                state[split + "_elbo"].append(l1.mean().item())
                state[split + "_iwelbo"].append(iw.mean().item())
            state["monitor_seconds"] += time.perf_counter() - start
            if epoch:
                print(
                    f"{key:<12} seed {seed} epoch {epoch:>4}: objective {state['train_objective'][-1]:9.3f}  held-out "
                    f"L_1 {state['heldout_elbo'][-1]:9.3f}  L_{args.monitor_k} {state['heldout_iwelbo'][-1]:9.3f}",
                    flush=True,
                )
        if epoch == args.epochs:  # every process, each its share of the images
            state["final"] = evaluate(encoder, model_fn, guide_fn, data.test_eval, data.test, args.eval_samples)

    path = checkpoint_path(args.out, key, seed)
    if args.resume and os.path.exists(path):
        print(f"{key:<12} seed {seed}: continuing from {path}", flush=True)
    result = fit(
        train_model,
        train_guide,
        RUNS[key].make(),
        optim,
        data=batches,
        epochs=args.epochs,
        callback=step_callback,
        epoch_callback=after_epoch,
        state=state,
        fingerprint=fingerprint(key, seed, args, data),
        **checkpointing(args, path),
        progress=False,
    )
    if result.resumed_from:
        print(f"{key:<12} seed {seed}: resumed from step {result.resumed_from} of {path}", flush=True)
    return state, result


def seed_record(state, result, steps_per_epoch):
    """One run and seed as it goes into results.json."""
    return dict(
        {k: v for k, v in state["final"].items() if k != "log_px"},
        epochs=int(result.epochs),
        seconds_per_epoch=result.seconds_per_step * steps_per_epoch,
        train_seconds=result.seconds_per_step * result.num_steps,
        monitor_seconds=state["monitor_seconds"],
        history={k: state[k] for k in HISTORY_KEYS},
    )


# ----------------------------------------------------------------------------
# the study


def start_processes(device):
    """Joins the ``torchrun`` job this process belongs to, if any (gloo on the
    CPU, nccl on CUDA), and silences all but the first process. Training then
    averages gradients over the processes (:mod:`pyro_vi.training.distributed`) and
    the evaluations share out the images (:func:`~experiments.vae_mnist.evaluate.bounds`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not in_process_group():
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    if process()[0] > 0:
        sys.stdout = open(os.devnull, "w")


def results_of(args, data, records, log_px, status):
    """The results of the runs and seeds done so far."""
    runs = {}
    for key in args.runs:
        seeds = {str(s): records[key, s] for s in args.seeds if (key, s) in records}
        if seeds:
            runs[key] = dict(
                label=RUNS[key].label, objective=RUNS[key].objective, seeds=seeds, summary=summarize(seeds)
            )
    config = data.config
    note = (
        "Burda et al. 2015 table 1: L_5000 on the 10,000 standard test images after 3,280 epochs (batch 20, Adam "
        f"eps 1e-4); this study: {args.schedule} schedule, {args.epochs} epochs"
    )
    return {
        "status": status,
        "gpu": torch.cuda.get_device_name(data.device) if data.device.type == "cuda" else None,
        "data": dict(data.info, test_subset=data.test_subset),
        "config": dict(data_dim=config.data_dim, hidden_dims=list(config.hidden_dims), latent_dim=config.latent_dim),
        "evaluation": {
            "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
            "test_binarization_seed": TEST_BINARIZATION_SEED,
            "eval_samples_seed": EVAL_SAMPLES_SEED,
            "test_subset_seed": TEST_SUBSET_SEED,
        },
        "runs": runs,
        "comparisons": compare({k: {s: v for (kk, s), v in log_px.items() if kk == k} for k in runs}),
        "figures_seed": args.seeds[0],
        "references": {"burda_test_nll_3280_epochs": BURDA_TEST_NLL, "note": note},
        "compute_seconds": sum(r["train_seconds"] + r["monitor_seconds"] + r["eval_seconds"] for r in records.values()),
    }


def run(args):
    """Trains and evaluates every run and seed of ``args``; rewrites
    ``results.json`` after each (a killed study keeps what it finished)."""
    start = time.perf_counter()
    start_processes(args.device)
    data = prepare(args)
    subset = data.test_subset
    print(
        f"MNIST from {data.info['source']}\n  {data.info['split']}\n  training on {len(data.train):,} images "
        f"(dynamic binarization per batch); test L_{args.eval_samples} on {subset['how']} of the {subset['of']:,} "
        f"test images\n{args.schedule} schedule: {args.epochs} epochs, Adam(lr={args.lr:g}, eps={args.adam_eps:g}), "
        f"batch {args.batch_size}; runs {', '.join(args.runs)}; seeds {' '.join(map(str, args.seeds))}; "
        f"{torch.get_num_threads()} torch thread(s), device {args.device}, {process()[1]} process(es)",
        flush=True,
    )
    if not data.info["standard_split"]:
        print("NOTE: the FALLBACK split ran, not the standard 60,000/10,000 one", flush=True)
    os.makedirs(os.path.join(args.out, "checkpoints"), exist_ok=True)
    if args.resume:  # before any training: refuses checkpoints of another configuration or past --epochs
        checkpoints = [
            (process_file(checkpoint_path(args.out, key, seed)), fingerprint(key, seed, args, data))
            for seed, key in planned(args)
        ]
        check_checkpoints(checkpoints, "epoch", args.epochs)
    records, log_px, plan = {}, {}, planned(args)
    for seed, key in plan:
        state, result = train_run(key, seed, args, data)
        r = records[key, seed] = seed_record(state, result, math.ceil(len(data.train) / args.batch_size))
        log_px[key, seed] = state["final"]["log_px"]
        print(
            f"{key:<12} seed {seed}: test L_{args.eval_samples} = {r['test_log_likelihood']:.3f} +- "
            f"{r['test_log_likelihood_se'] or 0.0:.3f}, test ELBO = {r['test_elbo']:.3f}, active units "
            f"{r['active_units']}/{data.config.latent_dim}, {r['seconds_per_epoch']:.1f} s/epoch, eval "
            f"{r['eval_seconds']:.0f} s",
            flush=True,
        )
        status = "complete" if len(records) == len(plan) else f"partial: {len(records)} of {len(plan)} runs x seeds"
        results = results_of(args, data, records, log_px, status)
        finish("vae_mnist", args, results, start, report=False)
    return results
