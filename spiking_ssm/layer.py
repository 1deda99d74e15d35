"""The SpikingSSM layer and its residual block (reference sections 2.1 and 2.2).

Shape convention: both modules take and return **[B, H, L]** (channels before time, the reference's
``transposed=True``); the backbones transpose from/to [B, L, H]. The neuron gets time-major [L, B, H].

Layer forward, in order: S4D kernel convolution (causal or bidirectional) + D skip, division by the threshold theta
(the last two folded into the convolution kernel), spiking neuron, dropout with the mask shared over time, pointwise
Conv1d H -> 2H, GLU.

The convolution has two paths, chosen by ``conv`` (``model.conv``): ``fft`` (the reference: one FFT convolution with
the length-L kernel) and ``chunked`` (:mod:`spiking_ssm.chunked`: chunks of ``conv_chunk`` steps, an in-chunk
Toeplitz product plus the S4D mode states carried between chunks; the same numbers to rounding, no FFT). ``auto``
takes ``chunked`` with its Triton kernel on CUDA and ``fft`` elsewhere: on CPU the FFT measured 2-4.5x faster than the
chunked torch code at every length tried (:data:`CPU_MEASUREMENT`).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn

from snn_engine.errors import UserError
from snn_engine.measure.ops import OpContext, OpCount
from snn_engine.training.recompute import checkpoint_spiking
from spiking_ssm import chunked
from spiking_ssm.kernels import runtime
from spiking_ssm.mixing import PointwiseConv1d
from spiking_ssm.s4d import S4DKernel, bidirectional_kernel, fft_conv

THRESHOLDS = ("channel", "shared", "fixed")
CONVS = ("auto", "fft", "chunked")
CHUNKS = (16, 32, 64, 128)
CONV_PRECISIONS = ("ieee", "tf32x3", "tf32")
CPU_MEASUREMENT = (  # why ``auto`` keeps the FFT on CPU (median ms, fwd+bwd of the bidirectional current path)
    "2 cores, torch 2.15, batch 4, width 64, d_state 64: L=256 fft 3.1 / chunked(32) 13.9; L=1024 7.6 / 25.9; "
    "L=8192 55.0 / 113.5 (chunk 64); benchmarks/neuron_speed.py --convs fft chunked --decompose"
)
NORMS = {"batch": "batch", "bn": "batch", "layer": "layer", "ln": "layer"}
NORM_PLACES = ("pre", "post", "none")


class DropoutNd(nn.Module):
    """Dropout whose mask has shape [B, C, 1]: one draw per sample and channel, shared over time (last axis)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise UserError(f"model.dropout={p} must be in [0, 1)")
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty(x.shape[0], x.shape[1], *([1] * (x.ndim - 2)), device=x.device, dtype=x.dtype)
        return x * mask.bernoulli_(keep) / keep

    def extra_repr(self) -> str:
        return f"p={self.p}, mask shared over time"


