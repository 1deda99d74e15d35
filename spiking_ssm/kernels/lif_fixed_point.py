"""Fused Triton kernels of the ``lif_parallel`` soma: the whole exact forward in one launch, and the BPTT scan.

Rows ``[N, L]`` (time last; the currents' rows may lie apart, as the layer's FFT slice does), one program per row,
time in chunks of ``BLOCK`` steps held in registers.

:func:`fixed_point` (forward, ``_exact_lif_kernel``), per chunk, with the exact post-reset membrane ``u`` carried
from the chunk before:

1. spikes of the chunk from the guess (the SDN's, or none) refined by membrane scans until no spike changes: the
   membrane of a spike guess is the linear recurrence ``h_t = tau (1 - s_{t-1}) h_{t-1} + y_t``, a
   ``tl.associative_scan`` of the pairs ``(a_t, b_t)`` (``(a1, b1) . (a2, b2) = (a1 a2, a2 b1 + b2)``); the
   iteration is triangular (``h_t`` depends on ``s_{<t}`` only), so it settles in at most ``BLOCK + 1`` scans, in a
   few from a good guess. Memory is read and written once: the iterations run on registers.
2. rounding: a spike whose scanned membrane is within ``margin`` of the threshold (the scan rounds differently from
   the sequential neuron; see :func:`spiking_ssm.somas.lif_scan.rounding_margin`) is settled by the sequential neuron's own
   float map ``h_t = tau u_{t-1} + y_t`` (a mul and an add, launched without FMA contraction so it rounds as the
   torch loop does), iterated on the chunk until its membrane is bitwise fixed, i.e. the sequential run's, from
   the latest spike before the first doubtful step (a hard reset makes the state exactly 0), reaching back into
   earlier chunks step by step when the chunk has none. Chunks still changing after ``max_iters`` scans take the
   same path (``finish``), or keep their last iterate.

The result equals the sequential LIF in the rows' dtype exactly (float32 or float64). A row with a NaN, an infinity
or a current that could overflow a scan is only flagged (one comparison per chunk: the kernel stays as lean as for
finite currents); :func:`fixed_point` then runs the flagged rows through :func:`spiking_ssm.somas.lif_scan.sequential`,
the ``lif`` soma's own arithmetic (``+inf``: a spike, then NaN; NaN: no spike; ``-inf``: stays ``-inf``). Per row
the kernel counts the most scans a chunk took, the float-map steps, capped chunks (and their spikes still changing)
and the sequential steps taken, and the chunks that flag the row: :func:`fixed_point` returns them as
:class:`~spiking_ssm.somas.lif_scan.FixedPointStats`.

:func:`bptt_gradient` (``_reverse_scan_kernel``): ``g_t = grad_t sg'(h_t - 1) + tau (1 - s_t) g_{t+1}``, the
surrogate factor computed from the saved membrane in the same pass as the reversed scan. Both tested against the
torch reference through ``TRITON_INTERPRET=1`` on CPU.
"""

from __future__ import annotations

import functools
import math

import torch

from spiking_ssm.somas import lif_scan
from spiking_ssm.kernels.runtime import triton

