"""The S4D convolution kernel in one Triton pass, forward and backward, without the Vandermonde matrix.

``K[c, h, l] = 2 Re sum_n coeff[c, h, n] exp(dtA[h, n] l)`` for ``l < L`` (see :mod:`spiking_ssm.s4d`). The torch
reference materialises ``exp(dtA l)`` as a complex ``[H, N/2, L]`` tensor (537 MB at H = 256, N = 64, L = 8192)
and, to bound that, builds it in checkpointed chunks. Here each program owns one channel ``h`` and a block of
positions, loops over the modes and keeps ``exp(dtA l)`` in registers: memory is the output ``[C, H, L]`` only.

Backward, with ``g = dLoss/dK`` and ``v = exp(dtA l)`` (PyTorch's conjugate convention for complex gradients):
``dcoeff[c, h, n] = 2 sum_l g[c, h, l] conj(v)`` and ``ddtA[h, n] = 2 sum_c conj(coeff[c, h, n]) sum_l
g[c, h, l] l conj(v)``. Each program handles every mode of one channel over a block of positions, accumulating
``[modes, SPAN]`` tiles and reducing them once, and writes its block's partial sums; torch adds the blocks
(deterministic).

The phase ``Im(dtA) l`` is formed in the compute precision as torch does, then reduced with a two-constant
(Cody-Waite) split: in float32 to quarter turns and ``[-pi/4, pi/4]``, where branch-free polynomials give the cosine
and sine (:func:`_sincos32`); in float64 to ``[-pi, pi]`` (2 pi split as 6.28125, whose 8 significant bits make
``k * 6.28125`` exact, plus the remainder) before libdevice's cosine and sine, so no large argument reaches them.
Arithmetic is float32 (float64 for float64 inputs). Complex tensors enter and leave as real views ``[..., 2]``.
"""

from __future__ import annotations

import torch

from spiking_ssm.kernels.launch import FP_FUSION, run
from spiking_ssm.kernels.runtime import interpreter_on, triton

BLOCK = 256  # positions per program (backward, the interpreter, and the forward before autotuning)
SPAN = 16  # positions per slice of the backward's [modes, SPAN] tiles


