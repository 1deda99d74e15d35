"""Evaluation on a loader (a classifier: loss, top-1/top-5; a language model: loss, perplexity, bits per token) with
per-layer firing rates; logits of two models compared."""

from __future__ import annotations

import contextlib

import torch
from spikingjelly.activation_based.functional import reset_net
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from snn_engine.measure.metrics import FiringRateMeter
from snn_engine.tasks import ClassificationTask


def to_device(x, device: torch.device, dtype: torch.dtype | None = None):
    """Move a batch input (a tensor, or a tuple/list of tensors such as a retrieval pair) to ``device``;
    floating tensors are cast to ``dtype`` when given, token ids stay integer."""
    if isinstance(x, (tuple, list)):
        return type(x)(to_device(item, device, dtype) for item in x)
    x = x.to(device, non_blocking=True)
    return x.to(dtype) if dtype is not None and x.is_floating_point() else x


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype | None = None,
                   autocast: contextlib.AbstractContextManager | None = None, limit_batches: int = 0,
                   progress: bool = False, detailed: bool = False, task: ClassificationTask | None = None) -> dict:
    """Run ``model`` in eval mode over ``loader`` for ``task`` (default: classification, ``[B, C, H, W]`` ->
    ``[T, B, K]`` or a sequence model -> ``[B, K]``; see :mod:`snn_engine.tasks`).

    Returns the task's metrics (classification ``{"loss", "acc1", "acc5"}``: plain cross-entropy on the
    time-averaged logits, no smoothing, as the papers report; language model ``{"loss", "ppl", "bits_per_token",
    "tokens"}``) and ``"firing_rate": {layer: rate, "mean", "overall", "sparsity"}``, reduced over ranks. With
    ``detailed``, also ``"spikes"``: per-layer rate, sparsity and silent-neuron fraction
    (:meth:`~snn_engine.measure.metrics.FiringRateMeter.compute_detailed`).
    """
    task = task or ClassificationTask()
    was_training = model.training
    model.eval()
    meter = task.eval_meter()
    with FiringRateMeter(model) as rates:
        total = min(len(loader), limit_batches) if limit_batches else len(loader)
        for i, (x, y) in enumerate(tqdm(loader, total=total, desc="validate", leave=False, disable=not progress)):
            if limit_batches and i >= limit_batches:
                break
            x, y = to_device(x, device, dtype), y.to(device, non_blocking=True)
            with autocast or contextlib.nullcontext():
                out = task.forward(model, x, y)
            task.update_eval(meter, out, y)
            reset_net(model)
        firing = rates.compute(device)
        spikes = rates.compute_detailed(device) if detailed else None
    model.train(was_training)
    result = {**meter.compute(device), "firing_rate": firing}
    return {**result, "spikes": spikes} if detailed else result


@torch.no_grad()
def compare_logits(model: nn.Module, folded: nn.Module, loader: DataLoader, device: torch.device,
                   dtype: torch.dtype | None = None, autocast: contextlib.AbstractContextManager | None = None,
                   limit_batches: int = 0) -> dict:
    """Max |logit difference| (over steps, samples, classes) and prediction agreement of two models.

    Returns ``{"max_logit_diff": float, "prediction_agreement": fraction, "compared_samples": int}``.
    """
    model.eval()
    folded.eval()
    worst, agree, count = 0.0, 0, 0
    for i, (x, _) in enumerate(loader):
        if limit_batches and i >= limit_batches:
            break
        x = to_device(x, device, dtype)
        with autocast or contextlib.nullcontext():
            a, b = model(x), folded(x)
        reset_net(model)
        reset_net(folded)
        worst = max(worst, float((a.double() - b.double()).abs().max()))
        agree += int((a.mean(0).argmax(-1) == b.mean(0).argmax(-1)).sum())
        count += a.shape[1]
    return {"max_logit_diff": worst, "prediction_agreement": agree / max(count, 1), "compared_samples": count}
