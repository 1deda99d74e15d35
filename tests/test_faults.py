"""The fault suite: bad inputs, crafted checkpoints, collisions, divergence, kills and a full disk.

Every bad input must end in exactly one line on stderr (``error: ...``), a non-zero exit, no traceback, and no file
made or changed; every fault must leave the files of earlier runs as they were and the run's own files consistent.
Commands run as the shell runs them, in forked children of this process (:mod:`tests.cli_fork`).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import snn_engine.run  # noqa: F401  (loaded once here, shared by every forked child)
from tests.cli_fork import REPO, run_forked
from tests.fault_cases import DANGEROUS_CONFIGS, EVAL_BAD_ARGUMENTS, TRAIN_BAD_VALUES

SMALL = ["logger=none", "trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.precision=32",
         "dataset.train_size=96", "dataset.val_size=32", "dataset.batch_size=32", "trainer.log_every_n_steps=1",
         "trainer.epochs=2"]  # 3 steps an epoch


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones too; not the lock file, which names its current holder)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(folder).rglob("*")) if p.is_file() and p.name != ".run.lock"}


def assert_one_line_error(done: subprocess.CompletedProcess, expected: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode != 0, done.stdout[-2000:]
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]


def train(tmp: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return run_forked("train.py", [*SMALL, f"paths.output={tmp / 'out'}", *args], tmp, **kw)


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    """A finished two-epoch run (``run_name=base``): its folder, with last.pt, best.pt and summary.json."""
    tmp = tmp_path_factory.mktemp("finished")
    done = train(tmp, "run_name=base")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp / "out" / "train" / "base"


def copy_run(run: Path, tmp: Path, name: str) -> Path:
    target = tmp / "out" / "train" / name
    shutil.copytree(run, target)
    return target


# ------------------------------------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize("args,expected", TRAIN_BAD_VALUES, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_training_value_is_one_line_and_leaves_nothing(tmp_path, args, expected):
    done = train(tmp_path, *args)
    assert_one_line_error(done, expected)
    assert not (tmp_path / "out").exists(), snapshot(tmp_path / "out")


@pytest.mark.parametrize("args,expected", EVAL_BAD_ARGUMENTS, ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_bad_eval_argument_is_one_line_and_leaves_nothing(tmp_path, finished, args, expected):
    before = snapshot(finished)
    args = [a.replace("{ckpt}", str(finished / "checkpoints" / "best.pt")) for a in args]
    done = run_forked("eval.py", ["logger=none", "figures=false", f"paths.output={tmp_path / 'out'}", *args], tmp_path)
    assert_one_line_error(done, expected)
    assert not (tmp_path / "out").exists()
    assert snapshot(finished) == before


CRAFTED_LOADERS = {"eval.py": ["logger=none", "ckpt={crafted}", "paths.output={out}"],
                   "-m spiking_ssm.lm.generate": ["ckpt={crafted}", "prompt=the"]}


@pytest.mark.parametrize("tool", list(CRAFTED_LOADERS))
@pytest.mark.parametrize("node,config,named", DANGEROUS_CONFIGS, ids=[c[2] for c in DANGEROUS_CONFIGS])
def test_crafted_checkpoint_never_runs_code(tmp_path, finished, node, config, named, tool):
    victim = tmp_path / "victim.txt"
    state = torch.load(finished / "checkpoints" / "best.pt", weights_only=True)
    text = repr(config).replace("{victim}", str(victim))
    state["config_raw"][node] = eval(text)  # a plain literal of our own making
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    args = [a.format(crafted=crafted, out=tmp_path / "out") for a in CRAFTED_LOADERS[tool]]
    done = run_forked(tool, args, tmp_path)
    assert_one_line_error(done, f"refusing to load {crafted}")
    assert named in done.stderr
    assert not victim.exists() and not victim.is_symlink() and not (tmp_path / "out").exists()


def test_eval_refuses_a_checkpoint_with_non_finite_weights(tmp_path, finished):
    state = torch.load(finished / "checkpoints" / "last.pt", weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, tmp_path / "nan.pt")
    done = run_forked("eval.py", ["logger=none", f"ckpt={tmp_path / 'nan.pt'}", f"paths.output={tmp_path / 'out'}"],
                      tmp_path)
    assert_one_line_error(done, "non-finite weight tensors")


# ------------------------------------------------------------------------------------------- run folders
def test_a_run_name_holding_checkpoints_is_refused_without_resume(tmp_path, finished):
    run = copy_run(finished, tmp_path, "base")
    before = snapshot(run)
    assert_one_line_error(train(tmp_path, "run_name=base"), "already holds another run's checkpoints")
    assert snapshot(run) == before
    (tmp_path / "out" / "train" / "empty").mkdir()
    assert_one_line_error(train(tmp_path, "run_name=empty"), "already exists")
    assert not any((tmp_path / "out" / "train" / "empty").iterdir())


@pytest.mark.slow
def test_runs_started_together_get_their_own_folders(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    args = [*SMALL, "trainer.epochs=1", "trainer.max_steps=1", f"paths.output={tmp_path / 'out'}"]
    procs = [subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=600)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    folders = sorted((tmp_path / "out" / "train").iterdir())
    assert len(folders) == 2 and all((f / "summary.json").is_file() for f in folders)
    assert all(len((f / "train.log").read_text().split("model ")) == 2 for f in folders)  # one run's log each


@pytest.mark.slow
def test_a_live_run_folder_cannot_be_entered_by_a_second_job(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    args = [*SMALL, "trainer.epochs=1000", "trainer.val_every_n_steps=1", "run_name=shared", "trainer.resume=auto",
            f"paths.output={tmp_path / 'out'}"]
    first = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (tmp_path / "out" / "train" / "shared" / "checkpoints" / "last.pt").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.2)
        second = train(tmp_path, "run_name=shared", "trainer.resume=auto")
        assert_one_line_error(second, "is in use by a running job")
    finally:
        first.kill()
        first.wait()


# -------------------------------------------------------------------------------------------------- resume
def test_resume_refuses_changed_settings_and_lists_them(tmp_path, finished):
    run = copy_run(finished, tmp_path, "base")
    before = snapshot(run)
    done = train(tmp_path, "run_name=base", "trainer.resume=auto", "model.T=6", "seed=1", "dataset.batch_size=16")
    assert_one_line_error(done, "would change settings it was trained with")
    assert "model.T: 4 -> 6" in done.stderr and "seed: 42 -> 1" in done.stderr and "dataset.batch_size: 32 -> 16" in \
        done.stderr and "trainer.resume_allow_changes=true" in done.stderr
    assert snapshot(run) == before


def test_resume_with_a_longer_run_and_new_lr_rebuilds_the_schedule(tmp_path, finished):
    copy_run(finished, tmp_path, "base")
    done = train(tmp_path, "run_name=base", "trainer.resume=auto", "trainer.epochs=4", "optimizer.lr=0.01",
                 "trainer.stop_after_steps=7")
    assert done.returncode == 0, done.stderr[-3000:]
    state = torch.load(tmp_path / "out" / "train" / "base" / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 7
    # epoch 2 of 4 of a cosine schedule stepped per epoch: 0.5 (1 + cos(pi / 2)) = 0.5 of the new lr
    assert [g["lr"] for g in state["optimizer"]["param_groups"]] == pytest.approx([0.005, 0.005], rel=1e-12)
    summary = json.loads((tmp_path / "out" / "train" / "base" / "summary.json").read_text())
    assert summary["resume_changes"] == {"optimizer.lr": [0.002, 0.01], "trainer.epochs": [2, 4],
                                         "trainer.stop_after_steps": [None, 7]}


def test_max_steps_minus_one_means_no_limit(tmp_path):
    done = train(tmp_path, "trainer.max_steps=-1", "run_name=unlimited")
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(tmp_path / "out" / "train" / "unlimited" / "checkpoints" / "last.pt",
                      weights_only=True)["step"] == 6


# ----------------------------------------------------------------------------------------------- divergence
def test_divergence_writes_no_non_finite_checkpoint_and_keeps_the_run(tmp_path):
    done = train(tmp_path, "optimizer.lr=1e9", "trainer.val_every_n_steps=1", "trainer.epochs=5", "run_name=boom")
    assert_one_line_error(done, "training diverged")
    run = tmp_path / "out" / "train" / "boom"
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["error"] in done.stderr
    assert (run / "train.log").is_file() and (run / ".hydra" / "config.yaml").is_file()
    for path in (run / "checkpoints").glob("*.pt"):
        state = torch.load(path, weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()), path
    if summary["last_checkpoint"]:
        assert Path(summary["last_checkpoint"]).is_file() and summary["last_checkpoint"] in done.stderr
    else:
        assert "no checkpoint was written" in done.stderr


# ------------------------------------------------------------------------------------------- kills and disks
def kill_at_rename(n: int):
    """A ``prepare`` hook: the n-th rename inside a checkpoint write kills the process (as ``kill -9`` would)."""

    def prepare():
        from snn_engine.protection import checkpoint

        calls = [0]
        real_replace = os.replace

        def replace(src, dst):
            calls[0] += 1
            if calls[0] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            return real_replace(src, dst)

        checkpoint.os = type("os_with_kill", (), {"__getattr__": lambda self, name: getattr(os, name),
                                                  "replace": staticmethod(replace)})()

    return prepare


def assert_consistent(run: Path) -> None:
    summary = json.loads((run / "summary.json").read_text())
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    best = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    assert summary["status"] == "finished" and last["step"] == summary["step"] == 6
    assert best["step"] == summary["best"]["step"] and last["best"] == best["best"] == summary["best"]
    assert not list((run / "checkpoints").glob(".*.tmp"))


@pytest.mark.slow
@pytest.mark.parametrize("rename", [1, 2, 3])
def test_kill_inside_a_checkpoint_write_then_resume(tmp_path, rename):
    """Renames: 1 = best.pt of the first validation, 2 = its last.pt, 3 = the second validation's first file."""
    killed = train(tmp_path, "run_name=k", "trainer.resume=auto", prepare=kill_at_rename(rename))
    assert killed.returncode == -signal.SIGKILL
    run = tmp_path / "out" / "train" / "k"
    assert list((run / "checkpoints").glob(".*.tmp"))  # the write that was cut short
    resumed = train(tmp_path, "run_name=k", "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "unfinished" in (run / "train.log").read_text()
    assert_consistent(run)


@pytest.mark.slow
def test_kill_at_a_random_time_then_resume(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    args = [*SMALL, "run_name=r", "trainer.resume=auto", "trainer.val_every_n_steps=1", f"paths.output={tmp_path / 'out'}"]
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "out" / "train" / "r" / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while not last.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(float(torch.rand(()).item()) * 0.5)
    proc.kill()
    proc.wait()
    resumed = train(tmp_path, "run_name=r", "trainer.resume=auto", "trainer.val_every_n_steps=1")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_consistent(tmp_path / "out" / "train" / "r")


def test_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, finished):
    run = copy_run(finished, tmp_path, "base")
    before = snapshot(run / "checkpoints")
    limit = (run / "checkpoints" / "last.pt").stat().st_size // 2

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = train(tmp_path, "run_name=base", "trainer.resume=auto", "trainer.epochs=3", prepare=small_disk)
    assert_one_line_error(done, "no space left on the device")
    assert snapshot(run / "checkpoints") == before


def test_a_failed_final_summary_is_one_line_and_leaves_no_stale_summary(tmp_path, finished):
    """A run whose summary says interrupted (at step 3) resumes to its end (the finished checkpoints: nothing left to
    train), but the summary's temp path is taken by a directory: one line, and no summary claims otherwise."""
    from snn_engine.protection.summary_file import temp_path

    run = copy_run(finished, tmp_path, "base")
    summary = json.loads((run / "summary.json").read_text())
    (run / "summary.json").write_text(json.dumps({**summary, "status": "interrupted", "step": 3}))
    temp_path(run / "summary.json").mkdir()
    before = snapshot(run / "checkpoints")
    done = train(tmp_path, "run_name=base", "trainer.resume=auto")
    assert_one_line_error(done, f"the run finished at step 6 with its checkpoints complete in {run / 'checkpoints'}")
    assert "is a directory, not a file" in done.stderr and "(status interrupted, step 3) was removed" in done.stderr
    assert "run_name=base trainer.resume=auto to write it without training further" in done.stderr
    assert not (run / "summary.json").exists() and temp_path(run / "summary.json").is_dir()
    assert snapshot(run / "checkpoints") == before and (run / "train.log").is_file()
    assert sorted(p.name for p in (tmp_path / "out" / "train").iterdir()) == ["base"]
    temp_path(run / "summary.json").rmdir()  # the fix the line names: the summary, without further training
    again = train(tmp_path, "run_name=base", "trainer.resume=auto")
    assert again.returncode == 0, again.stderr[-3000:]
    written = json.loads((run / "summary.json").read_text())
    assert written["status"] == "finished" and written["step"] == 6 and snapshot(run / "checkpoints") == before


def full_disk_at_the_summary():
    """A ``prepare`` hook: the disk is full (a 16-byte file-size limit) while the summary is written, only then."""
    from snn_engine.protection import summary_file

    real = summary_file.write_atomic

    def write_atomic(path, values):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        before = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (16, before[1]))
        try:
            return real(path, values)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, before)

    summary_file.write_atomic = write_atomic


