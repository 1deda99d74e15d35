"""The shared base of every vision data set: attributes the engine reads, mixup, clear data errors.

A data-set config (``conf/dataset/*.yaml``) instantiates a subclass of :class:`VisionData`. The engine
reads ``name, num_classes, in_chans, image_size, batch_size, num_workers, repeated_aug`` and calls
``train_set()``, ``val_set()`` and ``mixup_fn()``. Items of both sets are ``(image, label)`` with
``image`` a normalised ``float32`` tensor ``[in_chans, image_size, image_size]`` and ``label`` an int.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from snn_engine.errors import UserError

MIXUP_KEYS = ("mixup_alpha", "cutmix_alpha", "cutmix_minmax", "prob", "switch_prob", "mode",
              "label_smoothing", "correct_lam")
MIXUP_MODES = ("batch", "pair", "elem")


def plain(value: Any) -> Any:
    """Turn an OmegaConf container (or anything else) into plain Python lists/dicts/scalars."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def float_pair(value: Any, key: str) -> tuple[float, float] | None:
    """Read an optional ``[low, high]`` config value (e.g. a crop scale) as a float tuple."""
    value = plain(value)
    if value is None:
        return None
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
        raise UserError(f"{key} must be a pair [low, high] or null, got {value!r}")
    low, high = float(value[0]), float(value[1])
    if not 0 < low <= high:
        raise UserError(f"{key} must satisfy 0 < low <= high, got {value!r}")
    return low, high


def float_tuple(value: Any, length: int, key: str) -> tuple[float, ...]:
    """Read a per-channel config value (mean, std) as a float tuple of ``length`` entries."""
    value = plain(value)
    if isinstance(value, (int, float)):
        value = [value] * length
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != length:
        raise UserError(f"{key} must list {length} numbers (one per channel), got {value!r}")
    return tuple(float(v) for v in value)


