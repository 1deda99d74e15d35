"""On a CUDA machine: time each fused kernel launch of ``kernel_budget.py``'s float32 benchmark set (batch 64, width
256, L = 8192, d_state 64) and print the measured milliseconds beside the modelled ones.

Called by ``python -m benchmarks.kernel_budget --measure``; each row is one kernel and autotune config launched
directly (no autotuner), timed with ``triton.testing.do_bench`` (median of repeated launches, L2 flushed between).
"""

from __future__ import annotations

import torch

from spiking_ssm.kernels import lif_fixed_point, soma, vandermonde
from spiking_ssm.kernels.launch import FP_FUSION
from kernel_model.plans import BENCH


def _config(text: str) -> tuple[dict, int]:
    """``"BLOCK=256 w4"`` -> ``({"BLOCK": 256}, 4)`` (``precision=tf32x3`` stays a string)."""
    *pairs, warps = text.split()
    return {k: int(v) if v.isdigit() else v for k, v in (pair.split("=") for pair in pairs)}, int(warps[1:])


def _launcher(name: str, kwargs: dict, warps: int):
    """A no-argument callable launching ``name`` with this config on the benchmark's tensors."""
    import triton

    n, length, h, n2 = BENCH.rows, BENCH.length, BENCH.width, BENCH.d_state // 2
    cuda = torch.device("cuda")
    options = dict(kwargs, num_warps=warps, **FP_FUSION)
    if name.startswith(("sdn", "sltt")):
        y = torch.randn(n, BENCH.row_stride, device=cuda)[:, :length]
        s, g = torch.empty(n, length, device=cuda), torch.empty(n, length, device=cuda)
        store_g = "no g" not in name
        if name.startswith("sdn"):
            weights = tuple(0.1 for _ in range(soma.SDN_NUM_WEIGHTS + 1))
            grid = (n, triton.cdiv(length, kwargs["BLOCK"]))
            args = (y, s, g, weights, length, y.stride(0), 1, length, 1, n.bit_length(), length.bit_length())
            return lambda: soma._sdn_forward_kernel[grid](*args, STORE_G=store_g, F64=False, W_IN_ARGS=True, **options)
        params = soma.sltt_params(0.125, 1.0, 1.0, cuda, torch.float32)
        grid = (triton.cdiv(n, kwargs["ROWS"]),)
        args = (y, s, g, s, params, n, length, y.stride(0), 1, length, 1, n.bit_length(), length.bit_length())
        return lambda: soma._sltt_forward_kernel[grid](*args, STORE_G=store_g, STORE_V=False, F64=False, **options)
    if name.startswith("exact"):
        return _exact_launcher(name, kwargs, warps)
    if name.startswith("chunked"):
        return _chunked_launcher(name, kwargs, warps)
    channels = int(name.split("C=")[1])
    coeff = torch.randn(channels, h, n2, 2, device=cuda)
    dta = torch.stack([-torch.rand(h, n2, device=cuda), torch.randn(h, n2, device=cuda)], -1)
    blocks = triton.cdiv(length, kwargs["BLOCK"])
    if "fwd" in name:
        k = torch.empty(channels, h, length, device=cuda)
        return lambda: vandermonde._vandermonde_forward_kernel[(h, blocks)](
            coeff, dta, k, h, n2, length, length.bit_length(), C=channels, F64=False, **options)
    grad = torch.randn(channels, h, length, device=cuda)
    gcoeff, gdta = torch.empty(blocks, channels, h, n2, 2, device=cuda), torch.empty(blocks, h, n2, 2, device=cuda)
    return lambda: vandermonde._vandermonde_backward_kernel[(h, blocks)](
        coeff, dta, grad, gcoeff, gdta, h, n2, length, C=channels, MODES=vandermonde.backward_modes(n2),
        SPAN=vandermonde.SPAN, F64=False, **options)


