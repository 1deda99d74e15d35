"""The fault suite, continued (issue 24): output folders that cannot hold a run, files that are not checkpoints, and
``mfi=true`` on a model without a folded form.

As in ``tests/test_faults.py``: exactly one line on stderr, a non-zero exit, no traceback, nothing written outside the
run's folder (for a bad input nothing at all), the files handed in unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from tests.bad_checkpoints import BAD_FILES, assert_plain_line, make
from tests.cli_fork import run_forked
from tests.test_faults import SMALL, assert_one_line_error, train

EVAL = ["logger=none", "figures=false"]
SKIPPED = 77  # a child that cannot make a read-only mount exits with this


def scratch_folders() -> set[str]:
    """The scratch folders of refused claims (:mod:`snn_engine.protection.run_folder`): each must be gone after its command."""
    return {p.name for p in Path(tempfile.gettempdir()).glob("snn-refused-run-*")}


def command(script: str, tmp: Path, output: str, **kw):
    """``train.py`` (tiny run) or ``eval.py`` (a checkpoint that does not exist) with ``paths.output=output``."""
    args = [*SMALL] if script == "train.py" else [*EVAL, f"ckpt={tmp / 'missing.pt'}"]
    return run_forked(script, [*args, f"paths.output={output}"], tmp, **kw)


# ------------------------------------------------------------------------------------------ output folders
@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_an_empty_output_is_refused_and_nothing_is_written_at_the_root(tmp_path, script):
    task = "train" if script == "train.py" else "eval"
    at_root = Path("/") / task
    listing = sorted(os.listdir(at_root)) if at_root.is_dir() else None
    scratch = scratch_folders()
    done = command(script, tmp_path, "")
    assert_one_line_error(done, "paths.output is empty, so the run would be written at the top of the file system")
    assert f"(/{task}/" in done.stderr and "set paths.output=DIR" in done.stderr
    assert (sorted(os.listdir(at_root)) if at_root.is_dir() else None) == listing
    assert list(tmp_path.iterdir()) == [] and scratch_folders() <= scratch


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_an_output_under_a_file_is_refused(tmp_path, script):
    (tmp_path / "notes.txt").write_text("mine")
    done = command(script, tmp_path, str(tmp_path / "notes.txt" / "runs"))
    assert_one_line_error(done, f"cannot create the run folder {tmp_path / 'notes.txt' / 'runs'}/")
    assert f"{tmp_path / 'notes.txt'} is a file, not a directory; set paths.output" in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


def read_only_mount(folder: Path):
    """A ``prepare`` hook: ``folder`` becomes a read-only bind mount in the child's own mount namespace (root only;
    the parent's view is untouched); the child exits with :data:`SKIPPED` where the kernel does not allow it."""

    def prepare():
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        rdonly, remount, bind, rec, private = 1, 32, 4096, 16384, 1 << 18
        path = str(folder).encode()
        if not (libc.unshare(0x00020000) == 0 and libc.mount(b"none", b"/", None, rec | private, None) == 0
                and libc.mount(path, path, None, bind, None) == 0
                and libc.mount(None, path, None, remount | bind | rdonly, None) == 0):
            print("no read-only mount here", file=sys.stderr, flush=True)
            os._exit(SKIPPED)

    return prepare


@pytest.mark.parametrize("script", ["train.py", "eval.py"])
def test_a_read_only_output_is_one_line(tmp_path, script):
    """Root ignores file modes, so as root the folder is a read-only mount (EROFS); otherwise its mode is 0555."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() == 0:
        done, expected = command(script, tmp_path, str(folder), prepare=read_only_mount(folder)), "read-only"
        if done.returncode == SKIPPED:
            pytest.skip("this kernel does not allow a private read-only mount")
    else:
        folder.chmod(0o555)
        done, expected = command(script, tmp_path, str(folder)), "permission denied"
        folder.chmod(0o755)
    assert_one_line_error(done, f"cannot create the run folder {folder}/")
    assert expected in done.stderr and "set paths.output to a folder you can write" in done.stderr
    assert list(folder.iterdir()) == [] and [p.name for p in tmp_path.iterdir()] == ["readonly"]


# ---------------------------------------------------------------------------------- not checkpoints
def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("use", ["eval", "resume"])
@pytest.mark.parametrize("kind,expected", BAD_FILES, ids=[k for k, _ in BAD_FILES])
def test_a_file_that_is_not_a_checkpoint_is_one_plain_line(tmp_path, use, kind, expected):
    bad = make(kind, tmp_path)
    before = digest(bad)
    if use == "eval":
        done = run_forked("eval.py", [*EVAL, f"ckpt={bad}", f"paths.output={tmp_path / 'out'}"], tmp_path)
    else:
        done = train(tmp_path, f"trainer.resume={bad}")
    assert_one_line_error(done, f"checkpoint {bad}")
    assert_plain_line(done.stderr.strip(), bad, expected)
    assert not (tmp_path / "out").exists() and not (tmp_path / "victim.txt").exists() and digest(bad) == before


def test_a_run_folder_given_to_resume_is_named_a_directory(tmp_path):
    run = tmp_path / "earlier"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"")
    done = train(tmp_path, f"trainer.resume={run}")
    assert_one_line_error(done, f"checkpoint {run} is a directory, not a file; pass the checkpoint inside it: "
                                f"{run / 'checkpoints' / 'best.pt'}")
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    done = train(tmp_path, f"trainer.resume={empty}")
    assert_one_line_error(done, f"checkpoint {empty} is a directory, not a file; pass a checkpoint file, such as")


# ------------------------------------------------------------------------------------------------ mfi
def ssm_checkpoint(folder: Path) -> Path:
    """A trainer-format checkpoint of an untrained tiny SpikingSSM classifier on the embedded sequence shapes."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from snn_engine.run import build_model
    from tests.helpers import compose_train

    cfg = compose_train(["experiment=seq/shapes", "logger=none", "trainer.accelerator=cpu", "trainer.precision=32",
                         "trainer.progress_bar=false", "dataset.train_size=32", "dataset.val_size=16",
                         "model.d_model=8", "model.d_state=4", "model.n_layers=1"])
    model = build_model(cfg, instantiate(cfg.dataset))
    state = {"model": model.state_dict(), "ema": None, "step": 0, "epoch": 0, "model_target": cfg.model._target_,
             "config": OmegaConf.to_container(cfg, resolve=False), "config_raw": OmegaConf.to_container(cfg)}
    path = folder / "ssm.pt"
    torch.save(state, path)
    return path


def test_mfi_on_a_spiking_ssm_says_that_nothing_was_folded(tmp_path):
    ckpt = ssm_checkpoint(tmp_path)
    done = run_forked("eval.py", [*EVAL, f"ckpt={ckpt}", "mfi=true", f"paths.output={tmp_path / 'out'}",
                                  "run_name=e"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = next(line for line in done.stdout.splitlines() if f"evaluated {ckpt}" in line)
    assert "not folded (mfi=true, but MFI does not apply to SpikingSSMClassifier; evaluated as trained): val" in result
    assert " folded (mfi=true)" not in result
    summary = json.loads((tmp_path / "out" / "eval" / "e" / "summary.json").read_text())
    assert summary["mfi"]["folded"] is False and summary["mfi"]["applicable"] is False
