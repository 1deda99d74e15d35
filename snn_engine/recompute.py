"""Activation recomputation for spiking modules: keep a module's input, recompute its inside in backward.

``torch.utils.checkpoint`` alone is wrong for spiking networks in two ways, both handled here:

- **neuron state**: a SpikingJelly neuron keeps its membrane after a call, so the recomputation in backward would
  start from the final membrane instead of the reset one. :func:`checkpoint_spiking` resets every neuron of the
  module at the start of the forward and of the recomputation. This assumes what multi-step models do: the module
  runs all time steps in one call from the reset state (``functional.reset_net`` between batches);
- **BatchNorm statistics**: the recomputation runs BN in training mode again, which would update the running
  statistics twice. During the recomputation every BN's momentum is 0 and ``num_batches_tracked`` is restored
  afterwards, so the statistics are updated once, by the forward.

The random state (dropout) is replayed by ``torch.utils.checkpoint``. The compact spike saving
(:mod:`snn_engine.spike_memory`) is paused inside: the checkpoint's own saved-tensor hooks must see every tensor
(nothing is kept from the forward; the recomputed activations live only while that module's backward runs).
The result: the same outputs, gradients and BN statistics (tested), for a fraction of the activation memory.
"""

from __future__ import annotations

import contextlib

import torch
import torch.utils.checkpoint
from spikingjelly.activation_based.functional import reset_net
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from snn_engine import spike_memory


@contextlib.contextmanager
def _frozen_batchnorm_statistics(module: nn.Module):
    norms = [m for m in module.modules() if isinstance(m, _BatchNorm) and m.track_running_stats and m.training]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)


def checkpoint_spiking(module: nn.Module, *args: torch.Tensor) -> torch.Tensor:
    """``module(*args)`` with its activations recomputed in backward (see the module docstring).

    Falls back to a plain call in eval mode or without gradients.
    """
    if not (module.training and torch.is_grad_enabled()):
        return module(*args)

    def run(*inputs):
        reset_net(module)
        return module(*inputs)

    @contextlib.contextmanager
    def recomputing():
        with spike_memory.paused(), _frozen_batchnorm_statistics(module):
            yield

    def contexts():
        return spike_memory.paused(), recomputing()

    return torch.utils.checkpoint.checkpoint(run, *args, use_reentrant=False, context_fn=contexts)
