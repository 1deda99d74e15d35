"""Spike inputs saved for backward as booleans or packed bits (SpikingJelly's compressors): identical gradients,
a quarter / a thirty-second of the float32 bytes."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from mixer_snn.model import sparse_mlp_tiny
from snn_engine.training import spike_memory
from snn_engine.errors import UserError
from snn_engine.neurons import make_neuron
from snn_engine.training.spike_memory import spike_input
from tests.helpers import loss_and_saved_bytes


def _grads(op, spikes, params, upstream, storage: str, autocast: bool = False):
    x = spikes.clone().requires_grad_()
    ps = [p.clone().requires_grad_() for p in params]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast), spike_memory.storage(storage):
        out = spike_input(op, x, *ps)
    (out.float() * upstream).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in ps]


CASES = {
    "linear": (lambda x, w, b: F.linear(x, w, b), [(7, 5), (7,)], (3, 4, 5)),
    "left matmul": (lambda x, w: torch.matmul(w, x), [(6, 6)], (4, 6, 10)),
    "strided linear": (lambda x, w: F.linear(x.transpose(1, 2), w), [(3, 4)], (2, 4, 5)),  # saves a strided view
    "conv": (lambda x, w: F.conv2d(x, w, padding=1), [(4, 3, 3, 3)], (2, 3, 6, 5)),
}


@pytest.mark.parametrize("storage", ["bool", "bits"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_identical_with_compact_spikes(case, dtype, storage):
    op, param_shapes, shape = CASES[case]
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(shape, generator=g) < 0.3).to(dtype)
    params = [torch.randn(s, generator=g, dtype=dtype) for s in param_shapes]
    upstream = torch.randn(op(spikes, *params).shape, generator=g, dtype=dtype)
    plain = _grads(op, spikes, params, upstream, "float")
    compact = _grads(op, spikes, params, upstream, storage)
    for a, b in zip(compact, plain):
        assert torch.equal(a, b)


@pytest.mark.parametrize("storage,dtype,per_byte", [("bool", torch.bool, 1), ("bits", torch.uint8, 8)])
def test_autocast_gradients_identical_and_spikes_saved_compactly(storage, dtype, per_byte):
    op, param_shapes, shape = CASES["linear"]
    g = torch.Generator().manual_seed(1)
    spikes = (torch.rand(shape, generator=g) < 0.5).float()
    params = [torch.randn(s, generator=g) for s in param_shapes]
    upstream = torch.randn(3, 4, 7, generator=g)
    packed = []
    spike_memory.pack_observers.append(packed.append)
    try:
        compact = _grads(op, spikes, params, upstream, storage, autocast=True)
    finally:
        spike_memory.pack_observers.remove(packed.append)
    plain = _grads(op, spikes, params, upstream, "float", autocast=True)
    for a, b in zip(compact, plain):
        assert torch.equal(a, b)
    packed = [t for t in packed if not t.is_floating_point()]  # the observers also see the weight, kept as it is
    assert len(packed) == 1 and packed[0].dtype == dtype and packed[0].numel() == -(-spikes.numel() // per_byte)


def test_sparse_mlp_saves_less_with_identical_gradients():
    neuron = functools.partial(make_neuron, kind="lif", tau=2.0, surrogate="sigmoid", alpha=4.0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = {}
    for storage in spike_memory.STORAGES:
        torch.manual_seed(3)
        model = sparse_mlp_tiny(neuron, num_classes=10, spike_storage=storage).double()
        packed = []
        spike_memory.pack_observers.append(packed.append)
        try:
            loss, saved = loss_and_saved_bytes(model, x)
        finally:
            spike_memory.pack_observers.remove(packed.append)
        loss.backward()
        spike_bytes = sum(t.numel() for t in packed if not t.is_floating_point())
        results[storage] = (saved, spike_bytes, [p.grad for p in model.parameters()])
    (bytes_float, _, grads_float), (bytes_bool, spikes, grads_bool), (bytes_bits, packed_bytes, grads_bits) = \
        results.values()
    # the tiny float64 model's saved bytes are mostly neuron and BN state: spikes are ~12% of them (measured 0.893)
    assert bytes_bits < bytes_bool < 0.9 * bytes_float
    assert spikes / 8 <= packed_bytes < spikes / 8 + 8 * 30  # 8 spikes a byte (padding: < 1 byte per tensor)
    assert bytes_bool - bytes_bits == spikes - packed_bytes  # nothing else changes
    for a, b, c in zip(grads_float, grads_bool, grads_bits):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_unknown_storage_is_one_clear_error():
    neuron = functools.partial(make_neuron, kind="lif")
    with pytest.raises(UserError, match=r"model.spike_storage='bytes'.*float, bool, bits"):
        sparse_mlp_tiny(neuron, num_classes=10, spike_storage="bytes")
