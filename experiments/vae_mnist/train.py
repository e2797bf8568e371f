"""Training the VAE study's runs: the estimators, the schedules, the data,
the checkpoints (``--resume``), one run per seed through
:func:`pyro_vi.fit`, and the study's loop over runs and seeds."""

import functools
import math
import os
import sys
import time
from dataclasses import dataclass

import pyro
import torch
import torch.distributed
from pyro.infer import RenyiELBO, Trace_ELBO

from experiments import _cli
from experiments._results import finish
from experiments._runs import BinarizedBatches
from experiments.vae_mnist.compare import BURDA_TEST_NLL, compare, summarize
from experiments.vae_mnist.evaluate import (
    ACTIVE_UNIT_THRESHOLD,
    EVAL_SAMPLES_SEED,
    MONITOR_SAMPLES_SEED,
    TEST_BINARIZATION_SEED,
    TEST_SUBSET_SEED,
    bounds,
    evaluate,
    fixed_rng,
)
from guides.vae import Encoder, guide
from models.mnist import binarize, load_mnist
from models.vae import Decoder, VAEConfig, model
from pyro_vi import ImportanceWeightedELBO, StickingTheLandingELBO
from pyro_vi.distributed import process
from pyro_vi.training import fit, load_checkpoint

BURDA_STAGES = 8  # i = 0..7: 3^i epochs at lr * 10^(-i/7)
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))  # 3280
HISTORY_KEYS = ("epoch", "lr", "train_objective", "heldout_elbo", "heldout_iwelbo", "train_elbo", "train_iwelbo")
#: Process r of a ``torchrun`` job draws its particles from seed + r * this.
PROCESS_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class Run:
    label: str
    objective: str


def _iw(k, gradient):
    return lambda: ImportanceWeightedELBO(
        num_particles=k, gradient=gradient, vectorize_particles=True, max_plate_nesting=1
    )


#: The study's estimators (run key -> Estimator), in the order they are run and drawn.
REGISTRY: _cli.Registry = {
    "vae": _cli.Estimator(
        lambda: Trace_ELBO(num_particles=1, max_plate_nesting=1), style=dict(color="C0", marker="o", ls="-")
    ),
    "vae_stl": _cli.Estimator(
        lambda: StickingTheLandingELBO(num_particles=1, max_plate_nesting=1), style=dict(color="C1", marker="s", ls="-")
    ),
    "iwae1": _cli.Estimator(_iw(1, "reparam"), style=dict(color="0.35", marker="x", ls=":", mfc="none")),
    "iwae5": _cli.Estimator(_iw(5, "reparam"), style=dict(color="C2", marker="^", ls="-")),
    "iwae50": _cli.Estimator(_iw(50, "reparam"), style=dict(color="C3", marker="D", ls="-")),
    "iwae50_dreg": _cli.Estimator(_iw(50, "dreg"), style=dict(color="C4", marker="v", ls="-")),
    "renyi5": _cli.Estimator(
        lambda: RenyiELBO(alpha=0.0, num_particles=5, vectorize_particles=True, max_plate_nesting=1),
        style=dict(color="C8", marker="+", ls="--", ms=9),
    ),
}
RUNS = {
    "vae": Run("VAE (Trace_ELBO)", "L_1, reparameterized"),
    "vae_stl": Run("VAE-STL (StickingTheLandingELBO)", "L_1, path derivative"),
    "iwae1": Run("IWAE k=1", "L_1 (IWELBO, K=1)"),
    "iwae5": Run("IWAE k=5", "L_5 per data point"),
    "iwae50": Run("IWAE k=50", "L_50 per data point"),
    "iwae50_dreg": Run("IWAE-DReG k=50", "L_50 per data point, DReG gradient"),
    "renyi5": Run("RenyiELBO(alpha=0) k=5", "L_5 per data point (Pyro)"),
}
#: Run by default: every run but ``iwae1``, which repeats ``vae`` exactly (tested).
DEFAULT_RUNS = ("vae", "vae_stl", "iwae5", "iwae50", "iwae50_dreg", "renyi5")


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
    return (
        epoch == 0
        or epoch == args.epochs
        or epoch % args.monitor_every == 0
        or epoch in stage_ends(args.schedule, args.epochs)
    )


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


