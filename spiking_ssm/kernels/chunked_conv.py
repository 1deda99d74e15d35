"""The chunked S4D convolution (:func:`spiking_ssm.chunked.chunked_conv`) as Triton kernels, forward and backward.

One program owns one channel ``h`` and a block of ``BB`` batch rows and walks the ``C = ceil(L / Q)`` chunks in
order (``reverse``: in reversed time), the mode state ``S = [Sr | Si]`` (``[BB, MP]`` each) in registers. Per chunk,
with ``U`` the ``[BB, Q]`` tile of inputs and ``T[i, j] = taps[i - j]`` (``i >= j``):

    y    = U @ T^T + Sr @ Rr + Si @ Ri                 (Rr, Ri = readout rows [:M], [M:]: [MP, Q])
    Sr'  = Sr dr - Si di + U @ Jr                      (Jr, Ji = inject columns [:M], [M:]: [Q, MP])
    Si'  = Sr di + Si dr + U @ Ji                      (dr + i di = decay, per mode)

every product a ``tl.dot``. The backward walks the chunks in reverse walk order with the adjoint state
``A = [Ar | Ai]`` (zero after the last chunk; ``G`` the chunk of ``dLoss/dy``):

    dU   = G @ T + Ar @ Jr^T + Ai @ Ji^T               (A: the adjoint after the chunk, A(k + 1))
    A(k) = [G @ Rr^T | G @ Ri^T] + conj(decay) A(k + 1)
    dRr += Sr^T @ G,  dRi += Si^T @ G,  dJr += U^T @ Ar,  dJi += U^T @ Ai,  dT += G^T @ U
    ddr += sum(Ar Sr + Ai Si),  ddi += sum(Ai Sr - Ar Si)     (S = S(k), the state entering the chunk)
    dtaps[d] = sum of the d-th lower diagonal of dT

Only ``u`` and the operators are saved. The backward makes four launches over transient ``[B, H, C, 2, MP]``
buffers: the forward kernel in its state-writing form (``S(k)``, recomputed), the reverse walk
(:func:`_chunk_adjoint_kernel`: ``dU`` and ``A(k + 1)``), and the operator gradients in two parts
(:func:`_chunk_grads_kernel`: ``dT``, ``dJ`` from ``U``, ``G``, ``A``; ``dR``, ``d decay`` from ``S``, ``G``, ``A``),
so that no kernel holds the operators and all the gradient accumulators at once (that spilled). Each program writes
its own partial operator gradients (``[batch blocks, H, ...]``), summed in torch: deterministic, no atomics.

``tl.dot`` needs every dimension >= 16: ``Q`` in {16, 32, 64, 128}, the modes are padded on the host to ``MP``, a
multiple of 16, with zero modes (they contribute nothing), and the row block ``BB >= 16`` is masked past ``B``.
float32 products are exact float32 (``input_precision="ieee"``) unless the caller asks for ``"tf32x3"``/``"tf32"``;
float64 runs float64 ``tl.dot``. Steps past ``L`` in the last chunk are zeros, after the real data in the walk.
"""

from __future__ import annotations

import torch

from spiking_ssm.chunked import ChunkOperators
from spiking_ssm.kernels.launch import FP_FUSION
from spiking_ssm.kernels.runtime import triton

CHUNKS = (16, 32, 64, 128)
PRECISIONS = ("ieee", "tf32x3", "tf32")
BLOCK_ROWS = 16  # batch rows per program
NUM_WARPS = 4  # the forward walk and the adjoint walk
GRAD_WARPS = (4, 8)  # the operator-gradient kernel's parts 0 and 1: where ptxas spills none on sm_80 and sm_90
STAGES = 3  # software pipelining of every walk (tl.range): MODELLED best of 1/2/3 (python -m benchmarks.kernel_budget)


def stages_for(length: int, strides: tuple[int, ...]) -> int:
    """``STAGES`` for a launch: pipelined when the length and the non-unit strides are multiples of 16 (the
    launcher's divisibility hints: aligned vector loads); without them ptxas spills the pipelined walks (sm_90), so
    a plain walk."""
    aligned = length % 16 == 0 and all(stride % 16 == 0 for stride in strides if stride != 1)
    return STAGES if aligned else 1


