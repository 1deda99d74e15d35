"""How the layer launches its Triton kernels: FP fusion pinned on, autotuning never inside CUDA-graph capture, and
exact float32 references.

- :func:`run`: one launch of an autotuned kernel. Outside graph capture the autotuner picks (timing every config
  the first time it meets a key) and the choice is remembered here; inside capture (``torch.cuda.graphs``, or
  ``torch.compile(mode="reduce-overhead")``) the remembered choice, or the default config when there is none, runs
  as a plain launch: timing launches inside a capture would be recorded into the graph, or fail. Under
  ``torch.compile`` tracing the autotuned launch is handed over unchanged (Inductor tunes at compile time).
  ``enable_fp_fusion=True`` on every launch: the kernels' numbers (and the compile budget) assume FMAs, and Triton
  is changing its default.
- :func:`exact_fp32`: a context with TF32 off for cuBLAS and cuDNN, so a torch reference computed on CUDA (the
  SDN's ``F.conv1d``) is true float32 when the kernels are compared with it.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch

FP_FUSION = {"enable_fp_fusion": True}
_CHOSEN: dict[tuple, tuple[dict, int]] = {}  # (autotuner id, key) -> (config kwargs, num_warps)


def capturing() -> bool:
    """True while the current CUDA stream records a graph."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def run(tuned, plain, grid: Callable[[dict], tuple], args: tuple, key: tuple, default: tuple[dict, int],
        **flags) -> None:
    """Launch ``tuned`` (the autotuned ``plain``) on ``args``; ``grid(config_kwargs)`` gives the grid, ``key`` names
    the launch class (what the autotuner keys on), ``default`` is ``(kwargs, num_warps)`` used before any tuning."""
    if torch.compiler.is_compiling():
        # traced by torch.compile: the launch exactly as before (Inductor owns user kernels, autotunes them at
        # compile time, outside any capture; host-side bookkeeping here would only break the graph)
        tuned[grid](*args, **flags)
        return
    if capturing():
        kwargs, warps = _CHOSEN.get((id(tuned), key), default)
        plain[grid(kwargs)](*args, **kwargs, **flags, num_warps=warps, **FP_FUSION)
        return
    tuned[grid](*args, **flags, **FP_FUSION)
    best = getattr(tuned, "best_config", None)
    if best is not None:
        _CHOSEN[(id(tuned), key)] = (dict(best.kwargs), best.num_warps)


@contextlib.contextmanager
def exact_fp32():
    """TF32 off for matmuls and convolutions inside the block (restored after)."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn
