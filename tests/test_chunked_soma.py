"""The chunked convolution fused with the SDN soma (:mod:`spiking_ssm.kernels.chunked_soma`) against the unfused
path: :func:`spiking_ssm.chunked.chunked_conv` (plus its anti-causal half for a bidirectional layer) followed by
``SDNNeuron(implementation="torch")`` on the same currents, with random SDN weights (a misread weight shows).

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by conftest). Spikes must be
identical except where ``|m + y - 1| < 1e-5`` (none such in float64); ``du`` and every operator gradient within
1e-10 (float64) or 1e-5 (float32) of the unfused path's, relative to the largest value. Shapes are small and odd:
L not a multiple of Q, L < Q, L < 8 (the SDN's window), B = 1 and B past one 16-row block, d_state 8 (modes padded
to 16) and 32, Q = 16 and 32, causal and bidirectional. Compiled for sm_80/sm_90 (registers, declared spills, budgets, MODELLED cost) by
tests/test_kernel_compile.py through the compile plans (``sdn chunked`` in kernel_model/plans.py).
"""

import pytest
import torch

from spiking_ssm.chunked import ChunkOperators, chunk_operators, chunked_conv
from spiking_ssm.kernels.runtime import triton
from spiking_ssm.kernels.soma import sdn_params

pytestmark = pytest.mark.skipif(triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (batch, width, length, modes, chunk)
SHAPES = [(2, 2, 45, 4, 16),  # L not a multiple of Q; M = 4 (d_state 8) padded to 16
          (1, 2, 11, 16, 16),  # B = 1, L < Q; M = 16 (d_state 32)
          (3, 2, 5, 4, 32),  # L < 8 (inside the SDN's first window), Q = 32
          (17, 1, 40, 16, 32),  # B past one 16-row block, L not a multiple of Q = 32
          (2, 2, 64, 4, 32)]  # L a multiple of Q (the aligned bidirectional walk)


def _operators(width: int, modes: int, chunk: int, bidirectional: bool, dtype: torch.dtype, seed: int = 0):
    """``[causal]`` or ``[causal, anti-causal]`` operators from random S4D-like parameters, as leaves."""
    g = torch.Generator().manual_seed(seed)
    real = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    dta = torch.complex(-torch.exp(real(width, modes) - 2.0), real(width, modes))
    skip, scale = real(width), 1.0 + 0.3 * real(width)
    ops_list = []
    for delay in range(2 if bidirectional else 1):
        coeff = torch.complex(real(width, modes), real(width, modes)) * 0.5
        ops = chunk_operators(coeff, dta, chunk, delay, skip if delay == 0 else None, scale)
        ops_list.append(ChunkOperators(*[t.to(DEVICE, dtype).detach().requires_grad_() for t in ops]))
    return ops_list


def _inputs(batch: int, width: int, length: int, dtype: torch.dtype, seed: int = 1):
    """``u`` as a strided view (every other step of a wider tensor) and a non-contiguous upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    wide = 0.8 * torch.randn(batch, width, 2 * length, generator=g, dtype=torch.float64) + 0.2
    upstream = torch.randn(batch, length, width, generator=g, dtype=torch.float64)
    return wide.to(DEVICE, dtype)[..., ::2].detach().requires_grad_(), upstream.to(DEVICE, dtype).transpose(1, 2)


def _neuron():
    from tests.test_ssm_kernels import _random_sdn_neuron

    return _random_sdn_neuron("torch")


def _unfused(u, ops_list, neuron):
    """``(spikes, z = m + y - 1)`` of the unfused path."""
    y = chunked_conv(u, ops_list[0])
    if len(ops_list) == 2:
        y = y + chunked_conv(u, ops_list[1], reverse=True)
    z = neuron.membrane(y.permute(2, 0, 1)).permute(1, 2, 0) + y.detach() - 1.0
    return neuron(y.permute(2, 0, 1)).permute(1, 2, 0), z


def _fused(u, ops_list, neuron):
    from spiking_ssm.kernels.chunked_soma import chunked_sdn_spikes

    return chunked_sdn_spikes(u, ops_list, sdn_params(neuron.sdn, neuron.surrogate_function.alpha, u.device, u.dtype))


def _gradients(spikes, leaves, upstream):
    grads = torch.autograd.grad(spikes, leaves, upstream, allow_unused=True)
    return [torch.zeros_like(x) if d is None else d for x, d in zip(leaves, grads)]


def _compare(shape, bidirectional, dtype):
    """``(spike mismatches, mismatches away from the threshold, {gradient: relative error})``."""
    batch, width, length, modes, chunk = shape
    neuron = _neuron()
    ops_list = _operators(width, modes, chunk, bidirectional, dtype)
    u, upstream = _inputs(batch, width, length, dtype)
    leaves = [u, *[t for ops in ops_list for t in ops]]
    spikes = _fused(u, ops_list, neuron)
    assert spikes.shape == (batch, width, length) and spikes.dtype == dtype
    got = _gradients(spikes, leaves, upstream)
    expected_spikes, z = _unfused(u, ops_list, neuron)
    expected = _gradients(expected_spikes, leaves, upstream)
    assert 0.02 < expected_spikes.mean().item() < 0.98, "the case should have both spikes and silence"
    differ = spikes.detach() != expected_spikes.detach()
    names = ["du"] + [f"{part}{'_b' if i else ''}" for i in range(len(ops_list))
                      for part in ("dtaps", "dreadout", "dinject", "ddecay")]
    errors = {name: ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()
              for name, a, b in zip(names, got, expected)}
    return int(differ.sum()), int((differ & (z.abs() >= 1e-5)).sum()), errors


@pytest.mark.slow
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_float64_equals_unfused_path(shape, bidirectional):
    mismatches, far, errors = _compare(shape, bidirectional, torch.float64)
    assert mismatches == 0 and far == 0
    assert all(error <= 1e-10 for error in errors.values()), errors


@pytest.mark.slow
@pytest.mark.parametrize("bidirectional", [False, True], ids=["causal", "bidirectional"])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[3]], ids=lambda s: "x".join(map(str, s)))
def test_float32_equals_unfused_path(shape, bidirectional):
    _, far, errors = _compare(shape, bidirectional, torch.float32)
    assert far == 0
    assert all(error <= 1e-5 for error in errors.values()), errors


@pytest.mark.slow
def test_saves_only_the_inputs_for_backward():
    """Nothing of size [B, H, L] but ``u`` itself is kept between forward and backward (the currents are not)."""
    batch, width, length, modes, chunk = 3, 1, 350, 4, 32  # B H L above the operators' sizes (1024 at most)
    neuron = _neuron()
    ops_list = _operators(width, modes, chunk, True, torch.float32)
    u, _ = _inputs(batch, width, length, torch.float32)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        spikes = _fused(u, ops_list, neuron)
    assert set(spikes.detach().unique().tolist()) <= {0.0, 1.0}
    full = [t for t in saved if t.numel() >= batch * width * length]
    assert len(full) == 1 and full[0].data_ptr() == u.data_ptr(), [tuple(t.shape) for t in saved]


def test_rejects_unsupported_inputs():
    from spiking_ssm.kernels.chunked_soma import chunked_sdn_spikes

    neuron = _neuron()
    weights = sdn_params(neuron.sdn, 1.0, DEVICE, torch.float32)
    u = torch.zeros(1, 2, 5, device=DEVICE)
    ops = _operators(2, 4, 16, True, torch.float32)
    with pytest.raises(ValueError, match="1 .causal. or 2"):
        chunked_sdn_spikes(u, ops * 2, weights)
    with pytest.raises(ValueError, match="chunk"):
        chunked_sdn_spikes(u, _operators(2, 4, 8, False, torch.float32), weights)
    with pytest.raises(ValueError, match="same chunk"):
        chunked_sdn_spikes(u, [ops[0], _operators(2, 4, 32, False, torch.float32)[0]], weights)
    with pytest.raises(ValueError, match="SDN weights"):
        chunked_sdn_spikes(u.double(), _operators(2, 4, 16, False, torch.float64), weights)
