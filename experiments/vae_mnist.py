"""VAE, sticking-the-landing VAE and IWAE on dynamically binarized MNIST
(assignment 1.B.2, question 3.1.25, and 1.A.2, questions 4.2.27-28).

Burda et al.'s one-stochastic-layer model (784-200-200-50, tanh, Gaussian q,
Bernoulli p; :mod:`models.vae`, :mod:`guides.vae`) trained with Adam by each of
these runs; for a given seed every run starts from the same weights and sees the
same batches and binarizations:

=================  ==========================================================
``vae``            Trace_ELBO (the standard VAE, K = 1)
``vae_stl``        StickingTheLandingELBO (Roeder et al. Algorithm 2, K = 1)
``iwae1``          ImportanceWeightedELBO(K=1) -- the VAE on the same samples
                   (identical numbers; not run by default)
``iwae5``          ImportanceWeightedELBO(K=5, gradient="reparam")
``iwae50``         ImportanceWeightedELBO(K=50, gradient="reparam")
``iwae50_dreg``    ImportanceWeightedELBO(K=50, gradient="dreg")
``renyi5``         Pyro's RenyiELBO(alpha=0, K=5, vectorized): every site of the
                   VAE is in the data plate, so it is the IWAE k=5 estimator
                   (a cross-check of ``iwae5``)
=================  ==========================================================

**Data.** The standard split (train on the 60,000 training images, test on the
10,000 test images) when ``--data-dir`` holds both; when only the test split is
there, :func:`models.mnist.load_mnist` trains on a fixed random 8,000 of it and
tests on the other 2,000, and the output and ``results.json`` say so. Training
batches are binarized dynamically; the test images once, with a fixed seed.

**Schedules.** ``--schedule course`` (default): 20 epochs of Adam at lr 1e-3,
batches of 100. ``--schedule burda``: Burda et al.'s 3^i passes at lr
1e-3 * 10^(-i/7), i = 0..7 (3,280 epochs), batches of 20, Adam eps 1e-4 (a GPU
job: ``--device cuda``); ``--epochs N`` runs its first N epochs. Training goes
through :func:`pyro_vi.training.fit` (batches from an iterable, per-step
callback for the learning-rate schedule, per-epoch callback for the
evaluations, checkpoints).

**Evaluation.** At epoch 0 (untrained) and after every ``--monitor-every``-th
epoch, the ELBO L_1 and the IWELBO L_K (K = ``--monitor-k``, 50) on a fixed
held-out batch (the first ``--monitor-size`` test images) and a fixed training
batch, with the same importance samples for every run, seed and epoch. After
the last epoch, on the test set: log p(x) ~ L_S with S = ``--eval-samples``
(5000) importance samples (log-sum-exp over chunks, bounded memory), the test
ELBO (the mean log-weight over the same samples), each with its standard error
over the test images, and the active units (Burda et al.: Cov_x(E_q[z_u | x]) >
1e-2, over the whole test set). L_S is computed on ``--test-images`` images
(default 1000, for the CPU budget): a fixed random subset of the test set
(``torch.randperm`` seeded with :data:`TEST_SUBSET_SEED`, the same for every run
and seed; random rather than the first N, whose digits are easier), or ``all``
(``--full-test``); its standard error over the images is reported beside it.

**Seeds.** ``--seeds`` (default 0 1 2): every run for every seed, seed-major,
except the runs of ``--one-seed-runs``, trained with the first seed only (on a
CPU the k=50 runs cost ten times the others). The table gives mean +- sd over
seeds, and ``results.json`` says for the papers' comparisons (IWAE k=50 > k=5 >
VAE, STL >= VAE, DReG >= IWAE k=50), paired by seed and test image, whether the
difference is resolved or within the seed spread.

Writes to ``--out`` (created, and checked writable, before any work):

- ``results.json``: per run and seed the final numbers and the per-epoch
  history, summaries over seeds, comparisons, the command, threads, machine
  and data split (rewritten after every run and seed, so a killed study keeps
  what it finished);
- ``elbo_iwelbo.png``: L_1 and L_K per epoch, held-out and training batch,
  mean over seeds with a min-max band;
- ``test_loglik.png``: test L_S and test ELBO per run, every seed and the mean
  +- sd, with Burda et al.'s numbers where comparable;
- ``reconstructions.png``, ``samples.png``: from the final weights of the first
  seed, read from the checkpoints;
- ``checkpoints/<run>-seed<seed>.pt``: :func:`~pyro_vi.training.fit`'s
  checkpoints (plain data, read with ``weights_only=True``). A killed study
  continues with ``--resume`` and ends with the numbers of an uninterrupted
  one; ``--resume`` refuses a checkpoint of another configuration, naming the
  differences, before any training. Without ``--resume`` existing checkpoints
  are refused unless ``--overwrite``.

``--plot-only`` redraws the figures from ``results.json`` (and the
checkpoints, for the images) without training. Seconds per epoch are fit's
step times (loss, gradients, optimizer), without the batches' binarization,
the monitoring and the checkpoint writes, with ``--threads`` torch threads.

The CPU study of the README (about 3.5 hours on one busy core; the k=50 runs
with one seed)::

    python -m experiments.vae_mnist --data-dir ../shared/data/mnist --no-download \
        --out results/vae_mnist --threads 1 --one-seed-runs iwae50,iwae50_dreg

and, on a GPU, Burda et al.'s schedule (hours per run)::

    python -m experiments.vae_mnist --data-dir ../shared/data/mnist --no-download \
        --out results/vae_mnist_burda --schedule burda --device cuda --test-images all
"""

import contextlib
import functools
import json
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass

