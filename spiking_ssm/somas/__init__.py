"""Spiking neurons of SpikingSSM: ``sdn`` (parallel, SDN-predicted membrane), ``lif`` (BPTT) and ``sltt``.

All map time-major input currents ``[L, B, ...]`` to binary spikes ``[L, B, ...]`` (SpikingJelly's multi-step
convention) and all share SpikingSSM's dynamics: leak ``tau`` on the membrane only, threshold 1, hard reset
to 0, i.e. ``u'_t = tau * u_{t-1} + y_t``, ``s_t = H(u'_t - 1)``, ``u_t = u'_t * (1 - s_t)``, ``u_0 = 0``,
and the triangle surrogate ``dH/dz ~= max(0, 1 - |z|)`` (SpikingJelly's ``PiecewiseQuadratic(alpha=1)``).
``lif``, ``sltt``, ``lif_parallel`` and streaming compute ``u'_t`` in that float order (a multiply, then an add),
as the paper's code does, so their spikes are identical in float32 and float64 (SpikingJelly's own LIF rounds
otherwise, and differently on CPU and in its Triton kernel: :func:`make_spikingjelly_lif`).

A learnable threshold ``theta`` is applied by the *caller* (divide the currents by ``theta``; the neurons'
threshold stays 1): with zero initial and reset potential, ``f(y; theta) = f(y / theta; 1)``.

``sdn`` and ``sltt`` have two implementations, chosen per call by ``implementation`` (``neuron.implementation``):
the fused Triton kernels of :mod:`spiking_ssm.kernels.soma` (``auto`` on CUDA, or ``triton``) and the torch code
here (``auto`` elsewhere, or ``torch``), which is the reference the kernels are tested against. The fused path
reads the currents in place from any strided time-major view (``accepts_strided_input``), e.g. the layer's
``[B, H, L]`` memory permuted to ``[L, B, H]``, and returns spikes in the same memory layout.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from spikingjelly.activation_based import base
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate as sj_surrogate

from snn_engine.errors import UserError
from snn_engine.neurons import LeakLIFNode, LIFNode
from spiking_ssm.chunked import ChunkedCurrents
from spiking_ssm.kernels import runtime, soma
from spiking_ssm.sdn.network import ReducedSDN, load_reduced
from spiking_ssm.sdn.packaged import WEIGHTS_DIR, check_tau, packaged_weights

NEURON_KINDS = ("sdn", "lif", "sltt", "lif_parallel")


class SDNNeuron(base.MemoryModule):
    """LIF spikes computed in parallel from an SDN-predicted membrane (SpikingSSM's ``sdn`` neuron).

    Forward: ``m = SDN(y.detach())`` under ``no_grad`` (per neuron, along time), ``s = H(m + y - 1)``.
    Backward: ``ds/dy = alpha * max(0, 1 - alpha * |m + y - 1|)`` elementwise; nothing flows through ``m``.
    The 153 SDN numbers are buffers (frozen; invisible to optimisers and DDP). Stateless: ``reset()`` is a
    no-op, kept so that ``spikingjelly.activation_based.functional.reset_net`` works.
    """

    emits_spikes = True  # the engine's firing-rate meter monitors it
    accepts_strided_input = True  # the fused kernel reads any time-major view in place

    def __init__(self, tau: float = 0.125, surrogate_alpha: float = 1.0, weights: str | Path | None = None,
                 implementation: str = "auto") -> None:
        super().__init__()
        self.step_mode = "m"
        self.tau = check_tau(tau)
        self.implementation = runtime.check_implementation(implementation)
        self.last_implementation: str | None = None  # what ran the latest call: "triton" or "torch"
        self._params = _ParamCache()
        path = Path(weights) if weights is not None else packaged_weights(self.tau)
        if weights is None and not path.is_file():
            raise UserError(
                f"no packaged SDN for neuron.tau={self.tau:g} (only {sorted(p.name for p in WEIGHTS_DIR.glob('*.pt'))}); "
                f"train one with `python -m spiking_ssm.sdn.pretrain --tau {self.tau:g} --out PATH.pt` "
                "and pass neuron.weights=PATH.pt"
            )
        sdn = load_reduced(path)
        trained_tau = float(sdn.tau)
        if not math.isclose(trained_tau, self.tau, rel_tol=1e-6, abs_tol=1e-9):
            raise UserError(
                f"SDN weights {path} were trained for tau={trained_tau:g}, not neuron.tau={self.tau:g}; "
                f"train one with `python -m spiking_ssm.sdn.pretrain --tau {self.tau:g} --out PATH.pt` "
                "and pass neuron.weights=PATH.pt (or set neuron.tau to match)"
            )
        self.sdn: ReducedSDN = sdn.float()
        self.sdn.requires_grad_(False)
        self.weights_path = str(path)
        self.surrogate_function = sj_surrogate.PiecewiseQuadratic(alpha=float(surrogate_alpha))

    def _unsupported(self) -> str | None:
        shape = tuple(self.sdn.conv1_weight.shape)
        if shape != (soma.SDN_WIDTH, 1, soma.SDN_KERNEL):
            return f"the fused SDN is built for width 8 and kernel 8, these weights are {shape[0]} x {shape[2]}"
        return None

    def implementation_for(self, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
        """``"triton"`` or ``"torch"`` on ``device`` (an explicit choice that cannot run raises UserError)."""
        unsupported = self._unsupported() or runtime.dtype_unsupported(dtype)
        return runtime.choose(self.implementation, "sdn soma", device, unsupported)

    @torch.no_grad()
    def membrane(self, y: torch.Tensor) -> torch.Tensor:
        """The SDN's estimate of ``tau * u_{t-1}`` for time-major currents ``[L, B, ...]`` (no gradient)."""
        length = y.shape[0]
        flat = y.detach().reshape(length, -1).transpose(0, 1)  # [N, L]
        m = self.sdn(flat)  # [N, L], computed in y's dtype
        return m.transpose(0, 1).reshape(y.shape)

    def accepts_chunked_currents(self, u: torch.Tensor) -> bool:
        """True when this soma computes its currents itself from ``u`` [B, H, L] and the chunked operators, in one
        fused Triton walk that never stores them (:mod:`spiking_ssm.kernels.chunked_soma`): float32/float64 input
        where the fused SDN kernel runs."""
        return (u.dtype in (torch.float32, torch.float64) and u.shape[-1] > 0
                and self.implementation_for(u.device, u.dtype) == "triton")

    def _chunked_forward(self, currents: ChunkedCurrents) -> torch.Tensor:
        """Spikes ``[L, B, H]`` (a view of ``[B, H, L]`` memory) of the currents that ``currents`` describes."""
        from spiking_ssm.kernels.chunked_soma import chunked_sdn_spikes

        u = currents.u
        self.last_implementation = "triton (fused with the chunked current path)"
        params = self._params.get(u, lambda: soma.sdn_params(self.sdn, self.surrogate_function.alpha, u.device,
                                                              u.dtype), self.sdn.buffers())
        return chunked_sdn_spikes(u, list(currents.ops), params, precision=currents.precision).permute(2, 0, 1)

    def multi_step_forward(self, y: torch.Tensor) -> torch.Tensor:
        if isinstance(y, ChunkedCurrents):
            return self._chunked_forward(y)
        if y.dim() < 1 or y.shape[0] == 0:
            raise UserError(f"the sdn neuron needs time-major input [L, B, ...] with L >= 1, got {tuple(y.shape)}")
        self.last_implementation = self.implementation_for(y.device, y.dtype)
        if self.last_implementation == "triton":
            params = self._params.get(y, lambda: soma.sdn_params(self.sdn, self.surrogate_function.alpha,
                                                                  y.device, y.dtype), self.sdn.buffers())
            return soma.sdn_spikes(y.movedim(0, -1), params).movedim(-1, 0)
        m = self.membrane(y)
        return self.surrogate_function(m + y - 1.0)

    def single_step_forward(self, y: torch.Tensor) -> torch.Tensor:
        raise UserError(
            "the sdn neuron works on whole sequences only (step_mode='m', input [L, B, ...]); "
            "use neuron.kind=lif or sltt for step-by-step simulation"
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, weights={Path(self.weights_path).name}, step_mode={self.step_mode}"


class SLTTLIFNeuron(base.MemoryModule):
    """Multi-step LIF with SpikingSSM's dynamics whose membrane state is detached every step (SLTT).

    Forward equals the BPTT LIF; gradients only flow from ``s_t`` to ``y_t`` through
    ``g(u'_t - 1)`` (no temporal path through ``u``). Stateless across calls (each call starts at ``u=0``).
    SpikingJelly's ``SLTTLIFNode`` is single-step only, hence this module.
    """

    emits_spikes = True  # the engine's firing-rate meter monitors it
    accepts_strided_input = True  # the fused kernel reads any time-major view in place

    def __init__(self, tau: float = 0.125, surrogate_alpha: float = 1.0, v_threshold: float = 1.0,
                 store_v_seq: bool = False, implementation: str = "auto") -> None:
        super().__init__()
        self.step_mode = "m"
        self.tau = check_tau(tau)
        self.implementation = runtime.check_implementation(implementation)
        self.last_implementation: str | None = None  # what ran the latest call: "triton" or "torch"
        self._params = _ParamCache()
        self.v_threshold = float(v_threshold)
        self.surrogate_function = sj_surrogate.PiecewiseQuadratic(alpha=float(surrogate_alpha))
        self.store_v_seq = bool(store_v_seq)  # as SpikingJelly: keep the post-reset membrane [L, B, ...] in v_seq
        self.v_seq: torch.Tensor | None = None

    def implementation_for(self, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
        """``"triton"`` or ``"torch"`` on ``device`` (an explicit choice that cannot run raises UserError)."""
        unsupported = runtime.dtype_unsupported(dtype)
        return runtime.choose(self.implementation, "sltt soma", device, unsupported)

    def multi_step_forward(self, y: torch.Tensor) -> torch.Tensor:
        self.last_implementation = self.implementation_for(y.device, y.dtype)
        if self.last_implementation == "triton":
            params = self._params.get(y, lambda: soma.sltt_params(self.tau, self.v_threshold,
                                                                   self.surrogate_function.alpha, y.device, y.dtype))
            spikes, membrane = soma.sltt_spikes(y.movedim(0, -1), params, store_membrane=self.store_v_seq)
            self.v_seq = membrane.movedim(-1, 0) if self.store_v_seq else None
            return spikes.movedim(-1, 0)
        return self._torch_forward(y)

    def _torch_forward(self, y: torch.Tensor) -> torch.Tensor:
        u = torch.zeros_like(y[0])
        spikes, membranes = [], []
        for t in range(y.shape[0]):
            h = self.tau * u.detach() + y[t]
            s = self.surrogate_function(h - self.v_threshold)
            u = h * (1.0 - s.detach())
            spikes.append(s)
            if self.store_v_seq:
                membranes.append(u.detach())
        self.v_seq = torch.stack(membranes) if self.store_v_seq else None
        return torch.stack(spikes)

    def single_step_forward(self, y: torch.Tensor) -> torch.Tensor:
        raise UserError(
            "the sltt neuron here works on whole sequences only (step_mode='m', input [L, B, ...]); "
            "pass time-major input with all L steps at once"
        )

    def extra_repr(self) -> str:
        return f"tau={self.tau:g}, v_threshold={self.v_threshold}, step_mode={self.step_mode}"


class _ParamCache:
    """The fused kernels' parameter vector, built once per device, dtype and version of its sources (a rebuild
    per call would cost a host-to-device copy per layer and step)."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, like: torch.Tensor, build, sources=()) -> torch.Tensor:
        key = (like.device, soma.compute_dtype(like.dtype), tuple((t.data_ptr(), t._version) for t in sources))
        if key != self.key:
            self.key, self.value = key, build()
        return self.value


def make_lif(tau: float = 0.125, surrogate_alpha: float = 1.0) -> LeakLIFNode:
    """SpikingSSM's ``lif`` soma: ``u <- tau * u + y`` in the paper's order (a multiply, then an add), threshold 1,
    hard reset to 0, detached; BPTT through SpikingJelly's node machinery (:class:`snn_engine.neurons.LeakLIFNode`,
    a torch loop on every device; float32 membrane under autocast). The same arithmetic as ``lif_parallel``,
    ``sltt`` and streaming, so their spikes are identical (``tests/test_lif_arithmetic.py``)."""
    return LeakLIFNode(check_tau(tau), v_threshold=1.0, detach_reset=True,
                       surrogate_function=sj_surrogate.PiecewiseQuadratic(alpha=float(surrogate_alpha)))


def make_spikingjelly_lif(tau: float = 0.125, surrogate_alpha: float = 1.0) -> sj_neuron.LIFNode:
    """SpikingJelly's stock multi-step LIF with SpikingSSM's constants (its ``tau`` is ``1 / (1 - tau)``): its own
    arithmetic ``v - v / tau_sj + y`` (CPU) or ``v + r (0 - v) + y`` with ``r = 1 / tau_sj`` (its Triton kernel),
    which rounds otherwise than the paper's ``tau * v + y``; the ``lif`` soma before issue 24, kept for benchmarks
    and comparisons (``neuron=lif neuron.leak=null`` in a config)."""
    tau = check_tau(tau)
    return LIFNode(
        tau=1.0 / (1.0 - tau),
        decay_input=False,
        v_threshold=1.0,
        v_reset=0.0,
        detach_reset=True,
        surrogate_function=sj_surrogate.PiecewiseQuadratic(alpha=float(surrogate_alpha)),
        step_mode="m",
    )


def make_ssm_neuron(
    kind: str = "sdn",
    tau: float = 0.125,
    weights: str | Path | None = None,
    surrogate_alpha: float = 1.0,
    implementation: str = "auto",
    **lif_parallel_options,
) -> torch.nn.Module:
    """A SpikingSSM neuron: ``sdn`` (parallel, needs SDN weights for ``tau``), ``lif`` (BPTT), ``sltt`` or
    ``lif_parallel`` (exact LIF by parallel fixed-point iteration, :mod:`spiking_ssm.somas.lif_parallel`; its own options
    ``guess``, ``max_iters``, ``finish_sequential``, ``gradient`` go in ``lif_parallel_options``).

    ``lif`` (:func:`make_lif`) is stateful like every SpikingJelly neuron: call ``functional.reset_net`` between
    batches; it runs as a torch loop on every device (``implementation`` must be ``auto`` or ``torch``).
    """
    runtime.check_implementation(implementation)
    if kind == "lif_parallel":
        from spiking_ssm.somas.lif_parallel import ParallelLIFNeuron

        return ParallelLIFNeuron(tau=tau, surrogate_alpha=surrogate_alpha, weights=weights,
                                 implementation=implementation, **lif_parallel_options)
    if lif_parallel_options:
        raise UserError(f"neuron.{sorted(lif_parallel_options)[0]} is only used by neuron.kind=lif_parallel, not "
                        f"{kind!r}; remove it")
    if kind == "sdn":
        return SDNNeuron(tau=tau, surrogate_alpha=surrogate_alpha, weights=weights, implementation=implementation)
    if weights is not None:
        raise UserError(f"neuron.weights is only used by neuron.kind=sdn, not {kind!r}; remove neuron.weights")
    if kind == "lif":
        if implementation not in ("auto", "torch"):
            raise UserError(f"neuron.implementation={implementation}: the lif soma runs as a torch loop on every "
                            "device (the paper's arithmetic); use neuron.implementation=auto or torch")
        return make_lif(tau=tau, surrogate_alpha=surrogate_alpha)
    if kind == "sltt":
        return SLTTLIFNeuron(tau=tau, surrogate_alpha=surrogate_alpha, implementation=implementation)
    raise UserError(f"unknown neuron.kind={kind!r}; choose one of {list(NEURON_KINDS)}")
