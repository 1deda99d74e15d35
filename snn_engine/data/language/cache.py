"""Derived files kept beside their sources (a vocabulary, encoded token streams), reused while the sources
are unchanged.

Each cache file is one ``torch.save`` dict ``{"key": {...}, ...payload}``; ``key`` names the format version, what
was built and the signature of every source file it came from. :func:`load_fresh` returns the payload only
when the stored key equals the expected one, so a changed source (or a new format) means a rebuild.
Writes are atomic (a temporary file in the same folder, then ``os.replace``): a reader never sees a partial
file, and concurrent builders (several ranks) just write the same content twice.
"""

from __future__ import annotations

import hashlib
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch

#: bytes hashed at each end of a source file
SIGNATURE_BYTES = 1 << 20


def file_signature(path: Path, nbytes: int = SIGNATURE_BYTES) -> dict[str, Any]:
    """``{"size", "head", "tail"}``: the size and SHA-256 digests of the first and last ``nbytes`` (the whole
    file when it is shorter than ``2 * nbytes``). Content-based, so copying the data with its cache elsewhere
    keeps the cache valid; a same-size edit strictly inside the middle of a large file is not noticed."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= 2 * nbytes:
            head, tail = f.read(), b""
        else:
            head = f.read(nbytes)
            f.seek(size - nbytes)
            tail = f.read(nbytes)
    return {"size": size, "head": hashlib.sha256(head).hexdigest(), "tail": hashlib.sha256(tail).hexdigest()}


def load_fresh(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The payload saved at ``path`` if its key equals ``key``; ``None`` when absent, stale or unreadable.
    Tensors are memory-mapped (read on use)."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # a foreign or damaged file is a stale cache, rebuilt and replaced
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    return stored


def save_atomic(path: Path, key: dict[str, Any], **payload: Any) -> bool:
    """Write ``{"key": key, **payload}`` to ``path`` atomically; returns False (with a warning) when the folder
    cannot be written (a read-only data folder: the data is then rebuilt by every run)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"key": key, **payload}, tmp)
        os.replace(tmp, path)
        return True
    except OSError as err:
        warnings.warn(f"cannot write the cache file {path} ({err}); set dataset.cache_dir to a writable folder "
                      f"to avoid rebuilding it every run", stacklevel=2)
        tmp.unlink(missing_ok=True)
        return False