@pytest.mark.slow
def test_eval_with_a_full_disk_at_the_summary_is_one_line_and_keeps_its_log(tmp_path, finished):
    before = snapshot(finished)
    done = run_forked("eval.py", ["logger=none", "figures=false", f"ckpt={finished / 'checkpoints' / 'best.pt'}",
                                  f"paths.output={tmp_path / 'out'}", "run_name=e"], tmp_path,
                      prepare=full_disk_at_the_summary)
    assert_one_line_error(done, f"evaluated {finished / 'checkpoints' / 'best.pt'}: val ")
    assert "summary.json could not be written (no space left on the device" in done.stderr
    run = tmp_path / "out" / "eval" / "e"
    assert not (run / "summary.json").exists() and not list(run.glob(".summary*"))
    assert "evaluated " in (run / "eval.log").read_text()  # the result line, logged before the write
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and snapshot(finished) == before


def test_a_run_folder_given_as_ckpt_is_named_a_directory_with_its_checkpoint(tmp_path, finished):
    done = run_forked("eval.py", ["logger=none", f"ckpt={finished}", f"paths.output={tmp_path / 'out'}"], tmp_path)
    assert_one_line_error(done, f"checkpoint {finished} is a directory, not a file; pass the checkpoint inside it: "
                                f"{finished / 'checkpoints' / 'best.pt'}")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------ python -m tools
