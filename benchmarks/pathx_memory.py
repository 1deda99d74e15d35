"""Peak memory of one SpikingSSM training step (forward, backward, AdamW step) at a reference preset's size.

    python benchmarks/pathx_memory.py                         # Path-X (L = 16384, 6 x 256, SDN soma), batch 1 2 4 -> 16
    python benchmarks/pathx_memory.py --batches 16            # measure batch 16 directly (needs ~30 GB)
    python benchmarks/pathx_memory.py --neuron lif --batches 1 2
    python benchmarks/pathx_memory.py --checkpoint-layers       # recompute each layer in backward (model.checkpoint_layers)

Every batch size runs in a fresh subprocess, so each peak is clean. On a GPU the peak is
``torch.cuda.max_memory_allocated`` above the memory held before the step (weights, optimizer state); on CPU it is
the growth of the process's peak resident set (``ru_maxrss``) over the resident set before the step. Activation
memory grows linearly with the batch, so the script fits ``peak = a + b * batch`` to the measured sizes and prints the
estimate at ``--target`` (16, the Path-X recipe's batch) when it was not measured.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spiking_ssm.backbone import PRESETS, build_preset  # noqa: E402
from spiking_ssm.somas import make_ssm_neuron  # noqa: E402


def rss_bytes() -> int:
    """Current resident set of this process (Linux /proc)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def one_step(preset: str, neuron: str, batch: int, device: str, checkpoint_layers: bool = False) -> dict:
    """Build the preset, run one training step on random data, return the peak memory above the resting state."""
    torch.manual_seed(0)
    model = build_preset(preset, partial(make_ssm_neuron, kind=neuron), checkpoint_layers=checkpoint_layers).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    length = PRESETS[preset]["seq_len"]
    x = torch.rand(batch, length, device=device)
    y = torch.randint(0, PRESETS[preset]["num_classes"], (batch,), device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    start = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"batch": batch, "peak_gb": peak / 1e9, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="pathx", choices=sorted(PRESETS))
    parser.add_argument("--neuron", default="sdn", choices=("sdn", "lif", "sltt"))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--target", type=int, default=16)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--checkpoint-layers", action="store_true", help="recompute each layer in backward")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        print(json.dumps(one_step(args.preset, args.neuron, args.child, args.device, args.checkpoint_layers)))
        return
    rows = []
    for batch in args.batches:
        cmd = [sys.executable, __file__, "--preset", args.preset, "--neuron", args.neuron, "--device", args.device,
               "--child", str(batch)] + (["--checkpoint-layers"] if args.checkpoint_layers else [])
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            print(f"batch {batch}: failed ({done.stderr.strip().splitlines()[-1] if done.stderr else done.returncode})")
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        mode = ", checkpointed layers" if args.checkpoint_layers else ""
        print(f"{args.preset} ({args.neuron}{mode}) on {args.device}: batch {batch:3d}  peak {rows[-1]['peak_gb']:7.2f} GB  "
              f"step {rows[-1]['seconds']:.1f} s", flush=True)
    measured = {row["batch"]: row["peak_gb"] for row in rows}
    if args.target not in measured and len(measured) >= 2:
        xs, ys = list(measured), list(measured.values())
        mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
        slope = sum((a - mean_x) * (b - mean_y) for a, b in zip(xs, ys)) / sum((a - mean_x) ** 2 for a in xs)
        print(f"linear fit: {mean_y - slope * mean_x:.2f} GB + {slope:.2f} GB per sample -> batch {args.target}: "
              f"{mean_y + slope * (args.target - mean_x):.1f} GB (estimated)")


if __name__ == "__main__":
    main()
