"""The parts of one SpikingSSM layer as separately timeable forward+backward steps (``neuron_speed.py --decompose``).

Parts, in the order of the layer's forward: ``s4d kernel`` (the kernel K built from the SSM parameters),
``fft conv`` (the current ``(K * u + D u) / theta`` through the FFT, kernel held fixed), ``permutes`` (the
time-major copy a soma without strided input needs, and back; 0 for the fused somas), ``soma`` (on the current
as the layer passes it), ``mix`` (dropout, 1x1 conv H -> 2H, GLU), and ``layer`` (all of it, for comparison).
"""

from __future__ import annotations

from typing import Callable

import torch
from spikingjelly.activation_based.functional import reset_net

from spiking_ssm.s4d import fft_conv


def _backward(out: torch.Tensor) -> None:
    out.backward(torch.ones_like(out))


def layer_parts(layer, batch: int, length: int, device: torch.device) -> dict[str, Callable[[], None]]:
    """``{part: step}`` for ``layer`` (a :class:`spiking_ssm.layer.SpikingSSM`) at ``[batch, H, length]``."""
    width = layer.d_model
    g = torch.Generator().manual_seed(0)
    u = torch.randn(batch, width, length, generator=g).to(device).requires_grad_()
    kernel = layer.conv_kernel(length).detach().requires_grad_()
    current = fft_conv(u.detach(), kernel.detach())  # a [B, H, L] view of the FFT output, as the soma sees it
    spikes = (current > 0.5).float().requires_grad_()
    strided = getattr(layer.neuron, "accepts_strided_input", False)

    def s4d_kernel():
        _backward(layer.kernel(length))
        layer.zero_grad(set_to_none=True)

    def conv():
        _backward(fft_conv(u, kernel))
        u.grad = kernel.grad = None

    def permutes():
        if not strided:
            y = current.detach().requires_grad_()
            _backward(y.permute(2, 0, 1).contiguous().permute(1, 2, 0).contiguous())

    def soma():
        y = current.detach().requires_grad_()
        view = y.permute(2, 0, 1)
        _backward(layer.neuron(view if strided else view.contiguous()))
        reset_net(layer.neuron)

    def mix():
        _backward(layer.mix(spikes))
        layer.zero_grad(set_to_none=True)
        spikes.grad = None

    def whole():
        _backward(layer(u))
        reset_net(layer)
        layer.zero_grad(set_to_none=True)
        u.grad = None

    return {"s4d kernel": s4d_kernel, "fft conv": conv, "permutes": permutes, "soma": soma, "mix": mix,
            "layer": whole}
