"""Normalisation layers of the spiking sparse-MLP, one small wrapper per kind of site.

Every batch norm is a plain :class:`torch.nn.BatchNorm1d`/``2d`` held as the attribute ``bn`` of a wrapper,
so ``nn.SyncBatchNorm.convert_sync_batchnorm`` and BN folding find it. It always receives a tensor whose
leading axis is time-major flattened (``[T*B*..., F, ...]``, T outermost), hence its statistics are pooled
over T and B (and the other non-feature axes), exactly as in the reference's multi-step BN.

Kinds (``norm=`` of the model):

- ``bn``: plain BN.
- ``tdbn``: threshold-dependent BN; plain BN whose weight starts at ``alpha * v_threshold`` (= 1).
- ``tebn``: temporal-effective BN; BN output of time step t times a learnable ``scale[t]`` (shape ``[T]``).
- ``ln``: LayerNorm inside the token and channel MLPs only (:class:`TokenAxisNorm`, :class:`ChannelMLPNorm`);
  every other site (stem, SPE, fuse, identity, final) stays ``bn``.
"""

from __future__ import annotations

import torch
from torch import nn

from snn_engine.errors import UserError

NORMS = ("bn", "tdbn", "tebn", "ln")
CHANNEL_BN_AXES = ("token", "channel")


class BatchNormT(nn.Module):
    """BN over axis 1 of a ``[T*B*..., F]``, ``[T*B*..., F, L]`` or ``[T*B, F, H, W]`` tensor (same shape out).

    The leading axis must be time-major (``t`` outermost); ``[T*B, F, H, W]`` may be a channels-last view.

    ``kind`` is ``bn``, ``tdbn`` or ``tebn`` (``ln`` falls back to ``bn``: LayerNorm only replaces the norms
    inside the MLPs). ``T`` is needed by ``tebn`` only; its leading axis must then be a multiple of ``T``.
    """

    def __init__(self, num_features: int, kind: str = "bn", T: int = 1, dims: int = 1,
                 tdbn_alpha: float = 1.0, v_threshold: float = 1.0):
        super().__init__()
        if kind not in NORMS:
            raise UserError(f"unknown model.norm={kind!r}; choose one of {NORMS}")
        self.bn = nn.BatchNorm2d(num_features) if dims == 2 else nn.BatchNorm1d(num_features)
        if kind == "tdbn":
            nn.init.constant_(self.bn.weight, tdbn_alpha * v_threshold)
        self.T = int(T)
        self.scale = nn.Parameter(torch.ones(self.T)) if kind == "tebn" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(x)
        if self.scale is None:
            return y
        if y.shape[0] % self.T:
            raise UserError(f"tebn was built for T={self.T} but got {y.shape[0]} flattened samples; "
                            "set model.T to the number of time steps of the input")
        shape = (self.T,) + (1,) * y.dim()
        return (y.unflatten(0, (self.T, -1)) * self.scale.view(shape)).flatten(0, 1)

    def extra_repr(self) -> str:
        return f"tebn T={self.T}" if self.scale is not None else ""


class TokenAxisNorm(nn.Module):
    """Norm after a token projection along H or W: ``[T*B, H, W, C]`` -> ``[T*B, H, W, C]`` (channels last).

    BN kinds: ``BatchNorm1d(n)`` with one gamma/beta per position along ``axis``, statistics over T*B, C
    and the other spatial axis (the reference's ``BN2d(W)`` on ``[T*B, W, C, H]``); it sees the views
    ``[T*B, H, W*C]`` (axis h) or ``[T*B*H, W, C]`` (axis w), so no permute is needed.
    ``ln``: ``LayerNorm`` per (sample, position along ``axis``) over (other spatial axis, C), as the
    reference's LN variant (its weight is stored as ``(other, C)`` instead of ``(C, other)``).
    """

    def __init__(self, kind: str, channels: int, n_axis: int, n_other: int, axis: str, T: int):
        super().__init__()
        if axis not in ("h", "w"):
            raise ValueError(f"axis must be 'h' or 'w', got {axis!r}")
        self.axis = axis
        if kind == "ln":
            self.ln = nn.LayerNorm((n_other, channels))
            self.norm = None
        else:
            self.ln = None
            self.norm = BatchNormT(n_axis, kind, T, dims=1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        tb, h, w, c = y.shape
        if self.norm is not None:
            if self.axis == "h":
                return self.norm(y.view(tb, h, w * c)).view(tb, h, w, c)
            return self.norm(y.view(tb * h, w, c)).view(tb, h, w, c)
        if self.axis == "h":
            return self.ln(y)
        return self.ln(y.transpose(1, 2)).transpose(1, 2).contiguous()  # normalise (H, C) per w


class ChannelMLPNorm(nn.Module):
    """Norm after a channel-MLP linear: ``[T*B, H, W, F]`` -> ``[T*B, H, W, F]`` (channels last).

    ``axis="token"`` (faithful): ``BatchNorm1d(H*W)`` on ``[T*B, H*W, F]``, one gamma/beta per token
    position, statistics over T*B and the F features. ``axis="channel"``: ``BatchNorm1d(F)`` on
    ``[T*B*H*W, F]``, per feature. ``kind="ln"``: ``LayerNorm(F)`` per token (``axis`` is then irrelevant).
    """

    def __init__(self, kind: str, features: int, n_tokens: int, axis: str, T: int):
        super().__init__()
        if axis not in CHANNEL_BN_AXES:
            raise UserError(f"unknown model.channel_bn_axis={axis!r}; choose one of {CHANNEL_BN_AXES}")
        self.axis = axis
        if kind == "ln":
            self.ln = nn.LayerNorm(features)
            self.norm = None
        else:
            self.ln = None
            self.norm = BatchNormT(n_tokens if axis == "token" else features, kind, T, dims=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        tb, h, w, f = z.shape
        if self.norm is None:
            return self.ln(z)
        if self.axis == "token":
            return self.norm(z.view(tb, h * w, f)).view(tb, h, w, f)
        return self.norm(z.view(tb * h * w, f)).view(tb, h, w, f)
