"""Exact hard-reset LIF spikes and their BPTT gradient, parallel over time (torch reference; pure functions).

The neuron (SpikingSSM's soma, threshold ``theta``, reset to 0, ``u_{-1} = 0``), on rows ``[N, L]`` (time last)::

    h_t = tau * u_{t-1} + y_t        s_t = [h_t >= theta]        u_t = h_t * (1 - s_t)

Given a guess of all spikes ``s``, the membrane is a *linear* recurrence ``h_t = a_t h_{t-1} + y_t`` with
``a_t = tau (1 - s_{t-1})``: one associative scan (:func:`masked_scan`) gives every ``h_t`` at once, and
``s' = [h >= theta]`` is the next guess. The exact spike train is the unique fixed point, reached in at most L
iterations (the first wrong position of a guess has an exact membrane, so the next iterate fixes it) and in a
handful from a good guess (the SDN's spikes, or none). :func:`fixed_point` runs this until no spike changes. Rows
whose membrane comes within rounding of the threshold then go through :func:`polish`, which iterates the *float*
map of the sequential neuron (same operations, same rounding) until their membrane stops changing bit for bit: the
spikes equal a sequential run's in the same dtype exactly, not up to rounding. Regular firing (smooth currents)
makes chains: each correction moves every later spike, one per scan; with ``sweep``, each changed row then runs that
many sequential steps after its first corrected spike and, where those end in evenly spaced spikes, the guess
continues them (:func:`_sweep`). Rows with a NaN, an infinity or a current big enough to overflow a scan run
sequentially (:func:`extreme_rows`), as the ``lif`` soma computes them.

Backward with the reset detached (SpikingJelly ``detach_reset=True``): ``dL/dy_t = g_t`` with the reverse linear
recurrence ``g_t = grad_s_t * sg'(h_t - theta) + tau (1 - s_t) g_{t+1}``, another scan (:func:`bptt_gradient`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch


SWEEP_AFTER = 2  # scans before sequential sweeps start


def scan_levels(tau: float, length: int, dtype: torch.dtype, bound: float = 1.0) -> int:
    """Doubling steps a scan needs on rows of ``length``: ``ceil(log2 L)``, fewer when ``tau^d * bound / (1 - tau)``
    (the most all lags ``>= d`` can add, for inputs bounded by ``bound``) is below the dtype's rounding."""
    full = max(0, math.ceil(math.log2(max(length, 1))))
    if tau == 0.0:
        return 0
    tolerance = torch.finfo(dtype).eps * 1e-3 * (1.0 - tau) / max(bound, 1e-30)
    if not 0.0 < tolerance:  # an enormous bound: every level
        return full
    needed = math.ceil(math.log2(max(math.log(tolerance) / math.log(tau), 1.0))) if tolerance < 1 else 0
    return min(full, max(needed, 0))


def masked_scan(b: torch.Tensor, keep: torch.Tensor, tau: float, levels: int | None = None) -> torch.Tensor:
    """``h_t = tau * keep_t * h_{t-1} + b_t`` along the last axis of ``b [N, L]`` (``h_{-1} = 0``), in parallel.

    ``keep [N, L]`` bool (``keep_0`` is unused). Hillis-Steele doubling: after the step of distance ``d`` every
    ``h_t`` holds the lags ``< 2d``; ``levels`` doubling steps (default ``ceil(log2 L)``: exact up to rounding).
    The coefficient over a window is ``tau^d`` times "no reset inside", so only a bool mask is carried.
    """
    h = b.clone()
    keep = keep.clone()
    length = h.shape[-1]
    levels = math.ceil(math.log2(max(length, 1))) if levels is None else levels
    distance, factor = 1, tau
    for _ in range(levels):
        if distance >= length:
            break
        h[:, distance:] = h[:, distance:] + torch.where(keep[:, distance:], factor * h[:, :-distance], 0.0)
        keep[:, distance:] = keep[:, distance:] & keep[:, :-distance]
        distance, factor = 2 * distance, factor * factor
    return h


