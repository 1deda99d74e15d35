"""The fused Triton kernels of SpikingSSM against their torch references.

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by conftest), with one on
CUDA. Shapes are small and odd: lengths below the SDN's receptive field (L < 8), not a multiple of the block,
strided views as the layer passes them. Spikes must be identical except where ``|m + y - 1|`` is within rounding
of 0, gradients equal to 1e-5 relative (float64: to rounding).
"""

import functools

import pytest
import torch

from snn_engine.errors import UserError
from snn_engine.neurons import select_implementation
from spiking_ssm.kernels import launch, runtime
from spiking_ssm.kernels.vandermonde import fused_vandermonde_kernel
from spiking_ssm.layer import SpikingSSM
from spiking_ssm.somas import SDNNeuron, SLTTLIFNeuron, make_ssm_neuron
from spiking_ssm.s4d import S4DKernel, fft_conv, vandermonde_kernel
from spiking_ssm.sdn.network import SDN, reduce_sdn

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
LENGTHS = [1, 5, 8, pytest.param(9, marks=pytest.mark.slow), pytest.param(263, marks=pytest.mark.slow)]  # 263: two SDN blocks of 256, the second partial


@pytest.fixture(autouse=True)
def _exact_references():
    """TF32 off: on CUDA the SDN reference's ``F.conv1d`` would otherwise round its inputs to 10-bit mantissas."""
    with launch.exact_fp32():
        yield


def _random_sdn_neuron(implementation: str, seed: int = 0) -> SDNNeuron:
    """The packaged neuron with random (non-symmetric) reduced weights, so a misread weight shows."""
    torch.manual_seed(seed)
    training = SDN()
    for norm in (training.spatial_norm, training.feature_norm):
        norm.running_mean.normal_(0, 0.3)
        norm.running_var.uniform_(0.5, 2.0)
    neuron = SDNNeuron(implementation=implementation).to(DEVICE)
    reduced = reduce_sdn(training.eval())
    with torch.no_grad():
        for key, value in reduced.state_dict().items():
            if key != "tau":
                getattr(neuron.sdn, key).copy_(value)
    return neuron


def _currents(length: int, dtype: torch.dtype, layout: str, seed: int = 1) -> torch.Tensor:
    """Time-major [L, B=2, H=3] currents in memory laid out as the layer (``bhl``), as an FFT output slice
    (``slice``) or time-major contiguous (``lbh``)."""
    g = torch.Generator().manual_seed(seed)
    if layout == "lbh":
        return (1.2 * torch.randn(length, 2, 3, generator=g, dtype=torch.float64) + 0.3).to(DEVICE, dtype)
    wide = 1.2 * torch.randn(2, 3, 2 * length, generator=g, dtype=torch.float64) + 0.3
    bhl = wide[..., :length] if layout == "slice" else wide[..., :length].contiguous()
    return bhl.to(DEVICE, dtype).permute(2, 0, 1)


def _forward_backward(neuron, y: torch.Tensor, upstream: torch.Tensor):
    y = y.detach().requires_grad_()
    spikes = neuron(y)
    (spikes * upstream).sum().backward()
    return spikes.detach(), y.grad


def _assert_same(spikes, grad, ref_spikes, ref_grad, margin, dtype, near_zero):
    differ = spikes != ref_spikes
    assert not (differ & (near_zero.abs() > margin)).any(), "spikes differ away from the threshold"
    assert differ.float().mean().item() < 1e-3
    keep = ~differ  # a flipped spike may also flip its surrogate factor
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    scale = ref_grad.abs().max().item() or 1.0
    torch.testing.assert_close(grad[keep], ref_grad[keep], rtol=tol, atol=tol * scale)


