"""model.checkpoint_layers: recomputing each SpikingSSM layer in backward (SpikingJelly's memopt) changes nothing
but memory, for every soma, SpikingJelly's stateful LIF included."""

from __future__ import annotations

from functools import partial

import pytest
import torch

from spikingjelly.activation_based.functional import reset_net

from spiking_ssm.backbone import SpikingSSMClassifier
from spiking_ssm.somas import make_ssm_neuron

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("kind", ["sdn", "sltt", "lif"])
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
        membranes = [m.v.clone() for m in model.modules() if isinstance(getattr(m, "v", None), torch.Tensor)]
        reset_net(model)
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None},
                        {n: b.clone() for n, b in model.named_buffers() if "running" in n}, membranes))
    (loss_a, grads_a, stats_a, v_a), (loss_b, grads_b, stats_b, v_b) = results
    assert torch.equal(loss_a, loss_b)
    assert len(v_a) == len(v_b) == (2 if kind == "lif" else 0)  # the LIF state after the step is committed once
    for a, b in zip(v_a, v_b):
        assert torch.equal(a, b)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], atol=1e-12), name
    for name in stats_a:
        assert torch.equal(stats_a[name], stats_b[name]), name
