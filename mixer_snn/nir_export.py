"""Export of the BN-folded spiking sparse-MLP to NIR (the Neuromorphic Intermediate Representation).

``export_nir(model)`` folds a :class:`~mixer_snn.model.SparseMLPSNN` (or takes a folded one) and returns a
``nir.NIRGraph`` whose simulation (SpikingJelly's ``import_from_nir``, :mod:`snn_engine.measure.nir_replay`) gives the
same logits.

NIR has no reshape, transpose or concatenation, and the token projections mix the positions along H or W
with weights shared over channels (not a convolution). So after the stem (``nir.Conv2d`` + ``nir.Flatten``)
every tensor is a channels-first flattened vector ``[C*n*n]`` (index ``c*n*n + i*n + j``) and every map is a
DENSE ``nir.Affine`` / ``nir.Linear`` matrix. Sums (``h + a``, ``h + a + b``) are edges into a neuron: NIR
sums all edges entering a node. The SPE output concat(node1, node2, node3) is an identity ``nir.Linear``
(``<stage>.embed.h``) fed by Affines that place each part into its slice.

Node names: ``input``; ``stem.conv``, ``stem.flat`` (stage-0 anchor h); ``s{k}.embed.*`` (stages 1-3: ``conv``
or SPE ``a1, a2, lif_a, n12, lif_b, x_to_h, n12_to_h, n23_to_h, h``); ``s{k}.lif``; ``s{k}.b{j}.token.
{mix_h,mix_w}.{proj,lif}``, ``.token.identity.{affine,lif}`` (MLP-S), ``.token.fuse.{identity,h,w}``,
``.lif_tok``, ``.channel.{fc1,lif,fc2}``, ``.lif_ch``; ``head`` (or ``head.affine, head.lif, head.linear``);
``output``.

Per-position BN treatments become free in dense matrices: a ``ThresholdNeuron`` (threshold ``v_th/s``)
fed ``I`` equals a plain neuron with threshold ``v_th`` fed ``s*I`` (hard reset to 0), so the rows of the
Affine entering it are scaled by ``s = v_th / threshold``; ``PositionScale`` scales rows, ``PositionLinear``
gives per-position blocks and ``PositionBias`` adds to the bias.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nir
import numpy as np
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import neuron as sj_neuron
from torch import nn

from mixer_snn.blocks import PatchCell
from mixer_snn.fold import FoldedSparseMLP, fold_model, foldable
from mixer_snn.folded import (FoldedChannelBlock, FoldedConv, FoldedHead, FoldedLIFHead, FoldedTokenBlock,
                              PositionLinear, ThresholdNeuron)
from snn_engine.errors import UserError

NODE_TYPES = (nir.Input, nir.Output, nir.Conv2d, nir.Flatten, nir.Affine, nir.Linear, nir.LIF, nir.IF)
ENCODING = "direct: the same image [Cin, H, W] is presented at every one of the T time steps"

Matrix = tuple[torch.Tensor, "torch.Tensor | None"]


@dataclass
class Dense:
    """A pending dense map ``weight [rows, cols]`` (+ bias ``[rows]``; None -> ``nir.Linear``) built by ``make()``."""

    rows: int
    cols: int
    make: Callable[[], Matrix]


class GraphPlan:
    """Nodes (NIR nodes or pending :class:`Dense`) and edges, collected before the dense size check."""

    def __init__(self):
        self.nodes: dict[str, object] = {}
        self.edges: list[tuple[str, str]] = []

    def add(self, name: str, node: object, sources: list[str]) -> str:
        self.nodes[name] = node
        self.edges += [(src, name) for src in sources]
        return name

    def dense_params(self) -> int:
        return sum(d.rows * d.cols + d.rows for d in self.nodes.values() if isinstance(d, Dense))

    def materialize(self) -> dict[str, nir.NIRNode]:
        out = {}
        for name, node in self.nodes.items():
            if isinstance(node, Dense):
                weight, bias = node.make()
                assert weight.shape == (node.rows, node.cols), (name, weight.shape)
                w = numpy64(weight)
                node = nir.Linear(weight=w) if bias is None else nir.Affine(weight=w, bias=numpy64(bias))
            out[name] = node
        return out


# ---------------------------------------------------------------- dense matrices (channels-first flattened)

def eye(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64)


def zeros(n: int) -> torch.Tensor:
    return torch.zeros(n, dtype=torch.float64)


def numpy64(t: torch.Tensor) -> np.ndarray:
    return t.detach().double().cpu().numpy()


def per_channel(values: torch.Tensor | None, positions: int) -> torch.Tensor | None:
    """Per-channel ``[C]`` -> channels-first ``[C*P]`` (None stays None)."""
    return None if values is None else values.double().repeat_interleave(positions)


def shared_matrix(weight: torch.Tensor, positions: int) -> torch.Tensor:
    """Per-position map shared over positions: ``weight [out, in]`` -> ``[out*P, in*P]`` (= kron(W, I_P))."""
    return torch.kron(weight.double(), eye(positions))


def position_matrix(weights: torch.Tensor) -> torch.Tensor:
    """Own map per position: ``weights [P, out, in]`` -> block matrix ``[out*P, in*P]``."""
    P, o, i = weights.shape
    return torch.einsum("poi,pq->opiq", weights.double(), eye(P)).reshape(o * P, i * P)


def token_matrix(proj: nn.Linear, channels: int, n: int, axis: str) -> Matrix:
    """Projection along H or W shared over channels: ``proj (n -> n)`` -> ``[C*n*n, C*n*n]``, bias ``[C*n*n]``."""
    a = proj.weight.double()
    inner = torch.kron(a, eye(n)) if axis == "h" else torch.kron(eye(n), a)
    shape = (1, n, 1) if axis == "h" else (1, 1, n)
    bias = proj.bias.double().view(shape).expand(channels, n, n).flatten()
    return torch.kron(eye(channels), inner), bias


def conv_matrix(conv: nn.Conv2d, n_in: int) -> Matrix:
    """A conv on ``[Cin, n_in, n_in]`` as a dense ``[Cout*no*no, Cin*n_in*n_in]`` (applied to basis inputs)."""
    size = conv.in_channels * n_in * n_in
    basis = eye(size).view(size, conv.in_channels, n_in, n_in)
    y = F.conv2d(basis, conv.weight.double(), None, conv.stride, conv.padding, conv.dilation, conv.groups)
    return y.reshape(size, -1).T.contiguous(), conv.bias.double().repeat_interleave(y.shape[-1] * y.shape[-2])


def position_vector(values: torch.Tensor, features: int) -> torch.Tensor:
    """``[n, n, F or 1]`` per-position values -> channels-first ``[F*n*n]``."""
    n = values.shape[0]
    return values.double().expand(n, n, features).permute(2, 0, 1).flatten()


def single(modules: nn.ModuleList | torch.Tensor, what: str):
    """The one time-invariant weight of a folded layer; per-step (tebn) weights raise :class:`UserError`."""
    if len(modules) != 1:
        raise UserError(f"{what} has one weight per time step (norm=tebn); NIR weights are time-invariant, "
                        "so export a model trained with norm=bn or tdbn")
    return modules[0]


# ---------------------------------------------------------------- neurons

@dataclass
class NeuronSpec:
    """Discrete SpikingJelly dynamics: ``kind`` lif|if, ``tau`` (steps), ``decay_input``, threshold, hard reset."""

    kind: str
    tau: float
    decay_input: bool
    v_threshold: float
    v_reset: float


def neuron_spec(module: nn.Module, v_ref: float) -> tuple[NeuronSpec, torch.Tensor | None]:
    """A neuron module -> its spec and, for a ThresholdNeuron, the row scale ``s [n*n]`` of its input."""
    if isinstance(module, ThresholdNeuron):
        if module.v_reset is None:
            raise _soft_reset()
        kind = "if" if module.decay == 0.0 else "lif"
        tau = 0.0 if kind == "if" else 1.0 / module.decay
        if not torch.equal(torch.sign(module.threshold), module.direction.to(module.threshold.dtype)):
            raise UserError("a ThresholdNeuron's direction differs from its threshold's sign (not made by "
                            "mixer_snn.fold); re-fold the model with fold_model")
        scale = (v_ref / module.threshold.double()).flatten()
        return NeuronSpec(kind, tau, module.decay_input, v_ref, float(module.v_reset)), scale
    kinds = ((sj_neuron.ParametricLIFNode, "plif"), (sj_neuron.LIFNode, "lif"), (sj_neuron.IFNode, "if"))
    kind = next((name for cls, name in kinds if isinstance(module, cls)), None)
    if kind is None:
        raise UserError(f"NIR export supports SpikingJelly LIF/PLIF/IF neurons, got {type(module).__name__}; "
                        "use neuron.kind=lif, plif or if")
    if module.v_reset is None:
        raise _soft_reset()
    tau = float(module.tau) if kind == "lif" else 1.0 / float(module.w.detach().sigmoid()) if kind == "plif" else 0.0
    kind = "if" if kind == "if" else "lif"
    return NeuronSpec(kind, tau, bool(getattr(module, "decay_input", True)), float(module.v_threshold),
                      float(module.v_reset)), None


def _soft_reset() -> UserError:
    return UserError("soft reset (v_reset=None) cannot be exported: NIR neurons reset to v_reset; "
                     "train with neuron.v_reset=0")


def nir_neuron(spec: NeuronSpec, size: int, dt: float) -> nir.NIRNode:
    """SpikingJelly's NIR convention: LIF(tau*dt, r=1 if decay_input else tau, v_leak=v_reset), IF(r=1/dt)."""
    full = lambda v: np.full(size, float(v))  # noqa: E731
    if spec.kind == "if":
        return nir.IF(r=full(1.0 / dt), v_threshold=full(spec.v_threshold), v_reset=full(spec.v_reset))
    return nir.LIF(tau=full(spec.tau * dt), r=full(1.0 if spec.decay_input else spec.tau), v_leak=full(spec.v_reset),
                   v_threshold=full(spec.v_threshold), v_reset=full(spec.v_reset))


