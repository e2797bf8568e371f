r"""The amortized, sequential guide of the scene model (:mod:`models.air`).

At each step :math:`t` an LSTM reads the embedded canvas and the previous
step's samples :math:`(z^{where}_{t-1}, z^{what}_{t-1}, z^{pres}_{t-1})`
(zeros and 1 before the first step) into its state :math:`h_t`; then

.. math::

    z^{pres}_t &\sim \mathrm{Bernoulli}\big(\sigma(g(h_t))\, z^{pres}_{t-1}\big),\\
    z^{where}_t &\sim \mathcal{N}\big(\mu_w + m(h_t),\ \sigma_w \odot \mathrm{softplus}(r(h_t))\big),\\
    z^{what}_t &\sim \mathcal{N}\big(e_\mu(x^{att}_t),\ \mathrm{softplus}(e_\sigma(x^{att}_t))\big),
    \qquad x^{att}_t = \mathrm{STN}^{-1}(x; z^{where}_t),

with :math:`(\mu_w, \sigma_w)` the prior's location and scale of
:math:`z^{where}` and :math:`x^{att}_t` the window the guide attends to. The
presence of object :math:`t` is decided given every earlier sample: the
Bernoulli of :math:`z^{pres}_t` depends on the previous steps' draws through
:math:`h_t`, and is :math:`\mathrm{Bernoulli}(0)` after a 0. It is written with
``probs`` (Pyro's AIR does the same): ``Bernoulli(logits=-inf)`` has a NaN
``log_prob`` in torch, ``Bernoulli(probs=0)`` the exact 0. As in the model,
:math:`z^{where}_t` and :math:`z^{what}_t` are masked out where
:math:`z^{pres}_t = 0`.

With a :class:`Baseline`, each ``z_pres_t`` site carries
``infer={"baseline": {"nn_baseline": ..., "nn_baseline_input": h_t}}`` for
Pyro's ``TraceGraph_ELBO``: a data-dependent baseline network (per step)
reading the guide's state :math:`h_t`, which depends on the canvas and on the
earlier steps but not on :math:`z^{pres}_t` (Pyro detaches the input, so the
baseline's squared-error loss trains only the baseline). Optionally Pyro's
decaying average of the learning signal is added to it, so that the network
learns the residual. The other estimators ignore the ``baseline`` options.

:func:`log_weights` draws the guide and replays the model on its draws: the
importance weights, the inferred counts and the model's canvases.

References

1. S. M. A. Eslami et al., *Attend, Infer, Repeat: Fast Scene Understanding
   with Generative Models*, NeurIPS 2016, sections 2-3.
2. A. Mnih, K. Gregor, *Neural Variational Inference and Learning in Belief
   Networks*, ICML 2014 (input-dependent baselines).
"""

import functools
from typing import Optional

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from models.air import AIRConfig, canvas_to_window, check_canvases, mlp, model, plate_shape
from pyro_vi.validation import boolean, instance, integer, real

__all__ = ["Baseline", "GuideNet", "guide", "log_weights"]


class GuideNet(nn.Module):
    """The guide's networks: the canvas embedding, the LSTM, the heads of
    :math:`z^{pres}` (:attr:`presence`: one logit) and :math:`z^{where}`,
    and the window encoder of :math:`z^{what}`.

    :param AIRConfig config: sizes and priors.
    """

    def __init__(self, config: AIRConfig = AIRConfig()):
        super().__init__()
        self.config = instance("config", config, AIRConfig, "a models.air.AIRConfig")
        self.embed = nn.Sequential(nn.Linear(config.canvas_size**2, config.embed_dim), nn.ReLU())
        self.rnn = nn.LSTMCell(config.embed_dim + 3 + config.z_what_dim + 1, config.rnn_hidden)
        self.presence = nn.Linear(config.rnn_hidden, 1)
        self.where = nn.Linear(config.rnn_hidden, 6)
        self.encoder = mlp((config.window_size**2, config.decoder_hidden, 2 * config.z_what_dim))

    def step(self, inputs, state):
        """One LSTM step on inputs and states with any batch shape."""
        batch_shape = inputs.shape[:-1]
        h, c = self.rnn(inputs.reshape(-1, inputs.shape[-1]), tuple(s.reshape(-1, s.shape[-1]) for s in state))
        return h.reshape(batch_shape + h.shape[-1:]), c.reshape(batch_shape + c.shape[-1:])

    def encode(self, windows):
        """``(..., w, w)`` -> the loc and scale of :math:`z^{what}`."""
        out = self.encoder(windows.flatten(-2))
        loc, raw = out.chunk(2, -1)
        return loc, F.softplus(raw)


