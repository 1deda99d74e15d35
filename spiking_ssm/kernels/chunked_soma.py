"""The chunked S4D convolution fused with the SDN soma: spikes from ``u`` with no ``[B, H, L]`` float tensor.

:func:`chunked_sdn_spikes` computes ``SDN(chunked_conv(u, causal) [+ chunked_conv(u, anti-causal, reverse)])``,
the layer's current path followed by the ``sdn`` neuron, and writes only the spikes (in ``u``'s dtype, so that
autograd can carry their gradient; a 1-byte store would need a separate non-differentiable output).

Forward, one program per channel ``h`` and block of ``BB`` batch rows, walking the chunks of ``Q`` steps in time
order (the walk of :mod:`spiking_ssm.kernels.chunked_conv`, whose helpers it uses), per chunk ``k``:

1. the current tile ``y`` ``[BB, Q]`` by ``tl.dot``: causal ``U @ T^T + Sr @ Rr + Si @ Ri`` with the causal mode
   state in registers; for a bidirectional layer plus the anti-causal part (below);
2. ``y`` goes to a per-program scratch ``[BB, 8 + Q]`` in global memory (columns ``0..7``: the previous chunk's
   last 8 currents, zeros before the sequence; then this chunk's ``Q``), rewritten every chunk, so it stays in
   L1/L2; ``tl.debug_barrier()`` between the store and the loads;
3. the soma as :mod:`spiking_ssm.kernels.sdn_kernel` computes it, four steps per thread from three aligned 4-wide
   windows of the scratch (``_z``: the same FMA chains, weights as kernel arguments for float32, a tensor for
   float64), and the spikes ``z >= 0`` are stored; after a second barrier the chunk's last 8 currents move to the
   scratch's head for the next chunk.

The anti-causal half (``chunked_conv(..., reverse=True)``) chunks the reversed sequence: its chunks end at times
``L - cQ``, offset from the causal ones by ``p = L mod Q``. Its chunk-start states ``[B, H, C, 2, MP]`` come first,
from the chunked-convolution forward kernel walking in reverse and writing only the states (a transient buffer,
``2 MP / Q`` numbers per element, freed after the launch). With ``T_b[j, i] = taps_b[j - i]`` (``j >= i``) and
``R_b`` the readout with its columns reversed, reverse chunk ``c`` gives the currents of its ``Q`` steps in time
order as ``W @ T_b + S(c) @ R_b`` (``W``: its inputs in time order, ``S(c)``: its state). Then

- ``p = 0`` (``ALIGNED``): reverse chunk ``C - 1 - k`` is causal chunk ``k``; ``T^T + T_b`` is one in-chunk
  matrix, and the chunk's ``y = U @ (T^T + T_b) + S @ R + S(C - 1 - k) @ R_b``;
- ``p > 0`` (``SHIFTED``): the reverse chunk ``L // Q - k - 1`` covers times ``kQ + p .. kQ + p + Q - 1``
  (the inputs read once more, shifted by ``p``, from L1/L2); its currents go to a second scratch region, whose
  first ``p`` columns hold the previous reverse chunk's last ``p`` (computed once before the walk for chunk 0),
  and chunk ``k`` adds columns ``0 .. Q - 1`` of it to its causal currents.

Every product is one that :func:`spiking_ssm.chunked.chunked_conv` makes (the same chunks in both directions), and
the gradients come from its own kernels, so the operator gradients are exactly the unfused path's.

Backward recomputes: the causal and anti-causal chunk-start states (the state-writing forward kernel, as the
chunked convolution's own backward does), then the same fused walk with ``BACKWARD``: it reads ``ds`` instead of
storing spikes and writes ``dy = ds * g`` with ``g = _surrogate_factor(z, alpha)`` (the SDN passes no gradient
through its membrane estimate) to a transient ``[B, H, L]`` buffer, which the chunked convolution's adjoint walk
and operator-gradient kernels take per direction. That buffer is the one ``[B, H, L]`` float left, and only in
backward (fusing ``dy`` into the adjoint walk, which runs backwards in time, is future work).
"""

from __future__ import annotations

import torch

from spiking_ssm.chunked import ChunkOperators
from spiking_ssm.kernels.chunked_conv import (BLOCK_ROWS, chunk_states, direction_backward, pad_operators,
                                              unsupported)
