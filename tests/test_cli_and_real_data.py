"""The paper command on an ImageNet-layout fixture, pre-emption by SIGTERM, and learning real MNIST."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from snn_engine import run
from tests.data_fixtures import write_imagefolder
from tests.helpers import REPO, TINY, compose_train, read_summary, run_cli

SHARED_MNIST = REPO.parent / "shared" / "data" / "MNIST" / "raw"


@pytest.mark.slow
def test_paper_command_runs_on_imagenet_fixture(tmp_path):
    write_imagefolder(tmp_path / "data" / "imagenet", num_classes=1000, per_class=1, size=36)
    args = ["model=sparse_mlp_s", "dataset=imagenet", f"paths.data={tmp_path / 'data'}",  # the README's command
            "debug=fast", "dataset.batch_size=2", "dataset.num_workers=0", "trainer.limit_train_batches=1",
            "trainer.limit_val_batches=1", f"paths.output={tmp_path / 'out'}", "run_name=paper"]
    done = run_cli("train.py", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = read_summary(tmp_path / "out" / "train" / "paper")
    assert summary["num_params"] == 37_975_568  # MLP-SPE-S at 1000 classes, 224 px
    assert summary["status"] == "finished" and summary["step"] == 1


@pytest.mark.slow
def test_sigterm_writes_checkpoint_then_exits(tmp_path):
    run_dir = tmp_path / "train" / "pre"
    args = TINY + ["trainer.epochs=100", "trainer.val_every_n_steps=2", "trainer.limit_val_batches=1",
                   f"paths.output={tmp_path}", "run_name=pre"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (run_dir / "checkpoints" / "last.pt").exists():
            assert proc.poll() is None, proc.stderr.read()[-3000:]
            assert time.time() < deadline, "training never wrote its first checkpoint"
            time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    summary = read_summary(run_dir)
    assert summary["status"] == "interrupted" and summary["step"] < 100 * (192 // 32)
    state = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == summary["step"] >= 2
    assert state["epoch"] * (192 // 32) + state["batch_in_epoch"] == state["step"]  # the position to resume from


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="real MNIST is not at ../shared/data")
def test_tiny_sparse_mlp_learns_real_mnist(tmp_path):
    cfg = compose_train(["logger=none", "trainer.progress_bar=false", "trainer.accelerator=cpu", "dataset=mnist",
                         f"paths.data={SHARED_MNIST.parents[1]}", "dataset.num_workers=0", "trainer.epochs=1",
                         "trainer.limit_train_batches=150", "trainer.limit_val_batches=40"])
    summary = run.train(cfg, tmp_path)
    assert summary["final"]["acc1"] > 85.0, summary["final"]


@pytest.mark.slow
def test_default_job_exceeds_90_percent(tmp_path):
    """``python train.py`` as shipped (logging aside): the tiny sparse-MLP on the embedded shapes data."""
    summary = run.train(compose_train(["logger=none", "trainer.progress_bar=false"]), tmp_path)
    assert summary["final"]["acc1"] > 90.0, summary["final"]
    assert summary["num_params"] == 846_086
