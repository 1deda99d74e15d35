"""Record what every spiking layer does on one input: spikes, membrane potentials and the rate along time.

:func:`record_activity` runs one sample through the model (eval mode, no gradient) under SpikingJelly's
monitors (outputs, the ``v_seq`` attribute, inputs) on every spiking layer (:func:`snn_engine.measure.metrics.is_spiking`)
and keeps, per layer, a seeded sample of its neurons. Membranes come from SpikingJelly's ``store_v_seq`` (``BaseNode.v_seq``: the membrane *after* the
spike and reset of each step, shape like the output) and, for SpikingSSM's SDN neuron, from its
``membrane(y)`` estimate; other spiking modules record ``membrane=None``.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import functional, monitor
from spikingjelly.activation_based.neuron import BaseNode
from torch import nn

from snn_engine.errors import UserError
from snn_engine.measure.metrics import is_spiking


def _per_neuron(tensor: torch.Tensor) -> torch.Tensor:
    """Sample 0 of a time-major output ``[T, B, *neuron]`` as ``[T, n_neurons]`` (neurons flattened)."""
    return tensor.detach()[:, 0].reshape(tensor.shape[0], -1)


def _sdn_membrane(module: nn.Module, currents: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
    """Post-reset membrane ``u_t = (m_t + y_t) * (1 - s_t)`` of a neuron exposing ``membrane(y) = tau*u_{t-1}``.

    SpikingSSM's neurons have threshold 1 and hard reset to 0 (see ``spiking_ssm/somas/__init__.py``), so this is the
    same quantity as SpikingJelly's ``v_seq``; for the SDN it is the SDN's estimate. Shapes ``[T, B, ...]``.
    """
    charged = module.membrane(currents) + currents.detach()
    return charged * (1.0 - spikes.detach().to(charged.dtype))


def _detached(value):
    return value.detach() if isinstance(value, torch.Tensor) else None


def _types(layers: list[tuple[str, nn.Module]], keep) -> tuple[type, ...]:
    return tuple({type(module) for _, module in layers if keep(module)})


def _has_v_seq(module: nn.Module) -> bool:
    return isinstance(module, BaseNode) or hasattr(module, "store_v_seq")


def _has_membrane_estimate(module: nn.Module) -> bool:
    return not _has_v_seq(module) and callable(getattr(module, "membrane", None))


def _first(recorder, name: str):
    """The first record of layer ``name`` in a SpikingJelly monitor, or None."""
    if recorder is None or name not in recorder.monitored_layers or not recorder[name]:
        return None
    return recorder[name][0]


def _first_sample(x: torch.Tensor) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 1 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise UserError(f"record_activity needs one batch tensor [B, ...] with B >= 1, got {shape}; "
                        "pass a batch from the loader")
    return x[:1]


@torch.no_grad()
def record_activity(model: nn.Module, x: torch.Tensor, max_neurons: int = 64, seed: int = 0) -> dict[str, dict]:
    """Spikes and membranes of every spiking layer of ``model`` for the first sample of ``x`` ``[B, ...]``.

    Returns ``{layer_name: {"spikes": [T, n], "membrane": [T, n] or None, "rate_along_time": [T],
    "neurons": [n] (long)}}`` on the CPU, where ``T`` is the layer's time axis (time steps, or sequence
    positions for SpikingSSM), ``n = min(max_neurons, layer neurons)`` neurons sampled without replacement by a
    generator seeded with ``seed`` (sorted flat indices into the layer's neuron axes, in ``"neurons"``), and
    ``rate_along_time[t]`` the mean spike of *all* the layer's neurons at step ``t``. A layer called several
    times per forward is recorded at its first call. The model's training flag and every neuron's
    ``store_v_seq`` are restored; ``functional.reset_net`` runs before and after.
    """
    if int(max_neurons) < 1:
        raise UserError(f"max_neurons={max_neurons} must be >= 1; pass the number of neurons to sample per layer")
    x = _first_sample(x)
    layers = [(name, module) for name, module in model.named_modules() if is_spiking(module)]
    if not layers:
        raise UserError(f"{type(model).__name__} has no spiking layers to record; pass a spiking model")
    param = next(model.parameters(), None)
    if param is not None:
        x = x.to(param.device)
    # SpikingJelly's monitors: outputs (spikes) of every spiking layer, the v_seq attribute after the forward
    # (membranes of neurons with store_v_seq) and the inputs of neurons that estimate their membrane (the SDN)
    spikes_monitor = monitor.OutputMonitor(model, _types(layers, lambda m: True), _detached)
    v_types, input_types = _types(layers, _has_v_seq), _types(layers, _has_membrane_estimate)
    v_monitor = monitor.AttributeMonitor("v_seq", False, model, v_types, _detached) if v_types else None
    input_monitor = monitor.InputMonitor(model, input_types, _detached) if input_types else None
    was_training = model.training
    stored = {name: module.store_v_seq for name, module in layers if hasattr(module, "store_v_seq")}
    try:
        model.eval()
        for name, module in layers:
            if name in stored:
                module.store_v_seq = True
        functional.reset_net(model)
        model(x)
    finally:
        for active in (spikes_monitor, v_monitor, input_monitor):
            if active is not None:
                active.remove_hooks()
        for name, module in layers:
            if name in stored:
                module.store_v_seq = stored[name]
        functional.reset_net(model)
        model.train(was_training)

    captured: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
    for name, module in layers:
        spikes = _first(spikes_monitor, name)
        if spikes is None:
            continue  # the layer did not run for this input
        membrane = _first(v_monitor, name)
        if membrane is not None and membrane.shape != spikes.shape:
            membrane = None
        currents = _first(input_monitor, name)
        if currents is not None:
            membrane = _sdn_membrane(module, currents, spikes)
        captured[name] = (_per_neuron(spikes).cpu(), None if membrane is None else _per_neuron(membrane).cpu())

    generator = torch.Generator().manual_seed(int(seed))
    result = {}
    for name, (spikes, membrane) in captured.items():
        total = spikes.shape[1]
        index = torch.randperm(total, generator=generator)[: min(int(max_neurons), total)].sort().values
        result[name] = {
            "spikes": spikes[:, index],
            "membrane": None if membrane is None else membrane[:, index],
            "rate_along_time": spikes.double().mean(1).to(spikes.dtype) if total else spikes.new_zeros(spikes.shape[0]),
            "neurons": index,
        }
    return result
