"""Time the S4D kernel ``K [C, H, L]`` built from its modes, forward and forward+backward, three ways on one device:

- ``two-level``: :func:`spiking_ssm.s4d.two_level_vandermonde` (``model.s4d_implementation=torch``), one real
  batched matrix product per channel from ``(I + J) N/2`` exponentials;
- ``fused``: the Triton kernel :func:`spiking_ssm.kernels.vandermonde.fused_vandermonde_kernel` (CUDA only);
- ``direct``: :func:`spiking_ssm.s4d.vandermonde_kernel`, the chunked ``[H, N/2, L]`` product (the reference).

Each row also gives the largest difference of K and of both gradients from a float64 direct product, relative to
that quantity's largest magnitude. Medians of ``--repeats`` timed calls after a warm-up.

    python benchmarks/s4d_speed.py                       # CPU: batch of lengths at width 256, d_state 64, C = 2
    python benchmarks/s4d_speed.py --device cuda         # on a GPU (TF32 off)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from spiking_ssm.s4d import S4DKernel, two_level_vandermonde, vandermonde_kernel


def _inputs(width: int, d_state: int, channels: int, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    kernel = S4DKernel(width, d_state, channels=channels)
    with torch.no_grad():
        kernel.log_A_real.add_(torch.randn_like(kernel.log_A_real))  # slow and fast modes
        dtA, Bbar, C = kernel._zoh()
    return (C * Bbar).to(device), dtA.to(device)


def _median_ms(step, device: torch.device, repeats: int, warmup: int = 3) -> float:
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _methods(device: torch.device) -> dict:
    methods = {"two-level": two_level_vandermonde, "direct": vandermonde_kernel}
    if device.type == "cuda":
        from spiking_ssm.kernels.vandermonde import fused_vandermonde_kernel

        methods["fused"] = fused_vandermonde_kernel
    return methods


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--d-state", type=int, default=64)
    parser.add_argument("--channels", type=int, default=2)
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 8192])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--skip-direct-above", type=int, default=1 << 30, help="no direct rows above this length")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    coeff, dtA = _inputs(args.width, args.d_state, args.channels, device)
    print(f"S4D kernel, width {args.width}, d_state {args.d_state}, C {args.channels}, {device} "
          f"({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}); float32; ms (median)")
    print(f"{'L':>6} {'method':<10} {'forward':>9} {'fwd+bwd':>9} {'err K':>9} {'err dC':>9} {'err dA':>9}")
    for length in args.lengths:
        truth = [t.detach().to(torch.complex128).requires_grad_() for t in (coeff, dtA)]
        k64 = vandermonde_kernel(*truth, length)
        upstream = torch.randn_like(k64)
        (k64 * upstream).sum().backward()
        upstream32 = upstream.float()
        for name, method in _methods(device).items():
            if name == "direct" and length > args.skip_direct_above:
                continue
            leaves = [t.detach().clone().requires_grad_() for t in (coeff, dtA)]
            with torch.no_grad():
                forward = _median_ms(lambda: method(coeff, dtA, length), device, args.repeats)

            def step():
                for leaf in leaves:
                    leaf.grad = None
                (method(*leaves, length) * upstream32).sum().backward()

            both = _median_ms(step, device, args.repeats)
            k = method(*leaves, length)

            def err(got, want):
                return ((got.detach().to(want.dtype) - want.detach()).abs().max() / want.abs().max()).item()

            print(f"{length:>6} {name:<10} {forward:9.3f} {both:9.3f} {err(k, k64):9.1e} "
                  f"{err(leaves[0].grad, truth[0].grad):9.1e} {err(leaves[1].grad, truth[1].grad):9.1e}", flush=True)


if __name__ == "__main__":
    main()
