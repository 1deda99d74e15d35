"""Shared helpers for the end-to-end tests: compose configs, run the CLI, read results."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]

# a small, fast setting of the default job: tiny model on a few hundred shapes images
TINY = [
    "logger=none", "trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.precision=32",
    "dataset.train_size=192", "dataset.val_size=96", "dataset.batch_size=32", "trainer.log_every_n_steps=1",
]


def compose_train(overrides: list[str]):
    """The ``train.yaml`` config with ``overrides``, as ``python train.py`` would see it."""
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def run_cli(script: str, args: list[str], cwd: Path, torchrun_procs: int = 0, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``train.py``/``eval.py`` (optionally under torchrun) in a subprocess with W&B off."""
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1" if torchrun_procs else os.environ.get("OMP_NUM_THREADS", "2")}  # see conftest.py
    if torchrun_procs:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={torchrun_procs}",
               str(REPO / script), *args]
    else:
        cmd = [sys.executable, str(REPO / script), *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def read_summary(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "summary.json").read_text())


def load_weights(run_dir: Path, name: str = "last.pt") -> dict:
    return torch.load(Path(run_dir) / "checkpoints" / name, weights_only=True)["model"]


def loss_and_saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``model(x).square().mean()`` and the bytes of every storage its graph saves for backward, counting the
    booleans :mod:`snn_engine.training.spike_memory` stores in place of spikes."""
    from snn_engine.training import spike_memory

    saved: dict[int, int] = {}

    def count(t: torch.Tensor) -> torch.Tensor:
        saved.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
        return t

    spike_memory.pack_observers.append(count)
    try:
        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            loss = model(x).square().mean()
    finally:
        spike_memory.pack_observers.remove(count)
    return loss, sum(saved.values())
