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

The chunk-start states ``S(k)`` are recomputed, not saved: the backward first runs the forward kernel in its
state-writing form (a transient ``[B, H, C, 2, MP]`` buffer), then the reverse walk. Each program writes its own
partial operator gradients (``[batch blocks, H, ...]``), summed in torch: deterministic, no atomics.

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
NUM_WARPS = 4


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
    def _part(ptr, h, part, R: tl.constexpr, K: tl.constexpr, TRANSPOSE: tl.constexpr):
        """Part ``part`` of channel ``h`` of a contiguous ``[H, 2, R, K]`` tensor: ``[R, K]`` (or ``[K, R]``)."""
        base = ptr + (h * 2 + part) * R * K
        if TRANSPOSE:
            return tl.load(base + tl.arange(0, R)[None, :] * K + tl.arange(0, K)[:, None])
        return tl.load(base + tl.arange(0, R)[:, None] * K + tl.arange(0, K)[None, :])

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
                              WRITE_Y: tl.constexpr, WRITE_STATES: tl.constexpr, PRECISION: tl.constexpr):
        """``y`` ``[B, H, L]`` (contiguous) from ``u`` (strides ``su_*``) when ``WRITE_Y``; the chunk-start states
        ``[B, H, CHUNK_COUNT, 2, MP]`` when ``WRITE_STATES``. Operators padded: taps ``[H, Q]``, readout
        ``[H, 2, MP, Q]``, inject ``[H, 2, Q, MP]``, decay ``[H, 2, MP]``."""
        h = tl.program_id(0).to(tl.int64)
        rows = tl.program_id(1).to(tl.int64) * BB + tl.arange(0, BB)
        live = rows < B
        modes = tl.arange(0, MP)
        t_t = _toeplitz(taps_ptr, h, Q, True)  # [Q, Q]
        rr = _part(readout_ptr, h, 0, MP, Q, False)  # [MP, Q]
        ri = _part(readout_ptr, h, 1, MP, Q, False)
        jr = _part(inject_ptr, h, 0, Q, MP, False)  # [Q, MP]
        ji = _part(inject_ptr, h, 1, Q, MP, False)
        dr = tl.load(decay_ptr + h * 2 * MP + modes)[None, :]
        di = tl.load(decay_ptr + (h * 2 + 1) * MP + modes)[None, :]
        sr = tl.zeros([BB, MP], dtype=u_ptr.dtype.element_ty)
        si = tl.zeros([BB, MP], dtype=u_ptr.dtype.element_ty)
        u_rows = u_ptr + rows[:, None] * su_b + h * su_h
        y_rows = y_ptr + (rows[:, None] * H + h) * L
        s_rows = states_ptr + (rows[:, None] * H + h) * CHUNK_COUNT * 2 * MP + modes[None, :]
        for k in range(CHUNK_COUNT):
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
    def _chunk_backward_kernel(u_ptr, g_ptr, taps_ptr, readout_ptr, inject_ptr, decay_ptr, states_ptr, du_ptr,
                               dt_ptr, dreadout_ptr, dinject_ptr, ddecay_ptr,
                               B, H, L, CHUNK_COUNT, su_b, su_h, su_l, sg_b, sg_h, sg_l,
                               Q: tl.constexpr, MP: tl.constexpr, BB: tl.constexpr, REVERSE: tl.constexpr,
                               PRECISION: tl.constexpr):
        """``du`` ``[B, H, L]`` (contiguous) and this program's partial operator gradients (``n = program_id(1)``):
        ``dt[n, h]`` ``[Q, Q]`` (the Toeplitz block's), ``dreadout[n, h]`` ``[2, MP, Q]``, ``dinject[n, h]``
        ``[2, Q, MP]``, ``ddecay[n, h]`` ``[2, MP]``; states from the forward kernel's ``WRITE_STATES`` run."""
        h = tl.program_id(0).to(tl.int64)
        block = tl.program_id(1).to(tl.int64)
        rows = block * BB + tl.arange(0, BB)
        live = rows < B
        modes = tl.arange(0, MP)
        steps = tl.arange(0, Q)
        t = _toeplitz(taps_ptr, h, Q, False)  # [Q, Q]
        rr_t = _part(readout_ptr, h, 0, MP, Q, True)  # [Q, MP]
        ri_t = _part(readout_ptr, h, 1, MP, Q, True)
        jr_t = _part(inject_ptr, h, 0, Q, MP, True)  # [MP, Q]
        ji_t = _part(inject_ptr, h, 1, Q, MP, True)
        dr = tl.load(decay_ptr + h * 2 * MP + modes)[None, :]
        di = tl.load(decay_ptr + (h * 2 + 1) * MP + modes)[None, :]
        dtype = u_ptr.dtype.element_ty
        ar = tl.zeros([BB, MP], dtype=dtype)  # the adjoint state after the current chunk
        ai = tl.zeros([BB, MP], dtype=dtype)
        grad_t = tl.zeros([Q, Q], dtype=dtype)
        grad_rr = tl.zeros([MP, Q], dtype=dtype)
        grad_ri = tl.zeros([MP, Q], dtype=dtype)
        grad_jr = tl.zeros([Q, MP], dtype=dtype)
        grad_ji = tl.zeros([Q, MP], dtype=dtype)
        grad_dr = tl.zeros([BB, MP], dtype=dtype)
        grad_di = tl.zeros([BB, MP], dtype=dtype)
        u_rows = u_ptr + rows[:, None] * su_b + h * su_h
        g_rows = g_ptr + rows[:, None] * sg_b + h * sg_h
        du_rows = du_ptr + (rows[:, None] * H + h) * L
        s_rows = states_ptr + (rows[:, None] * H + h) * CHUNK_COUNT * 2 * MP + modes[None, :]
        for step in range(CHUNK_COUNT):
            k = CHUNK_COUNT - 1 - step
            time, inside = _chunk(rows, live, k, L, Q, REVERSE)
            u = tl.load(u_rows + time * su_l, mask=inside, other=0.0)  # [BB, Q]
            g = tl.load(g_rows + time * sg_l, mask=inside, other=0.0)
            sr = tl.load(s_rows + k * 2 * MP, mask=live[:, None], other=0.0)  # [BB, MP]: S(k)
            si = tl.load(s_rows + k * 2 * MP + MP, mask=live[:, None], other=0.0)
            du = tl.dot(g, t, input_precision=PRECISION)
            du = tl.dot(ar, jr_t, du, input_precision=PRECISION)
            du = tl.dot(ai, ji_t, du, input_precision=PRECISION)
            tl.store(du_rows + time, du, mask=inside)
            u_t = tl.trans(u)  # [Q, BB]
            grad_jr = tl.dot(u_t, ar, grad_jr, input_precision=PRECISION)
            grad_ji = tl.dot(u_t, ai, grad_ji, input_precision=PRECISION)
            grad_rr = tl.dot(tl.trans(sr), g, grad_rr, input_precision=PRECISION)
            grad_ri = tl.dot(tl.trans(si), g, grad_ri, input_precision=PRECISION)
            grad_t = tl.dot(tl.trans(g), u, grad_t, input_precision=PRECISION)
            grad_dr += ar * sr + ai * si
            grad_di += ai * sr - ar * si
            new_r = tl.dot(g, rr_t, ar * dr + ai * di, input_precision=PRECISION)
            ai = tl.dot(g, ri_t, ai * dr - ar * di, input_precision=PRECISION)
            ar = new_r
        square = (block * H + h) * Q * Q
        tl.store(dt_ptr + square + steps[:, None] * Q + steps[None, :], grad_t)
        out = dreadout_ptr + (block * H + h) * 2 * MP * Q + modes[:, None] * Q + steps[None, :]
        tl.store(out, grad_rr)
        tl.store(out + MP * Q, grad_ri)
        out = dinject_ptr + (block * H + h) * 2 * Q * MP + steps[:, None] * MP + modes[None, :]
        tl.store(out, grad_jr)
        tl.store(out + Q * MP, grad_ji)
        out = ddecay_ptr + (block * H + h) * 2 * MP + modes
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
                                    PRECISION=precision, num_warps=num_warps, **FP_FUSION)
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
        u, taps, readout, inject, decay = ctx.saved_tensors
        reverse, precision, block_rows, num_warps = ctx.config
        batch, width, length = u.shape
        chunk, modes = taps.shape[-1], decay.shape[-1]
        count = triton.cdiv(length, chunk)
        blocks = triton.cdiv(batch, block_rows)
        grad_u = u.new_empty(batch, width, length)
        grad_t = u.new_zeros(blocks, width, chunk, chunk)
        grad_readout = u.new_zeros(blocks, *readout.shape)
        grad_inject = u.new_zeros(blocks, *inject.shape)
        grad_decay = u.new_zeros(blocks, *decay.shape)
        if batch and width and length:
            states = u.new_empty(batch, width, count, 2, modes)
            _launch_forward(u, taps, readout, inject, decay, reverse, precision, block_rows, num_warps, states)
            _chunk_backward_kernel[(width, blocks)](
                u, grad_y, taps, readout, inject, decay, states, grad_u, grad_t, grad_readout, grad_inject,
                grad_decay, batch, width, length, count, *u.stride(), *grad_y.stride(), Q=chunk, MP=modes,
                BB=block_rows, REVERSE=reverse, PRECISION=precision, num_warps=num_warps, **FP_FUSION)
        else:
            grad_u.zero_()
        return (grad_u, diagonal_sums(grad_t.sum(0)), grad_readout.sum(0), grad_inject.sum(0), grad_decay.sum(0),
                None, None, None, None)


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
