"""SpikingSSM sequence models (reference sections 2.2 and 3): a classifier and the LRA retrieval dual encoder.

- :class:`SpikingSSMBackbone`: ``n_layers`` residual :class:`~spiking_ssm.layer.SpikingSSMBlock` on [B, H, L].
- :class:`SpikingSSMClassifier`: encoder (Embedding for token ids when ``vocab_size`` is set, else Linear) ->
  backbone -> mean pool over valid positions -> Linear. Input [B, L] ids or [B, L, d_input] (or [B, L] floats
  when ``d_input == 1``); output logits [B, num_classes]. ``lengths`` only restricts the pooling: a bidirectional
  backbone still lets padded positions influence valid ones (as in the reference, which pads per batch).
- :class:`SpikingSSMRetrieval`: the same encoder+backbone shared by two documents, pooled u and v, then
  [u, v, u*v, u-v] -> Linear(4H, H) -> GELU -> Linear(H, num_classes) (s4's retrieval decoder).

``PRESETS`` holds one entry per reference recipe row (section 3). ``reference_params`` is the reference's
backbone-only parameter count (the stacked SS4D blocks with their norms, no encoder/decoder, no SDN weights).
Configs whose reference runs with ``prenorm: false`` ("noNorm*") default to ``norm_place="none"``, which is
what that code effectively computes; these backbones therefore lack the n_layers * 2H norm parameters the
reference counts (under 0.4 % of the total). Vocabulary sizes are placeholders: set them from the dataset.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from snn_engine.errors import UserError
from spiking_ssm.layer import SpikingSSMBlock


class SpikingSSMBackbone(nn.Module):
    """Stack of residual SpikingSSM blocks: [B, H, L] -> [B, H, L] (no final norm, as in the reference)."""

    def __init__(
        self,
        neuron: Callable[[], nn.Module],
        d_model: int = 256,
        n_layers: int = 6,
        d_state: int = 64,
        dropout: float = 0.0,
        bidirectional: bool = True,
        trainable_B: bool = False,
        norm: str = "batch",
        norm_place: str = "pre",
        threshold: str = "channel",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float = 1e-3,
        checkpoint_layers: bool = False,
        s4d_implementation: str = "auto",
        conv: str = "auto",
        conv_chunk: int = 64,
        conv_precision: str = "tf32x3",
        fuse_soma: bool = False,
    ):
        super().__init__()
        if n_layers < 1 or d_model < 1:
            raise UserError(f"model.n_layers={n_layers} and model.d_model={d_model} must be >= 1")
        self.d_model = d_model
        self.bidirectional = bool(bidirectional)
        self.blocks = nn.ModuleList(
            SpikingSSMBlock(
                d_model, neuron, norm=norm, norm_place=norm_place, dropout=dropout, d_state=d_state,
                bidirectional=bidirectional, trainable_B=trainable_B, threshold=threshold, dt_min=dt_min,
                dt_max=dt_max, ssm_lr=ssm_lr, checkpoint=checkpoint_layers, s4d_implementation=s4d_implementation,
                conv=conv, conv_chunk=conv_chunk, conv_precision=conv_precision, fuse_soma=fuse_soma,
            )
            for _ in range(n_layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _valid_mask(lengths: torch.Tensor | None, batch: int, length: int, device) -> torch.Tensor | None:
    if lengths is None:
        return None
    lengths = torch.as_tensor(lengths, device=device).reshape(batch)
    return torch.arange(length, device=device).unsqueeze(0) < lengths.unsqueeze(1)  # [B, L]


class _Encoded(nn.Module):
    """Shared encoder + backbone + pooling of the classifier and the retrieval model."""

    # read by the engine's multiplication-free-inference report (eval.py mfi=true)
    mfi_unavailable = ("its S4D dendrites, GLU and norms multiply real values by design (they are MACs in the "
                       "operation table); only the sparse-MLP folds into a multiplication-free model")

    def _build(self, neuron, d_input, d_model, vocab_size, pool, backbone_kwargs):
        if pool not in ("mean",):
            raise UserError(f"model.pool={pool!r}; only 'mean' is implemented")
        if vocab_size is not None:
            self.encoder = nn.Embedding(int(vocab_size), d_model)
        elif d_input is not None:
            self.encoder = nn.Linear(int(d_input), d_model)
        else:
            raise UserError("set model.vocab_size (token inputs) or model.d_input (continuous inputs)")
        self.d_input = d_input
        self.vocab_size = vocab_size
        self.pool = pool
        self.backbone = SpikingSSMBackbone(neuron, d_model=d_model, **backbone_kwargs)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Inputs -> [B, L, H] features before the backbone."""
        if self.vocab_size is not None:
            return self.encoder(x.long())
        if x.ndim == 2 and self.d_input == 1:
            x = x.unsqueeze(-1)
        if x.ndim != 3:
            raise ValueError(f"expected [B, L, d_input={self.d_input}] inputs, got {tuple(x.shape)}")
        return self.encoder(x.to(self.encoder.weight.dtype))

    def features(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled backbone features [B, H] (mean over positions < lengths when given)."""
        h = self.backbone(self.encode(x).transpose(1, 2))  # [B, H, L]
        mask = _valid_mask(lengths, h.shape[0], h.shape[-1], h.device)
        if mask is None:
            return h.mean(dim=-1)
        mask = mask.unsqueeze(1).to(h.dtype)
        return (h * mask).sum(-1) / mask.sum(-1).clamp_min(1.0)


class SpikingSSMClassifier(_Encoded):
    """Sequence classifier: [B, L] token ids or [B, L, d_input] -> logits [B, num_classes]."""

    def __init__(
        self,
        neuron: Callable[[], nn.Module],
        d_input: int | None = 1,
        num_classes: int = 10,
        d_model: int = 256,
        n_layers: int = 6,
        d_state: int = 64,
        dropout: float = 0.0,
        bidirectional: bool = True,
        trainable_B: bool = False,
        norm: str = "batch",
        norm_place: str = "pre",
        threshold: str = "channel",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float = 1e-3,
        vocab_size: int | None = None,
        pool: str = "mean",
        checkpoint_layers: bool = False,
        s4d_implementation: str = "auto",
        conv: str = "auto",
        conv_chunk: int = 64,
        conv_precision: str = "tf32x3",
        fuse_soma: bool = False,
    ):
        super().__init__()
        self._build(
            neuron, d_input, d_model, vocab_size, pool,
            dict(n_layers=n_layers, d_state=d_state, dropout=dropout, bidirectional=bidirectional,
                 trainable_B=trainable_B, norm=norm, norm_place=norm_place, threshold=threshold,
                 dt_min=dt_min, dt_max=dt_max, ssm_lr=ssm_lr, checkpoint_layers=checkpoint_layers,
                 s4d_implementation=s4d_implementation, conv=conv, conv_chunk=conv_chunk,
                 conv_precision=conv_precision, fuse_soma=fuse_soma),
        )
        self.decoder = nn.Linear(d_model, num_classes)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.decoder(self.features(x, lengths))


class SpikingSSMRetrieval(_Encoded):
    """LRA AAN dual encoder: two documents -> shared backbone -> [u, v, u*v, u-v] -> GELU MLP -> logits.

    ``forward(x1, x2, lengths1=None, lengths2=None)``; ``x1`` may also be a [B, 2, L] tensor or a pair when
    ``x2`` is omitted. Both documents go through the backbone as one batch of 2B (as s4 does), so BatchNorm
    statistics are shared.
    """

    def __init__(
        self,
        neuron: Callable[[], nn.Module],
        vocab_size: int | None = 100,
        num_classes: int = 2,
        d_model: int = 256,
        n_layers: int = 6,
        d_state: int = 64,
        dropout: float = 0.0,
        bidirectional: bool = True,
        trainable_B: bool = False,
        norm: str = "batch",
        norm_place: str = "pre",
        threshold: str = "channel",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float = 1e-3,
        d_input: int | None = None,
        pool: str = "mean",
        d_hidden: int | None = None,
        checkpoint_layers: bool = False,
        s4d_implementation: str = "auto",
        conv: str = "auto",
        conv_chunk: int = 64,
        conv_precision: str = "tf32x3",
        fuse_soma: bool = False,
    ):
        super().__init__()
        self._build(
            neuron, d_input, d_model, vocab_size, pool,
            dict(n_layers=n_layers, d_state=d_state, dropout=dropout, bidirectional=bidirectional,
                 trainable_B=trainable_B, norm=norm, norm_place=norm_place, threshold=threshold,
                 dt_min=dt_min, dt_max=dt_max, ssm_lr=ssm_lr, checkpoint_layers=checkpoint_layers,
                 s4d_implementation=s4d_implementation, conv=conv, conv_chunk=conv_chunk,
                 conv_precision=conv_precision, fuse_soma=fuse_soma),
        )
        d_hidden = d_hidden or d_model
        self.decoder = nn.Sequential(nn.Linear(4 * d_model, d_hidden), nn.GELU(), nn.Linear(d_hidden, num_classes))

    def forward(self, x1, x2=None, lengths1=None, lengths2=None) -> torch.Tensor:
        if x2 is None:
            if isinstance(x1, (tuple, list)):
                x1, x2 = x1
            else:
                x1, x2 = x1[:, 0], x1[:, 1]
        B = x1.shape[0]
        L = max(x1.shape[1], x2.shape[1])
        if lengths1 is None and lengths2 is None and x1.shape[1] == x2.shape[1]:
            lengths = None
        else:
            full1 = torch.full((B,), x1.shape[1], device=x1.device)
            full2 = torch.full((B,), x2.shape[1], device=x2.device)
            lengths = torch.cat([
                full1 if lengths1 is None else torch.as_tensor(lengths1, device=x1.device).reshape(B),
                full2 if lengths2 is None else torch.as_tensor(lengths2, device=x2.device).reshape(B),
            ])
        pad = lambda x: nn.functional.pad(x, (0, 0) * (x.ndim - 2) + (0, L - x.shape[1]))  # noqa: E731
        feats = self.features(torch.cat([pad(x1), pad(x2)]), lengths)
        u, v = feats[:B], feats[B:]
        return self.decoder(torch.cat([u, v, u * v, u - v], dim=-1))


def n_backbone_params(model: nn.Module) -> int:
    """Trainable parameters of ``model.backbone`` (the reference's count; neuron buffers are not parameters)."""
    return sum(p.numel() for p in model.backbone.parameters())


_LRA = dict(ssm_lr=1e-3, threshold="channel", dt_min=1e-3, dt_max=1e-1, pool="mean")

# name -> constructor arguments (+ "model", "seq_len", "reference_params", "notes"); see module docstring
PRESETS: dict[str, dict] = {
    "listops": dict(model="classifier", vocab_size=18, d_input=None, num_classes=10, d_model=256, n_layers=6,
                    d_state=4, dropout=0.0, norm="batch", norm_place="none", bidirectional=True, trainable_B=True,
                    seq_len=2048, reference_params=820_000, **_LRA),
    "imdb": dict(model="classifier", vocab_size=135, d_input=None, num_classes=2, d_model=256, n_layers=6, d_state=4,
                 dropout=0.0, norm="batch", norm_place="pre", bidirectional=True, trainable_B=True, seq_len=4096,
                 reference_params=820_000, **_LRA),
    "aan": dict(model="retrieval", vocab_size=100, d_input=None, num_classes=2, d_model=256, n_layers=6,
                d_state=64, dropout=0.0, norm="batch", norm_place="pre", bidirectional=True, trainable_B=False,
                seq_len=4000, reference_params=1_090_000, **_LRA),
    "cifar": dict(model="classifier", vocab_size=None, d_input=1, num_classes=10, d_model=512, n_layers=6,
                  d_state=64, dropout=0.1, norm="layer", norm_place="none", bidirectional=True, trainable_B=False,
                  seq_len=1024, reference_params=3_760_000, **_LRA),
    "pathfinder": dict(model="classifier", vocab_size=None, d_input=1, num_classes=2, d_model=256, n_layers=6,
                       d_state=64, dropout=0.0, norm="batch", norm_place="pre", bidirectional=True,
                       trainable_B=False, seq_len=1024, reference_params=1_090_000, **_LRA),
    "pathx": dict(model="classifier", vocab_size=None, d_input=1, num_classes=2, d_model=256, n_layers=6,
                  d_state=64, dropout=0.0, norm="batch", norm_place="pre", bidirectional=True, trainable_B=True,
                  seq_len=16384, reference_params=1_190_000, **{**_LRA, "dt_min": 1e-4}),
    "smnist": dict(model="classifier", vocab_size=None, d_input=1, num_classes=10, d_model=400, n_layers=2,
                   d_state=64, dropout=0.1, norm="layer", norm_place="none", bidirectional=False, trainable_B=False,
                   seq_len=784, reference_params=750_000, **_LRA),
    "psmnist": dict(model="classifier", vocab_size=None, d_input=1, num_classes=10, d_model=256, n_layers=4,
                    d_state=64, dropout=0.1, norm="layer", norm_place="none", bidirectional=False,
                    trainable_B=False, seq_len=784, reference_params=660_000, **_LRA),
    "speech_commands": dict(model="classifier", vocab_size=None, d_input=1, num_classes=35, d_model=128,
                            n_layers=6, d_state=16, dropout=0.0, norm="batch", norm_place="pre", bidirectional=True,
                            trainable_B=True, seq_len=16000, reference_params=250_000, **_LRA),
    "dvs_gesture": dict(model="classifier", vocab_size=None, d_input=64, num_classes=11, d_model=512, n_layers=6,
                        d_state=16, dropout=0.1, norm="layer", norm_place="none", bidirectional=True,
                        trainable_B=True, seq_len=4352, reference_params=3_360_000, **_LRA),
}
PRESETS["text"] = PRESETS["imdb"]
PRESETS["retrieval"] = PRESETS["aan"]
PRESETS["image"] = PRESETS["cifar"]
_META = ("model", "seq_len", "reference_params")


def preset_kwargs(name: str, **overrides) -> dict:
    """Constructor arguments of a preset (without the metadata keys), updated with ``overrides``."""
    if name not in PRESETS:
        raise UserError(f"unknown SpikingSSM preset {name!r}; choose one of {sorted(PRESETS)}")
    kwargs = {k: v for k, v in PRESETS[name].items() if k not in _META}
    kwargs.update(overrides)
    return kwargs


def build_preset(name: str, neuron: Callable[[], nn.Module], **overrides) -> nn.Module:
    """A :class:`SpikingSSMClassifier` or :class:`SpikingSSMRetrieval` configured like reference row ``name``."""
    kwargs = preset_kwargs(name, **overrides)
    cls = SpikingSSMRetrieval if PRESETS[name]["model"] == "retrieval" else SpikingSSMClassifier
    return cls(neuron, **kwargs)
