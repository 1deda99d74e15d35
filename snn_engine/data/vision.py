"""Real image data sets read from disk through torchvision, with the paper's recipes through timm.

* :class:`MNISTData`: IDX files (raw or ``.gz``, read in place) at ``<root>/MNIST/raw``, padded 28 -> 32.
* :class:`CIFARData`: the python pickle folders ``<root>/cifar-10-batches-py`` or
  ``<root>/cifar-100-python``; ``variant`` picks CIFAR-10 or CIFAR-100.
* :class:`ImageFolderData`: ``<root>/train/<class>/*`` and ``<root>/val/<class>/*`` (ImageNet-1K),
  DeiT/timm training recipe (RandAugment, random erasing, mixup/cutmix, repeated augmentation).

The validation split of MNIST and CIFAR is the official test split. Nothing is downloaded unless
``download=True``.
"""

from __future__ import annotations

import gzip
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode
from torchvision.transforms import v2 as T

from snn_engine.data.base import VisionData, float_pair, float_tuple
from snn_engine.errors import UserError

MNIST_MEAN, MNIST_STD = (0.1307,), (0.3081,)
#: the reference's CIFAR normalisation (mixer_snn_reference.md section 4.5), used for CIFAR-100 too
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


# --------------------------------------------------------------------------------------------- MNIST
def read_idx(path: Path) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (MNIST format), raw or gzip-compressed.

    Returns ``uint8 [N, H, W]`` for image files and ``uint8 [N]`` for label files; raises
    :class:`UserError` when the file is not a valid unsigned-byte IDX file.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise UserError(f"cannot read MNIST file {path} ({err}); delete it and restore a good copy") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (bad header); restore the original MNIST file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise UserError(f"{path} is truncated inside its header; restore the original MNIST file")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise UserError(f"{path} is truncated: header says {dims}, found {body.size} bytes; restore the file")
    return torch.from_numpy(body.reshape(dims).copy())


class MNISTFiles(torchvision.datasets.MNIST):
    """torchvision ``MNIST`` that also reads the ``.gz`` files in place (works on read-only folders).

    ``data`` is ``uint8 [N, 28, 28]``, ``targets`` ``int64 [N]``; items go through ``transform`` as PIL.
    """

    STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    @property
    def raw_folder(self) -> str:  # torchvision names the folder after the class
        return str(Path(self.root) / "MNIST" / "raw")

    @property
    def processed_folder(self) -> str:
        return str(Path(self.root) / "MNIST" / "processed")

    def _file(self, stem: str) -> Path | None:
        for name in (stem, stem + ".gz"):
            if (Path(self.raw_folder) / name).is_file():
                return Path(self.raw_folder) / name
        return None

    def _check_exists(self) -> bool:
        return all(self._file(stem) is not None for stem in self.STEMS)

    def _load_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        prefix = "train" if self.train else "t10k"
        images = read_idx(self._file(f"{prefix}-images-idx3-ubyte"))
        labels = read_idx(self._file(f"{prefix}-labels-idx1-ubyte")).long()
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"MNIST files in {self.raw_folder} disagree: images {tuple(images.shape)}, "
                            f"labels {tuple(labels.shape)}; restore the original files")
        return images, labels


