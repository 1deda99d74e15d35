"""The SDN generalisation suite, the training mixture and the packaged SDN's accuracy off N(0, 1) (issue 8)."""

import json

import pytest
import torch

from snn_engine.data.sequence.seq_mnist import SeqShapes
from snn_engine.errors import UserError
from spiking_ssm.sdn.agreement import DISTRIBUTIONS, OFFICIAL, SUITE_SEED, format_table, main, measure, sample
from spiking_ssm.sdn.data import FAMILIES, make_traces, mixture_currents
from spiking_ssm.sdn.layer_currents import build_model, record_currents, source_currents
from spiking_ssm.sdn.lif_traces import lif_reference
from spiking_ssm.sdn.network import ReducedSDN, load_reduced
from spiking_ssm.sdn.packaged import packaged_weights

TAU = 0.125
WEIGHTS = packaged_weights(TAU)
FRESH_SEED = 313_131  # used by neither the pretraining pipeline nor the suite's default seed
#: allowance below the official SDN's figures for a 300 x 1024 sample; the previous packaged SDN (trained on
#: N(0, 1) only: 99.925%, 99.868%, 99.925% on the shifted/scaled three at 2000 x 1024) falls below all three
MARGIN = 0.0001


def _zero_sdn(tau: float = TAU) -> ReducedSDN:
    return ReducedSDN(tau=tau).double()  # all weights 0: m_hat = 0


# ---------------------------------------------------------------- the suite


def test_sample_is_seeded_fresh_and_named():
    a = sample("U(-1,3)", 5, 40)
    assert a.shape == (5, 40) and a.dtype == torch.float64
    assert torch.equal(a, sample("U(-1,3)", 5, 40)) and not torch.equal(a, sample("U(-1,3)", 5, 40, seed=1))
    assert torch.equal(a, a.float().double())  # exact float32 values
    assert -1 <= a.min() and a.max() <= 3
    correlated = sample("AR1(0.9) N(0,1)", 200, 300)
    lag1 = (correlated[:, 1:] * correlated[:, :-1]).mean() / correlated.var()
    assert 0.85 < lag1 < 0.95
    with pytest.raises(UserError, match="unknown input distribution"):
        sample("N(7,1)", 2, 8)
    with pytest.raises(UserError, match="n >= 1"):
        sample("N(0,1)", 0, 8)


def test_measure_counts_wrong_spikes_against_the_exact_lif():
    x = sample("N(0.5,1)", 20, 128)
    _, spikes = lif_reference(x, tau=TAU)
    metrics = measure({"zero": _zero_sdn()}, x, dtype=torch.float64, chunk=7)["zero"]
    expected_wrong = ((x - 1.0 >= 0).double() != spikes).sum().item()  # m_hat = 0: spikes where y >= 1
    assert metrics["wrong_spikes"] == expected_wrong > 0
    assert metrics["spike_agreement"] == pytest.approx(1 - expected_wrong / x.numel())
    assert metrics["rate_lif"] == pytest.approx(spikes.mean().item())
    with pytest.raises(UserError, match="share one tau"):
        measure({"a": _zero_sdn(), "b": _zero_sdn(0.2)}, x)


def test_suite_cli_runs_on_a_tiny_size(tmp_path, capsys):
    out = tmp_path / "suite.json"
    results = main(["--weights", str(WEIGHTS), "--seqs", "3", "--length", "64", "--no-real", "--json", str(out)])
    table = capsys.readouterr().out
    assert set(results) == set(DISTRIBUTIONS) and json.loads(out.read_text()) == results
    assert all(0.0 <= row[WEIGHTS.stem]["spike_agreement"] <= 1.0 for row in results.values())
    assert "| N(0,3^2) |" in table and "official" in table
    assert format_table(results).count("\n") == len(DISTRIBUTIONS) + 1
    with pytest.raises(UserError, match="--seqs"):
        main(["--seqs", "0"])
    with pytest.raises(UserError, match="same file twice"):
        main(["--weights", str(WEIGHTS), str(WEIGHTS), "--seqs", "1", "--no-real"])


@pytest.mark.slow
def test_layer_currents_are_the_neuron_inputs_and_deterministic(tmp_path):
    a = source_currents("shapes-rows", trained=True, time_steps=4096, steps=2)
    assert a.shape == (128, 32) and a.dtype == torch.float64 and torch.isfinite(a).all()  # 1 sample x 2 layers x 64
    assert torch.equal(a, source_currents("shapes-rows", trained=True, time_steps=4096, steps=2))
    assert not torch.equal(a, source_currents("shapes-rows", trained=False, time_steps=4096))
    data = SeqShapes(mode="rows", train_size=8, val_size=4)
    model = build_model(data, seed=3).eval()
    x = torch.stack([data.val_set()[i][0] for i in range(2)])  # [2, 32, 96]
    currents = record_currents(model, x)
    block = model.backbone.blocks[0]
    with torch.no_grad():
        first = block.layer.current(block.norm(model.encode(x).transpose(1, 2)))  # [B, H, L]
    assert currents.shape == (2 * 2 * 64, 32)
    assert torch.allclose(currents[:128], first.reshape(-1, 32).double())
    assert source_currents("smnist", trained=False, time_steps=10, mnist_root=tmp_path) is None  # absent: skipped
    with pytest.raises(UserError, match="unknown current source"):
        source_currents("cifar", trained=False, time_steps=10)


# ---------------------------------------------------------------- the training mixture


def test_mixture_is_seeded_and_holds_every_family():
    x, family = mixture_currents(400, 64, seed=5)
    again, _ = mixture_currents(400, 64, seed=5)
    assert x.shape == (400, 64) and torch.equal(x, again)
    assert set(family.tolist()) == set(range(len(FAMILIES)))
    assert 0.2 < (family == 0).double().mean() < 0.4  # the N(0,1) share, 0.3 by default
    traces = make_traces(16, 32, seed=6)
    m, s = lif_reference(traces["input"].double(), tau=TAU)
    assert torch.equal(s.float(), traces["spike"]) and torch.allclose(m.float(), traces["mem"])
    with pytest.raises(UserError, match="share"):
        mixture_currents(4, 8, seed=0, standard_share=1.5)
    with pytest.raises(UserError, match="family weights"):
        mixture_currents(4, 8, seed=0, family_weights=(1.0, -1.0, 0.0))


# ---------------------------------------------------------------- the packaged SDN off N(0, 1)


@pytest.mark.parametrize("name", list(OFFICIAL))
def test_packaged_sdn_is_as_accurate_as_the_official_one(name):
    assert FRESH_SEED != SUITE_SEED
    sdn = load_reduced(WEIGHTS)
    metrics = measure({"packaged": sdn}, sample(name, 300, 1024, seed=FRESH_SEED))["packaged"]
    assert metrics["spike_agreement"] >= OFFICIAL[name] - MARGIN, (name, metrics)


def test_packaged_record_holds_the_suite_table_meeting_the_official_figures():
    record = json.loads(WEIGHTS.with_suffix(".json").read_text())
    suite = record["suite"]
    assert suite["seqs"] >= 2000 and suite["length"] == 1024
    results = suite["results"]
    assert set(DISTRIBUTIONS) <= set(results) and any(name.startswith("real/") for name in results)
    for name, official in OFFICIAL.items():
        assert results[name]["spike_agreement"] >= official, name
