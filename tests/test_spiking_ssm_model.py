"""Tests of the SpikingSSM model (spiking_ssm.s4d / layer / backbone / streaming): the S4D kernel against a
direct recurrence and a direct convolution, the layer's wiring, norm placements, dropout, optimizer hints,
preset parameter counts against the reference (section 3), shapes, and streaming == convolutional mode."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from spikingjelly.activation_based import functional
from torch import nn

from snn_engine.errors import UserError
from snn_engine.neurons import make_neuron
from snn_engine.training.optim import param_groups
from spiking_ssm.backbone import (
    PRESETS, SpikingSSMClassifier, SpikingSSMRetrieval, build_preset, n_backbone_params,
)
from spiking_ssm.layer import DropoutNd, SpikingSSM, SpikingSSMBlock
from spiking_ssm.s4d import S4DKernel, bidirectional_kernel, fft_conv, two_level_vandermonde, vandermonde_kernel
from spiking_ssm.streaming import StreamingClassifier, StreamingSpikingSSM

# SpikingJelly's LIFNode with the SpikingSSM constants (neuron=lif neuron.leak=null: u <- u - u / (8/7) + y, spike
# at u >= 1, hard reset to 0, triangle surrogate); `neuron=lif` itself is the paper's arithmetic (LeakLIFNode)
LIF = partial(make_neuron, kind="lif", tau=8 / 7, decay_input=False, v_threshold=1.0, v_reset=0.0,
              detach_reset=True, surrogate="piecewise_quadratic", alpha=1.0)


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- S4D kernel


@pytest.mark.parametrize("trainable_B", [False, True])
def test_causal_fft_conv_equals_direct_recurrence(trainable_B):
    torch.manual_seed(0)
    H, N, L, B = 3, 8, 40, 2
    kernel = S4DKernel(H, N, channels=1, trainable_B=trainable_B).double()
    if trainable_B:  # move B away from its init so that it matters
        with torch.no_grad():
            kernel.B.add_(0.3 * torch.randn_like(kernel.B))
    u = torch.randn(B, H, L, dtype=torch.float64)
    y_fft = fft_conv(u, kernel(L)[0])

    Abar, Bbar, C = kernel.discretize()
    x = torch.zeros(B, H, N // 2, dtype=torch.complex128)
    ys = []
    for t in range(L):
        x = Abar * x + Bbar * u[..., t : t + 1]
        ys.append(2 * (C[0] * x).sum(-1).real)
    torch.testing.assert_close(y_fft, torch.stack(ys, -1), rtol=1e-9, atol=1e-10)


def test_kernel_closed_form_and_init():
    torch.manual_seed(0)
    kernel = S4DKernel(2, 6, dt_min=1e-3, dt_max=1e-1).double()
    A = -torch.exp(kernel.log_A_real) + 1j * kernel.A_imag
    torch.testing.assert_close(A[0], torch.tensor([-0.5 + 1j * math.pi * n for n in range(3)], dtype=A.dtype))
    assert (kernel.log_dt >= math.log(1e-3)).all() and (kernel.log_dt <= math.log(1e-1)).all()
    dt = torch.exp(kernel.log_dt)[:, None, None]
    C = torch.view_as_complex(kernel.C)[0][..., None]
    l = torch.arange(10, dtype=torch.float64)
    expected = 2 * (C * (torch.exp(dt * A[..., None]) - 1) / A[..., None] * torch.exp(dt * A[..., None] * l)).sum(1).real
    torch.testing.assert_close(kernel(10)[0], expected)


def test_bidirectional_fft_conv_equals_direct_convolution():
    torch.manual_seed(1)
    H, L = 2, 30
    kernel = S4DKernel(H, 8, channels=2).double()
    k = kernel(L)
    u = torch.randn(3, H, L, dtype=torch.float64)
    y_fft = fft_conv(u, bidirectional_kernel(k))
    y = torch.zeros_like(u)
    for t in range(L):
        for s in range(L):
            if s <= t:
                y[..., t] += k[0, :, t - s] * u[..., s]
            else:
                y[..., t] += k[1, :, s - t - 1] * u[..., s]
    torch.testing.assert_close(y_fft, y, rtol=1e-9, atol=1e-10)
    # the future matters only through the backward kernel
    u2 = u.clone()
    u2[..., 20] += 1.0
    changed = (fft_conv(u2, bidirectional_kernel(k)) - y_fft).abs().amax((0, 1)) > 1e-12
    assert changed[:21].all() and changed[21:].any()
    causal = (fft_conv(u2, k[0]) - fft_conv(u, k[0])).abs().amax((0, 1)) > 1e-12
    assert not causal[:20].any() and causal[20:].all()


def test_chunked_vandermonde_matches_and_backpropagates():
    torch.manual_seed(2)
    H, half, L = 3, 4, 50
    coeff = torch.randn(2, H, half, dtype=torch.complex128, requires_grad=True)
    dtA = (-0.1 * torch.rand(H, half) + 1j * torch.rand(H, half)).to(torch.complex128).requires_grad_()
    weight = torch.randn(2, H, L, dtype=torch.float64)
    grads = []
    for chunk_elems in (1 << 20, 7 * H * half):  # one piece / 8 checkpointed chunks
        k = vandermonde_kernel(coeff, dtA, L, chunk_elems)
        grads.append((k, *torch.autograd.grad((k * weight).sum(), (coeff, dtA))))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("length", [1, 7, 64, 65, 1000])
@pytest.mark.parametrize("channels", [1, 2])
def test_two_level_vandermonde_equals_the_direct_product(length, channels):
    """The torch path (``l = i J + j``, one batched matrix product) against the direct product: float64 to rounding,
    float32 as close to float64 as the direct product itself, gradients of both inputs included."""
    torch.manual_seed(3)
    H, half = 3, 6
    coeff = torch.randn(channels, H, half, dtype=torch.complex128)
    dtA = torch.complex(-torch.rand(H, half, dtype=torch.float64).pow(3), 4 * torch.randn(H, half, dtype=torch.float64))
    weight = torch.randn(channels, H, length, dtype=torch.float64)

    def run(method, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (coeff, dtA)]
        k = method(*leaves, length)
        return (k, *torch.autograd.grad((k * weight.to(k.dtype)).sum(), leaves))

    truth = run(vandermonde_kernel, torch.complex128)
    for got, want in zip(run(two_level_vandermonde, torch.complex128), truth):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12 * want.abs().max().item())
    direct32, two_level32 = run(vandermonde_kernel, torch.complex64), run(two_level_vandermonde, torch.complex64)
    for got, direct, want in zip(two_level32, direct32, truth):
        assert got.dtype in (torch.float32, torch.complex64)
        scale = max(want.abs().max().item(), 1e-30)  # L = 1: dK/d(dtA) is exactly 0
        error = (got.to(want.dtype) - want).abs().max().item() / scale
        assert error <= max(2.0 * (direct.to(want.dtype) - want).abs().max().item() / scale, 1e-6)


def test_s4d_kernel_torch_path_is_the_two_level_product():
    kernel = S4DKernel(4, 8, channels=2, implementation="torch").double()
    dtA, Bbar, C = kernel._zoh()
    torch.testing.assert_close(kernel(300), two_level_vandermonde(C * Bbar, dtA, 300), rtol=0, atol=0)
    torch.testing.assert_close(kernel(300), vandermonde_kernel(C * Bbar, dtA, 300), rtol=1e-12, atol=1e-12)


def test_optimizer_hints():
    for trainable_B in (False, True):
        kernel = S4DKernel(4, 8, trainable_B=trainable_B, ssm_lr=0.002)
        ssm = [kernel.log_dt, kernel.log_A_real, kernel.A_imag] + ([kernel.B] if trainable_B else [])
        for p in ssm:
            assert p._optim == {"lr": 0.002, "weight_decay": 0.0}
        if trainable_B:
            assert kernel.C._optim == {"lr": 0.002}
        else:
            assert not hasattr(kernel.C, "_optim") and kernel.B is None
    layer = SpikingSSM(4, LIF, d_state=8)
    groups = param_groups(layer, weight_decay=0.01)
    decayed = {id(p) for g in groups if g["weight_decay"] == 0.01 and "lr" not in g for p in g["params"]}
    # as in the reference: C, D, ln_theta and the conv weight are decayed; the SSM parameters are not
    for p in (layer.kernel.C, layer.D, layer.ln_theta, layer.output_linear.weight):
        assert id(p) in decayed
    hinted = [g for g in groups if g.get("lr") == 1e-3]
    assert len(hinted) == 1 and hinted[0]["weight_decay"] == 0.0 and len(hinted[0]["params"]) == 3


# ----------------------------------------------------------------------------------------------- layer


def test_layer_wiring_and_gradients():
    torch.manual_seed(3)
    layer = SpikingSSM(6, LIF, d_state=8, bidirectional=True)
    with torch.no_grad():
        layer.ln_theta.copy_(0.2 * torch.randn(6, 1))
    u = torch.randn(2, 6, 32)
    out = layer(u)
    assert out.shape == (2, 6, 32)
    # hand-written reference of the wiring
    functional.reset_net(layer)
    k = bidirectional_kernel(layer.kernel(32))
    y = (fft_conv(u, k) + layer.D * u) / torch.exp(layer.ln_theta)
    s = LIF()(y.permute(2, 0, 1)).permute(1, 2, 0)
    assert set(s.unique().tolist()) <= {0.0, 1.0} and 0 < s.mean() < 1
    torch.testing.assert_close(out, nn.functional.glu(layer.output_linear(s), dim=1))
    functional.reset_net(layer)
    layer(u).square().sum().backward()
    for p in (layer.kernel.C, layer.kernel.log_dt, layer.kernel.log_A_real, layer.D, layer.ln_theta,
              layer.output_linear.weight, layer.output_linear.bias):
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_threshold_modes():
    torch.manual_seed(4)
    shared = SpikingSSM(4, LIF, d_state=4, threshold="shared")
    fixed = SpikingSSM(4, LIF, d_state=4, threshold="fixed")
    assert shared.ln_theta.shape == (1, 1) and isinstance(shared.ln_theta, nn.Parameter)
    assert "ln_theta" not in dict(fixed.named_parameters()) and "ln_theta" in dict(fixed.named_buffers())
    fixed.load_state_dict(shared.state_dict())
    u = torch.randn(2, 4, 16)
    torch.testing.assert_close(shared(u), fixed(u))  # theta = 1 at init
    with pytest.raises(UserError):
        SpikingSSM(4, LIF, threshold="learned")


def test_dropout_mask_shared_over_time():
    torch.manual_seed(5)
    drop = DropoutNd(0.5).train()
    out = drop(torch.ones(8, 16, 25))
    assert set(out.unique().tolist()) == {0.0, 2.0}
    assert (out == out[..., :1]).all()  # one mask per (sample, channel)
    assert drop.eval()(torch.ones(2, 3, 4)).eq(1).all()
    with pytest.raises(UserError):
        DropoutNd(1.0)


@pytest.mark.parametrize("norm", ["batch", "layer"])
def test_norm_placements(norm):
    torch.manual_seed(6)
    blocks = {}
    for place in ("pre", "post", "none"):
        torch.manual_seed(6)
        blocks[place] = SpikingSSMBlock(8, LIF, norm=norm, norm_place=place, d_state=4).eval()
        if place != "none":
            with torch.no_grad():
                blocks[place].norm.weight.uniform_(0.5, 1.5)
                blocks[place].norm.bias.uniform_(-0.5, 0.5)
    x = 2 * torch.randn(3, 8, 20) + 1
    outs = {}
    for place, block in blocks.items():
        functional.reset_net(block)
        outs[place] = block(x)
    layer = blocks["none"].layer
    def run(z):
        functional.reset_net(layer)
        return layer(z)
    norm_mod = blocks["pre"].norm
    torch.testing.assert_close(outs["none"], x + run(x))
    torch.testing.assert_close(outs["pre"], x + run(norm_mod(x)))
    torch.testing.assert_close(outs["post"], blocks["post"].norm(x + run(x)))
    assert not torch.allclose(outs["pre"], outs["post"]) and not torch.allclose(outs["post"], outs["none"])
    assert isinstance(blocks["none"].norm, nn.Identity)
    assert len(list(blocks["none"].parameters())) == len(list(blocks["pre"].parameters())) - 2


def test_block_dropout_before_residual_add():
    torch.manual_seed(7)
    block = SpikingSSMBlock(8, LIF, norm="layer", norm_place="none", d_state=4, dropout=0.5).train()
    block.layer.dropout.p = 0.0  # isolate the block dropout
    x = torch.randn(2, 8, 12)
    functional.reset_net(block)
    torch.manual_seed(8)
    z = block(x) - x
    dropped = (z.abs().amax(-1) == 0)
    assert dropped.any() and (~dropped).any()  # whole channels dropped over all time steps


# ----------------------------------------------------------------------------------------------- backbones


REFERENCE_EXACT = {  # the reference's backbone counts reconstructed from its module shapes (section 3)
    "listops": 821_760, "imdb": 821_760, "aan": 1_092_096, "pathfinder": 1_092_096, "pathx": 1_190_400,
    "cifar": 3_757_056, "smnist": 748_000, "psmnist": 662_528, "speech_commands": 251_136,
    "dvs_gesture": 3_363_840,
}


@pytest.mark.parametrize("name", sorted(REFERENCE_EXACT))
def test_preset_parameter_counts(name):
    preset = PRESETS[name]
    model = build_preset(name, LIF)
    n = n_backbone_params(model)
    assert abs(n - preset["reference_params"]) <= 0.01 * preset["reference_params"]
    # exact: our noNorm presets have no norm modules (the reference keeps n_layers * 2H unused norm params)
    missing = preset["n_layers"] * 2 * preset["d_model"] if preset["norm_place"] == "none" else 0
    assert n + missing == REFERENCE_EXACT[name]
    assert sum(b.numel() for b in model.buffers()) < n  # neuron state is not a parameter


def _small_input(preset, B, L):
    if preset["vocab_size"] is not None:
        return torch.randint(0, preset["vocab_size"], (B, L))
    if preset["d_input"] == 1:
        return torch.randn(B, L)
    return torch.randn(B, L, preset["d_input"])


@pytest.mark.parametrize("name", sorted(REFERENCE_EXACT))
def test_preset_shapes(name):
    torch.manual_seed(9)
    preset = PRESETS[name]
    model = build_preset(name, LIF, d_model=16, n_layers=2)
    B, L = 2, 12
    if preset["model"] == "retrieval":
        x1, x2 = _small_input(preset, B, L), _small_input(preset, B, L - 3)
        out = model(x1, x2)
        functional.reset_net(model)
        out2 = model(torch.stack([x1, x1], 1))
        assert out2.shape == (B, preset["num_classes"])
    else:
        out = model(_small_input(preset, B, L))
    assert out.shape == (B, preset["num_classes"])
    assert torch.isfinite(out).all()


def test_full_size_preset_forward_small_length():
    torch.manual_seed(10)
    model = build_preset("cifar", LIF).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 16))
    assert out.shape == (2, 10)


def test_classifier_lengths_mask_and_gradients():
    torch.manual_seed(11)
    model = SpikingSSMClassifier(LIF, d_input=3, num_classes=4, d_model=8, n_layers=2, d_state=4,
                                 bidirectional=False, norm="layer", norm_place="pre").eval()
    x = torch.randn(2, 10, 3)
    padded = torch.cat([x, torch.randn(2, 5, 3)], 1)
    functional.reset_net(model)
    a = model(x)
    functional.reset_net(model)
    b = model(padded, lengths=torch.tensor([10, 10]))
    torch.testing.assert_close(a, b)  # causal: the padding cannot leak into the valid positions
    model.train()
    functional.reset_net(model)
    model(padded, lengths=torch.tensor([10, 15])).sum().backward()
    assert model.encoder.weight.grad.abs().sum() > 0 and model.decoder.weight.grad.abs().sum() > 0
    with pytest.raises(UserError):
        SpikingSSMClassifier(LIF, d_input=None, vocab_size=None)


def test_retrieval_features():
    torch.manual_seed(12)
    model = SpikingSSMRetrieval(LIF, vocab_size=20, d_model=8, n_layers=1, d_state=4, norm="layer").eval()
    x1, x2 = torch.randint(0, 20, (3, 9)), torch.randint(0, 20, (3, 9))
    u = model.features(x1)
    functional.reset_net(model)  # the LIF state carries over between calls
    v = model.features(x2)
    functional.reset_net(model)
    expected = model.decoder(torch.cat([u, v, u * v, u - v], -1))
    torch.testing.assert_close(model(x1, x2), expected)
    assert isinstance(model.decoder[1], nn.GELU) and model.decoder[0].in_features == 32


# ----------------------------------------------------------------------------------------------- streaming


def _spike_recorder(model):
    records = []
    for block in model.backbone.blocks:
        block.layer.neuron.register_forward_hook(lambda m, i, o: records.append(o.permute(1, 2, 0)))
    return records


@pytest.mark.parametrize(
    "norm,place,trainable_B,threshold",
    [("layer", "pre", False, "channel"), ("batch", "pre", True, "shared"), ("batch", "post", False, "fixed")],
)
def test_streaming_equals_convolution(norm, place, trainable_B, threshold):
    torch.manual_seed(13)
    model = SpikingSSMClassifier(LIF, d_input=2, num_classes=3, d_model=8, n_layers=2, d_state=8,
                                 bidirectional=False, trainable_B=trainable_B, norm=norm, norm_place=place,
                                 threshold=threshold, dropout=0.1).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "ln_theta" in name or "norm" in name:
                p.add_(0.2 * torch.randn_like(p))
    if norm == "batch":  # non-trivial running statistics
        model.train()
        for _ in range(2):
            functional.reset_net(model)
            model(torch.randn(4, 64, 2, dtype=torch.float64))
    model.eval()
    x = 2 * torch.randn(3, 64, 2, dtype=torch.float64)
    records = _spike_recorder(model)
    functional.reset_net(model)
    with torch.no_grad():
        logits = model(x)
        functional.reset_net(model)
        top = model.backbone(model.encode(x).transpose(1, 2))
    conv_spikes = records[:2]
    assert 0.02 < conv_spikes[0].mean() < 0.98

    stream = StreamingClassifier(model)
    feats, spikes = [], [[], []]
    for t in range(x.shape[1]):
        feats.append(stream.step(x[:, t]))
        for i, block in enumerate(stream.blocks):
            spikes[i].append(block.layer.last_spikes)
    for i in range(2):
        assert torch.equal(torch.stack(spikes[i], -1), conv_spikes[i])
    torch.testing.assert_close(torch.stack(feats, -1), top, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stream.logits(), logits, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(stream.run(x), logits, rtol=1e-9, atol=1e-9)


def test_streaming_layer_and_refusals():
    torch.manual_seed(14)
    layer = SpikingSSM(4, LIF, d_state=4).double().eval()
    u = torch.randn(2, 4, 30, dtype=torch.float64) * 2
    functional.reset_net(layer)
    with torch.no_grad():
        ref = layer(u)
    stream = StreamingSpikingSSM(layer)
    out = torch.stack([stream.step(u[..., t]) for t in range(30)], -1)
    torch.testing.assert_close(out, ref, rtol=1e-9, atol=1e-9)
    with pytest.raises(UserError):
        StreamingSpikingSSM(SpikingSSM(4, LIF, d_state=4, bidirectional=True))
    bidir = SpikingSSMClassifier(LIF, d_input=1, d_model=4, n_layers=1, d_state=4, bidirectional=True).eval()
    with pytest.raises(UserError):
        StreamingClassifier(bidir)
    causal = SpikingSSMClassifier(LIF, d_input=1, d_model=4, n_layers=1, d_state=4, bidirectional=False)
    with pytest.raises(UserError):
        StreamingClassifier(causal)  # still in training mode


def test_argument_errors_and_half_precision_conv():
    from spiking_ssm.backbone import preset_kwargs

    with pytest.raises(UserError):
        preset_kwargs("wt103")
    with pytest.raises(UserError):
        SpikingSSMBlock(4, LIF, norm="group")
    with pytest.raises(UserError):
        SpikingSSMBlock(4, LIF, norm_place="middle")
    with pytest.raises(UserError):
        S4DKernel(4, 5)
    with pytest.raises(UserError):
        SpikingSSMClassifier(LIF, d_input=1, pool="max")
    assert preset_kwargs("pathx", dropout=0.2)["dropout"] == 0.2 and preset_kwargs("pathx")["dt_min"] == 1e-4
    torch.manual_seed(15)
    u, k = torch.randn(2, 3, 24), torch.randn(3, 24)
    out = fft_conv(u.bfloat16(), k)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, fft_conv(u.bfloat16().float(), k))


class _LeakLIF(nn.Module):
    """A SpikingSSM-convention neuron (``tau`` is the leak factor), like spiking_ssm.somas' sdn/sltt."""

    tau = 0.125

    def forward(self, y):
        u, out = torch.zeros_like(y[0]), []
        for t in range(y.shape[0]):
            u = self.tau * u + y[t]
            s = (u >= 1.0).to(y.dtype)
            u = u * (1 - s)
            out.append(s)
        return torch.stack(out)


def test_streaming_reads_neuron_conventions():
    from spiking_ssm.streaming import LIFConstants

    sj = LIFConstants.from_neuron(LIF())
    assert sj.leak is None and sj.tau == pytest.approx(8 / 7) and sj.v_reset == 0.0 and not sj.decay_input
    assert LIFConstants.from_neuron(_LeakLIF()).leak == 0.125
    assert LIFConstants.from_neuron(nn.Identity()) == LIFConstants()  # default: the SDN's LIF
    torch.manual_seed(16)
    layer = SpikingSSM(4, _LeakLIF, d_state=4, bidirectional=False).double().eval()
    u = 2 * torch.randn(2, 4, 40, dtype=torch.float64)
    with torch.no_grad():
        ref_spikes, ref = layer.spikes(u), layer(u)
    stream = StreamingSpikingSSM(layer)
    outs, spikes = [], []
    for t in range(40):
        outs.append(stream.step(u[..., t]))
        spikes.append(stream.last_spikes)
    assert torch.equal(torch.stack(spikes, -1), ref_spikes)
    torch.testing.assert_close(torch.stack(outs, -1), ref, rtol=1e-9, atol=1e-9)

