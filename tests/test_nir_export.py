"""NIR export of the folded sparse-MLP (mixer_snn.nir_export): the written graph, read back and simulated by
SpikingJelly's import_from_nir (snn_engine.measure.nir_replay), gives the unfolded model's eval logits in float64; only the
supported node types and SpikingJelly's neuron conventions appear; what NIR cannot express fails with a UserError."""

from __future__ import annotations

import numpy as np
import pytest

nir = pytest.importorskip("nir", reason="NIR export needs the nir extra (uv sync --extra nir)")
pytest.importorskip("nirtorch", reason="reading NIR back (import_from_nir) needs the nir extra (uv sync --extra nir)")
import torch
from torch import nn

from mixer_snn.fold import fold_model
from mixer_snn.nir_export import NODE_TYPES, export_nir
from snn_engine.errors import UserError
from snn_engine.measure.metrics import FiringRateMeter
from snn_engine.measure.nir_replay import logit_difference, replay_nir
from tests.mixer_fixtures import eval_logits
from tests.mixer_fixtures import images as mixer_images
from tests.mixer_fixtures import trained_like as mixer_trained_like

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(img_size=16, patch_size=2)


def trained_like(seed: int = 0, **kw):
    return mixer_trained_like(seed, **{**SMALL, **kw})


def images(batch: int = 3) -> torch.Tensor:
    return mixer_images(batch, size=16)


@pytest.mark.parametrize("spe", [True, False], ids=["spe", "mlp_s"])
@pytest.mark.parametrize("axis", ["token", "channel"])
def test_written_graph_reproduces_the_model_logits(tmp_path, spe, axis):
    model = trained_like(spe=spe, channel_bn_axis=axis)
    x = images()
    with FiringRateMeter(model) as meter:
        expected = eval_logits(model, x)
    rate = meter.compute(torch.device("cpu"))["overall"]
    assert 0.02 < rate < 0.6, f"degenerate test: firing rate {rate}"
    assert expected.std() > 1e-3
    path = tmp_path / "model.nir"
    export_nir(model, path)
    graph = nir.read(str(path))
    assert int(graph.metadata["time_steps"]) == 3
    got = replay_nir(path, x, T=3, dt=1e-4)
    assert got.shape == expected.shape == (3, 3, 5)
    assert (got - expected).abs().max().item() < 1e-9
    assert logit_difference(model, path, x, T=3, dt=1e-4) < 1e-9


@pytest.mark.parametrize("kind,position_bn,head_lif", [("plif", "replicate", False), ("if", "scale", False),
                                                       ("lif", "threshold", True)])
def test_other_neurons_position_bn_treatments_and_head_lif(kind, position_bn, head_lif):
    model = trained_like(seed=3, kind=kind, head_lif=head_lif)
    x = images()
    graph = export_nir(model, position_bn=position_bn, dt=1e-3)
    got = replay_nir(graph, x, T=3, dt=1e-3)
    assert (got - eval_logits(model, x)).abs().max().item() < 1e-9


def test_graph_layout_node_types_and_spikingjelly_lif_convention():
    model = trained_like()
    dt = 1e-4
    graph = export_nir(model, dt=dt)
    assert {type(n) for n in graph.nodes.values()} <= set(NODE_TYPES)
    for name in ("input", "stem.conv", "stem.flat", "s0.lif", "s1.embed.h", "s0.b0.token.mix_h.proj",
                 "s0.b0.channel.fc1", "s0.b0.lif_ch", "head", "output"):
        assert name in graph.nodes, name
    assert isinstance(graph.nodes["stem.conv"], nir.Conv2d) and isinstance(graph.nodes["s1.embed.h"], nir.Linear)
    lifs = [n for n in graph.nodes.values() if isinstance(n, nir.LIF)]
    assert len(lifs) > 20
    for node in lifs:  # default LIF: tau=2 steps, decay_input -> r=1, hard reset to 0, uniform threshold 1
        assert np.allclose(node.tau, 2 * dt) and np.allclose(node.r, 1.0)
        assert np.all(node.v_leak == 0) and np.all(node.v_reset == 0) and np.all(node.v_threshold == 1.0)
    # the stage-0 anchor h feeds the stage neuron and both block neurons through plain edges (NIR sums inputs)
    assert {dst for src, dst in graph.edges if src == "stem.flat"} == {"s0.lif", "s0.b0.lif_tok", "s0.b0.lif_ch"}
    assert graph.metadata["time_steps"] == 3 and graph.metadata["source_model"] == "SparseMLPSNN"
    assert "direct" in graph.metadata["encoding"]
    folded = export_nir(fold_model(model), dt=dt)  # an already-folded model exports the same weights
    assert np.array_equal(folded.nodes["s2.b0.channel.fc1"].weight, graph.nodes["s2.b0.channel.fc1"].weight)


def test_non_exportable_models_fail_clearly():
    with pytest.raises(UserError, match="tebn.*time-invariant"):
        export_nir(trained_like(norm="tebn"))
    with pytest.raises(UserError, match="soft reset"):
        export_nir(trained_like(v_reset=None))
    with pytest.raises(UserError, match=r"no reshape/transpose.*max_dense_params"):
        export_nir(trained_like(), max_dense_params=1000)
    with pytest.raises(UserError, match="SparseMLPSNN"):
        export_nir(nn.Linear(2, 2))
