"""Step-by-step (recurrent) inference of trained causal SpikingSSM layers and classifiers, for deployment.

Per layer and time step t (eval mode: dropout off, BatchNorm with running statistics):

- SSM state x [B, H, N/2] complex: ``x <- Abar x + Bbar u_t``; ``y_t = 2 Re(C x) + D u_t``; current ``y_t / theta``;
- exact LIF soma: ``v <- leak * v + I_t`` (SpikingSSM's somas: a multiply, then an add, as ``lif``,
  ``lif_parallel`` and ``sltt`` compute it) or SpikingJelly's LIF arithmetic for its own nodes
  (``v - (v - v_reset) / tau + I`` with ``decay_input=False``, ``v + (I - (v - v_reset)) / tau`` with
  ``decay_input=True``), spike ``s = [v >= v_threshold]``, hard reset ``v <- v * (1 - s)`` to 0 (``v_reset`` where s
  for another ``v_reset``; soft reset ``v <- v - v_threshold s`` when ``v_reset`` is None);
- output ``GLU(W s + b)``.

The LIF constants come from the layer's neuron (:meth:`LIFConstants.from_neuron`): a SpikingJelly LIF/IF node keeps
its dynamics; SpikingSSM's ``lif`` (``leak``), ``sdn``/``sltt``/``lif_parallel`` neurons (``tau`` = leak factor, e.g.
0.125) and any other neuron are replaced by the exact LIF they emulate: the reference's "no extra parameters at
inference" deployment. Bidirectional models cannot stream and raise :class:`UserError`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from spikingjelly.activation_based import neuron as sj_neuron
from torch import nn

from snn_engine.errors import UserError
from snn_engine.neurons import LeakLIFNode
from spiking_ssm.backbone import SpikingSSMClassifier
from spiking_ssm.layer import SpikingSSM, SpikingSSMBlock


@dataclass(frozen=True)
class LIFConstants:
    """Exact LIF soma. Two parametrisations:

    - ``leak`` set (SpikingSSM convention, ``spiking_ssm.somas``): ``v <- leak * v + I`` (in that float order)
      for reset 0, ``v_reset + leak (v - v_reset) + I`` otherwise;
    - ``leak`` None: SpikingJelly's ``LIFNode`` with time constant ``tau`` (``v <- v - (v - v_reset)/tau + I``,
      or ``v + (I - (v - v_reset))/tau`` with ``decay_input``); ``tau = inf`` is an IF neuron.
    """

    leak: float | None = 0.125
    tau: float = float("inf")
    decay_input: bool = False
    v_threshold: float = 1.0
    v_reset: float | None = 0.0

    @classmethod
    def from_neuron(cls, neuron: nn.Module) -> "LIFConstants":
        """Read the soma constants from the layer's neuron.

        SpikingJelly ``LIFNode``/``ParametricLIFNode``/``IFNode`` keep their own dynamics. The engine's
        ``LeakLIFNode`` (SpikingSSM's ``lif``) gets its ``leak``; a neuron with a ``tau`` in [0, 1) (SpikingSSM's
        ``sdn``/``sltt``/``lif_parallel``, where ``tau`` is the leak factor) gets that leak; both with threshold
        ``v_threshold`` (default 1) and hard reset to 0. Anything else: the SDN's LIF (0.125, 1, 0).
        """
        common = dict(v_threshold=float(getattr(neuron, "v_threshold", 1.0)))
        if isinstance(neuron, LeakLIFNode):
            return cls(leak=neuron.leak, **common)
        if isinstance(neuron, sj_neuron.ParametricLIFNode):
            tau = float(1.0 / torch.sigmoid(neuron.w.detach()).item())
            return cls(leak=None, tau=tau, decay_input=bool(neuron.decay_input), v_reset=neuron.v_reset, **common)
        if isinstance(neuron, sj_neuron.LIFNode):
            return cls(leak=None, tau=float(neuron.tau), decay_input=bool(neuron.decay_input),
                       v_reset=neuron.v_reset, **common)
        if isinstance(neuron, sj_neuron.IFNode):
            return cls(leak=None, tau=float("inf"), v_reset=neuron.v_reset, **common)
        tau = getattr(neuron, "tau", None)
        if isinstance(tau, (int, float)) and 0.0 <= float(tau) < 1.0:
            return cls(leak=float(tau), **common)
        return cls()

    def charge(self, v: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
        reset = 0.0 if self.v_reset is None else self.v_reset
        if self.leak is not None and reset == 0.0:
            return self.leak * v + current  # the paper's order: a multiply, then an add (eager: no FMA)
        if self.leak is not None:
            return reset + self.leak * (v - reset) + current
        if self.tau == float("inf"):
            return v + current
        if self.decay_input:
            return v + (current - (v - reset)) / self.tau
        return v - (v - reset) / self.tau + current

    def fire_and_reset(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spike = (v >= self.v_threshold).to(v.dtype)
        if self.v_reset is None:
            return spike, v - spike * self.v_threshold
        if self.v_reset == 0.0:
            return spike, v * (1.0 - spike)  # the paper's reset: inf * 0 = NaN after an infinite input, as lif
        return spike, spike * self.v_reset + (1.0 - spike) * v


class StreamingSpikingSSM:
    """Recurrent view of one trained causal :class:`SpikingSSM` layer: ``step(u_t [B, H]) -> [B, H]``."""

    def __init__(self, layer: SpikingSSM, lif: LIFConstants | None = None):
        if layer.bidirectional:
            raise UserError("a bidirectional SpikingSSM sees future inputs and cannot stream; "
                            "train with model.bidirectional=false for step-by-step inference")
        self.layer = layer
        self.lif = lif or LIFConstants.from_neuron(layer.neuron)
        with torch.no_grad():
            Abar, Bbar, C = layer.kernel.discretize()
            self.Abar, self.Bbar, self.C = Abar, Bbar, C[0]
            self.D = layer.D.detach()[:, 0]
            self.inv_theta = torch.exp(-layer.ln_theta.detach()).reshape(-1)
        self.x: torch.Tensor | None = None
        self.v: torch.Tensor | None = None
        self.last_spikes: torch.Tensor | None = None

    def reset(self) -> None:
        self.x = self.v = self.last_spikes = None

    @torch.no_grad()
    def step(self, u: torch.Tensor) -> torch.Tensor:
        if self.x is None:
            self.x = torch.zeros(*u.shape, self.Abar.shape[-1], dtype=self.Abar.dtype, device=u.device)
            self.v = torch.zeros_like(u) if self.lif.v_reset is None else torch.full_like(u, self.lif.v_reset)
        self.x = self.Abar * self.x + self.Bbar * u.unsqueeze(-1)
        y = 2.0 * (self.C * self.x).sum(-1).real + self.D * u
        self.v = self.lif.charge(self.v, y * self.inv_theta)
        spike, self.v = self.lif.fire_and_reset(self.v)
        self.last_spikes = spike
        return self.layer.glu(self.layer.output_linear(spike.unsqueeze(-1))).squeeze(-1)


def _pointwise(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a [B, H, L] module (eval BatchNorm1d / channel LayerNorm / Identity) to one step [B, H]."""
    return module(x.unsqueeze(-1)).squeeze(-1)


