"""The SDN soma's fused forward: the reduced SDN membrane estimate, spikes and surrogate factor in one pass.

``m_t`` is the reduced SDN: conv 1->8 over ``y[t-8 .. t-1]``, ReLU, 1x1 conv 8->8 plus the residual, ReLU, 1x1 conv
8->1. One program owns one row and ``BLOCK`` time steps, each thread four consecutive steps at a time: it loads
three aligned 4-wide windows ``y[t0-8 .. t0-5]``, ``y[t0-4 .. t0-1]``, ``y[t0 .. t0+3]`` (vector loads when the
time stride is 1) and computes the four outputs from those 12 values in registers, every dot product one chain of
FMAs. The residual is folded into the second convolution on the host (``W2 + I``), so it costs nothing here.

Weights: for float32/float16/bfloat16 inputs the 154 numbers (153 weights, then the surrogate's ``alpha``) are
passed as scalar kernel arguments (``W_IN_ARGS``): they live in the constant bank and the FMAs read them from there,
with no load and no register. For float64 the kernel reads them from a ``[154]`` tensor (Triton passes Python
floats as float32), once per program.

Tensor shapes: ``y`` rows ``[N, L]`` with strides ``(y_row, y_time)``; ``s``, ``g`` ``[N, L]`` with ``(o_row,
o_time)``; grid ``(N, cdiv(L, BLOCK))``.
"""

from __future__ import annotations

from spiking_ssm.kernels.runtime import triton

