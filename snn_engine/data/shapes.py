"""Shapes: the embedded default data set, generated procedurally in memory (no download, no disk).

Ten classes of small RGB images, each a shape or texture patch drawn at a random position, size,
small rotation, foreground colour, background colour and brightness gradient, plus pixel noise:

    0 disk   1 ring   2 square outline   3 filled square   4 triangle (apex up or down)
    5 plus   6 horizontal stripes   7 vertical stripes   8 diagonal stripes   9 checkerboard

Everything is drawn by vectorised numpy from ``numpy.random.default_rng([seed, split])``, so one seed
gives bit-identical images in every run and process (across CPU types at most a rare pixel may round
differently), and the train and val splits come from independent streams. Backgrounds are dark and
shapes light (random hues), so a shape is always visible. 7000 images of 32x32 take about 0.5-1 s on one
CPU core.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch.utils.data import Dataset

from snn_engine.data.base import VisionData
from snn_engine.errors import UserError

CLASS_NAMES = ("disk", "ring", "square_outline", "square", "triangle", "plus",
               "horizontal_stripes", "vertical_stripes", "diagonal_stripes", "checkerboard")
#: per-channel mean/std of the generated images in [0, 1] (measured on 60k images, all channels alike)
SHAPES_MEAN = 0.307
SHAPES_STD = 0.234
_SPLITS = {"train": 0, "val": 1}
_MAX_ROTATION = math.radians(15.0)
_MAX_SHIFT = 5.0  # pixels at 32 px


def _stack_params(rng: np.random.Generator, n: int, size: int) -> dict[str, np.ndarray]:
    """Random per-image geometry and colours; every array has a leading axis of ``n``."""
    s = size / 32.0  # geometry is specified for 32 px and scaled
    half = rng.uniform(6.0, 11.0, n) * s
    low = np.maximum(half, size / 2 - _MAX_SHIFT * s)  # centre within +-5 px of the middle, shape inside
    high = np.minimum(size - half, size / 2 + _MAX_SHIFT * s)
    cx = rng.uniform(low, high)
    cy = rng.uniform(low, high)
    bg = rng.uniform(0.0, 0.45, (n, 3))  # dark background, light foreground: visible, random hues
    fg = rng.uniform(0.55, 1.0, (n, 3))
    return {
        "cx": cx, "cy": cy, "half": half,
        "angle": rng.uniform(-_MAX_ROTATION, _MAX_ROTATION, n),
        "period": rng.uniform(3.0, 6.0, n) * s,
        "phase": rng.uniform(0.0, 1.0, (n, 2)),
        "flip": rng.choice([-1.0, 1.0], n),
        "bg": bg, "fg": fg,
        "grad_amp": rng.uniform(0.0, 0.35, n),
        "grad_dir": rng.uniform(0.0, 2 * math.pi, n),
        "noise": rng.uniform(0.02, 0.08, n),
    }


def _coverage(label: int, u: np.ndarray, v: np.ndarray, p: dict[str, np.ndarray]) -> np.ndarray:
    """Foreground coverage in [0, 1] of class ``label``.

    Args:
        u, v: ``[m, S, S]`` pixel coordinates in each image's rotated frame, centred on the shape.
        p: parameters of those ``m`` images, each reshaped to ``[m, 1, 1]`` (or ``[m, 1, 1, k]``).
    Returns:
        ``[m, S, S]`` float32 coverage (1 px anti-aliased edges for outlines and solids).
    """
    r = p["half"]
    thick = np.maximum(1.5, 0.22 * r)

    def soft(sd: np.ndarray) -> np.ndarray:  # signed distance (negative inside) -> coverage
        return np.clip(0.5 - sd, 0.0, 1.0)

    box = np.maximum(np.abs(u), np.abs(v))
    radius = np.sqrt(u * u + v * v)
    if label == 0:
        return soft(radius - r)
    if label == 1:
        return soft(np.abs(radius - (r - thick / 2)) - thick / 2)
    if label == 2:
        return soft(np.abs(box - (r - thick / 2)) - thick / 2)
    if label == 3:
        return soft(box - r * 0.8)
    if label == 4:
        w = v * p["flip"]  # apex at w = -r, base at w = +r
        return soft(np.maximum.reduce([w - r, (2 * u - w - r) / math.sqrt(5), (-2 * u - w - r) / math.sqrt(5)]))
    if label == 5:
        arm = thick * 0.75
        return soft(np.minimum(np.maximum(np.abs(u) - arm, np.abs(v) - r), np.maximum(np.abs(v) - arm, np.abs(u) - r)))
    patch = soft(box - r)
    period, ph0, ph1 = p["period"], p["phase"][..., 0], p["phase"][..., 1]
    if label == 6:
        along = v
    elif label == 7:
        along = u
    elif label == 8:
        along = (u + p["flip"] * v) / math.sqrt(2)
    else:
        cells = np.floor(u / period + ph0) + np.floor(v / period + ph1)
        return patch * (np.mod(cells, 2) == 0)
    return patch * (np.mod(along / period + ph0, 1.0) < 0.5)


def generate_shapes(n: int, seed: int, split: str = "train", image_size: int = 32,
                    num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n`` labelled shape images; the same arguments always give the same bytes.

    Args:
        n: number of images.
        seed: data-set seed; ``split`` selects an independent random stream under it.
        split: ``"train"`` or ``"val"``.
        image_size: side S in pixels (geometry is scaled from the 32 px design).
        num_classes: use the first K of the 10 classes (labels ``0..K-1``).
    Returns:
        images ``uint8 [n, 3, S, S]`` and labels ``int64 [n]``; classes are balanced exactly
        (counts differ by at most one) and shuffled.
    """
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    rng = np.random.default_rng([int(seed), _SPLITS[split]])
    labels = rng.permutation(np.arange(n) % num_classes)
    p = _stack_params(rng, n, image_size)
    grid = np.arange(image_size, dtype=np.float32) + 0.5
    ys, xs = grid[None, :, None], grid[None, None, :]
    noise = rng.standard_normal((n, 3, image_size, image_size), dtype=np.float32)

    cov = np.empty((n, image_size, image_size), dtype=np.float32)
    for label in range(num_classes):
        idx = np.flatnonzero(labels == label)
        if idx.size == 0:
            continue
        q = {k: v[idx].astype(np.float32).reshape(idx.size, 1, 1, *v.shape[1:]) for k, v in p.items()}
        dx, dy = xs - q["cx"], ys - q["cy"]
        cos, sin = np.cos(q["angle"]), np.sin(q["angle"])
        cov[idx] = _coverage(label, cos * dx + sin * dy, -sin * dx + cos * dy, q)

    f32 = {k: v.astype(np.float32) for k, v in p.items()}
    centred = (grid - image_size / 2) / image_size
    ramp = (np.cos(f32["grad_dir"])[:, None, None] * centred[None, None, :]
            + np.sin(f32["grad_dir"])[:, None, None] * centred[None, :, None])  # [n, S, S] in [-.5, .5]
    background = f32["bg"][:, :, None, None] + (f32["grad_amp"][:, None, None] * ramp)[:, None]
    image = noise  # composite in place: bg + cov * (fg - bg) + noise * sigma, scaled to [0, 255]
    image *= (255.0 * f32["noise"])[:, None, None, None]
    image += 255.0 * background
    image += (255.0 * cov[:, None]) * (f32["fg"][:, :, None, None] - background)
    image += 0.5
    np.clip(image, 0.0, 255.0, out=image)
    image = image.astype(np.uint8)
    return torch.from_numpy(image), torch.from_numpy(labels.astype(np.int64))