def membrane_given_spikes(y: torch.Tensor, spikes: torch.Tensor, tau: float, levels: int | None = None) -> torch.Tensor:
    """The pre-reset membrane ``h [N, L]`` of rows ``y [N, L]`` if the spikes were ``spikes [N, L]`` (bool)."""
    keep = torch.ones_like(spikes)
    keep[:, 1:] = ~spikes[:, :-1]
    return masked_scan(y, keep, tau, levels)


def float_map(h: torch.Tensor, y: torch.Tensor, tau: float, theta) -> torch.Tensor:
    """One step of the sequential neuron's float arithmetic at every t at once: ``tau * u_{t-1} + y_t`` with
    ``u = h * (1 - [h >= theta])`` from the membrane ``h [N, L]`` (``u_{-1} = 0``). Its unique fixed point is the
    sequential run's membrane, bit for bit (by induction over t)."""
    u = torch.zeros_like(h)
    u[:, 1:] = torch.where(h[:, :-1] >= theta, 0.0, h[:, :-1])
    return tau * u + y


def reset(h: torch.Tensor, theta) -> torch.Tensor:
    """The post-reset membrane ``u = h * (1 - [h >= theta])``: the paper's reset (``+inf`` gives ``inf * 0 = NaN``)."""
    return h * (h < theta).to(h.dtype)


def sequential(y: torch.Tensor, tau: float, theta, h: torch.Tensor | None = None, start: int = 0) -> torch.Tensor:
    """The sequential neuron's membrane ``h [N, L]`` (a Python loop over t: the slow reference and the finisher),
    the ``lif`` soma's arithmetic: ``tau * u`` then ``+ y``, reset ``h * (1 - s)``, so non-finite currents behave
    as there (``+inf``: a spike, then NaN; NaN: NaN; ``-inf``: ``-inf`` until ``+inf`` or NaN).

    With ``h`` and ``start``, ``h[:, :start]`` is taken as already exact and the loop runs from ``start`` on.
    """
    theta = theta[:, 0] if torch.is_tensor(theta) and theta.dim() == 2 else theta
    out = torch.empty_like(y) if h is None else h.clone()
    u = torch.zeros_like(y[:, 0]) if start == 0 else reset(out[:, start - 1], theta)
    for t in range(start, y.shape[-1]):
        out[:, t] = tau * u + y[:, t]
        u = reset(out[:, t], theta)
    return out


@dataclass
class FixedPointStats:
    """How one call converged. ``row_scans[i]``: membrane scans row i took (its last one is the check that no
    spike changed); ``row_polish[i]``: rounding-exact float-map steps after that; ``capped``: rows still changing at
    ``max_iters``; ``finished``: rows then run sequentially, which corrected ``capped_changes`` spikes.

    The fused kernel (:mod:`spiking_ssm.kernels.lif_fixed_point`) iterates per chunk of a row: there ``row_scans[i]``
    is the most scans a chunk of row i took, ``chunk_scans[i]`` the scans of all its chunks together, ``capped`` and
    ``finished`` count chunks, and ``row_polish`` float-map steps summed over the row."""

    row_scans: torch.Tensor
    row_polish: torch.Tensor
    capped: int = 0
    spike_capped: int = 0  # of which rows whose spikes (not only membrane bits) still changed
    capped_changes: int = 0
    finished: int = 0
    guess_errors: int = -1  # spikes the guess got wrong (filled in when measured)
    notes: list[str] = field(default_factory=list)
    chunk_scans: torch.Tensor | None = None  # fused kernel only: scans over all chunks of each row
    sweeps: int = 0  # fused kernel only: sequential sweeps taken (over all chunks)
    extreme: int = 0  # rows with non-finite or huge currents, run sequentially (fused kernel: flagged by it)
    extended: int = 0  # torch only: sweeps whose regular firing was continued to the row's end

    @property
    def scans(self) -> int:
        return int(self.row_scans.max().item()) if self.row_scans.numel() else 0


def _threshold_rows(theta, rows: torch.Tensor):
    return theta[rows] if torch.is_tensor(theta) and theta.dim() == 2 and theta.shape[0] > 1 else theta