class SpikingSSM(nn.Module):
    """One SpikingSSM layer: [B, H, L] -> [B, H, L].

    ``conv``/``conv_chunk``: the current path (module docstring). ``conv_precision``: how the Triton chunked
    kernel multiplies float32: ``tf32x3`` (default: three tensor-core products of split operands; float32 accuracy,
    2-2.5e-7 relative against float64 in an emulation, as ``ieee``), ``ieee`` (FFMA) or ``tf32`` (one product, about
    3e-4: only when asked for); float64 and the torch path are always exact. ``fuse_soma``: on that path, let a soma
    that can (sdn) compute the currents itself (:meth:`spikes`). ``last_implementation`` names the path the latest
    call ran; ``reports_path`` lets :class:`snn_engine.measure.kernel_usage.ImplementationCounter` count it.

    ``threshold``: ``"channel"`` (learnable theta = exp(ln_theta) per channel, init 1: "VT"), ``"shared"``
    (one learnable scalar) or ``"fixed"`` (theta = 1, "VF"). ``D`` is stored as [H, 1] so that, like the
    reference's (1, H) D, it receives the global weight decay; ``ln_theta`` is an ordinary parameter too.
    """

    reports_path = True

    def __init__(
        self,
        d_model: int,
        neuron: Callable[[], nn.Module],
        d_state: int = 64,
        dropout: float = 0.0,
        bidirectional: bool = False,
        trainable_B: bool = False,
        threshold: str = "channel",
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        ssm_lr: float = 1e-3,
        s4d_implementation: str = "auto",
        conv: str = "auto",
        conv_chunk: int = 64,
        conv_precision: str = "tf32x3",
        fuse_soma: bool = False,
    ):
        super().__init__()
        if threshold not in THRESHOLDS:
            raise UserError(f"model.threshold={threshold!r}; choose one of {THRESHOLDS}")
        if conv not in CONVS:
            raise UserError(f"model.conv={conv!r}; choose one of {CONVS}")
        if conv_chunk not in CHUNKS:
            raise UserError(f"model.conv_chunk={conv_chunk!r}; choose one of {CHUNKS}")
        if conv_precision not in CONV_PRECISIONS:
            raise UserError(f"model.conv_precision={conv_precision!r}; choose one of {CONV_PRECISIONS}")
        if not isinstance(fuse_soma, bool):
            raise UserError(f"model.fuse_soma={fuse_soma!r} must be true or false")
        self.conv = conv
        self.conv_chunk = int(conv_chunk)
        self.conv_precision = conv_precision
        self.fuse_soma = fuse_soma
        self.last_implementation: str | None = None  # the current path of the latest call, e.g. "chunked (torch)"
        H = d_model
        self.d_model = H
        self.bidirectional = bool(bidirectional)
        self.threshold = threshold
        self.kernel = S4DKernel(
            H, d_state, channels=2 if bidirectional else 1, dt_min=dt_min, dt_max=dt_max,
            trainable_B=trainable_B, ssm_lr=ssm_lr, implementation=s4d_implementation,
        )
        self.D = nn.Parameter(torch.randn(H, 1))
        if threshold == "channel":
            self.ln_theta = nn.Parameter(torch.zeros(H, 1))
        elif threshold == "shared":
            self.ln_theta = nn.Parameter(torch.zeros(1, 1))
        else:
            self.register_buffer("ln_theta", torch.zeros(1, 1))
        self.neuron = neuron()
        self.dropout = DropoutNd(dropout)
        self.output_linear = PointwiseConv1d(H, 2 * H)  # nn.Conv1d(H, 2H, 1); form: spiking_ssm.mixing
        self.glu = nn.GLU(dim=1)

    def conv_kernel(self, length: int) -> torch.Tensor:
        """``(K + D delta_0) / theta``: the whole current path as one kernel, [H, L] causal or [H, 2L] bidirectional.

        The D skip is the kernel's tap at lag 0 and the threshold scales the kernel, so both cost O(H L) here
        instead of O(B H L) elementwise passes (and their backward reductions) on the layer's activations.
        """
        k = self.kernel(length)
        k = bidirectional_kernel(k) if self.bidirectional else k[0]
        k = torch.cat([k[:, :1] + self.D.to(k.dtype), k[:, 1:]], dim=-1)
        return k / torch.exp(self.ln_theta).to(k.dtype)

    def chunk_operators(self) -> list[chunked.ChunkOperators]:
        """The chunked path's operators: ``[causal]`` or ``[causal, anti-causal]`` (bidirectional), with D and
        ``1/theta`` folded in (:func:`spiking_ssm.chunked.chunk_operators`), computed in float64 from the
        parameters whatever their dtype (the operators are [H, N, Q] small; cast by the caller): in float32 the
        rounding of ``dt A`` alone turns the phase of a slow mode by ``|Im(dt A)| t 6e-8`` rad after t steps."""
        dtA, Bbar, C = self.kernel._zoh(torch.float64)
        coeff = C * Bbar  # [channels, H, N/2]
        scale = torch.exp(-self.ln_theta.double().reshape(-1)).expand(self.d_model)
        ops = [chunked.chunk_operators(coeff[0], dtA, self.conv_chunk, 0, self.D.double().reshape(-1), scale)]
        if self.bidirectional:
            ops.append(chunked.chunk_operators(coeff[1], dtA, self.conv_chunk, 1, None, scale))
        return ops

    def conv_for(self, u: torch.Tensor) -> str:
        """``"fft"``, ``"chunked (torch)"`` or ``"chunked (triton)"``: the current path for input u [B, H, L]."""
        if self.conv == "fft":
            return "fft"
        reason = _triton_unsupported(u)
        if self.conv == "auto":
            on_cuda = u.device.type == "cuda" and runtime.triton_unavailable(u.device) is None and reason is None
            return "chunked (triton)" if on_cuda and self.kernel.implementation != "torch" else "fft"
        chunked_kernel = runtime.choose(self.kernel.implementation, "chunked convolution", u.device, reason,
                                        setting="model.s4d_implementation")
        return f"chunked ({chunked_kernel})"

    def current(self, u: torch.Tensor) -> torch.Tensor:
        """The neuron's input ``(K * u + D u) / theta`` for u [B, H, L] -> [B, H, L] (with the FFT, a strided view
        of its output: the fused somas read it in place)."""
        path = self.conv_for(u)
        self.last_implementation = path
        if path == "fft":
            return fft_conv(u, self.conv_kernel(u.shape[-1]))
        u = _float32_under_autocast(u)
        run = chunked.chunked_conv
        if path == "chunked (triton)":
            from spiking_ssm.kernels.chunked_conv import chunked_conv_triton

            run = functools.partial(chunked_conv_triton, precision=self.conv_precision)
        with torch.autocast(u.device.type, enabled=False):  # autocast would run the products in half precision
            ops = self._operators(u.dtype)
            y = run(u, ops[0])
            if self.bidirectional:
                y = y + run(u, ops[1], reverse=True)
        return y

    def _operators(self, dtype: torch.dtype) -> list[chunked.ChunkOperators]:
        return [chunked.ChunkOperators(*(t.to(dtype) for t in op)) for op in self.chunk_operators()]

    def _fuses_soma(self, u: torch.Tensor) -> bool:
        """True when the soma computes the chunked currents itself (``fuse_soma``, the chunked Triton path and a
        soma that ``accepts_chunked_currents``: the sdn soma's fused kernel)."""
        accepts = getattr(self.neuron, "accepts_chunked_currents", None)
        return (self.fuse_soma and accepts is not None and self.conv_for(u) == "chunked (triton)"
                and accepts(_float32_under_autocast(u)))

    def spikes(self, u: torch.Tensor) -> torch.Tensor:
        """Neuron output [B, H, L] (binary for a spiking neuron).

        The neuron sees time-major [L, B, H]. Somas that declare ``accepts_strided_input`` (the fused sdn and
        sltt) get the permuted view of the current and return a view of [B, H, L] memory: no transposing copy.
        With ``fuse_soma`` on the chunked Triton path, a soma that ``accepts_chunked_currents`` (sdn) gets a
        :class:`spiking_ssm.chunked.ChunkedCurrents` instead and computes the currents itself, chunk by chunk, without
        storing them (forward keeps u and the operators; backward recomputes).
        """
        if self._fuses_soma(u):
            u = _float32_under_autocast(u)
            self.last_implementation = "chunked (triton, fused with the soma)"
            with torch.autocast(u.device.type, enabled=False):
                currents = chunked.ChunkedCurrents(u, self._operators(u.dtype), self.conv_precision)
                return self.neuron(currents).permute(1, 2, 0)
        y = self.current(u).permute(2, 0, 1)
        if not getattr(self.neuron, "accepts_strided_input", False):
            y = y.contiguous()
        return self.neuron(y).permute(1, 2, 0)

    def mix(self, s: torch.Tensor) -> torch.Tensor:
        """Dropout (shared over time), pointwise conv H -> 2H and GLU: [B, H, L] -> [B, 2H, L] -> [B, H, L].

        ``output_linear`` is an ``nn.Conv1d(H, 2H, 1)`` (:class:`spiking_ssm.mixing.PointwiseConv1d`) run as a
        convolution (``form="conv"``): on CPU no other form was faster in every case (:mod:`spiking_ssm.mixing`)."""
        return self.glu(self.output_linear(self.dropout(s)))

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if u.ndim != 3 or u.shape[1] != self.d_model:
            raise ValueError(f"SpikingSSM expects [B, H={self.d_model}, L], got {tuple(u.shape)}")
        return self.mix(self.spikes(u))

    def ops_targets(self, convention: str) -> list[tuple[str, nn.Module]]:
        """What :class:`snn_engine.measure.ops.OpCounter` counts under a paper's convention: the SpikingSSM paper
        (``ssm_paper``) counts the 1x1 mixing conv only."""
        return [("output_linear", self.output_linear)] if convention == "ssm_paper" else []

    energy_compute_unseen = True  # snn_engine.measure.energy_unseen: SpikingJelly's counters have no rule for the S4D conv

    def energy_state_elements(self, inputs: tuple) -> int:
        """Real values of S4D state read per call on u [B, H, L] (as many written back), for
        :mod:`snn_engine.measure.energy_unseen`: N per channel and step (N/2 complex modes), per direction."""
        u = inputs[0]
        return u.shape[0] * u.shape[1] * u.shape[2] * self.energy_state_per_step() // self.d_model

    def energy_state_per_step(self) -> int:
        """Real values of S4D state held at one step of one sequence: H x N per direction."""
        return self.d_model * self.kernel.d_state * (2 if self.bidirectional else 1)

    def count_ops(self, inputs: tuple, output: torch.Tensor, ctx: OpContext) -> OpCount:
        """MACs of this layer's own real-valued work on u [B, H, L] (children count themselves).

        The S4D convolution is counted at its recurrent (streaming deployment) cost: per channel and step,
        N/2 complex modes each updated ``x <- Abar x + Bbar u`` (4 + 2 real MACs) and read out ``Re(C x)``
        (2 real MACs) = 8 per mode = 4 N per channel per step (N = d_state), doubled when bidirectional; plus
        1 MAC for ``D u`` and 1 for the division by the threshold theta (which could be folded into C and D).
        The input is real, so the ANN count (``dense``) is the same number.
        """
        u = inputs[0]
        directions = 2 if self.bidirectional else 1
        per_step = 4 * self.kernel.d_state * directions + 2
        macs = float(u.shape[0] * u.shape[1] * u.shape[2] * per_step)
        return OpCount(mac=macs, dense=macs)


