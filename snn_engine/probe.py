"""Record what every spiking layer does on one input: spikes, membrane potentials and the rate along time.

:func:`record_activity` runs one sample through the model (eval mode, no gradient) with a forward hook on
every spiking layer (:func:`snn_engine.metrics.is_spiking`) and keeps, per layer, a seeded sample of its
neurons. Membranes come from SpikingJelly's ``store_v_seq`` (``BaseNode.v_seq``: the membrane *after* the
spike and reset of each step, shape like the output) and, for SpikingSSM's SDN neuron, from its
``membrane(y)`` estimate; other spiking modules record ``membrane=None``.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.neuron import BaseNode
from torch import nn

from snn_engine.errors import UserError
from snn_engine.metrics import is_spiking


def _per_neuron(tensor: torch.Tensor) -> torch.Tensor:
    """Sample 0 of a time-major output ``[T, B, *neuron]`` as ``[T, n_neurons]`` (neurons flattened)."""
    return tensor.detach()[:, 0].reshape(tensor.shape[0], -1)


def _sdn_membrane(module: nn.Module, currents: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
    """Post-reset membrane ``u_t = (m_t + y_t) * (1 - s_t)`` of a neuron exposing ``membrane(y) = tau*u_{t-1}``.

    SpikingSSM's neurons have threshold 1 and hard reset to 0 (see ``spiking_ssm/neurons.py``), so this is the
    same quantity as SpikingJelly's ``v_seq``; for the SDN it is the SDN's estimate. Shapes ``[T, B, ...]``.
    """
    charged = module.membrane(currents) + currents.detach()
    return charged * (1.0 - spikes.detach().to(charged.dtype))


def _membrane(module: nn.Module, inputs: tuple, spikes: torch.Tensor) -> torch.Tensor | None:
    """The per-step membrane of ``module``'s latest call, ``[T, B, ...]``, or None if it exposes none."""
    if isinstance(module, BaseNode) or hasattr(module, "store_v_seq"):
        v_seq = getattr(module, "v_seq", None)
        return v_seq if isinstance(v_seq, torch.Tensor) and v_seq.shape == spikes.shape else None
    if callable(getattr(module, "membrane", None)) and inputs and isinstance(inputs[0], torch.Tensor):
        return _sdn_membrane(module, inputs[0], spikes)
    return None


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
    captured: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}

    def hook_for(name: str):
        def hook(module, inputs, output):
            if name in captured:
                return
            spikes = output[0] if isinstance(output, (tuple, list)) else output
            membrane = _membrane(module, inputs, spikes)
            captured[name] = (_per_neuron(spikes).cpu(), None if membrane is None else _per_neuron(membrane).cpu())

        return hook

    was_training = model.training
    stored = {name: module.store_v_seq for name, module in layers if hasattr(module, "store_v_seq")}
    handles = [module.register_forward_hook(hook_for(name)) for name, module in layers]
    try:
        model.eval()
        for name, module in layers:
            if name in stored:
                module.store_v_seq = True
        functional.reset_net(model)
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        for name, module in layers:
            if name in stored:
                module.store_v_seq = stored[name]
        functional.reset_net(model)
        model.train(was_training)

    generator = torch.Generator().manual_seed(int(seed))
    result = {}
    for name, _ in layers:
        if name not in captured:
            continue  # the layer did not run for this input
        spikes, membrane = captured[name]
        total = spikes.shape[1]
        index = torch.randperm(total, generator=generator)[: min(int(max_neurons), total)].sort().values
        result[name] = {
            "spikes": spikes[:, index],
            "membrane": None if membrane is None else membrane[:, index],
            "rate_along_time": spikes.double().mean(1).to(spikes.dtype) if total else spikes.new_zeros(spikes.shape[0]),
            "neurons": index,
        }
    return result
