"""SpikingSSM's somas, one module each: ``sdn`` (parallel, SDN-predicted membrane), ``lif`` (BPTT), ``sltt`` and
``lif_parallel`` (the exact LIF; its scans in :mod:`spiking_ssm.somas.lif_scan`); :func:`make_ssm_neuron` builds one.

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
in :mod:`~spiking_ssm.somas.sdn` and :mod:`~spiking_ssm.somas.sltt` (``auto`` elsewhere, or ``torch``), which is the reference the kernels are tested against. The fused path
reads the currents in place from any strided time-major view (``accepts_strided_input``), e.g. the layer's
``[B, H, L]`` memory permuted to ``[L, B, H]``, and returns spikes in the same memory layout.
"""


from __future__ import annotations

from pathlib import Path

import torch

from snn_engine.errors import UserError
from spiking_ssm.kernels import runtime
from spiking_ssm.somas.lif import make_lif, make_spikingjelly_lif
from spiking_ssm.somas.sdn import SDNNeuron
from spiking_ssm.somas.sltt import SLTTLIFNeuron

__all__ = ["NEURON_KINDS", "SDNNeuron", "SLTTLIFNeuron", "make_lif", "make_spikingjelly_lif", "make_ssm_neuron"]

NEURON_KINDS = ("sdn", "lif", "sltt", "lif_parallel")


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
