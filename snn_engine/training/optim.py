"""Optimizer parameter groups and learning-rate schedules.

Parameter groups follow two rules: no weight decay on norms, biases and other 1-D parameters, and
per-parameter hints (state-spaces/s4 style): a model may attach ``param._optim = {"lr": 1e-3,
"weight_decay": 0.0}`` to any parameter and it lands in its own group with those settings.

Schedules are ``LambdaLR`` multipliers so their state dicts hold only numbers (``weights_only`` safe).
Each schedule carries ``interval`` ("step" or "epoch"): the engine calls ``scheduler.step()`` after
every optimizer step or after every epoch accordingly, and ``total`` is counted in that unit.
"""

from __future__ import annotations

import math
from typing import Iterable

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from snn_engine.errors import UserError


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Split trainable parameters into groups: decayed, not decayed, and one group per distinct hint."""
    decay, no_decay, hinted = [], [], {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        hint = getattr(param, "_optim", None)
        if hint:
            key = tuple(sorted(hint.items()))
            hinted.setdefault(key, []).append(param)
        elif param.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(param)
        else:
            decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups += [{"params": params, **dict(key)} for key, params in hinted.items()]
    return [g for g in groups if g["params"]]


def build_optimizer(partial_optimizer, model: nn.Module) -> torch.optim.Optimizer:
    """Instantiate a Hydra ``_partial_`` optimizer on the grouped parameters of ``model``."""
    weight_decay = partial_optimizer.keywords.get("weight_decay", 0.0)
    return partial_optimizer(params=param_groups(model, weight_decay))


def _cosine_factor(progress: float, min_lr_factor: float) -> float:
    return min_lr_factor + (1.0 - min_lr_factor) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    total: int,
    interval: str = "epoch",
    warmup: int = 0,
    warmup_start_factor: float = 0.01,
    min_lr_factor: float = 0.0,
    kind: str = "cosine",
) -> LambdaLR:
    """Linear warm-up over ``warmup`` units from ``warmup_start_factor * lr``, then cosine or constant.

    ``kind="cosine"`` with ``warmup=0`` and ``interval="epoch"`` is ``CosineAnnealingLR(T_max=total)``
    stepped per epoch, the sparse-MLP paper's schedule. ``kind="constant"`` keeps the base lr.
    """
    if interval not in ("step", "epoch"):
        raise UserError(f"scheduler.interval={interval!r} is not step or epoch")
    if kind not in ("cosine", "constant"):
        raise UserError(f"scheduler.kind={kind!r} is not cosine or constant")
    if total < 1 or warmup < 0:
        raise UserError(f"scheduler needs total >= 1 and warmup >= 0 (got total={total}, warmup={warmup})")

    def factor(i: int) -> float:
        if i < warmup:
            return warmup_start_factor + (1.0 - warmup_start_factor) * i / warmup
        if kind == "constant":
            return 1.0
        return _cosine_factor((i - warmup) / max(1, total - warmup), min_lr_factor)

    scheduler = LambdaLR(optimizer, factor)
    scheduler.interval = interval
    return scheduler


def current_lrs(optimizer: torch.optim.Optimizer) -> Iterable[float]:
    return [group["lr"] for group in optimizer.param_groups]
