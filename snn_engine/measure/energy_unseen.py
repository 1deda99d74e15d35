"""The work of our models that SpikingJelly's energy counters cannot see, counted with our rules.

:class:`UnseenCounter` wraps forward passes like :class:`snn_engine.measure.ops.OpCounter` (which it runs inside) and
returns, per sample, one record per layer and kind (:meth:`UnseenCounter.lines`):

- ``compute`` (MACs, ACs): counted layers whose arithmetic the estimator's counters do not see
  (``sees_compute``). The aten-op counters (SimpleEnergy, NeuroMC: :func:`sees_aten_compute`) have no rule for
  ``nn.LayerNorm``, ``nn.GLU`` and the modules that declare ``energy_compute_unseen = True``: the S4D convolution
  of :class:`spiking_ssm.layer.SpikingSSM` (an FFT on CPU, our chunked kernels elsewhere), counted at its recurrent
  deployment cost (its ``count_ops``), and the folded per-position scale of ``mfi=true``. Lemaire's counter hooks
  ``nn.Linear``/``nn.Conv*`` modules only (:func:`sees_synaptic_modules`): BN, the token projections and the
  S4D layer are ours to add;
- ``weights`` (bytes): parameter reads of layers that count their own operations (``count_ops``) without being
  an ``nn.Linear``/``nn.Conv*`` module, which SpikingJelly's memory counters hook: one read per synaptic
  operation (the token projections of the sparse-MLP, the S4D parameters, adaptive embeddings and softmax);
- ``state`` (bytes): the recurrent state a module declares with ``energy_state_elements(inputs) -> int`` (values
  read per call; as many are written), e.g. the S4D modes, and the membrane of every spiking module an estimator
  does not price (``sees_soma``): one read and one write per neuron and step, e.g. the SDN/SLTT/parallel-LIF
  somas and their fused Triton kernels, which are not SpikingJelly ``BaseNode`` states.

A record is ``{"kind", "layer", "category", "mac", "ac", "bytes", "capacity_bytes"}``; ``capacity_bytes`` is the
buffer it lives in (the layer's parameters, or its state at one step), which Lemaire's model prices by size.
The counter also measures the firing rate of what it saw (spikes per neuron per step, all spiking modules).
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based.neuron import BaseNode
from torch import nn

from snn_engine.measure.metrics import is_spiking
from snn_engine.measure.ops import OpCounter

SYNAPTIC = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # hooked by SpikingJelly's memory counters
KINDS = {"compute": "arithmetic it has no rule for (LayerNorm, GLU, S4D recurrence, per-position scales; Lemaire: "
                    "every layer but Linear/Conv)",
         "weights": "weight reads of layers that are not nn.Linear/Conv modules (token projections, S4D, folded "
                    "layers)",
         "recurrent_state": "recurrent state reads/writes (S4D modes)",
         "somas": "membranes of spiking modules it does not price (SDN/SLTT/parallel-LIF/threshold somas, fused "
                  "kernels)"}


def sees_aten_compute(module: nn.Module) -> bool:
    """Whether SpikingJelly's aten-op MAC/AC counters see a counted layer's arithmetic (module docstring)."""
    return not (isinstance(module, (nn.LayerNorm, nn.GLU)) or getattr(module, "energy_compute_unseen", False))


def sees_synaptic_modules(module: nn.Module) -> bool:
    """Whether a counter that hooks ``nn.Linear``/``nn.Conv*`` modules only (Lemaire's) sees a layer's arithmetic."""
    return isinstance(module, SYNAPTIC)


def _param_bytes(module: nn.Module) -> tuple[int, int]:
    """(bytes per value, bytes of all parameters) of ``module`` (its floating buffers where it has no parameters,
    as the folded layers of ``mfi=true`` hold their weights; 4, 0 without either)."""
    params = list(module.parameters()) or [b for b in module.buffers() if b.is_floating_point()]
    if not params:
        return 4, 0
    return params[0].element_size(), sum(p.numel() * p.element_size() for p in params)


class UnseenCounter:
    """``with UnseenCounter(model, time_steps) as unseen: model(x)``; then ``unseen.lines(sees_soma)`` and
    ``unseen.firing_rate()`` (module docstring)."""

    def __init__(self, model: nn.Module, time_steps: int = 1):
        self.model = model
        self.ops = OpCounter(model, time_steps=time_steps)
        self.modules = dict(model.named_modules())
        self._handles: list = []
        self.somas: dict[str, list[float]] = {}  # name -> [neuron-steps, spikes, bytes per value, values per step]
        self.states: dict[str, list[float]] = {}  # name -> [values read, bytes per value, values per step]

    def _soma_hook(self, name: str):
        def hook(module, inputs, output):
            if not torch.is_tensor(output):
                return
            steps = output.shape[0] if output.ndim > 1 else 1
            x = inputs[0] if inputs and torch.is_tensor(inputs[0]) else output
            size = 4 if not x.is_floating_point() else max(x.element_size(), 4)  # membranes in float32 or wider
            row = self.somas.setdefault(name, [0.0, 0.0, float(size), 0.0])
            row[0] += output.numel()
            row[1] += float(torch.count_nonzero(output).item())
            row[3] = max(row[3], output.numel() / max(steps, 1))
        return hook

    def _state_hook(self, name: str):
        def hook(module, inputs, output):
            values = float(module.energy_state_elements(inputs))
            size = inputs[0].element_size() if inputs and torch.is_tensor(inputs[0]) else 4
            per_step = getattr(module, "energy_state_per_step", lambda: values)()
            row = self.states.setdefault(name, [0.0, float(size), 0.0])
            row[0] += values
            row[2] = max(row[2], float(per_step))
        return hook

    def __enter__(self) -> "UnseenCounter":
        self.ops.__enter__()
        for name, module in self.modules.items():
            if is_spiking(module):
                self._handles.append(module.register_forward_hook(self._soma_hook(name)))
            if callable(getattr(module, "energy_state_elements", None)):
                self._handles.append(module.register_forward_hook(self._state_hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        self.ops.__exit__(*exc)
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def firing_rate(self) -> float:
        """Spikes per neuron per step over every spiking module seen (0 when none ran)."""
        steps = sum(row[0] for row in self.somas.values())
        return sum(row[1] for row in self.somas.values()) / steps if steps else 0.0

    def lines(self, sees_soma=lambda module: isinstance(module, BaseNode), sees_compute=sees_aten_compute
              ) -> dict[str, dict]:
        """Per-sample records (module docstring); ``sees_soma(module)``: whether the estimator prices that
        spiking module's membrane itself; ``sees_compute(module)``: whether its counters see that counted layer's
        arithmetic."""
        samples = max(self.ops.samples, 1)
        result = self.ops.compute()
        records: dict[str, dict] = {}

        def add(kind, layer, category, mac=0.0, ac=0.0, nbytes=0.0, capacity=0.0):
            records[f"{kind}:{layer}"] = {"kind": kind, "layer": layer, "category": category, "mac": mac, "ac": ac,
                                          "bytes": nbytes, "capacity_bytes": capacity}

        for name, layer in result["layers"].items():
            module = self.modules.get(name, self.model)
            if not sees_compute(module):
                add("compute", name, "compute_pj", mac=layer["mac"], ac=layer["ac"])
            if callable(getattr(module, "count_ops", None)) and not isinstance(module, SYNAPTIC):
                size, capacity = _param_bytes(module)
                if capacity:
                    add("weights", name, "weights_pj", nbytes=(layer["ac"] + layer["mac"]) * size, capacity=capacity)
        for name, (values, size, per_step) in self.states.items():
            add("recurrent_state", name, "state_pj", nbytes=2 * values * size / samples, capacity=per_step * size)
        for name, (steps, _spikes, size, per_step) in self.somas.items():
            if not sees_soma(self.modules[name]):
                add("somas", name, "state_pj", nbytes=2 * steps * size / samples, capacity=per_step * size)
        return records


def by_kind(records: dict[str, dict]) -> dict[str, dict]:
    """Records summed per kind: ``{kind: {"mac", "ac", "bytes", "layers"}}`` (kinds with nothing dropped)."""
    out: dict[str, dict] = {}
    for record in records.values():
        row = out.setdefault(record["kind"], {"mac": 0.0, "ac": 0.0, "bytes": 0.0, "layers": 0})
        for key in ("mac", "ac", "bytes"):
            row[key] += record[key]
        row["layers"] += 1
    return {k: v for k, v in out.items() if v["mac"] or v["ac"] or v["bytes"]}
