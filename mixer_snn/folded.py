"""Inference-only building blocks of a BN-folded spiking sparse-MLP (made by :func:`mixer_snn.fold.fold_model`).

Every module here keeps the tensor contract of the training block it replaces (time-major, channels-last
``[T, B, H, W, C]`` or its ``[T*B, ...]`` view). The per-time-step scale of ``norm="tebn"`` is folded into
per-step weights: a folded linear map holds ``S`` plain ``nn.Linear``/``nn.Conv2d`` modules (``S = 1``, or
``S = T`` for tebn) and applies module ``t`` to time step ``t``. Plain torch modules mean that operation
counters and exporters see ordinary layers.

What cannot be merged into a weight shared over token positions (the channel MLP's per-position BN) is
kept explicit and exact: :class:`PositionBias` (an addition), :class:`ThresholdNeuron` (a per-position
threshold; multiplication-free), :class:`PositionScale` (one true multiplication per neuron and step) or
:class:`PositionLinear` (per-position weight copies; multiplication-free, P times the memory).

The folded blocks and heads (:class:`FoldedTokenBlock`, :class:`FoldedChannelBlock`, :class:`FoldedHead`,
:class:`FoldedLIFHead`) are assembled from these parts by :mod:`mixer_snn.fold`; the MFI audit and the NIR exporter
read them from here, so neither needs the folding code.
"""

from __future__ import annotations

import torch
from torch import nn

from snn_engine.measure.ops import OpContext, OpCount, is_binary


def apply_per_step(modules: nn.ModuleList, x: torch.Tensor, steps: int) -> torch.Tensor:
    """Apply ``modules[t]`` to time step ``t`` of a time-major ``x`` (``[T, ...]`` or ``[T*N, ...]``).

    With one module it is applied to the whole tensor. ``steps`` is T (the leading axis is ``T`` or ``T*N``).
    """
    if len(modules) == 1:
        return modules[0](x)
    chunks = x.chunk(steps, dim=0)
    if len(chunks) != len(modules):
        raise ValueError(f"folded per-step layer has {len(modules)} steps but the input has {len(chunks)}")
    return torch.cat([module(chunk) for module, chunk in zip(modules, chunks)], dim=0)


class FoldedConv(nn.Module):
    """Conv (+ folded BN) on channels-last tensors: ``[T, B, H, W, Cin]`` -> ``[T, B, H', W', Cout]``.

    Replaces :class:`~mixer_snn.blocks.ConvBN` and :class:`~mixer_snn.blocks.Stem`. ``convs`` holds one
    ``nn.Conv2d`` with bias per step (tebn) or a single one. ``repeat_T`` (stem only): a static image
    ``[B, Cin, H, W]`` is convolved once per distinct weight and repeated over ``repeat_T`` steps.
    """

    def __init__(self, convs: nn.ModuleList, repeat_T: int | None = None):
        super().__init__()
        self.convs = convs
        self.repeat_T = repeat_T

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.repeat_T is not None and x.dim() == 4:  # static image [B, Cin, H, W]
            T = self.repeat_T
            if len(self.convs) == 1:
                y = self.convs[0](x).permute(0, 2, 3, 1)
                return y.unsqueeze(0).expand(T, *y.shape)
            return torch.stack([conv(x).permute(0, 2, 3, 1) for conv in self.convs])
        if self.repeat_T is not None:  # time-major images [T, B, Cin, H, W]
            T = x.shape[0]
            y = apply_per_step(self.convs, x.flatten(0, 1), T)
            return y.permute(0, 2, 3, 1).unflatten(0, (T, -1))
        T = x.shape[0]
        y = apply_per_step(self.convs, x.flatten(0, 1).permute(0, 3, 1, 2), T)
        return y.permute(0, 2, 3, 1).unflatten(0, (T, -1))


class FoldedTokenMixing(nn.Module):
    """Token projection along ``axis`` with folded BN, then the neuron: spikes ``[T,B,H,W,C]`` -> spikes.

    ``proj`` holds ``nn.Linear(n, n)`` per step (or one) applied to the positions along ``axis``.
    """

    def __init__(self, proj: nn.ModuleList, axis: str, lif: nn.Module):
        super().__init__()
        self.proj, self.axis, self.lif = proj, axis, lif

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        dim = 2 if self.axis == "h" else 3
        y = apply_per_step(self.proj, x.transpose(dim, -1), T).transpose(dim, -1)
        return self.lif(y.contiguous())


