"""The S4D convolution chunk by chunk: an in-chunk Toeplitz product plus mode states carried between chunks.

The S4D kernel is a sum of ``M = N/2`` complex modes per channel, ``K[h, d] = 2 Re sum_n c[h, n] a[h, n]^d``
(``a = exp(dt A)``, ``c = C Bbar``). Split the time axis into chunks of ``Q`` steps. The output of chunk ``k`` at
step ``i`` (time ``t = kQ + i``) is

    y[t] = sum_{j <= i} taps[i - j] u[kQ + j]              (in-chunk: a Q x Q lower-triangular Toeplitz block)
         + Re sum_n R[n, i] s_n(k)                         (everything before the chunk, through the mode states)

with the state after the last input before the chunk ``s_n(k) = sum_{j < kQ} a_n^(kQ - 1 - j) u[j]``, carried as
``s(k + 1) = a^Q s(k) + sum_i a^(Q - 1 - i) u[kQ + i]``. Per channel the whole operation is described by four small
real tensors, :class:`ChunkOperators` (``M`` modes, real form ``[Re | Im]`` of length ``2M``):

- ``taps``    ``[H, Q]``      the kernel's first ``Q`` taps (lag ``d``), D and ``1/theta`` folded in;
- ``readout`` ``[H, 2M, Q]``  ``y_inter[i] = sum_m S[m] readout[m, i]`` with ``S = [Re s | Im s]``:
  rows ``Re R`` then ``-Im R``, ``R[n, i] = 2 c_n a_n^(i + 1 - delay)``;
- ``inject``  ``[H, Q, 2M]``  ``S' += u_chunk @ inject``: columns ``Re a^(Q-1-i)`` then ``Im a^(Q-1-i)``;
- ``decay``   ``[H, 2, M]``   ``(Re, Im)`` of ``a^Q``: ``S' = a^Q S`` as a complex product per mode.

``delay`` is 0 for the causal kernel (lag 0 is the first tap) and 1 for the anti-causal half of a bidirectional
kernel, which sees ``u[t + j]`` through ``k_bwd[j - 1]`` (``j >= 1``): run on reversed time it is a causal kernel
with taps ``0, k_bwd[0], k_bwd[1], ...``.

:func:`chunked_conv` is the torch implementation (the reference for the Triton kernels and the CPU path): plain
differentiable torch operations, so autograd gives the gradients of ``u`` and, through the operators, of D, the
threshold and every S4D parameter. The chunk states are combined by a log-depth scan (``ceil(log2(L/Q))`` steps
of ``s <- s + a^(Q 2^p) shift(s)``), which multiplies only by powers of ``|a| <= 1``. In float64 it equals the FFT
convolution to about 1e-13 (``tests/test_chunked_conv.py``).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class ChunkOperators(NamedTuple):
    """Per-channel operators of one direction of the chunked convolution (shapes in the module docstring)."""

    taps: torch.Tensor  # [H, Q]
    readout: torch.Tensor  # [H, 2M, Q]
    inject: torch.Tensor  # [H, Q, 2M]
    decay: torch.Tensor  # [H, 2, M]

    @property
    def chunk(self) -> int:
        return self.taps.shape[-1]


def chunk_operators(coeff: torch.Tensor, dtA: torch.Tensor, chunk: int, delay: int = 0,
                    skip: torch.Tensor | None = None, scale: torch.Tensor | None = None) -> ChunkOperators:
    """The :class:`ChunkOperators` of ``K[d] = 2 Re sum_n coeff[h, n] exp(dtA[h, n] (d - delay))`` (``d >= delay``,
    zero below), plus ``skip[h]`` at lag 0, everything multiplied by ``scale[h]``.

    ``coeff``, ``dtA``: complex ``[H, M]``; ``skip``, ``scale``: real ``[H]`` or ``[H, 1]`` (None: 0 and 1).
    Differentiable in all of them; the powers are ``exp(dtA p)`` for integer ``p`` (no repeated products).
    """
    if delay not in (0, 1):
        raise ValueError(f"delay must be 0 or 1, got {delay}")
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    real = dtA.real.dtype
    if scale is not None:
        coeff = coeff * scale.reshape(-1, 1).to(real)
    steps = torch.arange(chunk + 1, device=dtA.device, dtype=real)
    powers = torch.exp(dtA.unsqueeze(-1) * steps)  # [H, M, Q + 1]: a^0 .. a^Q
    lagged = torch.zeros_like(powers[..., :chunk])
    lagged[..., delay:] = powers[..., : chunk - delay]  # a^(d - delay) for d >= delay
    taps = 2.0 * (coeff.unsqueeze(-1) * lagged).real.sum(1)  # [H, Q]
    if skip is not None:
        lag0 = skip.reshape(-1).to(real) * (1.0 if scale is None else scale.reshape(-1).to(real))
        taps = torch.cat([taps[:, :1] + lag0.unsqueeze(-1), taps[:, 1:]], dim=-1)
    out = 2.0 * coeff.unsqueeze(-1) * powers[..., 1 - delay: chunk + 1 - delay]  # [H, M, Q]: 2 c a^(i + 1 - delay)
    readout = torch.cat([out.real, -out.imag], dim=1)  # [H, 2M, Q]
    into = powers[..., :chunk].flip(-1)  # a^(Q - 1 - i)
    inject = torch.cat([into.real, into.imag], dim=1).transpose(1, 2)  # [H, Q, 2M]
    top = powers[..., chunk]
    decay = torch.stack([top.real, top.imag], dim=1)  # [H, 2, M]
    return ChunkOperators(taps, readout, inject, decay)


def toeplitz(taps: torch.Tensor) -> torch.Tensor:
    """``T[h, i, j] = taps[h, i - j]`` for ``i >= j``, else 0: ``[H, Q]`` -> ``[H, Q, Q]``."""
    chunk = taps.shape[-1]
    lag = torch.arange(chunk, device=taps.device)
    lag = lag.unsqueeze(1) - lag.unsqueeze(0)  # [Q, Q]: i - j
    full = taps[:, lag.clamp(min=0)]
    return full * (lag >= 0).to(taps.dtype)


def _states(w: torch.Tensor, decay: torch.Tensor) -> torch.Tensor:
    """Exclusive scan over chunks: ``s(k) = sum_{k' < k} decay^(k - 1 - k') w(k')`` for complex ``w`` [B, H, C, M]
    and ``decay`` [H, M]; ``s(0) = 0``. Log-depth (Hillis-Steele): each step multiplies by a power of ``decay``."""
    count = w.shape[2]
    scan = w
    power = decay.unsqueeze(1)  # [H, 1, M]: decay^(2^p)
    shift = 1
    while shift < count:
        moved = torch.cat([torch.zeros_like(scan[:, :, :shift]), scan[:, :, :-shift]], dim=2)
        scan = scan + power * moved
        power = power * power
        shift *= 2
    return torch.cat([torch.zeros_like(scan[:, :, :1]), scan[:, :, :-1]], dim=2)


def _blocks(u: torch.Tensor, chunk: int) -> torch.Tensor:
    """``[B, H, L]`` -> ``[B, H, C, Q]``, zero-padded after the sequence."""
    batch, width, length = u.shape
    count = -(-length // chunk)
    if count * chunk != length:
        u = torch.nn.functional.pad(u, (0, count * chunk - length))
    return u.reshape(batch, width, count, chunk)


def _complex(real_form: torch.Tensor, modes: int) -> torch.Tensor:
    return torch.complex(real_form[..., :modes], real_form[..., modes:])


def _real(values: torch.Tensor) -> torch.Tensor:
    return torch.cat([values.real, values.imag], dim=-1)


def _chunk_states(blocks: torch.Tensor, ops: ChunkOperators) -> torch.Tensor:
    """Real-form chunk-start states ``[B, H, C, 2M]`` of the walk over ``blocks`` ``[B, H, C, Q]``."""
    modes = ops.decay.shape[-1]
    w = _complex(torch.einsum("bhcj,hjm->bhcm", blocks, ops.inject), modes)
    return _real(_states(w, torch.complex(ops.decay[:, 0], ops.decay[:, 1])))


def _forward(u: torch.Tensor, ops: ChunkOperators) -> torch.Tensor:
    """The causal walk on ``u`` ``[B, H, L]`` (plain torch operations: differentiable by autograd)."""
    length = u.shape[-1]
    blocks = _blocks(u, ops.chunk)
    y = torch.einsum("bhcj,hij->bhci", blocks, toeplitz(ops.taps))
    if blocks.shape[2] > 1:
        y = y + torch.einsum("bhcm,hmi->bhci", _chunk_states(blocks, ops), ops.readout)
    return y.reshape(*u.shape[:2], -1)[..., :length]


def chunked_conv(u: torch.Tensor, ops: ChunkOperators, reverse: bool = False) -> torch.Tensor:
    """Convolve ``u`` ``[B, H, L]`` with the kernel ``ops`` describes: ``[B, H, L]``, causal in time, or causal in
    reversed time when ``reverse`` (the anti-causal half of a bidirectional layer).

    The length is zero-padded to a multiple of the chunk (padding after the sequence in the direction of the walk,
    so it never reaches a real output). Under autograd only ``u`` and the operators are saved
    (:class:`_ChunkedConv`): the backward recomputes the chunk states and walks the adjoint the other way.
    """
    if torch.is_grad_enabled() and (u.requires_grad or any(t.requires_grad for t in ops)):
        return _ChunkedConv.apply(u, *ops, bool(reverse))
    with torch.no_grad():
        if reverse:
            return _forward(u.flip(-1), ops).flip(-1)
        return _forward(u, ops)


def chunked_conv_autograd(u: torch.Tensor, ops: ChunkOperators, reverse: bool = False) -> torch.Tensor:
    """:func:`chunked_conv` differentiated by autograd through every intermediate (the reference its written-out
    backward is tested against; saves the states and the scan's intermediates)."""
    if reverse:
        return _forward(u.flip(-1), ops).flip(-1)
    return _forward(u, ops)


class _ChunkedConv(torch.autograd.Function):
    """:func:`chunked_conv` saving only ``u`` and the operators. With ``G`` the chunk of ``dLoss/dy``, ``U`` of u,
    ``S(k)`` the state entering chunk k and ``A(k + 1)`` the adjoint state leaving it (complex form
    ``A(k) = G_k readout^T + conj(a^Q) A(k + 1)``, zero after the last chunk, a reverse scan):

        du_k      = G_k T + A(k + 1) inject^T         dtaps[d] = sum over i - j = d of G^T U
        dreadout  = sum_k S(k)^T G_k                   dinject  = sum_k U_k^T A(k + 1)
        ddecay    = sum_k conj(S(k)) A(k + 1)         (as (Re, Im): Ar Sr + Ai Si, Ai Sr - Ar Si)
    """

    @staticmethod
    def forward(ctx, u, taps, readout, inject, decay, reverse):
        ops = ChunkOperators(taps, readout, inject, decay)
        ctx.save_for_backward(u, taps, readout, inject, decay)
        ctx.reverse = reverse
        return chunked_conv_autograd(u, ops, reverse)

    @staticmethod
    def backward(ctx, grad_y):
        u, taps, readout, inject, decay = ctx.saved_tensors
        ops = ChunkOperators(taps, readout, inject, decay)
        length, chunk, modes = u.shape[-1], taps.shape[-1], decay.shape[-1]
        if ctx.reverse:
            u, grad_y = u.flip(-1), grad_y.flip(-1)
        blocks, grads = _blocks(u, chunk), _blocks(grad_y.to(u.dtype), chunk)
        grad_u = torch.einsum("bhci,hij->bhcj", grads, toeplitz(taps))
        product = torch.einsum("bhci,bhcj->hij", grads, blocks)  # G^T U summed over rows and chunks
        lag = torch.arange(chunk, device=u.device)
        lag = lag.unsqueeze(1) - lag.unsqueeze(0)
        grad_taps = torch.zeros_like(taps).index_add_(1, lag.clamp(min=0).flatten(),
                                                      (product * (lag >= 0)).flatten(1))
        grad_readout = torch.zeros_like(readout)
        grad_inject = torch.zeros_like(inject)
        grad_decay = torch.zeros_like(decay)
        if blocks.shape[2] > 1:
            states = _chunk_states(blocks, ops)  # [B, H, C, 2M]
            emitted = _complex(torch.einsum("bhci,hmi->bhcm", grads, readout), modes)
            conj = torch.complex(decay[:, 0], -decay[:, 1])
            after = _real(_states(emitted.flip(2), conj).flip(2))  # A(k + 1) at index k
            grad_u = grad_u + torch.einsum("bhcm,hjm->bhcj", after, inject)
            grad_readout = torch.einsum("bhcm,bhci->hmi", states, grads)
            grad_inject = torch.einsum("bhcj,bhcm->hjm", blocks, after)
            s = _complex(states, modes)
            a = _complex(after, modes)
            dd = (s.conj() * a).sum((0, 2))  # [H, M]
            grad_decay = torch.stack([dd.real, dd.imag], dim=1)
        grad_u = grad_u.reshape(*u.shape[:2], -1)[..., :length]
        if ctx.reverse:
            grad_u = grad_u.flip(-1)
        return grad_u, grad_taps, grad_readout, grad_inject, grad_decay, None


class ChunkedCurrents(NamedTuple):
    """A soma's input given as what makes its currents, for a soma that computes them itself (fused with the chunked
    convolution, ``accepts_chunked_currents``): ``u`` ``[B, H, L]``, the operators ``[causal]`` or ``[causal,
    anti-causal]`` (D and the threshold folded in) and the kernel's float32 ``precision``. ``shape`` is the currents'
    time-major ``[L, B, H]``, as hooks on the soma read it."""

    u: torch.Tensor
    ops: list
    precision: str = "ieee"

    @property
    def shape(self) -> torch.Size:
        batch, width, length = self.u.shape
        return torch.Size([length, batch, width])
