"""Files that are not checkpoints, as users and attackers hand them to ``eval.py``, ``trainer.resume`` and ``generate``.

:data:`BAD_FILES` pairs a name with the piece of the one-line error each must get; :func:`make` writes the file.
``forbidden_global`` would copy ``/etc/hostname`` to ``victim.txt`` beside it if it were ever unpickled in full.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

BAD_FILES = [
    ("tensor", "holds a Tensor, not a checkpoint"),
    ("list", "holds a list, not a checkpoint"),
    ("text", "it is not a PyTorch file (torch.save did not write it)"),
    ("empty", "it is empty"),
    ("truncated", "it is not a complete PyTorch file (truncated or corrupt"),
    ("forbidden_global", "it holds a pickled Python object (shutil.copyfile)"),
]


class _CopiesAFile:
    """Unpickled in full (``weights_only=False``), this would call ``shutil.copyfile(/etc/hostname, victim)``."""

    def __init__(self, victim: Path) -> None:
        self.victim = str(victim)

    def __reduce__(self):
        return shutil.copyfile, ("/etc/hostname", self.victim)


def make(kind: str, folder: Path) -> Path:
    """Write the bad file ``kind`` (a name of :data:`BAD_FILES`) into ``folder``; its path."""
    path = Path(folder) / f"{kind}.pt"
    if kind == "tensor":
        torch.save(torch.ones(3), path)
    elif kind == "list":
        torch.save([1, 2, 3], path)
    elif kind == "text":
        path.write_text("step,loss\n1,0.5\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(256)}, "step": 1}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif kind == "forbidden_global":
        torch.save({"model": {}, "config_raw": _CopiesAFile(Path(folder) / "victim.txt")}, path)
    else:
        raise ValueError(kind)
    return path


def assert_plain_line(line: str, path: Path, expected: str) -> None:
    """The message names the file, says what it is not, and carries none of torch's colour codes or advice."""
    assert str(path) in line and expected in line, line
    assert "\x1b" not in line and "weights_only" not in line and "WeightsUnpickler" not in line, line
