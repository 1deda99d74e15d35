"""SpikingSSM's SDN: reduction, exact LIF traces, packaged weights and the sdn/lif/sltt neurons."""

import hashlib
import json
import warnings
from pathlib import Path

import pytest
import torch
from spikingjelly.activation_based import functional

from snn_engine.errors import UserError
from spiking_ssm.somas import SDNNeuron, SLTTLIFNeuron, make_ssm_neuron
from spiking_ssm.sdn.lif_traces import generate_traces, lif_reference, lif_time_major
from spiking_ssm.sdn.network import SDN, ReducedSDN, load_reduced, reduce_sdn, save_reduced
from spiking_ssm.sdn.packaged import packaged_weights
from spiking_ssm.sdn.pretrain import main as pretrain_main
from spiking_ssm.sdn.training import alive_penalty, forward_parts

TAU = 0.125
WEIGHTS = packaged_weights(TAU)
FRESH_SEED = 424242  # not used by the pretraining pipeline (train 1, val 2, its own test 12345)


def _randomised_sdn(seed: int = 0) -> SDN:
    torch.manual_seed(seed)
    model = SDN()
    for norm in (model.spatial_norm, model.feature_norm):
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.3, 3.0)
        norm.weight.data.normal_()
        norm.bias.data.normal_()
    return model.eval()


def _agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a == b).double().mean().item()


# ---------------------------------------------------------------- SDN forms and reduction


def test_reduction_equals_training_form_in_float64():
    model = _randomised_sdn()
    assert sum(p.numel() for p in model.parameters()) == 193
    reduced = reduce_sdn(model, tau=TAU)
    assert isinstance(reduced, ReducedSDN) and reduced.num_weights() == 153 < 200
    assert list(reduced.parameters()) == []
    x = torch.randn(16, 1, 300, dtype=torch.float64)
    with torch.no_grad():
        expected = model.double()(x)
        assert expected.shape == (16, 300)
        assert (expected - reduced(x)).abs().max().item() < 1e-10
        assert torch.equal(reduced(x[:, 0]), reduced(x))  # [N, L] and [N, 1, L] both accepted


def test_sdn_is_strictly_causal_with_receptive_field_8():
    reduced = reduce_sdn(_randomised_sdn(1))
    base = torch.zeros(1, 60, dtype=torch.float64)
    impulse = base.clone()
    impulse[0, 20] = 1.0
    with torch.no_grad():
        changed = (reduced(impulse) - reduced(base)).abs()[0] > 0
    assert changed[21:29].any()
    assert not changed[:21].any() and not changed[29:].any()
    train_form = _randomised_sdn(1).double()
    with torch.no_grad():
        changed = (train_form(impulse) - train_form(base)).abs()[0] > 0
    assert not changed[:21].any() and not changed[29:].any()


def test_reduced_roundtrip_and_bad_files(tmp_path):
    reduced = reduce_sdn(_randomised_sdn(2), tau=0.3)
    save_reduced(reduced, tmp_path / "w.pt")
    state = torch.load(tmp_path / "w.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    again = load_reduced(tmp_path / "w.pt")
    assert float(again.tau) == 0.3
    x = torch.randn(3, 50, dtype=torch.float64)
    assert torch.equal(again(x), reduced(x))
    with pytest.raises(UserError, match=r"sdn\.pretrain"):
        load_reduced(tmp_path / "missing.pt")
    torch.save({"x": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match=r"sdn\.pretrain"):
        load_reduced(tmp_path / "other.pt")


# ---------------------------------------------------------------- exact LIF


def test_lif_reference_matches_scalar_loop():
    x = torch.randn(3, 200, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1.5
    m, s = lif_reference(x, tau=0.2)
    for row in range(3):
        u = 0.0
        for t in range(200):
            u = 0.2 * u
            assert m[row, t].item() == u
            u = u + x[row, t].item()
            spike = 1.0 if u >= 1.0 else 0.0
            assert s[row, t].item() == spike
            u = u * (1 - spike)


def test_generate_traces_is_seeded_and_fires_at_about_15_percent():
    a = generate_traces(40, 256, seed=3)
    b = generate_traces(40, 256, seed=3)
    assert set(a) == {"input", "mem", "spike"} and a["input"].shape == (40, 256)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["input"], generate_traces(40, 256, seed=4)["input"])
    assert 0.13 < a["spike"].mean().item() < 0.17
    m, s = lif_reference(a["input"].double())
    assert torch.equal(s.float(), a["spike"])


@pytest.mark.parametrize("theta", [0.25, 0.5, 2.0, 4.0, 0.7, 1.3, 3.1])
def test_exact_lif_threshold_scaling(theta):
    y = torch.randn(64, 512, dtype=torch.float64, generator=torch.Generator().manual_seed(5)) * theta
    _, with_theta = lif_reference(y, tau=TAU, v_threshold=theta)
    _, scaled = lif_reference(y / theta, tau=TAU, v_threshold=1.0)
    if theta in (0.25, 0.5, 2.0, 4.0):  # powers of two: scaling is exact in floating point
        assert torch.equal(with_theta, scaled)
    else:
        assert _agreement(with_theta, scaled) > 0.99999


# ---------------------------------------------------------------- packaged weights


def test_packaged_weights_match_their_record():
    record = json.loads(WEIGHTS.with_suffix(".json").read_text())
    assert hashlib.sha256(WEIGHTS.read_bytes()).hexdigest() == record["sha256"]
    assert record["tau"] == TAU and record["spike_agreement"] >= 0.9995
    assert record["command"].startswith("python -m spiking_ssm.sdn.pretrain")
    state = torch.load(WEIGHTS, weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    assert sum(v.numel() for k, v in state.items() if k != "tau") == 153
    assert float(state["tau"]) == TAU


def test_packaged_weights_agree_with_exact_lif_on_fresh_inputs():
    sdn = load_reduced(WEIGHTS).float()
    data = generate_traces(200, 1024, tau=TAU, seed=FRESH_SEED)
    with torch.no_grad():
        m_hat = sdn(data["input"])
    spikes = (m_hat + data["input"] - 1.0 >= 0).float()
    assert _agreement(spikes, data["spike"]) >= 0.9995
    assert (m_hat - data["mem"]).abs().mean().item() < 0.01


# ---------------------------------------------------------------- neurons


def test_sdn_neuron_agrees_with_exact_lif_and_weights_are_buffers():
    neuron = SDNNeuron(tau=TAU)
    assert list(neuron.parameters()) == []
    assert sum(b.numel() for name, b in neuron.named_buffers() if not name.endswith("tau")) == 153
    y = torch.randn(512, 4, 8, generator=torch.Generator().manual_seed(11))
    s = neuron(y)
    assert s.shape == y.shape and set(s.unique().tolist()) <= {0.0, 1.0}
    assert _agreement(s, lif_time_major(y.double(), tau=TAU).float()) >= 0.999
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        functional.reset_net(torch.nn.Sequential(neuron))
    assert torch.equal(neuron(y), s)  # stateless


@pytest.mark.parametrize("theta", [0.5, 0.8, 1.7, 3.0])
def test_sdn_neuron_threshold_scaling(theta):
    neuron = SDNNeuron(tau=TAU)
    y = torch.randn(1024, 8, 4, generator=torch.Generator().manual_seed(12)) * theta
    exact = lif_time_major(y.double(), tau=TAU, v_threshold=theta).float()
    assert _agreement(neuron(y / theta), exact) >= 0.999


def test_sdn_neuron_backward_is_the_triangle_surrogate():
    neuron = SDNNeuron(tau=TAU)
    y = torch.randn(128, 3, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(13)).requires_grad_()
    upstream = torch.randn(128, 3, 5, dtype=torch.float64)
    (neuron(y) * upstream).sum().backward()
    m = neuron.membrane(y)
    assert not m.requires_grad
    expected = upstream * torch.clamp(1.0 - (m + y.detach() - 1.0).abs(), min=0.0)
    assert torch.allclose(y.grad, expected, atol=1e-12)


def test_sdn_neuron_rejects_an_unmatched_tau(tmp_path):
    with pytest.raises(UserError, match=r"sdn\.pretrain --tau 0.2.*neuron.weights"):
        SDNNeuron(tau=0.2)
    save_reduced(reduce_sdn(_randomised_sdn(), tau=0.3), tmp_path / "t03.pt")
    with pytest.raises(UserError, match=r"trained for tau=0.3"):
        SDNNeuron(tau=0.2, weights=tmp_path / "t03.pt")
    assert SDNNeuron(tau=0.3, weights=tmp_path / "t03.pt").tau == 0.3
    with pytest.raises(UserError, match="neuron.kind"):
        make_ssm_neuron("nope")


def test_lif_factory_equals_exact_lif_in_float64():
    neuron = make_ssm_neuron("lif", tau=TAU)
    y = torch.randn(300, 4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(14)) * 1.2
    functional.reset_net(neuron)
    assert torch.equal(neuron(y), lif_time_major(y, tau=TAU))
    functional.reset_net(neuron)


def test_sltt_forward_equals_lif_but_gradients_differ():
    y = torch.randn(200, 3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(15))
    lif, sltt = make_ssm_neuron("lif", tau=TAU), make_ssm_neuron("sltt", tau=TAU)
    assert isinstance(sltt, SLTTLIFNeuron)
    y_lif, y_sltt = y.clone().requires_grad_(), y.clone().requires_grad_()
    out_lif, out_sltt = lif(y_lif), sltt(y_sltt)
    assert torch.equal(out_lif, out_sltt)
    upstream = torch.randn_like(y)
    (out_lif * upstream).sum().backward()
    (out_sltt * upstream).sum().backward()
    assert not torch.allclose(y_lif.grad, y_sltt.grad)
    # SLTT: only the per-step path, d s_t / d y_t = triangle(u'_t - 1)
    _, _ = lif_reference(y.movedim(0, -1), tau=TAU)
    u = torch.zeros_like(y[0])
    expected = torch.empty_like(y)
    for t in range(y.shape[0]):
        h = TAU * u + y[t]
        expected[t] = upstream[t] * torch.clamp(1 - (h - 1).abs(), min=0)
        u = h * (h < 1)
    assert torch.allclose(y_sltt.grad, expected, atol=1e-12)
    functional.reset_net(lif)


# ---------------------------------------------------------------- pipeline (tiny run)


def test_pretrain_pipeline_tiny_run(tmp_path, capsys):
    out = tmp_path / "tiny.pt"
    record = pretrain_main(["--train-seqs", "64", "--val-seqs", "16", "--test-seqs", "16", "--length", "128",
                            "--epochs", "2", "--finetune-epochs", "1", "--suite-seqs", "2", "--no-suite-real",
                            "--out", str(out)])
    log = capsys.readouterr().out
    assert "epoch   2/2" in log and "val_spike_agreement" in log and "| U(-1,3) |" in log
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() == record["sha256"]
    assert meta["reduction_max_abs_diff_float64"] < 1e-10
    assert "--epochs 2" in meta["command"] and meta["data"] == "mixture" and meta["loss"] == "l1"
    assert meta["suite"]["seqs"] == 2 and 0 <= meta["suite"]["results"]["N(0,3^2)"]["spike_agreement"] <= 1
    assert float(load_reduced(out).tau) == TAU


def test_training_forward_parts_and_keep_alive_penalty():
    model = _randomised_sdn(4)
    x = torch.randn(3, 50, generator=torch.Generator().manual_seed(16))
    for training in (True, False):
        model.train(training)
        m_hat, z1, z2 = forward_parts(model, x)
        assert z1.shape == z2.shape == (3, 8, 50)
        assert torch.allclose(m_hat, model(x), atol=1e-6)
    alive = torch.ones(2, 8, 5)
    dead = alive.clone()
    dead[:, 3] = -1.0  # never active
    assert alive_penalty(alive, alive, 0.1).item() == 0.0
    assert alive_penalty(alive, dead, 0.1).item() == pytest.approx(1.1)


def test_pretrain_default_recipe_is_deterministic_and_checks_its_arguments(tmp_path, capsys):
    args = ["--train-seqs", "32", "--val-seqs", "8", "--test-seqs", "4", "--length", "64", "--finetune-epochs", "2",
            "--warmup-steps", "1", "--suite-seqs", "1", "--no-suite-real"]
    first = pretrain_main(args + ["--out", str(tmp_path / "a" / "w.pt")])
    second = pretrain_main(args + ["--out", str(tmp_path / "b" / "w.pt")])  # same name: torch.save records it
    log = capsys.readouterr().out
    assert "finetune   2/2" in log and "epoch   1/" not in log  # --epochs 0: BatchNorm frozen from the start
    assert first["sha256"] == second["sha256"] and first["bn_recalibrated"]
    with pytest.raises(UserError, match="--train-seqs 0"):
        pretrain_main(["--train-seqs", "0"])
    with pytest.raises(UserError, match="nothing would be trained"):
        pretrain_main(args + ["--finetune-epochs", "0", "--out", str(tmp_path / "c.pt")])