BLOCK = 512  # time steps per chunk (fewer for shorter rows)
NUM_WARPS = 1  # a warp per row: 16 steps per thread, no barriers
REVERSE_BLOCK, REVERSE_WARPS = 512, 1  # the backward scan's
SWEEP_AFTER = 4  # scans of a chunk before sequential sweeps start (i.i.d. currents rarely need more than 4)
STATS = ("most_scans", "scans", "polish", "capped", "capped_flips", "sequential", "sweeps", "extreme")  # per row

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _compose(a1, b1, a2, b2):
        return a1 * a2, a2 * b1 + b2

    @triton.jit
    def _membrane(s, b, tau, first, prev):
        """Scanned pre-reset membrane of a chunk whose spikes are ``s``; ``b`` holds the currents (the carry
        already folded into its first step)."""
        keep = tl.where(s != 0, 0.0, tau)
        a = tl.where(first, 0.0, tl.gather(keep, prev, 0))
        _, h = tl.associative_scan((a, b), 0, _compose)
        return h

    @triton.jit
    def _float_map(h, y, u_start, tau, first, prev):
        """One step of the sequential neuron at every t of the chunk: ``tau * u_{t-1} + y_t``."""
        u = tl.where(h >= 1.0, 0.0, h)
        u_prev = tl.where(first, u_start, tl.gather(u, prev, 0))
        return tau * u_prev + y

    @triton.jit
    def _sweep(new, s, h, y_row, start, L, tau, offs, words, BLOCK: tl.constexpr):
        """``new`` with the ``32 words`` steps after its first change from ``s`` replaced by the sequential neuron's
        spikes from there: up to that change ``new`` is exact (the guess agreed with its own consequence before it),
        and in a chain of regular firing every later spike moves, one per scan. Only a guess: the next scan judges
        it. The steps are scalar; each 32 of them are packed into one word and merged into ``new`` at once."""
        f = tl.min(tl.where(new != s, offs, BLOCK), 0)
        h_f = tl.sum(tl.where(offs == f, h, 0.0), 0)
        u = tl.where(h_f >= 1.0, 0.0, h_f)
        for word in range(0, words):  # a runtime count: the 32 steps unroll, the words do not
            low = f + 1 + 32 * word
            bits = tl.zeros([], dtype=tl.int32)
            for j in range(0, 32):
                at = low + j
                y_at = tl.load(y_row + start + at, mask=(at < BLOCK) & (start + at < L), other=0.0).to(h.dtype)
                h_at = tau * u + y_at
                spike = h_at >= 1.0
                bits = bits | (spike.to(tl.int32) << j)
                u = tl.where(spike, 0.0, h_at)
            shift = tl.minimum(tl.maximum(offs - low, 0), 31)
            new = tl.where((offs >= low) & (offs < low + 32), (bits >> shift) & 1, new)
        return new

    @triton.jit
    def _exact_lif_kernel(y_ptr, guess_ptr, h_ptr, s_ptr, stats_ptr, L, y_stride, tau_ptr, max_scans, extra_margin,
                          sweep_words, BLOCK: tl.constexpr, LEVELS: tl.constexpr, EPS: tl.constexpr,
                          F64: tl.constexpr, HAS_GUESS: tl.constexpr, FINISH: tl.constexpr,
                          SWEEP_AFTER: tl.constexpr, MAXV: tl.constexpr):
        dt: tl.constexpr = tl.float64 if F64 else tl.float32
        tau = tl.load(tau_ptr).to(dt)  # a tensor, not a Triton float argument (that would be float32)
        spread = 1.0 / (1.0 - tau)  # the most a carried rounding error (or |y|) adds up to over the past
        bound = tl.zeros([], dtype=dt)  # max |y| so far: the error at t depends on y up to t only
        row = tl.program_id(0).to(tl.int64)
        base = row * L  # of the outputs and the guess; y's rows are y_stride apart (a slice of the FFT output)
        y_row = y_ptr + row * y_stride
        offs = tl.arange(0, BLOCK)
        first = offs == 0
        prev = tl.maximum(offs - 1, 0)
        u_carry = tl.zeros([], dtype=dt)
        last_spike = tl.full([], -1, tl.int32)  # latest spike before the chunk: the state after it is exactly 0
        most_scans = tl.zeros([], dtype=tl.int32)
        all_scans = tl.zeros([], dtype=tl.int32)
        polish = tl.zeros([], dtype=tl.int32)
        capped = tl.zeros([], dtype=tl.int32)
        capped_flips = tl.zeros([], dtype=tl.int32)
        sequential = tl.zeros([], dtype=tl.int32)
        sweeps = tl.zeros([], dtype=tl.int32)
        extreme = tl.zeros([], dtype=tl.int32)
        for start in range(0, L, BLOCK):
            t = start + offs
            inside = t < L
            y = tl.load(y_row + t, mask=inside, other=0.0).to(dt)
            top = tl.max(tl.where(y == y, tl.abs(y), float("inf")), 0)  # a NaN counts as infinite
            bound = tl.maximum(bound, top)
            # a NaN, an infinity or a current that could overflow a scan: the row is flagged, and fixed_point runs
            # it sequentially (these chunks, and those after them, compute nothing meaningful here)
            extreme += (top * spread > 0.25 * MAXV).to(tl.int32)
            b = tl.where(first, tau * u_carry + y, y)
            # 1. the fixed point of the spikes (the first scan is the common case: the guess was right); its
            # coefficients come from the guess read one step back (no shuffle), the later scans' from registers.
            # Spikes are int32 0/1 in registers (bool vectors would be bit-packed at a cost per element); past the
            # row's end y = 0 and the membrane stays below threshold, so no mask is needed there.
            if HAS_GUESS:
                s = tl.load(guess_ptr + base + t, mask=inside, other=0).to(tl.int32)
                before = tl.load(guess_ptr + base + t - 1, mask=inside & (offs > 0), other=1)
                a = tl.where(before != 0, 0.0, tau)
            else:
                s = tl.zeros([BLOCK], dtype=tl.int32)
                a = tl.where(first, 0.0, tau)
            _, h = tl.associative_scan((a, b), 0, _compose)
            new = (h >= 1.0).to(tl.int32)
            flips = tl.sum(new ^ s, 0)
            scans = tl.full([], 1, tl.int32)
            while (flips > 0) & (scans < max_scans):
                if (scans >= SWEEP_AFTER) & (sweep_words > 0):  # a chain (regular firing): walk it sequentially
                    new = _sweep(new, s, h, y_row, start, L, tau, offs, sweep_words, BLOCK)
                    sweeps += 1
                s = new
                h = _membrane(s, b, tau, first, prev)
                new = (h >= 1.0).to(tl.int32)
                flips = tl.sum(new ^ s, 0)
                scans += 1
            unsettled = new ^ s
            s = new
            most_scans = tl.maximum(most_scans, scans)
            all_scans += scans
            if flips > 0:
                capped += 1
                capped_flips += flips
            # 2. rounding: the doubtful steps (and a capped chunk's) from the sequential neuron's float map
            margin = 2.0 * EPS * (4.0 * LEVELS * bound * spread + bound * spread) * spread + extra_margin
            doubtful = (inside & (tl.abs(h - 1.0) < margin)).to(tl.int32)
            if FINISH:
                doubtful = doubtful | unsettled
            if tl.max(doubtful, 0) > 0:
                q = tl.min(tl.where(doubtful != 0, offs, BLOCK), 0)
                reset = tl.max(tl.where((s != 0) & (offs < q), offs, -1), 0)  # its state is exactly 0 after it
                u_start = u_carry
                if reset < 0:  # no spike in the chunk before q: replay the steps since the latest one
                    u_start = tl.zeros([], dtype=dt)
                    for step in range(last_spike + 1, start):
                        h_step = tau * u_start + tl.load(y_row + step).to(dt)
                        u_start = tl.where(h_step >= 1.0, 0.0, h_step)
                    sequential += start - last_spike - 1
                new_h = _float_map(h, y, u_start, tau, first, prev)
                steps = tl.full([], 1, tl.int32)
                while (tl.sum((new_h != h).to(tl.int32), 0) > 0) & (steps <= BLOCK):
                    h = new_h
                    new_h = _float_map(h, y, u_start, tau, first, prev)
                    steps += 1
                h = new_h
                s = (h >= 1.0).to(tl.int32)
                polish += steps
            tl.store(h_ptr + base + t, h.to(h_ptr.dtype.element_ty), mask=inside)
            tl.store(s_ptr + base + t, s.to(tl.uint8), mask=inside)
            last_spike = tl.maximum(last_spike, tl.max(tl.where(s != 0, t, -1), 0))
            last = tl.minimum(L - start, BLOCK) - 1
            u_carry = tl.sum(tl.where(offs == last, tl.where(s != 0, 0.0, h), 0.0), 0)
        out = stats_ptr + row * 8
        tl.store(out, most_scans)
        tl.store(out + 1, all_scans)
        tl.store(out + 2, polish)
        tl.store(out + 3, capped)
        tl.store(out + 4, capped_flips)
        tl.store(out + 5, sequential)
        tl.store(out + 6, sweeps)
        tl.store(out + 7, extreme)

    @triton.jit
    def _reverse_scan_kernel(grad_ptr, h_ptr, s_ptr, g_ptr, L, tau_ptr, alpha_ptr, BLOCK: tl.constexpr,
                             F64: tl.constexpr):
        dt: tl.constexpr = tl.float64 if F64 else tl.float32
        tau = tl.load(tau_ptr).to(dt)
        alpha = tl.load(alpha_ptr).to(dt)
        row = tl.program_id(0).to(tl.int64)
        base = row * L
        offsets = tl.arange(0, BLOCK)
        carry = tl.zeros([], dtype=dt)
        chunks = tl.cdiv(L, BLOCK)
        for k in range(0, chunks):
            start = (chunks - 1 - k) * BLOCK
            t = start + offsets
            inside = t < L
            grad = tl.load(grad_ptr + base + t, mask=inside, other=0.0).to(dt)
            z = tl.abs(tl.load(h_ptr + base + t, mask=inside, other=0.0).to(dt) - 1.0)
            b = grad * tl.where(z > 1.0 / alpha, 0.0, alpha - alpha * alpha * z)  # PiecewiseQuadratic'
            spiked = tl.load(s_ptr + base + t, mask=inside, other=1)
            a = tl.where(spiked != 0, 0.0, tau)  # multiplies g_{t+1}
            a_cum, b_cum = tl.associative_scan((a, b), 0, _compose, reverse=True)
            g = b_cum + a_cum * carry
            tl.store(g_ptr + base + t, g.to(g_ptr.dtype.element_ty), mask=inside)
            carry = tl.sum(tl.where(t == start, g, 0.0), 0)


