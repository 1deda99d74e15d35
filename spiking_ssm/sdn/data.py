"""Training currents for the SDN: a seeded per-sequence mixture of shifted, scaled, shaped and correlated inputs.

Real soma currents are not N(0, 1): their mean and scale differ per channel, their shape is not Gaussian and
they are correlated in time (slowly varying, sometimes nearly constant). Every sequence of the mixture draws
one family and its own parameters (``logU(a, b)``: log-uniform between a and b):

* ``standard`` (share ``standard_share``): i.i.d. N(0, 1), the original recipe's data.
* ``iid``: i.i.d. normal, uniform or Laplace values (one third each) with mean ``U(-1.5, 2)`` and standard
  deviation ``logU(0.25, 4)``.
* ``correlated``: ``mean + s_slow * AR1(phi) + s_fast * N(0, 1)`` with mean ``U(-1.5, 2)``,
  ``1 - phi ~ logU(0.003, 1.6)`` (phi in (-0.6, 0.997)), ``s_slow ~ logU(0.1, 3)``, ``s_fast ~ logU(0.01, 2)``.
* ``piecewise``: piecewise-constant levels ``N(mean, s_level^2)`` (mean ``U(-1, 1.5)``, ``s_level ~ logU(0.2,
  2)``) held for geometric durations of mean ``logU(3, 100)`` steps, plus ``s_fast * N(0, 1)`` with
  ``s_fast ~ logU(0.003, 0.5)``.

The remaining share after ``standard`` (0.3 by default) is split over the other families by ``family_weights``
(0.45 / 0.4 / 0.15 by default).
:func:`make_traces` adds the exact LIF traces (float64 simulation of the float32-rounded inputs).
"""

from __future__ import annotations

import math

import torch

from snn_engine.errors import UserError
from spiking_ssm.sdn.lif_traces import DEFAULT_TAU, lif_reference

FAMILIES = ("standard", "iid", "correlated", "piecewise")
DEFAULT_FAMILY_WEIGHTS = (0.45, 0.4, 0.15)  # iid, correlated, piecewise (of the non-standard share)
MEAN_RANGE = (-1.5, 2.0)  # U(a, b) per-sequence mean of the iid and correlated families
STD_RANGE = (0.25, 4.0)  # logU(a, b) per-sequence standard deviation of the iid family


def _uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    """[n, 1] values from U(low, high)."""
    return torch.rand(n, 1, generator=g, dtype=torch.float64) * (high - low) + low


def _log_uniform(n: int, low: float, high: float, g: torch.Generator) -> torch.Tensor:
    """[n, 1] values from logU(low, high)."""
    return torch.exp(_uniform(n, math.log(low), math.log(high), g))


