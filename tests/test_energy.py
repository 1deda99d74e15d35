"""Energy views (issue 25): our counts against SpikingJelly's counters where both apply, the unseen lines, the
estimators chosen and the bad-name error, the crossover, the table, the figures and NeuroBench's metrics."""

from __future__ import annotations

import sys

import pytest
import torch
from omegaconf import OmegaConf
from spikingjelly.activation_based import functional, layer, neuron
from spikingjelly.activation_based.op_counter import (
    DispatchCounterMode,
    MACCounter,
    ModuleCounterMode,
    NeuromorphicMemoryAccessCounter,
)
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from snn_engine.measure import energy_estimators as est
from snn_engine.measure.energy import crossover, energy_report, format_energy_table
from snn_engine.measure.energy_plots import write_energy_figures
from snn_engine.measure.energy_unseen import UnseenCounter, sees_synaptic_modules
from snn_engine.errors import UserError
from snn_engine.training.evaluation import evaluate_model
from snn_engine.measure.ops import OpCounter
from snn_engine.measure.report import spike_report
from snn_engine.measure.twins import ann_twin, int_unit_costs, silenced
from spiking_ssm.backbone import SpikingSSMClassifier
from spiking_ssm.somas import make_ssm_neuron
from tests.mixer_fixtures import images, trained_like

pytestmark = pytest.mark.usefixtures("one_thread")
PNG = b"\x89PNG\r\n\x1a\n"
CPU = torch.device("cpu")


def loader_of(x: torch.Tensor, batch: int = 2) -> DataLoader:
    return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=batch)


@pytest.fixture(scope="module")
def mixer_report():
    """A sparse-MLP evaluated as spike_report does (ops + rates on 4 images), then every view on 2 of them."""
    torch.set_num_threads(1)
    model = trained_like(0)
    loader = loader_of(images(4))
    with OpCounter(model, time_steps=model.T) as counter:
        val = evaluate_model(model, loader, CPU, detailed=True)
    ops, rate = counter.compute(), val["spikes"]["overall"]["rate"]
    settings = {"estimators": ["simple", "lemaire"], "samples": 2, "qann_bits": [8, 32]}
    report = energy_report(settings, model, model, loader, CPU, None, ops, rate)
    return model, loader, ops, rate, report


def test_views_agree_with_the_sop_counts_and_the_crossover_model(mixer_report):
    model, loader, ops, rate, report = mixer_report
    assert set(report) >= {"sop", "memory", "ann", "qann", "crossover"} and report["unit"] == "image"
    total = ops["total"]
    assert report["sop"]["snn"]["total_pj"] == pytest.approx(total["energy_pj"])  # today's numbers, unchanged
    assert report["ann"]["sop"]["total_pj"] == pytest.approx(total["ann_energy_pj"])
    assert report["qann"]["int8"]["sop"]["total_pj"] == pytest.approx(total["ann_mac"] * 0.23)  # 0.2 + 0.03 pJ
    assert report["qann"]["int32"]["sop"]["total_pj"] == pytest.approx(total["ann_mac"] * 3.2)
    assert report["weight_bits"] == 64 and report["qann_bits"] == [8, 32]  # float64 weights: no 64-bit twin
    assert list(report["memory"]) == ["simple", "lemaire"] and report["memory_samples"] == 2
    for name, entry in report["memory"].items():
        parts = sum(entry[k] for k in est.CATEGORIES)
        assert entry["total_pj"] == pytest.approx(parts)
        assert entry["total_pj"] >= entry["spikingjelly"]["total_pj"] > 0
        assert entry["weights_pj"] > entry["compute_pj"]  # memory traffic dominates, the point of the view
        assert 0 < entry["zero_rate_pj"] < entry["total_pj"]
    simple = report["memory"]["simple"]
    assert simple["state_pj"] > 0 and simple["unseen"]["weights"]["bytes"] > 0  # LIF states; token projections
    assert "compute" in report["memory"]["lemaire"]["unseen"]  # Lemaire omits BN: ours to add
    # the affine model: at the crossover the SNN costs exactly the baseline
    for baseline, entries in report["crossover"].items():
        for view, r in entries.items():
            if view == "sop":
                e0, e1, r0 = report["sop"]["zero_rate_pj"], report["sop"]["snn"]["total_pj"], rate
            else:
                e0, e1, r0 = simple["zero_rate_pj"] if view == "simple" else report["memory"][view]["zero_rate_pj"], \
                    report["memory"][view]["total_pj"], report["memory_firing_rate"]
            width = baseline.removeprefix("qann_")
            target = report["ann"][view] if baseline == "ann" else report["qann"][width][view]
            if r:
                assert e0 + r / r0 * (e1 - e0) == pytest.approx(target["total_pj"])
            else:
                assert r == 0 and e0 >= target["total_pj"]