class ShapesDataset(Dataset):
    """In-memory images with per-item normalisation; supports batched fetching (``__getitems__``).

    Args:
        images: ``uint8 [N, C, S, S]``.
        labels: ``int64 [N]``.
        mean, std: scalars applied as ``(x / 255 - mean) / std``.
    Items are ``(float32 [C, S, S], int)``.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, mean: float, std: float) -> None:
        self.images, self.labels = images, labels
        self.mean, self.std = float(mean), float(std)
        self.classes = list(CLASS_NAMES[: int(labels.max()) + 1]) if len(labels) else []

    def __len__(self) -> int:
        return self.images.shape[0]

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float32).mul_(1.0 / (255.0 * self.std)).sub_(self.mean / self.std)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self._normalise(self.images[index]), int(self.labels[index])

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, int]]:
        idx = torch.as_tensor(indices, dtype=torch.long)
        x = self._normalise(self.images[idx])
        return list(zip(x.unbind(0), self.labels[idx].tolist()))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole split at once: ``float32 [N, C, S, S]`` normalised and ``int64 [N]`` labels."""
        return self._normalise(self.images), self.labels


class ShapesData(VisionData):
    """The project's default data set: procedurally generated shapes, held in memory.

    Args:
        train_size, val_size: images per split (classes balanced within each).
        seed: data-set seed (independent of the training seed, so every run sees the same data).
        num_classes: 2..10, the first K classes of :data:`CLASS_NAMES`.
        image_size: side S (>= 16); geometry scales with it.
        Other arguments: see :class:`~snn_engine.data.base.VisionData`.
    The splits are generated on first use and cached on the instance; items ``(float32 [3, S, S], int)``
    normalised to about zero mean and unit variance. No random augmentation, so a run is
    bit-reproducible and identical with 1 or 2 processes.
    """

    title = "Shapes"

    def __init__(self, name: str = "shapes", num_classes: int = 10, in_chans: int = 3, image_size: int = 32,
                 batch_size: int = 64, num_workers: int = 0, repeated_aug: int = 0, train_size: int = 6000,
                 val_size: int = 1000, seed: int = 0, mixup=None, root=None, download: bool = False) -> None:
        super().__init__(name, num_classes, in_chans, image_size, batch_size, num_workers, repeated_aug,
                         root=None, download=False, mixup=mixup)
        if not 2 <= self.num_classes <= len(CLASS_NAMES):
            raise UserError(f"dataset.num_classes must be between 2 and {len(CLASS_NAMES)} for shapes, "
                            f"got {num_classes}")
        if self.in_chans != 3:
            raise UserError(f"dataset.in_chans must be 3 for shapes (RGB), got {in_chans}")
        if self.image_size < 16:
            raise UserError(f"dataset.image_size must be >= 16 for shapes, got {image_size}")
        self.train_size = self._positive_int(train_size, "dataset.train_size")
        self.val_size = self._positive_int(val_size, "dataset.val_size")
        self.seed = int(seed)
        self._cache: dict[bool, ShapesDataset] = {}

    def build(self, train: bool) -> ShapesDataset:
        """Generate (once) and return the train or val split."""
        if train not in self._cache:
            n = self.train_size if train else self.val_size
            images, labels = generate_shapes(n, self.seed, "train" if train else "val",
                                             self.image_size, self.num_classes)
            self._cache[train] = ShapesDataset(images, labels, SHAPES_MEAN, SHAPES_STD)
        return self._cache[train]
