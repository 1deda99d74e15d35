"""Fused somas of SpikingSSM: the SDN and SLTT neurons in one pass over rows ``[..., L]`` (time last).

Both forward kernels read the currents ``y`` once in whatever strided layout they come (the layer's ``[B, H, L]``,
a slice of the FFT output, or a time-major tensor seen time-last) and write the spikes ``s`` and, when a gradient
is needed, the surrogate factor ``g = alpha - alpha^2 |z|`` (0 for ``|z| > 1/alpha``) of SpikingJelly's
``PiecewiseQuadratic`` at ``z = m + y - 1``. The backward of both is then ``grad_y = grad_s * g``, one elementwise
multiply: the SDN soma passes no gradient through its membrane estimate, and SLTT cuts the temporal path, so storing
``g`` (the same bytes as storing ``y``) is cheaper than recomputing the SDN's 153-weight network or the scan.

- SDN: ``m_t`` is the reduced SDN (conv 1->8 over ``y[t-8 .. t-1]``, ReLU, 1x1 conv 8->8 + residual, ReLU,
  1x1 conv 8->1), all 153 weights in registers; one program per (row, block of time steps).
- SLTT: the exact LIF ``h_t = tau u_{t-1} + y_t``, ``s_t = H(h_t - v_th)``, ``u_t = h_t (1 - s_t)`` scanned along
  the row, ``z = h_t - v_th``; one program per block of rows, time unrolled in chunks so loads run ahead.

Arithmetic is float32 (float64 for float64 inputs); spikes and factors are stored in the input's dtype. On CUDA the
launch sizes are autotuned once per power-of-two class of rows and of length (``N_CLASS``, ``L_CLASS``: batches
padded to their own length do not retune at every new length).
The torch references are :class:`spiking_ssm.neurons.SDNNeuron` and :class:`SLTTLIFNeuron` with
``implementation="torch"``; tests compare them through Triton's CPU interpreter.
"""

from __future__ import annotations

import torch

from spiking_ssm.kernels.runtime import interpreter_on, triton

