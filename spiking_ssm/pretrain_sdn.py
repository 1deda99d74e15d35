"""Train the SDN on exact LIF traces, reduce it and write the packaged weights.

    python -m spiking_ssm.pretrain_sdn [--tau 0.125] [--train-seqs N] [--epochs E] [--out PATH.pt]

Stage 1 is SpikingSSM's ``train.py`` recipe, run on CPU: N(0, 1) currents, exact LIF traces (hard reset,
threshold 1), SmoothL1 loss on the membrane term ``m = tau * u_{t-1}``, AdamW (lr 0.01, weight decay 0.01),
cosine decay of the learning rate over all epochs (stepped per batch), batch 64, the checkpoint with the
lowest validation loss is kept; its BatchNorm statistics are then re-estimated on the training set (kept only
if the validation loss improves). Stage 2 (``--finetune-epochs``, default 40) continues training with
BatchNorm frozen in eval mode, i.e. on exactly the function the reduction folds, at ``--finetune-lr``
(AdamW, no weight decay, cosine to 0), again keeping the best epoch by validation loss. The short CPU budget
(about 25k optimiser steps instead of the original 70k) only reaches the published accuracy with stage 2.

The model is then reduced (:func:`spiking_ssm.sdn.reduce_sdn`), the reduction is checked against the training
form in float64 (max abs diff <= 1e-10), its spike agreement with the exact LIF is measured on fresh inputs
(seed 12345, not used for training or validation), and ``<out>.pt`` (a plain dict of tensors, float64,
loadable with ``torch.load(weights_only=True)``) plus ``<out>.json`` (sha256, command, tau, agreement, date)
are written. Default ``--out``: ``spiking_ssm/weights/sdn_tau<tau>.pt``, the file the ``sdn`` neuron loads.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
import hashlib
import json
import math
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from spiking_ssm.lif_traces import generate_traces
from spiking_ssm.sdn import SDN, ReducedSDN, load_reduced, reduce_sdn, save_reduced

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 12345


def default_weights_path(tau: float) -> Path:
    return WEIGHTS_DIR / f"sdn_tau{tau:g}.pt"


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@torch.no_grad()
def spike_agreement(model: torch.nn.Module, x: torch.Tensor, mem: torch.Tensor, spike: torch.Tensor,
                    chunk: int = 512) -> tuple[float, float]:
    """(fraction of timesteps where H(m_hat + x - 1) equals the exact spikes, mean |m_hat - m|)."""
    agree = 0.0
    abs_err = 0.0
    for start in range(0, x.shape[0], chunk):
        xs = x[start:start + chunk]
        m_hat = model(xs)
        agree += ((m_hat + xs - 1.0 >= 0).to(xs.dtype) == spike[start:start + chunk]).sum().item()
        abs_err += (m_hat - mem[start:start + chunk]).abs().sum().item()
    return agree / x.numel(), abs_err / x.numel()


@torch.no_grad()
def measure_fresh(reduced: ReducedSDN, tau: float, n: int, length: int, seed: int,
                  dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Agreement / MAE / firing rates of the reduced SDN against the exact LIF on fresh N(0, 1) inputs."""
    data = generate_traces(n, length, tau=tau, seed=seed, dtype=torch.float64)
    x = data["input"].to(dtype)
    model = copy.deepcopy(reduced).to(dtype)
    agree, mae = spike_agreement(model, x, data["mem"].to(dtype), data["spike"].to(dtype))
    m_hat = model(x)
    return {
        "spike_agreement": agree,
        "mem_mae": mae,
        "mem_max_abs_error": (m_hat - data["mem"].to(dtype)).abs().max().item(),
        "rate_sdn": (m_hat + x - 1.0 >= 0).to(dtype).mean().item(),
        "rate_lif": data["spike"].mean().item(),
    }


