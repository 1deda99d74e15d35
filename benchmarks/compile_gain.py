"""What ``trainer.compile`` gains: eager vs compiled training-step time and the compilation time, per model.

    python benchmarks/compile_gain.py                                  # the default configurations below
    python benchmarks/compile_gain.py --configs "model=sparse_mlp_t dataset.image_size=224" --mode max-autotune

Each configuration (a string of ``train.py`` overrides) is trained for ``baseline + 1 + measure`` steps by the
real trainer with ``trainer.compile`` on: the trainer times its first ``--baseline`` steps eagerly (the first
one, a warm-up, left out of the median), compiles, times the first compiled step (compilation included) and
``--measure`` more (:class:`snn_engine.training.compiling.CompileTimer`). The table prints the medians and their ratio,
both measured in the same run on the same device. Embedded data sets only (no files needed): the paper presets
run on the shapes images at their resolution, the SpikingSSM models on the shapes images as sequences.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from snn_engine import run  # noqa: E402

SMALL = "dataset.train_size=256 dataset.val_size=64"
CONFIGS = {
    "sparse_mlp_tiny (default job)": f"model=sparse_mlp_tiny {SMALL}",
    "MLP-SPE-T 224px T=4": f"model=sparse_mlp_t dataset.image_size=224 {SMALL} dataset.batch_size=8",
    "SpikingSSM seq/shapes (sdn)": f"experiment=seq/shapes {SMALL}",
    "SpikingSSM sMNIST-size L=1024 (sdn)": f"experiment=seq/smnist dataset=seq_shapes dataset.mode=pixels {SMALL} "
                                           "dataset.batch_size=16",
}


def measure(overrides: list[str], mode: str, backend: str, baseline: int, measure_steps: int, device: str) -> dict:
    """The trainer's compile report (:meth:`snn_engine.training.compiling.CompileTimer.report`) for one configuration."""
    common = ["logger=none", "trainer.progress_bar=false", f"trainer.accelerator={device}", "trainer.epochs=1000",
              f"trainer.max_steps={baseline + 1 + measure_steps}", "trainer.limit_val_batches=1",
              f"trainer.compile={mode}", f"trainer.compile_backend={backend}",
              f"trainer.compile_baseline_steps={baseline}", "trainer.log_every_n_steps=1000"]
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides + common)
    with tempfile.TemporaryDirectory() as folder:
        summary = run.train(cfg, folder)
    return summary["compile"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=None, help="override strings (default: the table above)")
    parser.add_argument("--mode", default="true", help="trainer.compile value (true: reduce-overhead on CUDA)")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--baseline", type=int, default=5, help="eager steps before compiling (first: warm-up)")
    parser.add_argument("--measure", type=int, default=20, help="compiled steps timed after the compilation")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "disabled")
    logging.basicConfig(level=logging.WARNING)
    configs = {c: c for c in args.configs} if args.configs else CONFIGS
    name = torch.cuda.get_device_name() if args.device == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; trainer.compile={args.mode}, backend {args.backend}; medians of {args.baseline - 1} eager "
          f"and {args.measure} compiled steps")
    print("| configuration | mode | eager ms/step | compiled ms/step | speed-up | compilation s | wall s |")
    print("|---|---|---|---|---|---|---|")
    for label, overrides in configs.items():
        start = time.perf_counter()
        try:
            r = measure(overrides.split(), args.mode, args.backend, args.baseline, args.measure, args.device)
        except Exception as error:  # one failing model must not hide the others' numbers
            print(f"| {label} | failed: {type(error).__name__}: {str(error).splitlines()[0][:120]} | | | | | |")
            continue
        print(f"| {label} | {r['mode']} | {1e3 * r['eager_step_s']:.1f} | {1e3 * r['compiled_step_s']:.1f} | "
              f"{r['speedup']:.2f}x | {r['compile_step_s']:.0f} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