# ---------------------------------------------------------------- SDN soma


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["bhl", "slice", "lbh"])
def test_fused_sdn_equals_torch_reference(length, dtype, layout):
    fused, reference = _random_sdn_neuron("triton"), _random_sdn_neuron("torch")
    y = _currents(length, dtype, layout)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(2), dtype=dtype).to(DEVICE)
    spikes, grad = _forward_backward(fused, y, upstream)
    ref_spikes, ref_grad = _forward_backward(reference, y, upstream)
    assert fused.last_implementation == "triton" and reference.last_implementation == "torch"
    assert spikes.dtype == dtype and spikes.shape == y.shape
    z = reference.membrane(y) + y - 1.0
    _assert_same(spikes, grad, ref_spikes, ref_grad, 1e-12 if dtype == torch.float64 else 1e-5, dtype, z)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])  # bfloat16: through float32 in the interpreter
def test_fused_sdn_takes_half_inputs_and_computes_in_float32(dtype):
    fused, reference = _random_sdn_neuron("triton"), _random_sdn_neuron("torch")
    y = _currents(40, dtype, "bhl")
    spikes = fused(y)
    assert spikes.dtype == dtype
    exact = reference(y.float())  # the same inputs, float32 arithmetic
    z = reference.membrane(y.float()) + y.float() - 1.0
    assert not ((spikes.float() != exact) & (z.abs() > 1e-5)).any()
    # the stored surrogate factor is the float32 one rounded once to the half type (one half-type ulp apart at most:
    # the kernel's FMA chains and torch's convolution round differently in float32)
    x, x32 = y.detach().requires_grad_(), y.detach().float().requires_grad_()
    fused(x).sum().backward()
    reference(x32).sum().backward()
    same = spikes.float() == exact
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad[same], x32.grad.to(dtype)[same], rtol=torch.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_sltt_takes_half_inputs_and_computes_in_float32(dtype):
    y = _currents(21, dtype, "slice", seed=14)
    x, x32 = y.detach().requires_grad_(), y.detach().float().requires_grad_()
    spikes = SLTTLIFNeuron(implementation="triton")(x)
    reference = SLTTLIFNeuron(implementation="torch")
    exact = reference(x32)
    assert spikes.dtype == dtype
    h, u = torch.zeros_like(x32), torch.zeros_like(x32[0])  # the charged membrane: flips only at the threshold
    for t in range(y.shape[0]):
        h[t] = reference.tau * u + x32[t].detach()
        u = h[t] * (h[t] < 1.0)
    same = spikes.float() == exact
    assert not (~same & ((h - 1.0).abs() > 1e-5)).any()
    spikes.sum().backward()
    exact.sum().backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad[same], x32.grad.to(dtype)[same], rtol=torch.finfo(dtype).eps, atol=0)


@pytest.mark.slow
def test_fused_sdn_follows_new_weights_and_skips_the_factor_without_grad():
    neuron = _random_sdn_neuron("triton", seed=3)
    y = _currents(30, torch.float32, "bhl")
    before = neuron(y)
    with torch.no_grad():
        neuron.sdn.conv3_bias.add_(0.5)  # in place: the cached kernel parameters must notice
        after = neuron(y)
    reference = _random_sdn_neuron("torch", seed=3)
    with torch.no_grad():
        reference.sdn.conv3_bias.add_(0.5)
    assert not torch.equal(before, after)
    z = reference.membrane(y) + y - 1.0
    assert not ((after != reference(y)) & (z.abs() > 1e-5)).any()


# ---------------------------------------------------------------- SLTT soma


@pytest.mark.parametrize("length", [1, 7, 9, 70])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("layout", ["bhl", "slice", "lbh"])
def test_fused_sltt_equals_torch_reference(length, dtype, layout):
    fused = SLTTLIFNeuron(store_v_seq=True, implementation="triton")
    reference = SLTTLIFNeuron(store_v_seq=True, implementation="torch")
    y = _currents(length, dtype, layout, seed=4)
    upstream = torch.randn(y.shape, generator=torch.Generator().manual_seed(5), dtype=dtype).to(DEVICE)
    spikes, grad = _forward_backward(fused, y, upstream)
    ref_spikes, ref_grad = _forward_backward(reference, y, upstream)
    assert fused.last_implementation == "triton" and spikes.dtype == dtype
    h = reference.v_seq.new_zeros(y.shape)  # the charged membrane, for the near-threshold exemption
    u = torch.zeros_like(y[0])
    for t in range(length):
        h[t] = reference.tau * u + y[t]
        u = h[t] * (h[t] < 1.0)
    _assert_same(spikes, grad, ref_spikes, ref_grad, 1e-6, dtype, h - 1.0)
    torch.testing.assert_close(fused.v_seq, reference.v_seq, rtol=1e-6, atol=1e-6)


