"""Unit tests of the engine's pieces: neurons, parameter groups, schedules, losses, checkpoints."""

import math
import random

import numpy as np
import pytest
import torch
from torch import nn

from snn_engine.protection import checkpoint as ckpt_io
from snn_engine.errors import UserError
from snn_engine.training.losses import TETLoss, TimeAveragedCrossEntropy
from snn_engine.measure.metrics import FiringRateMeter, format_rate_table, topk_hits
from snn_engine.neurons import make_neuron, select_implementation
from snn_engine.training.optim import param_groups, warmup_cosine


def reference_lif(x: torch.Tensor, tau: float, v_th: float, v_reset: float, decay_input: bool) -> torch.Tensor:
    """Exact iterative LIF with hard reset, one step at a time (float64)."""
    v = torch.full_like(x[0], v_reset)
    spikes = []
    for t in range(x.shape[0]):
        if decay_input:
            h = v + (x[t] - (v - v_reset)) / tau
        else:
            h = v - (v - v_reset) / tau + x[t]
        s = (h >= v_th).to(x.dtype)
        v = h * (1 - s) + v_reset * s
        spikes.append(s)
    return torch.stack(spikes)


@pytest.mark.parametrize("decay_input", [True, False])
def test_lif_matches_exact_iteration(decay_input):
    torch.manual_seed(0)
    x = torch.randn(16, 4, 50, dtype=torch.float64) * 1.5
    neuron = make_neuron(kind="lif", tau=2.0, decay_input=decay_input)
    out = neuron(x)
    assert torch.equal(out, reference_lif(x, 2.0, 1.0, 0.0, decay_input))
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_neuron_kinds_and_errors():
    x = torch.randn(4, 2, 8)
    for kind in ("lif", "plif", "if"):
        assert make_neuron(kind=kind)(x).shape == x.shape
    assert sum(p.numel() for p in make_neuron(kind="plif").parameters()) == 1
    with pytest.raises(UserError, match="neuron.kind"):
        make_neuron(kind="nope")
    with pytest.raises(UserError, match="neuron.surrogate"):
        make_neuron(surrogate="nope")
    with pytest.raises(UserError, match="neuron.implementation"):
        make_neuron(implementation="cupy")


def test_implementation_on_cpu():
    assert select_implementation("lif", "auto", torch.device("cpu")) == "torch (cpu)"
    for impl in ("cuda", "triton"):
        with pytest.raises(UserError, match="needs a CUDA device"):
            select_implementation("lif", impl, torch.device("cpu"))


def test_param_groups_exclude_norms_biases_and_honour_hints():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))
    model[2].weight._optim = {"lr": 1e-3, "weight_decay": 0.0}
    groups = param_groups(model, weight_decay=0.05)
    by_decay = {id(p): g for g in groups for p in g["params"]}
    assert by_decay[id(model[0].weight)]["weight_decay"] == 0.05
    for p in (model[0].bias, model[1].weight, model[1].bias, model[2].bias):
        assert by_decay[id(p)]["weight_decay"] == 0.0
    assert by_decay[id(model[2].weight)]["lr"] == 1e-3
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_cosine_matches_torch_and_warmup():
    p = nn.Parameter(torch.zeros(1))
    ours = torch.optim.SGD([p], lr=0.1)
    theirs = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = warmup_cosine(ours, total=10)
    ref = torch.optim.lr_scheduler.CosineAnnealingLR(theirs, T_max=10)
    for _ in range(10):
        assert math.isclose(ours.param_groups[0]["lr"], theirs.param_groups[0]["lr"], rel_tol=1e-9, abs_tol=1e-12)
        sched.step()
        ref.step()
    opt = torch.optim.SGD([p], lr=1.0)
    sched = warmup_cosine(opt, total=20, warmup=4, warmup_start_factor=0.0, interval="step")
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        sched.step()
    assert lrs[:5] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert sched.interval == "step"
    with pytest.raises(UserError):
        warmup_cosine(opt, total=5, interval="batch")


def test_losses_average_over_time_and_accept_soft_targets():
    torch.manual_seed(0)
    logits = torch.randn(4, 6, 5)
    target = torch.randint(0, 5, (6,))
    ce = TimeAveragedCrossEntropy()
    assert torch.allclose(ce(logits, target), nn.functional.cross_entropy(logits.mean(0), target))
    soft = nn.functional.one_hot(target, 5).float()
    assert torch.allclose(ce(logits, soft), ce(logits, target), atol=1e-6)
    tet = TETLoss(lam=0.0)
    per_step = torch.stack([nn.functional.cross_entropy(logits[t], target) for t in range(4)]).mean()
    assert torch.allclose(tet(logits, target), per_step)
    assert TETLoss(lam=1.0)(torch.ones(2, 3, 5), target[:3]).item() == 0.0