if triton is not None:
    import triton.language as tl

    from spiking_ssm.kernels.tiles import _columns, _rows4

    # Every @triton.jit helper is generated once per distinct set of argument types and constexpr values, and each
    # generation unpacks its tuple arguments: the 154 weights are taken apart once per unit (``_row``), and the
    # network below receives only a unit's nine numbers, so Triton generates ~20 helpers that see the whole tuple
    # instead of ~200 (they were two thirds of a compile). The arithmetic, its order and the order of the float64
    # kernel's weight loads are unchanged (the compiled SASS is the same).
    @triton.jit
    def _w(W, i: tl.constexpr, W_IN_ARGS: tl.constexpr):
        """Weight ``i``: a kernel argument (constant bank) or a load from the weight tensor."""
        if W_IN_ARGS:
            return W[i]
        else:
            return tl.load(W + i)

    @triton.jit
    def _row(W, at: tl.constexpr, bias_at: tl.constexpr, W_IN_ARGS: tl.constexpr):
        """One unit's numbers ``(bias, w_0 .. w_7)``: ``W[bias_at]`` and ``W[at .. at + 7]``; with the weights in
        memory, the bias and the addresses of the eight weights (each loaded where the chain uses it)."""
        if W_IN_ARGS:
            return W[bias_at], W[at], W[at + 1], W[at + 2], W[at + 3], W[at + 4], W[at + 5], W[at + 6], W[at + 7]
        else:
            return (tl.load(W + bias_at), W + at, W + at + 1, W + at + 2, W + at + 3, W + at + 4, W + at + 5,
                    W + at + 6, W + at + 7)

    @triton.jit
    def _value(w, W_IN_ARGS: tl.constexpr):
        """A weight from :func:`_row`: itself (a kernel argument), or the load from its address."""
        if W_IN_ARGS:
            return w
        else:
            return tl.load(w)

    @triton.jit
    def _chain8(row, a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS: tl.constexpr):
        """``bias + sum_j w_j a_j`` as one chain of 8 FMAs (``row = (bias, w_0 .. w_7)``, from :func:`_row`)."""
        acc = row[0] + _value(row[1], W_IN_ARGS) * a0
        acc = acc + _value(row[2], W_IN_ARGS) * a1
        acc = acc + _value(row[3], W_IN_ARGS) * a2
        acc = acc + _value(row[4], W_IN_ARGS) * a3
        acc = acc + _value(row[5], W_IN_ARGS) * a4
        acc = acc + _value(row[6], W_IN_ARGS) * a5
        acc = acc + _value(row[7], W_IN_ARGS) * a6
        return acc + _value(row[8], W_IN_ARGS) * a7

    @triton.jit
    def _unit(row, a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS: tl.constexpr):
        """``relu(bias + sum_j w_j a_j)``: one unit of an [8, 8] layer."""
        return tl.maximum(_chain8(row, a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS), 0.0)

    @triton.jit
    def _layer(W, w_at: tl.constexpr, b_at: tl.constexpr, a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS: tl.constexpr):
        """``relu(b + w a)`` for the [8, 8] weight at ``w_at`` and the bias at ``b_at``: eight outputs."""
        h0 = _unit(_row(W, w_at, b_at, W_IN_ARGS), a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS)
        h1 = _unit(_row(W, w_at + 8, b_at + 1, W_IN_ARGS), a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS)
        h2 = _unit(_row(W, w_at + 16, b_at + 2, W_IN_ARGS), a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS)
        h3 = _unit(_row(W, w_at + 24, b_at + 3, W_IN_ARGS), a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS)
        h4 = _unit(_row(W, w_at + 32, b_at + 4, W_IN_ARGS), a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS)
        h5 = _unit(_row(W, w_at + 40, b_at + 5, W_IN_ARGS), a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS)
        h6 = _unit(_row(W, w_at + 48, b_at + 6, W_IN_ARGS), a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS)
        h7 = _unit(_row(W, w_at + 56, b_at + 7, W_IN_ARGS), a0, a1, a2, a3, a4, a5, a6, a7, W_IN_ARGS)
        return h0, h1, h2, h3, h4, h5, h6, h7

    @triton.jit
    def _z(W, x0, x1, x2, x3, x4, x5, x6, x7, y, W_IN_ARGS: tl.constexpr):
        """``m + y - 1`` for one time step from its eight past currents ``x0 = y[t-8] .. x7 = y[t-1]``.
        Layout of ``W``: conv1 [8, 8] at 0, bias at 64; conv2 + I [8, 8] at 72, bias at 136; conv3 at 144, bias 152."""
        h = _layer(W, 0, 64, x0, x1, x2, x3, x4, x5, x6, x7, W_IN_ARGS)
        g = _layer(W, 72, 136, h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7], W_IN_ARGS)
        m = _chain8(_row(W, 144, 152, W_IN_ARGS), g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], W_IN_ARGS)
        return m + y - 1.0

    @triton.jit
    def _window(row_ptr, t, lag: tl.constexpr, stride, L, F64: tl.constexpr):
        """``y[t - lag]`` for the ``[Q, 4]`` steps ``t`` (0 before the sequence starts: causal zero padding)."""
        x = tl.load(row_ptr + (t - lag) * stride, mask=(t >= lag) & (t - lag < L), other=0.0)
        return x.to(tl.float64) if F64 else x.to(tl.float32)

    @triton.jit
    def _surrogate_factor(z, alpha):
        """SpikingJelly PiecewiseQuadratic: ``alpha - alpha^2 |z|`` inside ``|z| <= 1 / alpha``, else 0."""
        az = tl.abs(z)
        return tl.where(az > 1.0 / alpha, 0.0, alpha - alpha * alpha * az)

    @triton.jit
    def _sdn_forward_kernel(y_ptr, s_ptr, g_ptr, W, L, y_row, y_time, o_row, o_time, N_CLASS, L_CLASS,
                            BLOCK: tl.constexpr, STORE_G: tl.constexpr, F64: tl.constexpr,
                            W_IN_ARGS: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        quads = tl.program_id(1).to(tl.int64) * (BLOCK // 4) + tl.arange(0, BLOCK // 4)  # 64-bit offsets
        t = quads[:, None] * 4 + tl.arange(0, 4)[None, :]  # [Q, 4] time steps, four per thread
        row_ptr = y_ptr + row * y_row
        p0, p1, p2, p3 = _columns(_window(row_ptr, t, 8, y_time, L, F64))  # y[t0-8 .. t0-5]
        q0, q1, q2, q3 = _columns(_window(row_ptr, t, 4, y_time, L, F64))  # y[t0-4 .. t0-1]
        c0, c1, c2, c3 = _columns(_window(row_ptr, t, 0, y_time, L, F64))  # y[t0 .. t0+3]
        z0 = _z(W, p0, p1, p2, p3, q0, q1, q2, q3, c0, W_IN_ARGS)
        z1 = _z(W, p1, p2, p3, q0, q1, q2, q3, c0, c1, W_IN_ARGS)
        z2 = _z(W, p2, p3, q0, q1, q2, q3, c0, c1, c2, W_IN_ARGS)
        z3 = _z(W, p3, q0, q1, q2, q3, c0, c1, c2, c3, W_IN_ARGS)
        z = _rows4(z0, z1, z2, z3)
        inside = t < L
        out = row * o_row + t * o_time
        tl.store(s_ptr + out, (z >= 0).to(s_ptr.dtype.element_ty), mask=inside)
        if STORE_G:
            alpha = _w(W, 153, W_IN_ARGS)
            tl.store(g_ptr + out, _surrogate_factor(z, alpha).to(g_ptr.dtype.element_ty), mask=inside)