SDN_WIDTH, SDN_KERNEL = 8, 8
SDN_NUM_WEIGHTS = 153  # conv1 64 + 8, conv2 64 + 8, conv3 8 + 1
SDN_KEYS = ("conv1_weight", "conv1_bias", "conv2_weight", "conv2_bias", "conv3_weight", "conv3_bias")
SDN_BLOCK, SLTT_ROWS, SLTT_CHUNK = 256, 32, 8  # fixed launch sizes (the interpreter, and before autotuning)

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _dot8(w_ptr, a0, a1, a2, a3, a4, a5, a6, a7):
        """``sum_j w_ptr[j] * a_j`` for 8 blocks ``a_j`` and 8 scalar weights."""
        acc = tl.load(w_ptr) * a0 + tl.load(w_ptr + 1) * a1
        acc += tl.load(w_ptr + 2) * a2 + tl.load(w_ptr + 3) * a3
        acc += tl.load(w_ptr + 4) * a4 + tl.load(w_ptr + 5) * a5
        return acc + tl.load(w_ptr + 6) * a6 + tl.load(w_ptr + 7) * a7

    @triton.jit
    def _past(row_ptr, t, lag: tl.constexpr, stride, inside, F64: tl.constexpr):
        """``y[t - lag]`` (0 before the sequence starts, the SDN's causal zero padding) in compute precision."""
        x = tl.load(row_ptr + (t - lag) * stride, mask=inside & (t >= lag), other=0.0)
        return x.to(tl.float64) if F64 else x.to(tl.float32)

    @triton.jit
    def _hidden(w_ptr, b_ptr, c: tl.constexpr, a0, a1, a2, a3, a4, a5, a6, a7):
        """``b[c] + sum_j w[c, j] a_j`` for the [8, 8] weight at ``w_ptr``."""
        return tl.load(b_ptr + c) + _dot8(w_ptr + 8 * c, a0, a1, a2, a3, a4, a5, a6, a7)

    @triton.jit
    def _surrogate_factor(z, alpha):
        """SpikingJelly PiecewiseQuadratic: ``alpha - alpha^2 |z|`` inside ``|z| <= 1 / alpha``, else 0."""
        az = tl.abs(z)
        return tl.where(az > 1.0 / alpha, 0.0, alpha - alpha * alpha * az)

    @triton.jit
    def _sdn_forward_kernel(y_ptr, s_ptr, g_ptr, w_ptr, L, y_row, y_time, o_row, o_time, N_CLASS, L_CLASS,
                            BLOCK: tl.constexpr, STORE_G: tl.constexpr, F64: tl.constexpr):
        alpha = tl.load(w_ptr + 153)
        row = tl.program_id(0).to(tl.int64)
        t = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # 64-bit offsets: large strided tensors
        inside = t < L
        row_ptr = y_ptr + row * y_row
        x0 = _past(row_ptr, t, 8, y_time, inside, F64)
        x1 = _past(row_ptr, t, 7, y_time, inside, F64)
        x2 = _past(row_ptr, t, 6, y_time, inside, F64)
        x3 = _past(row_ptr, t, 5, y_time, inside, F64)
        x4 = _past(row_ptr, t, 4, y_time, inside, F64)
        x5 = _past(row_ptr, t, 3, y_time, inside, F64)
        x6 = _past(row_ptr, t, 2, y_time, inside, F64)
        x7 = _past(row_ptr, t, 1, y_time, inside, F64)
        y = _past(row_ptr, t, 0, y_time, inside, F64)
        # conv1 [8, 8] at 0, bias at 64; conv2 [8, 8] at 72, bias at 136; conv3 [8] at 144, bias at 152; alpha 153
        h0 = tl.maximum(_hidden(w_ptr, w_ptr + 64, 0, x0, x1, x2, x3, x4, x5, x6, x7), 0.0)
        h1 = tl.maximum(_hidden(w_ptr, w_ptr + 64, 1, x0, x1, x2, x3, x4, x5, x6, x7), 0.0)
        h2 = tl.maximum(_hidden(w_ptr, w_ptr + 64, 2, x0, x1, x2, x3, x4, x5, x6, x7), 0.0)
        h3 = tl.maximum(_hidden(w_ptr, w_ptr + 64, 3, x0, x1, x2, x3, x4, x5, x6, x7), 0.0)
        h4 = tl.maximum(_hidden(w_ptr, w_ptr + 64, 4, x0, x1, x2, x3, x4, x5, x6, x7), 0.0)
        h5 = tl.maximum(_hidden(w_ptr, w_ptr + 64, 5, x0, x1, x2, x3, x4, x5, x6, x7), 0.0)
        h6 = tl.maximum(_hidden(w_ptr, w_ptr + 64, 6, x0, x1, x2, x3, x4, x5, x6, x7), 0.0)
        h7 = tl.maximum(_hidden(w_ptr, w_ptr + 64, 7, x0, x1, x2, x3, x4, x5, x6, x7), 0.0)
        w2, b2 = w_ptr + 72, w_ptr + 136
        g0 = tl.maximum(_hidden(w2, b2, 0, h0, h1, h2, h3, h4, h5, h6, h7) + h0, 0.0)
        g1 = tl.maximum(_hidden(w2, b2, 1, h0, h1, h2, h3, h4, h5, h6, h7) + h1, 0.0)
        g2 = tl.maximum(_hidden(w2, b2, 2, h0, h1, h2, h3, h4, h5, h6, h7) + h2, 0.0)
        g3 = tl.maximum(_hidden(w2, b2, 3, h0, h1, h2, h3, h4, h5, h6, h7) + h3, 0.0)
        g4 = tl.maximum(_hidden(w2, b2, 4, h0, h1, h2, h3, h4, h5, h6, h7) + h4, 0.0)
        g5 = tl.maximum(_hidden(w2, b2, 5, h0, h1, h2, h3, h4, h5, h6, h7) + h5, 0.0)
        g6 = tl.maximum(_hidden(w2, b2, 6, h0, h1, h2, h3, h4, h5, h6, h7) + h6, 0.0)
        g7 = tl.maximum(_hidden(w2, b2, 7, h0, h1, h2, h3, h4, h5, h6, h7) + h7, 0.0)
        m = _hidden(w_ptr + 144, w_ptr + 152, 0, g0, g1, g2, g3, g4, g5, g6, g7)
        z = m + y - 1.0
        out = row * o_row + t * o_time
        tl.store(s_ptr + out, (z >= 0).to(s_ptr.dtype.element_ty), mask=inside)
        if STORE_G:
            tl.store(g_ptr + out, _surrogate_factor(z, alpha).to(g_ptr.dtype.element_ty), mask=inside)

    @triton.jit
    def _sltt_forward_kernel(y_ptr, s_ptr, g_ptr, v_ptr, p_ptr, N, L, y_row, y_time, o_row, o_time, N_CLASS, L_CLASS,
                             ROWS: tl.constexpr, CHUNK: tl.constexpr, STORE_G: tl.constexpr,
                             STORE_V: tl.constexpr, F64: tl.constexpr):
        tau, v_threshold, alpha = tl.load(p_ptr), tl.load(p_ptr + 1), tl.load(p_ptr + 2)
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        live = rows < N
        y_rows = y_ptr + rows * y_row
        o_rows = rows * o_row
        u = tl.zeros([ROWS], dtype=tl.float64 if F64 else tl.float32)
        for start in range(0, L, CHUNK):
            for j in tl.static_range(CHUNK):
                t = start + j
                mask = live & (rows * 0 + t < L)  # a block-shaped test (a scalar one trips the interpreter)
                y = tl.load(y_rows + t * y_time, mask=mask, other=0.0)
                h = tau * u + (y.to(tl.float64) if F64 else y.to(tl.float32))
                z = h - v_threshold
                spike = z >= 0
                u = tl.where(spike, 0.0, h)
                out = o_rows + t * o_time
                tl.store(s_ptr + out, spike.to(s_ptr.dtype.element_ty), mask=mask)
                if STORE_G:
                    tl.store(g_ptr + out, _surrogate_factor(z, alpha).to(g_ptr.dtype.element_ty), mask=mask)
                if STORE_V:
                    tl.store(v_ptr + out, u.to(v_ptr.dtype.element_ty), mask=mask)

    def _configs(**sizes: list[int]) -> list:
        names = list(sizes)
        return [triton.Config(dict(zip(names, values)), num_warps=warps)
                for *values, warps in zip(*sizes.values())]

    _sdn_forward_tuned = triton.autotune(
        configs=_configs(BLOCK=[128, 256, 256, 512, 1024], warps=[4, 4, 8, 8, 8]),
        key=["N_CLASS", "L_CLASS", "STORE_G", "F64"],
    )(_sdn_forward_kernel)
    _sltt_forward_tuned = triton.autotune(
        configs=_configs(ROWS=[32, 32, 64, 128, 128], CHUNK=[8, 16, 8, 8, 16], warps=[1, 1, 2, 4, 4]),
        key=["N_CLASS", "L_CLASS", "STORE_G", "STORE_V", "F64"],
    )(_sltt_forward_kernel)