def test_memory_rate_is_the_rate_of_the_samples_measured(mixer_report):
    model, loader, _, _, report = mixer_report
    with OpCounter(model, time_steps=model.T):  # the meter needs nothing else; the first two images only
        two = evaluate_model(model, loader, CPU, limit_batches=1)
    assert report["memory_firing_rate"] == pytest.approx(two["firing_rate"]["overall"], rel=1e-9)


def test_crossover_formula():
    assert crossover(0.1, 10.0, 30.0, 50.0) == pytest.approx(0.2)  # 10 + r / 0.1 * 20 = 50
    assert crossover(0.1, 10.0, 30.0, 5.0) == 0.0  # a silent network already costs more than the baseline
    assert crossover(0.0, 10.0, 10.0, 50.0) is None  # no spikes seen: the energy does not depend on the rate
    assert int_unit_costs(8) == (0.03, 0.2) and int_unit_costs(16) == pytest.approx((0.06, 0.8))


def test_table_and_figures(mixer_report, tmp_path):
    report = mixer_report[-1]
    table = format_energy_table(report)
    for text in ("papers' convention", "sop", "simple", "lemaire", "QANN int8", "QANN int32", "SNN wins below",
                 "not seen by its counters"):
        assert text in table
    paths = write_energy_figures(report, tmp_path)
    assert set(paths) == {"energy", "energy_vs_rate"}
    for path in paths.values():
        assert open(path, "rb").read(8) == PNG


def test_estimator_names_and_the_bad_name_error():
    assert est.check_names(["lemaire", "simple", "lemaire"]) == ("lemaire", "simple")
    assert est.check_names([]) == ()
    with pytest.raises(UserError) as error:
        est.check_names(["simple", "horowitz"])
    message = str(error.value)
    assert "\n" not in message and "'horowitz'" in message
    assert all(name in message for name in ("simple", "lemaire", "neuromc", "spikesim"))
    cfg = OmegaConf.create({"energy": {"estimators": ["nope"]}, "mfi": False})
    with pytest.raises(UserError, match="valid names"):  # before any evaluation: no model or loader is touched
        spike_report(cfg, None, None, CPU, None, None, None, True)


def test_bad_widths_and_a_missing_neurobench_are_one_line(mixer_report, monkeypatch):
    model, loader, ops, rate, _ = mixer_report
    for widths in (["eight"], [0]):
        with pytest.raises(UserError, match="energy.qann_bits|width >= 1"):
            energy_report({"estimators": [], "qann_bits": widths}, model, model, loader, CPU, None, ops, rate)
    from snn_engine.measure import neurobench_metrics

    monkeypatch.setitem(sys.modules, "neurobench.benchmarks", None)
    with pytest.raises(UserError, match="uv sync --extra neurobench"):
        neurobench_metrics.neurobench_report(model, loader, CPU, None, ops)


def test_other_estimators_run_on_the_sparse_mlp():
    model, x = trained_like(0), images(1)
    neuromc, spikesim = est.run("neuromc", model, (x,)), est.run("spikesim", model, (x,))
    assert neuromc["compute_pj"] > 0 and neuromc["other_pj"] > 0  # its memory hierarchy, not split
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())  # SpikeSim sees Conv2d stages only
    assert spikesim["compute_pj"] > 0 and spikesim["counts"]["stage_count"] == convs == 10
    assert est.price_unseen("neuromc", {}) is None and est.requantize("spikesim", spikesim, 8, 32) is None


def test_memory_counter_equals_our_counts_and_soma_rule():
    """SpikingJelly's memory counter reads one weight per synaptic operation on spikes (our AC) and every product
    on real input (our MAC, on an unpadded conv); its BaseNode rule (a read and a write per state value and step)
    is our soma rule."""
    torch.manual_seed(0)
    T, B = 3, 2
    net = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 4, 3)), neuron.LIFNode(step_mode="m", tau=1.5, v_threshold=0.2),
        layer.SeqToANNContainer(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2, bias=False)),
        neuron.LIFNode(step_mode="m", tau=1.5, v_threshold=0.05),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(6 * 3 * 3, 5, bias=False)),
    ).eval()
    x = torch.rand(T, B, 2, 8, 8) * 3
    with UnseenCounter(net, time_steps=T) as unseen, torch.no_grad():
        net(x)
    functional.reset_net(net)
    ours = unseen.ops.compute()["layers"]
    memory = NeuromorphicMemoryAccessCounter()
    with torch.no_grad(), ModuleCounterMode([memory], model=net):
        net(x)
    functional.reset_net(net)
    scopes = memory.get_counts()
    for name in ("0.0", "2.0", "4.1"):
        theirs = scopes[f"Sequential.{name}"]["weight_read_bytes"]
        assert theirs == (ours[name]["ac"] + ours[name]["mac"]) * B * 4 > 0
    assert ours["2.0"]["input"] == "spikes" and ours["0.0"]["input"] == "real"
    somas = unseen.lines(sees_soma=lambda m: False)
    state = scopes["Global"]["neuron_state_read_bytes"] + scopes["Global"]["neuron_state_write_bytes"]
    assert sum(r["bytes"] for r in somas.values() if r["kind"] == "somas") * B == state > 0
    assert not any(r["kind"] == "somas" for r in unseen.lines().values())  # BaseNode: SimpleEnergy prices it


