"""Lightning trains a PyroModule model with a pyro_vi estimator.

Robust regression: ``y_n ~ Normal(b + c x_n, sigma)`` for most points and
``Normal(b + c x_n, 5)`` for the outliers, ``o_n ~ Bernoulli(0.1)``. The
indicators ``o_n`` are discrete, so the ELBO's gradient needs a score
function; ``RaoBlackwellELBO(pathwise=True)`` gives ``c`` and ``b`` their
pathwise gradient and each ``o_n`` a score weighted by its Markov blanket
(its own ``y_n``), with control variates. The guide is ``q(c, b)
prod_n q(o_n | c, b)``, with the log-odds of an outlier linear in the squared
residual (the form of the exact conditional posterior).

``RaoBlackwellELBO(...)(model, guide)`` is Pyro's ``ELBOModule``: a
``torch.nn.Module`` whose ``forward(x, y)`` is the differentiable loss (the
negative ELBO estimate) and whose parameters are the model's and the guide's.
With ``pyro.settings.set(module_local_params=True)`` they live in the modules,
not in Pyro's global param store, so Lightning's optimizer, checkpoints and
``state_dict`` see them as they see any torch module's. Lightning logs the
ELBO every step and, from a callback, the gradient signal-to-noise ratio of
every parameter (``pyro_vi.gradient_statistics``); ``ModelCheckpoint`` saves
the modules, Adam's state and the RNG state after every epoch, so that a
resumed run continues exactly as an uninterrupted one.

Run from the repository root (on the CPU; ``--resume`` continues the run in
``--out`` to ``--epochs``)::

    python docs/examples/lightning_example.py --out lightning_run --epochs 10
    python docs/examples/lightning_example.py --out lightning_run --epochs 30 --resume
"""

import argparse
import math
import os
import warnings

import lightning.pytorch as pl
import pyro
import pyro.distributions as dist
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from pyro.distributions import constraints
from pyro.nn import PyroModule, PyroParam, PyroSample
from torch import nn

from pyro_vi import RaoBlackwellELBO, gradient_statistics

TRUTH = {"coeff": 1.5, "bias": -0.5, "noise": 0.3}
OUTLIER_PROB, OUTLIER_SCALE = 0.1, 5.0


def make_data(num_data, seed=0):
    """``(x, y, outlier)`` drawn from the model at ``TRUTH``."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(num_data, generator=generator)
    outlier = torch.rand(num_data, generator=generator) < OUTLIER_PROB
    scale = torch.where(outlier, OUTLIER_SCALE, TRUTH["noise"])
    y = TRUTH["bias"] + TRUTH["coeff"] * x + scale * torch.randn(num_data, generator=generator)
    return x, y, outlier


class RobustRegression(PyroModule):
    """The model; ``sigma`` (``noise``) is a parameter, fitted by maximizing the ELBO."""

    def __init__(self, num_data):
        super().__init__()
        self.num_data = num_data
        self.coeff = PyroSample(dist.Normal(0.0, 2.0))
        self.bias = PyroSample(dist.Normal(0.0, 2.0))
        self.noise = PyroParam(torch.tensor(1.0), constraint=constraints.positive)

    def forward(self, x, y):
        mean = self.bias + self.coeff * x
        # a minibatch of the num_data points: the plate scales its terms by num_data / len(x)
        with pyro.plate("data", self.num_data, subsample_size=len(x)):
            outlier = pyro.sample("outlier", dist.Bernoulli(OUTLIER_PROB))
            scale = self.noise + (OUTLIER_SCALE - self.noise) * outlier
            pyro.sample("y", dist.Normal(mean, scale), obs=y)


class Guide(PyroModule):
    """``q(c, b)`` mean-field Normal; ``q(o_n | c, b)`` with log-odds
    ``w r_n^2 + w_0``, ``r_n = y_n - b - c x_n`` (an ``nn.Linear`` on ``r_n^2``)."""

    def __init__(self, num_data):
        super().__init__()
        self.num_data = num_data
        self.loc = PyroParam(torch.zeros(2))
        self.scale = PyroParam(torch.full((2,), 0.1), constraint=constraints.positive)
        self.classifier = nn.Linear(1, 1)
        nn.init.zeros_(self.classifier.weight)
        nn.init.constant_(self.classifier.bias, math.log(OUTLIER_PROB / (1 - OUTLIER_PROB)))

    def forward(self, x, y):
        coeff = pyro.sample("coeff", dist.Normal(self.loc[0], self.scale[0]))
        bias = pyro.sample("bias", dist.Normal(self.loc[1], self.scale[1]))
        with pyro.plate("data", self.num_data, subsample_size=len(x)):
            residual = y - bias - coeff * x
            logits = self.classifier(residual.pow(2).unsqueeze(-1)).squeeze(-1)
            pyro.sample("outlier", dist.Bernoulli(logits=logits))

    def outlier_probs(self, x, y):
        """``q(o_n = 1 | c, b)`` at the guide's means of ``c`` and ``b``."""
        with torch.no_grad():
            residual = y - self.loc[1] - self.loc[0] * x
            return torch.sigmoid(self.classifier(residual.pow(2).unsqueeze(-1)).squeeze(-1))


