"""Tests of snn_engine.measure.ops: exact AC/MAC counts against a brute-force loop, against SpikingJelly 2.0's SynOp
counter, on a SpikingSSM classifier (full and ssm_paper conventions), energies, time steps and errors."""

from __future__ import annotations

import itertools

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron
from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter
from torch import nn

from snn_engine.errors import UserError
from snn_engine.measure.ops import (
    OpContext,
    OpCount,
    OpCounter,
    conv_ops,
    eng,
    format_ops_table,
    generic_ops,
    is_binary,
    linear_ops,
    steps_in,
)
from spiking_ssm.backbone import SpikingSSMClassifier
from spiking_ssm.somas import make_ssm_neuron

pytestmark = pytest.mark.usefixtures("one_thread")


class Spike(nn.Module):
    """Heaviside x > 0 -> {0, 1} (a stand-in neuron so that every layer after it sees spikes)."""

    def forward(self, x):
        return (x > 0).to(x.dtype)


def brute_force_conv(conv: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(active taps, in-range taps) summed over every output element of ``conv`` on x [N, C, *spatial]."""
    dims = x.ndim - 2
    out_shape = conv(x).shape[2:]
    k, s, d = conv.kernel_size, conv.stride, conv.dilation
    p = conv.padding
    cin_g, cout_g = conv.in_channels // conv.groups, conv.out_channels // conv.groups
    xs = x.tolist()
    active = in_range = 0
    for n, co in itertools.product(range(x.shape[0]), range(conv.out_channels)):
        g = co // cout_g
        for pos in itertools.product(*(range(o) for o in out_shape)):
            for ci in range(g * cin_g, (g + 1) * cin_g):
                for off in itertools.product(*(range(kk) for kk in k)):
                    idx = [pos[i] * s[i] - p[i] + off[i] * d[i] for i in range(dims)]
                    if all(0 <= idx[i] < x.shape[2 + i] for i in range(dims)):
                        in_range += 1
                        v = xs[n][ci]
                        for i in idx:
                            v = v[i]
                        active += v != 0
    return active, in_range


def make_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), Spike(),
        nn.Conv2d(6, 4, (2, 3), stride=(1, 2), padding=(0, 2), dilation=(1, 2)), Spike(),
        nn.Flatten(2),
        nn.Conv1d(4, 6, 3, stride=2, padding=1, groups=2), Spike(),
        nn.Conv1d(6, 4, 2), Spike(),
        nn.Flatten(), nn.LazyLinear(5),
    ).double()


def layer_inputs(net: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    seen = {}
    handles = [m.register_forward_hook(lambda m, i, o, n=n: seen.__setitem__(n, i[0]))
               for n, m in net.named_children() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear))]
    net(x)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("binary", [True, False])
def test_counts_equal_brute_force(binary):
    net = make_net()
    torch.manual_seed(1)
    x = (torch.rand(2, 4, 7, 9, dtype=torch.float64) < 0.3).double() if binary else torch.randn(2, 4, 7, 9).double()
    net(x)  # materialise the lazy linear
    inputs = layer_inputs(net, x)
    with OpCounter(net) as counter:
        net(x)
    result = counter.compute()
    assert result["samples"] == 2
    for name, xin in inputs.items():
        module, got = net.get_submodule(name), result["layers"][name]
        first = name == "0"
        if isinstance(module, nn.Linear):
            active, in_range = int((xin != 0).sum()) * 5, xin.numel() * 5
        else:
            active, in_range = brute_force_conv(module, xin)  # per output element, so per output channel
        if binary or not first:  # after a Spike every layer sees spikes
            assert got["input"] == "spikes" and got["mac"] == 0
            assert got["ac"] * 2 == active
        else:
            assert got["input"] == "real" and got["ac"] == 0
            assert got["mac"] * 2 == in_range
        assert got["ann_mac"] * 2 == in_range  # dense = every in-range product, padded zeros excluded
    # an unpadded conv: in-range products == out_numel * fan_in exactly
    conv = net.get_submodule("7")
    xin = inputs["7"]
    fan_in = conv.in_channels // conv.groups * conv.kernel_size[0]
    assert result["layers"]["7"]["ann_mac"] * 2 == conv(xin).numel() * fan_in


def test_helpers_exact_on_edge_cases():
    ctx = OpContext(time_steps=1, batch_size=3)
    assert is_binary(torch.tensor([0.0, 1.0])) and not is_binary(torch.tensor([0.0, 0.5]))
    assert not is_binary(torch.tensor([0, 1]))  # integer token ids are not spikes
    assert is_binary(torch.tensor([True, False]))
    x = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
    assert linear_ops(x, 4, ctx) == OpCount(ac=24.0, dense=36.0)
    assert linear_ops(x * 0.5, 4, ctx) == OpCount(mac=36.0, dense=36.0)
    assert OpCount(1, 2, 3) + OpCount(10, 20, 30) == OpCount(11, 22, 33)
    conv = nn.Conv1d(2, 4, 3, padding=1, padding_mode="circular")  # circular padding reads real inputs
    ops = conv_ops(conv, torch.ones(1, 2, 5), ctx)
    assert ops == OpCount(ac=5 * 4 * 2 * 3, dense=5 * 4 * 2 * 3)
    # time axis: [T*B, ...] and [T, B, ...] carry T steps; a static [B, ...] runs once; T = 1 changes nothing
    ctx4 = OpContext(time_steps=4, batch_size=3)
    assert steps_in(torch.ones(12, 5), ctx4) == 4 and steps_in(torch.ones(24, 5), ctx4) == 4
    assert steps_in(torch.ones(4, 3, 5), ctx4) == 4 and steps_in(torch.ones(3, 2, 8, 8), ctx4) == 1
    assert steps_in(torch.ones(12, 5), ctx) == 1
    assert linear_ops(torch.ones(12, 5), 2, ctx4) == OpCount(ac=120.0, dense=30.0)
    assert linear_ops(torch.ones(12, 5), 2, ctx4, once=True).dense == 120.0
    # norms (not folded) and GLU: MACs per element
    x3 = torch.randn(3, 4, 5)
    assert generic_ops(nn.BatchNorm1d(4).eval(), (x3,), x3, ctx) == OpCount(mac=60.0, dense=60.0)
    assert generic_ops(nn.LayerNorm(5), (x3,), x3, ctx) == OpCount(mac=120.0, dense=120.0)
    glu_out = nn.GLU(dim=1)(x3)
    assert generic_ops(nn.GLU(dim=1), (x3,), glu_out, ctx) == OpCount(mac=30.0, dense=30.0)
    assert generic_ops(nn.Embedding(3, 2), (torch.tensor([1]),), None, ctx) is None
    assert (eng(1.234e6), eng(4.5e-6, "J"), eng(999.9999), eng(0.0)) == ("1.23M", "4.5 uJ", "1k", "0")
    with pytest.raises(UserError, match="Conv1d/nn.Conv2d"):
        conv_ops(nn.Conv3d(1, 1, 1), torch.ones(1, 1, 1, 1, 1), ctx)


def test_matches_spikingjelly_synops():
    """SJ's SynOpCounter counts spike-driven mm/addmm/conv only: a layer on real input (the stem) gives 0 there,
    so our total AC (the stem is a MAC here) equals SJ's SynOps exactly; biases are not counted by either."""
    torch.manual_seed(0)
    T, B = 3, 2
    net = nn.Sequential(
        layer.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1)), neuron.LIFNode(step_mode="m", tau=1.5),
        layer.SeqToANNContainer(nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)),
        neuron.LIFNode(step_mode="m", tau=1.5),
        layer.SeqToANNContainer(nn.Flatten(), nn.Linear(6 * 4 * 4, 5)),
    ).eval()
    x = torch.rand(T, B, 2, 8, 8) * 3
    with OpCounter(net, time_steps=T) as counter:
        with torch.no_grad():
            net(x)
    functional.reset_net(net)
    ours = counter.compute()
    synop = SynOpCounter()
    with torch.no_grad(), DispatchCounterMode([synop]):
        net(x)
    functional.reset_net(net)
    assert ours["samples"] == B
    assert ours["layers"]["0.0"]["input"] == "real" and ours["layers"]["0.0"]["ac"] == 0
    assert ours["total"]["ac"] > 0
    assert ours["total"]["ac"] * B == synop.get_total()
    # inputs [T*B, ...] carry time: the ANN equivalent is one step of the T-step count
    conv = net[2][0]
    dense_all_steps = conv_ops(conv, torch.ones(T * B, 4, 8, 8), OpContext(1, T * B)).dense
    assert ours["layers"]["2.0"]["ann_mac"] * B * T == dense_all_steps


