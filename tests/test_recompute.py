"""Stage recomputation of the sparse-MLP (model.checkpoint_stages): same loss, gradients and BN statistics."""

from __future__ import annotations

import functools

import pytest
import torch
from spikingjelly.activation_based.functional import reset_net

from mixer_snn.model import sparse_mlp_tiny
from snn_engine.training import spike_memory
from snn_engine.neurons import make_neuron
from tests.helpers import loss_and_saved_bytes


def _step(checkpoint: bool, norm: str, x: torch.Tensor):
    torch.manual_seed(0)
    neuron = functools.partial(make_neuron, kind="lif", tau=2.0, surrogate="sigmoid", alpha=4.0)
    model = sparse_mlp_tiny(neuron, num_classes=10, norm=norm, checkpoint_stages=checkpoint).double().train()
    loss, saved = loss_and_saved_bytes(model, x)
    loss.backward()
    reset_net(model)
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "tracked" in k}
    return loss.detach(), [p.grad for p in model.parameters()], buffers, saved


@pytest.mark.parametrize("norm", ["bn", "tebn"])
def test_checkpointed_stages_equal_plain_stages(norm):
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    loss, grads, stats, plain_bytes = _step(False, norm, x)
    loss_c, grads_c, stats_c, checkpoint_bytes = _step(True, norm, x)
    assert torch.equal(loss, loss_c)
    for a, b in zip(grads_c, grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    assert stats.keys() == stats_c.keys() and any("tracked" in k for k in stats)
    for key in stats:
        torch.testing.assert_close(stats_c[key], stats[key], rtol=1e-12, atol=1e-14)  # updated once, not twice
    assert checkpoint_bytes < 0.5 * plain_bytes


@pytest.mark.parametrize("storage", ["float", "bool", "bits"])
def test_checkpointed_stages_compress_their_spike_inputs_and_pause_spike_saving(storage, monkeypatch):
    """Inside a recomputed stage nothing goes through spike_memory's hooks (the checkpoint must see every saved
    tensor); the spike inputs of stages 1-3 are kept through the storage's SpikingJelly compressor; the gradients
    equal those of the plain model."""
    compressed: list[torch.Size] = []
    chosen = spike_memory.COMPRESSORS[storage]
    if chosen is not None:
        class Counting(type(chosen)):
            def compress(self, x):
                compressed.append(x.shape)
                return super().compress(x)

        monkeypatch.setitem(spike_memory.COMPRESSORS, storage, Counting())
    packed: list[torch.Tensor] = []
    monkeypatch.setattr(spike_memory, "pack_observers", [packed.append])
    x = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = {}
    for checkpoint in (False, True):
        torch.manual_seed(0)
        neuron = functools.partial(make_neuron, kind="if", surrogate="sigmoid", alpha=4.0)
        model = sparse_mlp_tiny(neuron, num_classes=10, checkpoint_stages=checkpoint, spike_storage=storage).double()
        packed.clear()
        compressed.clear()
        model(x).square().mean().backward()
        grads[checkpoint] = [p.grad for p in model.parameters()]
        if checkpoint or storage == "float":
            assert packed == []
        else:
            spikes = [t for t in packed if not t.is_floating_point()]
            assert len(spikes) > 20 and all(t.dtype == (torch.bool if storage == "bool" else torch.uint8) for t in spikes)
    assert len(compressed) == (0 if storage == "float" else 3)  # recomputed run: the inputs of stages 1-3, once each
    for a, b in zip(grads[True], grads[False]):
        assert torch.equal(a, b)
