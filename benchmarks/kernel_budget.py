"""What each fused kernel costs on an H100, modelled from its compiled SASS (no GPU needed), and whether it meets
its budget.

Per kernel and autotune config: registers, bytes of spill stores (``ptxas -v``), shared memory, resident warps per
SM, SASS instructions per element (FFMA, global loads and stores among them), L1 wavefronts and DRAM bytes per
element, and the modelled time at H100 rates for the benchmark launch (batch 64, width 256, L = 8192, d_state 64):
issue, L1, DRAM (at the bandwidth the bytes in flight allow) and latency-bound times, the limiting one starred
(:mod:`kernel_model.roofline`). Everything printed is MODELLED, not measured; ``--measure`` on a CUDA
machine times the same launches and prints them beside the model.

    python -m benchmarks.kernel_budget                     # float32 benchmark set, sm_90
    python -m benchmarks.kernel_budget --everything --arch 80 90 --odd 90 --check   # the compile test
    python -m benchmarks.kernel_budget --measure           # on a GPU: measured beside modelled

``--check`` exits 1 when a kernel fails to compile, spills more than its plan allows (``allowed_spill_bytes``), names
a guarded branch its SASS does not have, or is over its register or instruction budget.
Triton's interpreter must be off (``TRITON_INTERPRET`` unset): this compiles real kernels.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported: real compilation, not the interpreter
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from kernel_model import offline, plans as plan_list  # noqa: E402
from kernel_model.roofline import DRAM_BYTES_PER_S, chunked_floor_ms, model  # noqa: E402

HEADER = (f"{'kernel [config] dtype':<40} {'regs':>4} {'spill':>5} {'smem':>6} {'occ':>3} {'instr/el':>8} "
          f"{'ffma':>6} {'ld':>5} {'st':>5} {'L1 wf/el':>8} {'B/el':>5} {'issue':>7} {'L1':>7} {'DRAM':>7} "
          f"{'latency':>7}  model ms")


def evaluate(plan, arch: int, use_cache: bool = True) -> dict:
    """Compile ``plan`` for sm_{arch}; its stats, model and budget failures (a dict, JSON-ready)."""
    row = {"label": plan.label, "name": plan.name, "config": plan.config, "arch": arch,
           "dtype": str(plan.dtype).replace("torch.", ""), "failures": []}
    try:
        stats = offline.compile_for(plan.kernel, plan.args, plan.constants, arch, plan.num_warps, use_cache,
                                    plan.fp_fusion)
    except Exception as error:  # a compile error is a failure to report, not a crash of the whole table
        row["failures"].append(f"compile error: {type(error).__name__}: {str(error).splitlines()[0][:300]}")
        row["traceback"] = traceback.format_exc()[-2000:]
        return row
    cost = model(stats.sass, elements=plan.elements, elements_per_thread=plan.elements_per_thread, trips=plan.trips,
                 bytes_per_element=plan.bytes_per_element, access=plan.access, runs=plan.runs, guarded=plan.guarded,
                 registers=stats.registers, shared_bytes=stats.shared_bytes, warps=plan.num_warps,
                 prefetch=plan.prefetch)
    row.update(registers=stats.registers, stack_bytes=stats.stack_bytes, spill_bytes=stats.spill_store_bytes,
               spill_load_bytes=stats.spill_load_bytes, shared_bytes=stats.shared_bytes,
               barriers=stats.sass.count("barrier", plan.trips),
               mma=stats.sass.count("mma", plan.trips, plan.runs, plan.guarded) / plan.elements_per_thread,
               **{k: getattr(cost, k) for k in (
                   "instructions", "ffma", "loads", "stores", "local", "wavefronts", "bytes", "warps_per_sm",
                   "bandwidth", "issue_ms", "l1_ms", "dram_ms", "latency_ms")},
               ms=cost.ms, limit=cost.limit, floor_ms=1e3 * plan.elements * plan.bytes_per_element / DRAM_BYTES_PER_S)
    allowed = plan.allowed_spill_bytes.get(arch, 0)
    if stats.spill_store_bytes > allowed:
        row["failures"].append(f"spills {stats.spill_store_bytes} bytes (stores; {stats.spill_load_bytes} loaded, "
                               f"stack {stats.stack_bytes}) per thread > {allowed} allowed")
    missing = set(plan.guarded or {}) - stats.sass.guards()
    if missing:
        row["failures"].append(f"no branch on source line {sorted(missing)} in the SASS")
    if stats.registers > plan.max_registers:
        row["failures"].append(f"{stats.registers} registers > budget {plan.max_registers}")
    if cost.instructions > plan.max_instructions:
        row["failures"].append(f"{cost.instructions:.0f} instructions/element > budget {plan.max_instructions}")
    return row


_TODO: list = []


def _evaluate_one(index_and_cache) -> dict:
    index, use_cache = index_and_cache
    plan, arch = _TODO[index]
    return evaluate(plan, arch, use_cache)


def _evaluate_all(todo: list, use_cache: bool, jobs: int):
    """Rows in ``todo``'s order; compiled in ``jobs`` forked processes (each plan picked by index)."""
    _TODO[:] = todo
    work = [(i, use_cache) for i in range(len(todo))]
    if jobs <= 1:
        yield from map(_evaluate_one, work)
        return
    import multiprocessing

    with multiprocessing.get_context("fork").Pool(jobs) as pool:
        yield from pool.imap(_evaluate_one, work)


