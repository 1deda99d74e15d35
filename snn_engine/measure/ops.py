"""Operation and energy counts of a spiking model on real data (per input sample), beside its ANN twin.

What is counted (convention ``"full"``), per module, from forward hooks on the data actually seen:

- ``nn.Linear`` (fan-out = ``out_features``) and ``nn.Conv1d`` / ``nn.Conv2d``: if the module's input is binary
  (every value 0 or 1) each nonzero input costs one **accumulate (AC)** per weight it meets: a linear layer
  costs ``out_features * nnz(x)``; a convolution costs, exactly, the sum over output positions of the active
  inputs inside each receptive field (stride, padding, dilation and groups as the conv computes them; padded
  zeros cost nothing) times ``out_channels / groups``. If the input is real-valued the same products are
  **multiply-accumulates (MAC)**: ``numel(x) * out_features`` for a linear layer, every in-range (input,
  weight) product for a convolution. Biases are not counted.
- ``BatchNorm`` (1d/2d/3d, SyncBatchNorm; not folded into the previous layer): 1 MAC per element (the
  per-channel scale-and-shift of inference; statistics of training mode are not counted).
- ``LayerNorm`` (and subclasses): 2 MACs per element (normalise ``(x - mean) * rstd`` + affine
  ``gamma * x + beta``), 1 without an affine; the mean/variance reductions are not counted.
- ``nn.GLU``: 1 MAC per output element (the gating product; the sigmoid is not counted).
- Any module defining ``count_ops(inputs, output, ctx) -> OpCount`` counts its own work (not its children's)
  instead, e.g. :meth:`spiking_ssm.layer.SpikingSSM.count_ops` (its S4D recurrence, D skip and threshold).
- **Not counted**: ``nn.Embedding`` (a table look-up, 0 ops), spiking neurons (membrane updates), residual and
  other element-wise additions, pooling, activations, dropout, softmax, and everything in backward.

Energy = ``e_ac * AC + e_mac * MAC`` with 0.9 pJ and 4.6 pJ by default (32-bit float, 45 nm: Horowitz, ISSCC
2014). The ANN equivalent counts every op as a MAC on dense input for ONE forward pass: tensors that carry
the time axis of a model repeating a static input T times (``[T*B, ...]`` or ``[T, B, ...]``) are divided
by T; a layer that sees the static input once (a stem on ``[B, C, H, W]``) is not. Count in ``eval()`` mode:
training-mode dropout rescales spikes to non-binary values, which would then be counted as MACs.

Convention ``"ssm_paper"`` (the SpikingSSM paper): only the modules a model names through
``module.ops_targets("ssm_paper") -> [(name, submodule)]`` are counted, i.e. the 1x1 mixing convs
``SpikingSSM.output_linear``, as AC for the SNN and as MAC for the ANN (e.g. WT103, L = 8K, 16 layers, 1024 -> 2048: 275.2 G MAC
x 4.6 pJ for the ANN; with 73.6 % sparsity 72.66 G AC x 0.9 pJ for the SNN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from snn_engine.training.distributed import all_reduce_sum
from snn_engine.errors import UserError

CONVENTIONS = ("full", "ssm_paper")
E_AC_PJ, E_MAC_PJ = 0.9, 4.6


@dataclass
class OpCount:
    """Counts of one module call: ``ac`` (binary input), ``mac`` (real input), ``dense`` (ANN MACs, one pass)."""

    ac: float = 0.0
    mac: float = 0.0
    dense: float = 0.0

    def __add__(self, other: "OpCount") -> "OpCount":
        return OpCount(self.ac + other.ac, self.mac + other.mac, self.dense + other.dense)


@dataclass
class OpContext:
    """``time_steps``: T of models repeating a static input (1 for sequence models); ``batch_size``: samples."""

    time_steps: int
    batch_size: int


def is_binary(t: torch.Tensor) -> bool:
    """True when every value of a floating (or bool) tensor is 0 or 1; False for integer ids and complex."""
    if t.dtype == torch.bool:
        return True
    if not t.is_floating_point():
        return False
    return bool(((t == 0) | (t == 1)).all().item())


def steps_in(x: torch.Tensor, ctx: OpContext) -> int:
    """T if ``x`` carries the time axis (``[T*B*..., ...]`` or ``[T, B, ...]``), else 1 (seen once)."""
    T, B = int(ctx.time_steps), int(ctx.batch_size)
    if T <= 1 or x.ndim == 0 or B < 1:
        return 1
    if x.shape[0] >= T * B and x.shape[0] % (T * B) == 0:
        return T
    if x.ndim >= 2 and x.shape[0] == T and x.shape[1] == B:
        return T
    return 1


def linear_ops(x: torch.Tensor, fan_out: int, ctx: OpContext, once: bool = False) -> OpCount:
    """Every input element meets ``fan_out`` weights. x: [..., fan_in] (any shape; all elements are inputs).

    Binary x: ``ac = nnz(x) * fan_out``; real x: ``mac = numel(x) * fan_out``. ``dense`` is the dense count
    divided by the time steps in x (not divided when ``once``).
    """
    full = float(x.numel()) * fan_out
    dense = full / (1 if once else steps_in(x, ctx))
    if is_binary(x):
        return OpCount(ac=float(torch.count_nonzero(x).item()) * fan_out, dense=dense)
    return OpCount(mac=full, dense=dense)


def _receptive_sum(conv: nn.Module, active: torch.Tensor) -> float:
    """Sum over output positions of the active (nonzero) inputs in each receptive field, per group.

    ``active`` [N, Cin, *spatial] of 0/1 in float32 or float64; returns a float (exact below 2**53).
    """
    dims = active.ndim - 2
    kernel = torch.ones(conv.groups, conv.in_channels // conv.groups, *conv.kernel_size,
                        dtype=active.dtype, device=active.device)
    padding = conv.padding
    if conv.padding_mode != "zeros":  # reflect/replicate/circular pads with copies of real inputs
        active = F.pad(active, conv._reversed_padding_repeated_twice, mode=conv.padding_mode)
        padding = 0
    fn = F.conv1d if dims == 1 else F.conv2d
    out = fn(active, kernel, None, conv.stride, padding, conv.dilation, conv.groups)
    return float(out.sum(dtype=torch.float64).item())


def conv_ops(conv: nn.Module, x: torch.Tensor, ctx: OpContext) -> OpCount:
    """Exact AC (binary x) or MAC (real x) of ``nn.Conv1d`` / ``nn.Conv2d`` on x [N, Cin, L] or [N, Cin, H, W].

    Unbatched x ([Cin, L] / [Cin, H, W]) is accepted. ``dense`` = the MAC count on this input shape divided by
    the time steps in x.
    """
    if not isinstance(conv, (nn.Conv1d, nn.Conv2d)):
        raise UserError(f"conv_ops counts nn.Conv1d/nn.Conv2d, got {type(conv).__name__}; define count_ops on it")
    dims = 1 if isinstance(conv, nn.Conv1d) else 2
    if x.ndim == dims + 1:
        x = x.unsqueeze(0)
    if x.ndim != dims + 2:
        raise UserError(f"{type(conv).__name__} input must be [N, C, {'L' if dims == 1 else 'H, W'}], "
                        f"got {tuple(x.shape)}")
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    per_weight = conv.out_channels // conv.groups
    ones = torch.ones(1, *x.shape[1:], dtype=work, device=x.device)
    full = _receptive_sum(conv, ones) * x.shape[0] * per_weight
    dense = full / steps_in(x, ctx)
    if is_binary(x):
        return OpCount(ac=_receptive_sum(conv, (x != 0).to(work)) * per_weight, dense=dense)
    return OpCount(mac=full, dense=dense)


def _elementwise(x: torch.Tensor, per_element: int, ctx: OpContext) -> OpCount:
    """``per_element`` MACs per element of x (real arithmetic whatever the input)."""
    full = float(x.numel()) * per_element
    return OpCount(mac=full, dense=full / steps_in(x, ctx))


def generic_ops(module: nn.Module, inputs: tuple, output, ctx: OpContext) -> OpCount | None:
    """Counts for modules without ``count_ops`` (see the module docstring); None if the type is not counted.

    A module that runs one of several time steps (e.g. the per-step weights of a folded TEBN model) carries
    ``ann_share = 1/T``: the ANN twin runs one pass, not one pass per step copy.
    """
    ops = _generic_ops(module, inputs, output, ctx)
    share = getattr(module, "ann_share", None)
    if ops is not None and share is not None:
        ops.dense *= float(share)
    return ops


def _generic_ops(module: nn.Module, inputs: tuple, output, ctx: OpContext) -> OpCount | None:
    if isinstance(module, nn.Linear):
        return linear_ops(inputs[0], module.out_features, ctx)
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return conv_ops(module, inputs[0], ctx)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return _elementwise(inputs[0], 1, ctx)
    if isinstance(module, nn.LayerNorm):
        return _elementwise(inputs[0], 2 if module.elementwise_affine else 1, ctx)
    if isinstance(module, nn.GLU):
        return _elementwise(output, 1, ctx)
    return None


_GENERIC = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GLU)


def _batch_size(args: tuple, kwargs: dict) -> int:
    """Samples in a top-level call: first input's shape[0] ([T, B, ...] 5-D: shape[1]); tuples: first element."""
    first = args[0] if args else next(iter(kwargs.values()), None)
    while isinstance(first, (tuple, list)) and first:
        first = first[0]
    if not torch.is_tensor(first) or first.ndim == 0:
        raise UserError("OpCounter needs the model's first input to be a batched tensor (or a tuple of them)")
    return int(first.shape[1] if first.ndim == 5 else first.shape[0])


