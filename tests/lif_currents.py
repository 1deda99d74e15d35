"""Currents that put the LIF membrane exactly on its threshold, for tests of the soma's arithmetic.

:func:`on_threshold_currents` builds rows ``y [N, L]`` step by step in the soma's own float arithmetic (``h = tau * u``
then ``+ y``, reset ``h * (1 - s)``, threshold 1): at each crafted step ``y_t`` is chosen so that ``h_t`` is exactly
``1.0`` (a spike), the float just below (none) or the float just above (a spike), and crafted steps follow each
other in chains. Any implementation that rounds one of these sums differently, or decides a spike from a membrane
computed another way, gets some of them wrong.
"""

from __future__ import annotations

import torch

KINDS = ("random", "exactly 1", "1 ulp below", "1 ulp above")


def on_threshold_currents(tau: float, dtype: torch.dtype, rows: int, length: int, seed: int = 0,
                          random_share: float = 0.4) -> tuple[torch.Tensor, torch.Tensor]:
    """``(y [rows, length] in dtype, kind [rows, length] int64)``: ``kind`` indexes :data:`KINDS`; random steps are
    N(0.3, 1.2^2) currents, the others aim the membrane at 1 (``1``), 1 ulp below (``2``) or above (``3``)."""
    g = torch.Generator().manual_seed(seed)
    kind = torch.randint(1, 4, (rows, length), generator=g)
    kind[torch.rand(rows, length, generator=g) < random_share] = 0
    random = (torch.randn(rows, length, generator=g, dtype=torch.float64) * 1.2 + 0.3).to(dtype)
    one = torch.ones((), dtype=dtype)
    targets = torch.stack([one, one, torch.nextafter(one, one * 0), torch.nextafter(one, one * 2)])
    y = torch.empty(rows, length, dtype=dtype)
    u = torch.zeros(rows, dtype=dtype)
    for t in range(length):
        p = tau * u  # as the soma computes it: the product rounded first
        target = targets[kind[:, t]]
        best = target - p
        for step in (torch.nextafter(best, best + 1), torch.nextafter(best, best - 1)):
            best = torch.where((p + best != target) & (p + step == target), step, best)
        y[:, t] = torch.where(kind[:, t] == 0, random[:, t], best)
        h = p + y[:, t]
        u = h * (h < 1.0).to(dtype)
    return y, kind


def landed(y: torch.Tensor, kind: torch.Tensor, tau: float) -> torch.Tensor:
    """``[N, L]`` bool: the crafted steps whose sequential membrane is exactly their target."""
    one = torch.ones((), dtype=y.dtype)
    targets = torch.stack([one, one, torch.nextafter(one, one * 0), torch.nextafter(one, one * 2)])
    u = torch.zeros(y.shape[0], dtype=y.dtype)
    hits = torch.zeros(y.shape, dtype=torch.bool)
    for t in range(y.shape[1]):
        h = tau * u + y[:, t]
        hits[:, t] = (kind[:, t] > 0) & (h == targets[kind[:, t]])
        u = h * (h < 1.0).to(y.dtype)
    return hits


def non_finite_rows(dtype: torch.dtype, length: int = 120, seed: int = 1) -> torch.Tensor:
    """``[8, length]`` currents in ``dtype``: rows 0-3 are on-threshold currents at tau 0.9
    (:func:`on_threshold_currents`), row 4 has a NaN at step 30, row 5 a ``+inf`` at 40, row 6 ``-inf`` at 10 and
    ``+inf`` at 70, row 7 a current of half the dtype's largest number at 5 and minus the largest at 6; rows 4-7 are
    2.0 elsewhere (a spike every step)."""
    y = torch.full((8, length), 2.0, dtype=dtype)
    y[:4] = on_threshold_currents(0.9, dtype, 4, length, seed)[0]
    big = torch.finfo(dtype).max
    y[4, 30], y[5, 40], y[6, 10], y[6, 70] = float("nan"), float("inf"), -float("inf"), float("inf")
    y[7, 5], y[7, 6] = big / 2, -big
    return y
