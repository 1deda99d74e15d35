"""The ``lif_parallel`` soma: exact LIF spikes by fixed-point iteration of membrane scans, BPTT by a reverse scan.

Spikes must equal the sequential LIF's 100% (float64: the project's ``lif`` soma, the paper's arithmetic in
SpikingJelly's node machinery; float32: a float32 sequential run, the ``sltt`` soma's torch loop), for odd lengths,
several tau, shifted/scaled inputs and per-channel thresholds; gradients must equal the ``lif`` soma's BPTT with the
reset detached, and SpikingJelly's own LIFNode's, to 1e-10 (float64). On-threshold currents, non-finite currents and
regular firing: ``test_lif_arithmetic.py`` and ``test_lif_nonfinite.py``.
"""

from __future__ import annotations

import functools
import logging
import math

import pytest
import torch
from spikingjelly.activation_based import functional

from snn_engine.errors import UserError
from spiking_ssm.somas import lif_scan
from spiking_ssm.backbone import SpikingSSMClassifier
from spiking_ssm.layer import SpikingSSM
from spiking_ssm.somas.lif_parallel import ParallelLIFNeuron
from spiking_ssm.somas import make_spikingjelly_lif, make_ssm_neuron
from spiking_ssm.streaming import StreamingClassifier

TAUS = [0.05, 0.125, 0.5, 0.9]
INPUTS = {"N(0,1)": (0.0, 1.0), "N(0.5,1)": (0.5, 1.0), "N(0,9)": (0.0, 3.0)}


def _currents(length: int, batch: int, mean: float, std: float, dtype, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(length, batch, 3, generator=g, dtype=torch.float64) * std + mean).to(dtype)


def _lif(y: torch.Tensor, tau: float) -> torch.Tensor:
    lif = make_ssm_neuron("lif", tau=tau)
    functional.reset_net(lif)
    return lif(y)


@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("inputs", list(INPUTS))
@pytest.mark.parametrize("length", [1, 9, 263])
def test_spikes_equal_the_sequential_lif_float64(tau, inputs, length):
    y = _currents(length, 40, *INPUTS[inputs], torch.float64, seed=length)
    soma = make_ssm_neuron("lif_parallel", tau=tau)
    spikes = soma(y)
    reference = _lif(y, tau)
    assert spikes.dtype == torch.float64 and spikes.shape == y.shape
    assert torch.equal(spikes, reference)
    if length > 100:
        assert 0.02 < spikes.mean() < 0.9  # a real spike train, not all-or-nothing


@pytest.mark.parametrize("tau", TAUS + [0.99])
@pytest.mark.parametrize("length", [5, 263, 1000])
def test_spikes_equal_a_float32_sequential_run(tau, length):
    y = _currents(length, 64, 0.2, 1.2, torch.float32, seed=7)
    spikes = make_ssm_neuron("lif_parallel", tau=tau)(y)
    sequential = make_ssm_neuron("sltt", tau=tau, implementation="torch")(y)  # a float32 Python loop over t
    assert spikes.dtype == torch.float32
    assert torch.equal(spikes, sequential)


def test_guesses_agree_and_the_sdn_guess_saves_scans():
    y = _currents(500, 64, 0.0, 1.0, torch.float64, seed=3)
    sdn = ParallelLIFNeuron(guess="sdn")
    zero = ParallelLIFNeuron(guess="zero")
    assert ParallelLIFNeuron(guess="auto").guess == "sdn" and ParallelLIFNeuron(tau=0.3).guess == "zero"
    assert torch.equal(sdn(y), zero(y))
    assert sdn.last_stats.row_scans.float().mean() < zero.last_stats.row_scans.float().mean()
    assert sdn.last_stats.scans <= 4  # the SDN's spikes are nearly right: a correction or two and the check


def test_a_wrong_guess_still_converges_to_the_exact_spikes():
    y = _currents(300, 16, 0.3, 1.0, torch.float64, seed=4).movedim(0, -1).reshape(-1, 300)
    exact = lif_scan.sequential(y, 0.5, 1.0) >= 1.0
    for guess in (torch.ones_like(exact), ~exact, torch.rand(exact.shape) < 0.5):
        spikes, _, stats = lif_scan.fixed_point(y, guess, 0.5, 1.0, max_iters=300)
        assert torch.equal(spikes, exact) and stats.capped == 0