import numpy as np
import pyro
import pyro.poutine as poutine
import torch
import torch.distributed
from matplotlib.ticker import MaxNLocator
from pyro.infer import RenyiELBO, Trace_ELBO

if not __package__:  # run as ``python experiments/vae_mnist.py``
    import _repo_root  # noqa: F401

from experiments import _cli, _results
from experiments._figures import plt, save_figure
from guides.vae import Encoder, guide
from models.mnist import MnistNotFoundError, binarize, default_data_dir, load_mnist
from models.vae import Decoder, VAEConfig, model
from pyro_vi import ImportanceWeightedELBO, StickingTheLandingELBO
from pyro_vi.training import fit, load_checkpoint
from pyro_vi.training.distributed import process

SCHEMA = "pyro_vi vae_mnist results v2"
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
ACTIVE_UNIT_THRESHOLD = 1e-2
BURDA_STAGES = 8  # i = 0..7: 3^i epochs at lr * 10^(-i/7)
BURDA_EPOCHS = sum(3**i for i in range(BURDA_STAGES))  # 3280
# Seeds of the fixed binarizations, importance samples and test subset used for
# evaluation: the same for every run and every --seed.
TEST_BINARIZATION_SEED = 20151
MONITOR_SAMPLES_SEED = 20152
EVAL_SAMPLES_SEED = 20153
FIGURE_SEED = 20154
TEST_SUBSET_SEED = 20155
# Elements (samples x data points x pixels) per chunk of the test evaluation.
EVAL_CHUNK_ELEMENTS = 1 << 23
DEFAULT_SEEDS = (0, 1, 2)
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
HISTORY_KEYS = ("epoch", "lr", "train_objective", "heldout_elbo", "heldout_iwelbo", "train_elbo", "train_iwelbo")


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


# ----------------------------------------------------------------------------
# Evaluation: importance weights, bounds, active units


@contextlib.contextmanager
def fixed_rng(seed):
    """Runs the block with ``torch.manual_seed(seed)`` and puts the global
    random states back afterwards, so evaluation never disturbs the training
    stream."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def log_weights(model_fn, guide_fn, x, num_samples):
    """``log p(x_n, z_sn) - log q(z_sn | x_n)`` for ``num_samples`` draws per data
    point, shape ``(num_samples, B)``: guide and model run once, vectorized over
    the samples in a plate at ``dim=-2``."""
    with torch.no_grad(), pyro.plate("importance_samples", num_samples, dim=-2):
        guide_trace = poutine.trace(guide_fn).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model_fn, trace=guide_trace)).get_trace(x)
    shape = (num_samples, x.shape[0])
    log_w = x.new_zeros(shape)
    for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
        for site in trace.nodes.values():
            if site["type"] == "sample":
                log_w = log_w + sign * site["fn"].log_prob(site["value"]).expand(shape)
    return log_w


def bounds(model_fn, guide_fn, x, num_samples, batch_size=None):
    """Per data point ``(L_S, mean log-weight)`` from ``num_samples`` importance
    samples, drawn in chunks and accumulated by log-sum-exp (memory bounded by
    ``EVAL_CHUNK_ELEMENTS``). The mean log-weight estimates the ELBO L_1."""
    data_dim = x.shape[-1]
    batch_size = batch_size or max(1, min(len(x), 100))
    chunk = max(1, EVAL_CHUNK_ELEMENTS // (data_dim * batch_size))
    log_px, elbo = [], []
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        acc = xb.new_full((len(xb),), -math.inf)
        total = xb.new_zeros(len(xb))
        done = 0
        while done < num_samples:
            s = min(chunk, num_samples - done)
            lw = log_weights(model_fn, guide_fn, xb, s)
            acc = torch.logaddexp(acc, torch.logsumexp(lw, 0))
            total = total + lw.sum(0)
            done += s
        log_px.append(acc - math.log(num_samples))
        elbo.append(total / num_samples)
    return torch.cat(log_px), torch.cat(elbo)


def active_units(encoder, x, threshold=ACTIVE_UNIT_THRESHOLD):
    """Burda et al.'s active units: dimensions u with Cov_x(E_q[z_u | x]) > threshold."""
    with torch.no_grad():
        loc = torch.cat([encoder(xb)[0] for xb in x.split(1000)])
    variance = loc.var(0)
    return int((variance > threshold).sum()), variance