class SpikeAffine(nn.Module):
    """``x * scale + bias`` per channel (last axis) and step: ``[T, ..., C]`` -> same shape.

    Holds a BN on spikes that has no linear map before it (the MLP-S identity branch ``LIF(BN(x))``).
    On binary input it is a selection (``bias`` or ``scale + bias``): one accumulate per spike, no
    multiplication. ``scale``, ``bias``: ``[S, C]`` (S = 1 or T).
    """

    def __init__(self, scale: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, S = x.shape[0], self.scale.shape[0]
        shape = (S,) + (1,) * (x.dim() - 2) + (self.scale.shape[-1],)
        y = x.unflatten(0, (S, T // S)) if S > 1 else x.unsqueeze(0)
        y = y * self.scale.view(shape[0], 1, *shape[1:]) + self.bias.view(shape[0], 1, *shape[1:])
        return y.flatten(0, 1) if S > 1 else y.squeeze(0)

    def count_ops(self, inputs: tuple, output: torch.Tensor, ctx: OpContext) -> OpCount:
        x = inputs[0]
        dense = x.numel() / max(ctx.time_steps, 1)
        return OpCount(ac=float(torch.count_nonzero(x)), dense=dense) if is_binary(x) else OpCount(mac=x.numel(), dense=dense)


class PositionBias(nn.Module):
    """Adds a per-token-position bias: ``[T, B, H, W, F]`` + ``bias [S, H, W, F]`` (S = 1 or T). Additions only."""

    def __init__(self, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        S = self.bias.shape[0]
        if S == 1:
            return x + self.bias
        return x + self.bias.unsqueeze(1)


class PositionScale(nn.Module):
    """Multiplies by a per-token-position scale: ``[T, B, H, W, F]`` * ``scale [H, W, 1]``.

    The exact treatment of a per-position BN whose output is summed with other currents: one true
    multiplication per neuron input and time step (real-valued input, counted as MACs).
    """

    energy_compute_unseen = True  # snn_engine.measure.energy_unseen: an elementwise product SpikingJelly's counters skip

    def __init__(self, scale: torch.Tensor):
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale

    def count_ops(self, inputs: tuple, output: torch.Tensor, ctx: OpContext) -> OpCount:
        x = inputs[0]
        return OpCount(mac=x.numel(), dense=x.numel() / max(ctx.time_steps, 1))


class PositionLinear(nn.Module):
    """A linear map with its own weight per token position: ``[T, B, H, W, Fin]`` -> ``[T, B, H, W, Fout]``.

    ``weight [S, H, W, Fout, Fin]`` (S = 1 or T). The per-position BN is merged into per-position copies of
    the weight: multiplication-free, at H*W times the memory of the shared weight.
    """

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.weight.shape[0] == 1:
            return torch.einsum("hwoi,tbhwi->tbhwo", self.weight[0], x)
        return torch.stack([torch.einsum("hwoi,bhwi->bhwo", w_t, x_t) for w_t, x_t in zip(self.weight, x)])

    def count_ops(self, inputs: tuple, output: torch.Tensor, ctx: OpContext) -> OpCount:
        x, fan_out = inputs[0], self.weight.shape[-2]
        dense = x.numel() * fan_out / max(ctx.time_steps, 1)
        if is_binary(x):
            return OpCount(ac=float(torch.count_nonzero(x)) * fan_out, dense=dense)
        return OpCount(mac=x.numel() * fan_out, dense=dense)


class ThresholdNeuron(nn.Module):
    """Exact multi-step LIF / PLIF / IF with a per-element threshold and firing direction: ``[T, ...]`` -> spikes.

    A BN scale ``s`` (per token position) in front of a neuron with reset to 0 is removed by the positive
    homogeneity of the dynamics: ``neuron(s * I)`` fires exactly when the membrane of ``neuron(I)``
    reaches ``v_threshold / s`` (from below for ``s > 0``, from above for ``s < 0``). ``threshold`` and
    ``direction`` (+1/-1) broadcast against one time step ``[...]``. ``decay`` is ``1/tau`` (LIF), the PLIF's
    ``sigmoid(w)``, or 0 (IF); ``v_reset`` 0.0 (hard) or None (soft reset by the threshold).
    """

    emits_spikes = True

    def __init__(self, threshold: torch.Tensor, direction: torch.Tensor, decay: float, decay_input: bool,
                 v_reset: float | None):
        super().__init__()
        self.register_buffer("threshold", threshold)
        self.register_buffer("direction", direction)
        self.decay, self.decay_input, self.v_reset = float(decay), bool(decay_input), v_reset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        v = torch.zeros_like(x[0])
        spikes = []
        for x_t in x:
            if self.decay == 0.0:
                h = v + x_t
            elif self.decay_input:
                h = v + (x_t - v) * self.decay
            else:
                h = v - v * self.decay + x_t
            s = ((h - self.threshold) * self.direction >= 0).to(x.dtype)
            v = h * (1.0 - s) if self.v_reset is not None else h - self.threshold * s
            spikes.append(s)
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return f"decay={self.decay}, decay_input={self.decay_input}, v_reset={self.v_reset}"


class FoldedTokenBlock(nn.Module):
    """Token block with folded BNs: spikes ``[T, B, H, W, C]`` -> analog current (same shape)."""

    def __init__(self, mix_h: FoldedTokenMixing, mix_w: FoldedTokenMixing, fuse: nn.ModuleList,
                 identity_affine: SpikeAffine | None, identity_lif: nn.Module | None):
        super().__init__()
        self.mix_h, self.mix_w, self.fuse = mix_h, mix_w, fuse
        self.identity_affine, self.identity_lif = identity_affine, identity_lif

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.identity_affine is None else self.identity_lif(self.identity_affine(x))
        return apply_per_step(self.fuse, torch.cat((identity, self.mix_h(x), self.mix_w(x)), dim=-1), x.shape[0])


class FoldedChannelBlock(nn.Module):
    """Channel MLP with folded BNs: spikes ``[T, B, H, W, C]`` -> analog current (same shape).

    ``fc1`` -> [``scale1``] -> [``bias1``] -> ``lif`` -> ``fc2`` -> [``scale2``] -> [``bias2``]; see :mod:`mixer_snn.fold`.
    """

    def __init__(self, fc1: nn.ModuleList, scale1: PositionScale | None, bias1: PositionBias | None, lif: nn.Module,
                 fc2: nn.Module, scale2: PositionScale | None, bias2: PositionBias | None):
        super().__init__()
        self.fc1, self.scale1, self.bias1, self.lif = fc1, scale1, bias1, lif
        self.fc2, self.scale2, self.bias2 = fc2, scale2, bias2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        z = apply_per_step(self.fc1, x, T)
        z = z if self.scale1 is None else self.scale1(z)
        z = self.lif(z if self.bias1 is None else self.bias1(z))
        y = apply_per_step(self.fc2, z, T) if isinstance(self.fc2, nn.ModuleList) else self.fc2(z)
        y = y if self.scale2 is None else self.scale2(y)
        return y if self.bias2 is None else self.bias2(y)


class FoldedHead(nn.Module):
    """Final BN + spatial mean + Linear, folded: spikes ``[T, B, h, w, C]`` -> logits ``[T, B, K]``.

    BN and the 1/(h*w) of the mean are merged into ``weight [S, K, C]`` (S = 1, or T for tebn) applied to
    the per-channel spike counts: each spike accumulates one weight column (counted as ACs).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        counts = x.sum(dim=(2, 3))  # [T, B, C]
        if self.weight.shape[0] == 1:
            return counts @ self.weight[0].T + self.bias[0]
        return torch.stack([c @ w.T + b for c, w, b in zip(counts, self.weight, self.bias)])

    def count_ops(self, inputs: tuple, output: torch.Tensor, ctx: OpContext) -> OpCount:
        x, fan_out = inputs[0], self.weight.shape[1]
        dense = x.shape[0] * x.shape[1] * x.shape[-1] * fan_out / max(ctx.time_steps, 1)
        return OpCount(ac=float(torch.count_nonzero(x)) * fan_out, dense=dense)


class FoldedLIFHead(nn.Module):
    """Head with a neuron (``head_lif=True``): spike counts ``[T, B, C]`` -> per-channel affine (the pooled
    BN, real-valued multiplications) -> neuron -> ``nn.Linear`` on spikes. Input ``[T, B, h, w, C]``."""

    def __init__(self, affine: SpikeAffine, lif: nn.Module, linear: nn.Linear):
        super().__init__()
        self.affine, self.lif, self.linear = affine, lif, linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.lif(self.affine(x.sum(dim=(2, 3)))))
