"""The ``sltt`` soma: the LIF scan over time with SLTT's elementwise gradient (no temporal path in backward)."""

from __future__ import annotations

import torch
from spikingjelly.activation_based import base
from spikingjelly.activation_based import surrogate as sj_surrogate

from snn_engine.errors import UserError
from spiking_ssm.kernels import runtime, soma
from spiking_ssm.sdn.packaged import check_tau
from spiking_ssm.somas.params import ParamCache


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
        self._params = ParamCache()
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
