"""Every launch the layer makes of a Triton kernel, as compile plans: kernel, arguments as the launcher sees them,
autotune config, dtype, and the per-element bookkeeping a cost model needs, with the budget the kernel must meet.

``plans(shape, everything=True)`` lists each kernel x autotune config x dtype the code accepts, and in float32 the
other store flags and channel counts too; the default (``everything=False``) is the float32 benchmark set.
A :class:`Shape` gives the sizes: the benchmark is batch 64, width 256, L = 8192, d_state 64 (rows ``[B, H, L]`` read
from the FFT output, row stride 2L); ``ODD`` has a length and strides that are not multiples of 16, so the launcher
gives no divisibility hints.
"""

from __future__ import annotations

import dataclasses

import torch

from spiking_ssm.kernels import chunked_conv, chunked_soma, lif_fixed_point, soma, vandermonde
from kernel_model.offline import stand_in
from kernel_model.roofline import Access

SOMA_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
S4D_DTYPES = (torch.float32, torch.float64)


@dataclasses.dataclass(frozen=True)
class Shape:
    batch: int = 64
    width: int = 256
    length: int = 8192
    d_state: int = 64
    row_stride: int = 2 * 8192  # currents are a slice of the FFT output, 2L long per row

    @property
    def rows(self) -> int:
        return self.batch * self.width


BENCH = Shape()
ODD = Shape(batch=3, width=5, length=263, d_state=8, row_stride=263)


@dataclasses.dataclass
class Plan:
    name: str  # "sdn fwd", ...
    config: str  # the autotune config, e.g. "BLOCK=256 w4"
    dtype: torch.dtype
    kernel: object  # the @triton.jit function
    args: tuple
    constants: dict
    num_warps: int
    elements: int  # of the launch
    elements_per_thread: float
    trips: float  # loop-body runs per program
    bytes_per_element: float  # DRAM traffic the launch must make
    access: Access
    max_registers: int
    max_instructions: float  # SASS instructions per element
    fp_fusion: bool = True  # compiled with FMA contraction (as launched)
    runs: dict[int, float] | None = None  # expected runs per trip of code nested d loops deep (None: once)
    guarded: dict[str, float] | None = None  # runs of the code a branch on this source line skips, per run around
    prefetch: int = 1  # load batches a software-pipelined loop keeps in flight (STAGES - 1)
    allowed_spill_bytes: dict[int, int] = dataclasses.field(default_factory=dict)  # arch -> spill stores allowed

    @property
    def label(self) -> str:
        return f"{self.name} [{self.config}] {str(self.dtype).replace('torch.', '')}"


def _configs(tuned) -> list[tuple[dict, int]]:
    return [(dict(config.kwargs), config.num_warps) for config in tuned.configs]


def _describe(kwargs: dict, warps: int) -> str:
    return " ".join(f"{k}={v}" for k, v in kwargs.items()) + f" w{warps}"


def _size(dtype: torch.dtype) -> int:
    return torch.empty(0, dtype=dtype).element_size()


# Spill stores (bytes, ptxas -v) the float64 SDN forward is allowed, per (BLOCK, warps) and arch: its 153 weights
# come from memory as doubles (two registers each) and its steps' windows and hidden units as doubles, more than
# 255 registers hold; the autotune configs are shared with float32, which does not spill. A few percent of its
# instructions are the spills' STL/LDL (counted in the model); float64 is a correctness path, not a fast one.
# Measured (Triton 3.9 ptxas): sm_90 656-660 B (2700 B with 16 steps per thread), sm_80 1352-1436 B (16340 B with 16
# steps per thread, where ptxas keeps only 32 registers). Limits a little above, so a growth fails the test.
SDN_F64_SPILLS = {(512, 2): {80: 1500, 90: 700}, (1024, 4): {80: 1500, 90: 700}, (2048, 8): {80: 1500, 90: 700},
                  (1024, 2): {80: 16500, 90: 2800}}


