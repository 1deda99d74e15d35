"""Adaptive input (Baevski & Auli 2019) and projected adaptive log-softmax (Grave et al. 2017), Transformer-XL style.

The vocabulary is ordered by frequency and cut into clusters by ``cutoffs``: with ``bounds = [0, *cutoffs, V]``,
cluster i holds token ids ``[bounds[i], bounds[i+1])``. Cluster 0 is the *head* (the frequent words), the others
are *tail* clusters.

Two layouts:

- **projected** (``div_val != 1`` and at least one cutoff): cluster i has its own embedding table of width
  ``d_i = d_model // div_val**i`` and a projection ``P_i`` [d_model, d_i] between it and the model width.
- **plain** (``div_val == 1`` or no cutoffs): one table [V, d_model], no projection. With no cutoffs this is an
  ordinary (tied) softmax.

:class:`AdaptiveInput`: ``e(w) = sqrt(d_model) * P_i · drop(E_i[w - bounds[i]])`` for w in cluster i.

:class:`AdaptiveSoftmax` (``p(w) = p_head(w)`` for a head word, ``p_head(cluster i) * p_i(w | cluster i)`` for a
tail word): the head scores the ``bounds[1]`` head words plus one logit per tail cluster,
``logits_0 = drop(h Q_0) [W_0; c]^T + [b_0; c_b]``, a tail cluster its own words,
``logits_i = drop(h Q_i) W_i^T + b_i``, where ``Q_i`` [d_model, d_i] is the output projection and ``drop`` the
pre-output (softmax) dropout; ``c``/``c_b`` score the tail clusters (column ``bounds[1] + i - 1`` for cluster i).
Weight tying (``tie_weights``) makes ``W_i`` the input's ``E_i`` (the same Parameter objects: one storage);
``tie_projs[i]`` makes ``Q_i`` the input's ``P_i``. Transformer-XL's and the reference's (s4 ``wt103``) choice,
the default here, ties every projection but the head's: ``tie_projs = [False, True, True, True]``.

Why not ``torch.nn.AdaptiveLogSoftmaxWithLoss``: its head is one Linear on the hidden state and each tail a
bias-free two-layer bottleneck, so it cannot share the input's per-cluster tables and projections, keep an output
bias per word, or put dropout between projection and output weights. Hence this implementation, tested against a
dense log-softmax.

Initialisation follows the reference (s4 with ``init_scale 0.5``, ``bias_scale 1.0``): embeddings
``N(0, (init_scale / sqrt(d_i))^2)``, projections ``N(0, (init_scale / sqrt(d_model))^2)``, output biases
``U(-bias_scale / sqrt(d_model), +)``, untied output projections, cluster weights and cluster biases 0.

Every parameter takes part in every call that records gradients (a cluster without tokens adds ``0 * sum`` of its
weights), so DDP without ``find_unused_parameters`` never sees an unused parameter.

Tied Parameters are registered in both modules (the usual PyTorch idiom): ``parameters()`` yields them once and
the state dict holds both names. Moving the model with ``.to()``/``.double()`` keeps the tie; loading a state dict
with ``assign=True`` would break it.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from snn_engine.errors import UserError
from snn_engine.measure.ops import OpContext, OpCount

IGNORE_INDEX = -100


def ids_checkable(ids: torch.Tensor) -> bool:
    """Whether token ids can be range-checked for free: on CPU and outside a compiled graph (on CUDA the check
    would synchronise the device every step, in a graph it would break it; there the embedding/gather asserts)."""
    return ids.device.type == "cpu" and not torch.compiler.is_compiling()


def check_cutoffs(cutoffs: Sequence[int] | None, vocab_size: int | None, div_val: int = 1,
                  d_model: int | None = None) -> list[int]:
    """Validated cutoffs (a list of ints) for a vocabulary of ``vocab_size`` words; UserError otherwise."""
    if vocab_size is None or int(vocab_size) < 1:
        raise UserError(f"model.vocab_size={vocab_size}: a language model needs the data set's vocabulary size "
                        "(model.vocab_size: ${data:vocab_size} with a token data set)")
    vocab_size = int(vocab_size)
    cutoffs = [int(c) for c in (cutoffs or [])]
    increasing = all(b > a for a, b in zip(cutoffs, cutoffs[1:]))
    if not increasing or any(not 0 < c < vocab_size for c in cutoffs):
        raise UserError(f"model.cutoffs={cutoffs} must increase strictly and lie inside (0, vocab_size={vocab_size}): "
                        "use [] for a plain softmax, or e.g. WikiText-103's [19997, 39997, 199997] for 267,735 words")
    if int(div_val) < 1:
        raise UserError(f"model.div_val={div_val} must be an integer >= 1 (4 in the reference, 1 = equal widths)")
    if d_model is not None and cutoffs and d_model // int(div_val) ** len(cutoffs) < 1:
        raise UserError(f"model.div_val={div_val} leaves the last of {len(cutoffs) + 1} clusters no embedding width "
                        f"at d_model={d_model}; lower div_val or use fewer cutoffs")
    return cutoffs


def default_tie_projs(n_clusters: int) -> list[bool]:
    """Transformer-XL's projection tying: every projection but the head's (``[False] + [True] * tails``)."""
    return [False] + [True] * (n_clusters - 1)


class AdaptiveInput(nn.Module):
    """Adaptive input embedding: token ids ``[...]`` (int64) -> ``[..., d_model]``.

    ``embeddings[i]``: ``nn.Embedding(size_i, d_i)``; ``projections[i]``: [d_model, d_i] (projected layout only).
    ``dropout`` (the reference's ``dropemb``) is applied to the table rows, before the projection.
    """

    def __init__(self, vocab_size: int, d_model: int, cutoffs: Sequence[int] = (), div_val: int = 4,
                 dropout: float = 0.0, init_scale: float = 0.5):
        super().__init__()
        cutoffs = check_cutoffs(cutoffs, vocab_size, div_val, d_model)
        self.vocab_size, self.d_model = int(vocab_size), int(d_model)
        self.bounds = [0, *cutoffs, self.vocab_size]
        self.n_clusters = len(self.bounds) - 1
        self.projected = bool(cutoffs) and int(div_val) != 1
        self.div_val = int(div_val)
        if self.projected:
            self.dims = [d_model // self.div_val ** i for i in range(self.n_clusters)]
            sizes = [hi - lo for lo, hi in zip(self.bounds, self.bounds[1:])]
        else:
            self.dims, sizes = [d_model], [self.vocab_size]
        self.embeddings = nn.ModuleList(nn.Embedding(size, dim) for size, dim in zip(sizes, self.dims))
        self.projections = nn.ParameterList(
            nn.Parameter(torch.empty(d_model, dim)) for dim in (self.dims if self.projected else []))
        for table, dim in zip(self.embeddings, self.dims):
            nn.init.normal_(table.weight, std=init_scale * dim ** -0.5)
        for proj in self.projections:
            nn.init.normal_(proj, std=init_scale * d_model ** -0.5)
        self.dropout = nn.Dropout(dropout)
        self.scale = math.sqrt(d_model)

    def cluster_rows(self, flat: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """``(cluster, row indices of flat ids in it)`` for every non-empty cluster (one host sync each)."""
        found = []
        for i, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            rows = ((flat >= lo) & (flat < hi)).nonzero().squeeze(1)
            if rows.numel():
                found.append((i, rows))
        return found

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.projected:
            return self.dropout(self.embeddings[0](tokens)) * self.scale
        flat = tokens.reshape(-1)
        found = dict(self.cluster_rows(flat))
        out = None
        for i, rows in found.items():
            rows_out = F.linear(self.dropout(self.embeddings[i](flat[rows] - self.bounds[i])), self.projections[i])
            if out is None:
                out = rows_out.new_zeros(flat.numel(), self.d_model)
            out = out.index_copy(0, rows, rows_out.to(out.dtype))
        if out is None:  # no tokens at all
            out = self.projections[0].new_zeros(0, self.d_model)
        unused = [p for i in range(self.n_clusters) if i not in found
                  for p in (self.embeddings[i].weight, self.projections[i])]
        if unused and torch.is_grad_enabled():
            out = out + 0.0 * sum(p.sum() for p in unused).to(out.dtype)
        return (out * self.scale).reshape(*tokens.shape, self.d_model)

    def count_ops(self, inputs: tuple, output: torch.Tensor, ctx: OpContext) -> OpCount:
        """MACs of the projections (the table look-up itself costs nothing): ``d_model * d_i`` per token of
        cluster i; 0 in the plain layout."""
        if not self.projected:
            return OpCount()
        flat = inputs[0].reshape(-1)
        macs = float(sum(rows.numel() * self.dims[i] * self.d_model for i, rows in self.cluster_rows(flat)))
        return OpCount(mac=macs, dense=macs)

    def extra_repr(self) -> str:
        return f"vocab={self.vocab_size}, d_model={self.d_model}, bounds={self.bounds}, dims={self.dims}"


class AdaptiveSoftmax(nn.Module):
    """Projected adaptive log-softmax over the clusters of ``embedding`` (an :class:`AdaptiveInput`).

    ``forward(hidden [..., d_model], targets [...] | None)``: with targets, the negative log-likelihood in nats,
    ``[...]``, 0 where ``targets == -100``; without, the full log-probabilities ``[..., V]``. Both are float32
    (float64 for a float64 model; half-precision logits are widened before the log-softmax).
    """

    def __init__(self, embedding: AdaptiveInput, tie_weights: bool = True,
                 tie_projs: bool | Sequence[bool] | None = None, dropout: float = 0.0, bias_scale: float = 1.0,
                 init_scale: float = 0.5):
        super().__init__()
        self.vocab_size, self.d_model = embedding.vocab_size, embedding.d_model
        self.bounds, self.dims = list(embedding.bounds), list(embedding.dims)
        self.n_clusters, self.projected = embedding.n_clusters, embedding.projected
        self.shortlist = self.bounds[1]
        self.tie_weights = bool(tie_weights)
        self.tie_projs = self._tie_flags(tie_projs)
        if self.tie_weights:
            self.weights = nn.ParameterList(table.weight for table in embedding.embeddings)
        else:
            self.weights = nn.ParameterList(nn.Parameter(torch.empty_like(t.weight)) for t in embedding.embeddings)
            for weight, dim in zip(self.weights, self.dims):
                nn.init.normal_(weight, std=init_scale * dim ** -0.5)
        self.projections = nn.ParameterList(
            embedding.projections[i] if tied else nn.Parameter(torch.zeros(self.d_model, self.dims[i]))
            for i, tied in enumerate(self.tie_projs))
        self.bias = nn.Parameter(torch.empty(self.vocab_size).uniform_(-1.0, 1.0) * bias_scale * self.d_model ** -0.5)
        tails = self.n_clusters - 1
        self.register_parameter("cluster_weight", nn.Parameter(torch.zeros(tails, self.dims[0])) if tails else None)
        self.register_parameter("cluster_bias", nn.Parameter(torch.zeros(tails)) if tails else None)
        self.dropout = nn.Dropout(dropout)

    def _tie_flags(self, tie_projs) -> list[bool]:
        if not self.projected:
            return []
        if tie_projs is None:
            return default_tie_projs(self.n_clusters)
        if isinstance(tie_projs, bool):
            return [tie_projs] * self.n_clusters
        flags = [bool(t) for t in tie_projs]
        if len(flags) != self.n_clusters:
            raise UserError(f"model.tie_projs={flags} needs one flag per cluster ({self.n_clusters}: the head, then "
                            "each tail); null = [false, true, ...] as in Transformer-XL")
        return flags

    def _cluster_parameters(self, i: int) -> list[nn.Parameter]:
        lo, hi = self.bounds[i], self.bounds[i + 1]
        weight = self.weights[i] if self.projected else self.weights[0][lo:hi]
        return [weight, self.bias[lo:hi], *([self.projections[i]] if self.projected else [])]

    def cluster_logits(self, hidden: torch.Tensor, i: int) -> torch.Tensor:
        """Logits of cluster i for hidden [N, d_model]: [N, size_i] (head: [N, bounds[1] + tail clusters]);
        half-precision logits come back in float32, the precision of every log-softmax here."""
        lo, hi = self.bounds[i], self.bounds[i + 1]
        if self.projected:
            h, weight = hidden @ self.projections[i], self.weights[i]
        else:
            h, weight = hidden, self.weights[0][lo:hi]
        bias = self.bias[lo:hi]
        if i == 0 and self.cluster_weight is not None:
            weight = torch.cat([weight, self.cluster_weight.to(weight.dtype)])
            bias = torch.cat([bias, self.cluster_bias.to(bias.dtype)])
        logits = F.linear(self.dropout(h), weight, bias)
        return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits

    def log_prob(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full log-distribution over the vocabulary: hidden [..., d_model] -> [..., V] (float32 or float64)."""
        flat = hidden.reshape(-1, self.d_model)
        head = F.log_softmax(self.cluster_logits(flat, 0), dim=-1)
        parts = [head[:, :self.shortlist]]
        for i in range(1, self.n_clusters):
            tail = F.log_softmax(self.cluster_logits(flat, i), dim=-1)
            parts.append(head[:, self.shortlist + i - 1, None] + tail)
        return torch.cat(parts, dim=-1).reshape(*hidden.shape[:-1], self.vocab_size)

    def nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """``-log p(targets)``: hidden [..., d_model], targets [...] int64 -> [...] (0 where -100; float32/64)."""
        flat, target = hidden.reshape(-1, self.d_model), targets.reshape(-1)
        valid = target != IGNORE_INDEX
        if ids_checkable(target) and bool((valid & ((target < 0) | (target >= self.vocab_size))).any()):
            raise ValueError(f"targets must be token ids in [0, {self.vocab_size}) or {IGNORE_INDEX} (ignored)")
        safe = torch.where(valid, target, torch.zeros_like(target))
        head = F.log_softmax(self.cluster_logits(flat, 0), dim=-1)
        in_head = valid & (safe < self.shortlist)
        head_lp = head.gather(1, safe.clamp(max=self.shortlist - 1).unsqueeze(1)).squeeze(1)
        out = torch.where(in_head, -head_lp, torch.zeros_like(head_lp))
        for i in range(1, self.n_clusters):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            rows = (valid & (safe >= lo) & (safe < hi)).nonzero().squeeze(1)
            if rows.numel() == 0:
                if torch.is_grad_enabled():  # keep the cluster's parameters in the graph (DDP)
                    out = out + 0.0 * sum(p.sum() for p in self._cluster_parameters(i)).to(out.dtype)
                continue
            tail = F.log_softmax(self.cluster_logits(flat[rows], i), dim=-1)
            lp = head[rows, self.shortlist + i - 1] + tail.gather(1, (safe[rows] - lo).unsqueeze(1)).squeeze(1)
            out = out.index_copy(0, rows, -lp)
        return out.reshape(targets.shape)

    def forward(self, hidden: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
        return self.log_prob(hidden) if targets is None else self.nll(hidden, targets)

    def count_ops(self, inputs: tuple, output: torch.Tensor, ctx: OpContext) -> OpCount:
        """MACs of the output layer on real hidden states: per row, the head (projection ``d_model * d_0`` when
        projected, then ``d_0 * (bounds[1] + tails)``); per row scored by tail cluster i, ``d_model * d_i +
        d_i * size_i``. Scoring the full distribution (no targets) scores every row in every cluster."""
        hidden = inputs[0]
        targets = inputs[1] if len(inputs) > 1 else None
        rows = hidden.numel() // self.d_model
        proj = self.d_model if self.projected else 0
        macs = rows * self.dims[0] * (proj + self.shortlist + self.n_clusters - 1)
        for i in range(1, self.n_clusters):
            lo, hi = self.bounds[i], self.bounds[i + 1]
            scored = rows if targets is None else int(((targets >= lo) & (targets < hi)).sum().item())
            dim = self.dims[i] if self.projected else self.d_model
            macs += scored * dim * (proj + hi - lo)
        return OpCount(mac=float(macs), dense=float(macs))

    def extra_repr(self) -> str:
        return (f"vocab={self.vocab_size}, bounds={self.bounds}, tie_weights={self.tie_weights}, "
                f"tie_projs={self.tie_projs}")
