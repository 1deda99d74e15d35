"""Reading a ``.pt`` file that a user named: ``torch.load(weights_only=True)``, one plain line per way it fails.

torch's own messages run over several lines, carry terminal colour codes and advise loading with
``weights_only=False`` (which would run whatever code the file holds). :func:`load_plain` turns each failure into a
few words saying what the file is not:

- a pickled Python object beyond tensors and plain values (a "forbidden global"): refused, named, never loaded;
- a file torch did not write (text, NumPy, a plain pickle, an empty file);
- a truncated or corrupt torch file (its zip archive cannot be read);
- a directory, or a file that cannot be opened.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import torch

from snn_engine.errors import UserError
from snn_engine.protection.file_errors import why

ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ZIP_MAGIC = b"PK\x03\x04"


def plain(text: str) -> str:
    """The first line of ``text`` without terminal escape codes."""
    return (ANSI.sub("", str(text)).strip().splitlines() or [""])[0].strip()


def _head(path: Path) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(4)
    except OSError:
        return b""


def what_it_is_not(error: BaseException, path: Path) -> str:
    """Why ``torch.load(path, weights_only=True)`` raised ``error``, as a clause starting with "it"."""
    text = ANSI.sub("", str(error))
    forbidden = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if forbidden:
        return (f"it holds a pickled Python object ({forbidden.group(1)}), not only tensors and plain values, and "
                "loading that could run code")
    if isinstance(error, OSError):
        return why(error, path)
    head = _head(path)
    if not head:
        return "it is empty"
    if head != ZIP_MAGIC:  # torch.save writes a zip archive
        return "it is not a PyTorch file (torch.save did not write it)"
    if any(sign in text for sign in ("central directory", "failed reading", "truncated", "corrupt")):
        return "it is not a complete PyTorch file (truncated or corrupt: its zip archive cannot be read)"
    return f"it is a zip archive that torch cannot read ({type(error).__name__}: {plain(text)})"


def load_plain(path: str | os.PathLike, what: str, fix: str) -> object:
    """``torch.load(path, weights_only=True)`` on CPU; a missing file, a directory or an unreadable file is one
    :class:`UserError` line: ``<what> <path> ...; <fix>``."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a directory, not a file; {fix}")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist; {fix}")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Detected pickle protocol")  # pickles torch did not write
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise UserError(f"{what} {path} cannot be read: {what_it_is_not(error, path)}; {fix}") from error
