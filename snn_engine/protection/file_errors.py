"""Why a file or folder could not be made or written, as a few plain words for a one-line error."""

from __future__ import annotations

import errno
from pathlib import Path

DISK_FULL = "no space left on the device, or a file-size limit reached"


def file_in_the_way(path: str | Path) -> Path | None:
    """The first of ``path`` and its parents (from the top) that exists and is not a folder, if any."""
    path = Path(path).absolute()
    for part in [*reversed(path.parents), path]:
        if part.exists() and not part.is_dir():
            return part
    return None


def why(error: OSError, path: str | Path | None = None) -> str:
    """What went wrong, in words (``path``: what was being made, to name a file in its way)."""
    where = path if path is not None else error.filename
    if error.errno == errno.EROFS:
        return "the file system is read-only"
    if error.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return DISK_FULL
    if error.errno in (errno.ENOTDIR, errno.EEXIST) and where is not None:
        blocker = file_in_the_way(where)
        if blocker is not None:
            return f"{blocker} is a file, not a directory"
    if error.errno == errno.EISDIR:
        return f"{error.filename or where} is a directory, not a file"
    return error.strerror or str(error)
