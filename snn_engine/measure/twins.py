"""The networks a spiking model's energy is compared with, and the switches the energy views flip on it.

- :func:`ann_twin`: the same network as an ANN (every spiking neuron a ReLU, one pass: every integer attribute
  ``T`` set to 1), with the same weights. Its energy depends on its shapes, not on its weights (an ANN multiplies
  every activation), so it is the ANN a spiking model would be compared with, not a trained one;
- :func:`weight_bits`: the width of the weights as the model is evaluated (32 for float32, 16 under a half
  precision autocast), the width of the matched quantized twin;
- :func:`int_unit_costs`: pJ per add and per multiply of a ``bits``-wide integer datapath (Horowitz, ISSCC 2014,
  45 nm: 8 bit 0.03 / 0.2 pJ, 32 bit 0.1 / 3.1 pJ; other widths scaled from 8 bit: adds linearly, multiplies
  quadratically in the width), the unit costs of a quantized twin;
- :func:`silenced`: a context in which every spiking neuron outputs zeros, the zero-rate anchor of
  :func:`snn_engine.measure.energy.crossover`.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn

from snn_engine.errors import UserError
from snn_engine.measure.metrics import is_spiking

HOROWITZ_INT = {8: (0.03, 0.2), 32: (0.1, 3.1)}  # bits -> (pJ per add, pJ per multiply), 45 nm


def int_unit_costs(bits: int) -> tuple[float, float]:
    """(pJ per add, pJ per multiply) of a ``bits``-wide integer datapath; see the module docstring."""
    bits = int(bits)
    if bits < 1:
        raise UserError(f"a quantized twin needs a width >= 1 bit, got {bits}; use energy.qann_bits=[8]")
    if bits in HOROWITZ_INT:
        return HOROWITZ_INT[bits]
    add8, mul8 = HOROWITZ_INT[8]
    return add8 * bits / 8, mul8 * (bits / 8) ** 2


def weight_bits(model: nn.Module, autocast: bool = False) -> int:
    """Bits per weight as evaluated: the floating parameters' width, 16 under a half precision autocast."""
    if autocast:
        return 16
    widths = [p.element_size() * 8 for p in model.parameters() if p.is_floating_point()]
    return max(widths) if widths else 32


def _replace_neurons(model: nn.Module) -> int:
    """Swap every spiking module of ``model`` for a ReLU in place; returns how many were swapped."""
    swapped = 0
    for name, child in list(model.named_children()):
        if is_spiking(child):
            setattr(model, name, nn.ReLU())
            swapped += 1
        else:
            swapped += _replace_neurons(child)
    return swapped


def ann_twin(model: nn.Module, example=None) -> nn.Module:
    """The ANN twin of ``model`` (module docstring), in eval mode; with ``example`` (one input batch) it is run
    once so that a twin the model's structure does not allow (e.g. per-step BN scales of ``norm=tebn``) fails
    here with a :class:`UserError` naming the reason."""
    twin = copy.deepcopy(model).eval()
    if _replace_neurons(twin) == 0 and not is_spiking(twin):
        raise UserError(f"{type(model).__name__} has no spiking neurons to turn into an ANN; the ann view needs a "
                        "spiking model")
    for module in twin.modules():
        if isinstance(getattr(module, "T", None), int) and not isinstance(module.T, bool):
            module.T = 1
    if example is not None:
        try:
            with torch.no_grad():
                twin(*example) if isinstance(example, (tuple, list)) else twin(example)
        except (RuntimeError, ValueError, UserError) as error:
            raise UserError(f"{type(model).__name__} has no one-pass ANN twin ({str(error).splitlines()[0]}); "
                            "its ann and qann views are left out") from None
    return twin


@contextlib.contextmanager
def silenced(model: nn.Module):
    """Every spiking module of ``model`` outputs zeros inside the context (hooks removed on exit)."""
    handles = [m.register_forward_hook(lambda _m, _i, out: torch.zeros_like(out))
               for m in model.modules() if is_spiking(m)]
    try:
        yield model
    finally:
        for handle in handles:
            handle.remove()
