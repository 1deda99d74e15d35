"""Binary spikes saved for backward compactly: one byte each (``bool``) or eight per byte (``bits``).

A layer that reads spikes (a linear map, a token matmul, a convolution) saves its input for the weight gradient;
autograd keeps it in the input's float dtype although every value is 0 or 1. :func:`spike_input` runs such an op
with saved-tensor hooks that store the spike input through one of SpikingJelly's spike compressors
(``spikingjelly.activation_based.memopt``) and restore the compute dtype when backward needs it: the same gradients
(0 and 1 are exact in every float dtype) for a quarter (``bool``) or a thirty-second (``bits``) of the float32 bytes.

SpikingJelly has the compressors but no saved-tensor hook that applies them to one operand of an op (its
``memopt.checkpoint`` compresses only a checkpointed region's first input); the hook is what this module adds.

The storage is chosen per forward with :func:`storage` (a model wraps its forward in it: ``model.spike_storage``),
else :data:`DEFAULT_STORAGE`; ``float`` saves what autograd saves by itself. Under autocast the input is cast to the
autocast dtype first (what the op would do itself), so the copy the op saves is the one recognised. Only tensors
sharing the spike input's storage are compressed; weights and anything else the op saves are left alone. Inside
``torch.compile`` (which does not trace saved-tensor hooks) or :func:`paused` the op runs unchanged.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Callable

import torch
from spikingjelly.activation_based.memopt import BitSpikeCompressor, BooleanSpikeCompressor, SpikeCompressor

from snn_engine.errors import UserError

COMPRESSORS: dict[str, SpikeCompressor | None] = {
    "float": None, "bool": BooleanSpikeCompressor(), "bits": BitSpikeCompressor()}
STORAGES = tuple(COMPRESSORS)
DEFAULT_STORAGE = "bool"
_LOCAL = threading.local()  # .paused: inside a checkpointed forward; .storage: the mode of the running forward
# called with every tensor the hook below keeps for backward: the payload stored in place of a spike input (bool or
# packed uint8) and every other tensor the op saves, unchanged; saved-tensor hooks nest (only the innermost sees a
# tensor), so memory accounting that hooks saved tensors itself also registers here
pack_observers: list[Callable[[torch.Tensor], None]] = []


def check_storage(mode: str, key: str = "model.spike_storage") -> str:
    """``mode`` if it names a storage, else a :class:`UserError` naming ``key`` and the choices."""
    if mode not in COMPRESSORS:
        raise UserError(f"{key}={mode!r} is not a spike storage; choose one of {', '.join(STORAGES)}")
    return mode


@contextlib.contextmanager
def storage(mode: str):
    """Save the spike inputs of :func:`spike_input` calls inside as ``mode`` (``float``, ``bool`` or ``bits``)."""
    previous = getattr(_LOCAL, "storage", None)
    _LOCAL.storage = check_storage(mode)
    try:
        yield
    finally:
        _LOCAL.storage = previous


def current_storage() -> str:
    return getattr(_LOCAL, "storage", None) or DEFAULT_STORAGE


def compressor() -> SpikeCompressor | None:
    """The SpikingJelly compressor of the current storage (None for ``float``)."""
    return COMPRESSORS[current_storage()]


@contextlib.contextmanager
def paused():
    """Run spike inputs plainly inside (e.g. a checkpointed forward, whose own hooks must see every saved tensor)."""
    previous = getattr(_LOCAL, "paused", False)
    _LOCAL.paused = True
    try:
        yield
    finally:
        _LOCAL.paused = previous


class _Packed:
    """A saved spike tensor as a compressor's payload, with the compressor that restores it and, for a strided
    tensor, its layout (a meta tensor: no memory), so that backward reduces in the same order as without packing."""

    __slots__ = ("payload", "compressor", "layout")

    def __init__(self, saved: torch.Tensor, compressor: SpikeCompressor):
        self.payload, self.compressor = compressor.compress(saved), compressor
        self.layout = None if saved.is_contiguous() else torch.empty_like(saved, device="meta")


def _unpack(saved):
    if not isinstance(saved, _Packed):
        return saved
    restored = saved.compressor.decompress(saved.payload)
    if saved.layout is None or restored.stride() == saved.layout.stride():
        return restored
    return torch.empty_like(saved.layout, device=restored.device).copy_(restored)


def spike_input(op: Callable[..., torch.Tensor], spikes: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """``op(spikes, *args, **kwargs)`` with ``spikes`` (values in {0, 1}) saved for backward compactly.

    The caller guarantees that ``spikes`` is binary; nothing checks it (a check would cost a pass and a sync).
    """
    recording = torch.is_grad_enabled() and (
        spikes.requires_grad or any(isinstance(a, torch.Tensor) and a.requires_grad for a in args))
    packer = compressor()
    if packer is None or not recording or getattr(_LOCAL, "paused", False) or torch.compiler.is_compiling():
        return op(spikes, *args, **kwargs)
    device = spikes.device.type
    if torch.is_autocast_enabled(device) and spikes.is_floating_point():
        spikes = spikes.to(torch.get_autocast_dtype(device))
    address = spikes.untyped_storage().data_ptr()

    def pack(saved: torch.Tensor):
        kept = saved
        if saved.is_floating_point() and saved.untyped_storage().data_ptr() == address:
            kept = _Packed(saved, packer)
        for observe in pack_observers:
            observe(kept.payload[0] if isinstance(kept, _Packed) else kept)
        return kept

    with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
        return op(spikes, *args, **kwargs)
