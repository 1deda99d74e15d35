"""Sparse-MLP models that look trained (random BN statistics and affines) for the folding/export tests."""

from __future__ import annotations

from functools import partial

import torch
from spikingjelly.activation_based import functional
from torch import nn

from mixer_snn.model import SparseMLPSNN
from snn_engine.neurons import make_neuron

SMALL = dict(num_classes=5, in_chans=3, img_size=32, T=3, depths=(1, 1, 1, 1), patch_size=4, dim=6)


def trained_like(seed: int = 0, kind: str = "lif", v_reset: float | None = 0.0, **kw) -> SparseMLPSNN:
    """A float64 eval model (``SMALL`` with ``kw``) whose BNs carry random statistics and affines (about 15%
    negative gammas) and whose tebn step scales are random."""
    torch.manual_seed(seed)
    neuron = partial(make_neuron, kind=kind, tau=2.0, decay_input=True, v_threshold=1.0, v_reset=v_reset)
    model = SparseMLPSNN(neuron, **{**SMALL, **kw}).double()
    g = torch.Generator().manual_seed(seed + 1)
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            n = module.num_features
            sign = torch.where(torch.rand(n, generator=g) < 0.15, -1.0, 1.0).double()
            module.weight.data = sign * (0.6 + 1.2 * torch.rand(n, generator=g, dtype=torch.float64))
            module.bias.data = 0.3 * torch.randn(n, generator=g, dtype=torch.float64) + 0.2
            module.running_mean.data = 0.2 * torch.randn(n, generator=g, dtype=torch.float64)
            module.running_var.data = 0.5 + 1.5 * torch.rand(n, generator=g, dtype=torch.float64)
        if isinstance(getattr(module, "scale", None), nn.Parameter):  # tebn step scales
            module.scale.data = 0.7 + 0.6 * torch.rand(module.scale.shape, generator=g, dtype=torch.float64)
    return model.eval()


def images(batch: int = 4, size: int = 32, T: int | None = None) -> torch.Tensor:
    """Float64 images ``[B, 3, size, size]`` (or ``[T, B, ...]``) scaled so that the models spike."""
    g = torch.Generator().manual_seed(7)
    shape = (batch, 3, size, size) if T is None else (T, batch, 3, size, size)
    return 1.5 * torch.randn(shape, generator=g, dtype=torch.float64)


def eval_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` without gradient, neurons reset afterwards."""
    with torch.no_grad():
        out = model(x)
    functional.reset_net(model)
    return out
