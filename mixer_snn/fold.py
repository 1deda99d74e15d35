"""BatchNorm folding: a trained :class:`~mixer_snn.model.SparseMLPSNN` -> an inference model without BN.

This module does not import the model: :func:`fold_model` takes any module with the sparse-MLP's parts
(:data:`FOLDED_PARTS`), so the model can call it (``fold_for_inference``) without an import circle.

``fold_model(model)`` returns a :class:`FoldedSparseMLP` whose logits equal the eval-mode logits of
``model`` (same input contract, ``[T, B, K]`` out). Every BN that follows a conv/linear map with the same
output features is merged into that map's weight and bias (stem, SPE convs, the token projections per
position along H/W, the fuse linear, a per-feature channel-MLP BN, and the final BN through the spatial
mean into the head). ``norm="tebn"`` multiplies step t by ``k[t]``: folded into per-step weights (T copies).

The channel MLP's BN per token position (``channel_bn_axis="token"``, the reference's) cannot be merged
into one weight shared by all positions. ``position_bn`` picks the exact treatment:

- ``threshold`` (default): the first BN feeds a neuron directly, so its scale ``s_p`` becomes a per-position
  threshold ``v_th / s_p`` (and firing direction for ``s_p < 0``) and its shift a per-position bias:
  multiplication-free. The second BN's output is summed with other currents before its neuron, so its
  scale stays a per-position multiplication (:class:`~mixer_snn.folded.PositionScale`: one real multiply
  per channel, position and step, i.e. 1/(alpha*C*rate) of the block's accumulates).
- ``scale``: both per-position BNs stay as multiplications (simplest; neurons unchanged).
- ``replicate``: like ``threshold``, but the second BN is merged into per-position copies of ``fc2``
  (multiplication-free, H*W times fc2's memory: 3136 copies at stage 0 of the ImageNet models).

The LayerNorm variant (``norm="ln"``) cannot be folded: LN divides by per-sample statistics at inference.
"""

from __future__ import annotations

import copy

import torch
from spikingjelly.activation_based import neuron as sj_neuron
from torch import nn

from mixer_snn.blocks import ChannelBlock, ConvBN, MixerBlock, PatchCell, Stem, TokenBlock, TokenMixing, check_images
from mixer_snn.folded import (
    FoldedChannelBlock,
    FoldedConv,
    FoldedHead,
    FoldedLIFHead,
    FoldedTokenBlock,
    FoldedTokenMixing,
    PositionBias,
    PositionLinear,
    PositionScale,
    SpikeAffine,
    ThresholdNeuron,
)
from mixer_snn.mfi import audit, format_audit
from mixer_snn.norms import BatchNormT
from snn_engine.errors import UserError

POSITION_BN = ("threshold", "scale", "replicate")
#: what :func:`fold_model` reads of a :class:`~mixer_snn.model.SparseMLPSNN`; a module without them is refused
FOLDED_PARTS = ("stages", "head_norm", "head_lif", "head", "norm", "T", "in_chans", "img_size", "patch_size",
                "num_classes")


def foldable(model: nn.Module) -> bool:
    """Whether ``model`` has the parts of a sparse-MLP that :func:`fold_model` folds."""
    return all(hasattr(model, part) for part in FOLDED_PARTS)


