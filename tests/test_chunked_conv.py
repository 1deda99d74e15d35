"""The chunked current path (``model.conv=chunked``, :mod:`spiking_ssm.chunked`) against the FFT convolution.

float64: currents and every gradient (u, D, the threshold, every S4D parameter) equal the FFT path to 1e-10
relative, causal and bidirectional, for lengths below, at and across chunk boundaries; float32 currents within
2e-6 of float64. Also: a direct float64 convolution with the explicit kernel (so a mistake shared by the chunked
code and the FFT path cannot hide), spikes of the somas behind both paths, the choice and its errors, and
streaming after a chunked forward.
"""

import pytest
import torch
from spikingjelly.activation_based import functional

from snn_engine.errors import UserError
from snn_engine.measure.kernel_usage import ImplementationCounter, reports_path
from spiking_ssm.backbone import SpikingSSMClassifier
from spiking_ssm.chunked import ChunkOperators, chunk_operators, chunked_conv, chunked_conv_autograd, toeplitz
from spiking_ssm.layer import SpikingSSM
from spiking_ssm.somas import make_ssm_neuron
from spiking_ssm.s4d import vandermonde_kernel
from spiking_ssm.streaming import StreamingClassifier


def _layer(conv: str, bidirectional: bool, chunk: int = 16, width: int = 6, d_state: int = 8, seed: int = 0,
           neuron=torch.nn.Identity, **kwargs) -> SpikingSSM:
    torch.manual_seed(seed)
    layer = SpikingSSM(width, neuron, d_state=d_state, bidirectional=bidirectional, conv=conv, conv_chunk=chunk,
                       **kwargs).double()
    with torch.no_grad():  # a non-trivial threshold and slow modes (dt small: states carry across many chunks)
        layer.ln_theta.normal_(0, 0.3)
        layer.kernel.log_dt.uniform_(-6.0, -1.0)
    return layer


def _pair(bidirectional: bool, chunk: int = 16, **kwargs):
    return _layer("fft", bidirectional, chunk, **kwargs), _layer("chunked", bidirectional, chunk, **kwargs)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("length,chunk", [(1, 16), (5, 16), (16, 16), (17, 16), (63, 32), (64, 32), (200, 16),
                                          (300, 64)])
def test_float64_currents_and_all_gradients_equal_the_fft_path(bidirectional, length, chunk):
    fft, chunked = _pair(bidirectional, chunk, trainable_B=True, threshold="channel")
    u = torch.randn(3, 6, length, dtype=torch.float64, requires_grad=True)
    y_fft, y_chunked = fft.current(u), chunked.current(u)
    assert chunked.last_implementation == "chunked (torch)" and fft.last_implementation == "fft"
    assert _relative(y_chunked, y_fft) < 1e-10
    upstream = torch.randn_like(y_fft)
    names = [name for name, _ in fft.named_parameters() if "output_linear" not in name]
    grads_fft = torch.autograd.grad(y_fft, [u] + [dict(fft.named_parameters())[n] for n in names], upstream)
    grads_chunked = torch.autograd.grad(y_chunked, [u] + [dict(chunked.named_parameters())[n] for n in names],
                                        upstream)
    assert len(names) == 7  # D, ln_theta, log_dt, log_A_real, A_imag, C, B
    for name, a, b in zip(["u"] + names, grads_chunked, grads_fft):
        assert _relative(a, b) < 1e-10, name


@pytest.mark.parametrize("threshold", ["shared", "fixed"])
def test_thresholds_fold_into_the_chunked_operators(threshold):
    fft, chunked = _pair(True, 16, threshold=threshold)
    u = torch.randn(2, 6, 70, dtype=torch.float64)
    assert _relative(chunked.current(u), fft.current(u)) < 1e-10