def backward_modes(n2: int) -> int:
    """The backward's mode axis: ``n2`` padded to a power of two."""
    return 1 << max(0, n2 - 1).bit_length()

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _mode(dta_ptr, h, n, N2, pos, F64: tl.constexpr):
        """``exp(dtA[h, n] pos)`` as (real, imaginary) blocks, its phase reduced to [-pi, pi] first."""
        ar = tl.load(dta_ptr + (h * N2 + n) * 2)
        ai = tl.load(dta_ptr + (h * N2 + n) * 2 + 1)
        return _rotation(ar, ai, pos, F64)

    @triton.jit
    def _rotation(ar, ai, pos, F64: tl.constexpr):
        """``exp((ar + i ai) pos)`` as (real, imaginary), broadcasting ``ar``/``ai`` against ``pos``."""
        magnitude = tl.exp(ar * pos)
        phase = ai * pos
        if F64:
            dtype = tl.float64  # typed constants: a bare float literal would be float32
            turns = tl.floor(phase * tl.full([], 0.15915494309189535, dtype) + 0.5)
            phase = (phase - turns * tl.full([], 6.28125, dtype)) - turns * tl.full([], 0.0019353071795864769, dtype)
            cosine, sine = tl.cos(phase), tl.sin(phase)
        else:
            cosine, sine = _sincos32(phase)
        return magnitude * cosine, magnitude * sine

    @triton.jit
    def _sincos32(phase):
        """``(cos, sin)`` of a float32 ``phase`` without branches: quarter turns ``q = rint(2 phase / pi)`` removed
        with a two-constant split of pi/2 (1.5703125 has 8 significant bits, so ``q * 1.5703125`` is exact for
        ``|q| < 2^16``, phases up to ~1e5 rad), then Taylor polynomials on ``|r| <= pi/4`` (truncation below
        2e-9, under float32's rounding) and the quadrant's swap and signs. libdevice's ``sin``/``cos`` would add a
        large-argument path that the reduced phase never takes but the compiled loop still carries."""
        q = tl.floor(phase * 0.6366197723675814 + 0.5)
        r = (phase - q * 1.5703125) - q * 4.838267948966e-4
        r2 = r * r
        sin_r = r + r * r2 * (-1.6666667e-1 + r2 * (8.333333e-3 + r2 * (-1.984127e-4 + r2 * 2.7557319e-6)))
        cos_r = 1.0 + r2 * (-0.5 + r2 * (4.1666668e-2 + r2 * (-1.3888889e-3 + r2 * (2.4801587e-5
                                                                                + r2 * -2.7557319e-7))))
        quadrant = q.to(tl.int32) & 3
        swap = (quadrant & 1) != 0
        cosine = tl.where(swap, sin_r, cos_r)
        sine = tl.where(swap, cos_r, sin_r)
        cosine = tl.where((quadrant == 1) | (quadrant == 2), -cosine, cosine)
        sine = tl.where(quadrant >= 2, -sine, sine)
        return cosine, sine

    @triton.jit
    def _vandermonde_forward_kernel(coeff_ptr, dta_ptr, k_ptr, H, N2, L, L_CLASS, C: tl.constexpr,
                                    BLOCK: tl.constexpr, F64: tl.constexpr):
        h = tl.program_id(0).to(tl.int64)
        l = tl.program_id(1).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        inside = l < L
        pos = l.to(tl.float64) if F64 else l.to(tl.float32)
        acc0 = tl.zeros([BLOCK], dtype=tl.float64 if F64 else tl.float32)
        acc1 = tl.zeros([BLOCK], dtype=tl.float64 if F64 else tl.float32)
        for n in range(N2):
            vr, vi = _mode(dta_ptr, h, n, N2, pos, F64)
            c0 = coeff_ptr + (h * N2 + n) * 2
            acc0 += tl.load(c0) * vr - tl.load(c0 + 1) * vi
            if C == 2:
                c1 = coeff_ptr + ((H + h) * N2 + n) * 2
                acc1 += tl.load(c1) * vr - tl.load(c1 + 1) * vi
        tl.store(k_ptr + h * L + l, 2.0 * acc0, mask=inside)
        if C == 2:
            tl.store(k_ptr + (H + h) * L + l, 2.0 * acc1, mask=inside)

    @triton.jit
    def _vandermonde_backward_kernel(coeff_ptr, dta_ptr, g_ptr, gcoeff_ptr, gdta_ptr, H, N2, L, C: tl.constexpr,
                                     BLOCK: tl.constexpr, MODES: tl.constexpr, SPAN: tl.constexpr,
                                     F64: tl.constexpr):
        """Partial sums of one block of ``BLOCK`` positions for every mode at once: ``[MODES, SPAN]`` tiles (modes
        padded to a power of two) accumulate ``g v`` and ``g l v`` elementwise over the block's ``SPAN``-wide
        slices, and each is reduced over positions once at the end (a handful of barriers per program, not a few
        per mode)."""
        h = tl.program_id(0).to(tl.int64)
        block = tl.program_id(1).to(tl.int64)
        n = tl.arange(0, MODES)
        live = n < N2
        ar = tl.load(dta_ptr + (h * N2 + n) * 2, mask=live, other=0.0)[:, None]
        ai = tl.load(dta_ptr + (h * N2 + n) * 2 + 1, mask=live, other=0.0)[:, None]
        dtype = tl.float64 if F64 else tl.float32
        r0 = tl.zeros([MODES, SPAN], dtype=dtype)  # sum g0 Re v, sum g0 Im v, sum g0 l Re v, sum g0 l Im v
        i0, pr0, pi0 = r0, r0, r0
        r1, i1, pr1, pi1 = r0, r0, r0, r0  # the same for the second channel (C = 2)
        for start in range(0, BLOCK, SPAN):
            l = block * BLOCK + start + tl.arange(0, SPAN)
            inside = l < L
            pos = l.to(tl.float64) if F64 else l.to(tl.float32)
            vr, vi = _rotation(ar, ai, pos[None, :], F64)
            g0 = tl.load(g_ptr + h * L + l, mask=inside, other=0.0)[None, :]
            gp0 = g0 * pos[None, :]
            r0 += g0 * vr
            i0 += g0 * vi
            pr0 += gp0 * vr
            pi0 += gp0 * vi
            if C == 2:
                g1 = tl.load(g_ptr + (H + h) * L + l, mask=inside, other=0.0)[None, :]
                gp1 = g1 * pos[None, :]
                r1 += g1 * vr
                i1 += g1 * vi
                pr1 += gp1 * vr
                pi1 += gp1 * vi
        # partial sums of this block: gcoeff [blocks, C, H, N2, 2], gdta [blocks, H, N2, 2]
        c0 = coeff_ptr + (h * N2 + n) * 2
        cr, ci = tl.load(c0, mask=live, other=0.0), tl.load(c0 + 1, mask=live, other=0.0)
        out = gcoeff_ptr + ((block * C * H + h) * N2 + n) * 2
        tl.store(out, 2.0 * tl.sum(r0, axis=1), mask=live)
        tl.store(out + 1, -2.0 * tl.sum(i0, axis=1), mask=live)
        t0, t1 = tl.sum(pr0, axis=1), tl.sum(pi0, axis=1)
        dar = cr * t0 - ci * t1
        dai = cr * t1 + ci * t0
        if C == 2:
            c1 = coeff_ptr + ((H + h) * N2 + n) * 2
            cr1, ci1 = tl.load(c1, mask=live, other=0.0), tl.load(c1 + 1, mask=live, other=0.0)
            out1 = gcoeff_ptr + (((block * C + 1) * H + h) * N2 + n) * 2
            tl.store(out1, 2.0 * tl.sum(r1, axis=1), mask=live)
            tl.store(out1 + 1, -2.0 * tl.sum(i1, axis=1), mask=live)
            s0, s1 = tl.sum(pr1, axis=1), tl.sum(pi1, axis=1)
            dar += cr1 * s0 - ci1 * s1
            dai += cr1 * s1 + ci1 * s0
        out_a = gdta_ptr + ((block * H + h) * N2 + n) * 2
        tl.store(out_a, 2.0 * dar, mask=live)
        tl.store(out_a + 1, -2.0 * dai, mask=live)

    def _configs(blocks: list[int], warps: list[int]) -> list:
        return [triton.Config({"BLOCK": b}, num_warps=w) for b, w in zip(blocks, warps)]

    _forward_tuned = triton.autotune(configs=_configs([128, 256, 512, 1024], [4, 4, 4, 8]),
                                     key=["H", "N2", "L_CLASS", "C", "F64"])(_vandermonde_forward_kernel)


