"""Building blocks of the spiking sparse-MLP (reference sections 1.2-1.6).

Layout: between modules every tensor is time-major and channels-last, ``[T, B, H, W, C]`` (spikes or
analog currents); the model converts from/to the user-facing ``[T, B, C, H, W]`` at its edges. Stateless
layers (conv, linear, BN) run on ``[T*B, ...]`` views, neurons get ``[T, B, H, W, C]``. Channels-last
makes the channel MLP a plain ``nn.Linear`` call on the last axis (the reference's ``[T, B, N, C]`` tokens)
and gives every BN a contiguous view with a long inner axis, which is what the CPU kernels need.

``neuron`` is a zero-argument factory returning a fresh multi-step spiking module; it is called once per
spiking layer.

Every map that reads spikes (the token matmuls, ``fuse``, ``fc1``, ``fc2``, the SPE convs after a neuron) runs
through :func:`snn_engine.training.spike_memory.spike_input`, which saves its binary input for backward as one byte per
spike instead of a float.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from mixer_snn.norms import BatchNormT, ChannelMLPNorm, TokenAxisNorm
from snn_engine.errors import UserError
from snn_engine.measure.ops import OpContext, OpCount, linear_ops
from snn_engine.training.spike_memory import spike_input

NeuronFactory = Callable[[], nn.Module]


def check_images(x: torch.Tensor, in_chans: int, img_size: int, norm: str, T: int) -> None:
    """Raise :class:`UserError` unless ``x`` is images ``[B, C, H, W]`` or ``[T', B, C, H, W]`` with ``C = in_chans``
    and ``H = W = img_size`` (and ``T' = T`` for ``norm="tebn"``): the input contract of the sparse-MLP and of its
    BN-folded form."""
    if x.dim() not in (4, 5):
        raise UserError(f"SparseMLPSNN expects images [B, C, H, W] or [T, B, C, H, W], got shape "
                        f"{tuple(x.shape)}; check the data set / encoding")
    c, h, w = x.shape[-3:]
    if (c, h, w) != (in_chans, img_size, img_size):
        raise UserError(f"input images are {c}x{h}x{w} but the model was built for {in_chans}x"
                        f"{img_size}x{img_size}; set model.img_size / model.in_chans to match the data")
    if x.dim() == 5 and norm == "tebn" and x.shape[0] != T:
        raise UserError(f"input has T={x.shape[0]} time steps but norm=tebn was built for T={T}; "
                        "set model.T to the input's number of time steps")


def bn_channels_last(norm: BatchNormT, y: torch.Tensor) -> torch.Tensor:
    """Per-channel BN2d of a channels-last ``[N, H, W, C]`` tensor (a zero-copy NCHW channels-last view)."""
    return norm(y.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class ConvBN(nn.Module):
    """Conv2d (no bias) + BN2d: ``[T, B, H, W, Cin]`` -> analog ``[T, B, H', W', Cout]``.

    Used for the stem (kernel = stride = patch), the 2x2/stride-2 downsampling of the non-SPE model and
    inside :class:`PatchCell`. The conv runs on a channels-last NCHW view of ``[T*B, H, W, Cin]``.
    """

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, padding: int, norm: str, T: int):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, bias=False)
        self.norm = BatchNormT(cout, norm, T, dims=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        y = self.conv(x.flatten(0, 1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return bn_channels_last(self.norm, y).reshape(T, B, *y.shape[1:])


class Stem(ConvBN):
    """Patch embedding of images: ``[B, Cin, H, W]`` or ``[T, B, Cin, H, W]`` -> analog ``[T, B, H/p, W/p, C]``.

    Conv(kernel = stride = ``patch``, no bias) + BN2d. A static image ``[B, Cin, H, W]`` (direct encoding)
    is convolved once and repeated ``T`` times before the BN: the same result as convolving the repeated
    image, with BN statistics still pooled over ``T*B``.
    """

    def __init__(self, cin: int, cout: int, patch: int, norm: str, T: int):
        super().__init__(cin, cout, patch, patch, 0, norm, T)
        self.T = T

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() == 4:
            T, B = self.T, images.shape[0]
            y = self.conv(images).permute(0, 2, 3, 1)  # [B, h, w, C]
            y = y.unsqueeze(0).expand(T, *y.shape).reshape(T * B, *y.shape[1:])
        else:
            T, B = images.shape[:2]
            y = self.conv(images.flatten(0, 1)).permute(0, 2, 3, 1).contiguous()
        return bn_channels_last(self.norm, y).reshape(T, B, *y.shape[1:])


class PatchCell(nn.Module):
    """Spiking Patch Encoding (ref 1.3): spikes ``[T, B, H, W, C/2]`` -> analog ``[T, B, H/2, W/2, C]``.

    With n = C/3: three parallel ConvBN3x3/s2 (C/2 -> n) give a1, a2, a3 (held as one conv to 3n channels
    and one BN(3n): the same parameters, one GEMM); then node1 = a1,
    node2 = a2 + ConvBN3x3(LIF_A(node1)), node3 = a3 + node1 + ConvBN3x3(LIF_B(node2)),
    output = concat_channels(node1, node2, node3).
    """

    def __init__(self, cin: int, cout: int, neuron: NeuronFactory, norm: str, T: int):
        super().__init__()
        self.n = cout // 3
        self.cell2node = ConvBN(cin, 3 * self.n, 3, 2, 1, norm, T)
        self.lif_a = neuron()
        self.node1_to_node2 = ConvBN(self.n, self.n, 3, 1, 1, norm, T)
        self.lif_b = neuron()
        self.node2_to_node3 = ConvBN(self.n, self.n, 3, 1, 1, norm, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a1, a2, a3 = self.cell2node(x).chunk(3, dim=-1)
        a1 = a1.contiguous()
        node2 = a2 + spike_input(self.node1_to_node2, self.lif_a(a1))
        node3 = a3 + a1 + spike_input(self.node2_to_node3, self.lif_b(node2))
        return torch.cat((a1, node2, node3), dim=-1)


def _left_matmul(rows: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``weight @ rows`` (the token projection) for rows [N, n, K] and weight [n, n], with the spike operand first
    for :func:`spike_input`. A ``bmm`` with the weight expanded (a view) saves ``rows`` itself for backward, where
    ``torch.matmul`` would save a transposed float copy that the compact spike storage cannot recognise."""
    return torch.bmm(weight.expand(rows.shape[0], -1, -1), rows)


class TokenMixing(nn.Module):
    """One sparse token-MLP branch (ref 1.4): spikes ``[T, B, H, W, C]`` -> spikes ``[T, B, H, W, C]``.

    ``proj`` is a Linear(n, n) with bias mixing the n positions along ``axis`` ("h" or "w"), shared over
    channels and the other axis (the reference's 1x1 conv on ``[T*B, W, C, H]``), applied as a matmul on
    ``[T*B, H, W*C]`` (h) or ``[T*B*H, W, C]`` (w); then :class:`~mixer_snn.norms.TokenAxisNorm` (one
    gamma/beta per position along ``axis``), then a neuron.
    """

    def __init__(self, channels: int, n: int, axis: str, neuron: NeuronFactory, norm: str, T: int):
        super().__init__()
        self.axis = axis
        self.proj = nn.Linear(n, n)
        self.norm = TokenAxisNorm(norm, channels, n, n, axis, T)
        self.lif = neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B, H, W, C = x.shape
        rows = x.reshape(T * B, H, W * C) if self.axis == "h" else x.reshape(T * B * H, W, C)
        y = spike_input(_left_matmul, rows, self.proj.weight) + self.proj.bias[:, None]
        return self.lif(self.norm(y.view(T * B, H, W, C)).view(T, B, H, W, C))

    def count_ops(self, inputs: tuple, output: torch.Tensor, ctx: OpContext) -> OpCount:
        """The projection only (its norm and neuron are counted by their own hooks): each input element
        meets the n weights of its row along ``axis``."""
        return linear_ops(inputs[0], self.proj.out_features, ctx)


class TokenBlock(nn.Module):
    """Spiking token block (ref 1.4): spikes ``[T, B, H, W, C]`` -> analog current ``a`` (same shape).

    ``a = BN(fuse(concat[identity, x_h, x_w]))``, ``fuse`` a 3C -> C linear without bias (the reference's
    1x1 conv). ``identity`` is the input spikes (SPE models) or ``LIF(BN(x))`` when ``identity_bn_lif``
    (the non-SPE MLP-S).
    """

    def __init__(self, channels: int, n: int, neuron: NeuronFactory, norm: str, T: int, identity_bn_lif: bool):
        super().__init__()
        self.mix_h = TokenMixing(channels, n, "h", neuron, norm, T)
        self.mix_w = TokenMixing(channels, n, "w", neuron, norm, T)
        if identity_bn_lif:
            self.identity_norm = BatchNormT(channels, norm, T, dims=1)
            self.identity_lif = neuron()
        else:
            self.identity_norm = self.identity_lif = None
        self.fuse = nn.Linear(3 * channels, channels, bias=False)
        self.fuse_norm = BatchNormT(channels, norm, T, dims=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        C = x.shape[-1]
        identity = x
        if self.identity_norm is not None:
            identity = self.identity_lif(self.identity_norm(x.reshape(-1, C)).view(x.shape))
        fused = spike_input(self.fuse, torch.cat((identity, self.mix_h(x), self.mix_w(x)), dim=-1))
        return self.fuse_norm(fused.view(-1, C)).view(x.shape)


class ChannelBlock(nn.Module):
    """Spiking channel block (ref 1.5): spikes ``[T, B, H, W, C]`` -> analog current ``b`` (same shape).

    Per token: Linear(C -> alpha*C) -> norm -> neuron -> Linear(alpha*C -> C) -> norm; the norms are per
    token position (``channel_bn_axis="token"``, faithful) or per feature ("channel").
    """

    def __init__(self, channels: int, n: int, alpha: int, neuron: NeuronFactory, norm: str, T: int, bn_axis: str):
        super().__init__()
        hidden = alpha * channels
        self.fc1 = nn.Linear(channels, hidden)
        self.norm1 = ChannelMLPNorm(norm, hidden, n * n, bn_axis, T)
        self.lif = neuron()
        self.fc2 = nn.Linear(hidden, channels)
        self.norm2 = ChannelMLPNorm(norm, channels, n * n, bn_axis, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        T, B = x.shape[:2]
        z = self.lif(self.norm1(spike_input(self.fc1, x).flatten(0, 1)).unflatten(0, (T, B)))
        return self.norm2(spike_input(self.fc2, z).flatten(0, 1)).unflatten(0, (T, B))


class MixerBlock(nn.Module):
    """One token block + one channel block with the stage-anchor wiring of ref 1.6.

    Inputs: spikes ``x`` and the stage anchor ``h`` (analog output of the stage's embedding), both
    ``[T, B, H, W, C]``. ``a = token(x)``, ``x' = lif_tok(h + a)``, ``b = channel(x')``, output spikes
    ``lif_ch(h + a + b)``. ``h`` is never updated (a non-accumulating membrane shortcut).
    """

    def __init__(self, channels: int, n: int, alpha: int, neuron: NeuronFactory, norm: str, T: int,
                 identity_bn_lif: bool, channel_bn_axis: str):
        super().__init__()
        self.token = TokenBlock(channels, n, neuron, norm, T, identity_bn_lif)
        self.lif_tok = neuron()
        self.channel = ChannelBlock(channels, n, alpha, neuron, norm, T, channel_bn_axis)
        self.lif_ch = neuron()

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        current = h + self.token(x)
        return self.lif_ch(current + self.channel(self.lif_tok(current)))