def test_chunked_conv_equals_a_direct_convolution_with_the_explicit_kernel():
    torch.manual_seed(3)
    width, modes, length = 4, 5, 90
    dtA = torch.complex(-torch.rand(width, modes, dtype=torch.float64) * 0.2,
                        torch.randn(width, modes, dtype=torch.float64))
    coeff = torch.randn(width, modes, dtype=torch.complex128)
    u = torch.randn(2, width, length, dtype=torch.float64)
    kernel = vandermonde_kernel(coeff.unsqueeze(0), dtA, length)[0]  # [H, L]: K[d] = 2 Re sum c a^d
    causal = torch.stack([sum(kernel[:, t - j] * u[..., j] for j in range(t + 1)) for t in range(length)], -1)
    ops = chunk_operators(coeff, dtA, 16)
    assert _relative(chunked_conv(u, ops), causal) < 1e-12
    # delay 1 on reversed time: y[t] = sum_{j >= 1} K[j - 1] u[t + j] (the anti-causal half of a bidirectional layer)
    anti = torch.stack([sum((kernel[:, j - 1] * u[..., t + j] for j in range(1, length - t)),
                            torch.zeros(2, width, dtype=torch.float64)) for t in range(length)], -1)
    assert _relative(chunked_conv(u, chunk_operators(coeff, dtA, 16, delay=1), reverse=True), anti) < 1e-12


@pytest.mark.parametrize("length,chunk,reverse", [(1, 16, False), (7, 16, True), (16, 16, False), (40, 16, True),
                                                 (100, 32, False), (129, 64, True)])
def test_the_written_out_backward_equals_autograd_through_every_intermediate(length, chunk, reverse):
    torch.manual_seed(length)
    dtA = torch.complex(-torch.rand(3, 5, dtype=torch.float64) * 0.3, torch.randn(3, 5, dtype=torch.float64))
    coeff = torch.randn(3, 5, dtype=torch.complex128)
    ops = [t.detach().requires_grad_() for t in
           chunk_operators(coeff, dtA, chunk, delay=int(reverse), skip=torch.randn(3, dtype=torch.float64))]
    u = torch.randn(2, 3, length, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 3, length, dtype=torch.float64)
    written = torch.autograd.grad(chunked_conv(u, ChunkOperators(*ops), reverse), [u] + ops, upstream)
    traced = torch.autograd.grad(chunked_conv_autograd(u, ChunkOperators(*ops), reverse), [u] + ops, upstream,
                                 allow_unused=True)
    for name, a, b, like in zip(["u", "taps", "readout", "inject", "decay"], written, traced, [u] + ops):
        b = torch.zeros_like(like) if b is None else b  # one chunk: no state reaches an output
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12 * b.abs().max().item(), msg=name)
    assert torch.autograd.gradcheck(lambda x, *o: chunked_conv(x, ChunkOperators(*o), reverse),
                                    [u[:1, :2, :min(length, 20)].detach().requires_grad_()]
                                    + [t[:2].detach().requires_grad_() for t in ops])