@dataclass
class Data:
    """What every run of the study shares: the images, the model's size, the device."""

    train: torch.Tensor  # float images in [0, 1], CPU
    test: torch.Tensor  # the whole test set, binarized once, on the device
    test_eval: torch.Tensor  # the images of the test L_S (a subset or all)
    test_subset: dict
    monitor: dict
    mean_pixel: torch.Tensor
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
    data = load_mnist(args.data_dir, download=not args.no_download)
    train = data.train[: args.max_train] if args.max_train else data.train
    test = binarize(data.test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED)).to(device)
    indices = test_subset(len(test), args.test_images)
    subset = {
        "size": len(indices),
        "of": len(test),
        "all": len(indices) == len(test),
        "how": "the whole test set"
        if len(indices) == len(test)
        else f"a fixed random subset (torch.randperm(num_test, generator seeded {TEST_SUBSET_SEED}), first "
        f"{len(indices)}, sorted)",
    }
    train_fixed = binarize(train[: args.monitor_size], torch.Generator().manual_seed(TEST_BINARIZATION_SEED + 1))
    info = dict(
        data.info,
        num_train_used=len(train),
        num_test_used=len(test),
        standard_split=not data.info.get("only_test_split", False),
    )
    return Data(
        train=train,
        test=test,
        test_eval=test[indices.to(device)],
        test_subset=subset,
        monitor={"heldout": test[: args.monitor_size], "train": train_fixed.to(device)},
        mean_pixel=train.mean(0),
        config=VAEConfig(hidden_dims=tuple(args.hidden_dims), latent_dim=args.latent_dim),
        info=info,
        device=device,
    )


def planned(args):
    """``(seed, run)`` pairs in the order they are trained: seed-major, the
    runs of ``--one-seed-runs`` only with the first seed."""
    return [
        (seed, key)
        for seed in args.seeds
        for key in args.runs
        if seed == args.seeds[0] or key not in args.one_seed_runs
    ]


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
    return {
        "run": key,
        "seed": seed,
        "schedule": args.schedule,
        "lr": args.lr,
        "adam_eps": args.adam_eps,
        "batch_size": args.batch_size,
        "num_train": len(data.train),
        "train_pixel_sum": round(float(data.train.double().sum()), 3),
        "split": str(data.info.get("split")),
        "hidden_dims": list(data.config.hidden_dims),
        "latent_dim": data.config.latent_dim,
        "monitor_k": args.monitor_k,
        "monitor_size": args.monitor_size,
        "monitor_every": args.monitor_every,
        "eval_samples": args.eval_samples,
        "test_images": data.test_subset["size"],
        "device": data.device.type,
    }


