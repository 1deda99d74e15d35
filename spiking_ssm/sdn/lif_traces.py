"""Exact LIF traces: data for training the SDN and the reference it is measured against.

The neuron (hard reset to 0, threshold ``v_threshold``, leak ``tau`` on the membrane only)::

    u <- tau * u          # leak
    m_t = u               # recorded: the decayed after-reset membrane, the SDN's target
    u <- u + x_t          # integrate
    s_t = [u >= v_threshold]
    u <- u * (1 - s_t)    # hard reset to 0

with ``u = 0`` before the first step. Everything is vectorised over the batch; only time is looped.
"""

from __future__ import annotations

import torch

DEFAULT_TAU = 0.125


def lif_reference(
    x: torch.Tensor, tau: float = DEFAULT_TAU, v_threshold: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the exact LIF over the last axis of ``x`` (``[..., L]``); return ``(m, spikes)``, both ``[..., L]``.

    ``m[..., t] = tau * u_{t-1}`` (after the previous reset) and ``spikes`` is in {0, 1}, same dtype as ``x``.
    """
    x = x.detach()
    u = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    m = torch.empty_like(x)
    s = torch.empty_like(x)
    for t in range(x.shape[-1]):
        u = u * tau
        m[..., t] = u
        u = u + x[..., t]
        spike = (u >= v_threshold).to(x.dtype)
        s[..., t] = spike
        u = u * (1.0 - spike)
    return m, s


def lif_time_major(x: torch.Tensor, tau: float = DEFAULT_TAU, v_threshold: float = 1.0) -> torch.Tensor:
    """Spikes of the exact LIF for time-major currents ``[L, B, ...]`` (the neurons' convention)."""
    _, s = lif_reference(x.movedim(0, -1), tau=tau, v_threshold=v_threshold)
    return s.movedim(-1, 0)


def generate_traces(
    n: int,
    length: int = 1024,
    tau: float = DEFAULT_TAU,
    seed: int = 0,
    mean: float = 0.0,
    std: float = 1.0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, torch.Tensor]:
    """``n`` seeded sequences of N(mean, std^2) currents and their exact LIF traces.

    Returns ``{"input", "mem", "spike"}``, each ``[n, length]``. The simulation runs in float64 and is cast
    to ``dtype`` at the end, so the recorded spikes are those of the float64 neuron on the stored inputs
    (the inputs are rounded to ``dtype`` before simulating).
    """
    generator = torch.Generator().manual_seed(int(seed))
    x = torch.randn(n, length, generator=generator, dtype=torch.float64) * std + mean
    x = x.to(dtype).to(torch.float64)
    m, s = lif_reference(x, tau=tau)
    return {"input": x.to(dtype), "mem": m.to(dtype), "spike": s.to(dtype)}