def test_per_row_thresholds():
    y = _currents(120, 8, 0.5, 2.0, torch.float64, seed=5).movedim(0, -1).reshape(-1, 120)
    theta = torch.linspace(0.3, 3.0, y.shape[0], dtype=torch.float64)[:, None]
    spikes, _, _ = lif_scan.fixed_point(y, torch.zeros_like(y, dtype=torch.bool), 0.25, theta)
    assert torch.equal(spikes, lif_scan.sequential(y, 0.25, theta) >= theta)
    assert spikes[:4].float().mean() > spikes[-4:].float().mean()  # low thresholds fire more


@pytest.mark.parametrize("tau", [0.125, 0.6])
def test_bptt_gradient_equals_the_lif_soma_and_spikingjelly_with_detached_reset(tau):
    y = _currents(257, 6, 0.3, 1.0, torch.float64, seed=11)
    upstream = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
    grads = []
    for soma in (make_ssm_neuron("lif_parallel", tau=tau), make_ssm_neuron("lif", tau=tau),
                 make_spikingjelly_lif(tau)):
        x = y.clone().requires_grad_()
        functional.reset_net(soma)
        (soma(x) * upstream).sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().max() > 0.1 and (grads[0] != 0).float().mean() > 0.3
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-10, atol=1e-10 * grads[1].abs().max().item())
    torch.testing.assert_close(grads[2], grads[1], rtol=1e-10, atol=1e-10 * grads[1].abs().max().item())


def test_sltt_gradient_option_equals_the_sltt_soma():
    y = _currents(77, 5, 0.3, 1.0, torch.float64, seed=13)
    upstream = torch.randn(y.shape, dtype=torch.float64)
    grads = []
    for soma in (make_ssm_neuron("lif_parallel", gradient="sltt"), make_ssm_neuron("sltt", implementation="torch")):
        x = y.clone().requires_grad_()
        (soma(x) * upstream).sum().backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
    bptt = make_ssm_neuron("lif_parallel")
    x = y.clone().requires_grad_()
    (bptt(x) * upstream).sum().backward()
    assert not torch.allclose(x.grad, grads[1])  # the temporal path matters


def test_layer_with_channel_thresholds_equals_the_lif_layer():
    """In the layer the learnable per-channel threshold divides the currents: same spikes, outputs and gradients
    (including the thresholds' own) as the sequential LIF soma."""
    results = []
    for kind in ("lif_parallel", "lif"):
        torch.manual_seed(21)
        layer = SpikingSSM(6, functools.partial(make_ssm_neuron, kind), d_state=8, threshold="channel").double()
        with torch.no_grad():
            layer.ln_theta.copy_(torch.linspace(-0.7, 0.7, 6)[:, None])
        u = torch.randn(3, 6, 131, dtype=torch.float64, generator=torch.Generator().manual_seed(22)) * 2
        functional.reset_net(layer)
        out = layer(u)
        out.square().sum().backward()
        results.append((layer.spikes(u).detach(), out.detach(), layer.ln_theta.grad.clone(), layer.D.grad.clone()))
    assert torch.equal(results[0][0], results[1][0]) and results[0][0].mean() > 0.02
    for ours, theirs in zip(results[0][1:], results[1][1:]):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


def test_half_inputs_run_in_float32():
    y = _currents(50, 4, 0.3, 1.0, torch.float32, seed=2)
    spikes = make_ssm_neuron("lif_parallel")(y.bfloat16())
    assert spikes.dtype == torch.bfloat16
    assert torch.equal(spikes.float(), make_ssm_neuron("sltt", implementation="torch")(y.bfloat16().float()))