def unsupported() -> str | None:
    """Why the fused kernels cannot run at all (no Triton), or None."""
    return None if triton is not None else "Triton is not installed"


@functools.lru_cache(maxsize=64)
def _scalar(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[value]`` on ``device``, built once (a copy to the GPU per call would wait for its queue)."""
    return torch.tensor([value], dtype=dtype, device=device)


def block_for(length: int) -> int:
    """Chunk length for rows of ``length``: ``BLOCK``, or the power of two (at least 16) that holds a shorter row."""
    return min(BLOCK, max(16, 1 << max(length - 1, 0).bit_length()))


def constants(length: int, dtype: torch.dtype, has_guess: bool, finish: bool = True, block: int | None = None) -> dict:
    """The forward kernel's compile-time arguments for rows of ``length`` in ``dtype`` (chunks of ``block`` steps,
    a power of two >= 16; default :func:`block_for`)."""
    block = block_for(length) if block is None else block
    if block < 16 or block & (block - 1):
        raise ValueError(f"chunk length {block} must be a power of two >= 16")
    return dict(BLOCK=block, LEVELS=int(math.log2(block)) + 1, EPS=torch.finfo(dtype).eps,
                F64=dtype == torch.float64, HAS_GUESS=bool(has_guess), FINISH=bool(finish), SWEEP_AFTER=SWEEP_AFTER,
                MAXV=torch.finfo(dtype).max)


def fixed_point(y: torch.Tensor, guess: torch.Tensor | None, tau: float, max_iters: int, finish: bool = True,
                sweep: int = 0, extra_margin: float = 0.0, block: int | None = None):
    """Exact spikes (bool) and pre-reset membrane of rows ``y [N, L]`` (float32/float64) in one launch; ``guess``
    ``[N, L]`` bool or None (no spikes). ``max_iters``: scans per chunk before it is finished by the float map
    (``finish``) or left as it is. ``sweep``: from the ``SWEEP_AFTER``-th scan of a chunk on, the guess for the
    next scan takes ``sweep`` sequential steps (rounded up to a multiple of 32) after the first corrected spike
    (0: none). ``extra_margin`` widens the
    doubtful band around the threshold (tests use it to send many steps through the float map; any value gives
    the same spikes); ``block`` sets the chunk length (default :func:`block_for`; tests use short chunks to cross
    many chunk boundaries cheaply). Returns ``(spikes, h, stats)``. The doubtful band is
    :func:`spiking_ssm.somas.lif_scan.rounding_margin` with the chunk's carry (which passes its rounding on, decayed by
    ``tau`` per step) and the peak ``|h| <= max|y| / (1 - tau)``, ``max|y|`` taken over the steps so far."""
    y = y if y.stride(-1) == 1 else y.contiguous()  # rows may be apart: the layer's currents are an FFT slice
    n, length = y.shape
    h = torch.empty(n, length, dtype=y.dtype, device=y.device)
    spikes = torch.zeros(n, length, dtype=torch.bool, device=y.device)
    per_row = torch.zeros(n, len(STATS), dtype=torch.int32, device=y.device)
    if n and length:
        has_guess = guess is not None
        guess_bytes = guess.contiguous().view(torch.uint8) if has_guess else spikes.view(torch.uint8)
        tau_t = _scalar(tau, y.dtype, y.device)
        _exact_lif_kernel[(n,)](y, guess_bytes, h, spikes.view(torch.uint8), per_row, length, y.stride(0), tau_t,
                                int(max_iters), float(extra_margin), -(-int(sweep) // 32),
                                **constants(length, y.dtype, has_guess, finish, block),
                                num_warps=NUM_WARPS, enable_fp_fusion=False)
    per_row = per_row.long()
    totals = [int(v) for v in per_row[:, 3:].sum(dim=0).tolist()] if n else [0] * 5  # the one host read
    extreme = 0
    if totals[4]:
        extreme, totals = _sequential_rows(y, tau, h, spikes, per_row)
    stats = _stats(per_row, totals, length, finish, block or block_for(length))
    if extreme:
        stats.extreme = extreme
        stats.notes.append(f"{extreme} rows with non-finite or huge currents run sequentially")
    return spikes, h, stats


def _sequential_rows(y, tau: float, h, spikes, per_row) -> tuple[int, list[int]]:
    """Rows the kernel flagged (a NaN, an infinity or a current that could overflow a scan, counted in
    ``per_row[:, 7]``) run by :func:`spiking_ssm.somas.lif_scan.sequential`, the ``lif`` soma's own arithmetic, into ``h``
    and ``spikes`` (in place); their capped-chunk counts (scans of non-finite values) are dropped. Returns the number
    of rows and the new totals of ``per_row[:, 3:]``."""
    rows = (per_row[:, 7] > 0).nonzero()[:, 0]
    h[rows] = lif_scan.sequential(y[rows], tau, 1.0)
    spikes[rows] = h[rows] >= 1.0
    per_row[rows, 3:5] = 0
    return int(rows.numel()), [int(v) for v in per_row[:, 3:].sum(dim=0).tolist()]


def _stats(per_row: torch.Tensor, totals: list[int], length: int, finish: bool,
           block: int) -> lif_scan.FixedPointStats:
    """The kernel's per-row counts (``per_row [N, 8]``, int64; ``totals``: the sums of its columns 3-7) as the torch
    driver's :class:`~spiking_ssm.somas.lif_scan.FixedPointStats`: ``row_scans`` = the most scans a chunk of the row took,
    ``row_polish`` = float-map steps."""
    stats = lif_scan.FixedPointStats(per_row[:, 0], per_row[:, 2], chunk_scans=per_row[:, 1])
    capped, flips, sequential, sweeps, _ = totals
    stats.sweeps = sweeps
    if capped:
        stats.capped = stats.spike_capped = capped
        stats.capped_changes = -1  # not counted: the float map settles the chunk without comparing
        stats.finished = capped if finish else 0
        stats.notes.append(f"{flips} spikes in {capped} chunks of {min(block, length)} steps still changing "
                           "in the last scan")
    if sequential:
        stats.notes.append(f"{sequential} sequential steps replayed before doubtful steps")
    return stats


def bptt_gradient(grad_spikes: torch.Tensor, h: torch.Tensor, spikes: torch.Tensor, tau: float,
                  alpha: float) -> torch.Tensor:
    """``dL/dy [N, L]`` of rows with pre-reset membrane ``h`` and ``spikes`` (bool), the reset detached: the
    surrogate factor (SpikingJelly ``PiecewiseQuadratic(alpha)``) and the reverse scan in one pass (see
    :func:`spiking_ssm.somas.lif_scan.bptt_gradient`)."""
    grad = grad_spikes.to(h.dtype).contiguous()
    out = torch.empty_like(h)
    n, length = h.shape
    if n and length:
        tau_t, alpha_t = (_scalar(v, h.dtype, h.device) for v in (tau, alpha))
        _reverse_scan_kernel[(n,)](grad, h.contiguous(), spikes.contiguous().view(torch.uint8), out, length, tau_t,
                                   alpha_t, BLOCK=REVERSE_BLOCK, F64=h.dtype == torch.float64,
                                   num_warps=REVERSE_WARPS)
    return out