class OpCounter:
    """Context manager counting ops of ``model`` over every forward call inside ``with``.

    >>> with OpCounter(model, time_steps=4) as counter:
    ...     model(x)
    >>> print(format_ops_table(counter.compute()))
    """

    def __init__(self, model: nn.Module, time_steps: int = 1, e_ac: float = E_AC_PJ, e_mac: float = E_MAC_PJ,
                 convention: str = "full"):
        if convention not in CONVENTIONS:
            raise UserError(f"ops convention={convention!r} is unknown; choose one of {CONVENTIONS}")
        if int(time_steps) < 1:
            raise UserError(f"ops time_steps={time_steps} must be >= 1 (the model's T; 1 for sequence models)")
        if e_ac < 0 or e_mac < 0:
            raise UserError(f"unit energies must be >= 0 pJ, got e_ac={e_ac}, e_mac={e_mac}")
        self.model = model
        self.time_steps = int(time_steps)
        self.e_ac, self.e_mac = float(e_ac), float(e_mac)
        self.convention = convention
        self._handles: list = []
        self._ctx: OpContext | None = None
        self._depth = 0
        self.samples = 0
        # name -> [ac, mac, dense, calls on binary input, calls on real input]
        self.totals: dict[str, list[float]] = {}

    def _targets(self) -> list[tuple[str, nn.Module]]:
        """(name, module) pairs counted under the convention; the model itself is named by its class."""
        if self.convention != "full":  # a family names what its paper counts: module.ops_targets(convention)
            found = [(f"{n}.{suffix}" if n else suffix, target) for n, m in self.model.named_modules()
                     if callable(getattr(m, "ops_targets", None)) for suffix, target in m.ops_targets(self.convention)]
            if not found:
                raise UserError(f"convention={self.convention!r} counts only the modules a model names for it "
                                "(e.g. SpikingSSM.output_linear for 'ssm_paper') and this model has none; "
                                "use convention='full'")
            return found
        return [(n or type(m).__name__, m) for n, m in self.model.named_modules()
                if callable(getattr(m, "count_ops", None)) or isinstance(m, _GENERIC)]

    def _enter_model(self, module, args, kwargs):
        if self._depth == 0:
            self._ctx = OpContext(self.time_steps, _batch_size(args, kwargs))
            self.samples += self._ctx.batch_size
        self._depth += 1

    def _leave_model(self, module, args, kwargs, output):
        self._depth -= 1

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if self._ctx is None or self._depth == 0:
                raise UserError(f"OpCounter saw {name!r} run outside a call of the counted model; call the "
                                "model given to OpCounter (not a submodule) inside `with counter:`")
            custom = getattr(module, "count_ops", None)
            with torch.no_grad():
                ops = custom(inputs, output, self._ctx) if callable(custom) else generic_ops(
                    module, inputs, output, self._ctx)
            if ops is None:
                return
            row = self.totals[name]
            row[0] += ops.ac
            row[1] += ops.mac
            row[2] += ops.dense
            row[3] += float(ops.ac > 0 or (ops.mac == 0 and ops.dense > 0))
            row[4] += float(ops.mac > 0)
        return hook

    def __enter__(self) -> "OpCounter":
        targets = self._targets()
        for name, module in targets:
            self.totals.setdefault(name, [0.0] * 5)
        # the model's pre-hook first so the context is set before any child counts; its own count_ops (if any)
        # fires after the children, still inside the call
        self._handles.append(self.model.register_forward_pre_hook(self._enter_model, with_kwargs=True))
        for name, module in targets:
            self._handles.append(module.register_forward_hook(self._hook(name)))
        self._handles.append(self.model.register_forward_hook(self._leave_model, with_kwargs=True,
                                                              always_call=True))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._depth = 0

    def compute(self, device=None) -> dict:
        """Per-sample counts and energies (pJ), per layer and total, summed over ranks (see module docstring)."""
        if device is None:
            param = next(self.model.parameters(), None)
            device = param.device if param is not None else torch.device("cpu")
        names = list(self.totals)
        table = torch.tensor([self.totals[n] for n in names] + [[float(self.samples)] + [0.0] * 4],
                             dtype=torch.float64, device=device).reshape(len(names) + 1, 5)
        table = all_reduce_sum(table).cpu()
        samples = int(table[-1, 0].item())
        if samples == 0:
            raise UserError("OpCounter saw no forward call of its model; run model(x) inside `with counter:`")
        layers = {}
        for i, name in enumerate(names):
            ac, mac, dense, binary_calls, real_calls = (float(v) for v in table[i])
            ac, mac, dense = ac / samples, mac / samples, dense / samples
            kind = "mixed" if binary_calls and real_calls else (
                "real" if real_calls else "spikes" if binary_calls else "none")
            if kind == "none" and ac == mac == dense == 0.0:
                continue  # never ran (e.g. a Linear applied through its parent's own count_ops)
            layers[name] = self._energies(ac, mac, dense) | {"input": kind}
        total = self._energies(*(sum(layer[k] for layer in layers.values()) for k in ("ac", "mac", "ann_mac")))
        ann = total["ann_energy_pj"]
        total["energy_ratio"] = total["energy_pj"] / ann if ann > 0 else float("nan")
        return {"unit_energy_pj": {"ac": self.e_ac, "mac": self.e_mac}, "convention": self.convention,
                "samples": samples, "layers": layers, "total": total}

    def _energies(self, ac: float, mac: float, dense: float) -> dict:
        return {"ac": ac, "mac": mac, "ann_mac": dense, "energy_pj": self.e_ac * ac + self.e_mac * mac,
                "ann_energy_pj": self.e_mac * dense}


