"""Checkpoints: plain dicts of tensors and primitives, written atomically, loaded with ``weights_only``.

A checkpoint holds ``model``, ``optimizer``, ``scheduler``, ``scaler``, ``ema`` state dicts, the
position (``step``, ``epoch``, ``batch_in_epoch``), ``best`` metric, the RNG states of every generator
the run uses, the model's ``_target_`` and the resolved ``config`` dict. :func:`load` renames the class paths that
have moved since a checkpoint was written (:mod:`snn_engine.protection.moved_targets`).
"""

from __future__ import annotations

import errno
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

from snn_engine.errors import RunFailed, UserError
from snn_engine.protection.moved_targets import update_targets
from snn_engine.protection.summary_file import fsync_dir as _fsync_dir
from snn_engine.protection.torch_files import load_plain


def atomic_save(obj: dict, path: str | os.PathLike, also: tuple[str | os.PathLike, ...] = ()) -> None:
    """Write ``obj`` to ``path`` (and the same bytes to each path in ``also``) so readers never see half a file.

    The bytes go to a temporary file beside ``path``, are flushed to disk (``fsync``), then hard-linked to each
    ``also`` path and renamed over ``path``; the folder is synced last. The ``also`` copies are in place before
    ``path``, so a run killed in between holds a newer ``also`` (e.g. ``best.pt``) than ``path`` (``last.pt``), never
    the reverse. A failed write (a full disk, a quota) leaves every earlier file intact and is one :class:`UserError`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    links = []
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        for other in map(Path, also):
            link = other.with_name(f".{other.name}.{Path(tmp).name}.link.tmp")
            os.link(tmp, link)
            links.append(link)
            os.replace(link, other)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as error:
        for leftover in [Path(tmp), *links]:
            leftover.unlink(missing_ok=True)
        if not isinstance(error, (OSError, RuntimeError)):
            raise
        first_line = (str(error).strip().splitlines() or [""])[0]
        reason = ("no space left on the device, or a file-size limit reached" if _disk_full(error)
                  else f"{type(error).__name__}: {first_line}")
        raise RunFailed(f"could not write checkpoint {path} ({reason}); the previous checkpoint is intact; free disk "
                        "space or point paths.output at another disk, then resume with trainer.resume=auto") from error


def _disk_full(error: BaseException) -> bool:
    """True if ``error`` (or torch's wrapper of it) comes from a full disk or an exceeded file-size/quota limit."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    text = str(error)
    return any(sign in text for sign in ("unexpected pos", "No space left", "File too large", "file write failed"))


def non_finite_tensors(state: dict, prefix: str = "") -> list[str]:
    """Names of the floating-point tensors in a (nested) state dict that hold NaN or infinity."""
    bad = []
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            bad += non_finite_tensors(value, name + ".")
        elif isinstance(value, (list, tuple)):
            bad += non_finite_tensors(dict(enumerate(value)), name + ".")
        elif torch.is_tensor(value) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            bad.append(name)
    return bad


def load(path: str | os.PathLike) -> dict:
    """Load a checkpoint written by :func:`atomic_save` on CPU, refusing arbitrary pickled objects; class paths that
    moved since it was written are renamed (:func:`snn_engine.protection.moved_targets.update_targets`).

    Every way a named file can fail to be a checkpoint is one :class:`UserError` line naming it: missing, a folder
    (with the run's ``checkpoints/best.pt`` suggested where there is one), unreadable or not written by torch
    (:func:`snn_engine.protection.torch_files.load_plain`), or a file whose top level is not a dict (a saved tensor, a list)."""
    path = Path(path)
    fix = "pass a checkpoint written by train.py (ckpt=... or trainer.resume=...)"
    if path.is_dir():
        inside = [c for c in (path / "checkpoints" / "best.pt", path / "best.pt") if c.is_file()]
        raise UserError(f"checkpoint {path} is a directory, not a file; " + (
            f"pass the checkpoint inside it: {inside[0]}" if inside else
            f"pass a checkpoint file, such as <run folder>/checkpoints/best.pt"))
    if not path.exists():
        raise UserError(f"checkpoint {path} does not exist; pass an existing file (ckpt=... or trainer.resume=...)")
    state = load_plain(path, "checkpoint", fix)
    if not isinstance(state, dict):
        raise UserError(f"checkpoint {path} holds a {type(state).__name__}, not a checkpoint (train.py writes a dict "
                        f"of weights, optimizer state and config); {fix}")
    return update_targets(state)


def rng_state() -> dict:
    """The states of Python's, NumPy's and torch's (CPU and CUDA) global generators."""
    np_kind, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def check_compatible(ckpt: dict, model: torch.nn.Module, model_target: str, path) -> None:
    """Raise :class:`UserError` if ``ckpt`` holds weights of another model than ``model``."""
    theirs = ckpt.get("model_target", "?")
    state = ckpt["model"]
    mine = model.state_dict()
    mismatched = [k for k in mine if k not in state or state[k].shape != mine[k].shape]
    extra = [k for k in state if k not in mine]
    if theirs != model_target or mismatched or extra:
        first = (mismatched + extra)[:1]
        raise UserError(
            f"checkpoint {path} holds a different model ({theirs}, config model "
            f"{ckpt.get('config', {}).get('model', {})}) than this run ({model_target}); "
            f"{len(mismatched) + len(extra)} tensors differ (first: {first}); use the checkpoint's model=... "
            "settings or start without it"
        )
