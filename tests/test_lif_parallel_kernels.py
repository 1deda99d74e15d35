"""The ``lif_parallel`` soma's Triton scans against the torch reference (Triton's CPU interpreter without a GPU).

Small odd shapes: lengths 1, below and across the 256-step chunk; spikes must equal the sequential LIF's exactly
(the rounding-exact phase is shared), the scans and gradients must equal the torch scans to rounding.
"""

import pytest
import torch

from spiking_ssm import lif_scan
from spiking_ssm.kernels import lif_fixed_point, runtime
from spiking_ssm.neurons import make_ssm_neuron

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
pytestmark = pytest.mark.skipif(runtime.triton_unavailable(DEVICE) is not None,
                                reason="needs CUDA or TRITON_INTERPRET=1 (set by conftest without a GPU)")


@pytest.mark.parametrize("length", [1, 5, 256, 263, 600])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scans_equal_the_torch_scans(length, dtype):
    g = torch.Generator().manual_seed(length)
    y = torch.randn(5, length, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    spikes = (torch.rand(5, length, generator=g) < 0.3).to(DEVICE)
    factor = torch.rand(5, length, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    tol = 1e-13 if dtype == torch.float64 else 2e-6
    for tau in (0.125, 0.7):
        torch.testing.assert_close(lif_fixed_point.membrane_given_spikes(y, spikes, tau),
                                   lif_scan.membrane_given_spikes(y, spikes, tau), rtol=tol, atol=tol)
        torch.testing.assert_close(lif_fixed_point.bptt_gradient(y, factor, spikes, tau),
                                   lif_scan.bptt_gradient(y, factor, spikes, tau), rtol=tol, atol=tol)


@pytest.mark.parametrize("length", [9, 263])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("tau", [0.125, 0.6])
def test_fused_soma_equals_the_sequential_lif_and_the_torch_soma(length, dtype, tau):
    g = torch.Generator().manual_seed(3)
    wide = (1.2 * torch.randn(2, 3, 2 * length, generator=g, dtype=torch.float64) + 0.3).to(DEVICE, dtype)
    y = wide[..., :length].permute(2, 0, 1)  # the layer's strided [B, H, L] view, time-major
    upstream = torch.randn(y.shape, generator=g, dtype=torch.float64).to(DEVICE, dtype)
    results = []
    for implementation in ("triton", "torch"):
        soma = make_ssm_neuron("lif_parallel", tau=tau, implementation=implementation).to(DEVICE)
        x = y.detach().clone().requires_grad_()
        spikes = soma(x)
        (spikes * upstream).sum().backward()
        assert soma.last_implementation == implementation
        results.append((spikes.detach(), x.grad))
    sequential = make_ssm_neuron("sltt", tau=tau, implementation="torch")(y.contiguous())
    assert torch.equal(results[0][0], sequential) and torch.equal(results[1][0], sequential)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(results[0][1], results[1][1], rtol=tol, atol=tol)
