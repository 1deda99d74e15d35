"""Sequence data sets behind one interface (:class:`SequenceData`), instantiated from ``conf/dataset/*.yaml``.

Every object carries ``name, num_classes, batch_size, num_workers, repeated_aug, seq_len`` and either
``d_input`` (float sequences, items ``(float32 [L, d_input], int)``) or ``vocab_size`` (token sequences,
items ``(int64 [L_i], int)`` with ``d_input = None``), and provides ``train_set()``, ``val_set()``,
``test_set()`` (where the split exists), ``collate_fn()`` and ``mixup_fn()`` (always ``None``).

Embedded (no files): :class:`ListOpsGenerated` (listops.py), :class:`SeqShapes` (seq_mnist.py).
On disk: :class:`ListOpsTSV`, :class:`LRAText`, :class:`LRARetrieval`, :class:`LRAImage`,
:class:`LRAPathfinder` (also Path-X), :class:`SeqMNIST` (sMNIST/psMNIST), :class:`SpeechCommands`,
:class:`DVSGesture` (through ``tonic``). Submodules load on first use (no torchvision import here).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from snn_engine.errors import UserError


class SequenceData:
    """Base class of the sequence-classification data sets; one instance per ``dataset`` config.

    Args:
        name: short identifier used in run names and logs.
        num_classes: number of classes K; labels are ints in ``[0, K)``.
        seq_len: the longest sequence L the sets yield (token sets: after truncation; padding is per batch).
        d_input: features per step of float sequences, ``None`` for token sequences.
        vocab_size: number of token ids (``0`` is always padding) of token sequences, else ``None``.
        batch_size: batch size per device.
        num_workers: DataLoader worker processes per device.
        root: folder holding the data on disk (``None`` for generated data).
    """

    title = "data set"
    #: where the data sits below ``paths.data`` for the default ``root``, for error messages
    default_subdir = ""
    #: what ``dataset.root`` must contain, for error messages
    root_holds = ""
    #: repeated augmentation is a vision recipe; the engine reads the attribute
    repeated_aug = 0

    def __init__(self, name: str, num_classes: int, seq_len: int, d_input: int | None = None,
                 vocab_size: int | None = None, batch_size: int = 32, num_workers: int = 0,
                 root: str | os.PathLike | None = None) -> None:
        self.name = str(name)
        self.num_classes = positive_int(num_classes, "dataset.num_classes")
        self.seq_len = positive_int(seq_len, "dataset.seq_len")
        self.d_input = None if d_input is None else positive_int(d_input, "dataset.d_input")
        self.vocab_size = None if vocab_size is None else positive_int(vocab_size, "dataset.vocab_size")
        self.batch_size = positive_int(batch_size, "dataset.batch_size")
        self.num_workers = positive_int(num_workers, "dataset.num_workers", allow_zero=True)
        self.root = None if root is None else Path(os.path.expanduser(str(root))).absolute()
        self._cache: dict[str, Dataset] = {}

    # ----------------------------------------------------------------------------- the engine's API
    def train_set(self) -> Dataset:
        """The training split."""
        return self._split("train")

    def val_set(self) -> Dataset:
        """The validation split."""
        return self._split("val")

    def test_set(self) -> Dataset:
        """The test split (raises :class:`UserError` when the data set has none)."""
        if "test" not in self.splits:
            raise UserError(f"{self.title} has no test split (splits: {', '.join(self.splits)}); evaluate on val")
        return self._split("test")

    def collate_fn(self) -> Callable | None:
        """The batching function for a DataLoader, or ``None`` for torch's default stacking."""
        return None

    def mixup_fn(self) -> None:
        """Sequence sets have no mixup."""
        return None

    # ------------------------------------------------------------------------------ for subclasses
    splits: tuple[str, ...] = ("train", "val")

    def build(self, split: str) -> Dataset:
        """Build one split (``"train"``, ``"val"`` or ``"test"``); subclasses implement it."""
        raise NotImplementedError

    def _split(self, split: str) -> Dataset:
        if split not in self._cache:
            self._cache[split] = self.build(split)
        return self._cache[split]

    def require_root(self) -> Path:
        """The data root, or a :class:`UserError` explaining how to set it when it is unset."""
        if self.root is None:
            raise self.missing("<unset>", self.root_holds or "a data folder")
        return self.root

    def find(self, *relative: str) -> Path | None:
        """The first of ``root/<r>``, ``root/lra_release/<r>``, ``root/lra_release/lra_release/<r>`` that
        exists for any ``r`` in ``relative`` (the LRA tarball nests some tasks one level deeper)."""
        root = self.require_root()
        for rel in relative:
            for base in (root, root / "lra_release", root / "lra_release" / "lra_release"):
                if (base / rel).exists():
                    return base / rel
        return None

    def missing(self, where: Path | str, expected: str) -> UserError:
        """The error for data absent from ``where``; ``expected`` describes the layout looked for."""
        below = f"{self.title} at <paths.data>/{self.default_subdir}" if self.default_subdir \
            else f"{self.title} at <paths.data>"
        return UserError(f"{self.title} not found at {where}: expected {expected}; set paths.data=/your/data "
                         f"({below}) or dataset.root=/path/to/{self.name}")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in (
            "name", "num_classes", "seq_len", "d_input", "vocab_size", "batch_size", "num_workers"))
        return f"{type(self).__name__}({fields})"


def positive_int(value: Any, key: str, allow_zero: bool = False) -> int:
    """``value`` as an int >= 1 (>= 0 with ``allow_zero``), else a :class:`UserError` naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
        raise UserError(f"{key} must be an integer >= {0 if allow_zero else 1}, got {value!r}")
    return value


def fraction(value: Any, key: str) -> float:
    """``value`` as a float in ``[0, 1)``, else a :class:`UserError` naming ``key``."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{key} must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= value < 1.0:
        raise UserError(f"{key} must be in [0, 1), got {value}")
    return value


_LAZY = {
    "ListOpsGenerated": "listops", "ListOpsTSV": "listops", "generate_listops": "listops",
    "evaluate_listops": "listops", "LISTOPS_VOCAB": "listops",
    "LRAText": "lra", "LRARetrieval": "lra", "LRAImage": "lra", "LRAPathfinder": "lra",
    "SeqMNIST": "seq_mnist", "SeqShapes": "seq_mnist",
    "SpeechCommands": "speech_commands", "DVSGesture": "dvs_gesture",
    "PadCollate": "collate", "pad_sequences": "collate",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["SequenceData", "positive_int", "fraction", *_LAZY]
