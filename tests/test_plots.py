"""Tests of snn_engine.measure.probe (spikes and membranes of one input) and snn_engine.measure.plots (evaluation PNGs), on a
tiny sparse-MLP and a tiny SpikingSSM classifier: spikes against an independent forward hook, membranes
against an exact iterative LIF (float64), rate along time, restored flags, and valid PNG files."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.neuron import BaseNode

import mixer_snn
from snn_engine.errors import UserError
from snn_engine.measure.metrics import FiringRateMeter, is_spiking
from snn_engine.neurons import make_neuron
from snn_engine.measure.plots import plot_firing_rates, plot_membranes, plot_raster, plot_rate_along_time, write_eval_figures
from snn_engine.measure.probe import record_activity
from spiking_ssm.backbone import SpikingSSMClassifier
from spiking_ssm.somas import make_ssm_neuron

pytestmark = pytest.mark.usefixtures("one_thread")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def tiny_mlp() -> torch.nn.Module:
    torch.manual_seed(0)
    return mixer_snn.create_model("sparse_mlp_tiny", partial(make_neuron), num_classes=10, T=2).double()


def tiny_ssm(kind: str = "lif") -> torch.nn.Module:
    torch.manual_seed(0)
    model = SpikingSSMClassifier(partial(make_ssm_neuron, kind), d_input=3, num_classes=4, d_model=8, n_layers=2,
                                 d_state=4, bidirectional=False, norm="layer")
    return model.double()


def mlp_input() -> torch.Tensor:
    return 2.0 * torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def ssm_input(length: int = 12) -> torch.Tensor:
    return 3.0 * torch.randn(2, length, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def hooked_forward(model, x):
    """Independent reference: (input currents, output spikes) of every spiking layer's first call, sample 0."""
    seen, handles = {}, []
    for name, module in model.named_modules():
        if is_spiking(module):
            def hook(module, inputs, output, name=name):
                seen.setdefault(name, (inputs[0][:, 0].detach().clone(), output[:, 0].detach().clone()))
            handles.append(module.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    functional.reset_net(model)
    with torch.no_grad():
        model(x[:1])
    functional.reset_net(model)
    model.train(was_training)
    for handle in handles:
        handle.remove()
    return seen


def iterative_lif(currents: torch.Tensor, neuron: BaseNode) -> torch.Tensor:
    """Post-reset membrane of SpikingJelly's LIF (hard reset) step by step, ``[T, ...]`` -> ``[T, ...]``; for the
    engine's LeakLIFNode (SpikingSSM's ``lif``) the paper's ``leak * v + x``."""
    leak = getattr(neuron, "leak", None)
    v_reset, tau = float(neuron.v_reset), float(getattr(neuron, "tau", 0.0))
    v = torch.full_like(currents[0], v_reset)
    out = []
    for t in range(currents.shape[0]):
        if leak is not None:
            h = leak * v + currents[t]
        elif neuron.decay_input:
            h = v + (currents[t] - (v - v_reset)) / tau
        else:
            h = v - (v - v_reset) / tau + currents[t]
        s = (h >= neuron.v_threshold).to(h.dtype)
        v = h * (1 - s) + v_reset * s
        out.append(v)
    return torch.stack(out)


def check_activity(model, x, time_length: int, max_neurons: int) -> dict:
    reference = hooked_forward(model, x)
    activity = record_activity(model, x, max_neurons=max_neurons, seed=3)
    assert set(activity) == set(reference) and activity
    checked_membrane = False
    for name, record in activity.items():
        currents, out = reference[name]
        flat = out.reshape(out.shape[0], -1)
        n = min(max_neurons, flat.shape[1])
        spikes, index = record["spikes"], record["neurons"]
        assert spikes.shape == (time_length, n) and index.shape == (n,) and len(set(index.tolist())) == n
        assert set(spikes.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(spikes, flat[:, index])
        assert record["rate_along_time"].shape == (time_length,)
        torch.testing.assert_close(record["rate_along_time"].double(), flat.double().mean(1))
        module = dict(model.named_modules())[name]
        assert record["membrane"] is not None and record["membrane"].shape == (time_length, n)
        if not checked_membrane:  # the first layer: exact iterative LIF on the captured currents
            expected = iterative_lif(currents.reshape(currents.shape[0], -1)[:, index], module)
            torch.testing.assert_close(record["membrane"], expected, rtol=1e-12, atol=1e-12)
            checked_membrane = True
    again = record_activity(model, x, max_neurons=max_neurons, seed=3)
    assert all(torch.equal(again[k]["neurons"], activity[k]["neurons"]) for k in activity)  # seeded
    return activity


def flags(model):
    stored = [m.store_v_seq for m in model.modules() if isinstance(m, BaseNode)]
    return model.training, [m.training for m in model.modules()], stored


def test_record_activity_sparse_mlp():
    model = tiny_mlp().train()
    first = next(m for m in model.modules() if isinstance(m, BaseNode))
    first.store_v_seq = True  # a neuron that already stored v_seq keeps doing so
    before = flags(model)
    activity = check_activity(model, mlp_input(), time_length=2, max_neurons=16)
    assert flags(model) == before and first.store_v_seq
    assert sum(float(a["spikes"].sum()) for a in activity.values()) > 0  # the input drives some spikes


def test_record_activity_spiking_ssm_lif():
    model = tiny_ssm("lif").eval()
    before = flags(model)
    activity = check_activity(model, ssm_input(12), time_length=12, max_neurons=64)
    assert all(a["spikes"].shape[1] == 8 for a in activity.values())  # a neuron is a channel: all 8 kept
    assert flags(model) == before


def test_record_activity_sdn_membrane_and_errors():
    model = tiny_ssm("sdn")
    x = ssm_input(10)
    activity = record_activity(model, x, max_neurons=5)
    reference = hooked_forward(model, x)
    for name, record in activity.items():
        spikes, membrane = record["spikes"], record["membrane"]
        assert membrane is not None and membrane.shape == spikes.shape == (10, 5)
        assert torch.all(membrane[spikes == 1] == 0) and torch.all(membrane < 1)  # hard reset, below threshold
        assert torch.equal(spikes, reference[name][1].reshape(10, -1)[:, record["neurons"]])
    with pytest.raises(UserError):
        record_activity(model, x, max_neurons=0)
    with pytest.raises(UserError):
        record_activity(torch.nn.Linear(3, 2), torch.zeros(1, 3))


def assert_png(path, min_bytes: int = 4000):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > min_bytes, (path, len(data))


def test_write_eval_figures_mlp(tmp_path):
    model = tiny_mlp().eval()
    x = mlp_input()
    with FiringRateMeter(model) as meter:
        model(x)
        functional.reset_net(model)
        rates = meter.compute(torch.device("cpu"))
    paths = write_eval_figures(model, x, tmp_path / "run", rates)
    assert set(paths) == {"firing_rates", "raster", "membrane", "rate_along_time"}
    for name, path in paths.items():
        assert path == tmp_path / "run" / "figures" / f"{name}.png"
        assert_png(path)
    assert not model.training


def test_write_eval_figures_ssm_and_plot_functions(tmp_path):
    model = tiny_ssm("lif")
    paths = write_eval_figures(model, ssm_input(40), tmp_path, {"a": 0.1, "b": 0.3, "overall": 0.2},
                               time_label="sequence position")
    assert all(p.parent == tmp_path / "figures" for p in paths.values())
    for path in paths.values():
        assert_png(path)
    many = {f"blocks.{i}.lif": 0.01 * i for i in range(30)}  # horizontal bars
    assert_png(plot_firing_rates(many, tmp_path / "many.png"))
    spikes = (torch.rand(20, 10, generator=torch.Generator().manual_seed(0)) > 0.7).float()
    assert_png(plot_raster(spikes, tmp_path / "raster.png", title="t"))
    assert_png(plot_membranes(torch.randn(20, 10).numpy(), tmp_path / "v.png", threshold=0.5, n_traces=3))
    assert_png(plot_rate_along_time([0.1, 0.2, 0.0], tmp_path / "r.png", xlabel="sequence position"))
    with pytest.raises(UserError):
        plot_raster(torch.zeros(3), tmp_path / "bad.png")
    with pytest.raises(UserError):
        plot_firing_rates({"overall": 0.1}, tmp_path / "bad.png")


def test_sltt_membranes_equal_the_bptt_lif_ones():
    """SLTT keeps SpikingJelly's store_v_seq convention: same forward, so the same post-reset membranes as LIF."""
    lif, sltt = tiny_ssm("lif"), tiny_ssm("sltt")
    sltt.load_state_dict(lif.state_dict())
    x = ssm_input()
    a, b = record_activity(lif, x, max_neurons=8), record_activity(sltt, x, max_neurons=8)
    assert a.keys() == b.keys()
    for name in a:
        assert b[name]["membrane"] is not None
        assert torch.equal(a[name]["spikes"], b[name]["spikes"])
        assert torch.allclose(a[name]["membrane"], b[name]["membrane"], atol=1e-12)
    assert all(not m.store_v_seq for m in sltt.modules() if hasattr(m, "store_v_seq"))