def small_ssm(bidirectional: bool) -> SpikingSSMClassifier:
    torch.manual_seed(0)
    model = SpikingSSMClassifier(lambda: make_ssm_neuron("lif"), d_input=1, num_classes=3, d_model=6, n_layers=2,
                                 d_state=4, bidirectional=bidirectional)
    return model.double().eval()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_spiking_ssm_counts(bidirectional):
    model = small_ssm(bidirectional)
    B, L, H, N, n_layers = 3, 16, 6, 4, 2
    x = torch.randn(B, L, dtype=torch.float64) * 3
    spikes = {}
    handles = [block.layer.neuron.register_forward_hook(
        lambda m, i, o, k=k: spikes.__setitem__(k, int(torch.count_nonzero(o)))) for k, block in
        enumerate(model.backbone.blocks)]
    with OpCounter(model) as counter, torch.no_grad():
        model(x)
    functional.reset_net(model)
    for h in handles:
        h.remove()
    full = counter.compute()
    assert full["samples"] == B
    for k in range(n_layers):
        mixing = full["layers"][f"backbone.blocks.{k}.layer.output_linear"]
        assert mixing["input"] == "spikes" and mixing["mac"] == 0
        assert mixing["ac"] * B == 2 * H * spikes[k]
        assert mixing["ann_mac"] == L * H * 2 * H
        own = full["layers"][f"backbone.blocks.{k}.layer"]
        per_step = 4 * N * (2 if bidirectional else 1) + 2
        assert own["input"] == "real" and own["mac"] == own["ann_mac"] == L * H * per_step
        assert full["layers"][f"backbone.blocks.{k}.layer.glu"]["mac"] == L * H
        assert full["layers"][f"backbone.blocks.{k}.norm"]["mac"] == L * H
    assert full["layers"]["encoder"]["mac"] == L * 1 * H and full["layers"]["decoder"]["mac"] == H * 3
    assert sum(spikes.values()) > 0

    with OpCounter(model, convention="ssm_paper") as counter, torch.no_grad():
        model(x)
    functional.reset_net(model)
    paper = counter.compute()
    assert set(paper["layers"]) == {f"backbone.blocks.{k}.layer.output_linear" for k in range(n_layers)}
    assert paper["total"]["ann_mac"] == L * H * 2 * H * n_layers
    assert paper["total"]["mac"] == 0
    assert paper["total"]["ac"] * B == 2 * H * sum(spikes.values())


