"""Classification metrics and firing rates, summed locally and reduced over ranks.

``ClassificationMeter`` accumulates loss and top-k hits; ``FiringRateMeter`` uses SpikingJelly's
``OutputMonitor`` on every spiking neuron to count spikes per layer. Both keep sums (not means), so
a single all-reduce gives exact global values.
"""

from __future__ import annotations

import torch
from spikingjelly.activation_based.monitor import OutputMonitor
from spikingjelly.activation_based.neuron import BaseNode
from torch import nn

from snn_engine.distributed import all_reduce_sum


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    """Number of samples whose class is in the top-k of ``logits [B, K]`` (``target`` ``[B]`` or soft ``[B, K]``)."""
    if target.ndim == 2:
        target = target.argmax(-1)
    k_max = min(max(ks), logits.shape[-1])
    top = logits.topk(k_max, dim=-1).indices
    correct = top.eq(target.unsqueeze(-1))
    return [int(correct[:, : min(k, k_max)].any(-1).sum()) for k in ks]


class ClassificationMeter:
    """Running loss and top-1/top-5 over batches; :meth:`compute` reduces across ranks."""

    def __init__(self):
        self.loss_sum, self.hits1, self.hits5, self.count = 0.0, 0, 0, 0

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: float) -> None:
        """``logits [B, K]`` (already averaged over time), ``loss`` the batch mean."""
        batch = logits.shape[0]
        h1, h5 = topk_hits(logits, target)
        self.loss_sum += loss * batch
        self.hits1 += h1
        self.hits5 += h5
        self.count += batch

    def compute(self, device: torch.device) -> dict[str, float]:
        totals = all_reduce_sum(torch.tensor([self.loss_sum, self.hits1, self.hits5, self.count], dtype=torch.float64, device=device))
        loss_sum, h1, h5, count = totals.tolist()
        count = max(count, 1.0)
        return {"loss": loss_sum / count, "acc1": 100.0 * h1 / count, "acc5": 100.0 * h5 / count}


def time_averaged(logits: torch.Tensor) -> torch.Tensor:
    """Per-step logits ``[T, B, K]`` -> ``[B, K]`` (mean over T); sequence models' ``[B, K]`` pass through."""
    return logits.mean(0) if logits.dim() == 3 else logits


def is_spiking(module: nn.Module) -> bool:
    """SpikingJelly neurons, and any module of ours that declares ``emits_spikes = True`` (e.g. the SDN neuron)."""
    return isinstance(module, BaseNode) or bool(getattr(module, "emits_spikes", False))


def spiking_layers(model: nn.Module) -> list[str]:
    """Names of every spiking neuron module in ``model``."""
    return [name for name, module in model.named_modules() if is_spiking(module)]


class FiringRateMeter:
    """Spikes per neuron per time step for every spiking layer while enabled.

    Use as a context manager around evaluation: ``with FiringRateMeter(model) as rates: ...``, then
    ``rates.compute(device)`` -> ``{layer_name: rate, ..., "mean": unweighted mean over layers,
    "overall": total spikes / total neuron-steps, "sparsity": 1 - overall}``.
    """

    def __init__(self, model: nn.Module):
        kinds = tuple({type(m) for m in model.modules() if is_spiking(m)}) or (BaseNode,)
        self.monitor = OutputMonitor(model, kinds, self._count)
        self.layers = list(self.monitor.monitored_layers)

    @staticmethod
    def _count(spikes: torch.Tensor) -> torch.Tensor:
        return torch.stack([spikes.detach().double().sum(), torch.tensor(float(spikes.numel()), dtype=torch.float64, device=spikes.device)])

    def __enter__(self) -> "FiringRateMeter":
        return self

    def __exit__(self, *exc) -> None:
        self.monitor.remove_hooks()

    def compute(self, device: torch.device) -> dict[str, float]:
        if not self.layers:
            return {}
        sums = torch.zeros(len(self.layers), 2, dtype=torch.float64, device=device)
        for i, name in enumerate(self.layers):
            for record in self.monitor[name]:
                sums[i] += record.to(device)
        sums = all_reduce_sum(sums)
        rates = (sums[:, 0] / sums[:, 1].clamp(min=1)).tolist()
        result = dict(zip(self.layers, rates))
        result["mean"] = sum(rates) / len(rates)
        result["overall"] = float(sums[:, 0].sum() / sums[:, 1].sum().clamp(min=1))
        result["sparsity"] = 1.0 - result["overall"]
        return result