def padded_modes(modes: int) -> int:
    """The mode axis the kernels use: ``modes`` rounded up to a multiple of 16."""
    return max(16, -(-modes // 16) * 16)


if triton is not None:
    import triton.language as tl

    @triton.jit
    def _toeplitz(taps_ptr, h, Q: tl.constexpr, TRANSPOSE: tl.constexpr):
        """``[Q, Q]``: ``T[i, j] = taps[h, i - j]`` for ``i >= j``, else 0 (``TRANSPOSE``: ``T^T``)."""
        rows = tl.arange(0, Q)[:, None]
        cols = tl.arange(0, Q)[None, :]
        if TRANSPOSE:
            lag = cols - rows
        else:
            lag = rows - cols
        return tl.load(taps_ptr + h * Q + lag, mask=lag >= 0, other=0.0)

    @triton.jit
    def _part(ptr, h, part, R: tl.constexpr, K: tl.constexpr):
        """Part ``part`` of channel ``h`` of a contiguous ``[H, 2, R, K]`` tensor: ``[R, K]``."""
        return tl.load(ptr + (h * 2 + part) * R * K + tl.arange(0, R)[:, None] * K + tl.arange(0, K)[None, :])

    @triton.jit
    def _program(B, BB: tl.constexpr):
        """This program's channel ``h``, batch block, its ``[BB]`` rows and which of them exist (``< B``)."""
        h = tl.program_id(0).to(tl.int64)
        block = tl.program_id(1).to(tl.int64)
        rows = block * BB + tl.arange(0, BB)
        return h, block, rows, rows < B

    @triton.jit
    def _state_rows(ptr, rows, h, H, CHUNK_COUNT, MP: tl.constexpr):
        """``[BB, MP]`` pointers to chunk 0's real parts in a ``[B, H, CHUNK_COUNT, 2, MP]`` state tensor."""
        return ptr + (rows[:, None] * H + h) * CHUNK_COUNT * 2 * MP + tl.arange(0, MP)[None, :]

    @triton.jit
    def _operators(readout_ptr, inject_ptr, decay_ptr, h, MP: tl.constexpr, Q: tl.constexpr,
                   TRANSPOSED: tl.constexpr):
        """Channel ``h``'s readout parts ``[MP, Q]``, inject parts ``[Q, MP]`` (``TRANSPOSED``: the transposed
        tensors, ``[Q, MP]`` and ``[MP, Q]``) and decay ``(Re, Im)`` as ``[1, MP]`` rows."""
        if TRANSPOSED:
            rr = _part(readout_ptr, h, 0, Q, MP)
            ri = _part(readout_ptr, h, 1, Q, MP)
            jr = _part(inject_ptr, h, 0, MP, Q)
            ji = _part(inject_ptr, h, 1, MP, Q)
        else:
            rr = _part(readout_ptr, h, 0, MP, Q)
            ri = _part(readout_ptr, h, 1, MP, Q)
            jr = _part(inject_ptr, h, 0, Q, MP)
            ji = _part(inject_ptr, h, 1, Q, MP)
        modes = tl.arange(0, MP)
        dr = tl.load(decay_ptr + h * 2 * MP + modes)[None, :]
        di = tl.load(decay_ptr + (h * 2 + 1) * MP + modes)[None, :]
        return rr, ri, jr, ji, dr, di

    @triton.jit
    def _chunk(rows, live, k, L, Q: tl.constexpr, REVERSE: tl.constexpr):
        """Time index ``[1, Q]`` of chunk ``k``'s steps (walk position ``kQ + i``) and the ``[BB, Q]`` mask."""
        walk = k * Q + tl.arange(0, Q)
        if REVERSE:
            time = L - 1 - walk
        else:
            time = walk
        return time[None, :], live[:, None] & (walk < L)[None, :]

    @triton.jit
    def _chunk_forward_kernel(u_ptr, taps_ptr, readout_ptr, inject_ptr, decay_ptr, y_ptr, states_ptr,
                              B, H, L, CHUNK_COUNT, su_b, su_h, su_l,
                              Q: tl.constexpr, MP: tl.constexpr, BB: tl.constexpr, REVERSE: tl.constexpr,
                              WRITE_Y: tl.constexpr, WRITE_STATES: tl.constexpr, PRECISION: tl.constexpr,
                              STAGES: tl.constexpr = 3):
        """``y`` ``[B, H, L]`` (contiguous) from ``u`` (strides ``su_*``) when ``WRITE_Y``; the chunk-start states
        ``[B, H, CHUNK_COUNT, 2, MP]`` when ``WRITE_STATES``. Operators padded: taps ``[H, Q]``, readout
        ``[H, 2, MP, Q]``, inject ``[H, 2, Q, MP]``, decay ``[H, 2, MP]``."""
        h, _, rows, live = _program(B, BB)
        t_t = _toeplitz(taps_ptr, h, Q, True)  # [Q, Q]
        rr, ri, jr, ji, dr, di = _operators(readout_ptr, inject_ptr, decay_ptr, h, MP, Q, False)
        sr = tl.zeros([BB, MP], dtype=u_ptr.dtype.element_ty)
        si = tl.zeros([BB, MP], dtype=u_ptr.dtype.element_ty)
        u_rows = u_ptr + rows[:, None] * su_b + h * su_h
        y_rows = y_ptr + (rows[:, None] * H + h) * L
        s_rows = _state_rows(states_ptr, rows, h, H, CHUNK_COUNT, MP)
        for k in tl.range(CHUNK_COUNT, num_stages=STAGES):
            time, inside = _chunk(rows, live, k, L, Q, REVERSE)
            u = tl.load(u_rows + time * su_l, mask=inside, other=0.0)  # [BB, Q]
            if WRITE_STATES:
                tl.store(s_rows + k * 2 * MP, sr, mask=live[:, None])
                tl.store(s_rows + k * 2 * MP + MP, si, mask=live[:, None])
            if WRITE_Y:
                y = tl.dot(u, t_t, input_precision=PRECISION)
                y = tl.dot(sr, rr, y, input_precision=PRECISION)
                y = tl.dot(si, ri, y, input_precision=PRECISION)
                tl.store(y_rows + time, y, mask=inside)
            new_r = tl.dot(u, jr, sr * dr - si * di, input_precision=PRECISION)
            si = tl.dot(u, ji, sr * di + si * dr, input_precision=PRECISION)
            sr = new_r

    @triton.jit
    def _chunk_adjoint_kernel(g_ptr, taps_ptr, readout_t_ptr, inject_t_ptr, decay_ptr, du_ptr, adjoint_ptr,
                              B, H, L, CHUNK_COUNT, sg_b, sg_h, sg_l,
                              Q: tl.constexpr, MP: tl.constexpr, BB: tl.constexpr, REVERSE: tl.constexpr,
                              PRECISION: tl.constexpr, STAGES: tl.constexpr = 3):
        """The reverse walk: ``du`` ``[B, H, L]`` (contiguous) from ``g`` (strides ``sg_*``), and the adjoint state
        after each chunk, ``A(k + 1)``, at index ``k`` of ``adjoint`` ``[B, H, CHUNK_COUNT, 2, MP]``. The readout
        and inject come transposed (``[H, 2, Q, MP]``, ``[H, 2, MP, Q]``): loaded as the forward loads its own
        (a transposing load kept the tiles in registers and spilled)."""
        h, _, rows, live = _program(B, BB)
        t = _toeplitz(taps_ptr, h, Q, False)  # [Q, Q]
        rr_t, ri_t, jr_t, ji_t, dr, di = _operators(readout_t_ptr, inject_t_ptr, decay_ptr, h, MP, Q, True)
        ar = tl.zeros([BB, MP], dtype=g_ptr.dtype.element_ty)
        ai = tl.zeros([BB, MP], dtype=g_ptr.dtype.element_ty)
        g_rows = g_ptr + rows[:, None] * sg_b + h * sg_h
        du_rows = du_ptr + (rows[:, None] * H + h) * L
        a_rows = _state_rows(adjoint_ptr, rows, h, H, CHUNK_COUNT, MP)
        for step in tl.range(CHUNK_COUNT, num_stages=STAGES):
            k = CHUNK_COUNT - 1 - step
            time, inside = _chunk(rows, live, k, L, Q, REVERSE)
            g = tl.load(g_rows + time * sg_l, mask=inside, other=0.0)  # [BB, Q]
            du = tl.dot(g, t, input_precision=PRECISION)
            du = tl.dot(ar, jr_t, du, input_precision=PRECISION)
            du = tl.dot(ai, ji_t, du, input_precision=PRECISION)
            tl.store(du_rows + time, du, mask=inside)
            new_r = tl.dot(g, rr_t, ar * dr + ai * di, input_precision=PRECISION)
            new_i = tl.dot(g, ri_t, ai * dr - ar * di, input_precision=PRECISION)
            tl.store(a_rows + k * 2 * MP, ar, mask=live[:, None])
            tl.store(a_rows + k * 2 * MP + MP, ai, mask=live[:, None])
            ar, ai = new_r, new_i

    @triton.jit
    def _chunk_grads_kernel(u_ptr, g_ptr, states_ptr, adjoint_ptr, dt_ptr, dinject_ptr, dreadout_ptr, ddecay_ptr,
                            B, H, L, CHUNK_COUNT, su_b, su_h, su_l, sg_b, sg_h, sg_l,
                            Q: tl.constexpr, MP: tl.constexpr, BB: tl.constexpr, REVERSE: tl.constexpr,
                            PART: tl.constexpr, PRECISION: tl.constexpr, STAGES: tl.constexpr = 3):
        """This program's partial operator gradients (``n = program_id(1)``, its batch block), summed over chunks:
        ``PART`` 0: ``dt[n, h]`` ``[Q, Q]`` (the Toeplitz block's, ``G^T U``) and ``dinject[n, h]`` ``[2, Q, MP]``
        (``U^T A``); ``PART`` 1: ``dreadout[n, h]`` ``[2, MP, Q]`` (``S^T G``) and ``ddecay[n, h]`` ``[2, MP]``.
        ``states`` and ``adjoint`` ``[B, H, CHUNK_COUNT, 2, MP]``: ``S(k)`` and ``A(k + 1)`` at index ``k``."""
        h, block, rows, live = _program(B, BB)
        modes = tl.arange(0, MP)
        steps = tl.arange(0, Q)
        dtype = u_ptr.dtype.element_ty
        u_rows = u_ptr + rows[:, None] * su_b + h * su_h
        g_rows = g_ptr + rows[:, None] * sg_b + h * sg_h
        chunk_rows = (rows[:, None] * H + h) * CHUNK_COUNT * 2 * MP + modes[None, :]
        if PART == 0:
            grad_t = tl.zeros([Q, Q], dtype=dtype)
            grad_r = tl.zeros([Q, MP], dtype=dtype)  # inject's real and imaginary columns
            grad_i = tl.zeros([Q, MP], dtype=dtype)
        else:
            grad_r = tl.zeros([MP, Q], dtype=dtype)  # readout's real and imaginary rows
            grad_i = tl.zeros([MP, Q], dtype=dtype)
            grad_dr = tl.zeros([BB, MP], dtype=dtype)
            grad_di = tl.zeros([BB, MP], dtype=dtype)
        for k in tl.range(CHUNK_COUNT, num_stages=STAGES):
            time, inside = _chunk(rows, live, k, L, Q, REVERSE)
            g = tl.load(g_rows + time * sg_l, mask=inside, other=0.0)  # [BB, Q]
            if PART == 0:
                u = tl.load(u_rows + time * su_l, mask=inside, other=0.0)
                ar = tl.load(adjoint_ptr + chunk_rows + k * 2 * MP, mask=live[:, None], other=0.0)  # [BB, MP]
                ai = tl.load(adjoint_ptr + chunk_rows + k * 2 * MP + MP, mask=live[:, None], other=0.0)
                grad_t = tl.dot(tl.trans(g), u, grad_t, input_precision=PRECISION)
                u_t = tl.trans(u)  # [Q, BB]
                grad_r = tl.dot(u_t, ar, grad_r, input_precision=PRECISION)
                grad_i = tl.dot(u_t, ai, grad_i, input_precision=PRECISION)
            else:
                sr = tl.load(states_ptr + chunk_rows + k * 2 * MP, mask=live[:, None], other=0.0)
                si = tl.load(states_ptr + chunk_rows + k * 2 * MP + MP, mask=live[:, None], other=0.0)
                grad_r = tl.dot(tl.trans(sr), g, grad_r, input_precision=PRECISION)
                grad_i = tl.dot(tl.trans(si), g, grad_i, input_precision=PRECISION)
                ar = tl.load(adjoint_ptr + chunk_rows + k * 2 * MP, mask=live[:, None], other=0.0)
                ai = tl.load(adjoint_ptr + chunk_rows + k * 2 * MP + MP, mask=live[:, None], other=0.0)
                grad_dr += ar * sr + ai * si
                grad_di += ai * sr - ar * si
        program = block * H + h
        if PART == 0:
            tl.store(dt_ptr + program * Q * Q + steps[:, None] * Q + steps[None, :], grad_t)
            out = dinject_ptr + program * 2 * Q * MP + steps[:, None] * MP + modes[None, :]
            tl.store(out, grad_r)
            tl.store(out + Q * MP, grad_i)
        else:
            out = dreadout_ptr + program * 2 * MP * Q + modes[:, None] * Q + steps[None, :]
            tl.store(out, grad_r)
            tl.store(out + MP * Q, grad_i)
            out = ddecay_ptr + program * 2 * MP + modes
            tl.store(out, tl.sum(grad_dr, axis=0))
            tl.store(out + MP, tl.sum(grad_di, axis=0))


def diagonal_sums(square: torch.Tensor) -> torch.Tensor:
    """``out[..., d] = sum_i square[..., i, i - d]`` (the d-th lower diagonal): ``[..., Q, Q]`` -> ``[..., Q]``.

    The rows are left-padded with ``Q`` zeros (``[..., Q, 2Q]``); then element ``(i, i - d)`` sits at flat offset
    ``i (2Q + 1) + Q - d`` of each matrix, so a view with row stride ``2Q + 1`` lines the diagonals up as columns."""
    chunk = square.shape[-1]
    lead = square.shape[:-2]
    padded = torch.nn.functional.pad(square.reshape(-1, chunk, chunk), (chunk, 0)).contiguous()
    skewed = padded.as_strided((padded.shape[0], chunk, chunk), (2 * chunk * chunk, 2 * chunk + 1, 1), 1)
    return skewed.sum(1).flip(-1).reshape(*lead, chunk)  # column c holds lag Q - 1 - c


def _launch_forward(u, taps, readout, inject, decay, reverse, precision, block_rows, num_warps, states=None):
    """Run the forward kernel: ``y`` ``[B, H, L]``, or (``states`` given) only fill the chunk-start states."""
    batch, width, length = u.shape
    chunk, modes = taps.shape[-1], decay.shape[-1]
    count = triton.cdiv(length, chunk)
    y = u.new_empty(batch, width, length) if states is None else u.new_empty(0)
    if batch and width and length:
        grid = (width, triton.cdiv(batch, block_rows))
        _chunk_forward_kernel[grid](u, taps, readout, inject, decay, y, y if states is None else states,
                                    batch, width, length, count, *u.stride(), Q=chunk, MP=modes, BB=block_rows,
                                    REVERSE=reverse, WRITE_Y=states is None, WRITE_STATES=states is not None,
                                    PRECISION=precision, STAGES=stages_for(length, u.stride()), num_warps=num_warps,
                                    **FP_FUSION)
    return y


class _ChunkedConv(torch.autograd.Function):
    """``(u [B, H, L], taps [H, Q], readout [H, 2, MP, Q], inject [H, 2, Q, MP], decay [H, 2, MP]) -> y``, the
    operators padded and contiguous, all of ``u``'s dtype; only ``u`` and the operators are saved."""

    @staticmethod
    def forward(ctx, u, taps, readout, inject, decay, reverse, precision, block_rows, num_warps):
        ctx.save_for_backward(u, taps, readout, inject, decay)
        ctx.config = (reverse, precision, block_rows, num_warps)
        return _launch_forward(u, taps, readout, inject, decay, reverse, precision, block_rows, num_warps)

    @staticmethod
    def backward(ctx, grad_y):
        u, *ops = ctx.saved_tensors
        reverse, precision, block_rows, num_warps = ctx.config
        states = chunk_states(u, ops, reverse, precision, block_rows, num_warps)
        return (*direction_backward(u, grad_y, ops, states, reverse, precision, block_rows, num_warps),
                None, None, None, None)


def chunk_states(u, ops, reverse, precision, block_rows, num_warps=NUM_WARPS) -> torch.Tensor:
    """Chunk-start states ``[B, H, C, 2, MP]`` of one direction (the forward walk in its state-writing form);
    ``ops`` padded (:func:`pad_operators`)."""
    batch, width, length = u.shape
    states = u.new_empty(batch, width, triton.cdiv(length, ops[0].shape[-1]), 2, ops[3].shape[-1])
    if batch and width and length:
        _launch_forward(u, *ops, reverse, precision, block_rows, num_warps, states)
    return states


def direction_backward(u, grad_y, ops, states, reverse, precision, block_rows, num_warps=NUM_WARPS):
    """``(du, dtaps, dreadout, dinject, ddecay)`` of one direction given ``dLoss/dy`` and its chunk-start
    ``states``: the adjoint walk (writes du and the adjoint states) and the two operator-gradient parts, each program's
    partial sums added in torch."""
    taps, readout, inject, decay = ops
    batch, width, length = u.shape
    chunk, modes = taps.shape[-1], decay.shape[-1]
    count = triton.cdiv(length, chunk)
    blocks = triton.cdiv(batch, block_rows)
    grad_u = u.new_zeros(batch, width, length)
    grad_t = u.new_zeros(blocks, width, chunk, chunk)
    grad_readout, grad_inject, grad_decay = (u.new_zeros(blocks, *t.shape) for t in (readout, inject, decay))
    if batch and width and length:
        adjoint = u.new_empty(batch, width, count, 2, modes)
        grid = (width, blocks)
        sizes = (batch, width, length, count)
        stages = stages_for(length, u.stride() + grad_y.stride())
        common = dict(Q=chunk, MP=modes, BB=block_rows, REVERSE=reverse, PRECISION=precision, STAGES=stages,
                      **FP_FUSION)
        readout_t, inject_t = readout.transpose(2, 3).contiguous(), inject.transpose(2, 3).contiguous()
        _chunk_adjoint_kernel[grid](grad_y, taps, readout_t, inject_t, decay, grad_u, adjoint, *sizes,
                                    *grad_y.stride(), num_warps=num_warps, **common)
        for part in (0, 1):
            _chunk_grads_kernel[grid](u, grad_y, states, adjoint, grad_t, grad_inject, grad_readout, grad_decay,
                                      *sizes, *u.stride(), *grad_y.stride(), PART=part, num_warps=GRAD_WARPS[part],
                                      **common)
    return (grad_u, diagonal_sums(grad_t.sum(0)), grad_readout.sum(0), grad_inject.sum(0), grad_decay.sum(0))


def pad_operators(ops: ChunkOperators, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The kernels' operator layout, differentiably: taps ``[H, Q]``, readout ``[H, 2, MP, Q]``, inject
    ``[H, 2, Q, MP]``, decay ``[H, 2, MP]`` in ``dtype``, modes zero-padded to ``MP = padded_modes(M)``."""
    width, chunk = ops.taps.shape
    modes = ops.decay.shape[-1]
    extra = padded_modes(modes) - modes
    readout = ops.readout.to(dtype).reshape(width, 2, modes, chunk)
    inject = ops.inject.to(dtype).reshape(width, chunk, 2, modes).permute(0, 2, 1, 3)
    pad = torch.nn.functional.pad
    return (ops.taps.to(dtype).contiguous(), pad(readout, (0, 0, 0, extra)).contiguous(),
            pad(inject, (0, extra)).contiguous(), pad(ops.decay.to(dtype), (0, extra)).contiguous())


def unsupported(u: torch.Tensor, ops: ChunkOperators, precision: str = "ieee") -> str | None:
    """Why :func:`chunked_conv_triton` cannot take these inputs, or None."""
    if u.dim() != 3 or ops.taps.dim() != 2 or ops.taps.shape[0] != u.shape[1]:
        return f"u must be [B, H, L] and taps [H, Q], got {tuple(u.shape)} and {tuple(ops.taps.shape)}"
    if ops.chunk not in CHUNKS:
        return f"the chunk must be one of {CHUNKS} for the Triton kernels, got {ops.chunk}"
    if u.dtype not in (torch.float32, torch.float64):
        return f"the chunked-convolution kernels take float32 or float64, not {u.dtype}"
    if precision not in PRECISIONS:
        return f"precision must be one of {PRECISIONS}, got {precision!r}"
    return None


def chunked_conv_triton(u: torch.Tensor, ops: ChunkOperators, reverse: bool = False, precision: str = "ieee",
                        block_rows: int = BLOCK_ROWS, num_warps: int = NUM_WARPS) -> torch.Tensor:
    """:func:`spiking_ssm.chunked.chunked_conv` in Triton: ``u`` ``[B, H, L]`` (any strides) -> ``y`` ``[B, H, L]``
    (contiguous, ``u``'s dtype), differentiable in ``u`` and in the four operator tensors of ``ops``.

    ``precision``: how float32 products run (``"ieee"``: exact float32; ``"tf32x3"``, ``"tf32"``: tensor cores);
    float64 is always float64. ``block_rows`` (>= 16, a power of two) batch rows per program.
    """
    reason = unsupported(u, ops, precision)
    if reason is not None:
        raise ValueError(reason)
    if block_rows < 16 or block_rows & (block_rows - 1):
        raise ValueError(f"block_rows must be a power of two >= 16, got {block_rows}")
    if u.dtype == torch.float64:
        precision = "ieee"
    return _ChunkedConv.apply(u, *pad_operators(ops, u.dtype), bool(reverse), precision, block_rows, num_warps)
