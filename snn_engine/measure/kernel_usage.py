"""Which implementation every spiking layer actually ran, counted per call over a run (not assumed from the request).

:class:`ImplementationCounter` hooks every spiking layer (:func:`snn_engine.measure.metrics.is_spiking`). Per call it
records what ran:

- a layer that reports itself (``module.last_implementation``, e.g. SpikingSSM's ``sdn``/``sltt`` somas: ``triton``
  or ``torch``; the engine's :class:`~snn_engine.neurons.LeakLIFNode`, SpikingSSM's ``lif``: ``torch loop (paper
  arithmetic)`` on every device, although it is a SpikingJelly node);
- a SpikingJelly IF/LIF/PLIF node: the path SpikingJelly 2.0 takes for this call's input
  (:func:`spikingjelly_path`): on CUDA its fused kernel (``triton`` / ``cuda``, or ``triton (explicit precision)``)
  unless the input profile forces its Python-loop reference, e.g. ``torch reference (fallback: float16 state)``
  under autocast, where the membrane state takes the input's half dtype;
- anything else: ``torch``.

``ImplementationCounter(model, select=reports_path)`` counts instead the layers that report a path of their own
(``reports_path = True`` and ``last_implementation``, e.g. SpikingSSM's current path: ``fft`` or ``chunked (triton)``).

``summary()`` gives ``{"calls": {implementation: calls}, "layers": {layer: {implementation: calls}},
"fallback_layers": [...]}`` for ``summary.json``; ``fallbacks`` lists layers that ran a fallback at least once.

:func:`spikingjelly_path` reads a private SpikingJelly name and mirrors its dispatch rules, so SpikingJelly is pinned
(``pyproject.toml``) and ``tests/test_dependencies.py`` fails on any other release or a change of those functions.
"""

from __future__ import annotations

import collections
import functools

import torch
from spikingjelly.activation_based import neuron as sj_neuron
from torch import nn

from snn_engine.measure.metrics import is_spiking

SJ_KINDS = ((sj_neuron.ParametricLIFNode, "plif"), (sj_neuron.LIFNode, "lif"), (sj_neuron.IFNode, "if"))


@functools.lru_cache(maxsize=None)
def _selected(kind: str, device: str) -> str:
    from spikingjelly.activation_based.functional import neuron_implementation

    return str(neuron_implementation(kind, torch.device(device))["implementation"])


def _supported_surrogate(node: nn.Module) -> bool:
    from spikingjelly._ops.surrogate import _surrogate_spec

    return _surrogate_spec(getattr(node, "surrogate_function", None)) is not None


def spikingjelly_path(node: nn.Module, x: torch.Tensor) -> str:
    """The implementation SpikingJelly 2.0.0 runs for ``node`` on multi-step input ``x`` (its dispatch rules in
    ``functional.lif_multi_step`` and friends: CPU -> reference; CUDA -> the selected fused kernel when the
    surrogate is a built-in one, the input is float32/16/bf16 and the state is float32, else the reference)."""
    kind = next((name for cls, name in SJ_KINDS if isinstance(node, cls)), None)
    if x.device.type != "cuda":
        return "torch (cpu)"
    if kind is None or getattr(node, "step_mode", "m") != "m":
        return "torch reference (single-step or not a fused neuron)"
    if getattr(node, "_neuron_precision", None) is not None:
        return "triton (explicit precision)"
    if not _supported_surrogate(node):
        return "torch reference (fallback: surrogate without a fused kernel)"
    if x.dtype != torch.float32 and not getattr(node, "float32_state", False):
        # the membrane takes the input's dtype and the fused kernels want it float32 (our nodes cast the input up)
        return f"torch reference (fallback: {str(x.dtype).removeprefix('torch.')} state)"
    return _selected(kind, f"cuda:{x.device.index if x.device.index is not None else torch.cuda.current_device()}")


def ran_implementation(module: nn.Module, inputs: tuple) -> str:
    reported = getattr(module, "last_implementation", None)
    if reported:
        return str(reported)
    if isinstance(module, sj_neuron.BaseNode) and inputs and isinstance(inputs[0], torch.Tensor):
        return spikingjelly_path(module, inputs[0])
    return "torch"


def reports_path(module: nn.Module) -> bool:
    """A non-spiking layer that says which implementation its latest call ran (``reports_path = True``)."""
    return bool(getattr(module, "reports_path", False))


class ImplementationCounter:
    """Count what each spiking layer of ``model`` (or each layer ``select`` picks) ran, call by call, while the
    hooks are installed.

    Use as a context manager around training or evaluation; :meth:`summary` afterwards (or during).
    """

    def __init__(self, model: nn.Module, select=is_spiking):
        self.model = model
        self.select = select
        self.counts: dict[str, collections.Counter] = {}
        self.handles: list = []

    def __enter__(self) -> "ImplementationCounter":
        for name, module in self.model.named_modules():
            if self.select(module):
                self.counts[name] = collections.Counter()
                self.handles.append(module.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.counts[name][ran_implementation(module, inputs)] += 1
        return hook

    @property
    def fallbacks(self) -> list[str]:
        return [name for name, counter in self.counts.items() if any("fallback" in impl for impl in counter)]

    def summary(self) -> dict:
        calls = collections.Counter()
        for counter in self.counts.values():
            calls.update(counter)
        return {"calls": dict(calls), "layers": {name: dict(c) for name, c in self.counts.items() if c},
                "fallback_layers": self.fallbacks}

    def describe(self) -> str:
        """One line for the log: ``"triton: 35 layers"`` or with the fallbacks named."""
        layers = collections.Counter()
        for counter in self.counts.values():
            if counter:
                layers[counter.most_common(1)[0][0]] += 1
        text = ", ".join(f"{impl}: {n} layer{'s' * (n != 1)}" for impl, n in layers.most_common())
        return text or "no layer ran"
