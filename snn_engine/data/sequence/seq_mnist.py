"""Images read as sequences: sequential MNIST (sMNIST), permuted sMNIST (psMNIST) and embedded shapes.

* :class:`SeqMNIST`: the MNIST IDX files (raw or ``.gz``) at ``<root>/MNIST/raw``, each digit read pixel
  by pixel: ``float32 [784, 1]`` in ``[0, 1]`` (as s4). ``permute=True`` applies one fixed permutation of
  the 784 steps to every split: ``"random"`` = ``numpy.random.RandomState(perm_seed).permutation(784)``
  (seed 92916 as earlier psMNIST work), or ``"bitreversal"`` (s4's default).
* :class:`SeqShapes`: the embedded shapes images (:func:`snn_engine.data.shapes.generate_shapes`) as
  sequences, no files: ``mode="pixels"`` is grayscale ``[S*S, 1]`` (1024 steps at 32 px), ``mode="rows"``
  is one step per image row with the RGB pixels of the row as features ``[S, 3*S]`` (32 x 96).

Splits of SeqMNIST: ``train`` = the official training set minus a ``val_split`` fraction held out with a
fixed generator (s4: 10%, seed 42), ``val`` = that held-out part (the official test set when
``val_split=0``), ``test`` = the official test set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from snn_engine.data.sequence import SequenceData, fraction, positive_int
from snn_engine.errors import UserError

MNIST_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def bitreversal_permutation(n: int) -> np.ndarray:
    """s4's bit-reversal order of ``range(n)``: indices ``rev(j)`` for ``j < 2**ceil(log2 n)``, kept if ``< n``."""
    bits = max(1, int(np.ceil(np.log2(n))))
    rev = [int(f"{j:0{bits}b}"[::-1], 2) for j in range(1 << bits)]
    return np.array([r for r in rev if r < n], dtype=np.int64)


def held_out_split(n: int, val_split: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices ``(train, val)`` of a fixed random hold-out of ``round(n * val_split)`` items."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed)))
    n_val = int(round(n * val_split))
    return order[n_val:].sort().values, order[:n_val].sort().values


class PixelSequences(Dataset):
    """Stored ``uint8 [N, L, D]`` sequences served as ``float32 [L, D]``: ``(x / 255 - mean) / std``.

    Args:
        data: ``uint8 [N, L, D]``.
        labels: ``int64 [N]``.
        perm: optional ``int64 [L]`` order of the steps (applied to every item).
        mean, std: scalar normalisation after scaling to ``[0, 1]``.
    """

    def __init__(self, data: torch.Tensor, labels: torch.Tensor, perm: torch.Tensor | None = None,
                 mean: float = 0.0, std: float = 1.0) -> None:
        self.data, self.labels, self.perm = data, labels.long(), perm
        self.mean, self.std = float(mean), float(std)

    def __len__(self) -> int:
        return self.data.shape[0]

    def _convert(self, x: torch.Tensor) -> torch.Tensor:
        if self.perm is not None:
            x = x.index_select(-2, self.perm)
        return x.to(torch.float32).mul_(1.0 / (255.0 * self.std)).sub_(self.mean / self.std)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._convert(self.data[index]), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self._convert(self.data[idx]).unbind(0), self.labels[idx].tolist()))


