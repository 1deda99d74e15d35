"""Compile a Triton kernel for a GPU that is not there, and read its machine code.

``compile_for(kernel, args, constants, arch, num_warps)`` specialises the arguments exactly as Triton's launcher
does for a real call (integers equal to 1 become constants, integers that are multiples of 16 and 16-byte-aligned
pointers get divisibility hints; the launcher's own binder runs on stand-in tensors), compiles to a cubin for
``sm_{arch}`` on the CPU, and reads registers, the stack frame and shared memory (``cuobjdump -res-usage``), the
bytes of register spill stores and loads (the ``ptxas -v`` log of Triton's own ptxas run) and the
SASS with source lines (``nvdisasm -c -g``) into a :class:`KernelStats`. Spills show as the ``STACK`` frame (under the
ABI, ``LOCAL`` stays 0) and as ``STL``/``LDL`` in the SASS. FP fusion is on, as the layer's launches pin it, unless a plan says
otherwise (``fp_fusion=False``: the ``lif_parallel`` forward, whose float map must round as the sequential loop).

Results are cached as JSON under ``~/.cache/spiking_ssm/kernel_stats`` (or ``$SPIKING_SSM_KERNEL_CACHE``), keyed by
the kernel's source hash (Triton's ``cache_key``, which covers the helpers it calls), the specialisation, the
options, the target and the Triton version: an unchanged kernel is never recompiled.

This needs Triton's real JIT (not ``TRITON_INTERPRET=1``) and the ``cuobjdump``/``nvdisasm``/``ptxas`` Triton ships; run it in a
process without the interpreter (``python -m benchmarks.kernel_budget`` does).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import subprocess
import tempfile
from pathlib import Path

import torch

from kernel_model.sass import SassCounts, count_sass

TOOLS = ("cuobjdump", "nvdisasm")


def tools_dir() -> Path | None:
    """The folder of the ``cuobjdump``/``nvdisasm`` bundled with Triton, or None when Triton or they are absent."""
    try:
        import triton
    except ImportError:
        return None
    folder = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    return folder if all((folder / tool).exists() for tool in TOOLS) else None


def cache_dir() -> Path:
    return Path(os.environ.get("SPIKING_SSM_KERNEL_CACHE", Path.home() / ".cache" / "spiking_ssm" / "kernel_stats"))


@dataclasses.dataclass
class KernelStats:
    """What one compiled kernel costs per program (one thread's instruction stream)."""

    name: str
    arch: int
    num_warps: int
    registers: int
    stack_bytes: int  # stack frame per thread (cuobjdump STACK): spills and local arrays live there
    spill_store_bytes: int  # bytes of spill stores in the code (ptxas -v; static, not per run)
    spill_load_bytes: int  # bytes of spill loads in the code
    shared_bytes: int
    sass: SassCounts

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "KernelStats":
        data = dict(data)
        data["sass"] = SassCounts(**data["sass"])
        return cls(**data)


class _StandIn:
    """A tensor as the launcher sees it: a dtype and an address (no memory behind it)."""

    def __init__(self, dtype: torch.dtype, address: int):
        self.dtype = dtype
        self._address = address

    def data_ptr(self) -> int:
        return self._address


def stand_in(dtype: torch.dtype, aligned: bool = True) -> _StandIn:
    """A pointer argument of ``dtype``; ``aligned=False`` gives an address off the 16-byte grid."""
    return _StandIn(dtype, 1 << 20 if aligned else (1 << 20) + torch.empty(0, dtype=dtype).element_size())


def specialise(kernel, args: tuple, constants: dict, arch: int, num_warps: int, fp_fusion: bool = True):
    """``(source, options)`` for ``kernel(*args, **constants)`` as Triton's launcher would compile it on sm_{arch}."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    bound, specialization, options = binder(*args, **constants, num_warps=num_warps,
                                           enable_fp_fusion=fp_fusion)
    options, signature, constexprs, attrs = kernel._pack_args(backend, options, bound, specialization, options)
    return ASTSource(kernel, signature, constexprs, attrs), options


def _cache_key(source, options, arch: int) -> str:
    import triton

    text = f"{source.hash()}|{sorted(options.__dict__.items())}|{arch}|{triton.__version__}|sass-v5"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# CUDAOptions fields that differ between sm_80 and sm_90 and that Triton's code generator reads only for fp8 operands
_TARGET_OPTIONS = ("arch", "supported_fp8_dtypes", "deprecated_fp8_dot_operand_dtypes", "max_num_imprecise_acc_default")


@functools.lru_cache(maxsize=None)
def _folder_digest(folder: str) -> str:
    """A hash of the paths and texts of the ``.py`` files in ``folder``: the IR carries file paths and line numbers."""
    digest = hashlib.sha256()
    for file in sorted(Path(folder).glob("*.py")):
        digest.update(f"{file.resolve()}\0".encode() + file.read_bytes())
    return digest.hexdigest()


def _ttir_key(kernel, source, options) -> str:
    """The key of the kernel's Triton IR (the first stage, before any target-specific pass): the source, its files
    as they are now (the IR's source locations) and the options without the target's. A TTIR without fp8 types is
    the same for every target (it is reused across archs only then; ``tests/test_kernel_model.py`` compares a kernel
    compiled both ways)."""
    import triton

    kept = sorted((k, v) for k, v in options.__dict__.items() if k not in _TARGET_OPTIONS)
    where = _folder_digest(str(Path(kernel.fn.__code__.co_filename).parent))
    text = f"{source.hash()}|{where}|{kept}|{triton.__version__}|ttir"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a renamed scratch file (parallel runs never read half a file); a
    read-only cache folder is no error (nothing is cached, the results are the same)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = path.with_suffix(f".{os.getpid()}.tmp")
        scratch.write_text(text)
        scratch.replace(path)
    except OSError:
        pass


def _run(tool: Path, *args: str) -> str:
    done = subprocess.run([str(tool), *args], capture_output=True, text=True, check=True)
    return done.stdout


def _resources(text: str) -> tuple[int, int, int]:
    """(registers, stack frame bytes, shared bytes) from ``cuobjdump -res-usage`` (its ``LOCAL`` is 0 under the ABI
    stack: spills are counted in ``STACK``)."""
    fields = {}
    for token in text.replace(",", " ").split():
        if ":" in token:
            key, _, value = token.partition(":")
            if value.isdigit():
                fields[key] = int(value)
    return fields.get("REG", 0), fields.get("STACK", 0) + fields.get("LOCAL", 0), fields.get("SHARED", 0)


def _spills(text: str) -> tuple[int, int]:
    """(spill store bytes, spill load bytes) from ``ptxas -v``'s ``N bytes spill stores, M bytes spill loads``."""
    found = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return (int(found.group(1)), int(found.group(2))) if found else (0, 0)


def compile_for(kernel, args: tuple, constants: dict, arch: int, num_warps: int,
                use_cache: bool = True, fp_fusion: bool = True) -> KernelStats:
    """Compile ``kernel`` for sm_{arch} with the launcher's specialisation of ``args``; its :class:`KernelStats`.

    Raises whatever Triton's compiler raises for a kernel that does not compile.
    """
    import triton

    folder = tools_dir()
    if folder is None:
        raise RuntimeError("triton's bundled cuobjdump/nvdisasm are not installed")
    source, options = specialise(kernel, args, constants, arch, num_warps, fp_fusion)
    key = _cache_key(source, options, arch)
    path = cache_dir() / f"{kernel.__name__}-{key}.json"
    if use_cache and path.exists():
        return KernelStats.from_json(json.loads(path.read_text()))
    from triton.backends.compiler import GPUTarget

    # always compiled afresh: a cubin from Triton's own cache (keyed by the kernel's source, not its file) carries
    # the line numbers and file path of whichever checkout compiled it first, and the basic blocks' source texts
    # (a plan's ``guarded`` lines) are read through them. The Triton IR of the same launch for another arch is
    # reused (from the AST to TTIR is a third of a compile): it carries the source locations. ``ptxas -v``'s log
    # (the spill bytes) is printed by Triton's own ptxas run, with the flags the launcher uses.
    ttir = cache_dir() / f"{kernel.__name__}-{_ttir_key(kernel, source, options)}.ttir"
    reuse = use_cache and ttir.exists()
    log = io.StringIO()
    with triton.knobs.compilation.scope(), triton.knobs.nvidia.scope(), contextlib.redirect_stdout(log):
        triton.knobs.compilation.always_compile = True
        triton.knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(str(ttir) if reuse else source, target=GPUTarget("cuda", arch, 32),
                                  options=options.__dict__)
    if use_cache and not reuse and "f8E" not in compiled.asm["ttir"]:
        _write_atomic(ttir, compiled.asm["ttir"])
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        registers, stack, shared = _resources(_run(folder / "cuobjdump", "-res-usage", str(cubin)))
        sass = count_sass(_run(folder / "nvdisasm", "-c", "-g", "-ndf", str(cubin)))
    stores, loads = _spills(log.getvalue())
    stats = KernelStats(kernel.__name__, arch, num_warps, registers, stack, stores, loads,
                        max(shared, int(compiled.metadata.shared)), sass)
    if use_cache:
        _write_atomic(path, json.dumps(stats.to_json()))
    return stats