def _tuned(device: torch.device) -> bool:
    return device.type == "cuda" and not interpreter_on()


class _Vandermonde(torch.autograd.Function):
    """``(coeff [C, H, N/2, 2], dtA [H, N/2, 2], L) -> K [C, H, L]`` with the fused backward."""

    @staticmethod
    def forward(ctx, coeff: torch.Tensor, dta: torch.Tensor, length: int):
        C, H, N2, _ = coeff.shape
        k = coeff.new_empty(C, H, length)
        f64 = coeff.dtype == torch.float64
        if H and length:
            args = (coeff, dta, k, H, N2, length, length.bit_length())  # autotuned per power-of-two class of L
            if _tuned(coeff.device):
                run(_forward_tuned, _vandermonde_forward_kernel, lambda meta: (H, triton.cdiv(length, meta["BLOCK"])),
                    args, (H, N2, args[-1], C, f64), ({"BLOCK": BLOCK}, 4), C=C, F64=f64)
            else:
                _vandermonde_forward_kernel[(H, triton.cdiv(length, BLOCK))](*args, C=C, BLOCK=BLOCK, F64=f64,
                                                                             **FP_FUSION)
        ctx.save_for_backward(coeff, dta)
        ctx.length = length
        return k

    @staticmethod
    def backward(ctx, grad_k: torch.Tensor):
        coeff, dta = ctx.saved_tensors
        C, H, N2, _ = coeff.shape
        length = ctx.length
        blocks = triton.cdiv(length, BLOCK)
        gcoeff = coeff.new_empty(blocks, C, H, N2, 2)
        gdta = coeff.new_empty(blocks, H, N2, 2)
        if H and length:
            _vandermonde_backward_kernel[(H, blocks)](coeff, dta, grad_k.contiguous(), gcoeff, gdta, H, N2, length,
                                                      C=C, BLOCK=BLOCK, MODES=backward_modes(N2), SPAN=SPAN,
                                                      F64=coeff.dtype == torch.float64, num_warps=4, **FP_FUSION)
        return gcoeff.sum(0), gdta.sum(0), None


def fused_vandermonde_kernel(coeff: torch.Tensor, dtA: torch.Tensor, length: int) -> torch.Tensor:
    """``K[c, h, l] = 2 Re sum_n coeff[c, h, n] exp(dtA[h, n] l)`` -> real ``[C, H, L]``, C in {1, 2}.

    ``coeff`` complex ``[C, H, N/2]``, ``dtA`` complex ``[H, N/2]`` (complex64, or complex128 for a float64 result).
    Differentiable in both; same values as :func:`spiking_ssm.s4d.vandermonde_kernel` to rounding.
    """
    if coeff.dim() != 3 or coeff.shape[0] not in (1, 2) or dtA.shape != coeff.shape[1:]:
        raise ValueError(f"coeff must be [1 or 2, H, N/2] and dtA [H, N/2], got {tuple(coeff.shape)} "
                         f"and {tuple(dtA.shape)}")
    dtype = torch.complex128 if torch.complex128 in (coeff.dtype, dtA.dtype) else torch.complex64
    coeff_real = torch.view_as_real(coeff.to(dtype).resolve_conj()).contiguous()
    dta_real = torch.view_as_real(dtA.to(dtype).resolve_conj()).contiguous()
    return _Vandermonde.apply(coeff_real, dta_real, int(length))
