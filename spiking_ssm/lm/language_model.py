"""The SpikingSSM language model of the paper's WikiText-103 row (reference sections 3 and 4.2).

Token ids [B, L] -> adaptive input (:class:`~spiking_ssm.lm.adaptive.AdaptiveInput`, [B, L, H]) -> causal SpikingSSM
backbone (``n_layers`` pre-LayerNorm blocks, dropout 0.1, no final norm, as the reference's ``spikingssm``
backbone) -> projected adaptive log-softmax (:class:`~spiking_ssm.lm.adaptive.AdaptiveSoftmax`) with tied weights.

Engine protocol (``snn_engine.tasks.LanguageModelTask``): ``forward(tokens, targets)`` returns the per-token
negative log-likelihood in nats, float32 [B, L], 0 where ``targets == -100``; ``forward(tokens)`` returns the
log-probabilities float32 [B, L, V] (small vocabularies only); a float64 model returns float64. Generation runs
token by token through :class:`spiking_ssm.lm.streaming.StreamingLanguageModel`, which reads the final hidden
state through :meth:`SpikingSSMLanguageModel.log_probs_last`.

Like every SpikingSSM model with a stateful soma (``neuron=lif``), call ``spikingjelly...functional.reset_net``
between independent forward calls (the engine does).

Optimizer groups (:func:`snn_engine.training.optim.param_groups`, unchanged): the S4D ``log_dt``/``log_A_real``/``A_imag``
carry the SSM hint (lr 1e-3, no weight decay); embedding tables, projections, cluster weights, C, D, thresholds and
mixing convs get the global weight decay (0.1 in the reference recipe); LayerNorm parameters and biases get none.
The reference (s4's ``add_optimizer_hooks`` applies to the backbone only) also decays the adaptive softmax's output
and cluster biases: ``output_bias_weight_decay: ${optimizer.weight_decay}`` reproduces that, null keeps the
engine's rule (no decay on biases).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from spiking_ssm.backbone import SpikingSSMBackbone
from spiking_ssm.lm.adaptive import AdaptiveInput, AdaptiveSoftmax, ids_checkable

# the paper's WT103 row (reference section 3): constructor arguments and the reference's parameter counts
WT103 = dict(vocab_size=267_735, d_model=1024, n_layers=16, d_state=64, dropout=0.1, norm="layer", norm_place="pre",
             threshold="channel", trainable_B=False, cutoffs=[19997, 39997, 199997], div_val=4, tie_weights=True,
             tie_projs=None, dropemb=0.25, dropsoft=0.25, init_scale=0.5, bias_scale=1.0)
WT103_REFERENCE_PARAMS = {"backbone": 35.77e6, "adaptive": 39.63e6, "total": 75.4e6}


class SpikingSSMLanguageModel(nn.Module):
    """Causal SpikingSSM language model: tokens [B, L] -> NLL [B, L] (with targets) or log-probs [B, L, V].

    ``cutoffs`` (frequency-ordered vocabulary; [] = plain tied softmax), ``div_val``, ``tie_weights``,
    ``tie_projs`` (null = every projection tied but the head's), ``dropemb`` (on embedding rows), ``dropsoft``
    (pre-output), ``init_scale``, ``bias_scale``: see :mod:`spiking_ssm.lm.adaptive`. The remaining arguments are
    the backbone's (:class:`~spiking_ssm.backbone.SpikingSSMBackbone`, always causal).
    """

    task = "language_model"
    # read by the engine's multiplication-free-inference report (eval.py mfi=true)
    mfi_unavailable = ("its S4D dendrites, GLU, norms and adaptive softmax multiply real values by design; only the "
                       "sparse-MLP folds into a multiplication-free model")

    def __init__(
        self,
        neuron: Callable[[], nn.Module],
        vocab_size: int | None = None,
        d_model: int = 64,
        n_layers: int = 2,
        d_state: int = 16,
        dropout: float = 0.1,
        norm: str = "layer",
        norm_place: str = "pre",
        threshold: str = "channel",
        trainable_B: bool = False,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float = 1e-3,
        cutoffs: Sequence[int] = (),
        div_val: int = 4,
        tie_weights: bool = True,
        tie_projs: bool | Sequence[bool] | None = None,
        dropemb: float = 0.25,
        dropsoft: float = 0.25,
        init_scale: float = 0.5,
        bias_scale: float = 1.0,
        output_bias_weight_decay: float | None = None,
        checkpoint_layers: bool = False,
        s4d_implementation: str = "auto",
        conv: str = "auto",
        conv_chunk: int = 64,
        conv_precision: str = "tf32x3",
        fuse_soma: bool = False,
    ):
        super().__init__()
        self.embed = AdaptiveInput(vocab_size, d_model, list(cutoffs or []), div_val, dropemb, init_scale)
        self.vocab_size, self.d_model = self.embed.vocab_size, int(d_model)
        self.backbone = SpikingSSMBackbone(
            neuron, d_model=d_model, n_layers=n_layers, d_state=d_state, dropout=dropout, bidirectional=False,
            trainable_B=trainable_B, norm=norm, norm_place=norm_place, threshold=threshold, dt_min=dt_min,
            dt_max=dt_max, ssm_lr=ssm_lr, checkpoint_layers=checkpoint_layers, s4d_implementation=s4d_implementation,
            conv=conv, conv_chunk=conv_chunk, conv_precision=conv_precision, fuse_soma=fuse_soma,
        )
        self.softmax = AdaptiveSoftmax(self.embed, tie_weights, tie_projs, dropsoft, bias_scale, init_scale)
        if output_bias_weight_decay is not None:
            for bias in (self.softmax.bias, self.softmax.cluster_bias):
                if bias is not None:
                    bias._optim = {"weight_decay": float(output_bias_weight_decay)}

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Top-layer features [B, L, H] of token ids [B, L]; position t sees tokens[:, :t+1] only."""
        if tokens.ndim != 2:
            raise ValueError(f"expected token ids [B, L], got shape {tuple(tokens.shape)}")
        tokens = tokens.long()
        if ids_checkable(tokens) and tokens.numel() and bool(((tokens < 0) | (tokens >= self.vocab_size)).any()):
            raise ValueError(f"token ids must lie in [0, {self.vocab_size})")
        x = self.embed(tokens).transpose(1, 2)  # [B, H, L]
        return self.backbone(x).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        """NLL [B, L] (0 where targets == -100) or, without targets, log-probs [B, L, V]; float32 (float64 for a
        float64 model)."""
        h = self.hidden(tokens)
        if targets is not None and targets.shape != tokens.shape:
            raise ValueError(f"targets {tuple(targets.shape)} must have the shape of tokens {tuple(tokens.shape)}")
        return self.softmax(h, None if targets is None else targets.long())

    def log_probs_last(self, hidden: torch.Tensor) -> torch.Tensor:
        """The next-token distribution from a final hidden state: [B, H] -> log-probs [B, V]."""
        return self.softmax.log_prob(hidden)


def parameter_counts(model: SpikingSSMLanguageModel) -> dict[str, int]:
    """Distinct parameters (tied ones once) of the backbone, of the adaptive input + softmax, and in total."""
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    return {"backbone": backbone, "adaptive": total - backbone, "total": total}