class StreamingBlock:
    """Recurrent view of a :class:`SpikingSSMBlock` (eval mode: dropout is the identity)."""

    def __init__(self, block: SpikingSSMBlock, lif: LIFConstants | None = None):
        self.block = block
        self.layer = StreamingSpikingSSM(block.layer, lif)

    def reset(self) -> None:
        self.layer.reset()

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        place = self.block.norm_place
        z = _pointwise(self.block.norm, x) if place == "pre" else x
        x = x + self.layer.step(z)
        return _pointwise(self.block.norm, x) if place == "post" else x


class StreamingClassifier:
    """Step-by-step inference of a trained causal :class:`SpikingSSMClassifier`.

    ``reset()``; then ``step(x_t)`` per time step (x_t: [B] token ids or [B, d_input] / [B] floats), which
    returns the top-layer features [B, H] and updates the running mean; ``logits()`` gives the prediction for
    the prefix seen so far. ``run(x)`` does all of it for a whole [B, L(, d_input)] sequence.
    """

    def __init__(self, model: SpikingSSMClassifier, lif: LIFConstants | None = None):
        if model.training:
            raise UserError("streaming inference needs a trained model in eval mode: call model.eval() first")
        if model.backbone.bidirectional:
            raise UserError("a bidirectional SpikingSSM classifier cannot stream; "
                            "train with model.bidirectional=false for step-by-step inference")
        self.model = model
        self.blocks = [StreamingBlock(b, lif) for b in model.backbone.blocks]
        self.reset()

    def reset(self) -> None:
        for block in self.blocks:
            block.reset()
        self.total: torch.Tensor | None = None
        self.count = 0

    @torch.no_grad()
    def step(self, x_t: torch.Tensor) -> torch.Tensor:
        h = self.model.encode(x_t.unsqueeze(1))[:, 0]  # [B, H]
        for block in self.blocks:
            h = block.step(h)
        self.total = h.clone() if self.total is None else self.total + h
        self.count += 1
        return h

    @torch.no_grad()
    def logits(self) -> torch.Tensor:
        if self.total is None:
            raise UserError("StreamingClassifier.logits() called before any step()")
        return self.model.decoder(self.total / self.count)

    @torch.no_grad()
    def run(self, x: torch.Tensor) -> torch.Tensor:
        self.reset()
        for t in range(x.shape[1]):
            self.step(x[:, t])
        return self.logits()