def check_checkpoints(args, data):
    """With ``--resume``: reads every checkpoint of this study (safely, as fit
    does) and refuses, before any training, those written with another
    configuration or past ``--epochs``, naming the differences."""
    problems = []
    for seed, key in planned(args):
        path = process_file(checkpoint_path(args.out, key, seed))
        if not os.path.exists(path):
            continue
        saved = load_checkpoint(path)
        theirs = saved["fingerprint"].get("user") or {}
        ours = fingerprint(key, seed, args, data)
        lines = [
            "{}: {!r} in the checkpoint, {!r} here".format(
                name, theirs.get(name, "(absent)"), ours.get(name, "(absent)")
            )
            for name in sorted(set(theirs) | set(ours))
            if theirs.get(name) != ours.get(name)
        ]
        if saved["epoch"] > args.epochs:
            lines.append("epoch: the checkpoint is at epoch {}, past --epochs {}".format(saved["epoch"], args.epochs))
        if lines:
            problems.append("{}:\n    {}".format(path, "\n    ".join(lines)))
    if problems:
        raise ValueError(
            "--resume: checkpoint(s) of another configuration, nothing was trained:\n  {}\n"
            "pass the flags they were written with, another --out, or --overwrite to start "
            "over".format("\n  ".join(problems))
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


def train_run(key, seed, args, data):
    """Trains run ``key`` with ``seed`` through :func:`~pyro_vi.training.fit`
    (resuming from its checkpoint with ``--resume``), evaluating after the
    last epoch; returns ``(state, fit_result)``, ``state`` holding the history
    and ``state["final"]``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)  # the same initial weights in every process
    decoder = Decoder(data.config, data.mean_pixel).to(data.device)
    encoder = Encoder(data.config).to(data.device)
    model_fn = functools.partial(model, decoder=decoder)
    guide_fn = functools.partial(guide, encoder=encoder)
    batches = BinarizedBatches(data.train, args.batch_size, seed + 1, device=data.device)
    optim, step_callback = make_optim(args, len(batches))
    num_train = len(data.train)
    state = {}
    rank, world_size = process()
    if world_size > 1:
        pyro.set_rng_seed(seed + PROCESS_SEED_STRIDE * rank)  # each process its own particles
    # fit averages the processes' losses, each of its share of the batch: times
    # the number of processes, the loss of the whole batch

    def record_bounds():
        for split in ("heldout", "train"):
            with fixed_rng(MONITOR_SAMPLES_SEED):
                iw, l1 = bounds(model_fn, guide_fn, data.monitor[split], args.monitor_k)
            state[split + "_elbo"].append(l1.mean().item())
            state[split + "_iwelbo"].append(iw.mean().item())

    def after_epoch(epoch, losses):
        if epoch == 0:
            state.update({name: [] for name in HISTORY_KEYS}, monitor_seconds=0.0)
        if monitored(epoch, args):
            start = time.perf_counter()
            state["epoch"].append(epoch)
            state["lr"].append(args.lr * lr_factor(args.schedule, epoch - 1) if epoch else None)
            state["train_objective"].append(-world_size * float(losses.sum()) / num_train if epoch else None)
            record_bounds()
            state["monitor_seconds"] += time.perf_counter() - start
            if epoch:
                print(
                    "{:<12} seed {} epoch {:>4}: objective {:9.3f}  held-out L_1 {:9.3f}  L_{} {:9.3f}".format(
                        key,
                        seed,
                        epoch,
                        state["train_objective"][-1],
                        state["heldout_elbo"][-1],
                        args.monitor_k,
                        state["heldout_iwelbo"][-1],
                    ),
                    flush=True,
                )
        if epoch == args.epochs:  # every process, each its share of the images
            state["final"] = evaluate(encoder, model_fn, guide_fn, data.test_eval, data.test, args.eval_samples)

    path = checkpoint_path(args.out, key, seed)
    resume = "allow_fresh" if args.resume else False
    if args.resume and os.path.exists(path):
        print(f"{key:<12} seed {seed}: continuing from {path}", flush=True)
    result = fit(
        model_fn,
        guide_fn,
        REGISTRY[key].make(),
        optim,
        data=batches,
        epochs=args.epochs,
        callback=step_callback,
        epoch_callback=after_epoch,
        state=state,
        fingerprint=fingerprint(key, seed, args, data),
        checkpoint=path,
        checkpoint_every=args.checkpoint_every,
        resume=resume,
        overwrite=args.overwrite,
        progress=False,
    )
    if result.resumed_from:
        print(f"{key:<12} seed {seed}: resumed from step {result.resumed_from} of {path}", flush=True)
    return state, result


def seed_record(state, result, steps_per_epoch):
    """One run and seed as it goes into results.json."""
    final = {k: v for k, v in state["final"].items() if k != "log_px"}
    return dict(
        final,
        epochs=int(result.epochs),
        seconds_per_epoch=result.seconds_per_step * steps_per_epoch,
        train_seconds=result.seconds_per_step * result.num_steps,
        monitor_seconds=state["monitor_seconds"],
        history={k: state[k] for k in HISTORY_KEYS},
    )


def start_processes(device):
    """Joins the ``torchrun`` job this process belongs to, if any (gloo on the
    CPU, nccl on CUDA), and silences all but the first process. Training then
    averages gradients over the processes (:mod:`pyro_vi.distributed`), and
    the evaluations share out the images (:func:`~experiments.vae_mnist.evaluate.bounds`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    if process()[0] > 0:
        sys.stdout = open(os.devnull, "w")


def results_of(args, data, records, log_px, status):
    """The results of the runs and seeds done so far."""
    runs = {}
    for key in args.runs:
        seeds = {str(s): records[key, s] for s in args.seeds if (key, s) in records}
        if seeds:
            runs[key] = {
                "label": RUNS[key].label,
                "objective": RUNS[key].objective,
                "seeds": seeds,
                "summary": summarize(seeds),
            }
    return {
        "status": status,
        "gpu": torch.cuda.get_device_name(data.device) if data.device.type == "cuda" else None,
        "data": dict(data.info, test_subset=data.test_subset),
        "config": {
            "data_dim": data.config.data_dim,
            "hidden_dims": list(data.config.hidden_dims),
            "latent_dim": data.config.latent_dim,
        },
        "evaluation": {
            "active_unit_threshold": ACTIVE_UNIT_THRESHOLD,
            "test_binarization_seed": TEST_BINARIZATION_SEED,
            "eval_samples_seed": EVAL_SAMPLES_SEED,
            "test_subset_seed": TEST_SUBSET_SEED,
        },
        "runs": runs,
        "comparisons": compare({k: {s: v for (kk, s), v in log_px.items() if kk == k} for k in runs}),
        "figures_seed": args.seeds[0],
        "references": {
            "burda_test_nll_3280_epochs": BURDA_TEST_NLL,
            "note": "Burda et al. 2015 table 1: L_5000 on the 10,000 standard test images after 3,280 "
            f"epochs (batch 20, Adam eps 1e-4); this study: {args.schedule} schedule, {args.epochs} epochs",
        },
        "compute_seconds": sum(r["train_seconds"] + r["monitor_seconds"] + r["eval_seconds"] for r in records.values()),
    }


def run(args):
    """Trains and evaluates every run and seed of ``args``; rewrites
    ``results.json`` after each (a killed study keeps what it finished)."""
    start = time.perf_counter()
    start_processes(args.device)
    data = prepare(args)
    print(
        "MNIST from {}\n  {}\n  training on {:,} images (dynamic binarization per batch); test L_{} on {}".format(
            data.info["source"],
            data.info["split"],
            len(data.train),
            args.eval_samples,
            data.test_subset["how"] + " of the {:,} test images".format(data.test_subset["of"]),
        ),
        flush=True,
    )
    if not data.info["standard_split"]:
        print("NOTE: the FALLBACK split ran, not the standard 60,000/10,000 one", flush=True)
    print(
        "{} schedule: {} epochs, Adam(lr={:g}, eps={:g}), batch {}; runs {}; seeds {}; {} torch thread(s), "
        "device {}, {} process(es)".format(
            args.schedule,
            args.epochs,
            args.lr,
            args.adam_eps,
            args.batch_size,
            ", ".join(args.runs),
            " ".join(map(str, args.seeds)),
            torch.get_num_threads(),
            args.device,
            process()[1],
        ),
        flush=True,
    )
    os.makedirs(os.path.join(args.out, "checkpoints"), exist_ok=True)
    if args.resume:
        check_checkpoints(args, data)
    steps_per_epoch = math.ceil(len(data.train) / args.batch_size)
    records, log_px = {}, {}
    plan = planned(args)
    for seed, key in plan:
        state, result = train_run(key, seed, args, data)
        records[key, seed] = seed_record(state, result, steps_per_epoch)
        log_px[key, seed] = state["final"]["log_px"]
        r = records[key, seed]
        print(
            "{:<12} seed {}: test L_{} = {:.3f} +- {:.3f}, test ELBO = {:.3f}, active units {}/{}, "
            "{:.1f} s/epoch, eval {:.0f} s".format(
                key,
                seed,
                args.eval_samples,
                r["test_log_likelihood"],
                r["test_log_likelihood_se"] or 0.0,
                r["test_elbo"],
                r["active_units"],
                data.config.latent_dim,
                r["seconds_per_epoch"],
                r["eval_seconds"],
            ),
            flush=True,
        )
        status = "complete" if len(records) == len(plan) else f"partial: {len(records)} of {len(plan)} runs x seeds"
        results = results_of(args, data, records, log_px, status)
        finish("vae_mnist", args, results, start, report=False)
    if not data.info["standard_split"]:
        print("NOTE: " + data.info["split"])
    return results
