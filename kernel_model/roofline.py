"""Modelled time of a compiled kernel at H100 (SXM) rates: a forecast from counted work, occupancy and latency.

Throughput bounds, each from the kernel's SASS (:mod:`kernel_model.sass`), every basic block weighted by the
runs the launch implies (loop trips, a plan's runs of deeper loops and of guarded code):

- issue: warp instructions / (132 SMs x 4 schedulers x 1 instruction per clock x 1.98 GHz);
- L1: wavefronts (one per 128-byte line a warp's load or store touches; one per shared-memory access; one for a
  load whose address every lane shares; local (spill) accesses as lines of 32 lanes' words) / (132 SMs x 1 per
  clock x 1.98 GHz);
- DRAM: bytes the launch must move / the achievable bandwidth, which by Little's law is
  ``min(2.98 TB/s, bytes in flight per SM x 132 / latency)``.

Occupancy: resident warps per SM from registers per thread (65536 per SM, allocated per warp in units of 256),
shared memory per block (228 KB per SM, 1 KB of it reserved per block), warps per block (64 warps, 32 blocks per
SM), and no more than the grid gives each SM. Bytes in flight: a resident warp keeps one load batch in flight (the
loads issued before their first use, ``SassCounts.batches``; ``prefetch`` batches for a software-pipelined loop), the
DRAM bytes of the elements that batch covers, for one DRAM latency (700 ns; a batch of loads whose address every lane
shares, parameters read by every program, waits for an L2 hit, 150 ns, instead). The latency-bound time is that chain
walked by each warp slot of an SM: per round trip the latency (over ``prefetch``) and the round's own instructions at
its share of the SM's issue rate, one after the other (no overlap between the warps of a round: pessimistic when many
warps run out of phase). The modelled time is the largest of issue, L1, DRAM and the latency-bound time.

Everything here is a model, not a measurement: tail effects, bank conflicts, L2 and instruction latency are
ignored, and the constants are nominal.
"""

from __future__ import annotations

import dataclasses
import math

from kernel_model.sass import SassCounts

SMS, CLOCK_HZ, ISSUE_PER_CLOCK, L1_PER_CLOCK, DRAM_BYTES_PER_S = 132, 1.98e9, 4, 1, 2.98e12
LINE = 128
REGISTERS_PER_SM, REGISTER_UNIT, SHARED_PER_SM, SHARED_RESERVED = 65536, 256, 228 * 1024, 1024
MAX_WARPS, MAX_BLOCKS = 64, 32
DRAM_LATENCY_S = 700e-9  # H100 DRAM round trip under load, 600-800 ns
L2_LATENCY_S = 150e-9  # an L2 hit: loads every lane and program shares (parameters, coefficients)


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


