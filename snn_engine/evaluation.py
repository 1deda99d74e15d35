"""Evaluation of a classifier on a loader: loss, top-1/top-5 and per-layer firing rates."""

from __future__ import annotations

import contextlib

import torch
from spikingjelly.activation_based.functional import reset_net
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from snn_engine.metrics import ClassificationMeter, FiringRateMeter


@torch.no_grad()
def evaluate_model(model: nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype | None = None,
                   autocast: contextlib.AbstractContextManager | None = None, limit_batches: int = 0,
                   progress: bool = False) -> dict:
    """Run ``model`` (``[B, C, H, W]`` -> ``[T, B, K]``) in eval mode over ``loader``.

    Returns ``{"loss", "acc1", "acc5", "firing_rate": {layer: rate, "mean", "overall"}}``, reduced
    over ranks; plain cross-entropy on the time-averaged logits (no smoothing), as the papers report.
    """
    was_training = model.training
    model.eval()
    meter = ClassificationMeter()
    with FiringRateMeter(model) as rates:
        total = min(len(loader), limit_batches) if limit_batches else len(loader)
        for i, (x, y) in enumerate(tqdm(loader, total=total, desc="validate", leave=False, disable=not progress)):
            if limit_batches and i >= limit_batches:
                break
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if dtype is not None:
                x = x.to(dtype)
            with autocast or contextlib.nullcontext():
                logits = model(x).float().mean(0)
            loss = torch.nn.functional.cross_entropy(logits, y)
            meter.update(logits, y, loss.item())
            reset_net(model)
        firing = rates.compute(device)
    model.train(was_training)
    return {**meter.compute(device), "firing_rate": firing}
