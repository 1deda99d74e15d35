"""Losses on per-step logits ``[T, B, K]``.

Targets are class indices ``[B]`` or soft distributions ``[B, K]`` (after Mixup/CutMix, label smoothing
already folded in); ``torch.nn.functional.cross_entropy`` takes both (for soft targets it is
``sum(-target * log_softmax(logits))``, timm's ``SoftTargetCrossEntropy``, without importing timm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from snn_engine.measure.metrics import time_averaged


class TimeAveragedCrossEntropy(nn.Module):
    """Cross-entropy on the logits averaged over time steps (the sparse-MLP paper's loss).

    ``logits [T, B, K]`` (or ``[B, K]``), ``target [B]`` or ``[B, K]`` -> scalar.
    """

    def __init__(self, label_smoothing: float = 0.0):
        super().__init__()
        self.label_smoothing = label_smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mean_logits = time_averaged(logits)
        if target.ndim == 2:
            return F.cross_entropy(mean_logits, target)
        return F.cross_entropy(mean_logits, target, label_smoothing=self.label_smoothing)


class TETLoss(nn.Module):
    """Temporal efficient training loss (Deng et al. 2022), averaged over T as in the TET paper.

    ``mean_t[(1 - lam) * CE(o_t, y) + lam * MSE(o_t, phi)]`` with ``phi`` a constant ``phi_value``.
    ``logits [T, B, K]``, ``target [B]`` or ``[B, K]``.
    """

    def __init__(self, lam: float = 0.05, phi_value: float = 1.0, label_smoothing: float = 0.0):
        super().__init__()
        self.lam, self.phi_value = lam, phi_value
        self.ce = TimeAveragedCrossEntropy(label_smoothing)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        steps = logits.shape[0]
        ce = sum(self.ce(logits[t], target) for t in range(steps)) / steps
        mse = F.mse_loss(logits, torch.full_like(logits, self.phi_value))
        return (1.0 - self.lam) * ce + self.lam * mse


class TokenNLL(nn.Module):
    """Mean negative log-likelihood per predicted token, for language models whose forward returns the per-token
    NLL ``[B, L]`` (nats) given the targets (:class:`snn_engine.tasks.LanguageModelTask`): ``nll [B, L]``,
    ``target [B, L]`` (``ignore_index`` marks padding, whose NLL is left out) -> scalar."""

    def __init__(self, ignore_index: int = -100):
        super().__init__()
        self.ignore_index = ignore_index

    def forward(self, nll: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        return torch.where(valid, nll, 0.0).sum() / valid.sum().clamp(min=1)