def _sdn(shape: Shape, dtype, store_g: bool) -> list[Plan]:
    n, length, size = shape.rows, shape.length, _size(dtype)
    f64 = dtype == torch.float64
    aligned = shape.row_stride % 16 == 0 and length % 16 == 0  # vector loads (no hints: scalar ones, more work)
    y, out = stand_in(dtype), stand_in(dtype)
    w = stand_in(torch.float64) if f64 else tuple(0.5 for _ in range(soma.SDN_NUM_WEIGHTS + 1))  # as the launch
    args = (y, out, out, w, length, shape.row_stride, 1, length, 1, n.bit_length(), length.bit_length())
    result = []
    for kwargs, warps in _configs(soma._sdn_forward_tuned):
        per_thread = kwargs["BLOCK"] / (32 * warps)  # in quads: one access covers a lane's 4 steps, lanes 4 apart
        result.append(Plan("sdn fwd" + ("" if store_g else " (no g)"), _describe(kwargs, warps), dtype,
                           soma._sdn_forward_kernel, args,
                           dict(kwargs, STORE_G=store_g, F64=f64, W_IN_ARGS=not f64), warps,
                           n * length, per_thread, 0, size * (3 if store_g else 2), Access(4 * size),
                           max_registers=255, max_instructions=850 if f64 else 190 if aligned else 250,
                           allowed_spill_bytes=SDN_F64_SPILLS.get((kwargs["BLOCK"], warps), {}) if f64 else {}))
    return result


def _sltt(shape: Shape, dtype, store_g: bool, store_v: bool) -> list[Plan]:
    n, length, size = shape.rows, shape.length, _size(dtype)
    aligned = shape.row_stride % 16 == 0 and length % 16 == 0
    y, out, p = stand_in(dtype), stand_in(dtype), stand_in(soma.compute_dtype(dtype))
    args = (y, out, out, out, p, n, length, shape.row_stride, 1, length, 1, n.bit_length(), length.bit_length())
    result = []
    for kwargs, warps in _configs(soma._sltt_forward_tuned):
        per_thread = kwargs["ROWS"] * length / (32 * warps)
        name = "sltt fwd" + ("" if store_g else " (no g)") + (" +v" if store_v else "")
        result.append(Plan(name, _describe(kwargs, warps), dtype, soma._sltt_forward_kernel, args,
                           dict(kwargs, STORE_G=store_g, STORE_V=store_v, F64=dtype == torch.float64), warps,
                           n * length, per_thread, length / kwargs["CHUNK"], size * (2 + store_g + store_v),
                           Access(size, rows=True), max_registers=128, prefetch=max(1, kwargs["STAGES"] - 1),
                           # unaligned: scalar accesses, plus the async copies' address arithmetic when pipelined
                           max_instructions=24 if aligned and dtype != torch.float64 else 72))
    return result