@pytest.mark.parametrize("argv,expected", [
    (["--finetune-epoch", "3"], "unknown option --finetune-epoch (did you mean --finetune-epochs?)"),
    (["--epoch", "3"], "unknown option --epoch (did you mean --epochs?)"),  # no silent prefix matching
    (["--tau", "abc"], "argument --tau: invalid float value: 'abc'"),
    (["--length", "0"], "invalid --length 0"),
    (["--lr", "-1"], "invalid --lr -1.0: learning rates must be finite numbers > 0"),
    (["--finetune-lr", "nan"], "invalid --finetune-lr nan"),
    (["--weight-decay", "inf"], "--weight-decay inf must be a finite number >= 0"),
    (["--standard-share", "1.5"], "--standard-share 1.5 must be a share in [0, 1]"),
    (["--tau", "nan"], "--tau nan must be the leak factor in [0, 1)"),
    (["--seed", str(2**64)], f"--seed {2**64} must be a whole number in [0, 4294967295]"),
    (["--finetune-epochs", str(2**40)], f"invalid --finetune-epochs {2**40}"),
    (["--train-seqs", str(2**31)], f"invalid --train-seqs {2**31}"),
    (["--threads", "100000"], "--threads 100000 must be in [1, 1024]"),
])
def test_pretrain_sdn_rejects_unknown_and_bad_arguments(argv, expected, capsys):
    from snn_engine.errors import UserError
    from spiking_ssm.sdn.pretrain import parse_args

    try:
        parse_args(argv)
    except SystemExit as stop:
        err = capsys.readouterr().err
        assert stop.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    except UserError as error:
        assert expected in str(error)
    else:
        raise AssertionError(f"{argv} was accepted")
