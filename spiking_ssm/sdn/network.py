"""The Surrogate Dynamic Network (SDN) of SpikingSSMs: a tiny causal CNN predicting the LIF membrane.

Given input currents ``y`` (one neuron, ``[N, L]``), the SDN estimates ``m_t = tau * u_{t-1}``, the decayed
membrane after the previous step's reset, from ``y[t-8 .. t-1]`` only (strictly causal, receptive field 8).
Spikes then follow in parallel: ``s_t = H(m_t + y_t - 1)`` with ``H(0) = 1``.

Two forms:

* :class:`SDN`, the training form: bias-free 1x1 encoder 1->8; depthwise causal Conv1d(k=8) + BatchNorm,
  ReLU; 1x1 Conv1d + BatchNorm + identity residual, ReLU; 1x1 decoder 8->1.
* :class:`ReducedSDN`, the inference form (153 numbers, stored as buffers): Conv1d(1->8, k=8) causal, ReLU;
  1x1 Conv1d(8->8) + residual, ReLU; 1x1 Conv1d(8->1). :func:`reduce_sdn` folds the encoder and both
  BatchNorms of an :class:`SDN` into it (exact in eval mode, up to rounding).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from snn_engine.errors import UserError
from snn_engine.protection.torch_files import load_plain

WIDTH = 8
KERNEL = 8
REDUCED_KEYS = ("conv1_weight", "conv1_bias", "conv2_weight", "conv2_bias", "conv3_weight", "conv3_bias")


def _as_batch_1_l(y: torch.Tensor) -> torch.Tensor:
    if y.dim() == 2:
        return y.unsqueeze(1)
    if y.dim() == 3 and y.shape[1] == 1:
        return y
    raise ValueError(f"SDN input must be [N, L] or [N, 1, L], got shape {tuple(y.shape)}")


class SDN(nn.Module):
    """Training form of the SDN. ``forward([N, L] or [N, 1, L]) -> m_hat [N, L]``."""

    def __init__(self, width: int = WIDTH, kernel_size: int = KERNEL) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.encoder = nn.Conv1d(1, width, 1, bias=False)
        # padding = k on the left only: output t sees inputs t-k .. t-1 once the tail is cut off
        self.spatial = nn.Conv1d(width, width, kernel_size, groups=width)
        self.spatial_norm = nn.BatchNorm1d(width)
        self.feature = nn.Conv1d(width, width, 1)
        self.feature_norm = nn.BatchNorm1d(width)
        self.decoder = nn.Conv1d(width, 1, 1)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x = _as_batch_1_l(y)
        length = x.shape[-1]
        h = self.encoder(x)
        h = self.spatial(F.pad(h, (self.kernel_size, 0)))[..., :length]
        h = F.relu(self.spatial_norm(h))
        g = F.relu(self.feature_norm(self.feature(h)) + h)
        return self.decoder(g).squeeze(1)


class ReducedSDN(nn.Module):
    """Inference form of the SDN: 153 numbers held as buffers (never parameters, so optimisers and DDP
    ignore them). ``forward([N, L] or [N, 1, L]) -> m_hat [N, L]``.

    The state dict also carries ``tau`` (0-d float64), the LIF leak the weights were trained for.
    """

    def __init__(self, width: int = WIDTH, kernel_size: int = KERNEL, tau: float = float("nan")) -> None:
        super().__init__()
        self.kernel_size = kernel_size
        self.register_buffer("conv1_weight", torch.zeros(width, 1, kernel_size))
        self.register_buffer("conv1_bias", torch.zeros(width))
        self.register_buffer("conv2_weight", torch.zeros(width, width, 1))
        self.register_buffer("conv2_bias", torch.zeros(width))
        self.register_buffer("conv3_weight", torch.zeros(1, width, 1))
        self.register_buffer("conv3_bias", torch.zeros(1))
        self.register_buffer("tau", torch.tensor(float(tau), dtype=torch.float64))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        x = _as_batch_1_l(y)
        length = x.shape[-1]
        dtype = x.dtype
        h = F.conv1d(F.pad(x, (self.kernel_size, 0)), self.conv1_weight.to(dtype), self.conv1_bias.to(dtype))
        h = F.relu(h[..., :length])
        g = F.relu(F.conv1d(h, self.conv2_weight.to(dtype), self.conv2_bias.to(dtype)) + h)
        return F.conv1d(g, self.conv3_weight.to(dtype), self.conv3_bias.to(dtype)).squeeze(1)

    def num_weights(self) -> int:
        return sum(getattr(self, key).numel() for key in REDUCED_KEYS)


def reduce_sdn(training_sdn: SDN, tau: float = float("nan")) -> ReducedSDN:
    """Fold a trained :class:`SDN` into a :class:`ReducedSDN` (computed in float64, returned in float64).

    Encoder into the depthwise conv (a full Conv1d 1->8: ``w[c, 0, j] = enc[c] * dw[c, 0, j]``), each
    BatchNorm into the conv before it (running statistics, i.e. eval-mode semantics); decoder kept.
    """
    model = copy.deepcopy(training_sdn).double().eval()
    width = model.encoder.out_channels
    kernel = model.spatial.kernel_size[0]
    enc = model.encoder.weight.reshape(width, 1, 1)  # [8, 1, 1]
    first = nn.Conv1d(1, width, kernel).double()
    with torch.no_grad():
        first.weight.copy_(model.spatial.weight * enc)  # [8, 1, k] * [8, 1, 1]
        first.bias.copy_(model.spatial.bias)
    first = torch.nn.utils.fuse_conv_bn_eval(first.eval(), model.spatial_norm)
    second = torch.nn.utils.fuse_conv_bn_eval(model.feature, model.feature_norm)
    reduced = ReducedSDN(width, kernel, tau=tau).double()
    with torch.no_grad():
        reduced.conv1_weight.copy_(first.weight)
        reduced.conv1_bias.copy_(first.bias)
        reduced.conv2_weight.copy_(second.weight)
        reduced.conv2_bias.copy_(second.bias)
        reduced.conv3_weight.copy_(model.decoder.weight)
        reduced.conv3_bias.copy_(model.decoder.bias)
    return reduced


def save_reduced(reduced: ReducedSDN, path: str | Path) -> None:
    """Save the reduced SDN as a plain dict of tensors (loadable with ``torch.load(weights_only=True)``)."""
    state = {key: value.detach().clone().cpu() for key, value in reduced.state_dict().items()}
    torch.save(state, str(path))


def load_reduced(path: str | Path) -> ReducedSDN:
    """Load a reduced SDN written by :func:`save_reduced`; raises :class:`UserError` on a bad file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(
            f"SDN weights file {path} does not exist; pass an existing file as neuron.weights=PATH "
            "or make one with `python -m spiking_ssm.sdn.pretrain`"
        )
    state = load_plain(path, "SDN weights", "regenerate it with `python -m spiking_ssm.sdn.pretrain`")
    missing = [key for key in (*REDUCED_KEYS, "tau") if not isinstance(state, dict) or key not in state]
    if missing:
        raise UserError(
            f"SDN weights {path} lack {missing}; it is not a reduced SDN, regenerate it with "
            "`python -m spiking_ssm.sdn.pretrain`"
        )
    width, _, kernel = state["conv1_weight"].shape
    reduced = ReducedSDN(width, kernel).to(state["conv1_weight"].dtype)
    reduced.load_state_dict({key: state[key] for key in (*REDUCED_KEYS, "tau")})
    return reduced
