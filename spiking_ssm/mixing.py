"""The SpikingSSM layer's pointwise mixing H -> 2H on [B, H, L], computed four ways (issue 23).

:class:`PointwiseConv1d` is an ``nn.Conv1d`` with ``kernel_size=1`` (the same parameters, state_dict and
``isinstance``, so checkpoints load and the op counters that look for ``nn.Conv1d`` still count it) whose forward
can run as a matrix product instead of a convolution. ``form`` (a plain attribute, not saved) picks how:

- ``"conv"``: ``nn.Conv1d``'s own forward (``F.conv1d``; oneDNN on CPU, cuDNN on CUDA);
- ``"bmm"``: ``baddbmm(bias, W.expand(B, 2H, H), x)``, one batched GEMM per sample with the weight broadcast
  (stride 0) over the batch. Each sample's ``[H, L]`` block is already a row-major GEMM operand, so nothing is
  transposed or copied; backward is two batched GEMMs (the weight's gradient ``[B, 2H, H]`` summed over B);
- ``"matmul"``: ``torch.matmul(W, x) + bias``. When W requires a gradient, ``torch.matmul`` folds the batch into
  one ``[B*L, H]`` matrix, which for ``[B, H, L]`` memory is a transposing copy of x (and of the gradients in
  backward): measured here for comparison, not a form to use;
- ``"linear"``: ``F.linear`` over ``x.transpose(1, 2)``, i.e. a GEMM over ``[B*L, H]`` with explicit transposes.

All forms give the same numbers to rounding (in float64 to ~1e-15) and, under autocast, the same lower-precision
output dtype as ``F.conv1d`` (every operand of the GEMM, the bias included, is cast by autocast).

The layer keeps ``"conv"`` (:data:`CPU_MEASUREMENT`): no other form is faster everywhere on CPU. What each form
copies: ``python -m benchmarks.layer_parts --profile``; the CUDA comparison is in ``benchmarks/gpu_spiking_ssm.sh``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

FORMS = ("conv", "bmm", "matmul", "linear")
CPU_MEASUREMENT = (  # median ms of mixing + GLU forward+backward, 2 shared cores (noisy), torch 2.15
    "batch 4, contiguous [B, H, L] spikes, float32 / bf16 autocast: H=64 L=4096 conv 5.8/4.6, bmm 6.3/3.2, "
    "matmul 11.9/9.4, linear 12.2/9.4; H=256 L=2048 conv 27.4/14.3, bmm 37.4/12.0, matmul 53.9/25.2, linear "
    "56.5/28.0; time-major spikes (lif sj), H=256: conv 44.3/25.8, bmm 41.0/20.9"
)


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, form: str) -> torch.Tensor:
    """``y[b, o, l] = sum_i weight[o, i, 0] x[b, i, l] + bias[o]``: x [B, Cin, L] (or [Cin, L]) -> [B, Cout, L].

    ``weight`` [Cout, Cin, 1] and ``bias`` [Cout] (or None) as ``nn.Conv1d`` stores them; ``form`` in
    :data:`FORMS` (module docstring).
    """
    if form not in FORMS:
        raise ValueError(f"form={form!r}; choose one of {FORMS}")
    if form == "conv":
        return F.conv1d(x, weight, bias)
    if x.ndim == 2:  # unbatched [Cin, L], as nn.Conv1d accepts
        return pointwise(x.unsqueeze(0), weight, bias, form).squeeze(0)
    w = weight[..., 0]  # [Cout, Cin]
    if form == "bmm":
        if torch.is_autocast_enabled(x.device.type):  # cast [Cout, Cin] once, not the expanded [B, Cout, Cin]
            w = w.to(torch.get_autocast_dtype(x.device.type))
        w = w.expand(x.shape[0], -1, -1)  # [B, Cout, Cin], stride 0 over B: no copy
        if bias is None:
            return torch.bmm(w, x)
        return torch.baddbmm(bias[None, :, None], w, x)
    if form == "matmul":
        y = torch.matmul(w, x)
    else:
        y = F.linear(x.transpose(1, 2), w).transpose(1, 2)
    return y if bias is None else y + bias.to(y.dtype)[:, None]


class PointwiseConv1d(nn.Conv1d):
    """``nn.Conv1d(in_channels, out_channels, kernel_size=1)`` on [B, Cin, L] -> [B, Cout, L], computed by ``form``.

    Parameters ``weight`` [Cout, Cin, 1] and ``bias`` [Cout] exactly as ``nn.Conv1d``'s; ``form`` is not part of
    the state_dict (a checkpoint of either class loads into the other and gives the same outputs).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True, form: str = "conv",
                 device=None, dtype=None):
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias, device=device, dtype=dtype)
        if form not in FORMS:
            raise ValueError(f"form={form!r}; choose one of {FORMS}")
        self.form = form

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.form == "conv":
            return super().forward(x)
        return pointwise(x, self.weight, self.bias, self.form)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, form={self.form}"