def extreme_rows(y: torch.Tensor, tau: float) -> torch.Tensor:
    """``[N]`` bool: rows of ``y [N, L]`` with a NaN, an infinity, or a current so large (above ``max (1 - tau) / 4``,
    ``max`` the dtype's largest number) that a scan could overflow; :func:`fixed_point` runs them sequentially."""
    limit = torch.finfo(y.dtype).max * (1.0 - tau) / 4.0
    return ~(y.abs() <= limit).all(dim=1)  # NaN compares false


def fixed_point(y: torch.Tensor, guess: torch.Tensor, tau: float, theta=1.0, max_iters: int = 64,
                finish: bool = True, sweep: int = 0, membrane=None) -> tuple[torch.Tensor, torch.Tensor, FixedPointStats]:
    """Exact LIF spikes and pre-reset membrane of rows ``y [N, L]`` from a spike guess ``[N, L]`` (bool).

    ``theta``: a float, or ``[N, 1]`` per row. Phase 1 scans the membrane of the current guess and takes its spikes,
    only on rows whose spikes changed, until none changes; phase 2 (:func:`polish`) makes the membrane of the rows
    with a value within :func:`rounding_margin` of ``theta`` the sequential run's bit for bit (elsewhere rounding
    cannot flip a spike). Each phase stops after ``max_iters`` steps; rows still changing are then run sequentially
    when ``finish`` (exact), or left as they are. Rows with non-finite or huge currents (:func:`extreme_rows`) run
    sequentially from the start, apart from the others (which never see them). Returns ``(spikes bool [N, L],
    h [N, L], stats)``.
    """
    extreme = extreme_rows(y, tau)
    if extreme.any():
        return _apart(y, guess, tau, theta, extreme, max_iters, finish, sweep, membrane)
    n, length = y.shape
    bound = float(y.abs().max()) if y.numel() else 0.0
    levels = scan_levels(tau, length, y.dtype, bound)
    spikes = guess.clone()
    h = torch.empty_like(y)
    row_scans = torch.zeros(n, dtype=torch.long, device=y.device)
    active = torch.arange(n, device=y.device)
    stats = FixedPointStats(row_scans, torch.zeros_like(row_scans))
    for iteration in range(max_iters):
        if active.numel() == 0:
            break
        part_h = (membrane or membrane_given_spikes)(y[active], spikes[active], tau, levels)
        part_s = part_h >= _threshold_rows(theta, active)
        flips = part_s != spikes[active]
        changed = flips.any(dim=1)
        if sweep and iteration >= SWEEP_AFTER and changed.any():
            stats.extended += _sweep(y, part_h, part_s, flips, changed, active, tau, _threshold_rows(theta, active),
                                     sweep)
        h[active], spikes[active] = part_h, part_s
        row_scans[active] += 1
        active = active[changed]
    if active.numel():
        stats.spike_capped = int(active.numel())
        _on_cap(stats, f"{int(flips.sum())} spikes in {active.numel()} rows still changing in the last scan",
                active, y, spikes, h, tau, theta, finish)
    peak = float(h.abs().max()) if h.numel() else 0.0
    near = ((h - theta).abs() < rounding_margin(tau, levels, y.dtype, bound, peak)).any(dim=1)
    polish(y, h, spikes, tau, theta, max_iters, stats, near.nonzero()[:, 0], finish)
    return spikes, h, stats