def test_ann_twin_macs_equal_our_ann_count():
    """Our ANN convention (dense count, one pass) equals SpikingJelly's MAC counter on the real ANN twin (no padded
    convs here: SpikingJelly counts the products with padded zeros, we do not)."""
    model, x = trained_like(0, spe=False), images(2)
    with OpCounter(model, time_steps=model.T) as counter, torch.no_grad():
        model(x)
    functional.reset_net(model)
    twin = ann_twin(model, (x,))
    assert twin.T == 1 and not any(isinstance(m, neuron.BaseNode) for m in twin.modules())
    macs = MACCounter()
    with torch.no_grad(), DispatchCounterMode([macs]):
        twin(x)
    assert counter.compute()["total"]["ann_mac"] * 2 == macs.get_total() > 0
    with silenced(model), torch.no_grad():
        assert model(x).shape[0] == model.T  # a silenced network still runs
    with silenced(model), UnseenCounter(model, model.T) as unseen, torch.no_grad():  # silencing hooks first
        model(x)
    functional.reset_net(model)
    assert unseen.firing_rate() == 0.0


@pytest.mark.parametrize("kind", ["sdn", "lif"])
def test_spiking_ssm_unseen_lines(kind):
    torch.manual_seed(0)
    B, L, H, N = 2, 12, 6, 4
    model = SpikingSSMClassifier(lambda: make_ssm_neuron(kind), d_input=1, num_classes=3, d_model=H, n_layers=2,
                                 d_state=N, bidirectional=False).double().eval()
    with UnseenCounter(model) as unseen, torch.no_grad():
        model(torch.randn(B, L, dtype=torch.float64) * 3)
    functional.reset_net(model)
    simple = unseen.lines()
    for k in range(2):
        name = f"backbone.blocks.{k}.layer"
        assert simple[f"compute:{name}"]["mac"] == L * H * (4 * N + 2)  # S4D recurrence, D and threshold
        assert simple[f"compute:{name}.glu"]["mac"] == L * H
        assert simple[f"recurrent_state:{name}"]["bytes"] == 2 * L * H * N * 8  # N reals read and written, float64
        assert simple[f"weights:{name}"]["bytes"] == L * H * (4 * N + 2) * 8
        assert (f"somas:{name}.neuron" in simple) == (kind == "sdn")  # SpikingJelly's LIF is a BaseNode
        if kind == "sdn":
            assert simple[f"somas:{name}.neuron"]["bytes"] == 2 * L * H * 8
    lemaire = unseen.lines(sees_compute=sees_synaptic_modules)
    assert "compute:backbone.blocks.0.norm" in lemaire and "compute:backbone.blocks.0.norm" not in simple
    entry = est.run("simple", model, (torch.randn(1, L, dtype=torch.float64),))
    assert entry["compute_pj"] > 0 and entry["weights_pj"] > 0  # the mixing convs' weight reads


def test_neurobench_agrees_with_our_counts():
    """NeuroBench's activation sparsity is 1 - our firing rate; its effective ACs are our ACs on the layers its
    hooks see, and with the token projections it cannot see (a bmm inside TokenMixing) they are all our ACs."""
    pytest.importorskip("neurobench", reason="the neurobench extra: uv sync --extra neurobench")
    from snn_engine.measure.neurobench_metrics import format_neurobench, neurobench_report

    model = trained_like(0)
    loader = loader_of(images(4))
    with OpCounter(model, time_steps=model.T) as counter:
        val = evaluate_model(model, loader, CPU, detailed=True)
    ops = counter.compute()
    nb = neurobench_report(model, loader, CPU, None, ops)
    metrics = nb["metrics"]
    assert metrics["ActivationSparsity"] == pytest.approx(1 - val["spikes"]["overall"]["rate"], abs=1e-12)
    assert metrics["SynapticOperations/Effective_ACs"] == pytest.approx(nb["ours"]["ac_on_hooked_layers"], abs=1)
    token = nb["not_seen"]["TokenMixing"]["ac"]
    assert token > 0 and metrics["SynapticOperations/Effective_ACs"] + token == pytest.approx(ops["total"]["ac"], abs=1)
    assert metrics["ParameterCount"] == sum(p.numel() for p in model.parameters())
    assert "BatchNorm1d" in nb["not_seen"] and "not seen by NeuroBench" in format_neurobench(nb)