def test_cap_warns_and_finishes_sequentially(caplog):
    y = _currents(400, 8, 0.3, 1.0, torch.float64, seed=8)
    exact = _lif(y, 0.7)
    capped = make_ssm_neuron("lif_parallel", tau=0.7, max_iters=1)
    with caplog.at_level(logging.WARNING, logger="spiking_ssm.somas.lif_parallel"):
        assert torch.equal(capped(y), exact)
    assert "neuron.max_iters=1" in caplog.text and "spikes in 24 rows still changing" in caplog.text
    assert "finished sequentially, exact" in caplog.text and capped.last_stats.finished == 24
    caplog.clear()
    loose = make_ssm_neuron("lif_parallel", tau=0.7, max_iters=1, finish_sequential=False)
    with caplog.at_level(logging.WARNING, logger="spiking_ssm.somas.lif_parallel"):
        assert not torch.equal(loose(y), exact)
    assert "left inexact" in caplog.text and "raise neuron.max_iters" in caplog.text


def test_epoch_statistics_count_training_calls_only():
    soma = make_ssm_neuron("lif_parallel", tau=0.3)
    y = _currents(64, 4, 0.3, 1.0, torch.float32)
    soma.eval()
    soma(y)
    assert soma.pop_epoch_statistics() == {}
    soma.train()
    soma(y)
    soma(y)
    stats = soma.pop_epoch_statistics()
    assert stats["calls"] == 2 and stats["scans_max"] == soma.last_stats.scans >= 2
    assert stats["scans_mean"] == pytest.approx(soma.last_stats.row_scans.float().mean().item())
    histogram = {k: v for k, v in stats.items() if k.startswith("rows_with_")}
    assert sum(histogram.values()) == pytest.approx(1.0) and soma.pop_epoch_statistics() == {}


def test_streaming_deployment_has_no_spike_different_from_training_forward():
    torch.manual_seed(31)
    model = SpikingSSMClassifier(functools.partial(make_ssm_neuron, "lif_parallel"), d_input=2, num_classes=3,
                                 d_model=8, n_layers=2, d_state=8, bidirectional=False, norm="layer",
                                 threshold="channel").double()
    with torch.no_grad():
        for block in model.backbone.blocks:
            block.layer.ln_theta.normal_(0, 0.3)
    model.eval()
    x = 2 * torch.randn(3, 97, 2, dtype=torch.float64)
    records = []
    for block in model.backbone.blocks:
        block.layer.neuron.register_forward_hook(lambda m, i, o: records.append(o.permute(1, 2, 0)))
    with torch.no_grad():
        logits = model(x)
    stream = StreamingClassifier(model)
    spikes = [[], []]
    for t in range(x.shape[1]):
        stream.step(x[:, t])
        for i, block in enumerate(stream.blocks):
            spikes[i].append(block.layer.last_spikes)
    for i in range(2):
        assert torch.equal(torch.stack(spikes[i], -1), records[i]) and records[i].mean() > 0.02
    torch.testing.assert_close(stream.logits(), logits, rtol=1e-9, atol=1e-9)


def test_bad_settings_are_one_line_user_errors():
    for kwargs, match in [(dict(guess="best"), "neuron.guess"), (dict(gradient="rtrl"), "neuron.gradient"),
                          (dict(max_iters=0), "neuron.max_iters"), (dict(tau=1.0), "neuron.tau"),
                          (dict(sweep=-1), "neuron.sweep"),
                          (dict(tau=0.3, guess="sdn"), "neuron.guess=zero"), (dict(implementation="cuda2"),
                                                                                 "neuron.implementation")]:
        with pytest.raises(UserError, match=match):
            make_ssm_neuron("lif_parallel", **kwargs)
    with pytest.raises(UserError, match="only used by neuron.kind=lif_parallel"):
        make_ssm_neuron("sltt", max_iters=4)
    with pytest.raises(UserError, match="whole sequences"):
        make_ssm_neuron("lif_parallel").single_step_forward(torch.zeros(3))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.1, 0.7])
