"""Writers of tiny data sets in the real on-disk formats, for tests (ours and other people's).

Each writer returns a :class:`Fixture` whose ``root`` is what to pass as ``dataset.root`` (or
``paths.data`` for MNIST/CIFAR). Pixels are random but deterministic (``seed``); labels cycle through
the classes so every class appears when there are enough images.

    info = write_cifar10(tmp_path)
    data = CIFARData("cifar10", root=info.root)
"""

from __future__ import annotations

import gzip
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class Fixture:
    """What a writer made: ``root`` (for ``dataset.root``), the folder holding the files, and sizes."""

    root: Path
    folder: Path
    num_classes: int
    n_train: int
    n_val: int


def _labels(n: int, num_classes: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % num_classes


def write_imagefolder(root: str | Path, num_classes: int = 3, per_class: int = 4, size: int = 40,
                      val_per_class: int | None = None, seed: int = 0) -> Fixture:
    """Write JPEGs to ``root/{train,val}/<class>/*.JPEG`` (ImageNet layout, class names like n00000000).

    Images are ``size x size`` RGB with a class-dependent mean colour plus noise.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    val_per_class = per_class if val_per_class is None else val_per_class
    for split, count in (("train", per_class), ("val", val_per_class)):
        for c in range(num_classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            base = rng.uniform(0, 255, 3)
            for i in range(count):
                pixels = np.clip(base + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{split}_{c}_{i}.JPEG", format="JPEG", quality=90)
    return Fixture(root, root, num_classes, num_classes * per_class, num_classes * val_per_class)


def _cifar_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """``uint8 [n, 3072]``: rows are R, G, B planes of 32x32, as in the official pickles."""
    return rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)


def _dump(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def write_cifar10(root: str | Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Fixture:
    """Write ``root/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`` (python pickles).

    The training images are spread over the five batch files as in the official release.
    """
    root = Path(root)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    labels = _labels(n_train, 10)
    for b, chunk in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        _dump(folder / f"data_batch_{b}", {"batch_label": f"training batch {b} of 5",
                                           "labels": labels[chunk].tolist(),
                                           "data": _cifar_images(rng, len(chunk)),
                                           "filenames": [f"img_{i}.png" for i in chunk]})
    _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "labels": _labels(n_test, 10).tolist(),
                                  "data": _cifar_images(rng, n_test),
                                  "filenames": [f"test_{i}.png" for i in range(n_test)]})
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    _dump(folder / "batches.meta", {"label_names": names, "num_cases_per_batch": max(1, n_train // 5),
                                    "num_vis": 3072})
    return Fixture(root, folder, 10, n_train, n_test)


def write_cifar100(root: str | Path, n_train: int = 20, n_test: int = 10, seed: int = 0) -> Fixture:
    """Write ``root/cifar-100-python/{train, test, meta}`` (python pickles, fine and coarse labels)."""
    root = Path(root)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for name, n in (("train", n_train), ("test", n_test)):
        fine = _labels(n, 100)
        _dump(folder / name, {"filenames": [f"{name}_{i}.png" for i in range(n)], "batch_label": f"{name} batch",
                              "fine_labels": fine.tolist(), "coarse_labels": (fine // 5).tolist(),
                              "data": _cifar_images(rng, n)})
    _dump(folder / "meta", {"fine_label_names": [f"class_{i:03d}" for i in range(100)],
                            "coarse_label_names": [f"super_{i:02d}" for i in range(20)]})
    return Fixture(root, folder, 100, n_train, n_test)


def _idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file: magic ``0x0000 08 <ndim>``, big-endian int32 dims, then the bytes."""
    return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape) \
        + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(root: str | Path, n_train: int = 20, n_test: int = 10, compress: bool = False,
                seed: int = 0) -> Fixture:
    """Write the four MNIST IDX files under ``root/MNIST/raw`` (gzip-compressed when ``compress``).

    Uncompressed files are readable by stock ``torchvision.datasets.MNIST``; ``.gz`` files (the layout
    of the official download and of the shared data folder) need :class:`snn_engine.data.MNISTData`.
    Images are ``uint8 [n, 28, 28]``, labels ``uint8 [n]`` cycling 0..9.
    """
    root = Path(root)
    folder = root / "MNIST" / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        files = {f"{prefix}-images-idx3-ubyte": rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                 f"{prefix}-labels-idx1-ubyte": _labels(n, 10).astype(np.uint8)}
        for name, array in files.items():
            data = _idx_bytes(array)
            if compress:
                (folder / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return Fixture(root, folder, 10, n_train, n_test)
