"""SLURM through Hydra's submitit launcher: the preset composes, submitit's job environment becomes the
process group's, and submitit's local executor trains one run with two ranks end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir

from snn_engine.training.distributed import export_submitit_env
from tests.helpers import REPO

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="the slurm extra is not installed")

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def test_slurm_preset_composes():
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["hydra/launcher=slurm", "hydra.launcher.nodes=2",
                                                      "trainer=ddp"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.nodes == 2 and launcher.tasks_per_node == launcher.gpus_per_node == 8
    assert launcher.max_num_timeout > 0 and cfg.trainer.sync_bn


def test_submitit_environment_becomes_torchrun_variables(monkeypatch):
    # a private copy of the environment for this test: the code under test writes os.environ itself
    environ = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    environ.update(SUBMITIT_EXECUTOR="slurm", SLURM_JOB_ID="1234", SLURM_PROCID="3", SLURM_NTASKS="4",
                   SLURM_LOCALID="1", SLURM_JOB_NUM_NODES="2", SLURM_JOB_NODELIST="gpu[07-08]", SLURM_NODEID="1")
    monkeypatch.setattr(os, "environ", environ)
    assert export_submitit_env()
    assert (environ["RANK"], environ["WORLD_SIZE"], environ["LOCAL_RANK"]) == ("3", "4", "1")
    assert environ["MASTER_ADDR"] == "gpu07" and 20000 <= int(environ["MASTER_PORT"]) <= 60000
    assert not export_submitit_env()  # torchrun's variables, once there, win
    for name in TORCHRUN_VARS:
        del environ[name]
    del environ["SUBMITIT_EXECUTOR"]
    assert not export_submitit_env() and "RANK" not in environ  # not a submitit job


@pytest.mark.slow
def test_local_executor_trains_with_two_ranks(tmp_path):
    args = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.tasks_per_node=2", "trainer=ddp",
            "trainer.accelerator=cpu", "logger=none", "trainer.progress_bar=false", "trainer.precision=32",
            "dataset.train_size=64", "dataset.val_size=32", "dataset.batch_size=16", "trainer.epochs=1",
            f"paths.output={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    env = {k: v for k, v in env.items() if k not in TORCHRUN_VARS}
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summaries = list(tmp_path.glob("train/multirun_*/0/summary.json"))
    assert len(summaries) == 1, proc.stdout[-2000:]
    summary = json.loads(summaries[0].read_text())
    assert summary["world_size"] == 2 and summary["status"] == "finished"
