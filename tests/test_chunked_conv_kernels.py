"""The chunked-convolution Triton kernels (:mod:`spiking_ssm.kernels.chunked_conv`) against the torch reference
:func:`spiking_ssm.chunked.chunked_conv` and against a direct convolution with the explicit kernel.

Without a GPU the kernels run in Triton's CPU interpreter (``TRITON_INTERPRET=1``, set by conftest). Shapes are
small and odd: L not a multiple of the chunk, L < Q, L = 1, B = 1 and B past one 16-row block, M not a multiple of
16, both walk directions, chunks 16 and 32. float64 must equal the reference to 1e-12 (relative to the largest
value); float32 must be within 2e-6 of the float64 reference for the currents and 1e-5 for every gradient.
Compiling them for sm_80/sm_90 (registers, spills, budgets) is tests/test_kernel_compile.py's job (compile plans
in kernel_model/plans.py).
"""

import pytest
import torch

from spiking_ssm.chunked import ChunkOperators, chunk_operators, chunked_conv
from spiking_ssm.kernels.runtime import triton

pytestmark = pytest.mark.skipif(triton is None, reason="Triton is not installed")
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")

# (batch, width, length, modes, chunk)
SHAPES = [(2, 3, 45, 4, 16),  # L not a multiple of Q; M = 4 (d_state 8) padded to 16
          (1, 2, 7, 4, 16),  # B = 1, L < Q: one partial chunk, no state
          (3, 2, 1, 5, 16),  # L = 1
          (17, 2, 70, 20, 32),  # B past one row block; M = 20 padded to 32; Q = 32
          (2, 2, 96, 16, 32)]  # L a multiple of Q, M = 16 unpadded


def _parameters(width: int, modes: int, seed: int):
    """Random S4D-like parameters in float64: ``coeff``, ``dtA`` (negative real part) complex ``[H, M]``, and
    ``skip``, ``scale`` ``[H]``."""
    g = torch.Generator().manual_seed(seed)
    real = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    coeff = torch.complex(real(width, modes), real(width, modes)) * 0.5
    decay = -torch.exp(real(width, modes) - 2.0)  # Re(dt A) in about [-1, -0.01]
    dta = torch.complex(decay, real(width, modes))
    return coeff, dta, real(width), 1.0 + 0.3 * real(width)


def _operators(width: int, modes: int, chunk: int, reverse: bool, dtype: torch.dtype, seed: int = 0):
    coeff, dta, skip, scale = _parameters(width, modes, seed)
    ops = chunk_operators(coeff, dta, chunk, delay=int(reverse), skip=skip, scale=scale)
    return ChunkOperators(*[t.to(DEVICE, dtype).detach().requires_grad_() for t in ops])


def _inputs(batch: int, width: int, length: int, dtype: torch.dtype, seed: int = 1):
    """``u`` as a strided view (every other time step of a wider tensor) and a non-contiguous upstream gradient."""
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(batch, width, 2 * length, generator=g, dtype=torch.float64)
    upstream = torch.randn(batch, length, width, generator=g, dtype=torch.float64)
    u = wide.to(DEVICE, dtype)[..., ::2].detach().requires_grad_()
    return u, upstream.to(DEVICE, dtype).transpose(1, 2)


def _run(conv, u, ops, upstream, reverse: bool):
    """``y`` and the gradients of ``u``, taps, readout, inject, decay (zeros for an operator ``y`` ignores)."""
    y = conv(u, ops, reverse=reverse)
    leaves = [u, *ops]
    grads = torch.autograd.grad(y, leaves, upstream, allow_unused=True)
    return [y.detach()] + [torch.zeros_like(x) if d is None else d for x, d in zip(leaves, grads)]


def _kernel(u, ops, reverse=False, precision="ieee"):
    from spiking_ssm.kernels.chunked_conv import chunked_conv_triton

    return chunked_conv_triton(u, ops, reverse=reverse, precision=precision)