def train(args: argparse.Namespace) -> tuple[SDN, dict]:
    torch.manual_seed(args.seed)
    t0 = time.time()
    train_data = generate_traces(args.train_seqs, args.length, tau=args.tau, seed=TRAIN_SEED + 1000 * args.seed)
    val_data = generate_traces(args.val_seqs, args.length, tau=args.tau, seed=VAL_SEED + 1000 * args.seed)
    print(f"data: {args.train_seqs} train / {args.val_seqs} val sequences of length {args.length}, "
          f"tau={args.tau}, train firing rate {train_data['spike'].mean():.4f} ({time.time() - t0:.1f}s)",
          flush=True)
    model = SDN()
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps_per_epoch = math.ceil(args.train_seqs / args.batch_size)
    total = steps_per_epoch * args.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    generator = torch.Generator().manual_seed(args.seed)
    best = {"val_loss": float("inf")}
    best_state = copy.deepcopy(model.state_dict())
    for epoch in range(args.epochs):
        model.train()
        start = time.time()
        order = torch.randperm(args.train_seqs, generator=generator)
        running = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            x, mem = train_data["input"][idx], train_data["mem"][idx]
            loss = F.smooth_l1_loss(model(x), mem)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item()
        model.eval()
        val_loss = _val_loss(model, val_data)
        agree, mae = spike_agreement(model, val_data["input"], val_data["mem"], val_data["spike"])
        improved = val_loss < best["val_loss"]
        if improved:
            best = {"epoch": epoch + 1, "val_loss": val_loss, "val_spike_agreement": agree, "val_mem_mae": mae}
            best_state = copy.deepcopy(model.state_dict())
        print(f"epoch {epoch + 1:3d}/{args.epochs} train_loss {running / steps_per_epoch:.3e} "
              f"val_loss {val_loss:.3e} val_mae {mae:.2e} val_spike_agreement {100 * agree:.4f}% "
              f"lr {scheduler.get_last_lr()[0]:.2e} {time.time() - start:.1f}s{' *' if improved else ''}", flush=True)
    model.load_state_dict(best_state)
    model.eval()
    if args.recalibrate_bn:
        val_before = _val_loss(model, val_data)
        recalibrated = recalibrate_batchnorm(copy.deepcopy(model), train_data["input"], args.batch_size)
        val_after = _val_loss(recalibrated, val_data)
        agree, mae = spike_agreement(recalibrated, val_data["input"], val_data["mem"], val_data["spike"])
        print(f"BatchNorm recalibration on the training set: val_loss {val_before:.3e} -> {val_after:.3e}, "
              f"val_mae {mae:.2e}, val_spike_agreement {100 * agree:.4f}%", flush=True)
        if val_after < val_before:
            model = recalibrated
            best.update(val_loss=val_after, val_spike_agreement=agree, val_mem_mae=mae, bn_recalibrated=True)
    if args.finetune_epochs > 0:
        model, best = finetune_frozen_bn(model, best, train_data, val_data, args)
    return model, best


