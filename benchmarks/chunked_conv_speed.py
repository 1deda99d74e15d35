"""What the chunked-convolution kernels (:mod:`spiking_ssm.kernels.chunked_conv`) cost, MODELLED from their SASS
compiled for sm_80/sm_90 on the CPU (no GPU needed), and, with ``--measure`` on a CUDA machine, their measured time.

Per kernel (``fwd``; the backward's ``states`` pass, the forward kernel writing only the chunk states; its reverse
``adjoint`` walk, which writes ``du``; and the two ``grads`` parts, the operator gradients), dtype
and arch: registers, ``STACK``/``LOCAL`` bytes (a spill shows as either), shared memory, SASS instructions per
element (FFMA/DFMA, tensor-core HMMA/DMMA, shared loads), DRAM bytes per element and the modelled time at H100
rates (:mod:`spiking_ssm.kernels.roofline`: the largest of issue, L1 and DRAM bounds) for the benchmark launch,
batch 64, width 256, L 8192, d_state 64 (M = 32 modes), chunk 64.

    python -m benchmarks.chunked_conv_speed                       # float32, sm_90
    python -m benchmarks.chunked_conv_speed --arch 80 90 --dtype float32 float64 --json rows.json

Triton's interpreter must be off: this compiles real kernels.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # before triton is imported

import torch  # noqa: E402

from spiking_ssm.kernels import chunked_conv, offline  # noqa: E402
from spiking_ssm.kernels.roofline import Access, model  # noqa: E402
from spiking_ssm.kernels.sass import count_sass  # noqa: E402

BATCH, WIDTH, LENGTH, MODES, CHUNK = 64, 256, 8192, 32, 64
KERNELS = ("fwd", "states", "adjoint", "grads0", "grads1")
_OPCODE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)")


def launch(kind: str, dtype: torch.dtype, length: int = LENGTH, modes: int = MODES, chunk: int = CHUNK,
           block_rows: int = chunked_conv.BLOCK_ROWS, precision: str = "ieee"):
    """``(kernel, args, constants)`` of one launch as :func:`chunked_conv.chunked_conv_triton` makes it, with
    stand-in pointers (contiguous ``[B, H, L]`` inputs)."""
    pointer = offline.stand_in(dtype)
    count = -(-length // chunk)
    sizes = (BATCH, WIDTH, length, count, WIDTH * length, length, 1)
    common = dict(Q=chunk, MP=chunked_conv.padded_modes(modes), BB=block_rows, REVERSE=False, PRECISION=precision)
    if kind == "adjoint":
        return chunked_conv._chunk_adjoint_kernel, (pointer,) * 7 + sizes, common
    if kind.startswith("grads"):
        return (chunked_conv._chunk_grads_kernel, (pointer,) * 8 + sizes + sizes[-3:],
                {**common, "PART": int(kind[-1])})
    flags = dict(WRITE_Y=kind == "fwd", WRITE_STATES=kind == "states")
    return chunked_conv._chunk_forward_kernel, (pointer,) * 7 + sizes, {**common, **flags}


def compile_raw(kernel, args: tuple, constants: dict, arch: int, num_warps: int) -> tuple[str, str, int]:
    """``(cuobjdump -res-usage text, nvdisasm SASS, shared bytes)`` of ``kernel`` compiled for sm_{arch}."""
    import triton
    from triton.backends.compiler import GPUTarget

    source, options = offline.specialise(kernel, args, constants, arch, num_warps)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options.__dict__)
    tools = offline.tools_dir()
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        run = lambda tool, *flags: subprocess.run([str(tools / tool), *flags, str(cubin)], capture_output=True,
                                                  text=True, check=True).stdout  # noqa: E731
        return run("cuobjdump", "-res-usage"), run("nvdisasm", "-c"), int(compiled.metadata.shared)


def resources(text: str) -> dict[str, int]:
    """``REG``, ``STACK``, ``LOCAL``, ``SHARED`` ... of the (one) function in ``cuobjdump -res-usage`` text."""
    return {key: int(value) for key, value in re.findall(r"(\w+):(\d+)", text.split("Function", 1)[-1])}


def evaluate(kind: str, dtype: torch.dtype, arch: int, num_warps: int = chunked_conv.NUM_WARPS,
             block_rows: int = chunked_conv.BLOCK_ROWS, precision: str = "ieee") -> dict:
    """Compile one launch; its resources, instruction counts per element and modelled H100 time (a dict)."""
    kernel, args, constants = launch(kind, dtype, block_rows=block_rows, precision=precision)
    num_warps = chunked_conv.GRAD_WARPS[int(kind[-1])] if kind.startswith("grads") else num_warps
    usage, sass, shared = compile_raw(kernel, args, constants, arch, num_warps)
    fields = resources(usage)
    counts = count_sass(sass)
    size = torch.empty(0, dtype=dtype).element_size()
    state_bytes = 2 * chunked_conv.padded_modes(MODES) * size / CHUNK  # per element, one pass over the states
    traffic = {"fwd": 2 * size, "states": size + state_bytes, "adjoint": 2 * size + state_bytes,
               "grads0": 2 * size + state_bytes, "grads1": size + 2 * state_bytes}[kind]
    trips = -(-LENGTH // CHUNK)
    per_thread = block_rows * LENGTH / (32 * num_warps)  # elements per thread over the whole walk
    cost = model(counts, elements=BATCH * WIDTH * LENGTH, elements_per_thread=per_thread, trips=trips,
                 bytes_per_element=traffic, access=Access(size))
    opcodes = collections.Counter(match.group(1).split(".")[0] for match in _OPCODE.finditer(sass))
    mma = sum(n for op, n in opcodes.items() if op in ("HMMA", "DMMA", "HGMMA"))  # static: once per program
    return {"kernel": kind, "dtype": str(dtype).replace("torch.", ""), "arch": arch, "num_warps": num_warps,
            "block_rows": block_rows, "precision": precision, "registers": fields.get("REG", 0),
            "stack": fields.get("STACK", 0), "local": fields.get("LOCAL", 0),
            "local_ops": opcodes["LDL"] + opcodes["STL"],  # spill loads and stores in the SASS
            "shared": max(shared, fields.get("SHARED", 0)), "instructions": cost.instructions,
            "fma": cost.ffma, "mma_static": mma, "shared_loads": counts.count("shared", trips) / per_thread,
            "bytes": traffic, "issue_ms": cost.issue_ms, "l1_ms": cost.l1_ms, "dram_ms": cost.dram_ms,
            "ms": cost.ms, "limit": cost.limit}


def format_row(row: dict) -> str:
    return (f"sm_{row['arch']} {row['kernel']:<6} {row['dtype']:<7} {row['precision']:<6} BB={row['block_rows']:<3}"
            f" w{row['num_warps']} regs {row['registers']:>3} stack {row['stack']:>3} local {row['local']:>3} "
            f"smem {row['shared']:>6} instr/el {row['instructions']:7.1f} fma/el {row['fma']:6.1f} "
            f"lds/el {row['shared_loads']:5.1f} mma(static) {row['mma_static']:>4} B/el {row['bytes']:4.1f} "
            f"model {row['ms']:.3f} ms ({row['limit']})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[90])
    parser.add_argument("--dtype", nargs="+", default=["float32"], choices=["float32", "float64"])
    parser.add_argument("--kernel", nargs="+", default=list(KERNELS), choices=KERNELS)
    parser.add_argument("--precision", default="ieee", choices=chunked_conv.PRECISIONS)
    parser.add_argument("--warps", type=int, default=chunked_conv.NUM_WARPS)
    parser.add_argument("--block-rows", type=int, default=chunked_conv.BLOCK_ROWS)
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args(argv)
    if offline.tools_dir() is None:
        print("chunked_conv_speed: skipped (triton's bundled cuobjdump/nvdisasm are not installed)")
        return 0
    print(f"MODELLED at H100 rates; batch {BATCH}, width {WIDTH}, L {LENGTH}, M {MODES} modes, chunk {CHUNK}")
    rows = []
    for arch in args.arch:
        for name in args.dtype:
            for kind in args.kernel:
                row = evaluate(kind, getattr(torch, name), arch, args.warps, args.block_rows, args.precision)
                rows.append(row)
                print(format_row(row), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
