"""The ``lif`` soma (the paper's ``u <- tau u + y`` through SpikingJelly's node machinery, BPTT) and SpikingJelly's
stock LIFNode with SpikingSSM's constants, kept for benchmarks and old checkpoints."""

from __future__ import annotations

from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate as sj_surrogate

from snn_engine.neurons import LeakLIFNode, LIFNode
from spiking_ssm.sdn.packaged import check_tau


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
