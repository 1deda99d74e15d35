"""Binary spikes saved for backward at one byte each instead of four (or two under AMP).

A layer that reads spikes (a linear map, a token matmul, a convolution) saves its input for the weight gradient;
autograd keeps it in the input's float dtype although every value is 0 or 1. :func:`spike_input` runs such an op
with saved-tensor hooks that store the spike input as ``torch.bool`` and turn it back into the compute dtype when
backward needs it: the same gradients (0 and 1 are exact in every float dtype), a quarter of the bytes in float32.

Under autocast the input is cast to the autocast dtype first (what the op would do itself), so the copy the op
saves is the one recognised. Only tensors sharing the spike input's storage are compressed; weights and anything
else the op saves are left alone. Inside ``torch.compile`` (which does not trace saved-tensor hooks) or with
:func:`set_enabled` ``(False)`` the op runs unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable

import torch

_ENABLED = True
_PAUSED = threading.local()  # set inside regions whose saved tensors are discarded (checkpointed forwards)
# called with every boolean tensor stored in place of a spike input; saved-tensor hooks nest (only the innermost
# sees a tensor), so memory accounting that hooks saved tensors itself also registers here
pack_observers: list[Callable[[torch.Tensor], None]] = []


def set_enabled(enabled: bool) -> None:
    """Switch compact spike saving on or off for the whole process (for comparisons and debugging)."""
    global _ENABLED
    _ENABLED = bool(enabled)


def enabled() -> bool:
    return _ENABLED


@contextlib.contextmanager
def paused():
    """Run spike inputs plainly inside (e.g. a checkpointed forward, whose own hooks must see every saved tensor)."""
    previous = getattr(_PAUSED, "on", False)
    _PAUSED.on = True
    try:
        yield
    finally:
        _PAUSED.on = previous


class _Packed:
    """A saved spike tensor as booleans, with the dtype it is given back in."""

    __slots__ = ("bits", "dtype")

    def __init__(self, bits: torch.Tensor, dtype: torch.dtype):
        self.bits, self.dtype = bits, dtype


def _unpack(saved):
    return saved.bits.to(saved.dtype) if isinstance(saved, _Packed) else saved


def spike_input(op: Callable[..., torch.Tensor], spikes: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``op(spikes, *args, **kwargs)`` with ``spikes`` (values in {0, 1}) saved for backward as ``torch.bool``.

    The caller guarantees that ``spikes`` is binary; nothing checks it (a check would cost a pass and a sync).
    """
    recording = torch.is_grad_enabled() and (
        spikes.requires_grad or any(isinstance(a, torch.Tensor) and a.requires_grad for a in args))
    if not (_ENABLED and recording) or getattr(_PAUSED, "on", False) or torch.compiler.is_compiling():
        return op(spikes, *args, **kwargs)
    device = spikes.device.type
    if torch.is_autocast_enabled(device) and spikes.is_floating_point():
        spikes = spikes.to(torch.get_autocast_dtype(device))
    storage = spikes.untyped_storage().data_ptr()

    def pack(saved: torch.Tensor):
        if saved.is_floating_point() and saved.untyped_storage().data_ptr() == storage:
            bits = saved.to(torch.bool)
            for observe in pack_observers:
                observe(bits)
            return _Packed(bits, saved.dtype)
        return saved

    with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
        return op(spikes, *args, **kwargs)