def bn_affine(norm: BatchNormT) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN (+ tebn step scales) as ``y = scale * x + shift``: ``scale, shift`` ``[S, F]`` in float64."""
    bn = norm.bn
    if bn.running_mean is None or bn.running_var is None:
        raise UserError("cannot fold a BatchNorm without running statistics (track_running_stats=False)")
    scale = torch.ones_like(bn.running_var, dtype=torch.float64) if bn.weight is None else bn.weight.double()
    scale = scale / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = -bn.running_mean.double() * scale + (0.0 if bn.bias is None else bn.bias.double())
    if norm.scale is None:
        return scale[None], shift[None]
    k = norm.scale.detach().double()[:, None]
    return k * scale, k * shift


def _linears(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor, shift: torch.Tensor,
             dtype: torch.dtype, use_bias: bool = True) -> nn.ModuleList:
    """``S`` Linear layers computing ``scale[t] * (W x + b) + shift[t]`` (``scale, shift [S, out]``)."""
    out_f, in_f = weight.shape
    layers = nn.ModuleList()
    b = torch.zeros(out_f, dtype=torch.float64) if bias is None else bias.double()
    for s, c in zip(scale, shift):
        layer = nn.Linear(in_f, out_f, bias=use_bias).to(device=weight.device, dtype=dtype)
        layer.weight.data = (s[:, None] * weight.double()).to(dtype)
        if use_bias:
            layer.bias.data = (s * b + c).to(dtype)
        layers.append(layer)
    return _mark_steps(layers)


def _mark_steps(modules: nn.ModuleList) -> nn.ModuleList:
    """Per-step copies each run one time step: the ANN twin counts one of them (see snn_engine.measure.ops)."""
    if len(modules) > 1:
        for module in modules:
            module.ann_share = 1.0 / len(modules)
    return modules


def _convs(conv: nn.Conv2d, norm: BatchNormT, dtype: torch.dtype) -> nn.ModuleList:
    scale, shift = bn_affine(norm)
    convs = nn.ModuleList()
    for s, c in zip(scale, shift):
        folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                           conv.dilation, conv.groups, bias=True).to(device=conv.weight.device, dtype=dtype)
        folded.weight.data = (s.view(-1, 1, 1, 1) * conv.weight.double()).to(dtype)
        base = 0.0 if conv.bias is None else s * conv.bias.double()
        folded.bias.data = (c + base).to(dtype)
        convs.append(folded)
    return _mark_steps(convs)


def fold_conv(block: ConvBN) -> FoldedConv:
    """Stem or ConvBN -> :class:`FoldedConv` (BN merged per output channel)."""
    convs = _convs(block.conv, block.norm, block.conv.weight.dtype)
    return FoldedConv(convs, repeat_T=block.T if isinstance(block, Stem) else None)


def fold_token_mixing(mixing: TokenMixing) -> FoldedTokenMixing:
    """Projection along H/W + BN per position along that axis -> per-position rows of the projection."""
    scale, shift = bn_affine(mixing.norm.norm)
    proj = _linears(mixing.proj.weight, mixing.proj.bias, scale, shift, mixing.proj.weight.dtype)
    return FoldedTokenMixing(proj, mixing.axis, mixing.lif)


def fold_token_block(block: TokenBlock) -> FoldedTokenBlock:
    scale, shift = bn_affine(block.fuse_norm)
    fuse = _linears(block.fuse.weight, block.fuse.bias, scale, shift, block.fuse.weight.dtype)
    affine = None
    if block.identity_norm is not None:
        s, c = bn_affine(block.identity_norm)
        dtype = block.fuse.weight.dtype
        affine = SpikeAffine(s.to(dtype), c.to(dtype))
    return FoldedTokenBlock(fold_token_mixing(block.mix_h), fold_token_mixing(block.mix_w), fuse, affine,
                            block.identity_lif)


def threshold_neuron(node: nn.Module, scale: torch.Tensor, shift_dtype: torch.dtype) -> ThresholdNeuron:
    """A neuron equal to ``node(scale * I)`` that takes ``I``: threshold ``v_th / scale``, direction ``sign(scale)``."""
    if isinstance(node, sj_neuron.LIFNode):
        decay = 1.0 / float(node.tau)
    elif isinstance(node, sj_neuron.ParametricLIFNode):
        decay = float(node.w.detach().sigmoid())
    elif isinstance(node, sj_neuron.IFNode):
        decay = 0.0
    else:
        raise UserError(f"position_bn=threshold needs SpikingJelly LIF/PLIF/IF neurons, got {type(node).__name__}; "
                        "fold with position_bn=scale")
    if node.v_reset not in (None, 0.0):
        raise UserError(f"position_bn=threshold needs v_reset 0 or soft reset, got {node.v_reset}; "
                        "fold with position_bn=scale")
    if bool((scale == 0).any()):
        raise UserError("a per-position BN scale is exactly 0 (a constant current): fold with position_bn=scale")
    threshold = (float(node.v_threshold) / scale).to(shift_dtype)
    return ThresholdNeuron(threshold, torch.sign(scale).to(shift_dtype), decay, getattr(node, "decay_input", True),
                           node.v_reset)


def fold_channel_block(block: ChannelBlock, position_bn: str) -> FoldedChannelBlock:
    dtype = block.fc1.weight.dtype
    s1, c1 = bn_affine(block.norm1.norm)
    s2, c2 = bn_affine(block.norm2.norm)
    if block.norm1.axis == "channel":  # per feature: a plain fold
        return FoldedChannelBlock(_linears(block.fc1.weight, block.fc1.bias, s1, c1, dtype), None, None, block.lif,
                                  _linears(block.fc2.weight, block.fc2.bias, s2, c2, dtype), None, None)
    n = int(round(s1.shape[1] ** 0.5))
    grid = (n, n, 1)  # per token position p = (i, j); the BN's S axis is tebn's time steps
    # BN1 per position p with steps k_t:  k_t*(s_p*(W x + b) + c_p)
    # BN1 per position p, step scale k_t: y = k_t*(s_p*(W x + b) + c_p) = a_p*(r_t*(W x + b)) + c1[t, p]
    # with a_p = k_0*s_p (time-independent) and r_t = k_t/k_0 (1 without tebn); c1[t, p] = k_t*c_p.
    r1 = (s1[:, :1] / s1[:1, :1])[:, 0]
    a1 = s1[0]
    ones = torch.ones(block.fc1.out_features, dtype=torch.float64)
    fc1 = _linears(block.fc1.weight, block.fc1.bias, r1[:, None] * ones, torch.zeros(len(r1), ones.numel(),
                   dtype=torch.float64), dtype)
    if position_bn == "scale":
        scale1 = PositionScale(a1.view(grid).to(dtype))
        bias1 = PositionBias(c1.view(-1, *grid).to(dtype))
        lif: nn.Module = block.lif
    else:  # neuron(a_p * I) == neuron with threshold v_th / a_p fed I = r_t*(W x + b) + c1[t, p] / a_p
        scale1 = None
        bias1 = PositionBias((c1 / a1).view(-1, *grid).to(dtype))
        lif = threshold_neuron(block.lif, a1.view(grid), dtype)
    # BN2 per position: k_t*(s_p*(W2 z + b2) + c_p) = s_p*(k_t W2 z) + k_t*(s_p b2 + c_p)
    k2, pos_s2 = (s2[:, :1] / s2[:1, :1])[:, 0], s2[0]
    b2 = block.fc2.bias.double()
    bias2 = PositionBias((c2[:, :, None] + s2[:, :, None] * b2).view(-1, n, n, b2.numel()).to(dtype))
    if position_bn == "replicate":
        w = k2.view(-1, 1, 1, 1) * pos_s2.view(1, -1, 1, 1) * block.fc2.weight.double()  # [S, P, C, F]
        fc2: nn.Module = PositionLinear(w.view(w.shape[0], n, n, *w.shape[2:]).to(dtype))
        scale2 = None
    else:
        ones2 = torch.ones(block.fc2.out_features, dtype=torch.float64)
        fc2 = _linears(block.fc2.weight, None, k2[:, None] * ones2, torch.zeros_like(k2[:, None] * ones2), dtype,
                       use_bias=False)
        scale2 = PositionScale(pos_s2.view(grid).to(dtype))
    return FoldedChannelBlock(fc1, scale1, bias1, lif, fc2, scale2, bias2)


def fold_head(model: nn.Module) -> nn.Module:
    """``head_norm`` + mean + [``head_lif``] + ``head`` -> :class:`FoldedHead` or :class:`FoldedLIFHead`."""
    scale, shift = bn_affine(model.head_norm)  # [S, C]
    w, b = model.head.weight.double(), model.head.bias.double()
    dtype = model.head.weight.dtype
    positions = (model.img_size // model.patch_size // 8) ** 2
    if model.head_lif is None:
        weight = w[None] * (scale / positions)[:, None, :]
        return FoldedHead(weight.to(dtype), (shift @ w.T + b).to(dtype))
    affine = SpikeAffine((scale / positions).to(dtype), shift.to(dtype))
    return FoldedLIFHead(affine, model.head_lif, model.head)


class FoldedSparseMLP(nn.Module):
    """The BN-free inference form of a :class:`~mixer_snn.model.SparseMLPSNN`: same input contract, logits
    ``[T, B, K]``.

    Reset the neurons with ``reset_net`` after every batch, as for the training model.
    """

    def __init__(self, source: nn.Module, stages: nn.ModuleList, head: nn.Module, position_bn: str):
        super().__init__()
        self.T, self.in_chans, self.img_size, self.norm = source.T, source.in_chans, source.img_size, source.norm
        self.num_classes, self.position_bn = source.num_classes, position_bn
        self.stages, self.head = stages, head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (repeated T times) or ``[T, B, C, H, W]`` -> logits ``[T, B, num_classes]``."""
        check_images(x, self.in_chans, self.img_size, self.norm, self.T)
        for stage in self.stages:
            x = stage(x)
        return self.head(x)

    def mfi_audit(self, ops: dict) -> dict:
        """The multiplications left, from an ``OpCounter.compute()`` result (:func:`mixer_snn.mfi.audit`)."""
        return audit(self, ops)

    @staticmethod
    def format_mfi_audit(result: dict) -> str:
        """Console text of :meth:`mfi_audit` (:func:`mixer_snn.mfi.format_audit`)."""
        return format_audit(result)