def _rows(y: torch.Tensor) -> torch.Tensor:
    """``y [..., L]`` as ``[N, L]`` rows, a view whenever the leading axes collapse to one stride."""
    return y.reshape(-1, y.shape[-1])


def _tuned(device: torch.device) -> bool:
    return device.type == "cuda" and not interpreter_on()


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' arithmetic: float64 for float64 inputs, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def sdn_params(sdn: torch.nn.Module, alpha: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The reduced SDN's 153 numbers and the surrogate's ``alpha`` as the fused kernel's ``[154]`` vector:
    conv1 weight [8, 1, 8], conv1 bias, conv2 weight [8, 8, 1], conv2 bias, conv3 weight [1, 8, 1], conv3 bias,
    alpha; on ``device`` in :func:`compute_dtype` of ``dtype``. Build it once and reuse it: it is a copy."""
    parts = [getattr(sdn, key).detach().reshape(-1).double().cpu() for key in SDN_KEYS]
    flat = torch.cat(parts + [torch.tensor([float(alpha)], dtype=torch.float64)])
    if flat.numel() != SDN_NUM_WEIGHTS + 1:
        raise ValueError(f"the fused SDN takes {SDN_NUM_WEIGHTS} weights (width 8, kernel 8), "
                         f"got {flat.numel() - 1}")
    return flat.to(device=device, dtype=compute_dtype(dtype))


def sltt_params(tau: float, v_threshold: float, alpha: float, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[tau, v_threshold, alpha]`` on ``device`` for the SLTT kernel (build once, reuse)."""
    return torch.tensor([tau, v_threshold, alpha], dtype=compute_dtype(dtype), device=device)