def _exact_launcher(name: str, kwargs: dict, warps: int):
    """The ``lif_parallel`` kernels on N(0, 1.2^2) currents, tau 0.125, as the soma launches them (no FMA
    contraction in the forward; zero guess)."""
    n, length, cuda = BENCH.rows, BENCH.length, torch.device("cuda")
    y = 1.2 * torch.randn(n, BENCH.row_stride, device=cuda)[:, :length]  # an FFT slice, as the layer's currents
    tau = torch.tensor([0.125], device=cuda)
    h, spikes = torch.empty_like(y), torch.zeros(n, length, dtype=torch.uint8, device=cuda)
    if "fwd" in name:
        counts = torch.zeros(n, len(lif_fixed_point.STATS), dtype=torch.int32, device=cuda)
        constants = dict(lif_fixed_point.constants(length, torch.float32, has_guess=False, block=kwargs["BLOCK"]))
        return lambda: lif_fixed_point._exact_lif_kernel[(n,)](
            y, spikes, h, spikes, counts, length, y.stride(0), tau, 32, 0.0, 2, **constants, num_warps=warps,
            enable_fp_fusion=False)
    y = y.contiguous()  # the backward reads the saved membrane: contiguous rows
    alpha, grad, out = torch.tensor([1.0], device=cuda), torch.randn_like(y), torch.empty_like(y)
    return lambda: lif_fixed_point._reverse_scan_kernel[(n,)](
        grad, y, spikes, out, length, tau, alpha, BLOCK=kwargs["BLOCK"], F64=False, num_warps=warps, **FP_FUSION)


def _chunked_launcher(name: str, kwargs: dict, warps: int):
    """One launch of the chunked current path (``model.conv=chunked``), causal walk, on N(0, 1) inputs and operators
    from S4D-like parameters: as :func:`spiking_ssm.kernels.chunked_conv.chunked_conv_triton` and its backward make
    them."""
    import triton

    from spiking_ssm.chunked import chunk_operators
    from spiking_ssm.kernels import chunked_conv as cc

    b, h, length, cuda = BENCH.batch, BENCH.width, BENCH.length, torch.device("cuda")
    chunk, rows, precision = kwargs["Q"], kwargs["BB"], kwargs.get("precision", "ieee")
    modes = BENCH.d_state // 2
    dta = torch.complex(-0.5 * torch.rand(h, modes, device=cuda) * 0.1, torch.randn(h, modes, device=cuda) * 0.1)
    ops = cc.pad_operators(chunk_operators(torch.randn(h, modes, dtype=torch.complex64, device=cuda), dta, chunk),
                           torch.float32)
    u, grad = torch.randn(b, h, length, device=cuda), torch.randn(b, h, length, device=cuda)
    count, blocks, padded = triton.cdiv(length, chunk), triton.cdiv(b, rows), ops[-1].shape[-1]
    states = torch.empty(b, h, count, 2, padded, device=cuda)
    adjoint = torch.empty_like(states)
    kind = name.split()[1]
    if kind == "fwd":
        return lambda: cc._launch_forward(u, *ops, False, precision, rows, warps)
    if kind == "states":
        return lambda: cc._launch_forward(u, *ops, False, precision, rows, warps, states)
    common = dict(Q=chunk, MP=padded, BB=rows, REVERSE=False, PRECISION=precision, STAGES=kwargs["STAGES"],
                  num_warps=warps, **FP_FUSION)
    sizes, grid = (b, h, length, count), (h, blocks)
    if kind == "adjoint":
        taps, readout, inject, decay = ops
        readout_t, inject_t, du = readout.transpose(2, 3).contiguous(), inject.transpose(2, 3).contiguous(), \
            torch.empty_like(u)
        return lambda: cc._chunk_adjoint_kernel[grid](grad, taps, readout_t, inject_t, decay, du, adjoint, *sizes,
                                                      *grad.stride(), **common)
    outs = (torch.zeros(blocks, h, chunk, chunk, device=cuda), torch.zeros(blocks, *ops[2].shape, device=cuda),
            torch.zeros(blocks, *ops[1].shape, device=cuda), torch.zeros(blocks, *ops[3].shape, device=cuda))
    return lambda: cc._chunk_grads_kernel[grid](u, grad, states, adjoint, *outs, *sizes, *u.stride(),
                                                *grad.stride(), PART=int(kind[-1]), **common)


def measure_beside_model(rows: list[dict]) -> None:
    """Print ``kernel [config]: measured ms, modelled ms (bound)`` for each float32 sm_90 row."""
    from triton.testing import do_bench

    if not torch.cuda.is_available():
        print("measure: skipped (no CUDA device)")
        return
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"MEASURED on {torch.cuda.get_device_name()} beside MODELLED (H100 rates)")
    for row in rows:
        if "ms" not in row:
            continue
        try:
            run = _launcher(row["name"], *_config(row["config"]))
            measured = do_bench(run, warmup=25, rep=200)
        except Exception as error:  # noqa: BLE001 - one launch that fails must not cost the other rows
            print(f"{row['label']:<40} FAILED to launch: {type(error).__name__}: {str(error)[:200]}", flush=True)
            continue
        print(f"{row['label']:<40} measured {measured:7.3f} ms   modelled {row['ms']:7.3f} ms ({row['limit']}-bound)"
              f"   DRAM floor {row['floor_ms']:.3f} ms", flush=True)