def eng(value: float, unit: str = "") -> str:
    """Engineering notation: ``eng(1.234e6) == '1.23M'``, ``eng(4.5e-6, 'J') == '4.5 uJ'``."""
    if value != value:  # NaN
        return "nan"
    prefixes = {-12: "p", -9: "n", -6: "u", -3: "m", 0: "", 3: "k", 6: "M", 9: "G", 12: "T", 15: "P"}
    exp = 0
    if value != 0:
        exp = 3 * math.floor(math.log10(abs(value)) / 3)
        exp = min(max(exp, -12), 15)
    scaled = value / 10.0 ** exp
    if round(abs(scaled), 2) >= 1000 and exp < 15:  # 999.996 rounds up into the next prefix
        exp, scaled = exp + 3, scaled / 1000
    text = f"{scaled:.3g}"
    return f"{text} {prefixes[exp]}{unit}" if unit else f"{text}{prefixes[exp]}"


def format_ops_table(result: dict) -> str:
    """A console table of :meth:`OpCounter.compute`'s result: per layer and total, per sample."""
    unit = result["unit_energy_pj"]
    header = (f"ops per sample ({result['samples']} samples), convention={result['convention']}, "
              f"E_AC={unit['ac']} pJ, E_MAC={unit['mac']} pJ")
    cols = ("layer", "input", "AC", "MAC", "SNN energy", "ANN MAC", "ANN energy")
    rows = []
    for name, layer in list(result["layers"].items()) + [("TOTAL", result["total"])]:
        rows.append((name, layer.get("input", ""), eng(layer["ac"]), eng(layer["mac"]),
                     eng(layer["energy_pj"] * 1e-12, "J"), eng(layer["ann_mac"]),
                     eng(layer["ann_energy_pj"] * 1e-12, "J")))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(cols))
    body = [line(r) for r in rows[:-1]]
    ratio = result["total"].get("energy_ratio", float("nan"))
    return "\n".join([header, line(cols), rule, *body, rule, line(rows[-1]),
                      f"SNN / ANN energy = {ratio:.4g}"])
