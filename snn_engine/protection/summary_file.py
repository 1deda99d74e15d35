"""``summary.json``: written atomically, and never left behind saying something that is no longer true.

A summary is written to ``.summary.json.tmp`` beside it, flushed to disk (``fsync``), renamed over ``summary.json``
and the folder synced: a reader sees the old file or the new one, never half of one.

When the final summary of a run cannot be written (a full disk, a file-size limit, a read-only file system, its temp
path taken by a directory), the summary that an earlier attempt left in the folder (a resumed run's ``interrupted``,
say) would describe a state the checkpoints beside it have moved past. It is removed (unlinking needs no free
space), and the one-line error says so, what the run reached, and how to write the summary later. Where even the
removal fails, the error says that the file left there is stale and which step it describes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from snn_engine.errors import RunFailed
from snn_engine.protection.file_errors import why

NAME = "summary.json"


def temp_path(path: Path) -> Path:
    """Where :func:`write_atomic` writes ``path``'s bytes before renaming them into place."""
    return path.with_name(f".{path.name}.tmp")


def fsync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (a rename into it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: str | os.PathLike, values: dict) -> None:
    """Write ``values`` as JSON to ``path`` through a synced temp file and a rename; an :class:`OSError` leaves
    ``path`` as it was and no temp file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(values, indent=2, sort_keys=True, default=float)
    tmp = temp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if tmp.is_file():
            try:
                tmp.unlink()
            except OSError:
                pass
        raise
    fsync_dir(path.parent)


def remove_stale(path: Path) -> str:
    """Remove the summary an earlier attempt left at ``path`` (if any); a clause saying what happened to it."""
    if not path.is_file():
        return ""
    try:
        old = json.loads(path.read_text())
        described = f"status {old.get('status', '?')}, step {old.get('step', '?')}"
    except (OSError, ValueError, AttributeError):
        described = "unreadable"
    try:
        path.unlink()
    except OSError as error:
        return f"the {path.name} there is stale ({described}) and could not be removed ({why(error, path)}); "
    return f"the earlier {path.name} ({described}) was removed, as it no longer describes this run; "


def write_or_fail(path: str | os.PathLike, values: dict, done: str, fix: str) -> None:
    """Write a run's final summary; on failure remove a stale one and raise one :class:`RunFailed` line:
    ``<done>, but <path> could not be written (<reason>); <what happened to the old one>; <fix>``."""
    path = Path(path)
    try:
        write_atomic(path, values)
    except OSError as error:
        reason = why(error, temp_path(path))
        raise RunFailed(f"{done}, but {path} could not be written ({reason}); {remove_stale(path)}{fix}") from error