class _StepBaseline(nn.Module):
    """``h (..., H) -> (...)``: one step's baseline value."""

    def __init__(self, rnn_hidden, hidden):
        super().__init__()
        self.net = mlp((rnn_hidden, hidden, 1))

    def forward(self, h):
        return self.net(h).squeeze(-1)


class Baseline(nn.Module):
    """Data-dependent baselines for the ``z_pres_t`` sites under Pyro's
    ``TraceGraph_ELBO``: one small network per step, from the guide's LSTM
    state :math:`h_t` to the expected learning signal of ``z_pres_t``.

    :param AIRConfig config: sizes.
    :param int hidden: hidden units of each step's network.
    :param bool average: also use Pyro's decaying-average baseline (the
        network then learns the residual around it).
    :param float beta: the decaying average's ``baseline_beta``.
    """

    def __init__(self, config: AIRConfig = AIRConfig(), hidden=64, average=True, beta=0.9):
        super().__init__()
        self.config = instance("config", config, AIRConfig, "a models.air.AIRConfig")
        hidden = integer("hidden", hidden, minimum=1)
        self.average = boolean("average", average)
        self.beta = real("beta", beta, minimum=0, maximum=1)
        self.steps = nn.ModuleList(_StepBaseline(config.rnn_hidden, hidden) for _ in range(config.max_steps))

    def options(self, t, h):
        """The ``infer["baseline"]`` of ``z_pres_t`` given the state ``h``."""
        options = {"nn_baseline": self.steps[t], "nn_baseline_input": h}
        if self.average:
            options.update(use_decaying_avg_baseline=True, baseline_beta=self.beta)
        return options


def guide(images, net: GuideNet, baseline: Optional[Baseline] = None):
    """The guide for ``images`` ``(B, C, C)`` in the plate ``"data"``; pass the
    networks with :func:`functools.partial`. Returns the samples
    ``(z_pres, z_where)``, one tensor per step."""
    instance("net", net, GuideNet, "a guides.air.GuideNet")
    instance("baseline", baseline, Baseline, "a guides.air.Baseline", optional=True)
    config = net.config
    check_canvases(images, config, net)
    pyro.module("guide", net)
    if baseline is not None:
        pyro.module("baseline", baseline)
    where_loc, where_scale = config.where_prior(images)
    z_pres, z_where = [], []
    with pyro.plate("data", len(images), dim=-1):
        shape = plate_shape()
        embedded = net.embed(images.flatten(-2)).expand(shape + (config.embed_dim,))
        state = (embedded.new_zeros(shape + (config.rnn_hidden,)),) * 2
        present = images.new_ones(shape)
        where, what = images.new_zeros(shape + (3,)), images.new_zeros(shape + (config.z_what_dim,))
        for t in range(config.max_steps):
            state = net.step(torch.cat([embedded, where, what, present[..., None]], -1), state)
            h = state[0]
            probs = torch.sigmoid(net.presence(h)).squeeze(-1) * present
            infer = {} if baseline is None else {"baseline": baseline.options(t, h)}
            present = pyro.sample(f"z_pres_{t}", dist.Bernoulli(probs=probs), infer=infer)
            mask = present > 0
            loc, raw = net.where(h).chunk(2, -1)
            where = pyro.sample(
                f"z_where_{t}", dist.Normal(where_loc + loc, where_scale * F.softplus(raw)).to_event(1).mask(mask)
            )
            what_loc, what_scale = net.encode(canvas_to_window(images, where, config.window_size))
            what = pyro.sample(f"z_what_{t}", dist.Normal(what_loc, what_scale).to_event(1).mask(mask))
            z_pres.append(present)
            z_where.append(where)
    return z_pres, z_where


@torch.no_grad()
def log_weights(images, decoder, net: GuideNet, num_particles):
    """One vectorized pass of ``num_particles`` draws of the guide (without
    baselines) per canvas, replayed through :func:`models.air.model` with
    ``decoder``: ``(log_w, counts, canvas, z_pres, z_where)`` with ``log_w``
    and ``counts`` of shape ``(K, B)``."""
    plate = pyro.plate("eval_particles", num_particles, dim=-2)
    guide_trace = poutine.trace(plate(functools.partial(guide, net=net))).get_trace(images)
    replayed = poutine.replay(plate(functools.partial(model, decoder=decoder)), trace=guide_trace)
    model_trace = poutine.trace(replayed).get_trace(images)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    log_w = sum(s["log_prob"] for s in model_trace.nodes.values() if s["type"] == "sample") - sum(
        s["log_prob"] for s in guide_trace.nodes.values() if s["type"] == "sample"
    )
    z_pres, z_where = guide_trace.nodes["_RETURN"]["value"]
    counts = torch.stack(z_pres).sum(0).long()
    return log_w, counts, model_trace.nodes["_RETURN"]["value"], z_pres, z_where
