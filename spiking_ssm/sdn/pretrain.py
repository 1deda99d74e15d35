"""Train the SDN on exact LIF traces of varied currents, reduce it and write its weights and their record.

    python -m spiking_ssm.sdn.pretrain [--tau 0.125] [--train-seqs N] [--finetune-epochs E]
        [--out PATH.pt [--overwrite] | --replace-packaged]

Data (``--data mixture``, default): ``--train-seqs`` sequences of ``--length`` steps from the per-sequence
mixture of :mod:`spiking_ssm.sdn.data` (a ``--standard-share`` of N(0, 1); the rest i.i.d. normal/uniform/
Laplace currents with a random mean and scale, slowly varying AR(1)-plus-noise currents and piecewise-constant
levels), with their exact LIF traces (hard reset, threshold 1); validation sequences from another seed.
``--data normal`` is the original recipe's i.i.d. N(0, 1) only. The sequences are short (256 steps; the SDN
sees 8) and the batches wide (256): at the cost of 64 x 1024 a batch mixes 4x as many input distributions,
which converged markedly faster in pilot runs.

Training (the default recipe): the loss is the mean absolute error (``--loss l1``) on the membrane term
``m = tau * u_{t-1}``: for an input independent of the past, the chance that a membrane error ``e`` flips the
spike at that step is about ``p(y = 1 - m) * |e|``, so L1 tracks the spike-error rate, where the original
SmoothL1 (``--loss smooth_l1``, beta 1, i.e. squared errors) spends the tiny net's capacity on rare large
errors. The BatchNorm statistics are estimated once on the training inputs at initialisation and then frozen
(eval mode, ``--epochs 0``): the optimiser sees exactly the function the reduction folds, and per-batch
statistics of a mixture would be noisy. A keep-alive penalty (``--alive-weight`` 0.01 times
``relu(0.1 - max over the batch)`` of every channel's pre-ReLU activation, both layers) stops Adam from
leaving ReLU channels that never fire (three or four of the eight first-layer channels died without it).
AdamW (no weight decay) at ``--finetune-lr`` 0.01 with a linear warm-up over ``--warmup-steps`` and a cosine
decay to 0 over ``--finetune-epochs`` epochs (320 x 250 = 80k steps); the epoch with the lowest validation
loss is kept. ``--epochs E > 0`` first runs the original stage (E epochs with BatchNorm in training mode,
AdamW lr 0.01, weight decay 0.01, cosine), then re-estimates the statistics.
About 36 minutes on a quiet core (49 with the other core busy).

The model is then reduced (:func:`spiking_ssm.sdn.reduce_sdn`), the reduction is checked against the training
form in float64 (max abs diff <= 1e-10), and its spike agreement with the exact LIF is measured on fresh N(0, 1)
inputs (seed 12345) and over the generalisation suite (:mod:`spiking_ssm.sdn.agreement`: shifted, scaled,
shaped and correlated inputs and recorded SpikingSSM layer currents, its own fresh seeds). ``<out>.pt`` (a
plain dict of tensors, float64, loadable with ``torch.load(weights_only=True)``) and ``<out>.json`` (sha256,
command, tau, agreement, the suite's table, date) are written. Deterministic by ``--seed`` with ``--threads 1``.

Where (:mod:`spiking_ssm.sdn.destination`, decided and checked before training, printed at the start and the end):
by default a new run folder ``outputs/sdn/<time>_<suffix>/sdn_tau<tau>.pt`` (``$SNN_OUTPUT`` replaces
``outputs``); ``--out PATH.pt`` (an existing file only with ``--overwrite``); the packaged weights that every
``neuron=sdn`` run loads (``spiking_ssm/weights/sdn_tau<tau>.pt``) only with ``--replace-packaged``. Use a run's
file with ``neuron.weights=PATH.pt``. Every number is checked first (:func:`check_numbers`): sizes and epochs are
whole numbers up to 2**31 - 1, the seed 32-bit, rates and weights finite, ``--tau`` in [0, 1).
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

from snn_engine.protection.bounds import SEED_MAX, SIZE_MAX
from snn_engine.errors import UserError
from snn_engine.protection.file_errors import why
from snn_engine.protection.strict_args import StrictArgumentParser
from spiking_ssm.sdn import destination as dest
from spiking_ssm.sdn.agreement import SUITE_SEED, format_table, run_suite
from spiking_ssm.sdn.data import make_traces
from spiking_ssm.sdn.lif_traces import generate_traces
from spiking_ssm.sdn.network import SDN, ReducedSDN, load_reduced, reduce_sdn, save_reduced
from spiking_ssm.sdn.training import LOSSES, recalibrate_batchnorm, run_stage, spike_agreement, val_loss

TRAIN_SEED, VAL_SEED, TEST_SEED = 1, 2, 12345


def sha256_of(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


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


def _traces(args: argparse.Namespace, n: int, seed: int) -> dict[str, torch.Tensor]:
    if args.data == "normal":
        return generate_traces(n, args.length, tau=args.tau, seed=seed)
    return make_traces(n, args.length, seed=seed, tau=args.tau, standard_share=args.standard_share)


def train(args: argparse.Namespace) -> tuple[SDN, dict]:
    """Stage 1 (``--epochs``, BatchNorm training), BatchNorm re-estimation, stage 2 (frozen BatchNorm)."""
    torch.manual_seed(args.seed)
    t0 = time.time()
    train_data = _traces(args, args.train_seqs, TRAIN_SEED + 1000 * args.seed)
    val_data = _traces(args, args.val_seqs, VAL_SEED + 1000 * args.seed)
    print(f"data ({args.data}): {args.train_seqs} train / {args.val_seqs} val sequences of length {args.length}, "
          f"tau={args.tau}, train firing rate {train_data['spike'].mean():.4f} ({time.time() - t0:.1f}s)",
          flush=True)
    model = SDN()
    best = {"epoch": 0, "val_loss": float("inf")}
    if args.epochs > 0:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
        best, state = run_stage(model, "", args.epochs, optimizer, 0, True, train_data, val_data, best, args, args.seed)
        model.load_state_dict(state)
    model.eval()
    if args.recalibrate_bn or args.epochs == 0:
        val_before = val_loss(model, val_data, args.loss)
        recalibrated = recalibrate_batchnorm(copy.deepcopy(model), train_data["input"], args.batch_size)
        val_after = val_loss(recalibrated, val_data, args.loss)
        agree, mae = spike_agreement(recalibrated, val_data["input"], val_data["mem"], val_data["spike"])
        print(f"BatchNorm statistics estimated on the training set: val_loss {val_before:.3e} -> {val_after:.3e}, "
              f"val_mae {mae:.2e}, val_spike_agreement {100 * agree:.4f}%", flush=True)
        if val_after < val_before or args.epochs == 0:
            model = recalibrated
            best.update(val_loss=val_after, val_spike_agreement=agree, val_mem_mae=mae, bn_recalibrated=True)
    if args.finetune_epochs > 0:
        optimizer = torch.optim.AdamW(model.parameters(), lr=args.finetune_lr, weight_decay=0.0)
        best, state = run_stage(model, "finetune", args.finetune_epochs, optimizer, args.warmup_steps, False,
                                train_data, val_data, best, args, args.seed + 1)
        model.load_state_dict(state)
    return model.eval(), best


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = StrictArgumentParser(prog="python -m spiking_ssm.sdn.pretrain", description=__doc__.split("\n")[0])
    parser.add_argument("--tau", type=float, default=0.125, help="LIF leak (u <- tau*u + y)")
    parser.add_argument("--data", choices=("mixture", "normal"), default="mixture",
                        help="training currents: the mixture of spiking_ssm.sdn.data, or i.i.d. N(0,1) only")
    parser.add_argument("--standard-share", type=float, default=0.3, help="share of N(0,1) sequences in the mixture")
    parser.add_argument("--train-seqs", type=int, default=64000)
    parser.add_argument("--val-seqs", type=int, default=4000)
    parser.add_argument("--test-seqs", type=int, default=2000, help="fresh N(0,1) sequences for the final agreement")
    parser.add_argument("--length", type=int, default=256, help="sequence length L of the training traces")
    parser.add_argument("--loss", choices=sorted(LOSSES), default="l1", help="membrane loss (smooth_l1: beta 1)")
    parser.add_argument("--epochs", type=int, default=0, help="first-stage epochs with BatchNorm in training mode")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.01, help="first-stage lr")
    parser.add_argument("--weight-decay", type=float, default=0.01, help="first-stage weight decay")
    parser.add_argument("--no-recalibrate-bn", dest="recalibrate_bn", action="store_false",
                        help="keep the first stage's running BatchNorm statistics (with --epochs 0 they are "
                             "always estimated)")
    parser.add_argument("--finetune-epochs", type=int, default=320,
                        help="epochs with BatchNorm frozen (eval mode): the main stage of the default recipe")
    parser.add_argument("--finetune-lr", type=float, default=0.01)
    parser.add_argument("--warmup-steps", type=int, default=200, help="linear lr warm-up of the frozen stage")
    parser.add_argument("--alive-weight", type=float, default=0.01,
                        help="weight of the keep-alive penalty on never-active ReLU channels (0: off)")
    parser.add_argument("--alive-margin", type=float, default=0.1,
                        help="each channel's pre-activation must exceed this somewhere in every batch")
    parser.add_argument("--suite-seqs", type=int, default=2000, help="sequences per distribution of the suite")
    parser.add_argument("--no-suite-real", dest="suite_real", action="store_false",
                        help="leave the recorded layer currents out of the suite")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--out", type=Path, default=None,
                        help="output .pt (default: a new run folder outputs/sdn/<time>_<suffix>/sdn_tau<tau>.pt)")
    parser.add_argument("--overwrite", action="store_true", help="let --out replace an existing file")
    parser.add_argument("--replace-packaged", action="store_true",
                        help="write the packaged weights spiking_ssm/weights/sdn_tau<tau>.pt that neuron=sdn loads")
    args = parser.parse_args(argv)
    check_numbers(args)
    return args


MAX_THREADS = 1024


def check_numbers(args: argparse.Namespace) -> None:
    """Every numeric flag in its range, one :class:`UserError` line naming each that is not (before anything runs)."""
    counts = {"--train-seqs": args.train_seqs, "--val-seqs": args.val_seqs, "--test-seqs": args.test_seqs,
              "--length": args.length, "--batch-size": args.batch_size, "--suite-seqs": args.suite_seqs}
    bad = [f"{flag} {value}" for flag, value in counts.items() if not 1 <= value <= SIZE_MAX]
    epochs = {"--epochs": args.epochs, "--finetune-epochs": args.finetune_epochs, "--warmup-steps": args.warmup_steps}
    bad += [f"{flag} {value}" for flag, value in epochs.items() if not 0 <= value <= SIZE_MAX]
    if bad:
        raise UserError(f"invalid {', '.join(bad)}: sizes must be whole numbers in [1, {SIZE_MAX}] and epochs/warm-up "
                        f"in [0, {SIZE_MAX}]")
    if not 1 <= args.threads <= MAX_THREADS:
        raise UserError(f"--threads {args.threads} must be in [1, {MAX_THREADS}]")
    if not 0 <= args.seed <= SEED_MAX:
        raise UserError(f"--seed {args.seed} must be a whole number in [0, {SEED_MAX}]")
    rates = {"--lr": args.lr, "--finetune-lr": args.finetune_lr}
    bad = [f"{flag} {value}" for flag, value in rates.items() if not (math.isfinite(value) and value > 0)]
    if bad:
        raise UserError(f"invalid {', '.join(bad)}: learning rates must be finite numbers > 0")
    for flag, value in {"--weight-decay": args.weight_decay, "--alive-weight": args.alive_weight}.items():
        if not (math.isfinite(value) and value >= 0):
            raise UserError(f"{flag} {value} must be a finite number >= 0 (0 turns it off)")
    if not math.isfinite(args.alive_margin):
        raise UserError(f"--alive-margin {args.alive_margin} must be a finite number")
    if not 0.0 <= args.standard_share <= 1.0:
        raise UserError(f"--standard-share {args.standard_share} must be a share in [0, 1]")
    if args.epochs + args.finetune_epochs == 0:
        raise UserError("nothing would be trained: pass --epochs or --finetune-epochs >= 1")
    if not 0.0 <= args.tau < 1.0:
        raise UserError(f"--tau {args.tau} must be the leak factor in [0, 1)")


def main(argv: list[str] | None = None) -> dict:
    """Check the arguments and the destination, train, reduce, measure, write; the record written to the .json."""
    args = parse_args(argv)
    where = dest.choose(args)
    try:
        record = _run(args, argv, where)
        dest.commit(where)
    except BaseException:
        dest.abandon(where)
        raise
    print(f"wrote {where.out} and {where.record.name} in {record['wall_time_s']:.0f}s"
          + ("" if args.replace_packaged else f"; use it with neuron.weights={where.out}"), flush=True)
    return record


def _run(args: argparse.Namespace, argv: list[str] | None, where: dest.Destination) -> dict:
    """Everything after the checks; the files go to ``where``'s staging folder."""
    torch.set_num_threads(args.threads)
    print(f"writing {where.out} and {where.record.name} at the end"
          + (" (replacing the packaged weights)" if args.replace_packaged else ""), flush=True)
    out = where.staged(where.out)
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

    save_reduced(reduced, out)
    reloaded = load_reduced(out)
    fresh = measure_fresh(reloaded, args.tau, args.test_seqs, 1024, seed=TEST_SEED, dtype=torch.float32)
    fresh64 = measure_fresh(reloaded, args.tau, args.test_seqs, 1024, seed=TEST_SEED, dtype=torch.float64)
    print(f"fresh N(0,1) inputs ({args.test_seqs} x 1024, seed {TEST_SEED}): spike agreement "
          f"{100 * fresh['spike_agreement']:.4f}% (float64 {100 * fresh64['spike_agreement']:.4f}%), "
          f"mem MAE {fresh['mem_mae']:.2e}, rate {fresh['rate_sdn']:.4f} vs {fresh['rate_lif']:.4f}", flush=True)
    suite = _suite(reloaded, args)
    wall = time.time() - wall
    record = {
        "file": out.name,
        "sha256": sha256_of(out),
        "command": "python -m spiking_ssm.sdn.pretrain" + ("" if not (argv or sys.argv[1:]) else
                                                           " " + shlex.join(argv if argv is not None else sys.argv[1:])),
        "tau": args.tau,
        "v_threshold": 1.0,
        "num_weights": reduced.num_weights(),
        "dtype": "float64",
        "data": args.data,
        "loss": args.loss,
        "best_epoch": best["epoch"],
        "bn_recalibrated": bool(best.get("bn_recalibrated", False)),
        "val_loss": best["val_loss"],
        "val_spike_agreement": best["val_spike_agreement"],
        "fresh_eval": {"seqs": args.test_seqs, "length": 1024, "seed": TEST_SEED, "input": "N(0,1)",
                       "float32": fresh, "float64": fresh64},
        "spike_agreement": fresh["spike_agreement"],
        "mem_mae": fresh["mem_mae"],
        "reduction_max_abs_diff_float64": diff,
        "suite": suite,
        "wall_time_s": round(wall, 1),
        "torch": torch.__version__,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    where.staged(where.record).write_text(json.dumps(record, indent=2) + "\n")
    return record


def _suite(reduced: ReducedSDN, args: argparse.Namespace) -> dict:
    """The generalisation suite's table for ``reduced`` (:func:`spiking_ssm.sdn.agreement.run_suite`)."""
    start = time.time()
    results = run_suite({"sdn": reduced}, seqs=args.suite_seqs, length=1024, real=args.suite_real, log=lambda _: None)
    print(f"generalisation suite ({args.suite_seqs} x 1024 per distribution, {time.time() - start:.0f}s):\n"
          + format_table(results), flush=True)
    return {"seqs": args.suite_seqs, "length": 1024, "seed": SUITE_SEED, "dtype": "float32",
            "command": f"python -m spiking_ssm.sdn.agreement --weights <out> --seqs {args.suite_seqs}"
                       + ("" if args.suite_real else " --no-real"),
            "results": {name: row["sdn"] for name, row in results.items()}}


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
    except OSError as error:  # the disk filled or went read-only while the files were written
        raise SystemExit(f"error: could not write the SDN's files ({why(error)}); free disk space or choose another "
                         "--out, then run again") from None
