"""The bounds of the VAE study, from importance weights: L_S and the ELBO
per image, chunked to bounded memory and, under ``torchrun``, shared out
over the processes by batches of images (with the same importance samples
as one process draws), and Burda et al.'s active units."""

import math
import time

import pyro
import pyro.poutine as poutine
import torch
import torch.distributed

from experiments._runs import fixed_rng
from pyro_vi.training.distributed import process

ACTIVE_UNIT_THRESHOLD = 1e-2
# Seeds of the fixed binarizations, importance samples and test subset used for
# evaluation: the same for every run and every --seed.
TEST_BINARIZATION_SEED = 20151
MONITOR_SAMPLES_SEED = 20152
EVAL_SAMPLES_SEED = 20153
FIGURE_SEED = 20154
TEST_SUBSET_SEED = 20155
# Elements (samples x data points x pixels) per chunk of the test evaluation.
EVAL_CHUNK_ELEMENTS = 1 << 23


def sample_guide(guide_fn, x, num_samples):
    """The guide's trace for ``num_samples`` draws per data point, in a plate
    at ``dim=-2``."""
    with torch.no_grad(), pyro.plate("importance_samples", num_samples, dim=-2):
        return poutine.trace(guide_fn).get_trace(x)


def log_weights(model_fn, guide_fn, x, num_samples):
    """``log p(x_n, z_sn) - log q(z_sn | x_n)`` for ``num_samples`` draws per data
    point, shape ``(num_samples, B)``: guide and model run once, vectorized over
    the samples in a plate at ``dim=-2``."""
    guide_trace = sample_guide(guide_fn, x, num_samples)
    with torch.no_grad(), pyro.plate("importance_samples", num_samples, dim=-2):
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
    ``EVAL_CHUNK_ELEMENTS``). The mean log-weight estimates the ELBO L_1.

    Under ``torchrun`` process r computes the batches r, r + W, ... of the W
    processes' and draws (without the model) the others' samples, so that
    every process takes the same random numbers as one process would; the
    results are gathered on every process."""
    rank, world_size = process()
    data_dim = x.shape[-1]
    batch_size = batch_size or max(1, min(len(x), 100))
    chunk = max(1, EVAL_CHUNK_ELEMENTS // (data_dim * batch_size))
    mine = []
    for index, start in enumerate(range(0, len(x), batch_size)):
        xb = x[start : start + batch_size]
        acc = xb.new_full((len(xb),), -math.inf)
        total = xb.new_zeros(len(xb))
        done = 0
        while done < num_samples:
            s = min(chunk, num_samples - done)
            if index % world_size == rank:
                lw = log_weights(model_fn, guide_fn, xb, s)
                acc = torch.logaddexp(acc, torch.logsumexp(lw, 0))
                total = total + lw.sum(0)
            else:
                sample_guide(guide_fn, xb, s)  # the same draws as one process makes
            done += s
        if index % world_size == rank:
            mine.append((index, (acc - math.log(num_samples)).cpu(), (total / num_samples).cpu()))
    if world_size > 1:
        gathered = [None] * world_size
        torch.distributed.all_gather_object(gathered, mine)
        mine = sorted(part for parts in gathered for part in parts)
    log_px, elbo = (torch.cat([part[i] for part in mine]).to(x.device) for i in (1, 2))
    return log_px, elbo


def active_units(encoder, x, threshold=ACTIVE_UNIT_THRESHOLD):
    """Burda et al.'s active units: dimensions u with Cov_x(E_q[z_u | x]) > threshold."""
    with torch.no_grad():
        loc = torch.cat([encoder(xb)[0] for xb in x.split(1000)])
    variance = loc.var(0)
    return int((variance > threshold).sum()), variance


def mean_se(values):
    """The mean of ``values`` and its standard error (``None`` for one value)."""
    values = values.double()
    se = (values.std() / math.sqrt(len(values))).item() if len(values) > 1 else None
    return values.mean().item(), se


def evaluate(encoder, model_fn, guide_fn, test_eval, test, num_samples):
    """The test L_S (S = ``num_samples``) and ELBO on ``test_eval`` and the
    active units on the whole ``test`` set; ``log_px`` per test image is kept
    for the paired comparisons."""
    start = time.perf_counter()
    with fixed_rng(EVAL_SAMPLES_SEED):
        log_px, elbo = bounds(model_fn, guide_fn, test_eval, num_samples)
    units, variance = active_units(encoder, test)
    ll, ll_se = mean_se(log_px)
    el, el_se = mean_se(elbo)
    return {
        "test_log_likelihood": ll,
        "test_log_likelihood_se": ll_se,
        "test_elbo": el,
        "test_elbo_se": el_se,
        "test_images": len(log_px),
        "active_units": units,
        "latent_variances": variance.cpu().tolist(),
        "eval_seconds": time.perf_counter() - start,
        "log_px": log_px.cpu(),  # per test image, for paired comparisons (not in results.json)
    }