class _SurrogateSpikes(torch.autograd.Function):
    """Spikes (and membranes, when stored) from a fused forward that also wrote the surrogate factor ``g``;
    backward: ``grad_y = grad_s * g``. ``launch(y, params, store_g, store_v) -> (spikes, g, membrane)``."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, launch, params: torch.Tensor, store_membrane: bool, store_factor: bool):
        spikes, factor, membrane = launch(y, params, store_factor, store_membrane)
        ctx.save_for_backward(factor)
        ctx.mark_non_differentiable(membrane)
        return spikes, membrane

    @staticmethod
    def backward(ctx, grad_spikes: torch.Tensor, _grad_membrane: torch.Tensor):
        (factor,) = ctx.saved_tensors
        return grad_spikes * factor, None, None, None, None


def sdn_spikes(y: torch.Tensor, params: torch.Tensor) -> torch.Tensor:
    """SDN soma on currents ``y [..., L]`` (time last, any strides) -> spikes ``[..., L]`` in ``y``'s dtype.

    ``params`` from :func:`sdn_params`. Differentiable in ``y`` through the triangle surrogate; the membrane
    estimate gets no gradient.
    """
    _check_params(params, SDN_NUM_WEIGHTS + 1, y)
    return _SurrogateSpikes.apply(y, _launch_sdn, params, False, _needs_grad(y))[0]


def sltt_spikes(y: torch.Tensor, params: torch.Tensor,
                store_membrane: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """SLTT soma on ``y [..., L]`` (time last, any strides) -> ``(spikes [..., L], membrane [..., L] or None)``.

    ``params`` from :func:`sltt_params`. The membrane is the one after reset (SpikingJelly's ``v_seq``
    convention), stored only when asked for. Gradient: ``d s_t / d y_t`` only (SLTT cuts the temporal path).
    """
    _check_params(params, 3, y)
    spikes, membrane = _SurrogateSpikes.apply(y, _launch_sltt, params, store_membrane, _needs_grad(y))
    return spikes, membrane if store_membrane else None


def _needs_grad(y: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and y.requires_grad


def _check_params(params: torch.Tensor, size: int, y: torch.Tensor) -> None:
    if params.numel() != size or params.dtype != compute_dtype(y.dtype) or params.device != y.device:
        raise ValueError(f"kernel parameters must be [{size}] {compute_dtype(y.dtype)} on {y.device}, got "
                         f"{list(params.shape)} {params.dtype} on {params.device}")


def _outputs(rows: torch.Tensor, store_g: bool, store_v: bool):
    spikes = torch.empty_like(rows)
    return spikes, torch.empty_like(rows) if store_g else spikes, torch.empty_like(rows) if store_v else spikes


def _launch_sdn(y: torch.Tensor, params: torch.Tensor, store_g: bool, _store_v: bool):
    rows = _rows(y)
    n, length = rows.shape
    spikes, factor, _ = _outputs(rows, store_g, False)
    if n and length:
        f64 = rows.dtype == torch.float64
        args = (rows, spikes, factor, params, length, rows.stride(0), rows.stride(1), spikes.stride(0),
                spikes.stride(1), n.bit_length(), length.bit_length())
        if _tuned(rows.device):
            _sdn_forward_tuned[lambda meta: (n, triton.cdiv(length, meta["BLOCK"]))](*args, STORE_G=store_g, F64=f64)
        else:
            _sdn_forward_kernel[(n, triton.cdiv(length, SDN_BLOCK))](*args, BLOCK=SDN_BLOCK, STORE_G=store_g, F64=f64)
    return spikes.reshape(y.shape), factor.reshape(y.shape) if store_g else None, y.new_empty(0)


def _launch_sltt(y: torch.Tensor, params: torch.Tensor, store_g: bool, store_v: bool):
    rows = _rows(y)
    n, length = rows.shape
    spikes, factor, membrane = _outputs(rows, store_g, store_v)
    if n and length:
        args = (rows, spikes, factor, membrane, params, n, length, rows.stride(0), rows.stride(1), spikes.stride(0),
                spikes.stride(1), n.bit_length(), length.bit_length())
        flags = dict(STORE_G=store_g, STORE_V=store_v, F64=rows.dtype == torch.float64)
        if _tuned(rows.device):
            _sltt_forward_tuned[lambda meta: (triton.cdiv(n, meta["ROWS"]),)](*args, **flags)
        else:
            _sltt_forward_kernel[(triton.cdiv(n, SLTT_ROWS),)](*args, ROWS=SLTT_ROWS, CHUNK=SLTT_CHUNK, **flags)
    return (spikes.reshape(y.shape), factor.reshape(y.shape) if store_g else None,
            membrane.reshape(y.shape) if store_v else y.new_empty(0))