def test_a_chunked_forward_saves_only_its_input_and_the_small_operators():
    torch.manual_seed(7)
    layer = SpikingSSM(8, torch.nn.Identity, d_state=8, bidirectional=True, conv="chunked", conv_chunk=16)
    u = torch.randn(4, 8, 512, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        layer.current(u)
    large = {t.untyped_storage().data_ptr() for t in saved if t.numel() >= u.numel() // 8}
    assert large == {u.untyped_storage().data_ptr()}


def test_operators_describe_the_kernel():
    torch.manual_seed(4)
    dtA = torch.complex(-torch.rand(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64))
    coeff = torch.randn(3, 4, dtype=torch.complex128)
    ops = chunk_operators(coeff, dtA, 16, skip=torch.ones(3, dtype=torch.float64))
    kernel = vandermonde_kernel(coeff.unsqueeze(0), dtA, 16)[0]
    torch.testing.assert_close(ops.taps[:, 1:], kernel[:, 1:], rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(ops.taps[:, 0], kernel[:, 0] + 1.0, rtol=1e-13, atol=1e-13)
    assert ops.readout.shape == (3, 8, 16) and ops.inject.shape == (3, 16, 8) and ops.decay.shape == (3, 2, 4)
    assert torch.equal(toeplitz(ops.taps)[:, 0, 1:], torch.zeros(3, 15, dtype=torch.float64))
    with pytest.raises(ValueError, match="delay"):
        chunk_operators(coeff, dtA, 16, delay=2)


def test_float32_currents_are_within_float32_rounding_of_float64():
    """The same (float32-representable) parameters and input computed in float32 and in float64. The operators are
    built in float64 from the float32 parameters, so only the products round in float32: measured 1.6-2.6e-7 here
    (seeds 0-2), where the FFT path's float32 result, whose kernel is built in float32, is off by 2-4.5e-6."""
    fft, chunked = _pair(True, 64, width=8, d_state=64)
    u = torch.randn(2, 8, 2000).double()
    fft, chunked = fft.float().double(), chunked.float()
    exact = fft.current(u)
    single = chunked.current(u.float())
    assert single.dtype == torch.float32
    assert _relative(single.double(), exact) < 1e-6
    assert _relative(single.double(), exact) < 0.5 * _relative(fft.float().current(u.float()).double(), exact)


@pytest.mark.parametrize("soma", ["sdn", "lif_parallel", "sltt"])
def test_somas_behind_the_chunked_path_spike_as_behind_the_fft(soma):
    factory = lambda: make_ssm_neuron(soma, implementation="torch")  # noqa: E731
    fft, chunked = _pair(True, 32, width=8, d_state=8, neuron=factory)
    u = 1.5 * torch.randn(4, 8, 150, dtype=torch.float64)
    y = fft.current(u)
    spikes = {name: layer.spikes(u) for name, layer in (("fft", fft), ("chunked", chunked))}
    functional.reset_net(fft)
    functional.reset_net(chunked)
    far = (y - 1.0).abs() > 1e-9  # away from the threshold the currents' rounding cannot flip a spike
    assert 0.05 < spikes["fft"].mean() < 0.95
    assert torch.equal(spikes["fft"][far], spikes["chunked"][far])


def test_choice_errors_and_what_auto_runs():
    with pytest.raises(UserError, match=r"model.conv='ffft'; choose one of"):
        SpikingSSM(4, torch.nn.Identity, conv="ffft")
    with pytest.raises(UserError, match=r"model.conv_chunk=48"):
        SpikingSSM(4, torch.nn.Identity, conv_chunk=48)
    layer = SpikingSSM(4, torch.nn.Identity, d_state=4, conv="chunked", s4d_implementation="cuda")
    with pytest.raises(UserError, match=r"model.s4d_implementation=cuda"):
        layer.current(torch.randn(1, 4, 10))
    auto = SpikingSSM(4, torch.nn.Identity, d_state=4)
    auto.current(torch.randn(1, 4, 10))
    assert auto.conv == "auto" and auto.last_implementation == "fft"  # CPU: the FFT measured faster


def test_the_run_counts_which_current_path_ran():
    torch.manual_seed(5)
    model = SpikingSSMClassifier(lambda: make_ssm_neuron("sdn", implementation="torch"), d_input=2, num_classes=3,
                                 d_model=8, n_layers=2, d_state=4, conv="chunked", conv_chunk=16)
    with ImplementationCounter(model, reports_path) as paths, ImplementationCounter(model) as somas:
        model(torch.randn(2, 40, 2))
    assert paths.summary()["calls"] == {"chunked (torch)": 2}
    assert set(paths.counts) == {"backbone.blocks.0.layer", "backbone.blocks.1.layer"}
    assert paths.describe() == "chunked (torch): 2 layers"
    assert somas.summary()["calls"] == {"torch": 2}


def test_streaming_equals_a_chunked_forward():
    torch.manual_seed(6)
    lif = lambda: make_ssm_neuron("lif")  # noqa: E731
    model = SpikingSSMClassifier(lif, d_input=2, num_classes=3, d_model=8, n_layers=2, d_state=8,
                                 bidirectional=False, norm="layer", conv="chunked", conv_chunk=16).double().eval()
    x = 2 * torch.randn(3, 50, 2, dtype=torch.float64)
    functional.reset_net(model)
    with torch.no_grad():
        logits = model(x)
    assert model.backbone.blocks[0].layer.last_implementation == "chunked (torch)"
    torch.testing.assert_close(StreamingClassifier(model).run(x), logits, rtol=1e-9, atol=1e-9)


def test_a_run_from_before_the_chunked_path_resumes_and_may_switch_paths():
    from snn_engine.protection import resume_contract

    old = {"model": {"d_model": 8, "s4d_implementation": "auto"}}
    new = {"model": {"d_model": 8, "s4d_implementation": "auto", "conv": "auto", "conv_chunk": 64}}
    assert resume_contract.check(old, new, "last.pt", allow_changes=False) == {
        "model.conv": ("<unset>", "auto"), "model.conv_chunk": ("<unset>", 64)}
    switched = dict(new, model=dict(new["model"], conv="chunked"))
    assert resume_contract.check(new, switched, "last.pt", allow_changes=False) == {"model.conv": ("auto", "chunked")}
    with pytest.raises(UserError, match="model.d_model: 8 -> 16"):
        resume_contract.check(new, dict(new, model=dict(new["model"], d_model=16)), "last.pt", allow_changes=False)


@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_layer_runs_the_triton_chunked_kernel_when_asked_and_it_equals_the_fft_path(bidirectional):
    """Through Triton's interpreter on CPU (tests/conftest.py), on CUDA for real: the layer's whole current path,
    operators built from the S4D parameters, every gradient."""
    from spiking_ssm.kernels import runtime

    if runtime.triton_unavailable(torch.device("cpu")) is not None:
        pytest.skip("Triton's interpreter is off")
    fft = _layer("fft", bidirectional, 16, width=4, d_state=6)
    fused = _layer("chunked", bidirectional, 16, width=4, d_state=6, s4d_implementation="triton")
    u = torch.randn(2, 4, 37, dtype=torch.float64, requires_grad=True)
    y_fft, y_fused = fft.current(u), fused.current(u)
    assert fused.last_implementation == "chunked (triton)"
    assert _relative(y_fused, y_fft) < 1e-10
    upstream = torch.randn_like(y_fft)
    names = [name for name, _ in fft.named_parameters() if "output_linear" not in name]
    for name, a, b in zip(["u"] + names,
                          torch.autograd.grad(y_fused, [u] + [dict(fused.named_parameters())[n] for n in names],
                                              upstream),
                          torch.autograd.grad(y_fft, [u] + [dict(fft.named_parameters())[n] for n in names],
                                              upstream)):
        assert _relative(a, b) < 1e-10, name


def test_an_unknown_conv_precision_is_one_line():
    with pytest.raises(UserError, match=r"model.conv_precision='bf16'; choose one of \('ieee', 'tf32x3', 'tf32'\)"):
        SpikingSSM(4, torch.nn.Identity, conv_precision="bf16")


def test_under_autocast_the_chunked_currents_are_float32_as_the_ffts():
    fft, chunked = _pair(True, 16, width=8, d_state=8)
    fft, chunked = fft.float(), chunked.float()
    u = torch.randn(2, 8, 50)
    exact = fft.current(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_fft, y_chunked = fft.current(u), chunked.current(u)
        out = chunked(u)
    assert y_chunked.dtype == y_fft.dtype == torch.float32
    assert _relative(y_chunked.double(), exact.double()) < 2e-6  # float32 products throughout
    assert out.dtype == torch.bfloat16  # the mixing still runs in bf16


def test_under_autocast_the_fft_path_keeps_its_s4d_kernel_in_float32():
    """The torch S4D kernel's matrix product ran in bf16 under CPU autocast (3.6e-3 relative error) before."""
    fft, _ = _pair(True, 16, width=8, d_state=8)
    fft = fft.float()
    u = torch.randn(2, 8, 50)
    exact = fft.current(u)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert _relative(fft.current(u).double(), exact.double()) < 2e-6


@pytest.mark.slow
@pytest.mark.parametrize("bidirectional", [False, True])
def test_the_sdn_soma_fused_behind_the_chunked_kernel_equals_the_unfused_layer(bidirectional):
    """Through Triton's interpreter: ``fuse_soma`` (the sdn soma computes the currents itself) against the same
    layer unfused: identical spikes and outputs, every gradient to rounding (float64); the firing-rate meter and the
    implementation counter see the fused soma like any other."""
    from snn_engine.measure.metrics import FiringRateMeter
    from spiking_ssm.kernels import runtime

    if runtime.triton_unavailable(torch.device("cpu")) is not None:
        pytest.skip("Triton's interpreter is off")
    sdn = lambda: make_ssm_neuron("sdn", implementation="triton")  # noqa: E731
    layers = {fuse: _layer("chunked", bidirectional, 16, width=4, d_state=6, neuron=sdn,
                           s4d_implementation="triton", fuse_soma=fuse) for fuse in (False, True)}
    u = 2.0 * torch.randn(2, 4, 37, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2, 4, 37, dtype=torch.float64)
    results = {}
    for fuse, layer in layers.items():
        with FiringRateMeter(layer) as rates, ImplementationCounter(layer) as somas:
            out = layer(u)
        grads = torch.autograd.grad(out, [u] + list(layer.parameters()), upstream, allow_unused=True)
        results[fuse] = (out, grads, rates.compute(torch.device("cpu"))["overall"], somas.summary()["calls"])
        functional.reset_net(layer)
    assert layers[True].last_implementation == "chunked (triton, fused with the soma)"
    assert results[True][3] == {"triton (fused with the chunked current path)": 1}
    assert results[False][3] == {"triton": 1}
    assert 0.05 < results[True][2] == results[False][2] < 0.95
    assert torch.equal(results[True][0], results[False][0])
    for (name, _), a, b in zip([("u", None)] + list(layers[True].named_parameters()), results[True][1],
                               results[False][1]):
        if b is not None:
            assert _relative(a, b) < 1e-10, name


def test_the_speed_benchmark_prints_both_current_paths_part_by_part(capsys):
    from benchmarks.neuron_speed import main

    main(["--lengths", "16", "--batch", "1", "--width", "2", "--d-state", "4", "--repeats", "1", "--warmup", "0",
          "--decompose", "--device", "cpu", "--convs", "fft", "chunked", "--somas", "sdn torch", "lif sj"])
    out = capsys.readouterr().out
    for row in ("sdn torch / fft", "sdn torch / chunked", "lif sj / chunked"):
        assert f"    16 {row}" in out
    assert "chunked conv (torch)" in out and "fft conv" in out and "mix bmm" in out
    assert out.count("chunked (torch)") >= 2  # the path column says what ran


@pytest.mark.slow
@pytest.mark.parametrize("soma", ["sdn", "sltt", "lif_parallel"])
def test_the_fused_somas_read_the_chunked_currents_as_they_read_the_ffts(soma):
    """The Triton somas (interpreter on CPU) read the chunked path's contiguous [B, H, L] currents, not the FFT's
    2L-strided slice: the same spikes either way."""
    from spiking_ssm.kernels import runtime

    if runtime.triton_unavailable(torch.device("cpu")) is not None:
        pytest.skip("Triton's interpreter is off")
    factory = lambda: make_ssm_neuron(soma, implementation="triton")  # noqa: E731
    fft, chunked = _pair(True, 16, width=3, d_state=4, neuron=factory)
    u = 1.5 * torch.randn(2, 3, 40, dtype=torch.float64)
    y = fft.current(u)
    spikes = {name: layer.spikes(u) for name, layer in (("fft", fft), ("chunked", chunked))}
    assert chunked.last_implementation == "chunked (torch)" and chunked.neuron.last_implementation == "triton"
    far = (y - 1.0).abs() > 1e-9
    assert 0.05 < spikes["fft"].mean() < 0.95
    assert torch.equal(spikes["fft"][far], spikes["chunked"][far])


def _tf32(x: torch.Tensor) -> torch.Tensor:
    """Round float32 to tf32 (10 explicit mantissa bits), to nearest even, as the tensor cores' inputs."""
    bits = x.contiguous().view(torch.int32)
    bits = (bits + 0x0FFF + ((bits >> 13) & 1)) & ~0x1FFF
    return bits.view(torch.float32)


@pytest.mark.parametrize("precision,bound", [("tf32x3", 1e-6), ("tf32", 2e-3)])
def test_tensor_core_precisions_emulated_on_the_chunked_products(monkeypatch, precision, bound):
    """``model.conv_precision`` emulated in torch: every float32 product of the chunked path with tf32 inputs
    (``tf32``) or as three products of split operands, hi hi + hi lo + lo hi (``tf32x3``, what Triton's tl.dot does
    on tensor cores). tf32x3 stays as accurate as exact float32 products (measured 2.1-2.5e-7 here); tf32 is about
    3.5e-4 off, which is why it is never the default."""
    einsum = torch.einsum

    def split_products(equation, a, b):
        if a.dtype != torch.float32:
            return einsum(equation, a, b)
        a_hi, b_hi = _tf32(a), _tf32(b)
        if precision == "tf32":
            return einsum(equation, a_hi, b_hi)
        a_lo, b_lo = _tf32(a - a_hi), _tf32(b - b_hi)
        return einsum(equation, a_hi, b_hi) + einsum(equation, a_hi, b_lo) + einsum(equation, a_lo, b_hi)

    fft, chunked = _pair(True, 64, width=8, d_state=64)
    u = torch.randn(2, 8, 1000).double()
    fft, chunked = fft.float().double(), chunked.float()
    exact = fft.current(u)
    with torch.no_grad():
        ieee = _relative(chunked.current(u.float()).double(), exact)
        monkeypatch.setattr(torch, "einsum", split_products)
        emulated = _relative(chunked.current(u.float()).double(), exact)
    assert emulated < bound
    if precision == "tf32x3":
        assert emulated < 2 * ieee
    else:
        assert emulated > 100 * ieee  # the emulation is live: one tf32 product loses three decimal digits


def test_fuse_soma_takes_only_a_boolean():
    with pytest.raises(UserError, match=r"model.fuse_soma='flase' must be true or false"):
        SpikingSSM(4, torch.nn.Identity, fuse_soma="flase")


@pytest.mark.parametrize("kernel", ["torch", "triton"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_input_stays_in_its_own_row_as_with_the_fft(kernel, bad):
    """One NaN/inf in u[b, h, t] (a tl.dot multiplies it by the Toeplitz block's zeros too, giving NaN): like the FFT
    path, only row (b, h) is touched; every other row equals the FFT path's to 1e-10."""
    from spiking_ssm.kernels import runtime

    if kernel == "triton" and runtime.triton_unavailable(torch.device("cpu")) is not None:
        pytest.skip("Triton's interpreter is off")
    fft = _layer("fft", True, 16, width=3, d_state=4)
    chunked = _layer("chunked", True, 16, width=3, d_state=4, s4d_implementation=kernel)
    u = torch.randn(2, 3, 40, dtype=torch.float64)
    u[1, 2, 17] = bad
    y_fft, y_chunked = fft.current(u), chunked.current(u)
    others = torch.ones(2, 3, dtype=torch.bool)
    others[1, 2] = False
    assert torch.isfinite(y_chunked[others]).all()
    assert _relative(y_chunked[others], y_fft[others]) < 1e-10
    assert not torch.isfinite(y_chunked[1, 2]).all()


@pytest.mark.parametrize("soma", ["lif_parallel", "sltt"])
def test_long_firing_chains_behind_the_chunked_path_spike_as_behind_the_fft(soma):
    """A constant strong input: currents far above threshold for hundreds of steps (regular firing chains)."""
    factory = lambda: make_ssm_neuron(soma, implementation="torch")  # noqa: E731
    fft, chunked = _pair(False, 32, width=4, d_state=8, neuron=factory)
    u = 3.0 + 0.01 * torch.randn(2, 4, 300, dtype=torch.float64)
    y = fft.current(u)
    spikes = {name: layer.spikes(u) for name, layer in (("fft", fft), ("chunked", chunked))}
    far = (y - 1.0).abs() > 1e-9
    assert spikes["fft"].mean() > 0.3  # chains of spikes, not a few
    assert torch.equal(spikes["fft"][far], spikes["chunked"][far])
