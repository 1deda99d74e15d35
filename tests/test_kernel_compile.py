"""Every Triton kernel of the project compiled for real GPUs (sm_80, sm_90) on the CPU, without a GPU.

``benchmarks/kernel_budget.py`` compiles each kernel x autotune config x dtype the code accepts (float32 also with
its other store flags and an odd shape that gets no divisibility hints), with the argument specialisation Triton's
launcher gives the layer's calls, to cubin; this test fails on a compile error, a register spill, or a kernel over
its register or SASS-instruction budget, or a spill its plan does not allow (``allowed_spill_bytes``: the float64 SDN
configs). Compiled results are cached by kernel source hash
(``~/.cache/spiking_ssm/kernel_stats``): a cold run takes minutes, a warm one seconds. Skipped only where Triton or
its bundled ``cuobjdump``/``nvdisasm`` are absent.
"""

import json
import os
import subprocess
import sys

import pytest

from kernel_model.offline import tools_dir
from kernel_model.roofline import Access, wavefronts
from kernel_model.sass import count_sass
from tests.helpers import REPO

ARCHS = ("80", "90")
KERNELS = {"sdn fwd", "sltt fwd", "s4d fwd C=2", "s4d bwd C=2", "exact fwd", "exact bwd", "chunked fwd",
           "chunked states", "chunked adjoint", "chunked grads0", "chunked grads1", "sdn chunked fwd (causal)",
           "sdn chunked bwd (causal)", "sdn chunked fwd (bidir)", "sdn chunked fwd (bidir odd L)"}
