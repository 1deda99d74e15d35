"""Fused Triton scans of the ``lif_parallel`` soma: the membrane of a spike guess and the BPTT gradient.

Both are the masked linear recurrence of :func:`spiking_ssm.lif_scan.masked_scan` on rows ``[N, L]`` (time last,
contiguous), one program per row, time in chunks of ``BLOCK`` steps: inside a chunk a ``tl.associative_scan`` of
the pairs ``(a_t, b_t)`` (``h_t = a_t h_{t-1} + b_t`` composes as ``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)``),
between chunks the last value carried in a register. Exact recurrence, no truncation of lags.

- :func:`membrane_given_spikes`: ``h_t = tau (1 - s_{t-1}) h_{t-1} + y_t`` (forward, one fixed-point iteration);
- :func:`bptt_gradient`: ``g_t = grad_t factor_t + tau (1 - s_t) g_{t+1}`` (reverse).

The fixed-point driver, the sequential sweeps and the rounding-exact phase are the torch ones of
:mod:`spiking_ssm.lif_scan` on the rows that still change (:func:`fixed_point`): a scan rounds differently from the
sequential neuron anyway (and Triton may contract ``a * h + b`` into one FMA), which that phase resolves. Arithmetic
in float32 (float64 for float64 rows). Tested against the torch reference through ``TRITON_INTERPRET=1`` on CPU.
"""

from __future__ import annotations

import torch

from spiking_ssm import lif_scan
from spiking_ssm.kernels.runtime import triton

BLOCK = 256  # time steps per chunk

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _compose(a1, b1, a2, b2):
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _forward_scan_kernel(y_ptr, s_ptr, h_ptr, L, tau_ptr, BLOCK: tl.constexpr, F64: tl.constexpr):
        tau = tl.load(tau_ptr)  # a tensor, not a Triton float argument (that would be float32)
        row = tl.program_id(0).to(tl.int64)
        base = row * L
        offsets = tl.arange(0, BLOCK)
        carry = tl.zeros([1], dtype=tl.float64 if F64 else tl.float32)
        for start in range(0, L, BLOCK):
            t = start + offsets
            inside = t < L
            b = tl.load(y_ptr + base + t, mask=inside, other=0.0)
            b = b.to(tl.float64) if F64 else b.to(tl.float32)
            previous = tl.load(s_ptr + base + t - 1, mask=inside & (t > 0), other=1)  # t = 0: nothing before
            a = tl.where(previous != 0, 0.0, tau).to(b.dtype)
            a_cum, b_cum = tl.associative_scan((a, b), 0, _compose)
            h = b_cum + a_cum * tl.sum(carry, 0)
            tl.store(h_ptr + base + t, h.to(h_ptr.dtype.element_ty), mask=inside)
            carry = tl.zeros([1], dtype=b.dtype) + tl.sum(tl.where(t == tl.minimum(start + BLOCK, L) - 1, h, 0.0), 0)

    @triton.jit
    def _reverse_scan_kernel(b_ptr, s_ptr, g_ptr, L, tau_ptr, BLOCK: tl.constexpr, F64: tl.constexpr):
        tau = tl.load(tau_ptr)
        row = tl.program_id(0).to(tl.int64)
        base = row * L
        offsets = tl.arange(0, BLOCK)
        carry = tl.zeros([1], dtype=tl.float64 if F64 else tl.float32)
        chunks = tl.cdiv(L, BLOCK)
        for k in range(0, chunks):
            start = (chunks - 1 - k) * BLOCK
            t = start + offsets
            inside = t < L
            b = tl.load(b_ptr + base + t, mask=inside, other=0.0)
            b = b.to(tl.float64) if F64 else b.to(tl.float32)
            spiked = tl.load(s_ptr + base + t, mask=inside, other=1)
            a = tl.where(spiked != 0, 0.0, tau).to(b.dtype)  # multiplies g_{t+1}
            a_cum, b_cum = tl.associative_scan((a, b), 0, _compose, reverse=True)
            g = b_cum + a_cum * tl.sum(carry, 0)
            tl.store(g_ptr + base + t, g.to(g_ptr.dtype.element_ty), mask=inside)
            carry = tl.zeros([1], dtype=b.dtype) + tl.sum(tl.where(t == start, g, 0.0), 0)


def unsupported() -> str | None:
    """Why the fused kernels cannot run at all (no Triton), or None."""
    return None if triton is not None else "Triton is not installed"


def _launch(kernel, values: torch.Tensor, spikes: torch.Tensor, tau: float) -> torch.Tensor:
    values, spikes = values.contiguous(), spikes.contiguous().view(torch.uint8)
    out = torch.empty_like(values)
    n, length = values.shape
    if n and length:
        tau = torch.tensor([tau], dtype=values.dtype, device=values.device)
        kernel[(n,)](values, spikes, out, length, tau, BLOCK=BLOCK, F64=values.dtype == torch.float64)
    return out


def membrane_given_spikes(y: torch.Tensor, spikes: torch.Tensor, tau: float, levels: int | None = None) -> torch.Tensor:
    """The pre-reset membrane ``h [N, L]`` of rows ``y`` if the spikes were ``spikes`` (bool); ``levels`` is
    ignored (the kernel keeps every lag)."""
    return _launch(_forward_scan_kernel, y, spikes, tau)


def bptt_gradient(grad_spikes: torch.Tensor, factor: torch.Tensor, spikes: torch.Tensor, tau: float) -> torch.Tensor:
    """``dL/dy [N, L]`` with the reset detached (see :func:`spiking_ssm.lif_scan.bptt_gradient`)."""
    return _launch(_reverse_scan_kernel, grad_spikes * factor, spikes, tau)


def fixed_point(y: torch.Tensor, guess: torch.Tensor, tau: float, max_iters: int, finish: bool, sweep: int,
                theta=1.0):
    """:func:`spiking_ssm.lif_scan.fixed_point` with the membrane scans in Triton."""
    return lif_scan.fixed_point(y, guess, tau, theta, max_iters, finish, sweep, membrane=membrane_given_spikes)