def test_energy_time_steps_accumulation_and_errors():
    T, B, F = 4, 3, 5

    class Repeated(nn.Module):
        """A stem run once on [B, F] real input, then a layer fed [T*B, F] spikes."""

        def __init__(self):
            super().__init__()
            self.stem = nn.Linear(F, F)
            self.fc = nn.Linear(F, 7)

        def forward(self, x):
            h = self.stem(x)
            s = (h.repeat(T, 1) > 0).to(h.dtype)
            return self.fc(s)

    torch.manual_seed(0)
    model = Repeated().double()
    x = torch.randn(B, F, dtype=torch.float64)
    with OpCounter(model, time_steps=T, e_ac=2.0, e_mac=10.0) as counter:
        model(x)
        model(x)
    result = counter.compute()
    stem, fc = result["layers"]["stem"], result["layers"]["fc"]
    assert result["samples"] == 2 * B
    assert stem["mac"] == stem["ann_mac"] == F * F  # once: no division by T
    nnz = int((model.stem(x).repeat(T, 1) > 0).sum())
    assert fc["ac"] == nnz * 7 / B  # sums over both calls, per sample
    assert fc["ann_mac"] == F * 7  # [T*B, F]: one step
    total = result["total"]
    assert total["energy_pj"] == pytest.approx(2.0 * total["ac"] + 10.0 * total["mac"])
    assert total["ann_energy_pj"] == pytest.approx(10.0 * (F * F + F * 7))
    assert total["energy_ratio"] == pytest.approx(total["energy_pj"] / total["ann_energy_pj"])
    assert result["unit_energy_pj"] == {"ac": 2.0, "mac": 10.0}
    table = format_ops_table(result)
    assert "TOTAL" in table and "E_AC=2.0 pJ" in table and "convention=full" in table

    with OpCounter(model) as counter:
        model(x)
    default = counter.compute()["total"]
    assert default["energy_pj"] == pytest.approx(0.9 * default["ac"] + 4.6 * default["mac"])

    with pytest.raises(UserError, match="full"):
        OpCounter(model, convention="paper")
    with pytest.raises(UserError, match="SpikingSSM"):
        OpCounter(model, convention="ssm_paper").__enter__()
    with pytest.raises(UserError, match="no forward call"):
        with OpCounter(model) as counter:
            pass
        counter.compute()


