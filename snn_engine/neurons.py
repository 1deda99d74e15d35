"""Spiking neuron factory: every model asks for neurons through one zero-argument callable.

Configs under ``conf/neuron`` instantiate :func:`make_neuron` with ``_partial_: true``; a model calls the
resulting partial once per spiking layer and gets a fresh multi-step module that maps ``[T, B, ...]``
input currents to ``[T, B, ...]`` binary spikes.

SpikingJelly 2.0 chooses its CUDA kernels per neuron type from ``SJ_<TYPE>_CUDA_IMPLEMENTATION``
(``auto`` tries native CUDA, then Triton, then torch). :func:`select_implementation` maps our
``implementation`` config value onto that mechanism, checks that it can run on the device, and returns
the name of the implementation that will actually run, for logging.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Callable

import torch
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate as sj_surrogate
from torch import nn

from snn_engine.errors import UserError

SURROGATES: dict[str, Callable[[float], nn.Module]] = {
    "sigmoid": sj_surrogate.Sigmoid,
    "atan": sj_surrogate.ATan,
    "erf": sj_surrogate.Erf,
    "piecewise_quadratic": sj_surrogate.PiecewiseQuadratic,
    "piecewise_exp": sj_surrogate.PiecewiseExp,
    "soft_sign": sj_surrogate.SoftSign,
    "super_spike": sj_surrogate.SuperSpike,
}
# our neuron kind -> SpikingJelly's op package (whose _selection reads SJ_<NAME>_CUDA_IMPLEMENTATION)
SJ_OP_PACKAGES = {"lif": "lif", "plif": "plif", "if": "if_"}
IMPLEMENTATIONS = ("auto", "torch", "cuda", "triton")


def make_surrogate(name: str, alpha: float) -> nn.Module:
    """A SpikingJelly surrogate-gradient function by name, e.g. ``sigmoid`` with ``alpha=4``."""
    if name not in SURROGATES:
        raise UserError(f"unknown neuron.surrogate={name!r}; choose one of {sorted(SURROGATES)}")
    return SURROGATES[name](alpha=float(alpha))


class _Float32State:
    """Integrate half-precision input currents (autocast) in float32.

    SpikingJelly's nodes keep their membrane in the input's dtype, and its fused CUDA kernels (Triton/native) only
    take a float32 membrane: under fp16/bf16 autocast every LIF layer would silently run SpikingJelly's Python-loop
    reference instead (and an explicit ``neuron.implementation`` would crash). Casting the input up front keeps the
    fused kernels in use and the membrane exact; the spikes come out as float32 0/1 and the next layer's autocast
    casts them down again (exactly).
    """

    float32_state = True

    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        if x_seq.dtype in (torch.float16, torch.bfloat16):
            x_seq = x_seq.float()
        return super().multi_step_forward(x_seq, *args, **kwargs)

    def single_step_forward(self, x: torch.Tensor, *args, **kwargs):
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        return super().single_step_forward(x, *args, **kwargs)


class LIFNode(_Float32State, sj_neuron.LIFNode):
    """SpikingJelly's LIFNode with a float32 membrane under autocast."""


class ParametricLIFNode(_Float32State, sj_neuron.ParametricLIFNode):
    """SpikingJelly's ParametricLIFNode with a float32 membrane under autocast."""


class IFNode(_Float32State, sj_neuron.IFNode):
    """SpikingJelly's IFNode with a float32 membrane under autocast."""


