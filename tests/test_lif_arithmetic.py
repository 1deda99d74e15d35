"""One LIF arithmetic for SpikingSSM (issue 24): ``lif``, ``lif_parallel``, ``sltt`` and streaming compute
``h = tau * u`` then ``+ y`` (the paper's order), so their spikes are identical bit for bit in float32 and float64,
also on currents built to put the membrane exactly on the threshold or one ulp beside it (:mod:`tests.lif_currents`).

``lif`` is the engine's :class:`~snn_engine.neurons.LeakLIFNode`: SpikingJelly's node machinery (surrogate, detached
hard reset, step modes, ``reset_net``, memories) around that arithmetic. SpikingJelly's own LIFNode rounds otherwise
(``v - v / tau_sj + y``), which these currents show.
"""

from __future__ import annotations

import functools

import pytest
import torch
from spikingjelly.activation_based import functional, monitor

from snn_engine.protection import resume_contract
from snn_engine.errors import UserError
from snn_engine.measure.kernel_usage import ImplementationCounter
from snn_engine.neurons import LeakLIFNode, LIFNode, make_neuron, select_implementation
from spiking_ssm.somas import lif_scan
from spiking_ssm.backbone import SpikingSSMClassifier
from spiking_ssm.somas.lif_parallel import ExactLIFCapWarning
from spiking_ssm.somas import make_spikingjelly_lif, make_ssm_neuron
from spiking_ssm.streaming import LIFConstants
from tests.lif_currents import landed, on_threshold_currents

TAUS = [0.125, 0.5, 0.9, 0.99]
DTYPES = [torch.float32, torch.float64]


def _run(soma, rows: torch.Tensor) -> torch.Tensor:
    """Spikes ``[N, L]`` of a multi-step soma on rows ``[N, L]`` (fed time-major ``[L, N, 1]``)."""
    functional.reset_net(soma)
    return soma(rows.T.unsqueeze(-1))[..., 0].T


def _streamed(soma, rows: torch.Tensor) -> torch.Tensor:
    """Spikes of the streaming soma step by step (``spiking_ssm.streaming``), with the constants read from ``soma``."""
    lif = LIFConstants.from_neuron(soma)
    v, out = torch.zeros_like(rows[:, 0]), []
    for t in range(rows.shape[1]):
        spike, v = lif.fire_and_reset(lif.charge(v, rows[:, t]))
        out.append(spike)
    return torch.stack(out, dim=1)


def test_the_issue_example_fires_as_the_paper_computes():
    """Two steps at tau 0.9 (float64): ``0.9 * 0.868056782068238 + 0.21874889613858572`` rounds to just below 1, so
    the paper's arithmetic does not fire; SpikingJelly's ``v - v / 10.000000000000002 + y`` reaches 1 and fires."""
    y = torch.tensor([[0.868056782068238, 0.21874889613858572]], dtype=torch.float64)
    assert float(0.9 * y[0, 0] + y[0, 1]) < 1.0
    for soma in (make_ssm_neuron("lif", tau=0.9), make_ssm_neuron("lif_parallel", tau=0.9, implementation="torch"),
                 make_ssm_neuron("sltt", tau=0.9, implementation="torch")):
        assert _run(soma, y).tolist() == [[0.0, 0.0]], type(soma).__name__
    assert _streamed(make_ssm_neuron("lif", tau=0.9), y).tolist() == [[0.0, 0.0]]
    assert _run(make_spikingjelly_lif(0.9), y).tolist() == [[0.0, 1.0]]  # the arithmetic `lif` had before