def _s4d(shape: Shape, dtype, channels: int) -> list[Plan]:
    h, n2, length = shape.width, shape.d_state // 2, shape.length
    real = stand_in(dtype)
    f64 = dtype == torch.float64
    size = _size(dtype)
    elements = channels * h * length
    forward = []
    for kwargs, warps in _configs(vandermonde._forward_tuned):
        args = (real, real, real, h, n2, length, length.bit_length())
        forward.append(Plan(f"s4d fwd C={channels}", _describe(kwargs, warps), dtype,
                            vandermonde._vandermonde_forward_kernel, args, dict(kwargs, C=channels, F64=f64), warps,
                            elements, kwargs["BLOCK"] / (32 * warps) * channels, n2, size,
                            Access(int(kwargs["BLOCK"] / (32 * warps)) * size),
                            max_registers=128, max_instructions=(10000 if f64 else 2400) / channels))
    block, warps = vandermonde.BLOCK, 4
    blocks = -(-length // block)
    partials = blocks * (channels + 1) * h * n2 * 2 * size  # written by the kernel, read by torch's sum
    backward = Plan(f"s4d bwd C={channels}", _describe({"BLOCK": block}, warps), dtype,
                    vandermonde._vandermonde_backward_kernel, (real, real, real, real, real, h, n2, length),
                    dict(C=channels, BLOCK=block, MODES=vandermonde.backward_modes(n2), SPAN=vandermonde.SPAN,
                         F64=f64), warps, elements, block / (32 * warps) * channels, block / vandermonde.SPAN,
                    size + 2 * partials / elements, Access(int(block / (32 * warps)) * size),
                    max_registers=192 if f64 else 128, max_instructions=(8000 if f64 else 2000) / channels)
    return forward + [backward]


EXTRA_SCANS = 2.2  # scans per chunk beyond the first, measured: zero guess, N(0,1) currents, tau 0.125, BLOCK 512
SWEEP_WORDS = 0.02  # 32-step sweep words per chunk, measured the same way (0.010 sweeps of 64 steps per chunk)
# chunks that take the rounding block (a step within the doubtful band of the threshold), measured the same way on
# 256 rows of 8192 steps with the kernel's margin: 1.5% in float32, none of 4096 chunks in float64
ROUNDING = "if tl.max(doubtful, 0) > 0:"
ROUNDING_CHUNKS = {torch.float32: 0.015, torch.float64: 0.0}


def _exact_lif(shape: Shape, dtype) -> list[Plan]:
    """The ``lif_parallel`` soma: the fused fixed-point forward (zero guess, as ``guess=auto`` launches it) and the
    BPTT backward, launched with the soma's default ``sweep=64``. The forward's currents are the layer's FFT slice.
    Its model counts the code one loop deeper than its chunk loop (the later scans, a sweep's set-up)
    ``EXTRA_SCANS`` times per chunk, the code two deeper (a sweep's steps) ``SWEEP_WORDS`` times, and its rounding
    block (the code the branch on ``ROUNDING`` skips: the replay, the float map) in ``ROUNDING_CHUNKS`` of the
    chunks, per basic block. Short rows (the odd shape) fill a fraction of a chunk: looser budgets."""
    n, length, size = shape.rows, shape.length, _size(dtype)
    f64 = dtype == torch.float64
    y, flags, counts = stand_in(dtype), stand_in(torch.uint8), stand_in(torch.int32)
    long_rows = length >= lif_fixed_point.BLOCK
    block, warps = lif_fixed_point.block_for(length), lif_fixed_point.NUM_WARPS
    args = (y, flags, y, flags, counts, length, shape.row_stride, y, 32, 0.0, 2)
    forward = Plan("exact fwd", _describe({"BLOCK": block}, warps), dtype, lif_fixed_point._exact_lif_kernel, args,
                   lif_fixed_point.constants(length, dtype, has_guess=False), warps, n * length,
                   length / (32 * warps), -(-length // block), 2 * size + 1, Access(block // (32 * warps) * size),
                   max_registers=255, max_instructions=(240 if f64 else 180) if long_rows else (800 if f64 else 550),
                   fp_fusion=False, runs={2: EXTRA_SCANS, 3: SWEEP_WORDS},
                   guarded={ROUNDING: ROUNDING_CHUNKS[dtype]})
    block, warps = lif_fixed_point.REVERSE_BLOCK, lif_fixed_point.REVERSE_WARPS
    args = (y, y, flags, y, length, y, y)
    backward = Plan("exact bwd", _describe({"BLOCK": block}, warps), dtype, lif_fixed_point._reverse_scan_kernel, args,
                    dict(BLOCK=block, F64=f64), warps, n * length, length / (32 * warps), -(-length // block),
                    3 * size + 1, Access(block // (32 * warps) * size), max_registers=255,
                    max_instructions=(45 if f64 else 30) if long_rows else (220 if f64 else 130))
    return [forward, backward]


CHUNK = 64  # the layer's default model.conv_chunk
# SASS instructions per element each chunked-convolution launch may cost (float32, float64), chunk 64, 32 modes
CHUNKED_BUDGETS = {"fwd": (270, 300), "states": (100, 120), "adjoint": (285, 320), "grads0": (160, 200),
                   "grads1": (110, 140)}


# tf32x3 (opt-in, model.conv_precision) splits every operand into two tf32 parts, and ptxas (Triton 3.9) stores a
# few registers to the stack: 8 bytes in the aligned adjoint walk (sm_90), 8-48 bytes in the walks of the odd shape
# (no divisibility hints). ieee and float64 spill nothing. Limits a little above, so a growth fails the test.
CHUNKED_TF32X3_SPILLS = {80: 64, 90: 64}


def _chunked(shape: Shape, dtype, precision: str = "ieee", stages: int | None = None) -> list[Plan]:
    """The chunked current path (``model.conv=chunked`` on CUDA, :mod:`spiking_ssm.kernels.chunked_conv`), one
    direction: the forward walk, and the backward's four launches (the forward kernel writing only the chunk-start
    states, the adjoint walk writing du, the two operator-gradient parts). One program per channel and
    ``BLOCK_ROWS`` batch rows walks ``ceil(L / Q)`` chunks; u contiguous ``[B, H, L]``. DRAM per element: u and y
    (forward), plus one pass over the ``2 MP / Q`` state values per element for each state read or write."""
    b, h, length, size = shape.batch, shape.width, shape.length, _size(dtype)
    chunk = min(CHUNK, 16) if length < CHUNK else CHUNK
    modes = chunked_conv.padded_modes(shape.d_state // 2)
    count = -(-length // chunk)
    rows = chunked_conv.BLOCK_ROWS
    pointer = stand_in(dtype)
    sizes = (b, h, length, count, h * length, length, 1)
    if stages is None:  # as the launch chooses
        stages = chunked_conv.stages_for(length, sizes[-3:])
    common = dict(Q=chunk, MP=modes, BB=rows, REVERSE=False, PRECISION=precision, STAGES=stages)
    states = 2 * modes * size / chunk
    launches = {
        "fwd": (chunked_conv._chunk_forward_kernel, (pointer,) * 7 + sizes,
                dict(common, WRITE_Y=True, WRITE_STATES=False), chunked_conv.NUM_WARPS, 2 * size),
        "states": (chunked_conv._chunk_forward_kernel, (pointer,) * 7 + sizes,
                   dict(common, WRITE_Y=False, WRITE_STATES=True), chunked_conv.NUM_WARPS, size + states),
        "adjoint": (chunked_conv._chunk_adjoint_kernel, (pointer,) * 7 + sizes, common, chunked_conv.NUM_WARPS,
                    2 * size + states),
        "grads0": (chunked_conv._chunk_grads_kernel, (pointer,) * 8 + sizes + sizes[-3:], dict(common, PART=0),
                   chunked_conv.GRAD_WARPS[0], 2 * size + states),
        "grads1": (chunked_conv._chunk_grads_kernel, (pointer,) * 8 + sizes + sizes[-3:], dict(common, PART=1),
                   chunked_conv.GRAD_WARPS[1], size + 2 * states),
    }
    f64 = dtype == torch.float64
    result = []
    for kind, (kernel, args, constants, warps, traffic) in launches.items():
        budget = CHUNKED_BUDGETS[kind][f64] * (1 if chunk == CHUNK else 4)  # short rows: one small chunk
        budget *= 1 if stages == chunked_conv.STAGES else 1.15  # no divisibility hints: scalar address math
        config = _describe({"Q": chunk, "BB": rows, "STAGES": stages,
                            **({"precision": precision} if precision != "ieee" else {})}, warps)
        spills = CHUNKED_TF32X3_SPILLS if precision == "tf32x3" else {}
        result.append(Plan(f"chunked {kind}", config, dtype, kernel, args,
                           constants, warps, b * h * length, rows * length / (32 * warps), count, traffic,
                           Access(size), max_registers=255, max_instructions=budget, prefetch=max(1, stages - 1),
                           allowed_spill_bytes=spills))
    return result


# The fused chunked-conv + SDN walk spills where its operator tiles, the soma's windows and the SDN's 16 hidden values
# outgrow 255 registers: float64 (every form, at any warp count tried) and, on sm_90, float32 bidirectional layers
# whose L is not a multiple of Q (the shifted anti-causal tile). Stated here; anything else spilling fails the test.
FUSED_SDN_SPILLS = {"float64": {80: 10000, 90: 1200}, "odd": {90: 800}}
FUSED_SDN_BUDGETS = {"causal": 470, "bidir": 560, "bidir odd L": 700}


def _fused_sdn(shape: Shape, dtype, precision: str = "ieee") -> list[Plan]:
    """The chunked current path fused with the sdn soma (:mod:`spiking_ssm.kernels.chunked_soma`): the forward walk
    (u in, spikes out) and its backward form (``dy = ds * g`` recomputed), causal, bidirectional with L a multiple
    of the chunk, and bidirectional with L - 3 steps (the shifted anti-causal tile); float64 forward only."""
    b, h, size = shape.batch, shape.width, _size(dtype)
    f64 = dtype == torch.float64
    chunk, modes, rows = CHUNK, chunked_conv.padded_modes(shape.d_state // 2), chunked_soma.BLOCK_ROWS
    warps = chunked_soma.soma_warps(dtype)
    pointer = stand_in(dtype)
    weights = pointer if f64 else tuple(0.01 * i for i in range(soma.SDN_NUM_WEIGHTS + 1))
    result = []
    for variant, bidirectional, length in (("causal", False, shape.length), ("bidir", True, shape.length),
                                           ("bidir odd L", True, shape.length - 3)):
        aligned = length % chunk == 0
        if bidirectional and aligned != (variant == "bidir"):
            continue  # the odd shape's length is not a multiple of the chunk: only the shifted form
        count = -(-length // chunk)
        args = ((pointer,) * 8 + (weights,) + (pointer,) * 3
                + (b, h, length, count, h * length, length, 1, h * length, length, 1))
        states = 2 * modes * size / chunk if bidirectional else 0.0  # the anti-causal states, read once
        spills = FUSED_SDN_SPILLS["float64"] if f64 else FUSED_SDN_SPILLS["odd"] if variant == "bidir odd L" else {}
        for backward in (False, True) if not f64 else (False,):
            constants = dict(Q=chunk, MP=modes, BB=rows, BIDIRECTIONAL=bidirectional, ALIGNED=aligned,
                             BACKWARD=backward, W_IN_ARGS=not f64, PRECISION=precision)
            result.append(Plan(f"sdn chunked {'bwd' if backward else 'fwd'} ({variant})",
                               _describe({"Q": chunk, "BB": rows,
                                          **({"precision": precision} if precision != "ieee" else {})}, warps),
                               dtype, chunked_soma._sdn_chunk_kernel,
                               args, constants, warps, b * h * length, rows * length / (32 * warps), count,
                               2 * size + states, Access(size), max_registers=255,
                               max_instructions=FUSED_SDN_BUDGETS[variant] * (3 if f64 else 1)
                               * (1 if shape.length % 16 == 0 else 1.1),  # no divisibility hints: more address math
                               allowed_spill_bytes=spills))
    return result


def plans(shape: Shape = BENCH, everything: bool = False) -> list[Plan]:
    """The launches to compile: the float32 benchmark set, or (``everything``) every dtype and flag too."""
    soma_dtypes = SOMA_DTYPES if everything else SOMA_DTYPES[:1]
    s4d_dtypes = S4D_DTYPES if everything else S4D_DTYPES[:1]
    result = []
    for dtype in soma_dtypes:
        result += _sdn(shape, dtype, store_g=True)
        result += _sltt(shape, dtype, store_g=True, store_v=False)
        if dtype in (torch.float32, torch.float64):  # the exact soma computes in these
            result += _exact_lif(shape, dtype)
    result += _sdn(shape, torch.float32, store_g=False) + _sltt(shape, torch.float32, store_g=False, store_v=False)
    if everything:
        result += _sltt(shape, torch.float32, store_g=True, store_v=True)
    for dtype in s4d_dtypes:
        result += _chunked(shape, dtype)
    result += _chunked(shape, torch.float32, "tf32x3")  # model.conv_precision=tf32x3: tensor cores
    for dtype in s4d_dtypes:
        result += _fused_sdn(shape, dtype)
    result += _fused_sdn(shape, torch.float32, "tf32x3")
    if everything:
        result += _chunked(shape, torch.float32, "ieee", stages=1)  # the walk without pipelining, for comparison
    for dtype in s4d_dtypes:
        result += _s4d(shape, dtype, 2)  # bidirectional layers; unidirectional ones (C = 1) in float32 below
    if everything:
        result += _s4d(shape, torch.float32, 1)
    return result