def finetune_frozen_bn(model: SDN, best: dict, train_data: dict, val_data: dict,
                       args: argparse.Namespace) -> tuple[SDN, dict]:
    """Second stage: train with BatchNorm in eval mode (a fixed affine map, exactly what the reduction folds),
    so the optimiser sees the deterministic inference function instead of batch-statistics noise.
    AdamW at ``--finetune-lr`` with a cosine decay to 0; the best epoch by validation loss is kept."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.finetune_lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(args.train_seqs / args.batch_size)
    total = steps_per_epoch * args.finetune_epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / total)))
    generator = torch.Generator().manual_seed(args.seed + 1)
    best_state = copy.deepcopy(model.state_dict())
    model.eval()
    for epoch in range(args.finetune_epochs):
        start = time.time()
        order = torch.randperm(args.train_seqs, generator=generator)
        running = 0.0
        for step in range(steps_per_epoch):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            loss = F.smooth_l1_loss(model(train_data["input"][idx]), train_data["mem"][idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item()
        val_loss = _val_loss(model, val_data)
        agree, mae = spike_agreement(model, val_data["input"], val_data["mem"], val_data["spike"])
        improved = val_loss < best["val_loss"]
        if improved:
            best = {"epoch": f"finetune {epoch + 1}", "val_loss": val_loss, "val_spike_agreement": agree,
                    "val_mem_mae": mae, "bn_recalibrated": best.get("bn_recalibrated", False)}
            best_state = copy.deepcopy(model.state_dict())
        print(f"finetune {epoch + 1:3d}/{args.finetune_epochs} train_loss {running / steps_per_epoch:.3e} "
              f"val_loss {val_loss:.3e} val_mae {mae:.2e} val_spike_agreement {100 * agree:.4f}% "
              f"lr {scheduler.get_last_lr()[0]:.2e} {time.time() - start:.1f}s{' *' if improved else ''}", flush=True)
    model.load_state_dict(best_state)
    return model.eval(), best


def _val_loss(model: torch.nn.Module, val_data: dict[str, torch.Tensor]) -> float:
    with torch.no_grad():
        n = val_data["input"].shape[0]
        return sum(
            F.smooth_l1_loss(model(val_data["input"][i:i + 512]), val_data["mem"][i:i + 512], reduction="sum").item()
            for i in range(0, n, 512)
        ) / val_data["input"].numel()


@torch.no_grad()
def recalibrate_batchnorm(model: SDN, inputs: torch.Tensor, batch_size: int) -> SDN:
    """Replace the BatchNorm running statistics by their exact average over ``inputs`` at fixed weights.

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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m spiking_ssm.pretrain_sdn", description=__doc__.split("\n")[0])
    parser.add_argument("--tau", type=float, default=0.125, help="LIF leak (u <- tau*u + y)")
    parser.add_argument("--train-seqs", type=int, default=20000)
    parser.add_argument("--val-seqs", type=int, default=1000)
    parser.add_argument("--test-seqs", type=int, default=2000, help="fresh sequences for the final agreement")
    parser.add_argument("--length", type=int, default=1024, help="sequence length L of the training traces")
    parser.add_argument("--epochs", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--weight-decay", type=float, default=0.01)
    parser.add_argument("--no-recalibrate-bn", dest="recalibrate_bn", action="store_false",
                        help="skip re-estimating the BatchNorm statistics of the best checkpoint")
    parser.add_argument("--finetune-epochs", type=int, default=40,
                        help="extra epochs with BatchNorm frozen (eval mode), after the main run")
    parser.add_argument("--finetune-lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None, help="output .pt (default spiking_ssm/weights/sdn_tau<tau>.pt)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or default_weights_path(args.tau)
    wall = time.time()
    model, best = train(args)
    print(f"best checkpoint: epoch {best['epoch']} val_loss {best['val_loss']:.3e}", flush=True)

    reduced = reduce_sdn(model, tau=args.tau)
    probe = torch.randn(64, 1, 1024, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        diff = (copy.deepcopy(model).double().eval()(probe) - reduced(probe)).abs().max().item()
    print(f"reduction: {reduced.num_weights()} numbers, max |training - reduced| in float64 = {diff:.2e}", flush=True)
    if diff > 1e-10:
        raise SystemExit(f"reduction check failed: max abs diff {diff:.3e} > 1e-10")

    out.parent.mkdir(parents=True, exist_ok=True)
    save_reduced(reduced, out)
    reloaded = load_reduced(out)
    fresh = measure_fresh(reloaded, args.tau, args.test_seqs, 1024, seed=TEST_SEED, dtype=torch.float32)
    fresh64 = measure_fresh(reloaded, args.tau, args.test_seqs, 1024, seed=TEST_SEED, dtype=torch.float64)
    wall = time.time() - wall
    print(f"fresh N(0,1) inputs ({args.test_seqs} x 1024, seed {TEST_SEED}): spike agreement "
          f"{100 * fresh['spike_agreement']:.4f}% (float64 {100 * fresh64['spike_agreement']:.4f}%), "
          f"mem MAE {fresh['mem_mae']:.2e}, rate {fresh['rate_sdn']:.4f} vs {fresh['rate_lif']:.4f}", flush=True)
    record = {
        "file": out.name,
        "sha256": sha256_of(out),
        "command": "python -m spiking_ssm.pretrain_sdn" + ("" if not (argv or sys.argv[1:]) else
                                                           " " + shlex.join(argv if argv is not None else sys.argv[1:])),
        "tau": args.tau,
        "v_threshold": 1.0,
        "num_weights": reduced.num_weights(),
        "dtype": "float64",
        "best_epoch": best["epoch"],
        "bn_recalibrated": bool(best.get("bn_recalibrated", False)),
        "val_loss": best["val_loss"],
        "val_spike_agreement": best["val_spike_agreement"],
        "fresh_eval": {"seqs": args.test_seqs, "length": 1024, "seed": TEST_SEED, "input": "N(0,1)",
                       "float32": fresh, "float64": fresh64},
        "spike_agreement": fresh["spike_agreement"],
        "mem_mae": fresh["mem_mae"],
        "reduction_max_abs_diff_float64": diff,
        "wall_time_s": round(wall, 1),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {out} and {out.with_suffix('.json').name} in {wall:.0f}s", flush=True)
    return record


if __name__ == "__main__":
    main()