class LeakLIFNode(_Float32State, sj_neuron.BaseNode):
    """LIF charged as ``h = leak * v + x`` (a multiply, then an add), spike ``s = [h >= v_threshold]``, hard reset
    ``v = h * (1 - s)``: SpikingSSM's paper and official code, to the rounding (``neuron.leak``).

    Input ``[T, B, ...]`` (multi-step) or ``[B, ...]`` (single step) -> spikes of the same shape; the membrane ``v``
    is a SpikingJelly memory (``reset_net``, ``store_v_seq``, monitors and ``memopt`` work as for its nodes) and
    stays float32 under autocast. SpikingJelly's own LIF computes ``v - (v - v_reset) / tau + x`` on CPU and
    ``v + (v_reset - v) / tau + x`` with a reciprocal in its Triton kernel: other roundings, so spikes on the
    threshold differ between its backends and from the paper. This node runs one arithmetic on every device, as a
    torch loop over time (eager: kept out of ``torch.compile``, whose generated code may contract the multiply and
    the add into one FMA, which rounds once). Gradient: SpikingJelly's surrogate through ``h``, the reset detached
    when ``detach_reset`` (``dv/dh = 1 - s``), i.e. BPTT as SpikingJelly's LIF with ``1 - 1/tau = leak``.
    Non-finite input follows the same float arithmetic: ``+inf`` spikes and leaves ``v = inf * 0 = NaN`` (silent
    from then on), NaN never spikes, ``-inf`` stays ``-inf`` until an input of ``+inf`` or NaN makes it NaN.
    """

    implementation = "torch loop (paper arithmetic)"  # what the engine's implementation counter reports

    def __init__(self, leak: float, v_threshold: float = 1.0, surrogate_function: nn.Module | None = None,
                 detach_reset: bool = True, step_mode: str = "m", store_v_seq: bool = False):
        leak = float(leak)
        if not 0.0 <= leak < 1.0:
            raise UserError(f"neuron.leak={leak} must be the membrane leak factor in [0, 1) (SpikingSSM uses 0.125)")
        super().__init__(v_threshold=float(v_threshold), v_reset=0.0,
                         surrogate_function=surrogate_function or sj_surrogate.PiecewiseQuadratic(alpha=1.0),
                         detach_reset=bool(detach_reset), step_mode=step_mode, store_v_seq=store_v_seq)
        self.leak = leak
        self.last_implementation: str | None = None  # read by snn_engine.measure.kernel_usage

    def implementation_for(self, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
        """The same on every device (reported by :func:`select_implementation`)."""
        return self.implementation

    def single_step_functional_forward(self, inputs, states, **kwargs):
        """One step from explicit state: ``inputs = (x [B, ...],)``, ``states = (v [B, ...],)``."""
        x, v = inputs[0], states[0]
        h = self.leak * v  # two separate kernels: no fused multiply-add
        h = h + x
        spike = self.surrogate_function(h - self.v_threshold)
        kept = 1.0 - (spike.detach() if self.detach_reset else spike)
        return (spike,), (h * kept, *states[1:])

    @torch.compiler.disable
    def multi_step_forward(self, x_seq: torch.Tensor, *args, **kwargs):
        self.last_implementation = self.implementation
        return super().multi_step_forward(x_seq, *args, **kwargs)

    @torch.compiler.disable
    def single_step_forward(self, x: torch.Tensor, *args, **kwargs):
        self.last_implementation = self.implementation
        return super().single_step_forward(x, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"leak={self.leak}, " + super().extra_repr()


def make_neuron(
    kind: str = "lif",
    tau: float = 2.0,
    decay_input: bool = True,
    v_threshold: float = 1.0,
    v_reset: float | None = 0.0,
    detach_reset: bool = True,
    surrogate: str = "sigmoid",
    alpha: float = 4.0,
    implementation: str = "auto",
    leak: float | None = None,
) -> nn.Module:
    """One multi-step spiking layer: ``[T, B, ...]`` currents -> ``[T, B, ...]`` spikes in {0, 1}.

    ``kind`` is ``lif`` (fixed tau), ``plif`` (learnable tau initialised to ``tau``) or ``if``: SpikingJelly's
    nodes with a float32 membrane under autocast (:class:`_Float32State`).
    ``v_reset=None`` means soft reset (subtract the threshold). ``implementation`` is checked by
    :func:`select_implementation` when the engine moves the model to its device. ``leak`` (SpikingSSM's profile
    sets it) makes ``lif`` the :class:`LeakLIFNode` with that leak factor instead of SpikingJelly's node.
    """
    if implementation not in IMPLEMENTATIONS:
        raise UserError(f"unknown neuron.implementation={implementation!r}; choose one of {IMPLEMENTATIONS}")
    if leak is not None:
        _check_leak(kind, float(tau), decay_input, v_reset, implementation, float(leak))
        return LeakLIFNode(float(leak), v_threshold=float(v_threshold),
                           surrogate_function=make_surrogate(surrogate, alpha), detach_reset=bool(detach_reset))
    common = dict(
        v_threshold=float(v_threshold),
        v_reset=None if v_reset is None else float(v_reset),
        surrogate_function=make_surrogate(surrogate, alpha),
        detach_reset=bool(detach_reset),
        step_mode="m",
    )
    if kind == "lif":
        return LIFNode(tau=float(tau), decay_input=bool(decay_input), **common)
    if kind == "plif":
        return ParametricLIFNode(init_tau=float(tau), decay_input=bool(decay_input), **common)
    if kind == "if":
        return IFNode(**common)
    raise UserError(f"unknown neuron.kind={kind!r}; choose one of {sorted(SJ_OP_PACKAGES)}")


def _check_leak(kind: str, tau: float, decay_input: bool, v_reset, implementation: str, leak: float) -> None:
    """A :class:`UserError` unless ``neuron.leak`` describes the same neuron as the other settings."""
    if kind != "lif":
        raise UserError(f"neuron.leak is for neuron.kind=lif (u <- leak * u + x), not {kind!r}; "
                        "set neuron.leak=null")
    if decay_input or v_reset is None or float(v_reset) != 0.0:
        raise UserError("neuron.leak (u <- leak * u + x) needs neuron.decay_input=false and neuron.v_reset=0.0 "
                        "(hard reset to 0); set neuron.leak=null for SpikingJelly's LIF with these settings")
    if implementation not in ("auto", "torch"):
        raise UserError(f"neuron.implementation={implementation} is a SpikingJelly kernel, which rounds another "
                        "arithmetic; neuron.leak runs as a torch loop: use neuron.implementation=auto (or torch)")
    if not 0.0 <= leak < 1.0 or math.isnan(leak):
        raise UserError(f"neuron.leak={leak} must be the membrane leak factor in [0, 1) (SpikingSSM uses 0.125)")
    if not math.isclose(tau, 1.0 / (1.0 - leak), rel_tol=1e-9):
        raise UserError(f"neuron.tau={tau:g} and neuron.leak={leak:g} disagree (tau = 1 / (1 - leak) = "
                        f"{1.0 / (1.0 - leak):.17g}): set both, or neuron.leak=null for SpikingJelly's arithmetic")


def module_implementations(model: nn.Module, device: torch.device) -> dict[str, str]:
    """``{class name: implementation}`` of every module of ``model`` that reports one.

    A model family's modules with a choice of kernels expose ``implementation_for(device) -> str`` (and raise
    :class:`UserError` for an explicit choice that cannot run on ``device``); the engine only asks.
    """
    found: dict[str, str] = {}
    for module in model.modules():
        report = getattr(module, "implementation_for", None)
        if callable(report):
            found.setdefault(type(module).__name__, str(report(device)))
    return found


def select_implementation(kind: str, implementation: str, device: torch.device, model: nn.Module | None = None) -> str:
    """Apply ``implementation`` for neurons of ``kind`` on ``device`` and return what will run.

    On CPU only the torch implementation exists. On CUDA the choice is handed to SpikingJelly through its
    environment variable (and its already-imported selector, which read the variable at import time);
    an implementation that cannot run raises :class:`UserError` instead of silently falling back.
    Neurons of a model family (not SpikingJelly's) and other kernels report their own choice through
    :func:`module_implementations` when ``model`` is given: e.g. ``"S4DKernel: triton, SDNNeuron: triton"``.
    """
    if implementation not in IMPLEMENTATIONS:
        raise UserError(f"unknown neuron.implementation={implementation!r}; choose one of {IMPLEMENTATIONS}")
    reported = module_implementations(model, device) if model is not None else {}
    others = ", ".join(f"{name}: {choice}" for name, choice in reported.items())
    if kind not in SJ_OP_PACKAGES or (model is not None and not _has_spikingjelly_nodes(model)):
        return others or "torch (python)"  # neurons of our own (LeakLIFNode reports itself) run as torch ops
    chosen = _select_spikingjelly(kind, implementation, device)
    return f"{chosen}, {others}" if others else chosen


def _has_spikingjelly_nodes(model: nn.Module) -> bool:
    """Whether ``model`` holds a SpikingJelly node that SpikingJelly dispatches (not one reporting its own path)."""
    return any(isinstance(m, sj_neuron.BaseNode) and not callable(getattr(m, "implementation_for", None))
               for m in model.modules())


def _select_spikingjelly(kind: str, implementation: str, device: torch.device) -> str:
    if device.type != "cuda":
        if implementation in ("cuda", "triton"):
            raise UserError(
                f"neuron.implementation={implementation} needs a CUDA device but the run is on {device.type}; "
                "use neuron.implementation=auto (or torch), or trainer=gpu on a machine with a GPU"
            )
        return "torch (cpu)"
    package = SJ_OP_PACKAGES[kind]
    os.environ[f"SJ_{package.rstrip('_').upper()}_CUDA_IMPLEMENTATION"] = implementation
    module_name = f"spikingjelly._ops.{package}"
    ops = sys.modules.get(module_name) or importlib.import_module(module_name)
    selection = ops._selection
    if selection._requested != implementation:  # the selector read the variable before we set it
        selection._requested = implementation
        selection._selections.clear()
        selection._compiled_selections.clear()
    from spikingjelly.activation_based.functional import neuron_implementation

    try:
        chosen = neuron_implementation(kind, device)["implementation"]
    except (RuntimeError, ValueError, ImportError) as error:
        raise UserError(
            f"neuron.implementation={implementation} cannot run on {device}: {error}; use neuron.implementation=auto"
        ) from error
    if implementation != "auto" and chosen != implementation:
        raise UserError(
            f"neuron.implementation={implementation} was asked for but SpikingJelly selected {chosen}; "
            "use neuron.implementation=auto"
        )
    return str(chosen)