class VariationalInference(pl.LightningModule):
    """Trains the model and guide of ``loss_fn`` (an ``ELBOModule``) with Adam."""

    def __init__(self, loss_fn, lr):
        super().__init__()
        self.loss_fn = loss_fn  # a submodule: model and guide parameters in state_dict and parameters()
        self.lr = lr

    def training_step(self, batch, batch_idx):
        loss = self.loss_fn(*batch)
        self.log("elbo", -loss.detach(), batch_size=len(batch[0]))
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.loss_fn.parameters(), lr=self.lr)

    # Lightning checkpoints modules, optimizer and loops; the particles and
    # the data order come from torch's RNG, saved here to resume exactly.
    def on_save_checkpoint(self, checkpoint):
        checkpoint["torch_rng_state"] = torch.get_rng_state()

    def on_load_checkpoint(self, checkpoint):
        torch.set_rng_state(checkpoint["torch_rng_state"])


class GradientSNR(pl.Callback):
    """Every ``every_n_steps`` steps, before the step, on its batch: the
    gradient SNR ``|mean| / sd`` of every parameter over ``num_draws`` draws
    of the training estimator, logged as ``snr/NAME`` (the median over the
    parameter's elements). It runs on a fork of the RNG, so the training
    draws the same particles with or without it."""

    def __init__(self, every_n_steps=50, num_draws=20):
        self.every_n_steps, self.num_draws = every_n_steps, num_draws

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step % self.every_n_steps:
            return
        loss_fn = pl_module.loss_fn
        with torch.random.fork_rng(devices=[]):
            stats = gradient_statistics(loss_fn.elbo, loss_fn.model, loss_fn.guide, *batch, num_draws=self.num_draws)
        metrics = {"snr/" + name.replace("$$$", "."): stat.snr.nanmedian().item() for name, stat in stats.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)


def last_checkpoint(out):
    return os.path.join(out, "checkpoints", "last.ckpt")


def train(
    out,
    epochs,
    resume=False,
    num_data=2000,
    batch_size=100,
    lr=0.02,
    num_particles=8,
    snr_every=50,
    snr_draws=20,
    seed=0,
):
    """Fits ``epochs`` epochs (from the last checkpoint in ``out`` with
    ``resume``), logging to ``out/logs`` and checkpointing to
    ``out/checkpoints``; returns the ``VariationalInference`` module."""
    last = last_checkpoint(out)
    if resume and not os.path.isfile(last):
        raise ValueError(f"resume=True: no checkpoint {last}; train without resume first")
    x, y, _ = make_data(num_data, seed)
    with pyro.settings.context(module_local_params=True):
        pyro.set_rng_seed(seed)
        model, guide = RobustRegression(num_data), Guide(num_data)
        elbo = RaoBlackwellELBO(
            num_particles=num_particles, pathwise=True, vectorize_particles=True, max_plate_nesting=1
        )
        module = VariationalInference(elbo(model, guide), lr)
        loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size, shuffle=True)
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=epochs,
            logger=CSVLogger(out, name="logs"),
            callbacks=[ModelCheckpoint(os.path.join(out, "checkpoints"), save_last=True)]
            + ([GradientSNR(snr_every, snr_draws)] if snr_every else []),
            log_every_n_steps=1,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        with warnings.catch_warnings():
            # resuming writes to the folder of the run it continues, on purpose
            warnings.filterwarnings("ignore", "Checkpoint directory .* exists and is not empty")
            trainer.fit(module, loader, ckpt_path=last if resume else None)
    return module


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="lightning_run", help="logs and checkpoints go here")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoints/last.ckpt")
    parser.add_argument("--num-data", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--snr-every", type=int, default=50, help="steps between SNR logs; 0: none")
    args = parser.parse_args(argv)
    for name in ("epochs", "num_data", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.snr_every < 0:
        parser.error(f"--snr-every must be >= 0 (0: no SNR), got {args.snr_every}")
    if args.resume and not os.path.isfile(last_checkpoint(args.out)):
        parser.error(f"--resume: no checkpoint {last_checkpoint(args.out)}; run without --resume first")
    module = train(args.out, args.epochs, args.resume, args.num_data, args.batch_size, snr_every=args.snr_every)
    guide, model = module.loss_fn.guide, module.loss_fn.model
    x, y, outlier = make_data(args.num_data)
    flagged = guide.outlier_probs(x, y) > 0.5
    print(
        f"coeff {guide.loc[0].item():.3f} (truth {TRUTH['coeff']}), bias {guide.loc[1].item():.3f} "
        f"(truth {TRUTH['bias']}), noise {model.noise.item():.3f} (truth {TRUTH['noise']})"
    )
    print(
        f"outliers flagged: {int((flagged & outlier).sum())} of {int(outlier.sum())}, "
        f"{int((flagged & ~outlier).sum())} false alarms of {int((~outlier).sum())}"
    )


if __name__ == "__main__":
    main()