def test_fused_sltt_without_membrane_or_gradient():
    neuron = SLTTLIFNeuron(implementation="triton")
    y = _currents(20, torch.float32, "bhl", seed=6)
    with torch.no_grad():
        spikes = neuron(y)
    assert neuron.v_seq is None
    assert torch.equal(spikes, SLTTLIFNeuron(implementation="torch")(y).detach())


# ---------------------------------------------------------------- S4D kernel


@pytest.mark.parametrize("channels", [1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("length", [1, 7, 300])
def test_fused_vandermonde_equals_torch_reference(channels, dtype, length):
    torch.manual_seed(7)
    kernel = S4DKernel(3, 8, channels=channels).to(dtype)
    with torch.no_grad():
        kernel.log_A_real.add_(2.0 * torch.randn_like(kernel.log_A_real))  # slow and fast modes
    dtA, Bbar, C = kernel._zoh()
    coeff = (C * Bbar).detach().to(DEVICE)
    dtA = dtA.detach().to(DEVICE)
    a = [t.clone().requires_grad_() for t in (coeff, dtA)]
    b = [t.clone().requires_grad_() for t in (coeff, dtA)]
    ref, out = vandermonde_kernel(*a, length), fused_vandermonde_kernel(*b, length)
    assert out.shape == (channels, 3, length) and out.dtype == dtype
    upstream = torch.randn_like(ref)
    (ref * upstream).sum().backward()
    (out * upstream).sum().backward()
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for got, want in [(out, ref), (b[0].grad, a[0].grad), (b[1].grad, a[1].grad)]:
        scale = want.abs().max().item()
        torch.testing.assert_close(got.detach(), want.detach(), rtol=tol, atol=tol * scale)


@pytest.mark.slow
def test_fused_vandermonde_gradcheck_and_large_phases():
    g = torch.Generator().manual_seed(8)
    coeff = torch.randn(2, 2, 3, generator=g, dtype=torch.complex128).to(DEVICE).requires_grad_()
    dtA = torch.complex(-torch.rand(2, 3, generator=g, dtype=torch.float64),
                        3 * torch.randn(2, 3, generator=g, dtype=torch.float64)).to(DEVICE).requires_grad_()
    assert torch.autograd.gradcheck(lambda c, a: fused_vandermonde_kernel(c, a, 11), (coeff, dtA))
    # phases of ~1.5e4 rad with slow decay: the range reduction keeps float64 exact
    slow = torch.complex(torch.tensor([[-1e-4, -3e-4]], dtype=torch.float64), torch.tensor([[3.0, 0.37]],
                                                                                           dtype=torch.float64))
    c = torch.randn(1, 1, 2, generator=g, dtype=torch.complex128)
    ref = vandermonde_kernel(c, slow, 5000)
    torch.testing.assert_close(fused_vandermonde_kernel(c.to(DEVICE), slow.to(DEVICE), 5000).cpu(), ref,
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("kernel_factor", [1, 2])  # causal [H, L], bidirectional [H, 2L]
def test_fft_conv_backward_is_exact(kernel_factor):
    g = torch.Generator().manual_seed(12)
    u = torch.randn(2, 2, 3, 9, generator=g, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, 9 * kernel_factor, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fft_conv, (u, k))
    assert torch.autograd.gradcheck(lambda x: fft_conv(x, k.detach()), (u,))  # no kernel gradient asked
    n = 18  # against autograd through the plain formula
    plain = torch.fft.irfft(torch.fft.rfft(u, n=n) * torch.fft.rfft(k, n=n), n=n)[..., :9]
    upstream = torch.randn(plain.shape, generator=g, dtype=torch.float64)
    want = torch.autograd.grad((plain * upstream).sum(), (u, k))
    got = torch.autograd.grad((fft_conv(u, k) * upstream).sum(), (u, k))
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- the layer and the switch


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sdn", "sltt"])
@pytest.mark.parametrize("bidirectional", [True, False])
def test_layer_with_fused_kernels_equals_torch_layer_in_float64(kind, bidirectional):
    layers = []
    for implementation in ("torch", "triton"):
        torch.manual_seed(9)
        neuron = functools.partial(make_ssm_neuron, kind=kind, implementation=implementation)
        layers.append(SpikingSSM(5, neuron, d_state=8, bidirectional=bidirectional,
                                 s4d_implementation=implementation).double().to(DEVICE))
    x = torch.randn(2, 5, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(10)).to(DEVICE)
    upstream = torch.randn(2, 5, 37, dtype=torch.float64, generator=torch.Generator().manual_seed(11)).to(DEVICE)
    grads = []
    for layer in layers:
        xi = x.clone().requires_grad_()
        out = layer(xi)
        (out * upstream).sum().backward()
        grads.append([out.detach(), xi.grad] + [p.grad for p in layer.parameters()])
    assert layers[1].neuron.last_implementation == "triton"
    for got, want in zip(grads[1], grads[0]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_autotuned_launches(monkeypatch):
    """The CUDA launch path (autotuner, grid from the chosen config) with one config each: the interpreter cannot
    time configurations, but the launch code runs as it does on a GPU."""
    import triton

    from spiking_ssm.kernels import soma, vandermonde

    def one(kernel, key, **config):
        return triton.autotune(configs=[triton.Config(config, num_warps=1)], key=key)(kernel)

    for module in (soma, vandermonde):
        monkeypatch.setattr(module, "_tuned", lambda device: True)
    monkeypatch.setattr(soma, "_sdn_forward_tuned", one(soma._sdn_forward_kernel, ["L_CLASS"], BLOCK=16))
    monkeypatch.setattr(soma, "_sltt_forward_tuned", one(soma._sltt_forward_kernel, ["L_CLASS"], ROWS=4, CHUNK=8,
                                                                       STAGES=2))
    monkeypatch.setattr(vandermonde, "_forward_tuned", one(vandermonde._vandermonde_forward_kernel, ["L_CLASS"],
                                                           BLOCK=16))
    y = _currents(37, torch.float32, "bhl", seed=13)
    sltt = make_ssm_neuron("sltt", implementation="triton")
    assert torch.equal(sltt(y), make_ssm_neuron("sltt", implementation="torch")(y))
    reference = _random_sdn_neuron("torch")
    z = reference.membrane(y) + y - 1.0
    assert not ((_random_sdn_neuron("triton")(y) != reference(y)) & (z.abs() > 1e-5)).any()
    coeff = torch.randn(2, 3, 4, dtype=torch.complex64).to(DEVICE)
    dtA = torch.complex(-torch.rand(3, 4), torch.randn(3, 4)).to(DEVICE)
    torch.testing.assert_close(fused_vandermonde_kernel(coeff, dtA, 37), vandermonde_kernel(coeff, dtA, 37),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_speed_benchmark_verifies_and_prints_every_soma(capsys):
    from benchmarks.neuron_speed import SOMAS, main

    main(["--lengths", "16", "--batch", "1", "--width", "2", "--d-state", "4", "--repeats", "1", "--warmup", "0",
          "--verify", "--decompose"] + ([] if runtime.interpreter_on() or DEVICE.type == "cuda" else ["--device", "cpu"]))
    out = capsys.readouterr().out
    fused = runtime.triton_unavailable(DEVICE) is None
    assert ("verify: FAIL" not in out) and (out.count("verify: ok") == 5 if fused else "verify: skipped" in out)
    for name in SOMAS:
        if fused or "fused" not in name:
            assert f"    16 {name}" in out
    assert "soma" in out and "mix" in out and "    16 floor" in out


def test_implementation_switch(monkeypatch):
    with pytest.raises(UserError, match="neuron.implementation"):
        make_ssm_neuron("sdn", implementation="cupy")
    with pytest.raises(UserError, match="no native CUDA kernel.*implementation=auto or triton"):
        make_ssm_neuron("sltt", implementation="cuda")(torch.zeros(3, 1, 2))
    with pytest.raises(UserError, match="model.s4d_implementation"):
        S4DKernel(2, 4, implementation="fast")
    cpu = torch.device("cpu")
    assert SDNNeuron(implementation="auto").implementation_for(cpu) == "torch"  # never the slow interpreter
    if runtime.interpreter_on():  # CPU tensors run through Triton's interpreter
        assert SDNNeuron(implementation="triton").implementation_for(cpu, torch.float32) == "triton"
    else:  # a GPU machine without the interpreter: an explicit triton on CPU tensors is an error (seen on an H200)
        with pytest.raises(UserError, match="cannot run the sdn soma on cpu"):
            SDNNeuron(implementation="triton").implementation_for(cpu, torch.float32)
    model = SpikingSSM(4, functools.partial(make_ssm_neuron, kind="sdn", implementation="torch"), d_state=4)
    assert select_implementation("sdn", "torch", cpu, model) == "S4DKernel: torch, SDNNeuron: torch"
    monkeypatch.setattr(runtime, "interpreter_on", lambda: False)  # a plain CPU: Triton cannot run here
    with pytest.raises(UserError, match=r"neuron.implementation=triton cannot run the sdn soma on cpu.*CUDA"):
        SDNNeuron(implementation="triton")(torch.zeros(4, 1, 2))
    with pytest.raises(UserError, match=r"model.s4d_implementation=triton cannot run"):
        S4DKernel(2, 4, implementation="triton")(8)
    model = SpikingSSM(4, functools.partial(make_ssm_neuron, kind="sltt", implementation="triton"), d_state=4)
    with pytest.raises(UserError, match="sltt soma"):
        select_implementation("sltt", "triton", cpu, model)


@pytest.mark.slow
def test_no_autotuning_inside_graph_capture(monkeypatch):
    """Inside CUDA-graph capture the config chosen before runs as a plain launch (the default config when nothing
    was tuned yet); the autotuner, which would time launches into the graph, is never called."""
    import triton

    from spiking_ssm.kernels import soma

    tuned = triton.autotune(configs=[triton.Config({"BLOCK": 16}, num_warps=1)], key=["L_CLASS"])(
        soma._sdn_forward_kernel)
    monkeypatch.setattr(soma, "_tuned", lambda device: True)
    monkeypatch.setattr(soma, "_sdn_forward_tuned", tuned)
    y = _currents(37, torch.float32, "bhl", seed=15)
    reference = _random_sdn_neuron("torch")
    z = reference.membrane(y) + y - 1.0
    first = _random_sdn_neuron("triton")(y)  # tunes (one config) and remembers BLOCK=16

    grids, kernel = [], soma._sdn_forward_kernel

    class Spy:
        def __getitem__(self, grid):
            grids.append(grid)
            return kernel[grid]

    def refuse(*args, **kwargs):
        raise AssertionError("the autotuner ran inside graph capture")

    monkeypatch.setattr(tuned, "run", refuse)
    monkeypatch.setattr(launch, "capturing", lambda: True)
    monkeypatch.setattr(soma, "_sdn_forward_kernel", Spy())
    captured = _random_sdn_neuron("triton")(y)
    assert grids == [(y.shape[1] * y.shape[2], 3)]  # 37 steps in blocks of the remembered 16
    assert torch.equal(captured, first)
    assert not ((captured != reference(y)) & (z.abs() > 1e-5)).any()
    launch._CHOSEN.clear()  # nothing tuned: the default config
    grids.clear()
    _random_sdn_neuron("triton")(y)
    assert grids == [(y.shape[1] * y.shape[2], 1)]  # one block of SDN_BLOCK = 256
