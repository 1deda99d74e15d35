"""Run folders that no two runs share.

Hydra makes the run folder before ``train.py``/``eval.py`` start, from ``hydra.run.dir``. That setting goes through
the ``claim_run_dir`` resolver registered here, so the folder is claimed before Hydra writes anything into it:

- a new run (no ``trainer.resume``) gets a folder that did not exist: created with ``os.mkdir`` (exclusive). The
  default ``run_name`` ends with a random per-process suffix (``run_suffix``), and a default name that exists
  anyway is retried with a new suffix, so two runs started in the same second never meet;
- a ``run_name`` whose folder exists is refused unless the run resumes (``trainer.resume=auto|PATH``);
- the claiming process holds an exclusive ``flock`` on ``<run dir>/.run.lock`` while it lives (released by the
  kernel even after ``kill -9``), so two live jobs never write into one folder.

The output folder (``paths.output``, the resolver's third argument) is checked first: an empty one (which would put
the run at the top of the file system) is refused, and so is a run folder that cannot be made or written (a read-only
file system, a file in the way, no permission, a full disk): each is a refusal naming the folder and the reason, before
anything runs.

A refused claim must not touch the existing folder, yet Hydra writes its config and log somewhere: the resolver
then points Hydra at a scratch folder under the system's temp dir, and the entrypoint raises :func:`refusal` as its
one-line error (the scratch folder is removed by :func:`remove_leftovers`).

Under ``torchrun`` only rank 0 (``RANK`` unset or 0) claims; the other ranks let Hydra write into a scratch folder and
adopt rank 0's folder (:func:`snn_engine.training.distributed.shared_run_dir`, which removes the scratch folder).
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from omegaconf import OmegaConf

from snn_engine.errors import UserError
from snn_engine.protection.file_errors import why

LOCK_NAME = ".run.lock"
RESUME_CONFIG_PREFIX = "resume-"


class _Claim:
    """What this process claimed: at most one run folder per process (one Hydra job)."""

    suffix = secrets.token_hex(3)
    path: Path | None = None
    fresh = False  # this process created the folder
    refusal: UserError | None = None
    made_parents: list[Path] = []  # folders above the run folder that the claim created (deepest first)
    lock_fd: int | None = None
    config_subdir = ".hydra"


def run_suffix() -> str:
    """The random suffix of this process's default run names (6 hex digits)."""
    return _Claim.suffix


def holds_results(folder: Path) -> bool:
    """True if ``folder`` holds a run's results: checkpoints or a summary."""
    checkpoints = folder / "checkpoints"
    return (folder / "summary.json").exists() or (checkpoints.is_dir() and any(checkpoints.glob("*.pt")))


def _is_rank_zero() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def _lock(folder: Path) -> str | None:
    """Take the folder's lock for this process's life; the holder's description when another process has it."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        return holder
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} since {datetime.now():%Y-%m-%d %H:%M:%S}\n".encode(), 0)
    _Claim.lock_fd = fd
    return None


def _refuse(message: str) -> str:
    _Claim.refusal = UserError(message)
    _Claim.path = Path(tempfile.mkdtemp(prefix="snn-refused-run-"))
    _Claim.fresh = True
    return str(_Claim.path)


def remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` (deepest first) while they are empty: what a failed run made and did not fill."""
    for empty in folders:
        try:
            empty.rmdir()
        except OSError:
            break


def _create(folder: Path) -> bool:
    missing = [p for p in [folder.parent, *folder.parent.parents] if not p.exists()]
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        remove_empty(missing)
        raise
    _Claim.made_parents = _Claim.made_parents or missing
    try:
        folder.mkdir()
        return True
    except FileExistsError:
        return False