@pytest.mark.filterwarnings("ignore::spiking_ssm.somas.lif_parallel.ExactLIFCapWarning")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", TAUS)
def test_on_threshold_currents_give_identical_spikes_everywhere(tau, dtype):
    """48 rows x 300 steps, 60% crafted (on, 1 ulp below or above the threshold, in chains), 40% random: ``lif`` ==
    ``lif_parallel`` (torch) == ``sltt`` == streaming == the sequential reference, every spike; a plain scan
    (without the rounding-exact phase) gets some crafted steps wrong, so these currents do test the rounding."""
    y, kind = on_threshold_currents(tau, dtype, rows=48, length=300, seed=int(tau * 100))
    hits = landed(y, kind, tau)
    assert hits.sum() >= 0.9 * (kind > 0).sum()  # the construction lands (a few misses where tau * u is large)
    reference = _run(make_ssm_neuron("lif", tau=tau), y)
    exact = lif_scan.sequential(y, tau, 1.0) >= 1.0
    assert reference.dtype == dtype and torch.equal(reference.bool(), exact)
    assert torch.equal(reference.bool()[hits], (kind[hits] != 2))  # on or above the threshold fires, below not
    for soma in (make_ssm_neuron("lif_parallel", tau=tau, implementation="torch"),
                 make_ssm_neuron("lif_parallel", tau=tau, implementation="torch", guess="zero", sweep=0),
                 make_ssm_neuron("sltt", tau=tau, implementation="torch")):
        assert torch.equal(_run(soma, y), reference), type(soma).__name__
    assert torch.equal(_streamed(make_ssm_neuron("lif", tau=tau), y), reference)
    assert torch.equal(_streamed(make_ssm_neuron("lif_parallel", tau=tau), y), reference)
    scanned = lif_scan.membrane_given_spikes(y, exact, tau) >= 1.0
    assert (scanned != exact).sum() > 50


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("tau", [0.5, 0.9])
def test_bptt_gradients_of_lif_and_lif_parallel_agree_on_threshold_currents(tau, dtype):
    y, _ = on_threshold_currents(tau, dtype, rows=12, length=200, seed=3)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(dtype)
    grads, spikes = [], []
    for soma in (make_ssm_neuron("lif", tau=tau), make_ssm_neuron("lif_parallel", tau=tau, implementation="torch")):
        x = y.clone().requires_grad_()
        out = _run(soma, x)
        (out * upstream).sum().backward()
        grads.append(x.grad)
        spikes.append(out.detach())
    assert torch.equal(spikes[0], spikes[1])
    assert (grads[0] != 0).float().mean() > 0.3 and grads[0].abs().max() > 0.1
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(grads[1], grads[0], rtol=tol, atol=tol * grads[0].abs().max().item())


def test_the_lif_node_keeps_spikingjelly_machinery():
    """Single-step mode equals multi-step, ``reset_net`` clears the membrane, ``store_v_seq`` records it, a SpikingJelly
    monitor sees the spikes, half inputs integrate in float32, and the node holds no parameters or buffers."""
    y, _ = on_threshold_currents(0.9, torch.float32, rows=5, length=40, seed=5)
    lif = make_ssm_neuron("lif", tau=0.9)
    assert isinstance(lif, LeakLIFNode) and lif.leak == 0.9 and lif.detach_reset and lif.v_reset == 0.0
    with monitor.OutputMonitor(lif, LeakLIFNode) as seen:
        multi = _run(lif, y)
    assert torch.equal(seen.records[0][..., 0].T, multi) and multi.sum() > 20
    last = lif.v.clone()
    functional.reset_net(lif)
    assert lif.v == 0.0 and last.abs().sum() > 0
    lif.step_mode = "s"
    single = torch.stack([lif(y[:, t]) for t in range(y.shape[1])], dim=1)
    assert torch.equal(single, multi) and torch.equal(lif.v, last[:, 0])
    lif = make_ssm_neuron("lif", tau=0.9)
    lif.store_v_seq = True
    _run(lif, y)
    assert lif.v_seq.shape == (40, 5, 1) and torch.equal(lif.v_seq[-1], last)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = make_ssm_neuron("lif", tau=0.9)(y.T.unsqueeze(-1).bfloat16())
    assert half.dtype == torch.float32
    assert torch.equal(half, _run(make_ssm_neuron("lif", tau=0.9), y.bfloat16().float()).T.unsqueeze(-1))
    assert dict(lif.named_parameters()) == {} and dict(lif.named_buffers()) == {}


def test_torch_compile_leaves_the_arithmetic_eager():
    """Compiled code may contract ``leak * v + x`` into one FMA (one rounding): the node stays out of the graph."""
    graphs = []

    def backend(gm, inputs):
        graphs.append(gm.code)
        return gm.forward

    lif = LeakLIFNode(0.375)
    compiled = torch.compile(lambda x: lif(x * 2.0) + 5.0, backend=backend)
    y, _ = on_threshold_currents(0.375, torch.float32, rows=4, length=30, seed=6)
    x = y.T.unsqueeze(-1) / 2.0
    functional.reset_net(lif)
    out = compiled(x)
    functional.reset_net(lif)
    assert torch.equal(out, lif(x * 2.0) + 5.0)
    assert any("2.0" in code for code in graphs) and not any("0.375" in code for code in graphs)
    assert lif.last_implementation == "torch loop (paper arithmetic)"


