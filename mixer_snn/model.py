"""The spiking sparse-MLP model (TNNLS 2024, "Efficient Deep Spiking MLPs with Multiplication-Free Inference").

One class, :class:`SparseMLPSNN`, covers every variant of the paper and its ablations through constructor
arguments; :data:`PRESETS` names the paper rows. Input ``[B, C, H, W]`` (direct encoding, repeated T times)
or time-major ``[T, B, C, H, W]``; output per-step logits ``[T, B, num_classes]``. Reset the neuron state
with ``spikingjelly.activation_based.functional.reset_net(model)`` after every batch.

Example::

    from functools import partial
    from snn_engine.neurons import make_neuron
    model = sparse_mlp_t(partial(make_neuron), num_classes=1000)   # MLP-SPE-T, 25,229,180 params

Linear map -> BN pairs (for BN folding; every BN is ``<wrapper>.bn``, a plain ``nn.BatchNorm1d/2d``):
``ConvBN/Stem.conv -> .norm.bn`` (per output channel); ``TokenMixing.proj -> .norm.norm.bn`` (per position
along H or W); ``TokenBlock.fuse -> .fuse_norm.bn`` (per channel); ``ChannelBlock.fc1/fc2 -> .norm1/.norm2
.norm.bn`` (per token position, or per feature with ``channel_bn_axis="channel"``); ``head_norm.bn`` sits
before the spatial mean and ``head``. Internally tensors are channels-last ``[T, B, H, W, C]``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from mixer_snn.blocks import ConvBN, MixerBlock, NeuronFactory, PatchCell, Stem, check_images
from mixer_snn.fold import fold_model
from mixer_snn.norms import CHANNEL_BN_AXES, NORMS, BatchNormT
from snn_engine.training import spike_memory
from snn_engine.errors import UserError
from snn_engine.training.recompute import checkpoint_spiking


class Stage(nn.Module):
    """Embedding + neuron + mixer blocks: ``[T, B, H, W, Cin]`` (stage 0: images ``[B, Cin, H, W]`` or
    ``[T, B, Cin, H, W]``) -> spikes ``[T, B, n, n, C]`` (channels last, see :mod:`mixer_snn.blocks`).

    The embedding's analog output is the stage anchor ``h``; ``x = lif(h)`` and every block gets ``h``.
    """

    def __init__(self, embed: nn.Module, blocks: Sequence[MixerBlock], neuron: NeuronFactory):
        super().__init__()
        self.embed = embed
        self.lif = neuron()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(x)
        x = self.lif(h)
        for block in self.blocks:
            x = block(x, h)
        return x


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum``, else a :class:`UserError` naming ``model.<name>``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"model.{name} must be an integer >= {minimum}, got {value!r}; fix model.{name}")
    return value


class SparseMLPSNN(nn.Module):
    """Spiking sparse-MLP: ``[B, C, H, W]`` or ``[T, B, C, H, W]`` images -> logits ``[T, B, num_classes]``.

    Stage s (0..3) has ``dim * 2**s`` channels on an ``n_s x n_s`` grid, ``n_s = img_size // patch_size // 2**s``.
    Stage 0 embeds with a conv (kernel = stride = ``patch_size``, no bias) + BN; stages 1-3 with a
    :class:`~mixer_snn.blocks.PatchCell` (``spe=True``) or a 2x2/stride-2 conv + BN (``spe=False``).

    Args:
        neuron: zero-argument callable returning a fresh multi-step spiking module ``[T,B,...] -> [T,B,...]``.
        num_classes, in_chans, img_size: data set geometry; ``img_size`` must be divisible by ``8 * patch_size``.
        T: number of time steps used for static ``[B, C, H, W]`` input (and the size of the tebn scales).
        dim: stage-0 channels (a multiple of 3 when ``spe``). depths: blocks per stage (4 values).
        alpha: channel-MLP expansion. patch_size: stem kernel/stride.
        spe: Spiking Patch Encoding for stages 1-3 (else 2x2 conv + BN).
        identity_bn_lif: identity branch of the token block is ``LIF(BN(x))``; ``None`` means ``not spe``
            (so ``spe=False`` alone is MLP-S).
        norm: ``bn`` | ``tdbn`` | ``tebn`` | ``ln`` (ln only inside the token/channel MLPs).
        channel_bn_axis: ``token`` (faithful: BN1d over the n*n positions) | ``channel`` (per feature).
        head_lif: a neuron between the spatial mean and the classifier (the paper's figure; not the code).
        checkpoint_stages: keep only each stage's input in training and recompute the stage in backward
            (:func:`snn_engine.training.recompute.checkpoint_spiking`, SpikingJelly's ``memopt``: same gradients and BN
            statistics, far less memory); the spike inputs of stages 1-3 are kept in the ``spike_storage`` form.
        spike_storage: how spikes saved for backward are kept (:mod:`snn_engine.training.spike_memory`): ``float`` (what
            autograd does), ``bool`` (1 byte each) or ``bits`` (8 per byte); the gradients are identical.
    """

    def __init__(
        self,
        neuron: NeuronFactory,
        num_classes: int = 1000,
        in_chans: int = 3,
        img_size: int = 224,
        T: int = 4,
        dim: int = 78,
        depths: Sequence[int] = (2, 8, 14, 2),
        alpha: int = 3,
        patch_size: int = 4,
        spe: bool = True,
        identity_bn_lif: bool | None = None,
        norm: str = "bn",
        channel_bn_axis: str = "token",
        head_lif: bool = False,
        checkpoint_stages: bool = False,
        spike_storage: str = spike_memory.DEFAULT_STORAGE,
    ):
        super().__init__()
        if not callable(neuron):
            raise UserError("SparseMLPSNN needs neuron= a zero-argument neuron factory, e.g. "
                            "functools.partial(snn_engine.neurons.make_neuron); check the neuron config")
        for name, value in dict(num_classes=num_classes, in_chans=in_chans, img_size=img_size, T=T, dim=dim,
                                alpha=alpha, patch_size=patch_size).items():
            _positive_int(name, value)
        depths = tuple(depths) if isinstance(depths, Sequence) and not isinstance(depths, str) else depths
        if not isinstance(depths, tuple) or len(depths) != 4:
            raise UserError(f"model.depths must list 4 block counts (one per stage), got {depths!r}")
        for depth in depths:
            _positive_int("depths[*]", depth, minimum=0)
        if norm not in NORMS:
            raise UserError(f"unknown model.norm={norm!r}; choose one of {NORMS}")
        if channel_bn_axis not in CHANNEL_BN_AXES:
            raise UserError(f"unknown model.channel_bn_axis={channel_bn_axis!r}; choose one of {CHANNEL_BN_AXES}")
        if img_size % (patch_size * 8):
            raise UserError(f"model.img_size={img_size} must be divisible by 8*patch_size={8 * patch_size} "
                            "(4 stages halve the token grid 3 times); change img_size or patch_size")
        if spe and dim % 3:
            raise UserError(f"model.dim={dim} must be a multiple of 3 with spe=true (PatchCell splits channels "
                            "in 3 nodes); use e.g. dim=78/96/126 or spe=false")
        identity_bn_lif = (not spe) if identity_bn_lif is None else bool(identity_bn_lif)

        self.T, self.num_classes, self.in_chans, self.img_size = T, num_classes, in_chans, img_size
        self.dim, self.depths, self.alpha, self.patch_size = dim, depths, alpha, patch_size
        self.spe, self.identity_bn_lif, self.norm, self.channel_bn_axis = bool(spe), identity_bn_lif, norm, channel_bn_axis
        self.num_features = 8 * dim
        self.checkpoint_stages = bool(checkpoint_stages)
        self.spike_storage = spike_memory.check_storage(spike_storage)
        outer_norm = "bn" if norm == "ln" else norm  # LayerNorm replaces only the norms inside the MLPs

        stages = []
        for s, depth in enumerate(depths):
            channels, n = dim * 2**s, img_size // patch_size // 2**s
            if s == 0:
                embed = Stem(in_chans, channels, patch_size, outer_norm, T)
            elif spe:
                embed = PatchCell(channels // 2, channels, neuron, outer_norm, T)
            else:
                embed = ConvBN(channels // 2, channels, 2, 2, 0, outer_norm, T)
            blocks = [MixerBlock(channels, n, alpha, neuron, norm, T, identity_bn_lif, channel_bn_axis)
                      for _ in range(depth)]
            stages.append(Stage(embed, blocks, neuron))
        self.stages = nn.ModuleList(stages)
        self.head_norm = BatchNormT(self.num_features, outer_norm, T, dims=2)
        self.head_lif = neuron() if head_lif else None
        self.head = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` or ``[T, B, C, H, W]`` -> last-stage spikes ``[T, B, 8*dim, h, w]``."""
        check_images(x, self.in_chans, self.img_size, self.norm, self.T)
        with spike_memory.storage(self.spike_storage):
            for s, stage in enumerate(self.stages):
                x = checkpoint_spiking(stage, x, binary_input=s > 0) if self.checkpoint_stages else stage(x)
        return x.permute(0, 1, 4, 2, 3)  # channels-last internals -> [T, B, C, h, w] (a view)

    def forward_head(self, feat: torch.Tensor) -> torch.Tensor:
        """Spikes ``[T, B, 8*dim, h, w]`` -> logits ``[T, B, num_classes]`` (BN, spatial mean, [LIF], Linear)."""
        T, B = feat.shape[:2]
        pooled = self.head_norm(feat.flatten(0, 1)).mean(dim=(-2, -1)).view(T, B, -1)
        if self.head_lif is not None:
            pooled = self.head_lif(pooled)
        return self.head(pooled)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images ``[B, C, H, W]`` (repeated T times) or ``[T, B, C, H, W]`` -> logits ``[T, B, num_classes]``."""
        return self.forward_head(self.forward_features(x))

    # the engine's multiplication-free-inference protocol (eval.py mfi=true / nir=true; see snn_engine.measure.report)

    def fold_for_inference(self, position_bn: str = "threshold") -> nn.Module:
        """The BN-free inference form (:func:`mixer_snn.fold.fold_model`); it offers ``mfi_audit``."""
        return fold_model(self, position_bn)

    def export_nir(self, path, position_bn: str = "threshold"):
        """Write the folded model as a NIR graph (:func:`mixer_snn.nir_export.export_nir`, imported here because it
        needs the optional ``nir`` package); returns the graph."""
        from mixer_snn.nir_export import export_nir

        return export_nir(self, path, position_bn=position_bn)


_PAPER = dict(depths=(2, 8, 14, 2), alpha=3, patch_size=4, img_size=224)
PRESETS: dict[str, dict[str, Any]] = {
    "sparse_mlp_t": dict(_PAPER, dim=78, spe=True),  # MLP-SPE-T, 25,229,180 params at 1000 classes
    "sparse_mlp_s": dict(_PAPER, dim=96, spe=True),  # MLP-SPE-S, 37,975,568
    "sparse_mlp_b": dict(_PAPER, dim=126, spe=True),  # MLP-SPE-B, 65,008,348 (dim inferred, no official config)
    "mlp_s": dict(_PAPER, dim=96, spe=False),  # MLP-S (no SPE, identity LIF(BN(x))), 34,507,408
    "sparse_mlp_tiny": dict(depths=(1, 1, 2, 1), alpha=3, patch_size=4, img_size=32, dim=24, spe=True),  # CPU
}


def create_model(name: str, neuron: NeuronFactory, **overrides: Any) -> SparseMLPSNN:
    """A preset by name with keyword overrides, e.g. ``create_model("sparse_mlp_s", neuron, spe=False)``."""
    if name not in PRESETS:
        raise UserError(f"unknown sparse-MLP preset {name!r}; choose one of {sorted(PRESETS)}")
    return SparseMLPSNN(neuron, **{**PRESETS[name], **overrides})


def sparse_mlp_t(neuron: NeuronFactory, **overrides: Any) -> SparseMLPSNN:
    """MLP-SPE-T (dim 78, 25.2M params)."""
    return create_model("sparse_mlp_t", neuron, **overrides)


def sparse_mlp_s(neuron: NeuronFactory, **overrides: Any) -> SparseMLPSNN:
    """MLP-SPE-S (dim 96, 38.0M params)."""
    return create_model("sparse_mlp_s", neuron, **overrides)


def sparse_mlp_b(neuron: NeuronFactory, **overrides: Any) -> SparseMLPSNN:
    """MLP-SPE-B (dim 126, 65.0M params)."""
    return create_model("sparse_mlp_b", neuron, **overrides)


def mlp_s(neuron: NeuronFactory, **overrides: Any) -> SparseMLPSNN:
    """MLP-S without SPE (dim 96, 34.5M params)."""
    return create_model("mlp_s", neuron, **overrides)


def sparse_mlp_tiny(neuron: NeuronFactory, **overrides: Any) -> SparseMLPSNN:
    """A small SPE model for 32x32 images on CPU (dim 24, depths [1, 1, 2, 1])."""
    return create_model("sparse_mlp_tiny", neuron, **overrides)