class Builder:
    """Adds the folded model's layers to a :class:`GraphPlan` (``dt`` for the neurons, ``v_ref`` their threshold)."""

    def __init__(self, dt: float, v_ref: float):
        self.plan, self.dt, self.v_ref = GraphPlan(), dt, v_ref

    def dense(self, name: str, rows: int, cols: int, make: Callable[[], Matrix], sources: list[str]) -> str:
        return self.plan.add(name, Dense(rows, cols, make), sources)

    def neuron(self, name: str, module: nn.Module, size: int, sources: list[str]) -> str:
        spec, scale = neuron_spec(module, self.v_ref)
        if scale is not None:
            raise AssertionError("ThresholdNeuron outside the channel MLP")
        return self.plan.add(name, nir_neuron(spec, size, self.dt), sources)

    # ------------------------------------------------------------ embeddings
    def stem(self, embed: FoldedConv, in_chans: int, img: int) -> tuple[str, int, int]:
        """Stem conv (+ bias) then Flatten to ``[C*n*n]``: returns (anchor node, C, n)."""
        conv = single(embed.convs, "the stem")
        n = img // conv.stride[0]
        node = nir.Conv2d(input_shape=(img, img), weight=numpy64(conv.weight), stride=tuple(conv.stride),
                          padding=tuple(conv.padding), dilation=tuple(conv.dilation), groups=conv.groups,
                          bias=numpy64(conv.bias))
        self.plan.add("stem.conv", node, ["input"])
        flat = nir.Flatten(input_type={"input": np.array([conv.out_channels, n, n])}, start_dim=0, end_dim=-1)
        return self.plan.add("stem.flat", flat, ["stem.conv"]), conv.out_channels, n

    def conv_embed(self, p: str, embed: FoldedConv, x: str, n_in: int) -> str:
        """2x2/s2 conv (MLP-S) as one dense Affine: spikes ``[Cin*n_in^2]`` -> anchor ``[C*n^2]``."""
        conv = single(embed.convs, f"{p}.embed")
        rows = conv.out_channels * (n_in // 2) ** 2
        return self.dense(f"{p}.embed.conv", rows, conv.in_channels * n_in * n_in, lambda: conv_matrix(conv, n_in), [x])

    def patch_cell(self, p: str, cell: PatchCell, x: str, n_in: int) -> str:
        """SPE: h = concat(a1, a2 + n12(lif_a(a1)), a3 + a1 + n23(lif_b(node2))) as an identity Linear sum."""
        m, P = cell.n, (n_in // 2) ** 2
        c2n = single(cell.cell2node.convs, f"{p}.embed")
        c12, c23 = single(cell.node1_to_node2.convs, p), single(cell.node2_to_node3.convs, p)
        cols, part = c2n.in_channels * n_in * n_in, m * P

        def rows_of(k: int) -> Matrix:
            w, b = conv_matrix(c2n, n_in)
            return w[k * part:(k + 1) * part], b[k * part:(k + 1) * part]

        def x_to_h() -> Matrix:
            w, b = conv_matrix(c2n, n_in)
            w[2 * part:] += w[:part]
            b[2 * part:] += b[:part]
            return w, b

        def placed(conv: nn.Conv2d, k: int) -> Matrix:
            w, b = conv_matrix(conv, int(P ** 0.5))
            big, bias = torch.zeros(3 * part, part, dtype=torch.float64), zeros(3 * part)
            big[k * part:(k + 1) * part], bias[k * part:(k + 1) * part] = w, b
            return big, bias

        a1 = self.dense(f"{p}.embed.a1", part, cols, lambda: rows_of(0), [x])
        lif_a = self.neuron(f"{p}.embed.lif_a", cell.lif_a, part, [a1])
        a2 = self.dense(f"{p}.embed.a2", part, cols, lambda: rows_of(1), [x])
        n12 = self.dense(f"{p}.embed.n12", part, part, lambda: conv_matrix(c12, int(P ** 0.5)), [lif_a])
        lif_b = self.neuron(f"{p}.embed.lif_b", cell.lif_b, part, [a2, n12])
        parts = [self.dense(f"{p}.embed.x_to_h", 3 * part, cols, x_to_h, [x]),
                 self.dense(f"{p}.embed.n12_to_h", 3 * part, part, lambda: placed(c12, 1), [lif_a]),
                 self.dense(f"{p}.embed.n23_to_h", 3 * part, part, lambda: placed(c23, 2), [lif_b])]
        return self.dense(f"{p}.embed.h", 3 * part, 3 * part, lambda: (eye(3 * part), None), parts)

    # ------------------------------------------------------------ mixer blocks
    def token_block(self, p: str, tok: FoldedTokenBlock, x: str, C: int, n: int) -> list[str]:
        """Token block -> the three fuse nodes whose summed outputs are the current ``a [C*n*n]``."""
        N, P = C * n * n, n * n
        spikes = {}
        for axis, mixing in (("h", tok.mix_h), ("w", tok.mix_w)):
            proj = single(mixing.proj, f"{p}.mix_{axis}")
            make = (lambda proj=proj, axis=mixing.axis: token_matrix(proj, C, n, axis))
            node = self.dense(f"{p}.mix_{axis}.proj", N, N, make, [x])
            spikes[axis] = self.neuron(f"{p}.mix_{axis}.lif", mixing.lif, N, [node])
        identity = x
        if tok.identity_affine is not None:
            aff = tok.identity_affine
            scale, shift = single(aff.scale, p), single(aff.bias, p)
            make = lambda: (torch.diag(per_channel(scale, P)), per_channel(shift, P))  # noqa: E731
            node = self.dense(f"{p}.identity.affine", N, N, make, [x])
            identity = self.neuron(f"{p}.identity.lif", tok.identity_lif, N, [node])
        fuse = single(tok.fuse, f"{p}.fuse")
        w = fuse.weight.double()
        fuse_bias = zeros(N) if fuse.bias is None else per_channel(fuse.bias, P)
        return [self.dense(f"{p}.fuse.identity", N, N, lambda: (shared_matrix(w[:, :C], P), fuse_bias), [identity]),
                self.dense(f"{p}.fuse.h", N, N, lambda: (shared_matrix(w[:, C:2 * C], P), None), [spikes["h"]]),
                self.dense(f"{p}.fuse.w", N, N, lambda: (shared_matrix(w[:, 2 * C:], P), None), [spikes["w"]])]

    def channel_block(self, p: str, ch: FoldedChannelBlock, x: str, C: int, n: int) -> str:
        """Channel MLP -> the fc2 node (current ``b [C*n*n]``); BN treatments merged into the dense rows."""
        P = n * n
        fc1 = single(ch.fc1, f"{p}.fc1")
        Fh = fc1.out_features
        spec, thr_scale = neuron_spec(ch.lif, self.v_ref)

        def make1() -> Matrix:
            w, b = shared_matrix(fc1.weight, P), per_channel(fc1.bias, P)
            if ch.scale1 is not None:
                s = ch.scale1.scale.double().flatten().repeat(Fh)
                w, b = s[:, None] * w, s * b
            if ch.bias1 is not None:
                b = b + position_vector(single(ch.bias1.bias, f"{p}.bias1"), Fh)
            if thr_scale is not None:
                s = thr_scale.repeat(Fh)
                w, b = s[:, None] * w, s * b
            return w, b

        def make2() -> Matrix:
            if isinstance(ch.fc2, PositionLinear):
                w, b = position_matrix(single(ch.fc2.weight, f"{p}.fc2").reshape(P, C, Fh)), zeros(C * P)
            else:
                lin = single(ch.fc2, f"{p}.fc2")
                w = shared_matrix(lin.weight, P)
                b = zeros(C * P) if lin.bias is None else per_channel(lin.bias, P)
            if ch.scale2 is not None:
                s = ch.scale2.scale.double().flatten().repeat(C)
                w, b = s[:, None] * w, s * b
            if ch.bias2 is not None:
                b = b + position_vector(single(ch.bias2.bias, f"{p}.bias2"), C)
            return w, b

        node1 = self.dense(f"{p}.fc1", Fh * P, C * P, make1, [x])
        lif = self.plan.add(f"{p}.lif", nir_neuron(spec, Fh * P, self.dt), [node1])
        return self.dense(f"{p}.fc2", C * P, Fh * P, make2, [lif])

    def mixer_block(self, p: str, block: nn.Module, x: str, h: str, C: int, n: int) -> str:
        """``lif_ch(h + a + b)`` with ``a = token(x)``, ``b = channel(lif_tok(h + a))``: sums are edges."""
        a = self.token_block(f"{p}.token", block.token, x, C, n)
        lif_tok = self.neuron(f"{p}.lif_tok", block.lif_tok, C * n * n, [h] + a)
        b = self.channel_block(f"{p}.channel", block.channel, lif_tok, C, n)
        return self.neuron(f"{p}.lif_ch", block.lif_ch, C * n * n, [h] + a + [b])

    # ------------------------------------------------------------ head
    def head(self, head: nn.Module, x: str, C: int, n: int) -> str:
        """Spatial spike counts -> logits ``[K]``: column ``(c, p)`` of the dense head is ``W'[:, c]``."""
        P = n * n
        if isinstance(head, FoldedHead):
            w, b = single(head.weight, "the head"), single(head.bias, "the head")
            make = lambda: (w.double().repeat_interleave(P, dim=1), b.double())  # noqa: E731
            return self.dense("head", w.shape[0], C * P, make, [x])
        if not isinstance(head, FoldedLIFHead):
            raise UserError(f"unknown folded head {type(head).__name__}; fold the model with mixer_snn.fold.fold_model")
        scale, shift = single(head.affine.scale, "the head"), single(head.affine.bias, "the head")
        ones = torch.ones(1, P, dtype=torch.float64)
        make = lambda: (torch.kron(torch.diag(scale.double()), ones), shift.double())  # noqa: E731
        aff = self.dense("head.affine", C, C * P, make, [x])
        lif = self.neuron("head.lif", head.lif, C, [aff])
        lin = head.linear
        return self.dense("head.linear", lin.out_features, C, lambda: (lin.weight.double(), lin.bias.double()), [lif])


def reference_threshold(folded: FoldedSparseMLP) -> float:
    """The threshold given to neurons that replace a ThresholdNeuron: the stage-0 neuron's ``v_threshold``."""
    v = float(getattr(folded.stages[0].lif, "v_threshold", 1.0))
    if v <= 0:
        raise UserError(f"neuron v_threshold={v} must be positive for NIR export; fix neuron.v_threshold")
    return v


def build_plan(folded: FoldedSparseMLP, dt: float) -> Builder:
    """Walk the folded model stage by stage into a :class:`GraphPlan` (dense maps still pending)."""
    b = Builder(dt, reference_threshold(folded))
    img = folded.img_size
    b.plan.add("input", nir.Input(input_type={"input": np.array([folded.in_chans, img, img])}), [])
    x, C, n = "", 0, 0
    for s, stage in enumerate(folded.stages):
        if s == 0:
            h, C, n = b.stem(stage.embed, folded.in_chans, img)
        elif isinstance(stage.embed, PatchCell):
            h, C, n = b.patch_cell(f"s{s}", stage.embed, x, n), 2 * C, n // 2
        else:
            h, C, n = b.conv_embed(f"s{s}", stage.embed, x, n), 2 * C, n // 2
        x = b.neuron(f"s{s}.lif", stage.lif, C * n * n, [h])
        for j, block in enumerate(stage.blocks):
            x = b.mixer_block(f"s{s}.b{j}", block, x, h, C, n)
    logits = b.head(folded.head, x, C, n)
    b.plan.add("output", nir.Output(output_type={"output": np.array([folded.num_classes])}), [logits])
    return b


def export_nir(model: nn.Module, path: str | Path | None = None, *, dt: float = 1e-4, position_bn: str = "threshold",
               max_dense_params: int = 50_000_000) -> nir.NIRGraph:
    """A trained :class:`SparseMLPSNN` (folded here) or a :class:`FoldedSparseMLP` -> ``nir.NIRGraph``.

    Input node: one image ``[Cin, H, W]`` presented at every step; output node: logits ``[K]`` per step.
    Writes the graph with ``nir.write(path, graph)`` when ``path`` is given.
    """
    if not isinstance(model, FoldedSparseMLP) and not foldable(model):
        raise UserError(f"NIR export takes a SparseMLPSNN or FoldedSparseMLP, got {type(model).__name__}; "
                        "export the sparse-MLP model")
    if model.norm == "tebn":
        raise UserError("norm=tebn has one weight per time step; NIR weights are time-invariant, so export a "
                        "model trained with norm=bn or tdbn")
    source = type(model).__name__
    if not isinstance(model, FoldedSparseMLP):
        model = fold_model(model, position_bn=position_bn)
    if not dt > 0:
        raise UserError(f"dt={dt} must be positive; pass e.g. dt=1e-4")
    with torch.no_grad():
        builder = build_plan(model, dt)
        count = builder.plan.dense_params()
        if count > max_dense_params:
            raise UserError(f"this model needs {count:,} dense NIR parameters > max_dense_params={max_dense_params:,}: "
                            "NIR has no reshape/transpose, so token mixing is exported as dense matrices; export a "
                            "smaller model (img_size, dim) or raise max_dense_params")
        nodes = builder.plan.materialize()
    metadata = {"time_steps": int(model.T), "encoding": ENCODING, "source_model": source, "dt": float(dt),
                "layout": "channels-first flattened vectors [C*n*n], index c*n*n + i*n + j",
                "position_bn": str(model.position_bn), "dense_params": int(count)}
    graph = nir.NIRGraph(nodes=nodes, edges=builder.plan.edges, metadata=metadata)
    if path is not None:
        nir.write(str(path), graph)
    return graph