def _relative_errors(got, expected):
    return [((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()
            for a, b in zip(got, expected)]


NAMES = ["y", "du", "dtaps", "dreadout", "dinject", "ddecay"]


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_float64_equals_torch_reference(shape, reverse):
    batch, width, length, modes, chunk = shape
    ops = _operators(width, modes, chunk, reverse, torch.float64)
    u, upstream = _inputs(batch, width, length, torch.float64)
    got = _run(_kernel, u, ops, upstream, reverse)
    expected = _run(chunked_conv, u, ops, upstream, reverse)
    assert got[0].shape == (batch, width, length) and got[0].dtype == torch.float64
    errors = dict(zip(NAMES, _relative_errors(got, expected)))
    assert all(error <= 1e-12 for error in errors.values()), errors


@pytest.mark.parametrize("precision", ["ieee", "tf32x3"])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("shape", [SHAPES[0], SHAPES[2], SHAPES[3]])
def test_float32_within_rounding_of_float64(shape, reverse, precision):
    """float32 in both precisions the layer offers as float32-accurate: ``ieee`` (FFMA) and ``tf32x3`` (the default
    on the layer: three tensor-core products of split operands; the interpreter computes it in plain float32, so
    its accuracy is checked where the GPU script runs this file on CUDA)."""
    batch, width, length, modes, chunk = shape
    ops32 = _operators(width, modes, chunk, reverse, torch.float32)
    ops64 = ChunkOperators(*[t.detach().double().requires_grad_() for t in ops32])  # the same rounded operators
    u32, upstream32 = _inputs(batch, width, length, torch.float32)
    u64 = u32.detach().double().requires_grad_()
    got = _run(lambda *a, **k: _kernel(*a, **k, precision=precision), u32, ops32, upstream32, reverse)
    expected = _run(chunked_conv, u64, ops64, upstream32.double(), reverse)
    assert got[0].dtype == torch.float32
    errors = dict(zip(NAMES, _relative_errors(got, expected)))
    assert errors["y"] <= 2e-6 and all(error <= 1e-5 for error in errors.values()), errors


def _direct(u: torch.Tensor, width: int, modes: int, reverse: bool, seed: int = 0) -> torch.Tensor:
    """The convolution with the explicit kernel ``K[d] = skip (d = 0) + 2 Re sum c exp(dtA (d - delay))``
    (``d >= delay``), times ``scale``: ``y[t] = sum_d K[d] u[t - d]`` (``reverse``: ``u[t + d]``), float64."""
    coeff, dta, skip, scale = _parameters(width, modes, seed)
    length = u.shape[-1]
    delay = int(reverse)
    lag = torch.arange(length, dtype=torch.float64)
    powers = torch.exp(dta.unsqueeze(-1) * (lag - delay).clamp(min=0))  # [H, M, L]
    kernel = 2.0 * (coeff.unsqueeze(-1) * powers).real.sum(1) * (lag >= delay)
    kernel[:, 0] += skip
    kernel = kernel * scale.unsqueeze(-1)  # [H, L]
    x = u.flip(-1) if reverse else u
    y = torch.zeros_like(x)
    for d in range(length):
        y[..., d:] += kernel[:, d].unsqueeze(-1) * x[..., : length - d]
    return y.flip(-1) if reverse else y


@pytest.mark.parametrize("reverse", [False, True])
def test_float64_equals_direct_convolution(reverse):
    batch, width, length, modes, chunk = 3, 2, 53, 6, 16
    ops = _operators(width, modes, chunk, reverse, torch.float64)
    u, _ = _inputs(batch, width, length, torch.float64)
    y = _kernel(u.detach(), ops, reverse=reverse).cpu()
    expected = _direct(u.detach().cpu(), width, modes, reverse)
    assert (y - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_rejects_unsupported_inputs():
    from spiking_ssm.kernels.chunked_conv import chunked_conv_triton

    ops = _operators(2, 4, 16, False, torch.float32)
    with pytest.raises(ValueError, match="chunk"):
        chunked_conv_triton(torch.zeros(1, 2, 5, device=DEVICE), _operators(2, 4, 8, False, torch.float32))
    with pytest.raises(ValueError, match="float32 or float64"):
        chunked_conv_triton(torch.zeros(1, 2, 5, device=DEVICE, dtype=torch.float16), ops)
    with pytest.raises(ValueError, match="block_rows"):
        chunked_conv_triton(torch.zeros(1, 2, 5, device=DEVICE), ops, block_rows=24)