def test_topk_hits():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2]])
    assert topk_hits(logits, torch.tensor([1, 2]), ks=(1, 2)) == [1, 2]


def test_firing_rate_meter_counts_spikes():
    model = nn.Sequential(make_neuron(), make_neuron())
    x = torch.full((4, 3, 10), 5.0)  # every step fires
    with FiringRateMeter(model) as meter:
        model(x)
        rates = meter.compute(torch.device("cpu"))
    assert rates["0"] == 1.0
    assert rates["overall"] == pytest.approx((1.0 + rates["1"]) / 2)


class _TwoShapes(nn.Module):
    """Calls one neuron twice per forward with different neuron shapes ([T, B, 10] and [T, B, 2, 3])."""

    def __init__(self):
        super().__init__()
        self.lif = make_neuron()

    def forward(self, x):
        a = self.lif(x[..., :10])
        self.lif.reset()
        return a, self.lif(x[..., 10:].reshape(*x.shape[:2], 2, 3))


def test_firing_rate_meter_silent_fraction():
    model = nn.Sequential(make_neuron(), _TwoShapes())
    first = torch.zeros(4, 3, 16)
    first[:, :, :3] = 5.0  # neurons 0-2 fire at every step of every sample
    first[:, 1, 3] = 5.0  # neuron 3 fires in sample 1 only
    first[:, :, 12] = 5.0  # a neuron of the second shape fires
    second = torch.zeros(4, 2, 16)
    second[0, 0, 4] = 5.0  # neuron 4 fires once, in the second batch only
    with FiringRateMeter(model) as meter:
        for x in (first, second):
            model[0](x)
            model[1](x)  # the same input, through the twice-called neuron
            functional_reset(model)
        detailed = meter.compute_detailed(torch.device("cpu"))
        plain = meter.compute(torch.device("cpu"))
    assert set(plain) == {"0", "1.lif", "mean", "overall", "sparsity"}
    layer0, layer1 = detailed["layers"]["0"], detailed["layers"]["1.lif"]
    assert layer0["neurons"] == 16 and layer0["silent_fraction"] == pytest.approx(10 / 16)  # 0-4 and 12 fire
    assert layer1["neurons"] == 10 + 6 and layer1["silent_fraction"] == pytest.approx(10 / 16)
    overall = detailed["overall"]
    assert overall["neurons"] == 32 and overall["silent_fraction"] == pytest.approx(20 / 32)
    assert layer0["rate"] == pytest.approx(plain["0"]) and overall["rate"] == pytest.approx(plain["overall"])
    assert layer0["sparsity"] == pytest.approx(1 - layer0["rate"])
    table = format_rate_table(detailed)
    assert "1.lif" in table and "overall" in table and "62.50" in table


def functional_reset(model: nn.Module) -> None:
    from spikingjelly.activation_based import functional

    functional.reset_net(model)


def test_checkpoint_atomic_and_weights_only(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"model": model.state_dict(), "optimizer": opt.state_dict(), "rng": ckpt_io.rng_state(),
             "config": {"a": 1, "b": [1, 2], "c": None}, "step": 3}
    path = tmp_path / "c" / "last.pt"
    ckpt_io.atomic_save(state, path)
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    loaded = torch.load(path, weights_only=True)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["weight"], model.weight)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot be read"):
        ckpt_io.load(path)
    with pytest.raises(UserError, match="does not exist"):
        ckpt_io.load(tmp_path / "missing.pt")


