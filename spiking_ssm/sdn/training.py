"""The SDN's training loop: losses, the keep-alive penalty, epochs with a cosine schedule, BatchNorm statistics.

Used by :mod:`spiking_ssm.sdn.pretrain`. Data are dicts of ``[N, L]`` tensors (``"input"`` currents,
``"mem"`` the exact ``tau * u_{t-1}``, ``"spike"``) as made by :mod:`spiking_ssm.sdn.data`.
"""

from __future__ import annotations

import argparse
import copy
import math
import time

import torch
import torch.nn.functional as F

from spiking_ssm.sdn.network import SDN

LOSSES = {"l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}  # smooth_l1: beta 1, the original recipe's


def forward_parts(model: SDN, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:class:`~spiking_ssm.sdn.SDN`'s forward on ``x`` [N, L] that also returns both layers' pre-ReLU
    activations: ``(m_hat [N, L], z1 [N, 8, L], z2 [N, 8, L])``; ``m_hat`` equals ``model(x)``."""
    length = x.shape[-1]
    h = model.encoder(x.unsqueeze(1))
    z1 = model.spatial_norm(model.spatial(F.pad(h, (model.kernel_size, 0)))[..., :length])
    h1 = F.relu(z1)
    z2 = model.feature_norm(model.feature(h1)) + h1
    return model.decoder(F.relu(z2)).squeeze(1), z1, z2


def alive_penalty(z1: torch.Tensor, z2: torch.Tensor, margin: float) -> torch.Tensor:
    """``sum_c relu(margin - max_{n,t} z[n, c, t])`` over both layers' channels (``z`` [N, C, L]): zero while
    every channel fires somewhere in the batch, a gradient that revives a dead (never active) ReLU channel."""
    return sum(F.relu(margin - z.amax(dim=(0, 2))).sum() for z in (z1, z2))


@torch.no_grad()
def spike_agreement(model: torch.nn.Module, x: torch.Tensor, mem: torch.Tensor, spike: torch.Tensor,
                    chunk: int = 512) -> tuple[float, float]:
    """(fraction of timesteps where H(m_hat + x - 1) equals the exact spikes, mean |m_hat - m|) on [N, L]."""
    agree = 0.0
    abs_err = 0.0
    for start in range(0, x.shape[0], chunk):
        xs = x[start:start + chunk]
        m_hat = model(xs)
        agree += ((m_hat + xs - 1.0 >= 0).to(xs.dtype) == spike[start:start + chunk]).sum().item()
        abs_err += (m_hat - mem[start:start + chunk]).abs().sum().item()
    return agree / x.numel(), abs_err / x.numel()


@torch.no_grad()
def val_loss(model: torch.nn.Module, val_data: dict[str, torch.Tensor], loss: str) -> float:
    """Mean validation loss per step (``loss`` a key of :data:`LOSSES`)."""
    n = val_data["input"].shape[0]
    return sum(
        LOSSES[loss](model(val_data["input"][i:i + 512]), val_data["mem"][i:i + 512], reduction="sum").item()
        for i in range(0, n, 512)
    ) / val_data["input"].numel()


@torch.no_grad()
def recalibrate_batchnorm(model: SDN, inputs: torch.Tensor, batch_size: int) -> SDN:
    """Replace the BatchNorm running statistics by their exact average over ``inputs`` [N, L] at fixed weights.

    During training the running statistics are an exponential average over weights that kept changing;
    re-estimating them for the final weights makes the eval-mode (and hence reduced) SDN match the trained one.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average
    model.train()
    for start in range(0, inputs.shape[0], batch_size):
        model(inputs[start:start + batch_size])
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def cosine(total: int, warmup: int = 0):
    """LR multiplier per step: linear warm-up over ``warmup`` steps, then a cosine decay to 0 at ``total``."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return factor


def run_stage(model: SDN, stage: str, epochs: int, optimizer: torch.optim.Optimizer, warmup: int, bn_train: bool,
              train_data: dict, val_data: dict, best: dict, args: argparse.Namespace, seed: int) -> tuple[dict, dict]:
    """``epochs`` passes over ``train_data`` (seeded order, batch ``args.batch_size``, loss ``args.loss`` plus
    ``args.alive_weight *`` :func:`alive_penalty`) with BatchNorm in training (``bn_train``) or eval mode.

    Returns the best (lowest validation loss) ``(summary, state_dict)`` seen, starting from ``best`` (whose
    state is the model's current one); one log line per epoch.
    """
    n = train_data["input"].shape[0]
    steps_per_epoch = math.ceil(n / args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine(steps_per_epoch * epochs, warmup))
    generator = torch.Generator().manual_seed(seed)
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(epochs):
        model.train(bn_train)
        start = time.time()
        order = torch.randperm(n, generator=generator)
        running = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            m_hat, z1, z2 = forward_parts(model, train_data["input"][idx])
            loss = LOSSES[args.loss](m_hat, train_data["mem"][idx])
            if args.alive_weight > 0:
                loss = loss + args.alive_weight * alive_penalty(z1, z2, args.alive_margin)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item()
        model.eval()
        loss_val = val_loss(model, val_data, args.loss)
        agree, mae = spike_agreement(model, val_data["input"], val_data["mem"], val_data["spike"])
        improved = loss_val < best["val_loss"]
        if improved:
            best = {"epoch": f"{stage} {epoch + 1}" if stage else epoch + 1, "val_loss": loss_val,
                    "val_spike_agreement": agree, "val_mem_mae": mae,
                    "bn_recalibrated": best.get("bn_recalibrated", False)}
            best_state = copy.deepcopy(model.state_dict())
        print(f"{stage or 'epoch'} {epoch + 1:3d}/{epochs} train_loss {running / steps_per_epoch:.3e} "
              f"val_loss {loss_val:.3e} val_mae {mae:.2e} val_spike_agreement {100 * agree:.4f}% "
              f"lr {scheduler.get_last_lr()[0]:.2e} {time.time() - start:.1f}s{' *' if improved else ''}", flush=True)
    return best, best_state
