"""The SASS reader and the cost model on small handwritten inputs (no compiler, no GPU): basic blocks, guarded
code weighted by a plan's run frequency, load batches, spills, occupancy and the latency-bound time."""

import pytest

from kernel_model.roofline import Access, model, occupancy
from kernel_model.sass import _parse, basic_blocks, count_sass

SOURCE = {1: "for start in range(0, L, BLOCK):", 2: "if rare:", 3: "x = 1"}

GUARDED = """
        /*0000*/                   MOV R0, RZ ;
.L_x_0:
	//## File "k.py", line 3
        /*0010*/                   LDG.E R2, desc[UR4][R4.64] ;
        /*0020*/                   FADD R3, R2, R0 ;
	//## File "k.py", line 2
        /*0030*/              @!P0 BRA `(.L_x_1) ;
	//## File "k.py", line 3
        /*0040*/                   FMUL R3, R3, R3 ;
        /*0050*/                   STL [R1+0x8], R3 ;
        /*0060*/                   FMUL R3, R3, R3 ;
.L_x_1:
	//## File "k.py", line 1
        /*0070*/               @P1 BRA `(.L_x_0) ;
        /*0080*/                   EXIT ;
.L_x_2:
        /*0090*/                   BRA `(.L_x_2);
"""


def _counts():
    return count_sass(GUARDED, source=lambda path, line: SOURCE[line])


def test_basic_blocks_split_at_labels_and_branches():
    rows, labels = _parse(GUARDED, source=lambda path, line: SOURCE[line])
    blocks = basic_blocks(rows, labels)
    assert [b["start"] for b in blocks] == [0x00, 0x10, 0x40, 0x70, 0x80, 0x90]
    assert [len(b["rows"]) for b in blocks] == [1, 3, 3, 1, 1, 1]
    assert blocks[1]["successors"] == [0x70, 0x40]  # the branch target, then the fall-through
    assert blocks[3]["successors"] == [0x10, 0x80]  # back to the loop head, or out
    assert blocks[4]["successors"] == []  # EXIT
    assert blocks[5]["successors"] == [0x90]  # the trailing self-branch
    assert rows[3].source == "if rare:" and rows[3].predicate == "@!P0"


def test_guarded_code_runs_as_often_as_the_plan_says():
    counts = _counts()
    assert counts.guards() == {"if rare:"}
    guarded = [b for b in counts.blocks if b["guards"]]
    assert [b["start"] for b in guarded] == [0x40] and guarded[0]["depth"] == 1
    # straight: MOV, EXIT; per trip: LDG, FADD, BRA, BRA back; guarded: FMUL, STL, FMUL
    assert counts.count("total", trips=10) == 2 + 10 * 7
    assert counts.count("total", trips=10, guarded={"if rare:": 0.1}) == pytest.approx(2 + 10 * (4 + 0.3))
    assert counts.count("local", trips=10, guarded={"if rare:": 0.5}) == pytest.approx(5)
    assert counts.count("total", trips=10, guarded={"no such line": 0.1}) == 2 + 10 * 7
    assert counts.memory[1] == ["local_store", 4, 8, False, 1, 0x50]
    assert counts.batches == [[0x10, 1, False]]  # the LDG, first used by the FADD
    assert counts.round_trips(trips=10) == 10 and counts.round_trips(trips=10, prefetch=2) == 5


BATCHES = """
        /*0000*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0010*/                   LDG.E.128 R8, desc[UR4][R2.64+0x10] ;
        /*0020*/                   FADD R12, R4, R5 ;
        /*0030*/                   LDG.E R13, desc[UR4][R2.64+0x20] ;
        /*0040*/                   STG.E desc[UR4][R2.64], R13 ;
        /*0050*/                   EXIT ;
"""


def test_load_batches_end_at_the_first_use():
    counts = count_sass(BATCHES)
    assert counts.batches == [[0x00, 0, False], [0x30, 0, False]]  # two loads in flight together, then one


