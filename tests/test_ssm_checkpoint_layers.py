"""model.checkpoint_layers: recomputing each SpikingSSM layer in backward changes nothing but memory."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from snn_engine.errors import UserError
from spiking_ssm.backbone import SpikingSSMClassifier
from spiking_ssm.neurons import make_ssm_neuron

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["sdn", "sltt"])
def test_checkpointed_layers_give_the_same_gradients_and_bn_statistics(kind):
    """checkpoint_layers recomputes each layer in backward: identical loss, gradients and BN running stats."""
    results = []
    for checkpoint in (False, True):
        torch.manual_seed(0)
        model = SpikingSSMClassifier(partial(make_ssm_neuron, kind), d_input=2, num_classes=3, d_model=8, n_layers=2,
                                     d_state=4, dropout=0.2, norm="batch", checkpoint_layers=checkpoint).double()
        x = torch.randn(4, 32, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(5)  # the same dropout masks, also when the layer is recomputed
        loss = model(x).logsumexp(-1).sum()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                        {n: b.clone() for n, b in model.named_buffers() if "running" in n}))
    (loss_a, grads_a, stats_a), (loss_b, grads_b, stats_b) = results
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-12), name
    for name in stats_a:
        assert torch.equal(stats_a[name], stats_b[name]), name


def test_checkpointed_layers_refuse_the_stateful_lif_soma():
    with pytest.raises(UserError, match="neuron=sdn or neuron=sltt"):
        SpikingSSMClassifier(partial(make_ssm_neuron, "lif"), d_input=1, d_model=8, n_layers=1, checkpoint_layers=True)