def occupancy(registers: int, shared_bytes: int, warps: int) -> int:
    """Blocks of ``warps`` warps one SM holds at once (registers per thread, shared bytes per block)."""
    per_warp = math.ceil(max(registers, 1) * 32 / REGISTER_UNIT) * REGISTER_UNIT
    by_registers = REGISTERS_PER_SM // (per_warp * warps)
    by_shared = SHARED_PER_SM // (shared_bytes + SHARED_RESERVED)
    return max(0, min(MAX_BLOCKS, MAX_WARPS // warps, by_registers, by_shared))


@dataclasses.dataclass
class Model:
    instructions: float  # per element, one thread's SASS
    ffma: float
    loads: float
    stores: float
    local: float  # local (spill) loads and stores per element
    wavefronts: float  # L1 wavefronts per element
    bytes: float  # DRAM bytes per element
    warps_per_sm: float  # resident warps per SM (occupancy, or the grid's share when smaller)
    bandwidth: float  # achievable DRAM bytes per second (Little's law)
    issue_ms: float
    l1_ms: float
    dram_ms: float
    latency_ms: float

    @property
    def ms(self) -> float:
        return max(self.issue_ms, self.l1_ms, self.dram_ms, self.latency_ms)

    @property
    def limit(self) -> str:
        bounds = (("issue", self.issue_ms), ("L1", self.l1_ms), ("DRAM", self.dram_ms), ("latency", self.latency_ms))
        return max(bounds, key=lambda p: p[1])[0]


def model(sass: SassCounts, *, elements: int, elements_per_thread: float, trips: float, bytes_per_element: float,
          access: Access, runs: dict[int, float] | None = None, guarded: dict[str, float] | None = None,
          registers: int = 0, shared_bytes: int = 0, warps: int = 4, prefetch: int = 1) -> Model:
    """The modelled cost of ``elements`` elements, each thread handling ``elements_per_thread`` of them with the
    loop body run ``trips`` times (code nested ``d`` loops deep ``runs[d]`` times per trip, code skipped by the
    branch on source line ``text`` ``guarded[text]`` times per run around it), in blocks of ``warps`` warps of
    ``registers`` registers per thread and ``shared_bytes`` per block; a pipelined loop keeps ``prefetch`` load
    batches in flight."""
    per = 1.0 / elements_per_thread
    lines = 0.0
    for kind, width, offset, uniform, depth, *where in sass.memory:
        times = sass.runs_at(where[0], depth, trips, runs, guarded) if where else (trips if depth else 1.0)
        lines += times * (math.ceil(32 * width / LINE) if kind.startswith("local")
                          else wavefronts(width, offset, uniform, access))
    lines += sass.count("shared", trips, runs, guarded)
    thread_instructions = sass.count("total", trips, runs, guarded)
    instructions = thread_instructions * per
    wave = lines / (32 * elements_per_thread)
    # occupancy and the chain of round trips each warp slot walks
    programs = elements / (elements_per_thread * 32 * warps)
    blocks = max(1, occupancy(registers, shared_bytes, warps)) if registers else MAX_WARPS // warps
    blocks = min(blocks, math.ceil(programs / SMS))
    resident = blocks * warps
    rounds = max(sass.round_trips(trips, runs, guarded, prefetch, uniform=False), 1.0)  # to DRAM
    cached = sass.round_trips(trips, runs, guarded, prefetch, uniform=True)  # parameters: from L2
    # Little's law: each resident warp has the DRAM bytes of one round's elements (x prefetch) in flight
    in_flight = resident * 32 * elements_per_thread / rounds * bytes_per_element
    bandwidth = min(DRAM_BYTES_PER_S, in_flight * SMS / DRAM_LATENCY_S)
    warp_rate = ISSUE_PER_CLOCK / max(resident, ISSUE_PER_CLOCK) * CLOCK_HZ  # instructions per second per warp
    per_slot = programs / (SMS * blocks)  # programs each warp slot runs one after another
    latency_s = per_slot * (rounds * DRAM_LATENCY_S + cached * L2_LATENCY_S + thread_instructions / warp_rate)
    return Model(instructions=instructions, ffma=sass.count("ffma", trips, runs, guarded) * per,
                 loads=sass.count("global_load", trips, runs, guarded) * per,
                 stores=sass.count("global_store", trips, runs, guarded) * per,
                 local=sass.count("local", trips, runs, guarded) * per,
                 wavefronts=wave, bytes=bytes_per_element, warps_per_sm=resident, bandwidth=bandwidth,
                 issue_ms=1e3 * elements * instructions / 32 / (SMS * ISSUE_PER_CLOCK * CLOCK_HZ),
                 l1_ms=1e3 * elements * wave / (SMS * L1_PER_CLOCK * CLOCK_HZ),
                 dram_ms=1e3 * elements * bytes_per_element / bandwidth,
                 latency_ms=1e3 * latency_s)


# Arithmetic rates of an H100 SXM (dense, no sparsity): FP32 FMA on the CUDA cores; TF32 and FP64 on tensor cores
FFMA_PER_S = SMS * 128 * CLOCK_HZ  # 33.4e12 fused multiply-adds per second
TF32_MACS_PER_S = 494.7e12 / 2
FP64_MACS_PER_S = 66.9e12 / 2
PASSES = {"ieee": 1, "tf32": 1, "tf32x3": 3}  # tensor-core products per multiply-add in each float32 precision


def chunked_macs(chunk: int, d_state: int) -> tuple[int, int]:
    """Multiply-adds per element of one direction of the chunked current path (:mod:`spiking_ssm.chunked`), as its
    torch reference computes them: forward = the chunk's Toeplitz block (``chunk``) + mode states in (``d_state``
    real numbers per element) + read out (``d_state``); backward = the transposed Toeplitz and its tap gradient
    (2 ``chunk``) + the states recomputed, the adjoint read in and out, and the readout and inject gradients
    (5 ``d_state``)."""
    return chunk + 2 * d_state, 2 * chunk + 5 * d_state


def chunked_floor_ms(elements: int, chunk: int, d_state: int, precision: str, directions: int = 2) -> float:
    """The arithmetic floor of the chunked current path's forward+backward at H100 peak (float32 in ``precision``:
    ``ieee`` on FFMA, ``tf32``/``tf32x3`` on tensor cores with 1/3 products per multiply-add; ``float64`` on DMMA).
    Memory, latency and the soma are not in it: no kernel of this algorithm can be faster."""
    forward, backward = chunked_macs(chunk, d_state)
    macs = elements * directions * (forward + backward)
    if precision == "float64":
        return 1e3 * macs / FP64_MACS_PER_S
    if precision == "ieee":
        return 1e3 * macs / FFMA_PER_S
    return 1e3 * macs * PASSES[precision] / TF32_MACS_PER_S
