"""Fused somas of SpikingSSM: the SDN and SLTT neurons in one pass over rows ``[..., L]`` (time last).

Both forward kernels read the currents ``y`` once in whatever strided layout they come (the layer's ``[B, H, L]``,
a slice of the FFT output, or a time-major tensor seen time-last) and write the spikes ``s`` and, when a gradient
is needed, the surrogate factor ``g = alpha - alpha^2 |z|`` (0 for ``|z| > 1/alpha``) of SpikingJelly's
``PiecewiseQuadratic`` at ``z = m + y - 1``. The backward of both is then ``grad_y = grad_s * g``, one elementwise
multiply: the SDN soma passes no gradient through its membrane estimate, and SLTT cuts the temporal path, so storing
``g`` (the same bytes as storing ``y``) is cheaper than recomputing the SDN's 153-weight network or the scan.

- SDN: ``m_t`` is the reduced SDN (conv 1->8 over ``y[t-8 .. t-1]``, ReLU, 1x1 conv 8->8 + residual, ReLU,
  1x1 conv 8->1); its kernel is :mod:`spiking_ssm.kernels.sdn_kernel` (FMA chains over aligned 4-wide windows,
  weights as kernel arguments); one program per (row, block of time steps).
- SLTT: the exact LIF ``h_t = tau u_{t-1} + y_t``, ``s_t = H(h_t - v_th)``, ``u_t = h_t (1 - s_t)`` scanned along
  the row, ``z = h_t - v_th``; one program per block of rows, each thread one row, reading and writing four steps at
  a time as one vector (a quarter of the cache lines of one step at a time), two such vectors loaded before
  either is scanned, time unrolled in chunks of ``CHUNK`` (a multiple of 8).

Arithmetic is float32 (float64 for float64 inputs); spikes and factors are stored in the input's dtype. On CUDA the
launch sizes are autotuned once per power-of-two class of rows and of length (``N_CLASS``, ``L_CLASS``: batches
padded to their own length do not retune at every new length).
The torch references are :class:`spiking_ssm.somas.SDNNeuron` and :class:`SLTTLIFNeuron` with
``implementation="torch"``; tests compare them through Triton's CPU interpreter.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from spiking_ssm.kernels.launch import FP_FUSION, run
from spiking_ssm.kernels.runtime import interpreter_on, triton

SDN_WIDTH, SDN_KERNEL = 8, 8
SDN_NUM_WEIGHTS = 153  # conv1 64 + 8, conv2 64 + 8, conv3 8 + 1
SDN_KEYS = ("conv1_weight", "conv1_bias", "conv2_weight", "conv2_bias", "conv3_weight", "conv3_bias")
# fixed launch sizes (the interpreter, and before autotuning)
SDN_BLOCK, SLTT_ROWS, SLTT_CHUNK, SLTT_STAGES = 256, 32, 8, 1
SLTT_FIXED = {"ROWS": SLTT_ROWS, "CHUNK": SLTT_CHUNK, "STAGES": SLTT_STAGES}

if triton is not None:
    import triton.language as tl

    from spiking_ssm.kernels.sdn_kernel import _sdn_forward_kernel, _surrogate_factor
    from spiking_ssm.kernels.tiles import _columns, _rows4

    @triton.jit
    def _sltt_step(u, y, tau, v_threshold, alpha):
        """One LIF step: charge, fire, reset. ``(u after reset, spike, surrogate factor)``."""
        h = tau * u + y
        z = h - v_threshold
        spike = z >= 0
        return tl.where(spike, 0.0, h), spike, _surrogate_factor(z, alpha)

    @triton.jit
    def _sltt_quad(u, y, tau, v_threshold, alpha, F64: tl.constexpr):
        """Four steps on ``y [ROWS, 4]``: ``(u, spikes [ROWS, 4], factors, membranes after reset)``."""
        y0, y1, y2, y3 = _columns(y.to(tl.float64) if F64 else y.to(tl.float32))
        v0, s0, g0 = _sltt_step(u, y0, tau, v_threshold, alpha)
        v1, s1, g1 = _sltt_step(v0, y1, tau, v_threshold, alpha)
        v2, s2, g2 = _sltt_step(v1, y2, tau, v_threshold, alpha)
        v3, s3, g3 = _sltt_step(v2, y3, tau, v_threshold, alpha)
        return v3, _rows4(s0, s1, s2, s3), _rows4(g0, g1, g2, g3), _rows4(v0, v1, v2, v3)

    @triton.jit
    def _sltt_store(s_ptr, g_ptr, v_ptr, out, mask, s, g, v, STORE_G: tl.constexpr, STORE_V: tl.constexpr):
        tl.store(s_ptr + out, s.to(s_ptr.dtype.element_ty), mask=mask)
        if STORE_G:
            tl.store(g_ptr + out, g.to(g_ptr.dtype.element_ty), mask=mask)
        if STORE_V:
            tl.store(v_ptr + out, v.to(v_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _sltt_forward_kernel(y_ptr, s_ptr, g_ptr, v_ptr, p_ptr, N, L, y_row, y_time, o_row, o_time, N_CLASS, L_CLASS,
                             ROWS: tl.constexpr, CHUNK: tl.constexpr, STAGES: tl.constexpr, STORE_G: tl.constexpr,
                             STORE_V: tl.constexpr, F64: tl.constexpr):
        tau, v_threshold, alpha = tl.load(p_ptr), tl.load(p_ptr + 1), tl.load(p_ptr + 2)
        rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
        live = rows[:, None] < N
        y_rows = y_ptr + rows[:, None] * y_row  # [ROWS, 1]
        o_rows = rows[:, None] * o_row
        u = tl.zeros([ROWS], dtype=tl.float64 if F64 else tl.float32)
        for start in tl.range(0, L, CHUNK, num_stages=STAGES):  # STAGES > 1: the next chunks' loads in flight
            for k in tl.static_range(CHUNK // 8):
                # two [ROWS, 4] tiles, four consecutive steps of a row per thread (one vector each when the time
                # stride is 1), both loaded before either is scanned; int64 from rows (t * y_time overflows int32
                # on time-major input)
                ta = o_rows * 0 + (start + 8 * k) + tl.arange(0, 4)[None, :]
                tb = ta + 4
                ma, mb = live & (ta < L), live & (tb < L)
                ya = tl.load(y_rows + ta * y_time, mask=ma, other=0.0)
                yb = tl.load(y_rows + tb * y_time, mask=mb, other=0.0)
                u, s, g, v = _sltt_quad(u, ya, tau, v_threshold, alpha, F64)
                _sltt_store(s_ptr, g_ptr, v_ptr, o_rows + ta * o_time, ma, s, g, v, STORE_G, STORE_V)
                u, s, g, v = _sltt_quad(u, yb, tau, v_threshold, alpha, F64)
                _sltt_store(s_ptr, g_ptr, v_ptr, o_rows + tb * o_time, mb, s, g, v, STORE_G, STORE_V)

    def _configs(**sizes: list[int]) -> list:
        names = list(sizes)
        return [triton.Config(dict(zip(names, values)), num_warps=warps)
                for *values, warps in zip(*sizes.values())]

    _sdn_forward_tuned = triton.autotune(
        configs=_configs(BLOCK=[512, 1024, 2048, 1024], warps=[2, 4, 8, 2]),
        key=["N_CLASS", "L_CLASS", "STORE_G", "F64"],
    )(_sdn_forward_kernel)
    _sltt_forward_tuned = triton.autotune(
        configs=_configs(ROWS=[32, 32, 32, 32, 64, 128], CHUNK=[8, 16, 16, 32, 16, 16], STAGES=[1, 1, 3, 3, 3, 3],
                         warps=[1, 1, 1, 1, 2, 4]),
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


class SDNWeights(NamedTuple):
    """The fused SDN's 154 numbers twice: ``tensor`` ``[154]`` on the device in the compute dtype (read by the
    float64 kernel) and ``values``, the same as Python floats (float32 kernel arguments for the other dtypes)."""

    tensor: torch.Tensor
    values: tuple


def sdn_params(sdn: torch.nn.Module, alpha: float, device: torch.device, dtype: torch.dtype) -> SDNWeights:
    """The reduced SDN's 153 numbers and the surrogate's ``alpha`` for the fused kernel: conv1 weight [8, 1, 8],
    conv1 bias, conv2 weight [8, 8, 1] plus the identity (the residual folded in), conv2 bias, conv3 weight
    [1, 8, 1], conv3 bias, alpha; in :func:`compute_dtype` of ``dtype``. Build it once and reuse it: it is a copy
    (and one host synchronisation)."""
    parts = [getattr(sdn, key).detach().reshape(-1).double().cpu() for key in SDN_KEYS]
    flat = torch.cat(parts + [torch.tensor([float(alpha)], dtype=torch.float64)])
    if flat.numel() != SDN_NUM_WEIGHTS + 1:
        raise ValueError(f"the fused SDN takes {SDN_NUM_WEIGHTS} weights (width 8, kernel 8), "
                         f"got {flat.numel() - 1}")
    flat[72:136].view(8, 8).diagonal().add_(1.0)  # g = relu((W2 + I) h + b2): the residual as a weight
    flat = flat.to(compute_dtype(dtype))
    return SDNWeights(flat.to(device), tuple(flat.float().tolist()))


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


def sdn_spikes(y: torch.Tensor, params: SDNWeights) -> torch.Tensor:
    """SDN soma on currents ``y [..., L]`` (time last, any strides) -> spikes ``[..., L]`` in ``y``'s dtype.

    ``params`` from :func:`sdn_params`. Differentiable in ``y`` through the triangle surrogate; the membrane
    estimate gets no gradient.
    """
    _check_params(params.tensor, SDN_NUM_WEIGHTS + 1, y)
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


def _bfloat16_through_float32(launch, y: torch.Tensor, params: torch.Tensor, store_g: bool, store_v: bool):
    """Triton's interpreter cannot store bfloat16 (numpy has none): run the float32 kernel on the exactly widened
    currents and round what it stores to bfloat16 (round to nearest even, as the compiled kernel's stores do). The
    arithmetic is the bfloat16 kernel's own: float32."""
    spikes, factor, membrane = launch(y.float(), params, store_g, store_v)
    return tuple(None if t is None else t.to(torch.bfloat16) for t in (spikes, factor, membrane))


def _launch_sdn(y: torch.Tensor, params: torch.Tensor, store_g: bool, _store_v: bool):
    if y.dtype == torch.bfloat16 and interpreter_on():
        return _bfloat16_through_float32(_launch_sdn, y, params, store_g, False)
    rows = _rows(y)
    n, length = rows.shape
    spikes, factor, _ = _outputs(rows, store_g, False)
    if n and length:
        f64 = rows.dtype == torch.float64
        weights = params.tensor if f64 else params.values  # float64 from memory; else constant-bank arguments
        args = (rows, spikes, factor, weights, length, rows.stride(0), rows.stride(1), spikes.stride(0),
                spikes.stride(1), n.bit_length(), length.bit_length())
        if _tuned(rows.device):
            run(_sdn_forward_tuned, _sdn_forward_kernel, lambda meta: (n, triton.cdiv(length, meta["BLOCK"])), args,
                (args[-2:], store_g, f64), ({"BLOCK": SDN_BLOCK}, 4), STORE_G=store_g, F64=f64, W_IN_ARGS=not f64)
        else:
            _sdn_forward_kernel[(n, triton.cdiv(length, SDN_BLOCK))](*args, BLOCK=SDN_BLOCK, STORE_G=store_g, F64=f64,
                                                                      W_IN_ARGS=not f64, **FP_FUSION)
    return spikes.reshape(y.shape), factor.reshape(y.shape) if store_g else None, y.new_empty(0)


def _launch_sltt(y: torch.Tensor, params: torch.Tensor, store_g: bool, store_v: bool):
    if y.dtype == torch.bfloat16 and interpreter_on():
        return _bfloat16_through_float32(_launch_sltt, y, params, store_g, store_v)
    rows = _rows(y)
    n, length = rows.shape
    spikes, factor, membrane = _outputs(rows, store_g, store_v)
    if n and length:
        args = (rows, spikes, factor, membrane, params, n, length, rows.stride(0), rows.stride(1), spikes.stride(0),
                spikes.stride(1), n.bit_length(), length.bit_length())
        flags = dict(STORE_G=store_g, STORE_V=store_v, F64=rows.dtype == torch.float64)
        if _tuned(rows.device):
            run(_sltt_forward_tuned, _sltt_forward_kernel, lambda meta: (triton.cdiv(n, meta["ROWS"]),), args,
                (args[-2:], *flags.values()), (SLTT_FIXED, 1), **flags)
        else:
            _sltt_forward_kernel[(triton.cdiv(n, SLTT_ROWS),)](*args, **SLTT_FIXED, **flags, **FP_FUSION)
    return (spikes.reshape(y.shape), factor.reshape(y.shape) if store_g else None,
            membrane.reshape(y.shape) if store_v else y.new_empty(0))