SOMA_DTYPES = {"float32", "float16", "bfloat16", "float64"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    if tools_dir() is None:
        pytest.skip("triton's bundled cuobjdump/nvdisasm are not installed (a CPU-only torch without Triton)")
    out = tmp_path_factory.mktemp("kernels") / "budget.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}  # the real compiler, not the interpreter
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-m", "benchmarks.kernel_budget", "--everything", "--arch", *ARCHS,
                           "--odd", "90", "--jobs", "2", "--json", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_every_kernel_compiles_without_undeclared_spills_within_budget(report, arch):
    rows = [row for row in report if row["arch"] == int(arch)]
    names = {row["name"] for row in rows}
    assert KERNELS <= names, f"kernels missing from the compile plans: {KERNELS - names}"
    assert {row["dtype"] for row in rows if row["name"] == "sdn fwd"} == SOMA_DTYPES
    assert {row["dtype"] for row in rows if row["name"] == "sltt fwd"} == SOMA_DTYPES
    assert {row["dtype"] for row in rows if row["name"] == "exact fwd"} == {"float32", "float64"}
    assert {row["dtype"] for row in rows if row["name"] == "chunked fwd"} == {"float32", "float64"}
    # tl.dot: float64 runs on DMMA, tf32x3 on HMMA; the default float32 ("ieee") is exact FFMA, no tensor core
    chunked = [row for row in rows if row["name"].startswith("chunked") and not row["odd"]]
    for row in chunked:
        tensor_cores = row["dtype"] == "float64" or "tf32x3" in row["config"]
        assert (row["mma"] > 0) == tensor_cores, row["label"]
    failures = [f"sm_{arch} {'odd ' if row['odd'] else ''}{row['label']}: {'; '.join(row['failures'])}"
                for row in rows if row["failures"]]
    assert not failures, "\n".join(failures)
    assert all(row["registers"] > 0 and row["instructions"] > 0 for row in rows)
    spilled = {row["label"] for row in rows if row["spill_bytes"] and not row["odd"]}
    stated = lambda label: (("sdn fwd" in label or "sdn chunked" in label) and "float64" in label  # noqa: E731
                            or "tf32x3" in label or "bidir odd L" in label)
    assert spilled and all(stated(label) for label in spilled), spilled  # seen, and stated by their plans


@pytest.mark.slow
def test_model_reflects_latency(report):
    """Single-stage SLTT configs (lanes a row apart, one round trip per 8 steps) wait on latency; the pipelined
    (cp.async) ones reach the DRAM floor; the SDN forward's exposed round trips put it above its issue bound."""
    rows = {row["label"]: row for row in report if row["arch"] == 90 and not row["odd"]}
    single = [r for label, r in rows.items() if label.startswith("sltt fwd [") and "STAGES=1" in label
              and label.endswith("float32")]
    staged = [r for label, r in rows.items() if label.startswith("sltt fwd [") and "STAGES=3" in label
              and label.endswith("float32")]
    assert single and staged and max(r["ms"] for r in staged) < min(r["ms"] for r in single)
    assert all(r["limit"] == "latency" for r in single) and all(r["limit"] == "DRAM" for r in staged)
    sdn = [r for label, r in rows.items() if label.startswith("sdn fwd [") and label.endswith("float32")]
    assert all(r["latency_ms"] > r["issue_ms"] and 0 < r["warps_per_sm"] <= 64 for r in sdn)


SASS = """
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   LDC.64 R6, c[0x0][0x228] ;
        /*0020*/                   LDG.E R5, desc[UR6][R6.64+0x4] ;
.L_x_0:
        /*0030*/                   LDG.E.128 R8, desc[UR6][R2.64+-0x20] ;
        /*0040*/                   FFMA R0, R8, R5, R0 ;
        /*0050*/               @P0 STG.E.U16 desc[UR6][R4.64], R0 ;
        /*0060*/               @P1 BRA `(.L_x_0) ;
        /*0070*/                   BAR.SYNC.DEFER_BLOCKING 0x0 ;
        /*0080*/                   EXIT ;
.L_x_1:
        /*0090*/                   BRA `(.L_x_1);
        /*00a0*/                   NOP;
"""


def test_sass_counts_loops_widths_and_uniform_loads():
    counts = count_sass(SASS)
    assert counts.loop["total"] == 4 and counts.loop["ffma"] == 1 and counts.loop["global_load"] == 1
    assert counts.straight["total"] == 5 and counts.straight["barrier"] == 1  # the trailing self-branch: padding
    assert counts.count("total", trips=10) == 45
    assert counts.memory == [["global_load", 4, 4, True, 0, 0x20], ["global_load", 16, -32, False, 1, 0x30],
                             ["global_store", 2, 0, False, 1, 0x50]]
    # the uniform load waits for its first use (none: the end of the straight code), the loop's at the FFMA
    assert counts.batches == [[0x20, 0, True], [0x30, 1, False]]


def test_wavefront_model():
    assert wavefronts(4, 0, False, Access(4)) == 1  # 32 lanes x 4 contiguous bytes: one line
    assert wavefronts(4, -28, False, Access(4)) == 2  # shifted by 7 elements: two lines
    assert wavefronts(16, 0, False, Access(16)) == 4
    assert wavefronts(4, 0, False, Access(4, rows=True)) == 32  # a row per lane: a line per lane
    assert wavefronts(4, 12, True, Access(4, rows=True)) == 1  # the same address in every lane


NESTED = """
        /*0000*/                   MOV R0, RZ ;
.L_x_0:
        /*0010*/                   FADD R1, R1, R0 ;
.L_x_1:
        /*0020*/                   FMUL R2, R2, R1 ;
        /*0030*/               @P0 BRA `(.L_x_1) ;
        /*0040*/               @P1 BRA `(.L_x_0) ;
        /*0050*/                   EXIT ;
"""


def test_sass_counts_weight_nested_loops_by_their_own_runs():
    counts = count_sass(NESTED)
    assert counts.loop["total"] == 4 and counts.nested["2"]["total"] == 2 and counts.nested["2"]["fp"] == 1
    assert counts.count("total", trips=10) == 2 + 10 * 4  # nested body once per trip, as before (MOV, EXIT straight)
    assert counts.count("total", trips=10, runs={2: 3.0}) == 2 + 10 * (2 + 3 * 2)
    assert counts.count("total", trips=10, runs={3: 5.0}) == 2 + 10 * 4  # no code that deep


REUSE = """
import json
from kernel_model import offline, plans
from triton.compiler import compiler

calls = []
make_ir = compiler.ASTSource.make_ir
compiler.ASTSource.make_ir = lambda self, *a, **k: calls.append(1) or make_ir(self, *a, **k)
plan = next(p for p in plans.plans(everything=True) if p.name == "exact fwd" and p.guarded)
stats = lambda arch, cache: offline.compile_for(plan.kernel, plan.args, plan.constants, arch, plan.num_warps,
                                                cache, plan.fp_fusion)
first = stats(80, True)
saved = sorted(path.suffix for path in offline.cache_dir().iterdir())
reused = stats(90, True)
direct = stats(90, False)
print(json.dumps({"saved": saved, "calls": len(calls), "same": reused == direct, "guards": sorted(direct.sass.guards()),
                  "guarded": sorted(plan.guarded)}))
"""


@pytest.mark.slow
def test_the_ir_reused_for_another_arch_compiles_to_the_same_machine_code(tmp_path):
    """``compile_for`` keeps a launch's Triton IR and compiles the next arch from it (a third less work): the
    registers, spills and SASS (with the source lines of its guarded branches) equal those of a compile from the AST."""
    if tools_dir() is None:
        pytest.skip("triton's bundled cuobjdump/nvdisasm are not installed (a CPU-only torch without Triton)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=str(REPO), SPIKING_SSM_KERNEL_CACHE=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", REUSE], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["saved"] == [".json", ".ttir"]  # sm_80's stats and the IR
    assert result["calls"] == 2  # from the AST for sm_80, from the IR for sm_90 (cached), from the AST again
    assert result["same"] and result["guards"] and set(result["guarded"]) <= set(result["guards"])