def test_membranes_exactly_at_threshold_follow_the_sequential_rounding(dtype, tau):
    """Rows built so that the sequential run's last membrane is exactly 1.0 (a spike): a plain scan rounds
    differently and misses some; the soma's rounding-exact phase must not."""
    g = torch.Generator().manual_seed(9)
    y = (torch.rand(600, 6, generator=g, dtype=torch.float64) * 0.5).to(dtype)
    y[:, -1] = 1.0 - tau * lif_scan.sequential(y, tau, 1.0)[:, -2]  # in dtype's arithmetic
    h = lif_scan.sequential(y, tau, 1.0)
    assert (h[:, -1] == 1.0).float().mean() > 0.9
    scanned = lif_scan.membrane_given_spikes(y, h >= 1.0, tau) >= 1.0
    assert (scanned != (h >= 1.0)).any(), "the plain scan should miss some (else this test proves nothing)"
    soma = make_ssm_neuron("lif_parallel", tau=tau, guess="zero")
    spikes = soma(y.T.unsqueeze(-1))[..., 0].T
    assert torch.equal(spikes, (h >= 1.0).to(dtype))
    sequential = make_ssm_neuron("sltt", tau=tau, implementation="torch")(y.T.unsqueeze(-1))[..., 0].T
    assert torch.equal(spikes, sequential)


def test_sweeps_shorten_chains_of_regular_firing():
    """A near-constant current fires regularly; a guess with the wrong phase is fixed one spike per plain scan, and
    ``sweep`` sequential steps after a scan fix a whole stretch at once; both end at the exact spikes."""
    y = torch.full((4, 600), 0.9, dtype=torch.float64) + 0.05 * torch.rand(4, 600, dtype=torch.float64)
    exact = lif_scan.sequential(y, 0.125, 1.0) >= 1.0
    wrong_phase = torch.roll(exact, 1, dims=1)
    plain = lif_scan.fixed_point(y, wrong_phase, 0.125, max_iters=1000)
    swept = lif_scan.fixed_point(y, wrong_phase, 0.125, max_iters=1000, sweep=64)
    assert torch.equal(plain[0], exact) and torch.equal(swept[0], exact)
    # plain scans before sweeps start, then each scan + sweep advances at least 64 steps, then the check
    assert plain[2].scans > 100 and swept[2].scans <= lif_scan.SWEEP_AFTER + math.ceil(600 / 64) + 1


def test_training_logs_the_iterations_once_per_epoch(tmp_path, caplog):
    from snn_engine import run
    from tests.helpers import compose_train

    cfg = compose_train(["experiment=seq/shapes", "neuron=lif_parallel", "model.d_model=16", "model.n_layers=1",
                         "dataset.batch_size=4", "dataset.num_workers=0", "logger=none", "trainer.epochs=2",
                         "trainer.limit_train_batches=2", "trainer.limit_val_batches=1", "trainer.progress_bar=false"])
    with caplog.at_level(logging.INFO, logger="snn_engine.training.trainer"):
        run.train(cfg, tmp_path / "run")
    lines = [r.getMessage() for r in caplog.records if "scans_mean" in r.getMessage()]
    assert len(lines) == 2 and lines[0].startswith("epoch 0 backbone.blocks.0.layer.neuron: calls 2, scans_mean")
    assert "rows_with_1_scans" in lines[1]


def test_streaming_language_model_has_no_spike_different_from_training_forward():
    """What ``generate`` runs (the token-by-token LM with the exact LIF) equals the parallel forward of a model
    using ``lif_parallel``: every spike, and next-token log-probabilities to float64 rounding."""
    from benchmarks.train_deploy_gap import language_model_gap
    from spiking_ssm.lm.language_model import SpikingSSMLanguageModel

    torch.manual_seed(32)
    model = SpikingSSMLanguageModel(functools.partial(make_ssm_neuron, "lif_parallel"), vocab_size=23, d_model=8,
                                    n_layers=2, d_state=8, dropout=0.0, dropemb=0.0, dropsoft=0.0).double()
    fired = []
    with torch.no_grad():
        for block in model.backbone.blocks:
            block.layer.ln_theta.normal_(-1.0, 0.3)  # thresholds below 1: busy somas
            block.layer.neuron.register_forward_hook(lambda m, i, o: fired.append(float(o.mean())))
    model.eval()
    spikes, nats = language_model_gap(model, torch.randint(0, 23, (3, 41)))
    assert all(different == 0 and compared == 3 * 8 * 41 for different, compared in spikes)
    assert min(fired) > 0.02 and nats < 1e-9
