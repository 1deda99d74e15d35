"""Activation recomputation for spiking modules: keep a module's input, recompute its inside in backward.

SpikingJelly's ``memopt.checkpoint_module`` does the work. ``torch.utils.checkpoint`` alone is wrong for spiking
networks in two ways, and memopt handles both:

- **neuron state**: it reads the membrane of every SpikingJelly neuron before the forward, runs the forward and the
  recomputation from that same state as explicit inputs, and commits the final state once. Any soma works, the
  stateful LIF/IF/PLIF included (the multi-step models here run all time steps in one call from the reset state);
- **BatchNorm statistics**: the module runs with copies of its buffers, and only the forward's copies are written
  back, so the running statistics are updated once, not again by the recomputation.

The random state (dropout) is replayed by ``torch.utils.checkpoint``. Two things are ours:

- compact spike saving (:mod:`snn_engine.training.spike_memory`) is paused inside: the checkpoint's own saved-tensor hooks
  must see every tensor, or the packed spikes of the forward stay alive until backward (about 190 KB of booleans
  for one small stage) and the recomputation is not recognised;
- a module whose input is spikes (``binary_input=True``) keeps that input through the current spike storage's
  compressor (``bool``: 1 byte, ``bits``: 1/8 byte per value) instead of the float tensor.

The result: the same outputs, gradients and BN statistics (tested, both families), for a fraction of the memory.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based.memopt import checkpoint_module
from torch import nn

from snn_engine.training import spike_memory


class _SpikeSavingPaused(nn.Module):
    """``module`` with :func:`snn_engine.training.spike_memory.paused` around its forward (also when recomputed)."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        with spike_memory.paused():
            return self.module(*args)


def checkpoint_spiking(module: nn.Module, *args: torch.Tensor, binary_input: bool = False) -> torch.Tensor:
    """``module(*args)`` with its activations recomputed in backward (see the module docstring).

    ``binary_input``: the first argument is spikes (0/1), kept compressed as the current spike storage says.
    A plain call in eval mode or without gradients. The wrapper lives for this call only, so the model's
    module tree (names, state dict, folding, export) is the same with and without recomputation.
    """
    if not (module.training and torch.is_grad_enabled()):
        return module(*args)
    compressor = spike_memory.compressor() if binary_input else None
    return checkpoint_module(_SpikeSavingPaused(module), compressor=compressor)(*args)