def _apart(y, guess, tau, theta, extreme, max_iters, finish, sweep, membrane):
    """:func:`fixed_point` on the ordinary rows and :func:`sequential` on the ``extreme`` ones ([N] bool)."""
    rows, odd = (~extreme).nonzero()[:, 0], extreme.nonzero()[:, 0]
    spikes = torch.zeros(y.shape, dtype=torch.bool, device=y.device)
    h = torch.empty_like(y)
    part_s, part_h, part = fixed_point(y[rows], guess[rows], tau, _threshold_rows(theta, rows), max_iters, finish,
                                       sweep, membrane)
    spikes[rows], h[rows] = part_s, part_h
    odd_theta = _threshold_rows(theta, odd)
    h[odd] = sequential(y[odd], tau, odd_theta)
    spikes[odd] = h[odd] >= odd_theta
    stats = FixedPointStats(torch.zeros(y.shape[0], dtype=torch.long, device=y.device),
                            torch.zeros(y.shape[0], dtype=torch.long, device=y.device))
    stats.row_scans[rows], stats.row_polish[rows] = part.row_scans, part.row_polish
    for name in ("capped", "spike_capped", "capped_changes", "finished", "extended"):
        setattr(stats, name, getattr(part, name))
    stats.extreme = int(odd.numel())
    stats.notes = part.notes + [f"{odd.numel()} rows with non-finite or huge currents run sequentially"]
    return spikes, h, stats


def _sweep(y, part_h, part_s, flips, changed, active, tau, theta, steps: int) -> int:
    """``steps`` sequential LIF steps after the first flipped spike of each changed row, in ``part_h``/``part_s``
    (everything up to that spike is exact: before it the guess agreed with its own consequence); where the exact
    part then ends in regular firing, the guess continues it to the row's end (:func:`_continue_regular`). Returns
    the number of rows continued."""
    rows = changed.nonzero()[:, 0]
    length = y.shape[1]
    first = flips[rows].to(torch.int8).argmax(dim=1)
    theta = theta[rows, 0] if torch.is_tensor(theta) and theta.dim() == 2 and theta.shape[0] > 1 else theta
    y_rows, h, s = y[active[rows]], part_h[rows], part_s[rows]
    index = torch.arange(rows.numel(), device=y.device)
    u = torch.where(s[index, first], 0.0, h[index, first])
    for j in range(1, steps + 1):
        t = first + j
        inside = t < length
        if not inside.any():
            break
        t = t.clamp(max=length - 1)
        h_t = torch.where(inside, tau * u + y_rows[index, t], h[index, t])
        s_t = h_t >= theta
        h[index, t], s[index, t] = h_t, s_t
        u = torch.where(s_t, 0.0, h_t)
    continued = _continue_regular(s, (first + steps).clamp(max=length - 1))
    part_h[rows], part_s[rows] = h, s
    return continued


def _continue_regular(s: torch.Tensor, end: torch.Tensor, spikes: int = 4) -> int:
    """Where the last ``spikes`` spikes up to ``end [R]`` of guess rows ``s [R, L]`` (bool, exact up to ``end``) are
    evenly spaced, ``P`` apart, and none is due before ``end``, continue them after ``end`` with a spike every ``P``
    steps (in place), up to the first one that the guess there has too: from a common spike on, two spike trains of
    the same currents agree (the hard reset leaves exactly 0), so the guess is kept from there. Returns how many
    rows. A constant current fires exactly periodically (each reset restarts the same float sequence) and a chain
    of the wrong phase never meets it, so its spikes come out right at once; a slowly varying one stays right for a
    stretch. Only a guess: the next scan checks it (without this a chain of regular firing advances ``sweep`` steps
    per scan)."""
    length = s.shape[1]
    steps = torch.arange(length, device=s.device)
    known = s & (steps <= end[:, None])
    count, rank = known.sum(dim=1), known.cumsum(dim=1)
    where = [torch.where(count > k, (known & (rank == (count - k)[:, None])).to(torch.int8).argmax(dim=1), -1)
             for k in range(spikes)]  # where[k]: the (k+1)-th latest spike up to end
    period = where[0] - where[1]
    regular = (count >= spikes) & (period > 0) & (end - where[0] < period)
    for k in range(1, spikes - 1):
        regular &= where[k] - where[k + 1] == period
    rows = regular.nonzero()[:, 0]
    if rows.numel():
        later = steps > end[rows, None]
        due = later & ((steps - where[0][rows, None]) % period[rows, None] == 0)
        meet = torch.where((due & s[rows]).any(dim=1), (due & s[rows]).to(torch.int8).argmax(dim=1), length)
        s[rows] = torch.where(later & (steps < meet[:, None]), due, s[rows])
    return int(rows.numel())