def fold_model(model: nn.Module, position_bn: str = "threshold") -> FoldedSparseMLP:
    """Fold every BN of ``model`` (a :class:`~mixer_snn.model.SparseMLPSNN`, left untouched) into its weights; see the
    module docstring."""
    if not foldable(model):
        raise UserError(f"BN folding (mfi=true) applies to the sparse-MLP (mixer_snn.SparseMLPSNN), got "
                        f"{type(model).__name__}; drop mfi=true for this model")
    if model.norm == "ln":
        raise UserError("norm=ln is not MFI-compatible: LayerNorm divides by per-sample statistics at inference, "
                        "so it cannot fold into weights; fold a model trained with norm=bn, tdbn or tebn")
    if position_bn not in POSITION_BN:
        raise UserError(f"unknown position_bn={position_bn!r}; choose one of {POSITION_BN}")
    source = copy.deepcopy(model).eval()
    with torch.no_grad():
        for stage in source.stages:
            embed = stage.embed
            if isinstance(embed, PatchCell):
                embed.cell2node = fold_conv(embed.cell2node)
                embed.node1_to_node2 = fold_conv(embed.node1_to_node2)
                embed.node2_to_node3 = fold_conv(embed.node2_to_node3)
            else:
                stage.embed = fold_conv(embed)
            for block in stage.blocks:
                assert isinstance(block, MixerBlock)
                block.token = fold_token_block(block.token)
                block.channel = fold_channel_block(block.channel, position_bn)
        head = fold_head(source)
    return FoldedSparseMLP(source, source.stages, head, position_bn).eval()