from spiking_ssm.kernels.launch import FP_FUSION
from spiking_ssm.kernels.runtime import triton
from spiking_ssm.kernels.soma import SDN_NUM_WEIGHTS, SDNWeights

HALO = 8  # the SDN's window: the currents y[t-8 .. t-1]
SOMA_WARPS = 8  # the fused walk (4 warps: 255 registers on sm_90); the chunked convolution's kernels: NUM_WARPS


def soma_warps(dtype: torch.dtype) -> int:
    """The fused walk's default ``num_warps`` for ``dtype``."""
    return SOMA_WARPS

if triton is not None:
    import triton.language as tl

    from spiking_ssm.kernels.chunked_conv import _chunk, _operators, _program, _toeplitz
    from spiking_ssm.kernels.sdn_kernel import _surrogate_factor, _w, _z
    from spiking_ssm.kernels.tiles import _columns, _rows4

    @triton.jit
    def _reversed_readout(readout_ptr, h, part, MP: tl.constexpr, Q: tl.constexpr):
        """``[MP, Q]``: column ``i`` is the anti-causal readout's column ``Q - 1 - i`` (reverse chunk step of i)."""
        turn = Q - 1 - tl.arange(0, Q)
        return tl.load(readout_ptr + (h * 2 + part) * MP * Q + tl.arange(0, MP)[:, None] * Q + turn[None, :])

    @triton.jit
    def _state(states_ptr, rows, live, h, H, c, CHUNK_COUNT, MP: tl.constexpr):
        """``(Sr, Si)`` ``[BB, MP]`` of chunk ``c`` from ``[B, H, CHUNK_COUNT, 2, MP]`` (zeros outside ``0..C-1``)."""
        chunk = tl.zeros([1, MP], dtype=tl.int64) + c  # a tensor: the interpreter takes no scalar in a mask
        at = states_ptr + ((rows[:, None] * H + h) * CHUNK_COUNT + chunk) * 2 * MP + tl.arange(0, MP)[None, :]
        ok = live[:, None] & (chunk >= 0) & (chunk < CHUNK_COUNT)
        return tl.load(at, mask=ok, other=0.0), tl.load(at + MP, mask=ok, other=0.0)

    @triton.jit
    def _anticausal(u_rows, su_l, rows, live, h, H, L, k, start, taps_t, rb_r, rb_i, states_ptr, CHUNK_COUNT,
                    Q: tl.constexpr, MP: tl.constexpr, PRECISION: tl.constexpr):
        """``[BB, Q]``: the anti-causal currents at times ``start + i``, the steps of reverse chunk ``L // Q - k - 1``
        (``start = kQ + L mod Q``): ``W @ T_b + S @ R_b`` with that chunk's inputs ``W`` and entering state ``S``."""
        time = start + tl.arange(0, Q)
        inside = live[:, None] & ((time >= 0) & (time < L))[None, :]
        w = tl.load(u_rows + time[None, :] * su_l, mask=inside, other=0.0)
        s_r, s_i = _state(states_ptr, rows, live, h, H, L // Q - k - 1, CHUNK_COUNT, MP)
        y = tl.dot(w, taps_t, input_precision=PRECISION)
        y = tl.dot(s_r, rb_r, y, input_precision=PRECISION)
        return tl.dot(s_i, rb_i, y, input_precision=PRECISION)

    @triton.jit
    def _sdn_chunk_kernel(u_ptr, taps_ptr, readout_ptr, inject_ptr, decay_ptr, taps_b_ptr, readout_b_ptr,
                          states_b_ptr, W, scratch_ptr, out_ptr, ds_ptr,
                          B, H, L, CHUNK_COUNT, su_b, su_h, su_l, sd_b, sd_h, sd_l,
                          Q: tl.constexpr, MP: tl.constexpr, BB: tl.constexpr, BIDIRECTIONAL: tl.constexpr,
                          ALIGNED: tl.constexpr, BACKWARD: tl.constexpr, W_IN_ARGS: tl.constexpr,
                          PRECISION: tl.constexpr):
        """Spikes ``[B, H, L]`` (contiguous) from ``u`` (strides ``su_*``); ``BACKWARD``: ``dy = ds * g`` instead,
        ``ds`` with strides ``sd_*``. Operators padded as the chunked-convolution kernels take them; anti-causal
        taps ``[H, Q]``, readout ``[H, 2, MP, Q]`` and chunk-start states ``[B, H, CHUNK_COUNT, 2, MP]`` (read only
        when ``BIDIRECTIONAL``). ``ALIGNED``: ``L`` is a multiple of ``Q``. ``scratch``: ``[programs, BB, WIDTH]``,
        ``WIDTH = 8 + Q``, or ``8 + 3Q`` for a bidirectional layer with ``L`` not a multiple of ``Q`` (``SHIFTED``:
        the anti-causal currents go through columns ``8 + Q ..`` as they straddle two chunks)."""
        SHIFTED: tl.constexpr = BIDIRECTIONAL and not ALIGNED
        WIDTH: tl.constexpr = 8 + Q + 2 * Q * SHIFTED  # 8: HALO (a jit function reads no module globals)
        h, block, rows, live = _program(B, BB)
        modes = tl.arange(0, MP)
        steps = tl.arange(0, Q)
        p = L % Q
        t_t = _toeplitz(taps_ptr, h, Q, True)  # [Q, Q]
        if BIDIRECTIONAL:
            taps_b = _toeplitz(taps_b_ptr, h, Q, False)  # [Q, Q]: T_b[j, i] = taps_b[j - i]
            rb_r = _reversed_readout(readout_b_ptr, h, 0, MP, Q)
            rb_i = _reversed_readout(readout_b_ptr, h, 1, MP, Q)
            if ALIGNED:
                t_t += taps_b  # the reverse chunks are the chunks: one in-chunk product for both directions
        rr, ri, jr, ji, dr, di = _operators(readout_ptr, inject_ptr, decay_ptr, h, MP, Q, False)
        dtype = u_ptr.dtype.element_ty
        sr = tl.zeros([BB, MP], dtype=dtype)
        si = tl.zeros([BB, MP], dtype=dtype)
        u_rows = u_ptr + rows[:, None] * su_b + h * su_h
        # the scratch: this program's row r at scratch + r WIDTH; the soma's [BB Q / 4, 4] tiles of steps
        scratch = scratch_ptr + (block * H + h) * BB * WIDTH
        tile_rows = scratch + tl.arange(0, BB)[:, None] * WIDTH  # [BB, 1]
        back_rows = tile_rows + 8 + Q  # SHIFTED: anti-causal currents of steps 0 .. p + Q - 1 of the chunk
        quads = tl.arange(0, BB * Q // 4)
        local = quads // (Q // 4)
        col = (quads % (Q // 4))[:, None] * 4 + tl.arange(0, 4)[None, :]  # [BB Q / 4, 4]: step in the chunk
        window = scratch + local[:, None] * WIDTH + col  # y[t - 8] of step col
        quad_rows = block * BB + local
        quad_live = (quad_rows < B)[:, None]
        out_rows = out_ptr + (quad_rows[:, None] * H + h) * L
        ds_rows = ds_ptr + quad_rows[:, None] * sd_b + h * sd_h
        tl.store(tile_rows + tl.arange(0, 8)[None, :], tl.zeros([BB, 8], dtype=dtype))  # before the sequence
        tail = (steps >= Q - p)[None, :]  # SHIFTED: the steps of a reverse chunk that fall in the next chunk
        if SHIFTED:  # the last reverse chunk: its steps p - Q .. p - 1 (its last p are the first of chunk 0)
            y_b = _anticausal(u_rows, su_l, rows, live, h, H, L, -1, p - Q, taps_b, rb_r, rb_i, states_b_ptr,
                              CHUNK_COUNT, Q, MP, PRECISION)
            tl.store(back_rows + steps[None, :] - (Q - p), y_b, mask=tail)
        time, inside = _chunk(rows, live, 0, L, Q, False)
        u = tl.load(u_rows + time * su_l, mask=inside, other=0.0)  # [BB, Q]
        for k in range(CHUNK_COUNT):
            y = tl.dot(u, t_t, input_precision=PRECISION)
            y = tl.dot(sr, rr, y, input_precision=PRECISION)
            y = tl.dot(si, ri, y, input_precision=PRECISION)
            if BIDIRECTIONAL:
                if ALIGNED:
                    s_r, s_i = _state(states_b_ptr, rows, live, h, H, CHUNK_COUNT - 1 - k, CHUNK_COUNT, MP)
                    y = tl.dot(s_r, rb_r, y, input_precision=PRECISION)
                    y = tl.dot(s_i, rb_i, y, input_precision=PRECISION)
                else:
                    y_b = _anticausal(u_rows, su_l, rows, live, h, H, L, k, k * Q + p, taps_b, rb_r, rb_i,
                                      states_b_ptr, CHUNK_COUNT, Q, MP, PRECISION)
                    tl.store(back_rows + p + steps[None, :], y_b)
                    tl.debug_barrier()
                    y += tl.load(back_rows + steps[None, :])
            new_r = tl.dot(u, jr, sr * dr - si * di, input_precision=PRECISION)
            si = tl.dot(u, ji, sr * di + si * dr, input_precision=PRECISION)
            sr = new_r
            time, inside = _chunk(rows, live, k + 1, L, Q, False)
            u = tl.load(u_rows + time * su_l, mask=inside, other=0.0)  # the next chunk's inputs
            # the soma on this chunk's currents
            tl.store(tile_rows + 8 + steps[None, :], y)
            tl.debug_barrier()
            p0, p1, p2, p3 = _columns(tl.load(window))  # y[t0-8 .. t0-5]
            q0, q1, q2, q3 = _columns(tl.load(window + 4))  # y[t0-4 .. t0-1]
            c0, c1, c2, c3 = _columns(tl.load(window + 8))  # y[t0 .. t0+3]
            z0 = _z(W, p0, p1, p2, p3, q0, q1, q2, q3, c0, W_IN_ARGS)
            z1 = _z(W, p1, p2, p3, q0, q1, q2, q3, c0, c1, W_IN_ARGS)
            z2 = _z(W, p2, p3, q0, q1, q2, q3, c0, c1, c2, W_IN_ARGS)
            z3 = _z(W, p3, q0, q1, q2, q3, c0, c1, c2, c3, W_IN_ARGS)
            z = _rows4(z0, z1, z2, z3)
            step = k * Q + col
            keep = quad_live & (step < L)
            if BACKWARD:
                ds = tl.load(ds_rows + step * sd_l, mask=keep, other=0.0).to(dtype)
                alpha = _w(W, 153, W_IN_ARGS)
                tl.store(out_rows + step, ds * _surrogate_factor(z, alpha).to(dtype), mask=keep)
            else:
                tl.store(out_rows + step, (z >= 0).to(dtype), mask=keep)
            tl.debug_barrier()
            # this chunk's last 8 currents become the next chunk's halo; the reverse chunk's tail its first p
            tl.store(tile_rows + steps[None, :] - (Q - 8), y, mask=(steps >= Q - 8)[None, :])
            if SHIFTED:
                tl.store(back_rows + steps[None, :] - (Q - p), y_b, mask=tail)


def _launch_sdn_walk(u, ops_f, ops_b, states_b, weights: SDNWeights, ds, precision, block_rows, num_warps):
    """The fused walk: spikes ``[B, H, L]`` (``ds`` None) or ``dy = ds * g`` (``ds`` given), ``u``'s dtype."""
    batch, width, length = u.shape
    chunk, modes = ops_f[0].shape[-1], ops_f[3].shape[-1]
    count = triton.cdiv(length, chunk)
    blocks = triton.cdiv(batch, block_rows)
    out = u.new_empty(batch, width, length)
    if not (batch and width and length):
        return out.zero_() if ds is not None else out
    bidirectional = ops_b is not None
    shifted = bidirectional and length % chunk != 0  # the kernel's SHIFTED: room for the anti-causal currents
    scratch = u.new_empty(blocks * width, block_rows, HALO + chunk + 2 * chunk * shifted)
    taps_b, readout_b = (ops_b[0], ops_b[1]) if bidirectional else (ops_f[0], ops_f[1])
    f64 = u.dtype == torch.float64
    w = weights.tensor if f64 else weights.values  # float64 from memory; else constant-bank arguments
    grad = ds if ds is not None else out
    _sdn_chunk_kernel[(width, blocks)](u, *ops_f, taps_b, readout_b, states_b if bidirectional else out, w, scratch,
                                       out, grad, batch, width, length, count, *u.stride(), *grad.stride(), Q=chunk,
                                       MP=modes, BB=block_rows, BIDIRECTIONAL=bidirectional,
                                       ALIGNED=length % chunk == 0, BACKWARD=ds is not None, W_IN_ARGS=not f64,
                                       PRECISION=precision, num_warps=num_warps, **FP_FUSION)
    return out


class _ChunkedSDN(torch.autograd.Function):
    """``(u, weights, config, *causal ops[, *anti-causal ops]) -> spikes``, operators padded (``pad_operators``);
    saves only ``u`` and the operators."""

    @staticmethod
    def forward(ctx, u, weights, config, *ops):
        precision, block_rows, num_warps = config
        ops_f, ops_b = ops[:4], (ops[4:] or None)
        ctx.save_for_backward(u, *ops)
        ctx.weights, ctx.config = weights, config
        states_b = chunk_states(u, ops_b, True, precision, block_rows) if ops_b is not None else None
        return _launch_sdn_walk(u, ops_f, ops_b, states_b, weights, None, precision, block_rows, num_warps)

    @staticmethod
    def backward(ctx, grad_spikes):
        u, *ops = ctx.saved_tensors
        precision, block_rows, num_warps = ctx.config
        ops_f, ops_b = ops[:4], (ops[4:] or None)
        states_b = chunk_states(u, ops_b, True, precision, block_rows) if ops_b is not None else None
        grad_y = _launch_sdn_walk(u, ops_f, ops_b, states_b, ctx.weights, grad_spikes, precision, block_rows,
                                  num_warps)
        states_f = chunk_states(u, ops_f, False, precision, block_rows)
        grad_u, *grads = direction_backward(u, grad_y, ops_f, states_f, False, precision, block_rows)
        del states_f
        if ops_b is not None:
            grad_u_b, *grads_b = direction_backward(u, grad_y, ops_b, states_b, True, precision, block_rows)
            grad_u += grad_u_b
            grads += grads_b
        return grad_u, None, None, *grads


def chunked_sdn_spikes(u: torch.Tensor, ops_list: list[ChunkOperators], weights: SDNWeights,
                       precision: str = "ieee", block_rows: int = BLOCK_ROWS,
                       num_warps: int | None = None) -> torch.Tensor:
    """SDN spikes of the chunked S4D currents: ``u`` ``[B, H, L]`` (float32 or float64, any strides) -> spikes
    ``[B, H, L]`` (contiguous, ``u``'s dtype, values 0 and 1), never holding the currents in memory.

    ``ops_list``: ``[causal]`` or ``[causal, anti-causal]`` (``SpikingSSM.chunk_operators()``, in any real dtype:
    cast to ``u``'s), both with the same chunk ``Q`` in (16, 32, 64, 128) and the same number of modes;
    ``weights``: :func:`spiking_ssm.kernels.soma.sdn_params` for ``u``'s dtype. Differentiable in ``u`` and in
    every operator tensor (SDNNeuron's surrogate; no gradient through the membrane estimate). ``precision`` and
    ``block_rows`` as :func:`spiking_ssm.kernels.chunked_conv.chunked_conv_triton`; ``num_warps``: the fused walk's
    (the chunked convolution's state and adjoint kernels keep their own).
    """
    if not 1 <= len(ops_list) <= 2:
        raise ValueError(f"ops_list must hold 1 (causal) or 2 (bidirectional) ChunkOperators, got {len(ops_list)}")
    for ops in ops_list:
        reason = unsupported(u, ops, precision)
        if reason is not None:
            raise ValueError(reason)
    if len(ops_list) == 2 and (ops_list[0].chunk != ops_list[1].chunk
                               or ops_list[0].decay.shape != ops_list[1].decay.shape):
        raise ValueError("the causal and anti-causal operators must have the same chunk and number of modes")
    if block_rows < 16 or block_rows & (block_rows - 1):
        raise ValueError(f"block_rows must be a power of two >= 16, got {block_rows}")
    tensor = weights.tensor
    if tensor.numel() != SDN_NUM_WEIGHTS + 1 or tensor.dtype != u.dtype or tensor.device != u.device:
        raise ValueError(f"SDN weights must be [{SDN_NUM_WEIGHTS + 1}] {u.dtype} on {u.device} (sdn_params for "
                         f"u's dtype), got {list(tensor.shape)} {tensor.dtype} on {tensor.device}")
    if u.dtype == torch.float64:
        precision = "ieee"
    num_warps = num_warps or soma_warps(u.dtype)
    padded = [t for ops in ops_list for t in pad_operators(ops, u.dtype)]
    return _ChunkedSDN.apply(u, weights, (precision, block_rows, num_warps), *padded)