def rounding_margin(tau: float, levels: int, dtype: torch.dtype, bound: float, peak: float) -> float:
    """How far from the threshold the scanned membrane must be for its spike to be the sequential run's in
    ``dtype`` (twice the sum of both rounding bounds, ``eps`` the dtype's): the scan's ``levels`` doubling steps
    round each partial sum and power of ``tau`` about twice, ``2 (levels + 1) eps S`` with ``S <= bound / (1 - tau)``
    the largest sum of ``tau^k |y|``; the sequential run rounds ``tau u`` and ``tau u + y`` once per step, which
    accumulates to at most ``eps peak / (1 - tau)`` (``peak``: the largest ``|h|``)."""
    eps = torch.finfo(dtype).eps
    return 2.0 * eps * (2.0 * (levels + 1) * bound + peak) / (1.0 - tau)


def polish(y: torch.Tensor, h: torch.Tensor, spikes: torch.Tensor, tau: float, theta, max_iters: int,
           stats: FixedPointStats, rows: torch.Tensor, finish: bool = True) -> None:
    """Iterate :func:`float_map` on ``h[rows]`` (in place, and their ``spikes``) on the rows that change, until
    bitwise fixed: their membrane becomes the sequential run's in ``y``'s dtype, bit for bit."""
    active, start = rows, 0
    for _ in range(max_iters):
        if active.numel() == 0:
            break
        old = h[active]
        new = float_map(old, y[active], tau, _threshold_rows(theta, active))
        differ = new != old
        changed = differ.any(dim=1)
        h[active] = new
        new_s = new >= _threshold_rows(theta, active)
        flips = int((new_s != spikes[active]).sum())
        spikes[active] = new_s
        stats.row_polish[active] += 1
        active = active[changed]
        if active.numel():  # before its first change a row is a fixed point there, i.e. already exact
            start = int(differ[changed].float().argmax(dim=1).min())
    if active.numel():
        _on_cap(stats, f"rounding: the membrane of {active.numel()} rows still changing ({flips} spikes flipped in "
                "the last step)", active, y, spikes, h, tau, theta, finish, start)


def _on_cap(stats: FixedPointStats, note: str, rows: torch.Tensor, y, spikes, h, tau, theta, finish: bool,
            start: int = 0) -> None:
    """Note rows still changing at the cap; with ``finish``, run them sequentially from ``start`` (exact before),
    counting the spikes that still were wrong."""
    stats.capped += int(rows.numel())
    stats.notes.append(note)
    if finish:
        new = sequential(y[rows], tau, _threshold_rows(theta, rows), h[rows], start)
        new_s = new >= _threshold_rows(theta, rows)
        stats.capped_changes += int((new_s != spikes[rows]).sum())
        h[rows], spikes[rows] = new, new_s
        stats.finished += int(rows.numel())


def surrogate_factor(h: torch.Tensor, theta, alpha: float) -> torch.Tensor:
    """SpikingJelly ``PiecewiseQuadratic``'s derivative at ``z = h - theta``: ``alpha - alpha^2 |z|`` inside
    ``|z| <= 1 / alpha``, else 0."""
    z = (h - theta).abs()
    return torch.where(z > 1.0 / alpha, 0.0, alpha - alpha * alpha * z)


def bptt_gradient(grad_spikes: torch.Tensor, factor: torch.Tensor, spikes: torch.Tensor, tau: float) -> torch.Tensor:
    """``dL/dy [N, L]`` of the LIF with the reset detached: ``g_t = grad_s_t factor_t + tau (1 - s_t) g_{t+1}``
    (a reverse :func:`masked_scan`), from ``grad_spikes``, the surrogate ``factor`` and the spikes (bool)."""
    b = (grad_spikes * factor).flip(-1)
    keep = (~spikes).flip(-1)  # reversed: the coefficient at k multiplies g'_{k-1} and carries its own (1 - s)
    levels = scan_levels(tau, b.shape[-1], b.dtype)  # lags whose weight tau^d is below rounding of max |b| are cut
    return masked_scan(b, keep, tau, levels).flip(-1)
