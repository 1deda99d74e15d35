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


def chunked_conv(u: torch.Tensor, ops: ChunkOperators, reverse: bool = False) -> torch.Tensor:
    """Convolve ``u`` ``[B, H, L]`` with the kernel ``ops`` describes: ``[B, H, L]``, causal in time, or causal in
    reversed time when ``reverse`` (the anti-causal half of a bidirectional layer).

    The length is zero-padded to a multiple of the chunk (padding after the sequence in the direction of the walk,
    so it never reaches a real output). Intermediates: the states ``[B, H, L/Q, M]`` (complex) and the scan's
    log-depth copies of them; no ``[B, H, L, M]`` tensor.
    """
    batch, width, length = u.shape
    chunk = ops.chunk
    modes = ops.decay.shape[-1]
    if reverse:
        u = u.flip(-1)
    count = -(-length // chunk)
    padded = torch.nn.functional.pad(u, (0, count * chunk - length)) if count * chunk != length else u
    blocks = padded.reshape(batch, width, count, chunk)  # [B, H, C, Q]
    y = torch.einsum("bhcj,hij->bhci", blocks, toeplitz(ops.taps))
    if count > 1:
        injected = torch.einsum("bhcj,hjm->bhcm", blocks, ops.inject)  # [B, H, C, 2M]
        w = torch.complex(injected[..., :modes], injected[..., modes:])
        decay = torch.complex(ops.decay[:, 0], ops.decay[:, 1])  # [H, M]
        s = _states(w, decay)
        real_s = torch.cat([s.real, s.imag], dim=-1)  # [B, H, C, 2M]
        y = y + torch.einsum("bhcm,hmi->bhci", real_s, ops.readout)
    y = y.reshape(batch, width, count * chunk)[..., :length]
    return y.flip(-1) if reverse else y


def default_chunk(length: int) -> int:
    """The chunk size the torch path uses for ``length`` steps: 64 (at most the length rounded up to 16)."""
    return max(16, min(64, -(-length // 16) * 16))
