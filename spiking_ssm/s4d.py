"""The S4D kernel of a SpikingSSM layer (reference section 2.1) and its FFT convolution.

Per channel h there are N/2 complex modes (N = ``d_state``; the conjugate half is implied by taking
``2 Re``). Parameters:

- ``A = -exp(log_A_real) + i A_imag``, initialised to ``-0.5 + i pi n`` (S4D-Lin), n = 0 .. N/2-1;
- ``dt = exp(log_dt)``, ``log_dt ~ U[log dt_min, log dt_max]``, one per channel (tied over the modes);
- ``C`` complex N(0, 1) of shape [channels, H, N/2] (stored as a real view [..., 2]);
- ``B`` fixed to 1 and absorbed into C (``trainable_B=False``, the reference's ``S4DKernel``) or a trainable
  complex [H, N/2] initialised to ones (``trainable_B=True``, the reference's ``SSMKernelDiag(diag-lin)``).

Zero-order hold: ``Abar = exp(dt A)``, ``Bbar = B (exp(dt A) - 1) / A`` and the length-L kernel is
``K[c, h, l] = 2 Re sum_n C[c, h, n] Bbar[h, n] Abar[h, n]^l``.

Optimizer hints (``param._optim``, read by :func:`snn_engine.training.optim.param_groups`): ``log_A_real``,
``A_imag``, ``log_dt`` and ``B`` get ``{"lr": ssm_lr, "weight_decay": 0.0}``. ``C`` is an ordinary parameter
(global lr, global weight decay) with ``trainable_B=False``; with ``trainable_B=True`` it gets ``{"lr": ssm_lr}``
and therefore the global weight decay, as in the reference.

Two implementations of ``forward(L)``, chosen by ``implementation`` (``model.s4d_implementation``):

- ``triton`` (``auto`` on CUDA): :func:`spiking_ssm.kernels.vandermonde.fused_vandermonde_kernel`, one fused pass
  forward and backward that never forms the [H, N/2, L] Vandermonde matrix (memory: the output only);
- ``torch`` (``auto`` elsewhere): :func:`two_level_vandermonde`, the product split as ``l = i J + j`` into one real
  batched matrix product per channel from ``(L/J + J) N/2`` exponentials (kilobytes of saved tensors; on CPU 20-40x
  faster than the direct product at L = 1K-8K, width 256, d_state 64, with the same float32 accuracy).

:func:`vandermonde_kernel` is the direct product ``2 Re sum_n C Bbar exp(dtA l)`` in chunks of the length axis (at
most about ``chunk_elems`` complex numbers of the matrix alive at a time, each chunk checkpointed when gradients are
needed): the slow reference both implementations are tested against.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from snn_engine.errors import UserError
from spiking_ssm.kernels import runtime

# about 4M complex numbers (32 MiB in complex64) of Vandermonde matrix alive at a time
DEFAULT_CHUNK_ELEMS = 1 << 22


def _vandermonde_chunk(coeff: torch.Tensor, dtA: torch.Tensor, start: int, length: int) -> torch.Tensor:
    """``2 Re sum_n coeff[c, h, n] exp(dtA[h, n] l)`` for l in ``[start, start + length)`` -> [c, H, length]."""
    positions = torch.arange(start, start + length, device=dtA.device, dtype=dtA.real.dtype)
    vander = torch.exp(dtA.unsqueeze(-1) * positions)  # [H, N/2, length] complex
    return 2.0 * torch.einsum("chn,hnl->chl", coeff, vander).real


def vandermonde_kernel(
    coeff: torch.Tensor, dtA: torch.Tensor, length: int, chunk_elems: int = DEFAULT_CHUNK_ELEMS
) -> torch.Tensor:
    """``K[c, h, l] = 2 Re sum_n coeff[c, h, n] exp(dtA[h, n] l)``, l < ``length``, in length chunks.

    ``coeff`` is [c, H, N/2] complex, ``dtA`` is [H, N/2] complex. Chunks are checkpointed when autograd is
    recording, so neither forward nor backward keeps a full [H, N/2, L] tensor.
    """
    modes = dtA.shape[0] * dtA.shape[1]
    chunk = max(1, chunk_elems // max(1, modes))
    if chunk >= length:
        return _vandermonde_chunk(coeff, dtA, 0, length)
    recording = torch.is_grad_enabled() and (coeff.requires_grad or dtA.requires_grad)
    parts = []
    for start in range(0, length, chunk):
        size = min(chunk, length - start)
        if recording:
            parts.append(checkpoint(_vandermonde_chunk, coeff, dtA, start, size, use_reentrant=False))
        else:
            parts.append(_vandermonde_chunk(coeff, dtA, start, size))
    return torch.cat(parts, dim=-1)


def _split(length: int) -> int:
    """Positions per fine block ``J`` of the two-level product: the power of two nearest sqrt(L), in [8, 256]."""
    return min(256, max(8, 1 << round(math.log2(max(1, length)) / 2)))


def two_level_vandermonde(coeff: torch.Tensor, dtA: torch.Tensor, length: int) -> torch.Tensor:
    """``K[c, h, l] = 2 Re sum_n coeff[c, h, n] exp(dtA[h, n] l)`` -> real ``[c, H, length]``, as one real
    batched matrix product per channel ``h`` instead of a ``[H, N/2, L]`` Vandermonde matrix.

    With ``l = i J + j`` (``j < J``, :func:`_split`): ``exp(dtA l) = exp(dtA i J) exp(dtA j)``, so
    ``K[c, h, i, j] = 2 Re sum_n a[c, h, n, i] f[h, n, j]`` with the coarse factor ``a = coeff exp(dtA i J)``
    ``[c, H, N/2, I]`` and the fine one ``f = exp(dtA j)`` ``[H, N/2, J]``: a real ``[c I, N] @ [N, J]`` product
    per ``h`` (``[Re a, -Im a] @ [Re f, Im f]``). Only ``(I + J) N/2`` exponentials per channel instead of
    ``L N/2``; autograd keeps ``a`` and ``f`` (kilobytes), not the matrix. Each phase is rounded as the direct
    product rounds ``dtA l`` (both within an ulp of ``Im(dtA) l``), so float32 results agree with
    :func:`vandermonde_kernel` as closely as either agrees with float64.
    """
    channels, width, half = coeff.shape
    fine_len = _split(length)
    coarse_len = -(-length // fine_len)
    real = dtA.real.dtype
    fine_pos = torch.arange(fine_len, device=dtA.device, dtype=real)
    coarse_pos = torch.arange(coarse_len, device=dtA.device, dtype=real) * fine_len
    fine = torch.exp(dtA.unsqueeze(-1) * fine_pos)  # [H, N/2, J]
    coarse = coeff.unsqueeze(-1) * torch.exp(dtA.unsqueeze(-1) * coarse_pos)  # [c, H, N/2, I]
    left = torch.cat([coarse.real, -coarse.imag], dim=2).permute(1, 0, 3, 2)  # [H, c, I, N]
    right = torch.cat([fine.real, fine.imag], dim=1)  # [H, N, J]
    k = torch.matmul(left.reshape(width, channels * coarse_len, 2 * half), right)  # [H, c I, J]
    k = k.reshape(width, channels, coarse_len * fine_len)[..., :length]
    return 2.0 * k.transpose(0, 1)


def _hint(param: nn.Parameter, **hint) -> nn.Parameter:
    param._optim = hint
    return param


class S4DKernel(nn.Module):
    """Diagonal SSM convolution kernel with ZOH discretisation and S4D-Lin initialisation.

    ``forward(L)`` returns the real kernel [channels, H, L]. ``discretize()`` returns the recurrent view
    ``(Abar, Bbar, C)`` used by streaming inference.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 64,
        channels: int = 1,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        trainable_B: bool = False,
        ssm_lr: float = 1e-3,
        implementation: str = "auto",
    ):
        super().__init__()
        self.implementation = runtime.check_implementation(implementation, "model.s4d_implementation")
        if d_state < 2 or d_state % 2:
            raise UserError(f"model.d_state={d_state} must be an even number >= 2 (N/2 complex modes)")
        if not 0 < dt_min <= dt_max:
            raise UserError(f"need 0 < model.dt_min <= model.dt_max (got {dt_min}, {dt_max})")
        if channels < 1:
            raise UserError(f"kernel channels={channels} must be >= 1")
        H, half = d_model, d_state // 2
        self.d_model, self.d_state, self.channels = H, d_state, channels
        self.trainable_B = bool(trainable_B)
        ssm_hint = {"lr": float(ssm_lr), "weight_decay": 0.0}

        log_dt = torch.rand(H) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
        self.log_dt = _hint(nn.Parameter(log_dt), **ssm_hint)
        self.log_A_real = _hint(nn.Parameter(torch.full((H, half), math.log(0.5))), **ssm_hint)
        self.A_imag = _hint(nn.Parameter(math.pi * torch.arange(half, dtype=torch.float32).repeat(H, 1)), **ssm_hint)
        C = torch.randn(channels, H, half, dtype=torch.cfloat)
        self.C = nn.Parameter(torch.view_as_real(C).clone())
        if self.trainable_B:
            self.C._optim = {"lr": float(ssm_lr)}  # reference SSMKernelDiag: lr 0.001, global weight decay
            B = torch.ones(H, half, dtype=torch.cfloat)
            self.B = _hint(nn.Parameter(torch.view_as_real(B).clone()), **ssm_hint)
        else:
            self.register_parameter("B", None)

    def _zoh(self, dtype: torch.dtype | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(dt A [H, N/2], Bbar [H, N/2], C [channels, H, N/2])`` as complex tensors, computed from the parameters
        cast to the real ``dtype`` first (None: the parameters' own; differentiable either way)."""
        cast = (lambda t: t) if dtype is None else (lambda t: t.to(dtype))
        A = torch.complex(-torch.exp(cast(self.log_A_real)), cast(self.A_imag))
        dtA = A * torch.exp(cast(self.log_dt)).unsqueeze(-1)
        Bbar = (torch.exp(dtA) - 1.0) / A
        if self.B is not None:
            Bbar = Bbar * torch.view_as_complex(cast(self.B))
        return dtA, Bbar, torch.view_as_complex(cast(self.C))

    def discretize(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ZOH ``(Abar [H, N/2], Bbar [H, N/2], C [channels, H, N/2])``: x' = Abar x + Bbar u, y = 2 Re(C x)."""
        dtA, Bbar, C = self._zoh()
        return torch.exp(dtA), Bbar, C

    def forward(self, length: int) -> torch.Tensor:
        dtA, Bbar, C = self._zoh()
        if self.implementation_for(dtA.device) == "triton":
            from spiking_ssm.kernels.vandermonde import fused_vandermonde_kernel

            return fused_vandermonde_kernel(C * Bbar, dtA, int(length))
        with torch.autocast(dtA.device.type, enabled=False):  # its real matmul would otherwise run in half precision
            return two_level_vandermonde(C * Bbar, dtA, int(length))

    def implementation_for(self, device: torch.device) -> str:
        """``"triton"`` or ``"torch"``: what builds the kernel on ``device`` (an impossible request raises)."""
        return runtime.choose(self.implementation, "S4D kernel", device, setting="model.s4d_implementation")


def bidirectional_kernel(k: torch.Tensor) -> torch.Tensor:
    """[2, H, L] (forward, backward) -> non-causal [H, 2L]: ``pad_right(k_fwd) + pad_left(flip(k_bwd))``.

    Convolved with :func:`fft_conv` the output at t sees u[t - j] through ``k_fwd[j]`` (j >= 0) and
    u[t + j] through ``k_bwd[j - 1]`` (j >= 1).
    """
    if k.shape[0] != 2:
        raise ValueError(f"a bidirectional kernel needs 2 channels, got {k.shape[0]}")
    L = k.shape[-1]
    return F.pad(k[0], (0, L)) + F.pad(k[1].flip(-1), (L, 0))


def fft_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Convolve u [..., H, L] with k [H, L] (causal) or [H, 2L] (bidirectional); FFT size 2L, first L kept.

    Returns [..., H, L], a view of the inverse FFT's [..., H, 2L] output (the fused somas read it in place).
    Half-precision inputs are computed in float32. The backward is written out (:class:`_FFTConv`) so that it
    transforms the gradient once and reuses the saved input spectrum, instead of autograd's zero-filled slice
    gradient and full-size complex adjoints.
    """
    if u.dtype in (torch.float16, torch.bfloat16) or k.dtype in (torch.float16, torch.bfloat16):
        u, k = u.float(), k.float()  # half-precision FFTs need power-of-two sizes and lose accuracy
    return _FFTConv.apply(u, k.to(u.dtype))


class _FFTConv(torch.autograd.Function):
    """``y = irfft(rfft(u, 2L) rfft(k, 2L), 2L)[..., :L]``.

    Backward (circular correlation with real signals): ``du = irfft(G conj(Kf))[..., :L]`` and
    ``dk = irfft(sum over the leading axes of G conj(Uf))[:, :len(k)]`` with ``G = rfft(dy, 2L)``; the input
    spectrum ``Uf`` is saved only when ``k`` needs a gradient, ``Kf`` only when ``u`` does.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        length = u.shape[-1]
        n = 2 * length
        u_f = torch.fft.rfft(u, n=n)
        k_f = torch.fft.rfft(k, n=n)
        ctx.save_for_backward(u_f if ctx.needs_input_grad[1] else None, k_f if ctx.needs_input_grad[0] else None)
        ctx.length, ctx.kernel_length = length, k.shape[-1]
        return torch.fft.irfft(u_f * k_f, n=n)[..., :length]

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        u_f, k_f = ctx.saved_tensors
        n = 2 * ctx.length
        g_f = torch.fft.rfft(grad_y, n=n)
        grad_u = grad_k = None
        if ctx.needs_input_grad[0]:
            grad_u = torch.fft.irfft(g_f * k_f.conj(), n=n)[..., :ctx.length]
        if ctx.needs_input_grad[1]:
            spectrum = (g_f * u_f.conj()).reshape(-1, *g_f.shape[-2:]).sum(0)
            grad_k = torch.fft.irfft(spectrum, n=n)[..., :ctx.kernel_length]
        return grad_u, grad_k