@pytest.mark.slow
def test_eval_writes_every_view_and_neurobench_to_the_summary(tmp_path):
    """``eval.py`` end to end on a tiny sparse-MLP checkpoint: the views and NeuroBench land in summary.json, the
    figures exist, and the printed report has the energy table."""
    pytest.importorskip("neurobench", reason="the neurobench extra: uv sync --extra neurobench")
    from hydra import compose, initialize_config_dir

    from snn_engine import run
    from tests.helpers import REPO, TINY, compose_train, read_summary

    run.train(compose_train(TINY + ["trainer.epochs=1", "trainer.limit_train_batches=2", "model.dim=6",
                                    "dataset.val_size=32"]), tmp_path / "train")
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"ckpt={tmp_path / 'train' / 'checkpoints' / 'last.pt'}",
                                                     "logger=none", "neurobench=true", "energy.samples=2"])
    run.evaluate(cfg, tmp_path / "eval", [])
    summary = read_summary(tmp_path / "eval")
    energy = summary["energy"]
    assert {"sop", "memory", "ann", "qann", "crossover"} <= set(energy) and set(energy["memory"]) == {"simple",
                                                                                                     "lemaire"}
    assert energy["sop"]["snn"]["total_pj"] == pytest.approx(summary["ops"]["total"]["energy_pj"])
    assert set(energy["qann"]) == {"int8", "int32"} and "simple" in energy["crossover"]["ann"]
    assert summary["neurobench"]["metrics"]["ActivationSparsity"] == pytest.approx(
        summary["spikes"]["overall"]["sparsity"], abs=1e-9)
    for name in ("energy", "energy_vs_rate"):
        assert open(summary["figures"][name], "rb").read(8) == PNG
    assert "SNN wins below" in format_energy_table(energy)


def test_generate_replay_energy_per_token():
    """The streaming step's memory-inclusive energy: SpikingJelly's SimpleEnergy on the replayed decoding steps plus
    our lines, priced in its units; the replay does not change the spikes the paper's convention counts."""
    from spiking_ssm.lm.language_model import SpikingSSMLanguageModel
    from spiking_ssm.lm.stream_energy import replay_energy, streaming_lines
    from spiking_ssm.lm.streaming import StreamingLanguageModel

    torch.manual_seed(0)
    H, N = 16, 8
    model = SpikingSSMLanguageModel(lambda: make_ssm_neuron("sdn"), vocab_size=40, d_model=H, n_layers=2, d_state=N,
                                    cutoffs=[8, 20], div_val=2).eval()
    prompt, new = [1, 2, 3], [4, 25, 9, 0, 33]
    lines = streaming_lines(model, torch.tensor([4]))
    assert lines["s4d:0"]["mac"] == H * (4 * N + 2) and lines["s4d_state:1"]["bytes"] == 2 * H * N * 4
    assert lines["soma:0"]["bytes"] == 2 * H * 4 and lines["norm:0"]["mac"] == 2 * H  # LayerNorm: no SJ rule
    stream = StreamingLanguageModel(model)
    stream.prefill(torch.tensor([prompt]))
    stream.reset_counters()
    for token in new:
        stream.step(torch.tensor([token]))
    paper = stream.stats()
    energy = replay_energy(model, prompt, new)
    parts = sum(energy[f"{k}_pj_per_token"] for k in ("compute", "weights", "state"))
    assert energy["memory_energy_pj_per_token"] == pytest.approx(parts)
    assert energy["memory_energy_pj_per_token"] == pytest.approx(energy["spikingjelly_pj_per_token"]
                                                                 + energy["ours_pj_per_token"])
    ours = [sum(est.price_unseen("simple", streaming_lines(model, torch.tensor([t]))).values()) for t in new]
    assert energy["ours_pj_per_token"] == pytest.approx(sum(ours) / len(new)) and min(ours) > 0
    assert energy["memory_energy_pj_per_token"] > 10 * paper["energy_pj_per_token"]  # memory dominates