def test_rng_state_round_trip(tmp_path):
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    ckpt_io.atomic_save({"rng": ckpt_io.rng_state()}, tmp_path / "r.pt")
    first = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt_io.set_rng_state(torch.load(tmp_path / "r.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == first


def test_sequence_models_and_custom_spiking_modules_are_supported():
    from snn_engine.training.evaluation import evaluate_model, to_device
    from snn_engine.measure.metrics import time_averaged

    assert time_averaged(torch.ones(3, 2, 4)).shape == (2, 4) and time_averaged(torch.ones(2, 4)).shape == (2, 4)
    pair = to_device((torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3)), torch.device("cpu"), torch.float64)
    assert pair[0].dtype == torch.long and pair[1].dtype == torch.float64

    class Spikes(nn.Module):  # not a SpikingJelly neuron, but it declares that it spikes
        emits_spikes = True

        def forward(self, x):
            return (x > 0).to(x.dtype)

    class PairClassifier(nn.Module):  # a retrieval-style model: two token sequences -> [B, K]
        def __init__(self):
            super().__init__()
            self.embed, self.spike, self.head = nn.Embedding(5, 4), Spikes(), nn.Linear(8, 2)

        def forward(self, docs):
            feats = [self.spike(self.embed(d)).mean(1) for d in docs]
            return self.head(torch.cat(feats, -1))

    data = [((torch.randint(0, 5, (6,)), torch.randint(0, 5, (6,))), i % 2) for i in range(8)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    result = evaluate_model(PairClassifier(), loader, torch.device("cpu"))
    assert set(result["firing_rate"]) == {"spike", "mean", "overall", "sparsity"}
    assert 0.0 < result["firing_rate"]["overall"] < 1.0
    assert result["firing_rate"]["sparsity"] == pytest.approx(1 - result["firing_rate"]["overall"])


FAMILIES = ("mixer_snn", "spiking_ssm")


def test_engine_imports_no_model_family(repo):
    """The dependency goes one way: families import the engine, the engine asks models through protocols
    (fold_for_inference, mfi_audit, export_nir, ops_targets, count_ops, implementation_for)."""
    import ast

    offenders = []
    for path in sorted((repo / "snn_engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.relative_to(repo)}: {n}" for n in names if n.split(".")[0] in FAMILIES]
    assert not offenders, offenders


def test_spikingjelly_path_names_the_autocast_fallback(monkeypatch):
    from types import SimpleNamespace

    from spikingjelly.activation_based import neuron as sj_neuron
    from spikingjelly.activation_based import surrogate as sj_surrogate

    from snn_engine.measure import kernel_usage

    monkeypatch.setattr(kernel_usage, "_selected", lambda kind, device: f"triton ({kind})")
    cuda = SimpleNamespace(type="cuda", index=0)
    lif = sj_neuron.LIFNode(step_mode="m")  # SpikingJelly's own node: its membrane takes the input's dtype
    assert kernel_usage.spikingjelly_path(lif, SimpleNamespace(device=cuda, dtype=torch.float32)) == "triton (lif)"
    assert kernel_usage.spikingjelly_path(lif, SimpleNamespace(device=cuda, dtype=torch.float16)) == (
        "torch reference (fallback: float16 state)")
    ours = make_neuron(kind="plif")  # ours casts half inputs up: the fused kernel runs
    assert kernel_usage.spikingjelly_path(ours, SimpleNamespace(device=cuda, dtype=torch.float16)) == "triton (plif)"
    lif._neuron_precision = ("fp32", "fp32", "fp32")
    assert kernel_usage.spikingjelly_path(lif, SimpleNamespace(device=cuda, dtype=torch.float16)) == (
        "triton (explicit precision)")

    class Custom(sj_surrogate.SurrogateFunctionBase):  # a user's surrogate: no fused kernel
        def __init__(self):
            super().__init__(alpha=1.0)

    custom = sj_neuron.LIFNode(step_mode="m", surrogate_function=Custom())
    assert "surrogate" in kernel_usage.spikingjelly_path(custom, SimpleNamespace(device=cuda, dtype=torch.float32))
    assert kernel_usage.spikingjelly_path(lif, torch.zeros(2, 3)) == "torch (cpu)"


def test_implementation_counter_counts_every_call():
    from snn_engine.measure.kernel_usage import ImplementationCounter
    from spikingjelly.activation_based.functional import reset_net

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), make_neuron(kind="lif"), torch.nn.Linear(4, 4),
                                make_neuron(kind="if"))
    with ImplementationCounter(model) as usage:
        for _ in range(3):
            model(torch.randn(5, 2, 4))
            reset_net(model)
    model(torch.randn(5, 2, 4))  # after the context: not counted
    assert usage.summary() == {"calls": {"torch (cpu)": 6}, "layers": {"1": {"torch (cpu)": 3},
                                                                        "3": {"torch (cpu)": 3}},
                               "fallback_layers": []}
    assert usage.describe() == "torch (cpu): 2 layers"


@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
def test_neurons_keep_a_float32_membrane_under_autocast(kind):
    from spikingjelly.activation_based.functional import reset_net

    x = (torch.randn(6, 3, 5, generator=torch.Generator().manual_seed(0)) * 2).bfloat16().requires_grad_()
    neuron = make_neuron(kind=kind)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spikes = neuron(x)
    assert spikes.dtype == torch.float32 and neuron.v.dtype == torch.float32
    spikes.sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16
    reset_net(neuron)
    reference = make_neuron(kind=kind)
    assert torch.equal(spikes, reference(x.detach().float()))  # the same as integrating the float32 currents
