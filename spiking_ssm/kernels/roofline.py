"""Modelled time of a compiled kernel at H100 (SXM) rates: the largest of three bounds, each from counted work.

- issue: warp instructions / (132 SMs x 4 schedulers x 1 instruction per clock x 1.98 GHz);
- L1: wavefronts (one per 128-byte line a warp's load or store touches; one per shared-memory access; one for a
  load whose address every lane shares) / (132 SMs x 1 per clock x 1.98 GHz);
- DRAM: bytes the launch must move / 2.98 TB/s (the memory floor).

Instruction and memory counts come from the kernel's SASS (:mod:`spiking_ssm.kernels.sass`), the loop part
weighted by the trips a launch implies. Everything here is a model, not a measurement: latency, occupancy and
tail effects are ignored, so real times are at or above these.
"""

from __future__ import annotations

import dataclasses
import math

from spiking_ssm.kernels.sass import SassCounts

SMS, CLOCK_HZ, ISSUE_PER_CLOCK, L1_PER_CLOCK, DRAM_BYTES_PER_S = 132, 1.98e9, 4, 1, 2.98e12
LINE = 128


@dataclasses.dataclass
class Access:
    """How a launch's lanes address memory: ``lane_bytes`` apart in one line of data (``rows=False``), or each lane
    in its own row, far apart (``rows=True``)."""

    lane_bytes: int
    rows: bool = False


def wavefronts(width: int, offset: int, uniform: bool, access: Access) -> int:
    """128-byte lines one warp's load/store of ``width`` bytes per lane touches."""
    if uniform:
        return 1
    if access.rows:
        return 32 * math.ceil(width / LINE)
    span = 32 * max(width, access.lane_bytes)
    return math.ceil(span / LINE) + (1 if offset % LINE else 0)


@dataclasses.dataclass
class Model:
    instructions: float  # per element, one thread's SASS
    ffma: float
    loads: float
    stores: float
    wavefronts: float  # L1 wavefronts per element
    bytes: float  # DRAM bytes per element
    issue_ms: float
    l1_ms: float
    dram_ms: float

    @property
    def ms(self) -> float:
        return max(self.issue_ms, self.l1_ms, self.dram_ms)

    @property
    def limit(self) -> str:
        return max(("issue", self.issue_ms), ("L1", self.l1_ms), ("DRAM", self.dram_ms), key=lambda p: p[1])[0]


def model(sass: SassCounts, *, elements: int, elements_per_thread: float, trips: float, bytes_per_element: float,
          access: Access, runs: dict[int, float] | None = None) -> Model:
    """The modelled cost of ``elements`` elements, each thread handling ``elements_per_thread`` of them with the
    loop body run ``trips`` times (code nested ``d`` loops deep ``runs[d]`` times per trip, when given)."""
    per = 1.0 / elements_per_thread
    lines = sum(wavefronts(width, offset, uniform, access) * (trips * sass.weight(depth, runs) if depth else 1.0)
                for _, width, offset, uniform, depth in sass.memory)
    lines += sass.count("shared", trips, runs)
    instructions = sass.count("total", trips, runs) * per
    wave = lines / (32 * elements_per_thread)
    return Model(instructions=instructions, ffma=sass.count("ffma", trips, runs) * per,
                 loads=sass.count("global_load", trips, runs) * per,
                 stores=sass.count("global_store", trips, runs) * per,
                 wavefronts=wave, bytes=bytes_per_element,
                 issue_ms=1e3 * elements * instructions / 32 / (SMS * ISSUE_PER_CLOCK * CLOCK_HZ),
                 l1_ms=1e3 * elements * wave / (SMS * L1_PER_CLOCK * CLOCK_HZ),
                 dram_ms=1e3 * elements * bytes_per_element / DRAM_BYTES_PER_S)