class VisionData:
    """Base class of the image-classification data sets; one instance per ``dataset`` config.

    Args:
        name: short identifier used in run names and logs (``shapes``, ``cifar10``, ...).
        num_classes: number of classes K; labels are ints in ``[0, K)``.
        in_chans: image channels C of the tensors the sets yield.
        image_size: side S of the square tensors ``[C, S, S]`` the sets yield.
        batch_size: batch size per device (the engine multiplies by the world size for logging).
        num_workers: DataLoader worker processes per device.
        repeated_aug: repeats per index for repeated-augmentation sampling (0 or 1 = off); the engine
            builds the sampler, this object only carries the number.
        root: folder holding the data on disk (``None`` for generated data).
        download: allow a download when the data is missing (never implied).
        mixup: timm Mixup/CutMix settings (keys ``mixup_alpha, cutmix_alpha, prob, switch_prob,
            mode, label_smoothing``, optionally ``cutmix_minmax, correct_lam``) or ``None`` for off.
    """

    #: human-readable name used in error messages
    title = "data set"
    #: where the data sits below ``paths.data`` for the default ``root``, for error messages
    default_subdir = ""
    #: what ``dataset.root`` must contain when the files sit in a fixed sub-folder of it (MNIST, CIFAR)
    root_holds = ""

    def __init__(self, name: str, num_classes: int, in_chans: int, image_size: int,
                 batch_size: int = 64, num_workers: int = 0, repeated_aug: int = 0,
                 root: str | os.PathLike | None = None, download: bool = False,
                 mixup: Mapping[str, Any] | None = None) -> None:
        self.name = str(name)
        self.num_classes = self._positive_int(num_classes, "dataset.num_classes")
        self.in_chans = self._positive_int(in_chans, "dataset.in_chans")
        self.image_size = self._positive_int(image_size, "dataset.image_size")
        self.batch_size = self._positive_int(batch_size, "dataset.batch_size")
        self.num_workers = self._positive_int(num_workers, "dataset.num_workers", allow_zero=True)
        self.repeated_aug = self._positive_int(repeated_aug, "dataset.repeated_aug", allow_zero=True)
        self.root = None if root is None else Path(os.path.expanduser(str(root))).absolute()
        self.download = bool(download)
        self.mixup = self._check_mixup(mixup)
        if self.mixup_enabled and self.batch_size % 2:
            raise UserError(f"dataset.batch_size must be even while mixup/cutmix is on (timm mixes pairs), got "
                            f"{self.batch_size}; change it or set dataset.mixup=null")

    # ----------------------------------------------------------------------------- the engine's API
    def train_set(self) -> Dataset:
        """The training split; items ``(float32 [C, S, S] normalised, int label)``."""
        return self.build(train=True)

    def val_set(self) -> Dataset:
        """The validation split; items ``(float32 [C, S, S] normalised, int label)``."""
        return self.build(train=False)

    def mixup_fn(self) -> Callable | None:
        """A timm ``Mixup`` for this data set, or ``None`` when mixup and cutmix are both off.

        The engine applies it to a training batch: ``x, y_soft = fn(x, y)`` with ``x`` float
        ``[B, C, S, S]`` (B even), ``y`` int64 ``[B]`` and ``y_soft`` float ``[B, K]`` whose rows sum to 1
        (label smoothing folded in).
        """
        if not self.mixup_enabled:
            return None
        from timm.data import Mixup

        return Mixup(num_classes=self.num_classes, **self.mixup)

    @property
    def mixup_enabled(self) -> bool:
        """Whether :meth:`mixup_fn` returns a mixer (mixup or cutmix has a positive alpha)."""
        cfg = self.mixup
        return cfg is not None and (cfg["mixup_alpha"] > 0 or cfg["cutmix_alpha"] > 0
                                    or cfg.get("cutmix_minmax") is not None)

    # ------------------------------------------------------------------------------ for subclasses
    def build(self, train: bool) -> Dataset:
        """Build one split (``train=True`` for training, else validation); subclasses implement it."""
        raise NotImplementedError

    def require_root(self) -> Path:
        """The data root, or a :class:`UserError` explaining how to set it when it is unset."""
        if self.root is None:
            raise self.missing("<unset>", "a data folder")
        return self.root

    def missing(self, where: Path | str, expected: str, download_hint: bool = False) -> UserError:
        """The error for data absent from ``where``; ``expected`` describes the layout looked for."""
        below = f"{self.title} at <paths.data>/{self.default_subdir}" if self.default_subdir \
            else f"{self.title} at <paths.data>"
        root_hint = f"<folder holding {self.root_holds}>" if self.root_holds else f"/path/to/{self.name}"
        fix = f"set paths.data=/your/data ({below}) or dataset.root={root_hint}"
        if download_hint:
            fix += ", or dataset.download=true to fetch it"
        return UserError(f"{self.title} not found at {where}: expected {expected}; {fix}")

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in (
            "name", "num_classes", "in_chans", "image_size", "batch_size", "num_workers", "repeated_aug"))
        return f"{type(self).__name__}({fields})"

    # ----------------------------------------------------------------------------------- checking
    @staticmethod
    def _positive_int(value: Any, key: str, allow_zero: bool = False) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if allow_zero else 1):
            raise UserError(f"{key} must be an integer >= {0 if allow_zero else 1}, got {value!r}")
        return value

    @staticmethod
    def _check_mixup(mixup: Any) -> dict[str, Any] | None:
        mixup = plain(mixup)
        if mixup is None or mixup is False:
            return None
        if not isinstance(mixup, Mapping):
            raise UserError(f"dataset.mixup must be a mapping of timm Mixup settings or null, got {mixup!r}")
        unknown = sorted(set(mixup) - set(MIXUP_KEYS))
        if unknown:
            raise UserError(f"dataset.mixup has unknown key(s) {unknown}; allowed: {', '.join(MIXUP_KEYS)}")
        cfg = {"mixup_alpha": 0.0, "cutmix_alpha": 0.0, "prob": 1.0, "switch_prob": 0.5, "mode": "batch",
               "label_smoothing": 0.1, **mixup}
        for key in ("mixup_alpha", "cutmix_alpha", "prob", "switch_prob", "label_smoothing"):
            try:
                cfg[key] = float(cfg[key])
            except (TypeError, ValueError):
                raise UserError(f"dataset.mixup.{key} must be a number, got {cfg[key]!r}") from None
        for key in ("prob", "switch_prob", "label_smoothing"):
            if not 0.0 <= cfg[key] <= 1.0:
                raise UserError(f"dataset.mixup.{key} must be in [0, 1], got {cfg[key]}")
        if cfg["mode"] not in MIXUP_MODES:
            raise UserError(f"dataset.mixup.mode must be one of {', '.join(MIXUP_MODES)}, got {cfg['mode']!r}")
        if cfg.get("cutmix_minmax") is not None:
            cfg["cutmix_minmax"] = list(float_pair(cfg["cutmix_minmax"], "dataset.mixup.cutmix_minmax"))
        return cfg