def test_config_lif_is_the_paper_node_in_spiking_ssm_models_only():
    from hydra.utils import instantiate

    from tests.helpers import compose_train

    ssm = compose_train(["model=spiking_ssm", "dataset=listops_generated", "neuron=lif"]).neuron
    mixer = compose_train(["neuron=lif"]).neuron
    assert ssm.leak == 0.125 and mixer.leak is None
    lif = instantiate(ssm)()
    assert isinstance(lif, LeakLIFNode) and lif.leak == 0.125 and lif.surrogate_function.alpha == 1.0
    assert type(instantiate(mixer)()) is LIFNode
    stock = make_neuron(kind="lif", tau=8 / 7, decay_input=False, surrogate="piecewise_quadratic", alpha=1.0)
    assert type(stock) is LIFNode  # neuron.leak=null: SpikingJelly's node, as checkpoints without the key ran
    for kwargs, match in [(dict(tau=2.0), "disagree"), (dict(decay_input=True), "decay_input=false"),
                          (dict(kind="plif"), "neuron.kind=lif"), (dict(implementation="triton"), "torch loop"),
                          (dict(leak=1.0, tau=1e9), "leak factor"), (dict(v_reset=None), "hard reset")]:
        args = dict(kind="lif", tau=8 / 7, decay_input=False, leak=0.125) | kwargs
        with pytest.raises(UserError, match=match):
            make_neuron(**args)
    with pytest.raises(UserError, match="torch loop"):
        make_ssm_neuron("lif", implementation="triton")


def _classifier(neuron) -> SpikingSSMClassifier:
    torch.manual_seed(0)
    return SpikingSSMClassifier(neuron, d_input=2, num_classes=3, d_model=8, n_layers=2, d_state=4)


def test_checkpoints_of_the_old_lif_load_and_the_counter_tells_what_ran():
    common = dict(kind="lif", tau=8 / 7, decay_input=False, surrogate="piecewise_quadratic", alpha=1.0)
    old = _classifier(functools.partial(make_neuron, **common))
    new = _classifier(functools.partial(make_neuron, leak=0.125, **common))
    assert list(old.state_dict()) == list(new.state_dict())
    new.load_state_dict(old.state_dict())  # strict: the same parameters and buffers
    x = torch.randn(3, 20, 2)
    with ImplementationCounter(new) as counter:
        new(x)
    assert counter.summary()["calls"] == {"torch loop (paper arithmetic)": 2}
    with ImplementationCounter(old) as counter:
        old(x)
    assert counter.summary()["calls"] == {"torch (cpu)": 2}
    ran = select_implementation("lif", "auto", torch.device("cpu"), new)
    assert "LeakLIFNode: torch loop (paper arithmetic)" in ran and "torch (cpu)" not in ran
    assert select_implementation("lif", "auto", torch.device("cpu"), old).startswith("torch (cpu)")


def test_resuming_an_old_checkpoint_refuses_only_a_changed_neuron():
    """Configs gained ``neuron.leak`` (and the profile's ``leak``): a sparse-MLP checkpoint without them resumes (its
    neuron is unchanged), a SpikingSSM ``lif`` one is told that its neuron's arithmetic changed."""
    new = {"neuron": {"kind": "lif", "leak": "${oc.select:...}"},
           "neuron_profiles": {"spiking_ssm": {"tau": 1.14, "leak": 0.125}}}
    old = {"neuron": {"kind": "lif"}, "neuron_profiles": {"spiking_ssm": {"tau": 1.14}}}
    assert resume_contract.check(old, new, "last.pt", False, resolve={"neuron.leak": None}.get) == {}
    with pytest.raises(UserError, match="neuron.leak"):
        resume_contract.check(old, new, "last.pt", False, resolve={"neuron.leak": 0.125}.get)
    changed = dict(new, neuron_profiles={"spiking_ssm": {"tau": 2.0, "leak": 0.125}})
    with pytest.raises(UserError, match="neuron_profiles.spiking_ssm.tau"):
        resume_contract.check(old, changed, "last.pt", False, resolve={"neuron.leak": None}.get)


def test_the_benchmark_row_lif_sj_stays_spikingjelly_stock_node():
    from benchmarks.neuron_speed import SOMAS

    assert type(SOMAS["lif sj"][0]()) is LIFNode and isinstance(SOMAS["lif torch"][0](), LeakLIFNode)


def test_capped_rounding_phase_warns():
    """float32 at tau 0.99: the scanned membrane differs from the sequential one in its last bits for long stretches,
    so the rounding-exact phase reaches max_iters on some rows: a warning, and the spikes stay exact."""
    g = torch.Generator().manual_seed(7)
    y = (torch.randn(300, 16, 1, generator=g, dtype=torch.float64) * 1.2 + 0.2).float()
    soma = make_ssm_neuron("lif_parallel", tau=0.99, implementation="torch")
    with pytest.warns(ExactLIFCapWarning, match="rounding-exact phase"):
        spikes = soma(y)
    assert soma.last_stats.capped > 0 and soma.last_stats.spike_capped == 0
    assert torch.equal(spikes, make_ssm_neuron("lif", tau=0.99)(y))
