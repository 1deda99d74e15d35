"""Per-device, per-dtype copies of a soma's parameters for its fused kernel, rebuilt when a parameter changes."""

from __future__ import annotations

import torch

from spiking_ssm.kernels import soma


class ParamCache:
    """The fused kernels' parameter vector, built once per device, dtype and version of its sources (a rebuild
    per call would cost a host-to-device copy per layer and step)."""

    def __init__(self):
        self.key, self.value = None, None

    def get(self, like: torch.Tensor, build, sources=()) -> torch.Tensor:
        key = (like.device, soma.compute_dtype(like.dtype), tuple((t.data_ptr(), t._version) for t in sources))
        if key != self.key:
            self.key, self.value = key, build()
        return self.value
