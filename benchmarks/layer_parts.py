"""The parts of one SpikingSSM layer as separately timeable forward+backward steps (``neuron_speed.py --decompose``),
and a profile of the mixing's forms (``python -m benchmarks.layer_parts --profile``).

Parts, in the order of the layer's forward, each one forward+backward (under the caller's autocast, if any):

- ``s4d kernel``: the kernel K built from the SSM parameters (gradients into them);
- the current path of the layer's ``conv``: ``fft conv`` (``(K * u + D u) / theta`` through the FFT, the kernel
  held fixed: add ``s4d kernel`` for the whole path) or ``chunked conv (torch)`` / ``chunked conv (triton)``
  (``layer.current(u)``: the chunk operators rebuilt from the SSM parameters by ``layer.chunk_operators()`` and the
  chunked convolution ``layer.conv_for(u)`` names, gradients into u and the parameters: the whole path);
- ``permutes``: the time-major copy a soma without strided input needs, and back (0 for the fused somas);
- ``soma``: on the current as the layer passes it;
- ``mix <form>``: dropout, the 1x1 conv H -> 2H computed in each form of :mod:`spiking_ssm.mixing` (``conv``,
  the layer's; ``bmm``, ``matmul``, ``linear``), GLU, on the spikes this layer's soma gives (their memory layout
  included: time-major for a soma without strided output);
- ``layer``: all of it, for comparison.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import Callable

import torch
from spikingjelly.activation_based.functional import reset_net

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spiking_ssm.mixing import FORMS  # noqa: E402
from spiking_ssm.s4d import fft_conv  # noqa: E402


def _backward(out: torch.Tensor) -> None:
    out.backward(torch.ones_like(out))


def layer_parts(layer, batch: int, length: int, device: torch.device,
                autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext
                ) -> dict[str, Callable[[], None]]:
    """``{part: step}`` for ``layer`` (a :class:`spiking_ssm.layer.SpikingSSM`) at ``[batch, H, length]``; every
    step runs its forward inside ``autocast()``."""
    width = layer.d_model
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, width, length, generator=g).to(device).requires_grad_()
    kernel = layer.conv_kernel(length).detach().requires_grad_()
    current = fft_conv(u.detach(), kernel.detach())  # a [B, H, L] view of the FFT output, as the soma sees it
    with torch.no_grad(), autocast():
        spikes = layer.spikes(u).detach().requires_grad_()  # [B, H, L], in the memory layout the soma returns
    reset_net(layer)
    strided = getattr(layer.neuron, "accepts_strided_input", False)
    path = layer.conv_for(u)

    def s4d_kernel():
        with autocast():
            k = layer.kernel(length)
        _backward(k)
        layer.zero_grad(set_to_none=True)

    def fft():
        with autocast():
            y = fft_conv(u, kernel)
        _backward(y)
        u.grad = kernel.grad = None

    def chunked():
        with autocast():
            y = layer.current(u)
        _backward(y)
        layer.zero_grad(set_to_none=True)
        u.grad = None

    def permutes():
        if not strided:
            y = current.detach().requires_grad_()
            _backward(y.permute(2, 0, 1).contiguous().permute(1, 2, 0).contiguous())

    def soma():
        y = current.detach().requires_grad_()
        view = y.permute(2, 0, 1)
        _backward(layer.neuron(view if strided else view.contiguous()))
        reset_net(layer.neuron)

    def mix(form: str) -> Callable[[], None]:
        def step():
            previous, layer.output_linear.form = layer.output_linear.form, form
            try:
                with autocast():
                    out = layer.mix(spikes)
                _backward(out)
            finally:
                layer.output_linear.form = previous
            layer.zero_grad(set_to_none=True)
            spikes.grad = None
        return step

    def whole():
        with autocast():
            out = layer(u)
        _backward(out)
        reset_net(layer)
        layer.zero_grad(set_to_none=True)
        u.grad = None

    parts = {"s4d kernel": s4d_kernel}
    if path == "fft":
        parts["fft conv"] = fft
    else:
        parts[path.replace("chunked", "chunked conv")] = chunked
    parts.update({"permutes": permutes, "soma": soma})
    parts.update({f"mix {form}": mix(form) for form in FORMS})
    parts["layer"] = whole
    return parts


COPIES = ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy")
GEMMS = ("aten::mm", "aten::bmm", "aten::baddbmm", "aten::addmm", "aten::convolution", "aten::convolution_backward",
         "aten::mkldnn_convolution", "aten::cudnn_convolution")


def profile_mix(batch: int, width: int, length: int, device: torch.device, amp: bool, time_major: bool) -> None:
    """Print, for each mixing form, what one forward+backward copies and which GEMM/conv ops it runs, as
    ``torch.profiler`` records them (CUDA: plus the GPU kernels whose names say transpose/copy/convert).

    Copies are in elements per spike element (B*H*L), by the op that made them: ``cast`` (autocast's dtype
    conversions), ``layout`` (``clone``/``contiguous``: transposing copies into a GEMM's layout), ``other`` (e.g.
    the bias broadcast into the output before ``baddbmm``, the weight gradient's reduction).
    """
    from torch.profiler import ProfilerActivity, profile

    from spiking_ssm.mixing import PointwiseConv1d

    torch.manual_seed(0)
    module = torch.nn.Sequential(PointwiseConv1d(width, 2 * width), torch.nn.GLU(dim=1)).to(device)
    shape = (length, batch, width) if time_major else (batch, width, length)
    s = (torch.rand(shape, device=device) < 0.2).float()
    s = (s.permute(1, 2, 0) if time_major else s).requires_grad_()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=amp):
            out = module(s)
        _backward(out)
        module.zero_grad(set_to_none=True)
        s.grad = None

    layout = "time-major [L, B, H] memory" if time_major else "contiguous [B, H, L]"
    print(f"mixing forms, one forward+backward on {device.type}, batch {batch}, width {width}, length {length}, "
          f"spikes {layout}{', autocast ' + str(dtype).split('.')[-1] if amp else ', float32'}")
    for form in FORMS:
        module[0].form = form
        step()
        with profile(activities=activities, record_shapes=True) as prof:
            step()
        copied = {"cast": 0, "layout": 0, "other": 0}  # elements, by what the copy_ was called for
        ops, kernels = {}, {}
        for event in prof.events():
            if event.name == "aten::copy_" and event.input_shapes:
                parent = event.cpu_parent.name if event.cpu_parent is not None else ""
                kind = {"aten::_to_copy": "cast", "aten::clone": "layout", "aten::contiguous": "layout"}.get(
                    parent, "other")
                copied[kind] += torch.Size(event.input_shapes[0]).numel()
            if event.name in COPIES or event.name in GEMMS:
                ops[event.name[6:]] = ops.get(event.name[6:], 0) + 1
            device_type = getattr(event, "device_type", None)
            if device_type is not None and device_type.name == "CUDA" and any(
                    word in event.name.lower() for word in ("transpose", "copy", "nchw", "nhwc", "convert")):
                kernels[event.name[:40]] = kernels.get(event.name[:40], 0) + 1
        print(f"  {form:<7} copied (x B*H*L): " + " ".join(f"{k} {v / s.numel():3.1f}" for k, v in copied.items())
              + " | "
              + ", ".join(f"{name} x{count}" for name, count in ops.items())
              + ("" if not kernels else " | GPU copy kernels: " + ", ".join(f"{k} x{c}" for k, c in kernels.items())))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="profile the layer's mixing forms (copies and GEMMs they run)")
    parser.add_argument("--profile", action="store_true", help="required: what this entry point does")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--length", type=int, default=4096)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if not args.profile:
        parser.error("--profile is the only action")
    for amp in (False, True):
        for time_major in (False, True):
            profile_mix(args.batch, args.width, args.length, torch.device(args.device), amp, time_major)


if __name__ == "__main__":
    main()