def _ar1(noise: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Stationary unit-variance AR(1) along the last axis of unit noise ``[n, L]`` with per-row ``phi`` [n, 1]."""
    out = torch.empty_like(noise)
    out[:, 0] = noise[:, 0]
    gain = torch.sqrt(1.0 - phi[:, 0] ** 2)
    for t in range(1, noise.shape[1]):
        out[:, t] = phi[:, 0] * out[:, t - 1] + gain * noise[:, t]
    return out


def iid_currents(n: int, length: int, g: torch.Generator) -> torch.Tensor:
    """[n, length] i.i.d. normal / uniform / Laplace currents, one shape, mean and scale per sequence."""
    mean, std = _uniform(n, *MEAN_RANGE, g), _log_uniform(n, *STD_RANGE, g)
    shape = torch.randint(3, (n, 1), generator=g)
    z = torch.randn(n, length, generator=g, dtype=torch.float64)
    u = torch.rand(n, length, generator=g, dtype=torch.float64)
    uniform = (u - 0.5) * math.sqrt(12.0)
    laplace = -torch.sign(u - 0.5) * torch.log1p(-2.0 * (u - 0.5).abs()) / math.sqrt(2.0)
    unit = torch.where(shape == 0, z, torch.where(shape == 1, uniform, laplace))
    return mean + std * unit


def correlated_currents(n: int, length: int, g: torch.Generator) -> torch.Tensor:
    """[n, length] slow AR(1) component plus white noise around a per-sequence mean."""
    mean = _uniform(n, *MEAN_RANGE, g)
    phi = 1.0 - _log_uniform(n, 0.003, 1.6, g)
    slow, fast = _log_uniform(n, 0.1, 3.0, g), _log_uniform(n, 0.01, 2.0, g)
    ar = _ar1(torch.randn(n, length, generator=g, dtype=torch.float64), phi)
    return mean + slow * ar + fast * torch.randn(n, length, generator=g, dtype=torch.float64)


def piecewise_currents(n: int, length: int, g: torch.Generator) -> torch.Tensor:
    """[n, length] piecewise-constant levels with geometric durations, plus small white noise."""
    mean, level_std = _uniform(n, -1.0, 1.5, g), _log_uniform(n, 0.2, 2.0, g)
    switch = 1.0 / _log_uniform(n, 3.0, 100.0, g)  # probability of a new level at each step
    new_level = torch.rand(n, length, generator=g, dtype=torch.float64) < switch
    new_level[:, 0] = True
    segment = torch.cumsum(new_level.to(torch.int64), dim=1) - 1  # [n, L] index of the current level
    levels = mean + level_std * torch.randn(n, length, generator=g, dtype=torch.float64)
    fast = _log_uniform(n, 0.003, 0.5, g)
    return torch.gather(levels, 1, segment) + fast * torch.randn(n, length, generator=g, dtype=torch.float64)


def mixture_currents(n: int, length: int, seed: int, standard_share: float = 0.3,
                     family_weights: tuple[float, float, float] = DEFAULT_FAMILY_WEIGHTS,
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` seeded sequences ``[n, length]`` (float64) of the mixture and each one's family index ``[n]``
    (into :data:`FAMILIES`)."""
    if int(n) < 1 or int(length) < 1:
        raise UserError(f"need n >= 1 sequences of length >= 1, got n={n}, length={length}")
    if not 0.0 <= standard_share <= 1.0:
        raise UserError(f"the N(0,1) share must be in [0, 1], got {standard_share}")
    weights = torch.tensor(family_weights, dtype=torch.float64)
    if weights.numel() != 3 or (weights < 0).any() or weights.sum() <= 0:
        raise UserError("family weights must be 3 non-negative numbers (iid, correlated, piecewise), "
                        f"got {family_weights}")
    probs = torch.cat([torch.tensor([standard_share], dtype=torch.float64),
                       (1 - standard_share) * weights / weights.sum()])
    g = torch.Generator().manual_seed(int(seed))
    family = torch.multinomial(probs, int(n), replacement=True, generator=g)
    x = torch.empty(int(n), int(length), dtype=torch.float64)
    makers = (lambda k: torch.randn(k, int(length), generator=g, dtype=torch.float64),
              lambda k: iid_currents(k, int(length), g),
              lambda k: correlated_currents(k, int(length), g),
              lambda k: piecewise_currents(k, int(length), g))
    for index, make in enumerate(makers):
        rows = (family == index).nonzero().flatten()
        if rows.numel():
            x[rows] = make(rows.numel())
    return x, family


def make_traces(n: int, length: int, seed: int, tau: float = DEFAULT_TAU, dtype: torch.dtype = torch.float32,
                **mixture) -> dict[str, torch.Tensor]:
    """Mixture currents and their exact LIF traces: ``{"input", "mem", "spike"}`` each ``[n, length]`` in
    ``dtype`` and ``"family"`` ``[n]``. Inputs are rounded to ``dtype`` before the float64 simulation."""
    x, family = mixture_currents(n, length, seed, **mixture)
    x = x.to(dtype).to(torch.float64)
    m, s = lif_reference(x, tau=tau)
    return {"input": x.to(dtype), "mem": m.to(dtype), "spike": s.to(dtype), "family": family}