class MNISTData(VisionData):
    """MNIST digits: 1 channel, 10 classes, 28 px padded with background to ``image_size`` (default 32).

    Args:
        root: folder holding ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
        mean, std: normalisation (per channel).
        random_shift: training-time augmentation: each training digit moved by up to this many pixels in x and
            y (a random crop of the image zero-padded by ``random_shift``); 0 (default) turns it off.
        Other arguments: see :class:`~snn_engine.data.base.VisionData`.
    Items: ``(float32 [1, S, S], int)``; validation (the official test split) is never augmented.
    """

    title = "MNIST"
    default_subdir = root_holds = "MNIST/raw"

    def __init__(self, name: str = "mnist", num_classes: int = 10, in_chans: int = 1, image_size: int = 32,
                 batch_size: int = 64, num_workers: int = 2, repeated_aug: int = 0, root=None,
                 download: bool = False, mean=MNIST_MEAN, std=MNIST_STD, mixup=None, random_shift: int = 0) -> None:
        super().__init__(name, num_classes, in_chans, image_size, batch_size, num_workers, repeated_aug,
                         root=root, download=download, mixup=mixup)
        if self.in_chans != 1 or self.num_classes != 10:
            raise UserError(f"MNIST has in_chans=1 and num_classes=10; got dataset.in_chans={in_chans}, "
                            f"dataset.num_classes={num_classes}")
        if int(random_shift) < 0 or int(random_shift) >= self.image_size // 2:
            raise UserError(f"dataset.random_shift={random_shift} must be between 0 (off) and "
                            f"{self.image_size // 2 - 1} pixels")
        self.mean, self.std = float_tuple(mean, 1, "dataset.mean"), float_tuple(std, 1, "dataset.std")
        self.random_shift = int(random_shift)

    def transform(self, train: bool = False) -> Callable:
        """PIL digit (28x28) -> ``float32 [1, S, S]``: zero padding when S >= 28, else resizing; for training,
        a random shift of up to ``random_shift`` pixels."""
        extra = self.image_size - 28
        size = [T.Pad([extra // 2, extra // 2, extra - extra // 2, extra - extra // 2])] if extra >= 0 \
            else [T.Resize((self.image_size, self.image_size), antialias=True)]
        shift = [T.RandomCrop(self.image_size, padding=self.random_shift)] if train and self.random_shift else []
        return T.Compose([T.ToImage(), *size, *shift, T.ToDtype(torch.float32, scale=True),
                          T.Normalize(self.mean, self.std)])

    def build(self, train: bool) -> Dataset:
        """The train split (60k) or the test split (10k) used for validation."""
        root = self.require_root()
        try:
            return MNISTFiles(str(root), train=train, transform=self.transform(train))
        except RuntimeError:
            if self.download:
                _download(lambda: torchvision.datasets.MNIST(str(root), train=train, download=True), self.title)
                return MNISTFiles(str(root), train=train, transform=self.transform(train))
            raise self.missing(root / "MNIST" / "raw", "train-images-idx3-ubyte, train-labels-idx1-ubyte, "
                               "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (or the same with .gz)",
                               download_hint=True) from None


# --------------------------------------------------------------------------------------------- CIFAR
def _unchecked(cls: type) -> type:
    """A subclass of a torchvision CIFAR class that checks files exist but not their md5 sums.

    torchvision compares every pickle with the md5 of the official release, which rejects re-packed
    copies and test fixtures; a corrupt file still fails when it is unpickled.
    """
    attrs = {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None},
        "__doc__": f"torchvision {cls.__name__} without md5 checks; data ``uint8 [N, 32, 32, 3]``.",
    }
    return type(f"{cls.__name__}Files", (cls,), attrs)


CIFAR10Files = _unchecked(torchvision.datasets.CIFAR10)
CIFAR100Files = _unchecked(torchvision.datasets.CIFAR100)
_CIFAR = {"cifar10": (torchvision.datasets.CIFAR10, CIFAR10Files, 10),
          "cifar100": (torchvision.datasets.CIFAR100, CIFAR100Files, 100)}


class CIFARData(VisionData):
    """CIFAR-10 or CIFAR-100 (``variant``) from torchvision's python pickle folders.

    Args:
        variant: ``"cifar10"`` (folder ``<root>/cifar-10-batches-py``) or ``"cifar100"``
            (``<root>/cifar-100-python``).
        crop_scale: RandomResizedCrop area range for training, or ``None`` for no random crop (Resize).
        hflip: probability of a horizontal flip during training (0 = off).
        interpolation: resampling used to reach ``image_size`` (``bilinear``, ``bicubic``, ``nearest``).
        mean, std: per-channel normalisation (the reference's CIFAR-10 numbers by default).
        Other arguments: see :class:`~snn_engine.data.base.VisionData`.
    Items: ``(float32 [3, S, S], int)``. Train: RandomResizedCrop(S) + flip; eval: Resize((S, S)).
    """

    def __init__(self, variant: str = "cifar10", name: str | None = None, num_classes: int | None = None,
                 in_chans: int = 3, image_size: int = 32, batch_size: int = 64, num_workers: int = 4,
                 repeated_aug: int = 0, root=None, download: bool = False, crop_scale=(0.08, 1.0),
                 hflip: float = 0.5, interpolation: str = "bilinear", mean=CIFAR_MEAN, std=CIFAR_STD,
                 mixup=None) -> None:
        if variant not in _CIFAR:
            raise UserError(f"dataset.variant must be one of {', '.join(_CIFAR)}, got {variant!r}")
        self.variant = variant
        expected_classes = _CIFAR[variant][2]
        super().__init__(name or variant, expected_classes if num_classes is None else num_classes, in_chans,
                         image_size, batch_size, num_workers, repeated_aug, root=root, download=download,
                         mixup=mixup)
        if self.num_classes != expected_classes or self.in_chans != 3:
            raise UserError(f"{variant} has num_classes={expected_classes} and in_chans=3; got "
                            f"dataset.num_classes={num_classes}, dataset.in_chans={in_chans}")
        self.title = "CIFAR-10" if variant == "cifar10" else "CIFAR-100"
        self.default_subdir = self.root_holds = _CIFAR[variant][0].base_folder
        self.crop_scale = float_pair(crop_scale, "dataset.crop_scale")
        self.hflip = float(hflip)
        self.interpolation = _interpolation(interpolation)
        self.mean, self.std = float_tuple(mean, 3, "dataset.mean"), float_tuple(std, 3, "dataset.std")

    def transform(self, train: bool) -> Callable:
        """PIL 32x32 RGB -> ``float32 [3, S, S]`` (random crop/flip when ``train``)."""
        size = (self.image_size, self.image_size)
        if train and self.crop_scale is not None:
            steps = [T.RandomResizedCrop(size, scale=self.crop_scale, interpolation=self.interpolation)]
        else:
            steps = [T.Resize(size, interpolation=self.interpolation)]
        if train and self.hflip > 0:
            steps.append(T.RandomHorizontalFlip(self.hflip))
        return T.Compose([T.ToImage(), *steps, T.ToDtype(torch.float32, scale=True), T.Normalize(self.mean, self.std)])

    def build(self, train: bool) -> Dataset:
        """The 50k training images or the 10k test images (used for validation)."""
        root = self.require_root()
        official, unchecked, _ = _CIFAR[self.variant]
        if self.download and not (root / official.base_folder).is_dir():
            _download(lambda: official(str(root), train=train, download=True), self.title)
        folder = root / self.default_subdir
        files = [name for name, _ in official.train_list + official.test_list] + [official.meta["filename"]]
        if not all((folder / f).is_file() for f in files):
            raise self.missing(folder, ", ".join(files) + " (the python version of the data set)",
                               download_hint=True)
        try:
            return unchecked(str(root), train=train, transform=self.transform(train))
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError, UnicodeDecodeError) as err:
            raise UserError(f"{self.title} files in {folder} are corrupt ({type(err).__name__}: {err}); "
                            f"delete the folder and restore it (or set dataset.download=true)") from None


# ---------------------------------------------------------------------------------- ImageNet / folders
class ImageFolderData(VisionData):
    """Images in class folders (ImageNet-1K), with the DeiT/timm recipe of the spiking-MLP paper.

    Args:
        root: folder with ``train/<class>/*`` and ``val/<class>/*`` (val sorted into class folders).
        auto_augment: timm RandAugment/AutoAugment string (``rand-m9-mstd0.5-inc1``) or ``None``.
        color_jitter: colour jitter strength; timm ignores it while ``auto_augment`` is set.
        re_prob, re_mode, re_count: timm random erasing (probability 0 = off).
        crop_scale, crop_ratio: RandomResizedCrop ranges (area fraction and aspect ratio).
        hflip: horizontal flip probability.
        interpolation: ``bicubic`` (the recipe), ``bilinear``, ...
        crop_pct: eval resize is ``floor(image_size / crop_pct)`` then a centre crop (0.875: 256 -> 224).
        mean, std: per-channel normalisation (ImageNet's by default).
        Other arguments: see :class:`~snn_engine.data.base.VisionData`.
    Items: ``(float32 [3, S, S], int)``, labels in sorted class-folder order.
    """

    title = "ImageNet"
    default_subdir = "imagenet"

    def __init__(self, name: str = "imagenet", num_classes: int = 1000, in_chans: int = 3, image_size: int = 224,
                 batch_size: int = 64, num_workers: int = 8, repeated_aug: int = 3, root=None,
                 auto_augment: str | None = "rand-m9-mstd0.5-inc1", color_jitter: float | None = 0.4,
                 re_prob: float = 0.25, re_mode: str = "pixel", re_count: int = 1, crop_scale=(0.08, 1.0),
                 crop_ratio=(3 / 4, 4 / 3), hflip: float = 0.5, interpolation: str = "bicubic",
                 crop_pct: float = 0.875, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), mixup=None,
                 download: bool = False) -> None:
        super().__init__(name, num_classes, in_chans, image_size, batch_size, num_workers, repeated_aug,
                         root=root, download=False, mixup=mixup)
        if download:
            raise UserError(f"{self.title} cannot be downloaded automatically; set dataset.download=false "
                            "and point paths.data or dataset.root at a local copy")
        _interpolation(interpolation)
        self.auto_augment = auto_augment or None
        self.color_jitter = None if color_jitter in (None, 0) else float(color_jitter)
        self.re_prob, self.re_mode, self.re_count = float(re_prob), str(re_mode), int(re_count)
        self.crop_scale = float_pair(crop_scale, "dataset.crop_scale") or (1.0, 1.0)
        self.crop_ratio = float_pair(crop_ratio, "dataset.crop_ratio") or (1.0, 1.0)
        self.hflip, self.interpolation = float(hflip), str(interpolation)
        if not 0 < float(crop_pct) <= 1:
            raise UserError(f"dataset.crop_pct must be in (0, 1], got {crop_pct}")
        self.crop_pct = float(crop_pct)
        self.mean, self.std = float_tuple(mean, 3, "dataset.mean"), float_tuple(std, 3, "dataset.std")

    def transform(self, train: bool) -> Callable:
        """timm ``create_transform``: PIL image of any size -> ``float32 [3, S, S]``."""
        from timm.data import create_transform

        if not train:
            return create_transform(self.image_size, is_training=False, interpolation=self.interpolation,
                                    crop_pct=self.crop_pct, mean=self.mean, std=self.std)
        try:
            return create_transform(
                self.image_size, is_training=True, auto_augment=self.auto_augment, color_jitter=self.color_jitter,
                interpolation=self.interpolation, re_prob=self.re_prob, re_mode=self.re_mode,
                re_count=self.re_count, scale=self.crop_scale, ratio=self.crop_ratio, hflip=self.hflip,
                mean=self.mean, std=self.std)
        except (AssertionError, ValueError, KeyError) as err:
            raise UserError(f"bad augmentation setting for {self.name} (dataset.auto_augment="
                            f"{self.auto_augment!r}, dataset.re_mode={self.re_mode!r}): {err!r}") from None

    def build(self, train: bool) -> Dataset:
        """``ImageFolder`` on ``<root>/train`` or ``<root>/val`` with the matching transform."""
        root = self.require_root()
        expected = "train/<class>/*.JPEG and val/<class>/*.JPEG"
        split = root / ("train" if train else "val")
        if not split.is_dir() or not any(p.is_dir() for p in split.iterdir()):
            raise self.missing(root, expected)
        try:
            data = torchvision.datasets.ImageFolder(str(split), transform=self.transform(train))
        except FileNotFoundError as err:
            raise self.missing(root, f"{expected} ({err})") from None
        if len(data.classes) != self.num_classes:
            raise UserError(f"{split} has {len(data.classes)} class folders but dataset.num_classes="
                            f"{self.num_classes}; fix the folder or set dataset.num_classes={len(data.classes)}")
        if not train and (root / "train").is_dir():
            train_classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
            if train_classes != data.classes:
                raise UserError(f"{split} class folders differ from {root / 'train'}; the validation images "
                                "must be sorted into the same <class> folders as train")
        return data


# ------------------------------------------------------------------------------------------- helpers
def _interpolation(name: str) -> InterpolationMode:
    try:
        return InterpolationMode(str(name).lower())
    except ValueError:
        allowed = ", ".join(m.value for m in InterpolationMode)
        raise UserError(f"dataset.interpolation must be one of {allowed}, got {name!r}") from None


def _download(fetch: Callable[[], Any], title: str) -> None:
    try:
        fetch()
    except Exception as err:  # network errors come in many types
        raise UserError(f"downloading {title} failed ({type(err).__name__}: {err}); check the network or "
                        "download it by hand and set dataset.download=false") from None
