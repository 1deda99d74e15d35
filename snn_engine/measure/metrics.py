"""Classification metrics and firing rates, summed locally and reduced over ranks.

``ClassificationMeter`` accumulates loss and top-k hits; ``FiringRateMeter`` hooks every spiking neuron
to count spikes per layer and per neuron (for the fraction of silent neurons). Both keep sums (not means),
so a single all-reduce gives exact global values.
"""

from __future__ import annotations

import math

import torch
from spikingjelly.activation_based.neuron import BaseNode
from torch import nn

from snn_engine.training.distributed import all_reduce_sum


def topk_hit_counts(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """Samples whose class is in the top-k of ``logits [B, K]`` (``target`` ``[B]`` or soft ``[B, K]``), for each
    k: a float tensor ``[len(ks)]`` on the logits' device (no host synchronisation)."""
    if target.ndim == 2:
        target = target.argmax(-1)
    k_max = min(max(ks), logits.shape[-1])
    top = logits.topk(k_max, dim=-1).indices
    correct = top.eq(target.unsqueeze(-1))
    return torch.stack([correct[:, : min(k, k_max)].any(-1).sum() for k in ks]).float()


def topk_hits(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> list[int]:
    """:func:`topk_hit_counts` as Python ints."""
    return [int(v) for v in topk_hit_counts(logits, target, ks).tolist()]


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


class TrainMeter:
    """Training loss and top-1/top-5 summed on the device between log points: no host sync per step.

    ``update(logits [B, K], target, loss)`` with ``loss`` a 0-d tensor (the batch mean); :meth:`compute` makes the
    one synchronisation (and the all-reduce across ranks) when the loop logs.
    """

    def __init__(self):
        self.sums: torch.Tensor | None = None  # [loss * batch, hits1, hits5, samples]

    def update(self, logits: torch.Tensor, target: torch.Tensor, loss: torch.Tensor) -> None:
        batch = logits.shape[0]
        row = torch.cat([(loss.detach().float() * batch).reshape(1), topk_hit_counts(logits, target),
                         torch.full((1,), float(batch), device=logits.device)])
        self.sums = row if self.sums is None else self.sums + row

    def compute(self, device: torch.device) -> dict[str, float]:
        sums = self.sums if self.sums is not None else torch.zeros(4, device=device)
        loss_sum, h1, h5, count = all_reduce_sum(sums.to(device, torch.float64)).tolist()
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


def neuron_counts(spikes: torch.Tensor) -> torch.Tensor:
    """Spikes per neuron (float64): time-major ``[T, B, *neuron]`` -> ``[*neuron]`` (summed over T and B).

    A neuron is one index of the non-(time, batch) axes: ``[T, B, H, W, C]`` -> ``[H, W, C]``, SpikingSSM's
    ``[L, B, H]`` -> ``[H]`` (a channel). Outputs with fewer than two axes count as a single neuron.
    """
    spikes = spikes.detach()
    if spikes.dim() < 2:
        return spikes.sum(dtype=torch.float64)
    return spikes.sum(dim=(0, 1), dtype=torch.float64)


class _LayerCounts:
    """One layer's running sums: spikes, neuron-steps, and per-neuron spike counts per neuron shape."""

    def __init__(self):
        self.spikes: torch.Tensor | None = None  # float64 scalar
        self.steps = 0.0  # neuron-steps seen (numel of every output)
        self.per_shape: dict[tuple[int, ...], torch.Tensor] = {}  # neuron shape -> counts [*shape]

    def add(self, output: torch.Tensor) -> None:
        counts = neuron_counts(output)
        total = counts.sum()
        self.spikes = total if self.spikes is None else self.spikes + total
        self.steps += float(output.numel())
        key = tuple(counts.shape)
        self.per_shape[key] = counts if key not in self.per_shape else self.per_shape[key] + counts

    def flat_counts(self, device: torch.device) -> torch.Tensor:
        """Every neuron's count, the shapes in sorted order, flattened and concatenated: ``[n_neurons]``."""
        parts = [self.per_shape[key].to(device).reshape(-1) for key in sorted(self.per_shape)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64, device=device)


class FiringRateMeter:
    """Spikes per neuron per time step, and silent neurons, for every spiking layer while enabled.

    Use as a context manager around evaluation: ``with FiringRateMeter(model) as rates: ...``, then
    ``rates.compute(device)`` -> ``{layer_name: rate, ..., "mean": unweighted mean over layers,
    "overall": total spikes / total neuron-steps, "sparsity": 1 - overall}``, or
    ``rates.compute_detailed(device)`` for rates, sparsity and the fraction of silent neurons per layer
    (see :func:`format_rate_table`). A neuron is silent if it never fired at any step of any sample
    evaluated on any rank. A layer called several times per forward with different output shapes keeps
    one count vector per neuron shape (each shape's neurons count separately).
    """

    def __init__(self, model: nn.Module):
        self.layers = spiking_layers(model)
        self.counts = {name: _LayerCounts() for name in self.layers}
        modules = dict(model.named_modules())
        self.hooks = [modules[name].register_forward_hook(self._hook(name)) for name in self.layers]

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.counts[name].add(output)

        return hook

    def __enter__(self) -> "FiringRateMeter":
        return self

    def __exit__(self, *exc) -> None:
        self.remove_hooks()

    def remove_hooks(self) -> None:
        for handle in self.hooks:
            handle.remove()
        self.hooks = []

    def _totals(self, device: torch.device) -> torch.Tensor:
        """``[n_layers, 2]`` float64 (spikes, neuron-steps), summed over ranks."""
        sums = torch.zeros(len(self.layers), 2, dtype=torch.float64, device=device)
        for i, name in enumerate(self.layers):
            layer = self.counts[name]
            if layer.spikes is not None:
                sums[i, 0] = layer.spikes.to(device)
            sums[i, 1] = layer.steps
        return all_reduce_sum(sums)

    def compute(self, device: torch.device) -> dict[str, float]:
        if not self.layers:
            return {}
        sums = self._totals(device)
        rates = (sums[:, 0] / sums[:, 1].clamp(min=1)).tolist()
        result = dict(zip(self.layers, rates))
        result["mean"] = sum(rates) / len(rates)
        result["overall"] = float(sums[:, 0].sum() / sums[:, 1].sum().clamp(min=1))
        result["sparsity"] = 1.0 - result["overall"]
        return result

    def _silent(self, device: torch.device) -> tuple[list[int], list[float]]:
        """Per layer: (neurons, silent neurons), from per-neuron counts summed over ranks.

        Ranks whose neuron shapes differ (the counts cannot be added index by index) give NaN silent counts.
        """
        flat = [self.counts[name].flat_counts(device) for name in self.layers]
        local = float(sum(f.numel() for f in flat))
        check = all_reduce_sum(torch.tensor([1.0, local, local * local], dtype=torch.float64, device=device))
        ranks, total, squares = check.tolist()
        neurons = [f.numel() for f in flat]
        if squares * ranks != total * total:  # equal sizes on every rank iff sum(n^2) * ranks == (sum n)^2
            return neurons, [math.nan] * len(flat)
        if not flat or local == 0:
            return neurons, [0.0] * len(flat)
        summed = all_reduce_sum(torch.cat(flat)).split(neurons)
        return neurons, [float((counts == 0).sum()) for counts in summed]

    def compute_detailed(self, device: torch.device) -> dict:
        """``{"layers": {name: {"rate", "sparsity", "silent_fraction", "neurons"}}, "overall": {same keys}}``.

        ``rate`` is spikes per neuron per step, ``sparsity = 1 - rate``, ``silent_fraction`` the fraction of
        the layer's ``neurons`` that never fired (NaN for a layer that never ran); "overall" pools all layers.
        """
        if not self.layers:
            empty = {"rate": math.nan, "sparsity": math.nan, "silent_fraction": math.nan, "neurons": 0}
            return {"layers": {}, "overall": empty}
        sums = self._totals(device).tolist()
        neurons, silent = self._silent(device)
        layers = {}
        for name, (spikes, steps), n, s in zip(self.layers, sums, neurons, silent):
            rate = spikes / max(steps, 1.0)
            silent_fraction = s / n if n else math.nan
            layers[name] = {"rate": rate, "sparsity": 1.0 - rate, "silent_fraction": silent_fraction, "neurons": n}
        spikes, steps = sum(s for s, _ in sums), sum(t for _, t in sums)
        n_all = sum(neurons)
        rate = spikes / max(steps, 1.0)
        silent_fraction = sum(silent) / n_all if n_all else math.nan
        overall = {"rate": rate, "sparsity": 1.0 - rate, "silent_fraction": silent_fraction, "neurons": n_all}
        return {"layers": layers, "overall": overall}


def format_rate_table(detailed: dict) -> str:
    """A console table of :meth:`FiringRateMeter.compute_detailed`: layer, rate, sparsity, silent %, neurons."""
    rows = [(name, d) for name, d in detailed.get("layers", {}).items()] + [("overall", detailed["overall"])]
    width = max([len("layer")] + [len(name) for name, _ in rows])
    header = f"{'layer':<{width}}  {'rate':>8}  {'sparsity':>8}  {'silent %':>8}  {'neurons':>10}"
    lines = [header, "-" * len(header)]
    for name, d in rows:
        if name == "overall":
            lines.append("-" * len(header))
        silent = 100 * d["silent_fraction"]
        lines.append(f"{name:<{width}}  {d['rate']:>8.4f}  {d['sparsity']:>8.4f}  {silent:>8.2f}  {d['neurons']:>10d}")
    return "\n".join(lines)


class TokenMeter:
    """Token-level negative log-likelihood summed on the device: ``update(nll [B, L], targets [B, L])`` adds the
    NLL (nats) of every predicted token (targets != ``ignore_index``); :meth:`compute` makes one synchronisation
    (and the all-reduce across ranks) and gives ``{"loss": nats/token, "ppl", "bits_per_token", "tokens"}``."""

    def __init__(self, ignore_index: int = -100):
        self.ignore_index = ignore_index
        self.sums: torch.Tensor | None = None  # float64 [nll sum, tokens]

    def update(self, nll: torch.Tensor, target: torch.Tensor, loss: torch.Tensor | None = None) -> None:
        valid = target != self.ignore_index
        row = torch.stack([torch.where(valid, nll.detach().double(), 0.0).sum(), valid.sum().double()])
        self.sums = row if self.sums is None else self.sums + row

    def compute(self, device: torch.device) -> dict[str, float]:
        sums = self.sums if self.sums is not None else torch.zeros(2, dtype=torch.float64, device=device)
        nll_sum, tokens = all_reduce_sum(sums.to(device, torch.float64)).tolist()
        loss = nll_sum / max(tokens, 1.0)
        return {"loss": loss, "ppl": math.exp(min(loss, 700.0)), "bits_per_token": loss / math.log(2.0),
                "tokens": int(tokens)}