def format_row(row: dict) -> str:
    if "ms" not in row:
        return f"{row['label']:<40} FAILED: {'; '.join(row['failures'])}"
    marks = {bound: "*" if row["limit"] == bound else " " for bound in ("issue", "L1", "DRAM", "latency")}
    return (f"{row['label']:<40} {row['registers']:>4} {row['spill_bytes']:>5} {row['shared_bytes']:>6} "
            f"{row['warps_per_sm']:>3.0f} {row['instructions']:>8.1f} {row['ffma']:>6.1f} {row['loads']:>5.2f} "
            f"{row['stores']:>5.2f} {row['wavefronts']:>8.2f} {row['bytes']:>5.1f} {row['issue_ms']:>6.3f}"
            f"{marks['issue']}{row['l1_ms']:>6.3f}{marks['L1']}{row['dram_ms']:>6.3f}{marks['DRAM']}"
            f"{row['latency_ms']:>6.3f}{marks['latency']}  {row['ms']:.3f}"
            + (f"  OVER BUDGET: {'; '.join(row['failures'])}" if row["failures"] else ""))


def best(rows: list[dict]) -> dict[str, dict]:
    """The fastest modelled config of each kernel and dtype."""
    chosen: dict[str, dict] = {}
    for row in rows:
        key = f"{row['name']} {row['dtype']} sm_{row['arch']}"
        if "ms" in row and (key not in chosen or row["ms"] < chosen[key]["ms"]):
            chosen[key] = row
    return chosen


def summary(rows: list[dict]) -> list[str]:
    """Per kernel: the best config, and for the somas fwd + the backward's elementwise ``grad_s * g`` (DRAM floor)."""
    lines = []
    chosen = best(rows)
    for key, row in chosen.items():
        line = f"{key:<36} best [{row['config']}]: {row['ms']:.3f} ms modelled ({row['limit']}-bound)"
        if row["name"] in ("sdn fwd", "sltt fwd"):
            line += f"; + bwd grad_s*g at the DRAM floor {row['floor_ms']:.3f} ms = {row['ms'] + row['floor_ms']:.3f} ms"
        backward = chosen.get(key.replace("exact fwd", "exact bwd"))
        if row["name"] == "exact fwd" and backward:
            line += f"; + exact bwd {backward['ms']:.3f} ms = {row['ms'] + backward['ms']:.3f} ms"
        lines.append(line)
    lines += _chunked_totals(rows)
    if any(row["name"] in CHUNKED_PARTS for row in rows):
        lines.append(floor_line())
    return lines


def floor_line(elements: int = 64 * 256 * 8192, chunk: int = 64, d_state: int = 64) -> str:
    """The chunked current path's arithmetic floor per precision (bidirectional forward+backward at H100 peak)."""
    floors = ", ".join(f"{p} {chunked_floor_ms(elements, chunk, d_state, p):.3f}" for p in ("ieee", "tf32x3", "tf32"))
    return (f"arithmetic floor of the chunked current path, bidirectional fwd+bwd, chunk {chunk}, d_state {d_state} "
            f"(its multiply-adds at H100 peak, no memory or soma): {floors} ms (MODELLED)")


CHUNKED_PARTS = ("chunked fwd", "chunked states", "chunked adjoint", "chunked grads0", "chunked grads1")


def _chunked_totals(rows: list[dict]) -> list[str]:
    """The chunked current path per dtype, arch and config: one direction's forward and its backward's four
    launches, and a bidirectional layer's forward+backward (twice that)."""
    by_config: dict[tuple, dict[str, float]] = {}
    for r in rows:
        if "ms" in r and not r.get("odd") and r["name"] in CHUNKED_PARTS:
            key = (r["dtype"], r["arch"], r["config"].rsplit(" w", 1)[0])
            by_config.setdefault(key, {})[r["name"]] = r["ms"]
    lines = []
    for (dtype, arch, config), parts in sorted(by_config.items()):
        if set(parts) == set(CHUNKED_PARTS):
            backward = sum(parts[name] for name in CHUNKED_PARTS[1:])
            lines.append(f"chunked current path {dtype} sm_{arch} [{config}]: fwd {parts['chunked fwd']:.3f} + bwd "
                         f"{backward:.3f} ms per direction; bidirectional fwd+bwd "
                         f"{2 * (parts['chunked fwd'] + backward):.3f} ms (MODELLED)")
    return lines + _with_sdn(rows, by_config)


