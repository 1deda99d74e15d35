"""The reduced SDNs shipped with the project (``spiking_ssm/weights/``) and the leak factor they are made for.

Each packaged file ``sdn_tau<tau>.pt`` holds the 153 numbers of a :class:`~spiking_ssm.sdn.network.ReducedSDN` for
one membrane leak ``tau``; the ``.json`` beside it records its sha256 and the command that made it. Both the SDN
soma (:mod:`spiking_ssm.somas`) and the exact parallel LIF (:mod:`spiking_ssm.somas.lif_parallel`, whose first guess
the SDN gives) look weights up here, so this module sits below both of them.
"""

from __future__ import annotations

import math
from pathlib import Path

from snn_engine.errors import UserError

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"


def packaged_weights(tau: float) -> Path:
    """Where the packaged reduced SDN for ``tau`` lives (it may not exist for that tau)."""
    return WEIGHTS_DIR / f"sdn_tau{float(tau):g}.pt"


def check_tau(tau: float) -> float:
    """``tau`` as a float, or a :class:`UserError` unless it is a leak factor in ``[0, 1)``."""
    tau = float(tau)
    if not 0.0 <= tau < 1.0 or math.isnan(tau):
        raise UserError(f"neuron.tau={tau} must be the membrane leak factor in [0, 1) (SpikingSSM uses 0.125)")
    return tau
