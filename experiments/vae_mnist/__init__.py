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

**Evaluation.** At epoch 0 (untrained) and every ``--monitor-every``-th
epoch, the ELBO L_1 and the IWELBO L_K (K = ``--monitor-k``) on fixed held-out
and training batches, with the same importance samples for every run, seed
and epoch. After the last epoch: log p(x) ~ L_S (S = ``--eval-samples``,
log-sum-exp over chunks, bounded memory) and the test ELBO (the mean
log-weight of the same samples), each with its standard error over the
images, on ``--test-images`` images (default 1000, for the CPU budget; a fixed
random subset, ``torch.randperm`` seeded with ``TEST_SUBSET_SEED``, or
``all``), and Burda et al.'s active units (Cov_x(E_q[z_u | x]) > 1e-2, over the
whole test set).

**Seeds.** ``--seeds`` (default 0 1 2): every run for every seed, seed-major,
except the runs of ``--one-seed-runs`` (first seed only: on a CPU the k=50 runs
cost ten times the others). ``results.json`` says for the papers' comparisons
(IWAE k=50 > k=5 > VAE, STL >= VAE, DReG >= IWAE k=50), paired by seed and test
image, whether the difference is resolved or within the seed spread.

Writes to ``--out``: ``results.json`` (per run and seed the final numbers and
the per-epoch history, summaries over seeds, comparisons, the run record;
rewritten after every run and seed, so a killed study keeps what it
finished), ``elbo_iwelbo.png`` (L_1 and L_K per epoch), ``test_loglik.png``
(test L_S and ELBO per run, with Burda et al.'s numbers where comparable),
``reconstructions.png`` and ``samples.png`` (first seed), and
``checkpoints/<run>-seed<seed>.pt`` (:func:`~pyro_vi.training.fit`'s, plain
data). ``--resume`` continues a killed study to the numbers of an
uninterrupted one and refuses, before any training, a checkpoint of another
configuration, naming the differences; without it existing checkpoints are
refused unless ``--overwrite``. ``--plot-only`` redraws the figures from
``results.json`` (and the checkpoints). Seconds per epoch are fit's step
times (loss, gradients, optimizer step), with ``--threads`` torch threads.

**Processes.** Under ``torchrun --nproc_per_node=N -m experiments.vae_mnist
...`` the N processes (gloo on the CPU, nccl with ``--device cuda``) start
from the same weights, each takes its share of every batch and draws its own
particles, and :func:`pyro_vi.fit` averages their gradients; the training
objective is that of the whole batch, the evaluations share out the test
images (with the importance samples one process would draw), and the run
record holds the torchrun command and the process count.

The package: :mod:`~experiments.vae_mnist.train` (runs, schedules, data,
checkpoints, the loop), :mod:`~experiments.vae_mnist.evaluate` (bounds,
active units), :mod:`~experiments.vae_mnist.compare` (summaries, the papers'
comparisons, the README block) and :mod:`~experiments.vae_mnist.figures`.

The CPU study of the README (about 3.5 hours on one busy core; the k=50 runs
with one seed)::

    python -m experiments.vae_mnist --data-dir ../shared/data/mnist --no-download \
        --out results/vae_mnist --threads 1 --one-seed-runs iwae50,iwae50_dreg

and, on a GPU, Burda et al.'s schedule (hours per run)::

    python -m experiments.vae_mnist --data-dir ../shared/data/mnist --no-download \
        --out results/vae_mnist_burda --schedule burda --device cuda --test-images all
"""

import os

from experiments import _cli
from experiments._runs import existing_checkpoints, mnist_arguments, plotting, restart_arguments
from experiments._study import Study
from experiments.vae_mnist.compare import readme_block
from experiments.vae_mnist.figures import draw
from experiments.vae_mnist.train import (
    BURDA_EPOCHS,
    DEFAULT_RUNS,
    RUNS,
    checkpoint_path,
    planned,
    process_file,
    run,
)

#: The flags whose default depends on ``--schedule``: name -> (course, burda).
SCHEDULE_DEFAULTS = {
    "epochs": (20, BURDA_EPOCHS),
    "batch_size": (100, 20),
    "adam_eps": (1e-8, 1e-4),
    "monitor_every": (1, 40),
}


def _run_names(text):
    names = [n for n in text.replace(",", " ").split() if n]
    unknown = [n for n in names if n not in RUNS]
    if unknown or not names:
        raise ValueError(f"unknown run(s) {', '.join(unknown) or repr(text)}; choose from {', '.join(RUNS)}")
    return names


def _widths(text):
    values = [int(v) for v in text.replace(",", " ").split() if v.isdigit()]
    if not values or min(values) < 1 or len(values) != len(text.replace(",", " ").split()):
        raise ValueError(f"value must be positive integers such as 200,200, got {text!r}")
    return values


def _test_images(text):
    return None if text.strip().lower() == "all" else _cli.positive_int(text)


def parser():
    parser = _cli.parser(__doc__, out="results/vae_mnist", device=True, seeds=(0, 1, 2))
    flag = parser.add_argument
    mnist_arguments(parser)
    runs = _cli._type("runs", _run_names)
    flag("--runs", type=runs, nargs="+", default=[list(DEFAULT_RUNS)], help=f"of {', '.join(RUNS)}; not iwae1")
    flag("--one-seed-runs", type=runs, nargs="+", default=[], help="runs trained with the first seed only")
    flag("--schedule", choices=("course", "burda"), default="course", help="course: 20 epochs; burda: 3,280")
    flag("--epochs", type=_cli.positive_int, help="default 20, or 3,280 with burda (which runs its first EPOCHS)")
    flag("--lr", type=_cli.positive_real, default=1e-3, help="Adam's learning rate (burda: of its first stage)")
    flag("--adam-eps", type=_cli.positive_real, help="Adam's eps (default 1e-8, or 1e-4 with burda)")
    flag("--batch-size", type=_cli.positive_int, help="images per step (default 100, or 20 with burda)")
    flag("--eval-samples", type=_cli.positive_int, default=5000, help="importance samples S of the test L_S")
    test_images = _cli._type("test-images", _test_images)
    flag("--test-images", type=test_images, default=1000, help="a fixed random N test images for L_S, or 'all'")
    flag("--full-test", dest="test_images", action="store_const", const=None, help="= --test-images all")
    flag("--monitor-k", type=_cli.positive_int, default=50, help="K of the per-epoch IWELBO L_K")
    flag("--monitor-size", type=_cli.positive_int, default=500, help="images of the per-epoch curves' batches")
    flag("--monitor-every", type=_cli.positive_int, help="epochs between the curves' points (1, burda: 40)")
    flag("--max-train", type=_cli.positive_int, help="train on the first N training images only")
    flag("--hidden-dims", type=_cli._type("hidden-dims", _widths), default=[200, 200], help="e.g. 200,200")
    flag("--latent-dim", type=_cli.positive_int, default=50)
    flag("--checkpoint-every", type=_cli.positive_int, default=200, help="steps between checkpoints")
    restart_arguments(parser, "continue every run from OUT/checkpoints", "start over, replacing OUT/checkpoints")
    return parser


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
    for name, (course_default, burda_default) in SCHEDULE_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, burda_default if burda else course_default)
    if burda and args.epochs > BURDA_EPOCHS:
        raise ValueError(f"argument --epochs: the burda schedule has {BURDA_EPOCHS} epochs, got {args.epochs}")
    if args.data_dir is not None and args.no_download and not os.path.isdir(args.data_dir):
        raise ValueError(
            f"argument --data-dir: no folder {args.data_dir!r} (and --no-download); pass the folder with the "
            "MNIST IDX files"
        )
    if plotting(args):
        return
    existing = existing_checkpoints(args, [process_file(checkpoint_path(args.out, k, s)) for s, k in planned(args)])
    if args.resume and not existing:
        raise ValueError(
            "argument --resume: no checkpoint of runs {} and seeds {} in {}; run without --resume to start".format(
                ", ".join(args.runs), " ".join(map(str, args.seeds)), os.path.join(args.out, "checkpoints")
            )
        )


STUDY = Study("vae_mnist", parser, run, draw, readme_block, check=_check)