def test_occupancy_from_registers_shared_memory_and_warps():
    assert occupancy(254, 0, 2) == 4  # 256 registers x 32 lanes per warp: 8 warps of 65536 registers
    assert occupancy(168, 0, 2) == 6  # 5376 per warp: 12 warps, 6 blocks of 2
    assert occupancy(170, 0, 2) == 5  # 5440 -> 5632 per warp: 11 warps, 5 blocks of 2
    assert occupancy(32, 0, 1) == 32  # 32 blocks per SM at most
    assert occupancy(32, 0, 4) == 16  # 64 warps per SM at most
    assert occupancy(32, 100 * 1024, 4) == 2  # 228 KB of shared memory, 1 KB reserved per block


def test_latency_bound_time_of_a_round_trip_per_trip():
    """512 one-warp programs (4 per SM), 1024 trips each with one round trip: about 1024 x 700 ns, far above the
    DRAM floor; two batches in flight halve the waiting."""
    counts = _counts()
    common = dict(elements=512 * 32 * 8192, elements_per_thread=8192, trips=1024, bytes_per_element=12,
                  access=Access(4, rows=True), registers=40, shared_bytes=0, warps=1)
    single = model(counts, **common)
    assert single.warps_per_sm == 4 and single.limit == "latency"
    assert single.latency_ms == pytest.approx(1024 * 700e-6 * 512 / 528 + 0.005, rel=0.05)
    assert single.bandwidth < 2.98e12 and single.dram_ms < single.latency_ms
    staged = model(counts, **common, prefetch=2)
    assert staged.latency_ms < 0.6 * single.latency_ms


@pytest.mark.parametrize("chunk, modes", [(16, 4), (32, 8)])
def test_chunked_macs_count_what_the_torch_path_multiplies(chunk, modes):
    """The floor's multiply-adds per element are the matrix products the chunked path's forward and written-out
    backward run (torch's flop counter over one direction, float64, L a multiple of the chunk)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from spiking_ssm.chunked import chunk_operators, chunked_conv
    from kernel_model.roofline import chunked_macs

    torch.manual_seed(0)
    batch, width, length = 2, 3, 8 * chunk
    dtA = torch.complex(-torch.rand(width, modes, dtype=torch.float64), torch.randn(width, modes, dtype=torch.float64))
    coeff = torch.randn(width, modes, dtype=torch.complex128)
    ops = [t.detach().requires_grad_() for t in chunk_operators(coeff, dtA, chunk)]
    u = torch.randn(batch, width, length, dtype=torch.float64, requires_grad=True)
    elements = batch * width * length
    with FlopCounterMode(display=False) as forward:
        y = chunked_conv(u, type(chunk_operators(coeff, dtA, chunk))(*ops))
    with FlopCounterMode(display=False) as backward:
        y.backward(torch.randn_like(y))
    assert (forward.get_total_flops() / 2 / elements, backward.get_total_flops() / 2 / elements) == \
        chunked_macs(chunk, 2 * modes)


def test_chunked_floor_orders_the_precisions():
    """At the benchmark's size (bidirectional, chunk 64, d_state 64) the floor is ~5.1 ms on FFMA and ~2.1 ms in
    tf32x3 (3 products per multiply-add), ~0.7 ms in one-pass tf32; float64 on DMMA runs at the FFMA rate."""
    from kernel_model.roofline import chunked_floor_ms

    floors = {p: chunked_floor_ms(64 * 256 * 8192, 64, 64, p) for p in ("ieee", "tf32x3", "tf32", "float64")}
    assert floors["tf32x3"] == pytest.approx(3 * floors["tf32"])
    assert 4.8 < floors["ieee"] < 5.4 and 1.9 < floors["tf32x3"] < 2.3 and floors["float64"] == pytest.approx(floors["ieee"], rel=1e-3)
