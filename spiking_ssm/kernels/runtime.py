"""Where the fused Triton kernels can run, and the choice between them and the torch reference.

A Triton kernel runs on CUDA tensors, or on CPU tensors when Triton's interpreter is on (``TRITON_INTERPRET=1``
set before Python starts: slow, for tests and debugging). ``neuron.implementation`` picks:

- ``auto``: the fused kernel on CUDA when it supports the input, the torch reference otherwise (never the
  interpreter, which is for tests);
- ``triton``: the fused kernel, or a one-line :class:`UserError` saying why it cannot run;
- ``torch``: the torch reference (the CPU path, and the slow reference the kernels are tested against);
- ``cuda``: an error: SpikingSSM's somas have no native CUDA kernel (SpikingJelly's ``cuda`` is for its own
  neurons).
"""

from __future__ import annotations

import os

import torch

from snn_engine.errors import UserError

try:
    import triton
except ImportError as error:  # CPU-only torch builds come without Triton
    triton = None
    TRITON_IMPORT_ERROR: str | None = str(error)
else:
    TRITON_IMPORT_ERROR = None

IMPLEMENTATIONS = ("auto", "torch", "triton", "cuda")
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@torch.compiler.assume_constant_result  # read once per compilation: no graph break in every layer's dispatch
def interpreter_on() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1`` at import time)."""
    if triton is None:
        return False
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def triton_unavailable(device: torch.device) -> str | None:
    """Why a Triton kernel cannot run on ``device``, or None when it can."""
    if triton is None:
        return f"Triton is not installed ({TRITON_IMPORT_ERROR}); it ships with torch's CUDA builds"
    if device.type == "cuda":
        return None
    if device.type == "cpu" and interpreter_on():
        return None
    return (f"Triton kernels need a CUDA device, not {device.type} (on CPU only Triton's slow interpreter runs them: "
            "TRITON_INTERPRET=1)")


def check_implementation(implementation: str, setting: str = "neuron.implementation") -> str:
    """Validate an implementation value of ``setting`` (at construction time)."""
    if implementation not in IMPLEMENTATIONS:
        raise UserError(f"unknown {setting}={implementation!r}; choose one of {IMPLEMENTATIONS}")
    return implementation


def choose(implementation: str, what: str, device: torch.device, unsupported: str | None = None,
           setting: str = "neuron.implementation") -> str:
    """``"triton"`` or ``"torch"``: what runs ``what`` (e.g. "sdn soma") on ``device`` for ``implementation``.

    ``unsupported`` is the caller's reason why the kernel cannot take this particular input (dtype, weights
    shape), or None. ``auto`` falls back to torch silently only off CUDA or for such inputs; an explicit
    ``triton`` that cannot run, and ``cuda``, are a :class:`UserError` naming ``setting``.
    """
    check_implementation(implementation, setting)
    if implementation == "torch":
        return "torch"
    if implementation == "cuda":
        raise UserError(f"{setting}=cuda: the {what} has no native CUDA kernel (its fused kernel is Triton); "
                        f"use {setting}=auto or triton")
    reason = triton_unavailable(device) or unsupported
    if implementation == "triton":
        if reason is not None:
            raise UserError(f"{setting}=triton cannot run the {what} on {device}: {reason}; "
                            f"use {setting}=auto or torch")
        return "triton"
    return "triton" if reason is None and device.type == "cuda" else "torch"


def dtype_unsupported(dtype: torch.dtype) -> str | None:
    """The reason a kernel cannot take inputs of ``dtype``, or None."""
    if dtype not in KERNEL_DTYPES:
        return f"the fused kernels take {[str(d) for d in KERNEL_DTYPES]}, not {dtype}"
    return None