def _with_sdn(rows: list[dict], by_config: dict) -> list[str]:
    """Current path + sdn soma, forward+backward of one bidirectional layer (float32), per precision: the chunked
    kernels then the SDN soma (its backward ``grad_s * g`` at the DRAM floor), against the fused walk
    (``model.fuse_soma=true``: the anti-causal states, the fused forward; in backward both directions' states, the
    fused walk writing ``dy = ds * g``, then each direction's adjoint and operator gradients)."""
    chosen = best(rows)
    lines = []
    for (dtype, arch, config), parts in sorted(by_config.items()):
        soma = chosen.get(f"sdn fwd float32 sm_{arch}")
        precision = config.split("precision=")[1].split()[0] if "precision=" in config else "ieee"
        fused = {r["name"]: r["ms"] for r in rows if r["arch"] == arch and r["dtype"] == "float32" and "ms" in r
                 and not r.get("odd") and r["name"].startswith("sdn chunked")
                 and (f"precision={precision}" in r["config"] or (precision == "ieee" and "precision" not in r["config"]))}
        if dtype != "float32" or "STAGES=3" not in config or soma is None or set(parts) != set(CHUNKED_PARTS) \
                or "sdn chunked fwd (bidir)" not in fused:
            continue
        adjoint = parts["chunked adjoint"] + parts["chunked grads0"] + parts["chunked grads1"]
        unfused = 2 * (parts["chunked fwd"] + parts["chunked states"] + adjoint) + soma["ms"] + soma["floor_ms"]
        walk = parts["chunked states"] + fused["sdn chunked fwd (bidir)"]
        total = walk + 2 * parts["chunked states"] + fused["sdn chunked bwd (bidir)"] + 2 * adjoint
        lines.append(f"bidirectional layer's current path + sdn soma float32 sm_{arch} {precision}, fwd+bwd: unfused "
                     f"{unfused:.3f} ms, fused (model.fuse_soma=true) {total:.3f} ms (MODELLED)")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90], help="compute capabilities (80 = A100, 90 = H100)")
    parser.add_argument("--everything", action="store_true", help="every dtype and store flag, not just float32")
    parser.add_argument("--odd", type=int, nargs="*", default=[], metavar="ARCH",
                        help="also the float32 launches of an odd shape (no divisibility hints) on these archs")
    parser.add_argument("--json", help="write every row here")
    parser.add_argument("--check", action="store_true", help="exit 1 on a compile error, spill or budget overrun")
    parser.add_argument("--no-cache", action="store_true", help="recompile even when the cache has the result")
    parser.add_argument("--jobs", type=int, default=1, help="compile in this many processes")
    parser.add_argument("--measure", action="store_true", help="on CUDA: time each float32 launch beside the model")
    args = parser.parse_args(argv)
    if offline.tools_dir() is None:
        print("kernel_budget: skipped (triton's bundled cuobjdump/nvdisasm are not installed)")
        return 0
    todo = [(plan, arch) for arch in args.arch for plan in plan_list.plans(plan_list.BENCH, args.everything)]
    bench = len(todo)
    todo += [(plan, arch) for arch in args.odd for plan in plan_list.plans(plan_list.ODD, args.everything)
             if plan.dtype in plan_list.S4D_DTYPES[:1]]
    rows = []
    print("MODELLED at H100 rates (132 SMs, 1.98 GHz, 2.98 TB/s, 700 ns DRAM latency); batch 64, width 256, "
          "L 8192; per element; spill: bytes of spill stores; occ: resident warps per SM")
    print(HEADER)
    for index, row in enumerate(_evaluate_all(todo, not args.no_cache, args.jobs)):
        row["odd"] = index >= bench  # the odd shape: compiled and checked, not modelled at the benchmark's size
        rows.append(row)
        print(("odd " if row["odd"] else "") + (f"sm_{row['arch']} " if len(args.arch) > 1 or args.odd else "")
              + format_row(row), flush=True)
    print("\n".join(summary([r for r in rows if not r["odd"]])))
    if args.measure:
        from benchmarks.kernel_measure import measure_beside_model

        measure_beside_model([r for r in rows if r["dtype"] == "float32" and not r["odd"] and r["arch"] == 90])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)
    failed = [row for row in rows if row["failures"]]
    if failed:
        print(f"{len(failed)} of {len(rows)} launches fail their budget:")
        for row in failed:
            print(f"  sm_{row['arch']} {row['label']}: {'; '.join(row['failures'])}")
    return 1 if (args.check and failed) else 0


if __name__ == "__main__":
    sys.exit(main())