def _mean_se(values):
    values = values.double()
    se = (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else None
    return values.mean().item(), se


# ----------------------------------------------------------------------------
# Schedules


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


# ----------------------------------------------------------------------------
# Processes

#: Process r of a ``torchrun`` job draws its particles from seed + r * this.
PROCESS_SEED_STRIDE = 1_000_003


def start_processes(device):
    """Joins the ``torchrun`` job this process belongs to, if any (gloo on the
    CPU, nccl on CUDA), and silences all but the first process; returns the
    rank. Training then averages gradients over the processes
    (:mod:`pyro_vi.training.distributed`)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device == "cuda" else "gloo")
    rank = process()[0]
    if rank > 0:
        sys.stdout = open(os.devnull, "w")
    return rank


# ----------------------------------------------------------------------------
# Data


class BinarizedBatches:
    """The training images in a random order, in batches, each dynamically
    binarized; order and pixels come from :attr:`generator`, which
    :func:`~pyro_vi.training.fit` saves and restores with a checkpoint. Under
    ``torchrun`` every process draws the same order and takes its share of
    each batch (``batch_size / world_size`` images)."""

    def __init__(self, images, batch_size, seed, device):
        self.images, self.batch_size, self.device = images, batch_size, device
        self.generator = torch.Generator().manual_seed(seed)
        self.rank, self.world_size = process()

    def __len__(self):
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        order = torch.randperm(len(self.images), generator=self.generator)
        for first in range(0, len(order), self.batch_size):
            batch = binarize(self.images[order[first : first + self.batch_size]], self.generator)
            yield batch[self.rank :: self.world_size].to(self.device)


@dataclass
class Study:
    """What every run of a study shares."""

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
    return Study(
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


# ----------------------------------------------------------------------------
# Checkpoints


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
    in this process (``<path>.rank<r>`` under ``torchrun``)."""
    rank, world_size = process()
    return path if world_size == 1 else f"{path}.rank{rank}"


def fingerprint(key, seed, args, study):
    """What must match for a checkpoint to be resumed (not ``--epochs``: a run
    can be extended)."""
    return {
        "run": key,
        "seed": seed,
        "schedule": args.schedule,
        "lr": args.lr,
        "adam_eps": args.adam_eps,
        "batch_size": args.batch_size,
        "num_train": len(study.train),
        "train_pixel_sum": round(float(study.train.double().sum()), 3),
        "split": str(study.info.get("split")),
        "hidden_dims": list(study.config.hidden_dims),
        "latent_dim": study.config.latent_dim,
        "monitor_k": args.monitor_k,
        "monitor_size": args.monitor_size,
        "monitor_every": args.monitor_every,
        "eval_samples": args.eval_samples,
        "test_images": study.test_subset["size"],
        "device": study.device.type,
    }


def check_checkpoints(args, study):
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
        ours = fingerprint(key, seed, args, study)
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


def load_networks(path, config, device):
    """The encoder and decoder holding a checkpoint's params."""
    params = load_checkpoint(path)["params"]
    networks = {"encoder": Encoder(config), "decoder": Decoder(config)}
    for name, net in networks.items():
        prefix = name + "$$$"
        net.load_state_dict({k[len(prefix) :]: r["value"] for k, r in params.items() if k.startswith(prefix)})
        net.to(device).eval()
    return networks["encoder"], networks["decoder"]


# ----------------------------------------------------------------------------
# One run, one seed


def train_run(key, seed, args, study):
    """Trains run ``key`` with ``seed`` through :func:`~pyro_vi.training.fit`
    (resuming from its checkpoint with ``--resume``), evaluating after the
    last epoch; returns ``(state, fit_result)``, ``state`` holding the history
    and ``state["final"]``."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)  # the same initial weights in every process
    decoder = Decoder(study.config, study.mean_pixel).to(study.device)
    encoder = Encoder(study.config).to(study.device)
    model_fn = functools.partial(model, decoder=decoder)
    guide_fn = functools.partial(guide, encoder=encoder)
    batches = BinarizedBatches(study.train, args.batch_size, seed + 1, study.device)
    optim, step_callback = make_optim(args, len(batches))
    num_train = len(study.train)
    state = {}
    rank, world_size = process()
    if world_size > 1:
        pyro.set_rng_seed(seed + PROCESS_SEED_STRIDE * rank)  # each process its own particles

    def record_bounds():
        for split in ("heldout", "train"):
            with fixed_rng(MONITOR_SAMPLES_SEED):
                iw, l1 = bounds(model_fn, guide_fn, study.monitor[split], args.monitor_k)
            state[split + "_elbo"].append(l1.mean().item())
            state[split + "_iwelbo"].append(iw.mean().item())

    def after_epoch(epoch, losses):
        if epoch == 0:
            state.update({name: [] for name in HISTORY_KEYS}, monitor_seconds=0.0)
        if monitored(epoch, args):
            start = time.perf_counter()
            state["epoch"].append(epoch)
            state["lr"].append(args.lr * lr_factor(args.schedule, epoch - 1) if epoch else None)
            state["train_objective"].append(-float(losses.sum()) / num_train if epoch else None)
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
        if epoch == args.epochs and rank == 0:  # one process evaluates
            state["final"] = evaluate(encoder, model_fn, guide_fn, study, args)

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
        fingerprint=fingerprint(key, seed, args, study),
        checkpoint=path,
        checkpoint_every=args.checkpoint_every,
        resume=resume,
        overwrite=args.overwrite,
        progress=False,
    )
    if result.resumed_from:
        print(f"{key:<12} seed {seed}: resumed from step {result.resumed_from} of {path}", flush=True)
    return state, result


def evaluate(encoder, model_fn, guide_fn, study, args):
    """The test L_S and ELBO on ``study.test_eval`` and the active units on the
    whole test set."""
    start = time.perf_counter()
    with fixed_rng(EVAL_SAMPLES_SEED):
        log_px, elbo = bounds(model_fn, guide_fn, study.test_eval, args.eval_samples)
    units, variance = active_units(encoder, study.test)
    ll, ll_se = _mean_se(log_px)
    el, el_se = _mean_se(elbo)
    return {
        "test_log_likelihood": ll,
        "test_log_likelihood_se": ll_se,
        "test_elbo": el,
        "test_elbo_se": el_se,
        "test_images": len(log_px),
        "active_units": units,
        "latent_variances": variance.cpu().tolist(),
        "eval_seconds": time.perf_counter() - start,
        "log_px": log_px.cpu(),  # per test image, for paired comparisons (checkpoint only)
    }


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


# ----------------------------------------------------------------------------
# Summaries over seeds and comparisons


def _spread(values):
    values = [v for v in values if v is not None]
    if not values:
        return None
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "sd": float(array.std(ddof=1)) if len(array) > 1 else None,
        "n": len(array),
        "values": [float(v) for v in array],
    }


def summarize(seeds):
    return {
        name: _spread([r[name] for r in seeds.values()])
        for name in ("test_log_likelihood", "test_elbo", "active_units", "seconds_per_epoch")
    }


def _t_quantile(df):
    from scipy.stats import t

    return float(t.ppf(0.975, df))


def compare(log_px):
    """The papers' comparisons ``(better, worse)`` of the test L_S, paired by
    seed and test image. ``log_px``: run -> seed -> per-image tensor."""
    rows = []
    for a, b in COMPARISONS:
        if a not in log_px or b not in log_px:
            continue
        seeds = [s for s in log_px[a] if s in log_px[b]]
        if not seeds:
            continue
        per_seed = {}
        for s in seeds:
            diff = (log_px[a][s] - log_px[b][s]).double()
            mean, se = _mean_se(diff)
            per_seed[str(s)] = {"difference": mean, "paired_image_se": se}
        values = np.array([per_seed[str(s)]["difference"] for s in seeds])
        mean = float(values.mean())
        if len(values) > 1:
            sd = float(values.std(ddof=1))
            half = _t_quantile(len(values) - 1) * sd / math.sqrt(len(values))
            basis = f"95% t-interval over {len(values)} seeds (seed spread)"
        else:
            sd = None
            se = per_seed[str(seeds[0])]["paired_image_se"] or 0.0
            half = 1.96 * se
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
                "papers_order_holds": bool(mean - half > 0) if a != "renyi5" and a != "iwae1" else None,
                "per_seed": per_seed,
            }
        )
    return rows


# ----------------------------------------------------------------------------
# Figures (from results.json)


def _label(results, key):
    return results["runs"][key]["label"]


def _curves(run, name):
    """``(epochs, mean, min, max)`` over seeds of history ``name``, from epoch 1."""
    seeds = list(run["seeds"].values())
    epochs = np.asarray(seeds[0]["history"]["epoch"])
    length = min(len(s["history"][name]) for s in seeds)
    values = np.array([[np.nan if v is None else v for v in s["history"][name][:length]] for s in seeds])
    keep = epochs[:length] >= 1
    return epochs[:length][keep], values.mean(0)[keep], values.min(0)[keep], values.max(0)[keep]


def coincidences(results, names, fraction=0.01):
    """``{later run: (earlier run, max |difference|)}`` for runs whose mean
    curve lies within ``fraction`` of the panel's range of an earlier run's
    on at least one of the panels ``names`` (drawn on top of each other
    there); the difference is the largest over all panels."""
    keys = list(results["runs"])
    notes = {}
    for j, b in enumerate(keys):
        for a in keys[:j]:
            worst, close = 0.0, False
            for name in names:
                ea, ma, _, _ = _curves(results["runs"][a], name)
                eb, mb, _, _ = _curves(results["runs"][b], name)
                n = min(len(ma), len(mb))
                if n == 0 or not np.array_equal(ea[:n], eb[:n]):
                    continue
                span = max(np.nanmax(np.r_[ma, mb]) - np.nanmin(np.r_[ma, mb]), 1e-9)
                diff = float(np.nanmax(np.abs(ma[:n] - mb[:n])))
                worst = max(worst, diff)
                close |= diff <= fraction * span
            if close and b not in notes:
                notes[b] = (a, worst)
    return notes


def plot_bounds(results, path):
    """2 x 2 panels: L_1 and L_K per epoch on the held-out and the training
    batch; mean over seeds, min-max band; epoch 0 left out (in the title)."""
    k = results["evaluation"]["monitor_k"]
    panels = [
        ("heldout_elbo", "(a) held-out batch: ELBO L_1"),
        ("heldout_iwelbo", f"(b) held-out batch: IWELBO L_{k}"),
        ("train_elbo", "(c) training batch: ELBO L_1"),
        ("train_iwelbo", f"(d) training batch: IWELBO L_{k}"),
    ]
    notes = coincidences(results, [name for name, _ in panels])
    fig, axes = plt.subplots(2, 2, figsize=(12, 8.5))
    num_seeds = max(len(r["seeds"]) for r in results["runs"].values())
    longest = max(max(s["epochs"] for s in r["seeds"].values()) for r in results["runs"].values())
    # the y axis starts at the values of epoch `first`, so that the last epochs,
    # where the runs differ by a few nats, are not squashed by the first ones
    first = max(2, min(10, round(longest / 6)))
    for ax, (name, title) in zip(axes.flat, panels):
        untrained, lowest, highest = [], [], []
        for i, (key, run) in enumerate(results["runs"].items()):
            epochs, mean, low, high = _curves(run, name)
            style = dict(REGISTRY[key].style) if key in REGISTRY else {}
            every = 1 if len(epochs) < 8 else max(2, len(epochs) // 8)
            # markers of different runs on different epochs: curves on top of each other stay visible
            ax.plot(epochs, mean, lw=1.4, markevery=(i % every, every), label=key, **style)
            if len(run["seeds"]) > 1:
                ax.fill_between(epochs, low, high, color=style.get("color"), alpha=0.15, lw=0)
            untrained.extend(s["history"][name][0] for s in run["seeds"].values())
            shown = epochs >= min(first, epochs.max())
            lowest.append(np.nanmin(low[shown]))
            highest.append(np.nanmax(high))
        span = max(max(highest) - min(lowest), 1e-3)
        ax.set_ylim(min(lowest) - 0.03 * span, max(highest) + 0.05 * span)
        ax.set_title(f"{title}\n(epoch 0, untrained: {np.mean(untrained):.1f} nats, off the scale)", fontsize=10)
        ax.set_xlabel("epoch" if first <= 2 or longest <= 2 else f"epoch (axis from epoch {first}'s values)")
        ax.set_ylabel("bound per image (nats)")
        if longest > 60:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles, keys = axes[0, 0].get_legend_handles_labels()
    labels = []
    for key in keys:
        n = len(results["runs"][key]["seeds"])
        text = "{} [{} seed{}]".format(_label(results, key), n, "s" if n > 1 else "")
        if key in notes:
            other, diff = notes[key]
            text += f"\n  (on top of {_label(results, other)}: max |diff| {diff:.2f} nats)"
        labels.append(text)
    band = "line: mean over seeds; band: min-max" if num_seeds > 1 else "one seed"
    fig.legend(
        handles,
        labels,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.0, 0.95),
        title=band,
        title_fontsize=8,
        frameon=False,
    )
    fig.suptitle(_figure_title(results), fontsize=10)
    save_figure(fig, path, bbox_inches="tight")


def _figure_title(results):
    t, d = results["training"], results["data"]
    return "{} schedule: {} epochs, Adam lr {:g}, batch {}; {} ({:,} training images)".format(
        t["schedule"],
        t["epochs"],
        t["lr"],
        t["batch_size"],
        "standard MNIST split" if d["standard_split"] else "FALLBACK split of the test images",
        d["num_train_used"],
    )


def plot_final(results, path):
    """Test L_S, test ELBO, and L_S minus the VAE's of the same seed, per run:
    every seed (small markers) and the mean +- sd over seeds; Burda et al.'s
    test log-likelihoods where comparable."""
    s = results["evaluation"]["eval_samples"]
    subset = results["data"]["test_subset"]
    keys = list(results["runs"])
    panels = [
        ("test_log_likelihood", f"(a) test log p(x) ~ L_{s}"),
        ("test_elbo", "(b) test ELBO (mean log-weight, same samples)"),
    ]
    if "vae" in keys and len(keys) > 1:
        panels.append(("difference", f"(c) test L_{s} minus the VAE's, same seed\n(paired: same images)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.6 * len(panels), 4.8))
    reference_label = ["Burda et al. (3,280 epochs), same objective"] if results["data"]["standard_split"] else []
    vae = results["runs"].get("vae", {}).get("seeds", {})
    for ax, (name, title) in zip(np.atleast_1d(axes), panels):
        for i, key in enumerate(keys):
            run = results["runs"][key]
            style = REGISTRY[key].style if key in REGISTRY else {}
            if name == "difference":
                seeds = [seed for seed in run["seeds"] if seed in vae]
                values = [
                    run["seeds"][seed]["test_log_likelihood"] - vae[seed]["test_log_likelihood"] for seed in seeds
                ]
                errors = [0.0] * len(values)
            else:
                values = [r[name] for r in run["seeds"].values()]
                errors = [r[name + "_se"] or 0.0 for r in run["seeds"].values()]
            if not values:
                continue
            offsets = np.linspace(-0.15, 0.15, len(values)) if len(values) > 1 else [0.0]
            ax.errorbar(
                i + np.asarray(offsets),
                values,
                yerr=errors,
                fmt=style.get("marker", "o"),
                color=style.get("color"),
                ms=5,
                alpha=0.6,
                lw=0.8,
                capsize=0,
                label="one seed (+-1 SE over test images in a, b)" if i == 0 else None,
            )
            sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
            ax.errorbar(
                [i + 0.3],
                [float(np.mean(values))],
                yerr=[sd],
                fmt="_",
                color="k",
                ms=14,
                capsize=4,
                lw=1.5,
                label="mean +- sd over seeds" if i == 0 else None,
            )
            if (
                reference_label is not None
                and name == "test_log_likelihood"
                and key in BURDA_REFERENCE
                and results["data"]["standard_split"]
            ):
                ref = -BURDA_TEST_NLL[BURDA_REFERENCE[key][0]][BURDA_REFERENCE[key][1]]
                ax.plot(
                    [i - 0.3, i + 0.3],
                    [ref, ref],
                    color="k",
                    ls=":",
                    lw=1.5,
                    label=reference_label.pop() if reference_label else None,
                )
        if name == "difference":
            ax.axhline(0.0, color="C0", lw=0.8)
        ax.set_xticks(range(len(keys)))
        ax.set_xticklabels(
            ["{} [{}]".format(_label(results, k), len(results["runs"][k]["seeds"])).replace(" (", "\n(") for k in keys],
            fontsize=8,
            rotation=30,
            ha="right",
        )
        ax.set_xlim(-0.6, len(keys) - 0.4)
        ax.set_ylabel("nats per test image")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = [], []
    for ax in np.atleast_1d(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    where = (
        "all {:,} test images".format(subset["of"])
        if subset["all"]
        else "a fixed random {:,} of the {:,} test images".format(subset["size"], subset["of"])
    )
    fig.legend(
        handles,
        labels,
        fontsize=8,
        loc="upper left",
        bbox_to_anchor=(1.0, 0.9),
        frameon=False,
        title="[n]: seeds of the run",
        title_fontsize=8,
    )
    fig.suptitle(f"{_figure_title(results)}\ntest numbers on {where}", fontsize=10)
    save_figure(fig, path, bbox_inches="tight")


def _image_rows(rows, labels, title, path):
    from torchvision.utils import make_grid

    images = torch.cat(rows).reshape(-1, 1, 28, 28).clamp(0, 1).cpu()
    per_row = rows[0].shape[0]
    grid = make_grid(images, nrow=per_row, padding=2, pad_value=1.0)
    fig, ax = plt.subplots(figsize=(per_row * 0.6 + 2.5, len(rows) * 0.6 + 0.8))
    ax.imshow(grid.permute(1, 2, 0).numpy(), cmap="gray", vmin=0, vmax=1)
    ax.set_yticks([2 + 30 * i + 14 for i in range(len(rows))])
    ax.set_yticklabels(labels, fontsize=8)
    ax.set_xticks([])
    ax.set_title(title, fontsize=10)
    save_figure(fig, path, bbox_inches="tight")


def plot_images(results, networks, x, out):
    """Reconstructions of ``x`` and decoder means of fixed prior draws, one
    row per run (``networks``: run -> (encoder, decoder))."""
    seed = results["figures_seed"]
    recon, recon_labels = [x], ["test data (binarized)"]
    samples, sample_labels = [], []
    with fixed_rng(FIGURE_SEED):
        z = torch.randn(x.shape[0], results["config"]["latent_dim"], device=x.device)
    with torch.no_grad():
        for key, (encoder, decoder) in networks.items():
            recon.append(torch.sigmoid(decoder(encoder(x)[0])))
            samples.append(torch.sigmoid(decoder(z)))
            recon_labels.append(_label(results, key))
            sample_labels.append(_label(results, key))
    after = "seed {}, after {} epochs".format(seed, results["training"]["epochs"])
    _image_rows(
        recon,
        recon_labels,
        f"Reconstructions: Bernoulli means of p(x | z = E_q[z | x]) ({after})",
        os.path.join(out, "reconstructions.png"),
    )
    _image_rows(
        samples,
        sample_labels,
        f"Samples: Bernoulli means of p(x | z), the same z ~ N(0, I) per column ({after})",
        os.path.join(out, "samples.png"),
    )


def draw_figures(results, out, images=None, device="cpu"):
    """Every figure from ``results``; the reconstructions (of ``images``, binarized
    test digits) and samples from the final weights of the first seed, read
    from its checkpoints when they are there."""
    plot_bounds(results, os.path.join(out, "elbo_iwelbo.png"))
    plot_final(results, os.path.join(out, "test_loglik.png"))
    written = ["elbo_iwelbo.png", "test_loglik.png"]
    if images is None:
        return written
    seed = results["figures_seed"]
    config = VAEConfig(hidden_dims=tuple(results["config"]["hidden_dims"]), latent_dim=results["config"]["latent_dim"])
    networks, missing = {}, []
    for key in results["runs"]:
        path = process_file(checkpoint_path(out, key, seed))
        if os.path.exists(path):
            networks[key] = load_networks(path, config, device)
        else:
            missing.append(path)
    if missing:
        print("no reconstructions/samples: missing checkpoint(s) {}".format(", ".join(missing)))
        return written
    plot_images(results, networks, images.to(device), out)
    return written + ["reconstructions.png", "samples.png"]


def figure_images(test):
    """The test digits shown in ``reconstructions.png``."""
    return test[:10]


# ----------------------------------------------------------------------------
# Table and results.json


def format_table(results):
    s = results["evaluation"]["eval_samples"]
    header = "{:<34} {:>5} {:>17} {:>7} {:>17} {:>12} {:>9}".format(
        "run", "seeds", f"test L_{s} (sd)", "SE", "test ELBO (sd)", "active", "s/epoch"
    )
    lines = [header, "-" * len(header)]

    def pm(summary, digits=2):
        if summary is None:
            return "-"
        sd = "" if summary["sd"] is None else " +- {:.{}f}".format(summary["sd"], digits)
        return "{:.{}f}{}".format(summary["mean"], digits, sd)

    for run in results["runs"].values():
        m = run["summary"]
        se = np.mean([r["test_log_likelihood_se"] or 0.0 for r in run["seeds"].values()])
        lines.append(
            "{:<34} {:>5} {:>17} {:>7.2f} {:>17} {:>12} {:>9}".format(
                run["label"],
                len(run["seeds"]),
                pm(m["test_log_likelihood"]),
                se,
                pm(m["test_elbo"]),
                pm(m["active_units"], 1),
                pm(m["seconds_per_epoch"], 1),
            )
        )
    for row in results["comparisons"]:
        lines.append(
            "{:>12} - {:<12} {:+7.2f} nats +- {:.2f} ({}): {}".format(
                row["better"], row["worse"], row["mean_difference"], row["half_width_95"], row["basis"], row["verdict"]
            )
        )
    return "\n".join(lines)


def _machine():
    """``"<cpu>, <n> logical CPUs, <platform>"``: the shared run record's
    machine (:func:`experiments._results.machine`) as one line."""
    machine = _results.machine()
    return f"{machine['cpu']}, {machine['cpu_cores']} logical CPUs, {platform.platform(terse=True)}"


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(output, path):
    tmp = path + f".tmp{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(_json_safe(output), f, indent=1)
    os.replace(tmp, path)


def results_document(args, study, records, log_px, started, status):
    device = study.device
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
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
    subset = dict(study.test_subset)
    return {
        "schema": SCHEMA,
        "status": status,
        "command": args.command,
        "environment": {
            "threads": torch.get_num_threads(),
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "device": device.type,
            "gpu": gpu,
            "machine": _machine(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "pyro": pyro.__version__,
        },
        "data": dict(study.info, test_subset=subset),
        "config": {
            "data_dim": study.config.data_dim,
            "hidden_dims": list(study.config.hidden_dims),
            "latent_dim": study.config.latent_dim,
        },
        "training": {
            "schedule": args.schedule,
            "epochs": args.epochs,
            "lr": args.lr,
            "adam_eps": args.adam_eps,
            "batch_size": args.batch_size,
            "lr_schedule": "constant"
            if args.schedule == "course"
            else "lr * 10^(-i/7) for the 3^i epochs of stage i = 0..7",
            "seeds": list(args.seeds),
            "runs": list(args.runs),
            "one_seed_runs": list(args.one_seed_runs),
        },
        "evaluation": {
            "eval_samples": args.eval_samples,
            "monitor_k": args.monitor_k,
            "monitor_size": args.monitor_size,
            "monitor_every": args.monitor_every,
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
        "started": started,
        "wall_seconds_this_call": time.time() - args.start_time,
        "compute_seconds": sum(r["train_seconds"] + r["monitor_seconds"] + r["eval_seconds"] for r in records.values()),
    }


# ----------------------------------------------------------------------------


def plot_only(args):
    """Redraws the figures from ``OUT/results.json`` (and the checkpoints)."""
    path = os.path.join(args.out, "results.json")
    try:
        with open(path) as f:
            results = json.load(f)
    except (OSError, ValueError) as error:
        raise ValueError(f"--plot-only needs {path} from an earlier run: {error}") from error
    if results.get("schema") != SCHEMA:
        raise ValueError("{} is not a {} file (schema {!r})".format(path, SCHEMA, results.get("schema")))
    try:
        data = load_mnist(args.data_dir or results["data"].get("data_dir"), download=not args.no_download)
        test = binarize(data.test, torch.Generator().manual_seed(TEST_BINARIZATION_SEED))
        images = figure_images(test)
    except MnistNotFoundError as error:
        print(f"no reconstructions/samples: {error}")
        images = None
    written = draw_figures(results, args.out, images, args.device)
    print("wrote {} to {}".format(", ".join(written), args.out))
    return results


def main(args):
    """Runs the study of ``args`` (from :func:`parse_args`); returns the results."""
    if args.plot_only:
        return plot_only(args)
    rank = start_processes(args.device)
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    study = prepare(args)
    print(
        "MNIST from {}\n  {}\n  training on {:,} images (dynamic binarization per batch); test L_{} on {}".format(
            study.info["source"],
            study.info["split"],
            len(study.train),
            args.eval_samples,
            study.test_subset["how"] + " of the {:,} test images".format(study.test_subset["of"]),
        ),
        flush=True,
    )
    if not study.info["standard_split"]:
        print("NOTE: the FALLBACK split ran, not the standard 60,000/10,000 one", flush=True)
    print(
        "{} schedule: {} epochs, Adam(lr={:g}, eps={:g}), batch {}; runs {}; seeds {}; {} torch thread(s), "
        "device {}".format(
            args.schedule,
            args.epochs,
            args.lr,
            args.adam_eps,
            args.batch_size,
            ", ".join(args.runs),
            " ".join(map(str, args.seeds)),
            torch.get_num_threads(),
            args.device,
        ),
        flush=True,
    )
    os.makedirs(os.path.join(args.out, "checkpoints"), exist_ok=True)
    if args.resume:
        check_checkpoints(args, study)
    steps_per_epoch = math.ceil(len(study.train) / args.batch_size)
    records, log_px = {}, {}
    json_path = os.path.join(args.out, "results.json")
    plan = planned(args)
    for seed, key in plan:
        state, result = train_run(key, seed, args, study)
        if rank > 0:
            continue  # the first process evaluates and writes
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
                study.config.latent_dim,
                r["seconds_per_epoch"],
                r["eval_seconds"],
            ),
            flush=True,
        )
        status = "complete" if len(records) == len(plan) else f"partial: {len(records)} of {len(plan)} runs x seeds"
        results = results_document(args, study, records, log_px, started, status)
        write_json(results, json_path)
    if rank > 0:
        return None
    written = draw_figures(results, args.out, figure_images(study.test), args.device)
    print("\n" + format_table(results))
    if not study.info["standard_split"]:
        print("NOTE: " + study.info["split"])
    print("wrote results.json, {} to {} ({:.0f} s)".format(", ".join(written), args.out, time.time() - args.start_time))
    return results


# ----------------------------------------------------------------------------
# The command line


def _run_names(text):
    names = [n for n in text.replace(",", " ").split() if n]
    unknown = [n for n in names if n not in REGISTRY]
    if unknown or not names:
        raise ValueError(
            "unknown run(s) {}; choose from {}".format(", ".join(unknown) or repr(text), ", ".join(REGISTRY))
        )
    return names


def _widths(text):
    try:
        values = [int(v, 10) for v in text.replace(",", " ").split()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise ValueError(f"value must be positive integers such as 200,200, got {text!r}")
    return values


def _test_images(text):
    if text.strip().lower() == "all":
        return None
    return _cli.positive_int(text)


def parse_args(argv=None):
    parser = _cli.parser(__doc__, out="results/vae_mnist", device=True, multi_seed=True, default_seeds=DEFAULT_SEEDS)
    parser.add_argument(
        "--data-dir",
        default=None,
        help="torchvision MNIST root or folder with the IDX files (default $PYRO_VI_DATA_DIR "
        f"or ~/.cache/pyro_vi/data: {default_data_dir()})",
    )
    parser.add_argument("--no-download", action="store_true", help="never download MNIST (also: PYRO_VI_NO_DOWNLOAD=1)")
    parser.add_argument(
        "--runs",
        type=_cli._type("runs", _run_names),
        nargs="+",
        default=[list(DEFAULT_RUNS)],
        help="runs, comma- or space-separated, from: {} (default: all but iwae1, which repeats vae exactly)".format(
            ", ".join(REGISTRY)
        ),
    )
    parser.add_argument(
        "--one-seed-runs",
        type=_cli._type("runs", _run_names),
        nargs="+",
        default=[],
        help="runs trained with the first seed only, to save time (e.g. iwae50,iwae50_dreg, "
        "the most expensive on a CPU)",
    )
    parser.add_argument(
        "--schedule",
        choices=("course", "burda"),
        default="course",
        help="course: 20 epochs, lr 1e-3, batch 100; burda: 3^i epochs at lr 1e-3 * 10^(-i/7), "
        "i = 0..7 (3,280 epochs), batch 20, Adam eps 1e-4",
    )
    parser.add_argument(
        "--epochs",
        type=_cli.positive_int,
        default=None,
        help="epochs (default: 20, or 3,280 with --schedule burda, which runs its first EPOCHS)",
    )
    parser.add_argument(
        "--lr", type=_cli.positive_real, default=1e-3, help="Adam learning rate (burda: of its first stage)"
    )
    parser.add_argument(
        "--adam-eps",
        type=_cli.positive_real,
        default=None,
        help="Adam's eps (default 1e-8, or 1e-4 with --schedule burda)",
    )
    parser.add_argument(
        "--batch-size",
        type=_cli.positive_int,
        default=None,
        help="images per step (default 100, or 20 with --schedule burda)",
    )
    parser.add_argument(
        "--eval-samples",
        type=_cli.positive_int,
        default=5000,
        help="importance samples S of the test log-likelihood L_S",
    )
    parser.add_argument(
        "--test-images",
        type=_cli._type("test-images", _test_images),
        default=1000,
        help=f"test images of L_S: N for a fixed random N of the test set (seeded {TEST_SUBSET_SEED}), or "
        "'all' (default 1000)",
    )
    parser.add_argument(
        "--full-test",
        dest="test_images",
        action="store_const",
        const=None,
        help="L_S on the whole test set (= --test-images all)",
    )
    parser.add_argument("--monitor-k", type=_cli.positive_int, default=50, help="K of the per-epoch IWELBO L_K")
    parser.add_argument(
        "--monitor-size",
        type=_cli.positive_int,
        default=500,
        help="images in the fixed held-out and training batches of the per-epoch curves",
    )
    parser.add_argument(
        "--monitor-every",
        type=_cli.positive_int,
        default=None,
        help="record the curves every N epochs, and at the learning-rate changes and the end "
        "(default 1, or 40 with --schedule burda)",
    )
    parser.add_argument(
        "--max-train", type=_cli.positive_int, default=None, help="use only the first N training images"
    )
    parser.add_argument(
        "--hidden-dims",
        type=_cli._type("hidden-dims", _widths),
        default=[200, 200],
        help="encoder hidden widths, e.g. 200,200 (decoder mirrored)",
    )
    parser.add_argument("--latent-dim", type=_cli.positive_int, default=50)
    parser.add_argument(
        "--checkpoint-every",
        type=_cli.positive_int,
        default=200,
        help="steps between checkpoints (also at every epoch's end)",
    )
    restart = parser.add_mutually_exclusive_group()
    restart.add_argument(
        "--resume",
        action="store_true",
        help="continue every run from its checkpoint in OUT/checkpoints (runs without one start fresh)",
    )
    restart.add_argument(
        "--overwrite", action="store_true", help="start over, replacing the checkpoints in OUT/checkpoints"
    )
    parser.add_argument(
        "--plot-only",
        action="store_true",
        help="redraw the figures from OUT/results.json (and the checkpoints), no training",
    )
    args = _cli.parse(parser, argv, check=_check)
    args.start_time = time.time()
    prefix = "python experiments/vae_mnist.py" if not __package__ else "python -m experiments.vae_mnist"
    args.command = " ".join([prefix] + [shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv)])
    return args


def _check(args):
    """Cross-flag checks and the study's defaults, before any work."""
    args.runs = [name for names in args.runs for name in names]
    if len(set(args.runs)) != len(args.runs):
        raise ValueError("argument --runs: repeats a run, got {}; pass each once".format(", ".join(args.runs)))
    args.one_seed_runs = [name for names in args.one_seed_runs for name in names]
    stray = [name for name in args.one_seed_runs if name not in args.runs]
    if stray:
        raise ValueError(
            "argument --one-seed-runs: {} not among --runs {}".format(", ".join(stray), ", ".join(args.runs))
        )
    burda = args.schedule == "burda"
    if args.epochs is None:
        args.epochs = BURDA_EPOCHS if burda else 20
    if burda and args.epochs > BURDA_EPOCHS:
        raise ValueError(f"argument --epochs: the burda schedule has {BURDA_EPOCHS} epochs, got {args.epochs}")
    if args.batch_size is None:
        args.batch_size = 20 if burda else 100
    if args.adam_eps is None:
        args.adam_eps = 1e-4 if burda else 1e-8
    if args.monitor_every is None:
        args.monitor_every = 40 if burda else 1
    if args.data_dir is not None and args.no_download and not os.path.isdir(args.data_dir):
        raise ValueError(
            f"argument --data-dir: no folder {args.data_dir!r} (and --no-download); pass the folder with the "
            "MNIST IDX files"
        )
    if args.plot_only:
        if args.resume or args.overwrite:
            raise ValueError("argument --plot-only: trains nothing; drop --resume/--overwrite")
        return
    existing = [
        process_file(checkpoint_path(args.out, k, s))
        for s, k in planned(args)
        if os.path.exists(process_file(checkpoint_path(args.out, k, s)))
    ]
    if existing and not (args.resume or args.overwrite):
        raise ValueError(
            "{} holds checkpoints of this study ({}); pass --resume to continue them or "
            "--overwrite to start over".format(
                os.path.join(args.out, "checkpoints"), ", ".join(map(os.path.basename, existing))
            )
        )
    if args.resume and not existing:
        raise ValueError(
            "argument --resume: no checkpoint of runs {} and seeds {} in {}; run without --resume to start".format(
                ", ".join(args.runs), " ".join(map(str, args.seeds)), os.path.join(args.out, "checkpoints")
            )
        )


if __name__ == "__main__":
    try:
        main(parse_args())
    except (MnistNotFoundError, ValueError) as error:
        sys.exit(f"vae_mnist: error: {error}")