def spikingjelly_totals(model: nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """SpikingJelly's ``op_counter``: (SynOps, MACs) of one forward of ``model(x)``, over the whole batch."""
    synops, macs = SynOpCounter(), MACCounter()
    with torch.no_grad(), DispatchCounterMode([synops, macs]):
        model(x)
    functional.reset_net(model)
    return synops.get_total(), macs.get_total()


@pytest.mark.parametrize("spe", [True, False], ids=["spe", "mlp_s"])
def test_sparse_mlp_totals_equal_spikingjelly_op_counter(spe):
    """Counted from the aten ops that ran, SpikingJelly's SynOpCounter and MACCounter give exactly our AC and MAC
    totals on the sparse-MLP (spike-driven linear maps, token matmuls and SPE convs as AC; the stem conv, the BNs
    at one MAC per element and the head as MAC)."""
    from tests.mixer_fixtures import images, trained_like

    model = trained_like(0, spe=spe)
    x = images(2)
    with OpCounter(model, time_steps=model.T) as counter, torch.no_grad():
        model(x)
    functional.reset_net(model)
    ours = counter.compute()["total"]
    synops, macs = spikingjelly_totals(model, x)
    assert ours["ac"] > 1000 and ours["mac"] > 1000
    assert ours["ac"] * 2 == synops and ours["mac"] * 2 == macs


@pytest.mark.parametrize("bidirectional", [False, True])
def test_spiking_ssm_ac_equals_spikingjelly_synops(bidirectional):
    """On a SpikingSSM only the ACs compare: SynOps are the spike-driven 1x1 mixing convs, our AC too; the MACs
    do not (we count the S4D convolution at its recurrent deployment cost and the GLU, SpikingJelly the aten ops
    that ran, where the FFT convolution is not a multiply-accumulate it counts)."""
    model = small_ssm(bidirectional)
    x = torch.randn(3, 16, dtype=torch.float64) * 3
    with OpCounter(model) as counter, torch.no_grad():
        model(x)
    functional.reset_net(model)
    ours = counter.compute()["total"]
    synops, _ = spikingjelly_totals(model, x)
    assert ours["ac"] > 0 and ours["ac"] * 3 == synops
