"""Spike inputs saved for backward as booleans: identical gradients, a quarter of the bytes."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F

from mixer_snn.model import sparse_mlp_tiny
from snn_engine import spike_memory
from snn_engine.neurons import make_neuron
from snn_engine.spike_memory import spike_input
from tests.helpers import loss_and_saved_bytes


@pytest.fixture
def compaction():
    yield spike_memory
    spike_memory.set_enabled(True)


def _grads(op, spikes, params, upstream, compact: bool, autocast: bool = False):
    spike_memory.set_enabled(compact)
    x = spikes.clone().requires_grad_()
    ps = [p.clone().requires_grad_() for p in params]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = spike_input(op, x, *ps)
    (out.float() * upstream).sum().backward()
    return [out.detach(), x.grad] + [p.grad for p in ps]


CASES = {
    "linear": (lambda x, w, b: F.linear(x, w, b), [(7, 5), (7,)], (3, 4, 5)),
    "left matmul": (lambda x, w: torch.matmul(w, x), [(6, 6)], (4, 6, 10)),
    "conv": (lambda x, w: F.conv2d(x, w, padding=1), [(4, 3, 3, 3)], (2, 3, 6, 5)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_gradients_identical_with_compact_spikes(case, dtype, compaction):
    op, param_shapes, shape = CASES[case]
    g = torch.Generator().manual_seed(0)
    spikes = (torch.rand(shape, generator=g) < 0.3).to(dtype)
    params = [torch.randn(s, generator=g, dtype=dtype) for s in param_shapes]
    upstream = torch.randn(op(spikes, *params).shape, generator=g, dtype=dtype)
    plain = _grads(op, spikes, params, upstream, compact=False)
    compact = _grads(op, spikes, params, upstream, compact=True)
    for a, b in zip(compact, plain):
        assert torch.equal(a, b)


def test_autocast_gradients_identical_and_spikes_saved_as_bool(compaction):
    op, param_shapes, shape = CASES["linear"]
    g = torch.Generator().manual_seed(1)
    spikes = (torch.rand(shape, generator=g) < 0.5).float()
    params = [torch.randn(s, generator=g) for s in param_shapes]
    upstream = torch.randn(3, 4, 7, generator=g)
    packed = []
    spike_memory.pack_observers.append(packed.append)
    try:
        compact = _grads(op, spikes, params, upstream, compact=True, autocast=True)
    finally:
        spike_memory.pack_observers.remove(packed.append)
    plain = _grads(op, spikes, params, upstream, compact=False, autocast=True)
    for a, b in zip(compact, plain):
        assert torch.equal(a, b)
    assert len(packed) == 1 and packed[0].dtype == torch.bool and packed[0].numel() == spikes.numel()


def test_sparse_mlp_saves_less_with_identical_gradients(compaction):
    neuron = functools.partial(make_neuron, kind="lif", tau=2.0, surrogate="sigmoid", alpha=4.0)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    results = {}
    for compact in (False, True):
        spike_memory.set_enabled(compact)
        torch.manual_seed(3)
        model = sparse_mlp_tiny(neuron, num_classes=10).double()
        loss, saved = loss_and_saved_bytes(model, x)
        loss.backward()
        results[compact] = (saved, [p.grad for p in model.parameters()])
    (bytes_plain, grads_plain), (bytes_compact, grads_compact) = results[False], results[True]
    assert bytes_compact < 0.8 * bytes_plain
    for a, b in zip(grads_compact, grads_plain):
        assert torch.equal(a, b)