def _float32_under_autocast(u: torch.Tensor) -> torch.Tensor:
    """Half-precision input (autocast) -> float32: the current path runs in float32, as the FFT path does."""
    return u.float() if u.dtype in (torch.float16, torch.bfloat16) else u


def _triton_unsupported(u: torch.Tensor) -> str | None:
    """Why the Triton chunked convolution cannot take ``u`` (half precision runs in float32), or None."""
    if u.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return f"it takes float32/float64 inputs, not {u.dtype}"
    return None


def make_norm(norm: str, d_model: int) -> nn.Module:
    """BatchNorm1d over channels or LayerNorm(H), both applied to [B, H, L]."""
    kind = NORMS.get(norm)
    if kind is None:
        raise UserError(f"model.norm={norm!r}; choose one of {sorted(NORMS)}")
    return nn.BatchNorm1d(d_model) if kind == "batch" else ChannelLayerNorm(d_model)


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channel axis of [B, H, L]."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class SpikingSSMBlock(nn.Module):
    """Residual block around :class:`SpikingSSM` on [B, H, L].

    ``norm_place="pre"``: x + drop(layer(norm(x))); ``"post"``: norm(x + drop(layer(x))) (a working post-norm;
    the reference's post-norm discards the normalised value); ``"none"``: x + drop(layer(x)) with no norm module,
    which is what the reference effectively runs for its post-norm ("noNorm") configs.

    ``checkpoint=True`` keeps only the layer's input during training and recomputes the layer (S4D convolution,
    soma, GLU) in backward (:func:`snn_engine.training.recompute.checkpoint_spiking`, SpikingJelly's ``memopt``): the same
    gradients for a fraction of the activation memory (Path-X), with any soma (SpikingJelly's LIF is recomputed
    from the membrane it started from). The norm stays outside the recomputation.
    """

    def __init__(
        self, d_model: int, neuron: Callable[[], nn.Module], norm: str = "batch", norm_place: str = "pre",
        dropout: float = 0.0, checkpoint: bool = False, **layer_kwargs,
    ):
        super().__init__()
        if norm_place not in NORM_PLACES:
            raise UserError(f"model.norm_place={norm_place!r}; choose one of {NORM_PLACES}")
        self.norm_place = norm_place
        self.layer = SpikingSSM(d_model, neuron, dropout=dropout, **layer_kwargs)
        self.norm = make_norm(norm, d_model) if norm_place != "none" else nn.Identity()
        self.dropout = DropoutNd(dropout)
        self.checkpoint = bool(checkpoint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.norm(x) if self.norm_place == "pre" else x
        z = checkpoint_spiking(self.layer, z) if self.checkpoint else self.layer(z)
        x = x + self.dropout(z)
        return self.norm(x) if self.norm_place == "post" else x
