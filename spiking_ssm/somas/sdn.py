"""The ``sdn`` soma: the packaged surrogate dynamic network predicts the decayed membrane from the currents, in
parallel over time (SpikingSSM's dynamics: :mod:`spiking_ssm.somas`)."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from spikingjelly.activation_based import base
from spikingjelly.activation_based import surrogate as sj_surrogate

from snn_engine.errors import UserError
from spiking_ssm.chunked import ChunkedCurrents
from spiking_ssm.kernels import runtime, soma
from spiking_ssm.sdn.network import ReducedSDN, load_reduced
from spiking_ssm.sdn.packaged import WEIGHTS_DIR, check_tau, packaged_weights
from spiking_ssm.somas.params import ParamCache


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
        self._params = ParamCache()
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