def claim_run_dir(folder: str, resume=None, output: str | None = None) -> str:
    """The run folder this process may write into (see the module docstring); memoised per process. ``output`` is
    ``paths.output``, the folder that ``folder`` lies in."""
    if _Claim.path is not None:
        return str(_Claim.path)
    path = Path(folder)
    if not _is_rank_zero():  # Hydra's files of other ranks go to scratch; they adopt rank 0's folder later
        _Claim.path = Path(tempfile.mkdtemp(prefix=f"snn-rank{os.environ.get('RANK')}-"))
        return str(_Claim.path)
    if output is not None and not str(output).strip():
        return _refuse(f"paths.output is empty, so the run would be written at the top of the file system ({path}); "
                       "set paths.output=DIR (default: outputs, or $SNN_OUTPUT)")
    generated = path.name.endswith("_" + _Claim.suffix)
    try:
        fresh = _create(path)
        for _ in range(8):
            if fresh or not generated:
                break
            old = _Claim.suffix
            _Claim.suffix = secrets.token_hex(3)
            path = path.with_name(path.name[: -len(old)] + _Claim.suffix)
            fresh = _create(path)
    except OSError as error:
        return _refuse(f"cannot create the run folder {path}: {why(error, path)}; set paths.output to a folder you "
                       "can write")
    if not fresh and not resume:
        if holds_results(path):
            return _refuse(f"run folder {path} already holds another run's checkpoints or summary; pass "
                           "trainer.resume=auto to continue that run, or choose a new run_name")
        return _refuse(f"run folder {path} already exists; choose a new run_name (or pass trainer.resume=auto to "
                       "continue in it)")
    try:
        holder = _lock(path)
    except OSError as error:
        if fresh:
            remove_empty([path, *_Claim.made_parents])
        return _refuse(f"cannot write in the run folder {path}: {why(error, path / LOCK_NAME)}; set paths.output to a "
                       "folder you can write")
    if holder is not None:
        return _refuse(f"run folder {path} is in use by a running job ({holder}); wait for it to end or choose "
                       "another run_name")
    _Claim.path, _Claim.fresh = path, fresh
    if not fresh:  # a resumed run keeps the original .hydra/ and records each restart's config beside it
        _Claim.config_subdir = f".hydra/{RESUME_CONFIG_PREFIX}{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(2)}"
    return str(path)


def config_subdir() -> str:
    """Where Hydra writes this job's config inside the run folder (``hydra.output_subdir``)."""
    return _Claim.config_subdir


def refusal() -> UserError | None:
    """The reason this process's run folder was refused, if it was."""
    return _Claim.refusal


def check_claim() -> None:
    """Raise the refusal of this process's claim (the entrypoints call this first)."""
    if _Claim.refusal is not None:
        raise _Claim.refusal


def remove_leftovers(folder: Path) -> None:
    """After a run that failed before it started: delete what Hydra and the claim wrote, but only in a folder that
    this process created and that holds no results; in an existing folder only this attempt's own config copy."""
    folder = Path(folder)
    if _Claim.path is not None and folder.resolve() != _Claim.path.resolve():
        return
    if _Claim.path is not None and not _Claim.fresh:
        if _Claim.config_subdir != ".hydra":
            shutil.rmtree(folder / _Claim.config_subdir, ignore_errors=True)
        return
    if holds_results(folder):
        return
    shutil.rmtree(folder / ".hydra", ignore_errors=True)
    for name in [LOCK_NAME, *[p.name for p in folder.glob("*.log")]]:
        (folder / name).unlink(missing_ok=True)
    remove_empty([folder, *_Claim.made_parents])


def new_folder(parent: str | os.PathLike, stem: str) -> tuple[Path, list[Path]]:
    """A folder ``<parent>/<stem>_<6 hex digits>`` that did not exist, for a command outside Hydra (the SDN's
    pre-training): made with ``os.mkdir`` (exclusive; another suffix when taken), and the folders above it that this
    made (deepest first), for :func:`remove_empty` after a failed run. An :class:`OSError` leaves nothing made."""
    parent = Path(parent)
    missing = [p for p in [parent, *parent.parents] if not p.exists()]
    try:
        parent.mkdir(parents=True, exist_ok=True)
        for _ in range(16):
            folder = parent / f"{stem}_{secrets.token_hex(3)}"
            try:
                folder.mkdir()
                return folder, missing
            except FileExistsError:
                continue
        raise FileExistsError(f"16 random names under {parent} were taken")
    except OSError:
        remove_empty(missing)
        raise


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete half-written checkpoint temp files (``.NAME.pt.*.tmp``) left by a killed save; the caller holds the
    folder's lock, so no other writer can own them."""
    removed = []
    for tmp in (Path(folder) / "checkpoints").glob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


OmegaConf.register_new_resolver("run_suffix", run_suffix, replace=True)
OmegaConf.register_new_resolver("claim_run_dir", claim_run_dir, replace=True, use_cache=False)
OmegaConf.register_new_resolver("run_config_subdir", config_subdir, replace=True, use_cache=False)
