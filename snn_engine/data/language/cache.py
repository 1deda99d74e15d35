"""Derived files kept beside their sources (a vocabulary, encoded token streams), reused while the sources
are unchanged.

Each cache file is one ``torch.save`` dict ``{"key": {...}, "checksums": {...}, ...payload}``; ``key`` names the
format version, what was built and the signature of every source file it came from; ``checksums`` holds the
SHA-256 of every payload value (:func:`payload_digest`). :func:`load_fresh` returns the payload only when the
stored key equals the expected one (a changed source or a new format means a rebuild) and every payload value
matches its checksum (a damaged or edited cache, e.g. one token id changed, is rebuilt with a warning).
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

import numpy as np
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


def payload_digest(value: Any) -> str:
    """SHA-256 (hex) of a payload value: a tensor's dtype, shape and bytes (``int32 [N]`` streams: about 1 s per
    GB), else the ``repr`` of plain data (a list of words)."""
    digest = hashlib.sha256()
    if isinstance(value, torch.Tensor):
        array = value.detach().cpu().contiguous().numpy()
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.reshape(-1).view(np.uint8))
    else:
        digest.update(repr(value).encode("utf-8"))
    return digest.hexdigest()


def load_fresh(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The payload saved at ``path`` if its key equals ``key`` and its values match their checksums; ``None``
    when absent, stale, damaged or unreadable (the last two with a warning naming the file). Tensors are
    memory-mapped; verifying the checksums reads them once."""
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # a foreign or damaged file is a stale cache, rebuilt and replaced
        warnings.warn(f"cannot read the cache file {path} ({type(err).__name__}); rebuilding it", stacklevel=2)
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        return None
    checksums = stored.get("checksums")
    payload = {k: v for k, v in stored.items() if k not in ("key", "checksums")}
    if not isinstance(checksums, dict) or set(checksums) != set(payload) or any(
            checksums[k] != payload_digest(v) for k, v in payload.items()):
        warnings.warn(f"the cache file {path} does not match its checksum (damaged or edited); rebuilding it from "
                      f"its sources", stacklevel=2)
        return None
    return stored


def save_atomic(path: Path, key: dict[str, Any], **payload: Any) -> bool:
    """Write ``{"key": key, "checksums": {name: payload_digest(value)}, **payload}`` to ``path`` atomically;
    returns False (with a warning) when the folder cannot be written (a read-only data folder: the data is then
    rebuilt by every run)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        checksums = {name: payload_digest(value) for name, value in payload.items()}
        torch.save({"key": key, "checksums": checksums, **payload}, tmp)
        os.replace(tmp, path)
        return True
    except OSError as err:
        warnings.warn(f"cannot write the cache file {path} ({err}); set dataset.cache_dir to a writable folder "
                      f"to avoid rebuilding it every run", stacklevel=2)
        tmp.unlink(missing_ok=True)
        return False
