"""Correctness of the fused kernels at a benchmark's own sizes (``neuron_speed.py --verify``).

Each fused path runs beside its torch reference on the same inputs: the SDN and SLTT somas (spikes that differ
away from the threshold, largest gradient difference relative to the largest gradient), the exact ``lif_parallel``
soma (no spike may differ), the S4D kernel (values
and gradients) and one whole layer with every fused path against the all-torch layer. On CPU this needs
``TRITON_INTERPRET=1`` (Triton's interpreter: slow, use small sizes).
"""

from __future__ import annotations

import functools

import torch

from spiking_ssm.kernels.launch import exact_fp32
from spiking_ssm.kernels.runtime import triton_unavailable
from spiking_ssm.kernels.vandermonde import fused_vandermonde_kernel
from spiking_ssm.layer import SpikingSSM
from spiking_ssm.somas import make_ssm_neuron
from spiking_ssm.s4d import S4DKernel, vandermonde_kernel


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _soma_check(kind: str, y: torch.Tensor, upstream: torch.Tensor) -> tuple[str, bool]:
    results = []
    for implementation in ("triton", "torch"):
        soma = make_ssm_neuron(kind, implementation=implementation).to(y.device)
        x = y.detach().requires_grad_()
        spikes = soma(x)
        (spikes * upstream).sum().backward()
        results.append((spikes.detach(), x.grad, soma))
    (s_fast, g_fast, _), (s_ref, g_ref, reference) = results
    if kind == "sdn":
        z = reference.membrane(y) + y - 1.0
    else:
        z, u = torch.empty_like(y), torch.zeros_like(y[0])
        for t in range(y.shape[0]):
            z[t] = reference.tau * u + y[t] - 1.0
            u = (z[t] + 1.0) * (z[t] < 0)
    differ = s_fast != s_ref
    far = (differ & (z.abs() > 1e-5)).sum().item()
    same = ~differ
    grad = ((g_fast - g_ref)[same].abs().max() / g_ref.abs().max().clamp_min(1e-30)).item()
    line = (f"{kind} soma: {differ.sum().item()} of {y.numel()} spikes differ ({far} farther than 1e-5 from the "
            f"threshold), gradient max rel diff {grad:.1e}")
    exact = differ.sum().item() == 0 if kind == "lif_parallel" else far == 0  # the exact soma: not one spike
    return line, exact and grad <= 1e-5


def verify(batch: int, width: int, d_state: int, length: int, device: torch.device) -> bool:
    """Print one line per fused path; return True when every check passes (no far spike flips, gradients 1e-5).
    The torch references run with TF32 off (true float32 convolutions and matmuls on CUDA)."""
    with exact_fp32():
        return _verify(batch, width, d_state, length, device)


def _verify(batch: int, width: int, d_state: int, length: int, device: torch.device) -> bool:
    reason = triton_unavailable(device)
    if reason:
        print(f"verify: skipped ({reason})")
        return False
    g = torch.Generator().manual_seed(0)
    y = (1.2 * torch.randn(batch, width, length, generator=g)).to(device).permute(2, 0, 1)
    upstream = torch.randn(y.shape, generator=g).to(device)
    checks = [_soma_check(kind, y, upstream) for kind in ("sdn", "sltt", "lif_parallel")]
    kernel = S4DKernel(width, d_state, channels=2).to(device)
    dtA, Bbar, C = kernel._zoh()
    args = [t.detach() for t in (C * Bbar, dtA)]
    a, b = [t.clone().requires_grad_() for t in args], [t.clone().requires_grad_() for t in args]
    ref, out = vandermonde_kernel(*a, length), fused_vandermonde_kernel(*b, length)
    up = torch.randn(ref.shape, generator=g).to(device)
    (ref * up).sum().backward()
    (out * up).sum().backward()
    worst = max(_relative(out, ref), *(_relative(b[i].grad, a[i].grad) for i in range(2)))
    checks.append((f"S4D kernel: values and gradients max rel diff {worst:.1e}", worst <= 1e-5))
    outputs = []
    for implementation in ("torch", "triton"):
        torch.manual_seed(0)
        layer = SpikingSSM(width, functools.partial(make_ssm_neuron, "sdn", implementation=implementation),
                           d_state=d_state, bidirectional=True, s4d_implementation=implementation).to(device)
        x = torch.randn(batch, width, length, generator=torch.Generator().manual_seed(1)).to(device)
        x.requires_grad_()
        layer(x).backward(torch.ones(batch, width, length, device=device))
        outputs.append(torch.cat([x.grad.reshape(-1)] + [p.grad.reshape(-1) for p in layer.parameters()]))
    worst = _relative(*outputs)
    checks.append((f"sdn layer, every fused path vs all torch: gradients max rel diff {worst:.1e}", worst <= 1e-4))
    for line, ok in checks:
        print(f"verify: {'ok  ' if ok else 'FAIL'} {line}", flush=True)
    return all(ok for _, ok in checks)