class SeqMNIST(SequenceData):
    """Sequential MNIST (``permute=False``) or permuted sequential MNIST (``permute=True``), L = 784, d_input 1.

    Args:
        root: folder holding ``MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`` (or the raw folder).
        permute: apply the fixed permutation (psMNIST).
        permutation: ``"random"`` (seeded by ``perm_seed``) or ``"bitreversal"``.
        perm_seed: seed of the random permutation.
        val_split: fraction of the training set held out as ``val`` (0: ``val`` is the test set).
        split_seed: seed of the hold-out.
        mean, std: normalisation of pixels in ``[0, 1]`` (default none, as s4).
        Other arguments: see :class:`~snn_engine.data.sequence.SequenceData`.
    """

    title = "MNIST"
    default_subdir = "MNIST/raw"
    root_holds = "MNIST/raw"
    splits = ("train", "val", "test")

    def __init__(self, name: str | None = None, num_classes: int = 10, permute: bool = False,
                 permutation: str = "random", perm_seed: int = 92916, val_split: float = 0.1, split_seed: int = 42,
                 mean: float = 0.0, std: float = 1.0, root=None, batch_size: int = 50, num_workers: int = 0) -> None:
        super().__init__(name or ("psmnist" if permute else "smnist"), num_classes, 784, d_input=1,
                         batch_size=batch_size, num_workers=num_workers, root=root)
        if self.num_classes != 10:
            raise UserError(f"MNIST has 10 classes; set dataset.num_classes=10, got {num_classes}")
        if permutation not in ("random", "bitreversal"):
            raise UserError(f"dataset.permutation must be 'random' or 'bitreversal', got {permutation!r}")
        self.permute, self.permutation, self.perm_seed = bool(permute), permutation, int(perm_seed)
        self.val_split, self.split_seed = fraction(val_split, "dataset.val_split"), int(split_seed)
        self.mean, self.std = float(mean), float(std)
        if self.std <= 0:
            raise UserError(f"dataset.std must be > 0, got {std}")
        self._arrays: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def perm(self) -> torch.Tensor | None:
        """The fixed ``int64 [784]`` step order, or ``None`` without ``permute``."""
        if not self.permute:
            return None
        if self.permutation == "bitreversal":
            return torch.from_numpy(bitreversal_permutation(784))
        return torch.from_numpy(np.random.RandomState(self.perm_seed).permutation(784).astype(np.int64))

    def _file(self, stem: str) -> Path:
        root = self.require_root()
        for folder in (root / "MNIST" / "raw", root / "raw", root):
            for name in (stem, stem + ".gz"):
                if (folder / name).is_file():
                    return folder / name
        raise self.missing(root / "MNIST" / "raw", f"{stem} (or {stem}.gz) in <root>/MNIST/raw")

    def _official(self, which: str) -> tuple[torch.Tensor, torch.Tensor]:
        if which not in self._arrays:
            from snn_engine.data.vision import read_idx  # imports torchvision: only when MNIST is read

            images = read_idx(self._file(MNIST_STEMS[which][0]))
            labels = read_idx(self._file(MNIST_STEMS[which][1]))
            if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
                raise UserError(f"MNIST {which} files disagree: images {images.shape}, labels {labels.shape}; "
                                f"restore the original files")
            self._arrays[which] = (images.reshape(-1, 784, 1), labels.long())
        return self._arrays[which]

    def build(self, split: str) -> PixelSequences:
        if split == "test" or (split == "val" and self.val_split == 0):
            data, labels = self._official("test")
        else:
            data, labels = self._official("train")
            if self.val_split > 0:
                train_idx, val_idx = held_out_split(len(labels), self.val_split, self.split_seed)
                idx = train_idx if split == "train" else val_idx
                data, labels = data[idx], labels[idx]
        return PixelSequences(data, labels, self.perm, self.mean, self.std)


def rgb_to_gray(images: torch.Tensor) -> torch.Tensor:
    """``uint8 [N, 3, H, W]`` -> ``uint8 [N, H, W]`` with ITU-R 601 luma weights (as PIL's ``convert("L")``)."""
    w = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
    return ((images.to(torch.int32) * w).sum(1) + 500).div(1000, rounding_mode="floor").to(torch.uint8)


class SeqShapes(SequenceData):
    """The embedded shapes images as sequences (no files; deterministic by ``seed``).

    Args:
        mode: ``"pixels"``: grayscale, one pixel per step, ``[S*S, 1]``; ``"rows"``: one row per step,
            RGB pixels of the row as features (``r0 g0 b0 r1 ...``), ``[S, 3*S]``.
        image_size: side S of the generated images.
        train_size, val_size, seed: as :class:`snn_engine.data.shapes.ShapesData`.
        Other arguments: see :class:`~snn_engine.data.sequence.SequenceData`.
    Items are normalised with the shapes mean/std (about zero mean, unit variance).
    """

    title = "Shapes (sequence)"

    def __init__(self, name: str = "seq_shapes", num_classes: int = 10, mode: str = "pixels", image_size: int = 32,
                 train_size: int = 6000, val_size: int = 1000, seed: int = 0, batch_size: int = 64,
                 num_workers: int = 0, root=None) -> None:
        from snn_engine.data.shapes import CLASS_NAMES

        if mode not in ("pixels", "rows"):
            raise UserError(f"dataset.mode must be 'pixels' (S*S steps x 1) or 'rows' (S steps x 3S), got {mode!r}")
        size = positive_int(image_size, "dataset.image_size")
        if size < 16:
            raise UserError(f"dataset.image_size must be >= 16 for shapes, got {image_size}")
        seq_len, d_input = (size * size, 1) if mode == "pixels" else (size, 3 * size)
        super().__init__(name, num_classes, seq_len, d_input=d_input, batch_size=batch_size, num_workers=num_workers)
        if not 2 <= self.num_classes <= len(CLASS_NAMES):
            raise UserError(f"dataset.num_classes must be between 2 and {len(CLASS_NAMES)} for shapes, "
                            f"got {num_classes}")
        self.mode, self.image_size, self.seed = mode, size, int(seed)
        self.train_size = positive_int(train_size, "dataset.train_size")
        self.val_size = positive_int(val_size, "dataset.val_size")

    def build(self, split: str) -> PixelSequences:
        from snn_engine.data.shapes import SHAPES_MEAN, SHAPES_STD, generate_shapes

        n = self.train_size if split == "train" else self.val_size
        images, labels = generate_shapes(n, self.seed, split, self.image_size, self.num_classes)
        s = self.image_size
        if self.mode == "pixels":
            data = rgb_to_gray(images).reshape(n, s * s, 1)
        else:
            data = images.permute(0, 2, 3, 1).reshape(n, s, 3 * s).contiguous()
        return PixelSequences(data, labels, None, SHAPES_MEAN, SHAPES_STD)
