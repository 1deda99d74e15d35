"""Long Range Arena tasks read from their official on-disk formats (ListOps: see listops.py).

* :class:`LRAText` (Text, IMDB byte level): ``<root>/aclImdb/{train,test}/{pos,neg}/*.txt``; items
  ``(int64 [L_i], label)`` with ``L_i <= seq_len`` (4096), label 0 = neg, 1 = pos.
* :class:`LRARetrieval` (AAN): ``<root>/lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv``, no header,
  columns ``label, id1, id2, text1, text2`` (texts written as Python bytes literals ``b'...'``); items
  ``((int64 [L1], int64 [L2]), label)``, each document
  truncated to ``seq_len`` (4000). Batches (:class:`~snn_engine.data.sequence.collate.PadCollate`) are
  ``((doc1 [B, L], doc2 [B, L]), labels)``, both padded to one L.
* :class:`LRAImage` (sCIFAR-10 grayscale): CIFAR-10 python pickles ``<root>/cifar-10-batches-py``; items
  ``(float32 [1024, 1], label)``, normalised with s4's mean 122.6/255 and std 61.0/255.
* :class:`LRAPathfinder` (Pathfinder-32, Path-X = resolution 128): ``<root>/lra_release/pathfinder{R}/
  <difficulty>/{imgs/<i>/sample_<j>.png, metadata/<i>.npy}``; the ``.npy`` files are text, one line per
  image: ``imgs/<i> sample_<j>.png <index> <label> ...``. Items ``(float32 [R*R, 1] in [-1, 1], label)``.

Byte-level tokens (Text, Retrieval): id 0 padding, 1 unknown (unused), 2 end-of-sequence (appended when
``append_eos``), byte ``b`` -> ``b + 3``; ``vocab_size`` 259. Splits: Text has train and test (val = test,
as LRA/s4); Retrieval has train, val (= eval) and test; Image holds out ``val_split`` of the training set
(s4: 10%, seed 42) and tests on the test batch; Pathfinder splits its images 80/10/10 with seed 42 (s4).
"""

from __future__ import annotations

import ast
import csv
import logging
import pickle
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from snn_engine.data.sequence import SequenceData, fraction, positive_int
from snn_engine.data.sequence.collate import PadCollate, TokenDataset
from snn_engine.data.sequence.seq_mnist import PixelSequences, held_out_split, rgb_to_gray
from snn_engine.errors import UserError

log = logging.getLogger(__name__)

PAD, UNK, EOS, BYTE_OFFSET = 0, 1, 2, 3
BYTE_VOCAB = 256 + BYTE_OFFSET
CIFAR_GRAY_MEAN, CIFAR_GRAY_STD = 122.6 / 255.0, 61.0 / 255.0


def encode_bytes(text: str | bytes, seq_len: int, append_eos: bool = True) -> torch.Tensor:
    """UTF-8 bytes -> ``int64 [L]`` ids ``byte + 3`` (truncated, then the end id 2 when ``append_eos``)."""
    raw = text.encode("utf-8") if isinstance(text, str) else text
    ids = torch.frombuffer(bytearray(raw[: seq_len - int(append_eos)]), dtype=torch.uint8).long() + BYTE_OFFSET
    return torch.cat([ids, torch.tensor([EOS])]) if append_eos else ids


def aan_text(field: str) -> bytes:
    """An AAN TSV text field -> bytes. The release stores each paper as a Python bytes literal
    (``b'...'``); such fields are unescaped, anything else is taken as UTF-8 text."""
    if len(field) >= 3 and field[0] == "b" and field[1] in "'\"" and field[-1] == field[1]:
        try:
            value = ast.literal_eval(field)
            if isinstance(value, bytes):
                return value
        except (ValueError, SyntaxError):
            pass
    return field.encode("utf-8")


class _ByteData(SequenceData):
    def __init__(self, name, num_classes, seq_len, root, append_eos, with_lengths, batch_size, num_workers):
        super().__init__(name, num_classes, seq_len, d_input=None, vocab_size=BYTE_VOCAB, batch_size=batch_size,
                         num_workers=num_workers, root=root)
        if self.num_classes != 2:
            raise UserError(f"{self.title} has 2 classes; set dataset.num_classes=2, got {num_classes}")
        self.append_eos, self.with_lengths = bool(append_eos), bool(with_lengths)

    def collate_fn(self) -> PadCollate:
        """Per-batch padding with id 0 (``with_lengths`` adds the lengths to the input)."""
        return PadCollate(PAD, self.with_lengths)


class LRAText(_ByteData):
    """LRA Text: IMDB reviews (aclImdb), byte level, 2 classes.

    Args:
        root: folder holding ``aclImdb/{train,test}/{pos,neg}/*.txt`` (or ``aclImdb`` itself).
        seq_len: truncation length including the end token (LRA/s4: 4096).
        append_eos: append id 2; with_lengths: batches carry ``(tokens, lengths)``.
        Other arguments: see :class:`~snn_engine.data.sequence.SequenceData`.
    """

    title = "IMDB (aclImdb)"
    default_subdir = "aclImdb"
    root_holds = "aclImdb/{train,test}/{pos,neg}/*.txt"
    splits = ("train", "val", "test")

    def __init__(self, name: str = "lra_text", num_classes: int = 2, seq_len: int = 4096, root=None,
                 append_eos: bool = True, with_lengths: bool = False, batch_size: int = 16,
                 num_workers: int = 0) -> None:
        super().__init__(name, num_classes, seq_len, root, append_eos, with_lengths, batch_size, num_workers)

    def build(self, split: str) -> TokenDataset:
        which = "train" if split == "train" else "test"
        base = self.find("aclImdb") or self.require_root()
        seqs, labels = [], []
        for label, polarity in enumerate(("neg", "pos")):
            folder = base / which / polarity
            files = sorted(folder.glob("*.txt")) if folder.is_dir() else []
            if not files:
                raise self.missing(folder, f"review files <root>/aclImdb/{which}/{polarity}/<id>_<rating>.txt")
            for path in files:
                seqs.append(encode_bytes(path.read_bytes(), self.seq_len, self.append_eos))
                labels.append(label)
        return TokenDataset(seqs, labels)


class LRARetrieval(_ByteData):
    """LRA Retrieval: do two ACL Anthology papers cite each other (AAN), byte level, 2 classes.

    Args:
        root: folder holding ``lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv`` (or ``tsv_data``
            itself, or the files directly).
        seq_len: truncation length of each document including its end token (LRA/s4: 4000).
        Other arguments: see :class:`LRAText`.
    Items: ``((doc1, doc2), label)``; batches ``((doc1 [B, L], doc2 [B, L]), labels)``
    (``(doc1, doc2, len1, len2)`` with ``with_lengths``).
    """

    title = "LRA Retrieval (AAN)"
    default_subdir = "lra_release/tsv_data"
    root_holds = "tsv_data/new_aan_pairs.{train,eval,test}.tsv"
    splits = ("train", "val", "test")

    def __init__(self, name: str = "lra_retrieval", num_classes: int = 2, seq_len: int = 4000, root=None,
                 append_eos: bool = True, with_lengths: bool = False, batch_size: int = 32,
                 num_workers: int = 0) -> None:
        super().__init__(name, num_classes, seq_len, root, append_eos, with_lengths, batch_size, num_workers)

    def build(self, split: str) -> TokenDataset:
        name = f"new_aan_pairs.{'eval' if split == 'val' else split}.tsv"
        path = self.find(f"tsv_data/{name}", name)
        if path is None:
            raise self.missing(self.require_root(), f"<root>/lra_release/tsv_data/{name} (columns label, id1, id2, "
                                                    f"text1, text2; tab-separated, no header)")
        csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
        seqs, labels = [], []
        with open(path, newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE), start=1):
                try:
                    label = int(float(row[0]))
                    text1, text2 = row[3], row[4]
                except (IndexError, ValueError):
                    raise UserError(f"{path}:{line}: expected 'label<TAB>id1<TAB>id2<TAB>text1<TAB>text2', got "
                                    f"{len(row)} field(s); restore the LRA file") from None
                if label not in (0, 1):
                    raise UserError(f"{path}:{line}: label {label} is not 0 or 1")
                seqs.append((encode_bytes(aan_text(text1), self.seq_len, self.append_eos),
                             encode_bytes(aan_text(text2), self.seq_len, self.append_eos)))
                labels.append(label)
        if not seqs:
            raise UserError(f"{path} holds no pairs; restore the LRA file")
        return TokenDataset(seqs, labels)


class LRAImage(SequenceData):
    """LRA Image: CIFAR-10 in grayscale (ITU-R 601 luma, as PIL) read pixel by pixel, L = 1024, d_input 1.

    Args:
        root: folder holding ``cifar-10-batches-py/{data_batch_1..5,test_batch}`` (or that folder).
        val_split, split_seed: hold-out of the training set used as ``val`` (s4: 0.1, 42; 0: val = test).
        mean, std: normalisation of pixels in ``[0, 1]`` (s4: 122.6/255, 61.0/255).
        Other arguments: see :class:`~snn_engine.data.sequence.SequenceData`.
    """

    title = "CIFAR-10"
    default_subdir = root_holds = "cifar-10-batches-py"
    splits = ("train", "val", "test")

    def __init__(self, name: str = "lra_image", num_classes: int = 10, val_split: float = 0.1, split_seed: int = 42,
                 mean: float = CIFAR_GRAY_MEAN, std: float = CIFAR_GRAY_STD, root=None, batch_size: int = 50,
                 num_workers: int = 0) -> None:
        super().__init__(name, num_classes, 1024, d_input=1, batch_size=batch_size, num_workers=num_workers,
                         root=root)
        if self.num_classes != 10:
            raise UserError(f"CIFAR-10 has 10 classes; set dataset.num_classes=10, got {num_classes}")
        self.val_split, self.split_seed = fraction(val_split, "dataset.val_split"), int(split_seed)
        self.mean, self.std = float(mean), float(std)

    def _load(self, names: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        folder = self.find("cifar-10-batches-py") or self.require_root()
        images, labels = [], []
        for name in names:
            path = folder / name
            if not path.is_file():
                raise self.missing(folder, f"the CIFAR-10 python pickles <root>/cifar-10-batches-py/{name}")
            try:
                with open(path, "rb") as f:
                    entry = pickle.load(f, encoding="latin1")
                data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels.extend(int(y) for y in entry["labels"])
            except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
                raise UserError(f"cannot read CIFAR-10 pickle {path} ({err!r}); restore the original file") from None
            images.append(torch.from_numpy(data))
        gray = rgb_to_gray(torch.cat(images)).reshape(-1, 1024, 1)
        return gray, torch.tensor(labels, dtype=torch.long)

    def build(self, split: str) -> PixelSequences:
        if split == "test" or (split == "val" and self.val_split == 0):
            data, labels = self._load(["test_batch"])
        else:
            data, labels = self._load([f"data_batch_{i}" for i in range(1, 6)])
            if self.val_split > 0:
                train_idx, val_idx = held_out_split(len(labels), self.val_split, self.split_seed)
                idx = train_idx if split == "train" else val_idx
                data, labels = data[idx], labels[idx]
        return PixelSequences(data, labels, None, self.mean, self.std)


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


class PathfinderImages(Dataset):
    """Pathfinder PNGs read on access: items ``(float32 [R*R, 1] in [-1, 1], label)``."""

    def __init__(self, files: list[Path], labels: list[int], resolution: int) -> None:
        self.files, self.labels, self.resolution = files, labels, resolution

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path = self.files[index]
        try:
            with Image.open(path) as img:
                pixels = np.asarray(img.convert("L"), dtype=np.uint8)
        except (OSError, ValueError) as err:
            raise UserError(f"cannot read Pathfinder image {path} ({err}); restore the file") from None
        if pixels.shape != (self.resolution, self.resolution):
            raise UserError(f"{path} is {pixels.shape[1]}x{pixels.shape[0]}, expected "
                            f"{self.resolution}x{self.resolution}; check dataset.resolution")
        x = torch.from_numpy(pixels.reshape(-1, 1).astype(np.float32))
        return x.mul_(2.0 / 255.0).sub_(1.0), self.labels[index]


class LRAPathfinder(SequenceData):
    """LRA Pathfinder (are the two dots connected by a path), 2 classes; ``resolution=128`` is Path-X.

    Args:
        resolution: image side R (32 Pathfinder, 64, 128 Path-X, 256); L = R*R, d_input 1.
        difficulty: ``curv_contour_length_14`` (hard, LRA's), ``curv_contour_length_9`` or ``curv_baseline``.
        root: folder holding ``lra_release/pathfinder{R}/<difficulty>/{imgs,metadata}`` (the ``lra_release``
            level, or ``lra_release/lra_release`` as in the tarball, is optional).
        val_split, test_split, split_seed: fixed random split of all images (s4: 0.1, 0.1, 42).
        Other arguments: see :class:`~snn_engine.data.sequence.SequenceData`.
    """

    title = "LRA Pathfinder"
    splits = ("train", "val", "test")
    #: an image of the release that s4 excludes (unreadable); missing and empty files are skipped too
    BLACKLIST = frozenset({"pathfinder32/curv_baseline/imgs/0/sample_172.png"})

    def __init__(self, name: str | None = None, num_classes: int = 2, resolution: int = 32,
                 difficulty: str = "curv_contour_length_14", val_split: float = 0.1, test_split: float = 0.1,
                 split_seed: int = 42, root=None, batch_size: int = 64, num_workers: int = 0) -> None:
        res = positive_int(resolution, "dataset.resolution")
        super().__init__(name or ("pathx" if res == 128 else f"pathfinder{res}"), num_classes, res * res, d_input=1,
                         batch_size=batch_size, num_workers=num_workers, root=root)
        if self.num_classes != 2:
            raise UserError(f"Pathfinder has 2 classes; set dataset.num_classes=2, got {num_classes}")
        self.resolution, self.difficulty = res, str(difficulty)
        self.val_split = fraction(val_split, "dataset.val_split")
        self.test_split = fraction(test_split, "dataset.test_split")
        if self.val_split + self.test_split >= 1:
            raise UserError("dataset.val_split + dataset.test_split must be < 1")
        self.split_seed = int(split_seed)
        self.default_subdir = f"lra_release/pathfinder{res}/{self.difficulty}"
        self._all: tuple[list[Path], list[int]] | None = None

    def _index(self) -> tuple[list[Path], list[int]]:
        if self._all is None:
            rel = f"pathfinder{self.resolution}/{self.difficulty}"
            base = self.find(rel)
            metas = sorted((base / "metadata").glob("*.npy"), key=lambda p: (len(p.stem), p.stem)) if base else []
            if not metas:
                raise self.missing(self.require_root(), f"<root>/lra_release/{rel}/metadata/<i>.npy and "
                                                        f"<root>/lra_release/{rel}/imgs/<i>/sample_<j>.png")
            files, labels = [], []
            for meta in metas:
                for n, line in enumerate(meta.read_text().splitlines(), start=1):
                    tokens = line.split()
                    if not tokens:
                        continue
                    if len(tokens) < 4 or not tokens[3].lstrip("-").isdigit():
                        raise UserError(f"{meta}:{n}: expected 'imgs/<i> sample_<j>.png <index> <label> ...', got "
                                        f"{line!r}; restore the metadata file")
                    if f"{rel}/{tokens[0]}/{tokens[1]}" in self.BLACKLIST:
                        continue
                    files.append(base / tokens[0] / tokens[1])
                    labels.append(int(tokens[3]))
            keep = [i for i, f in enumerate(files) if _nonempty(f)]
            if len(keep) < len(files):
                log.warning("Pathfinder: skipping %d missing or empty image(s) listed in %s", len(files) - len(keep),
                            base / "metadata")
            if not keep:
                raise UserError(f"none of the images listed in {base / 'metadata'} exists under {base / 'imgs'}; "
                                f"restore the Pathfinder folder")
            self._all = [files[i] for i in keep], [labels[i] for i in keep]
        return self._all

    def build(self, split: str) -> PathfinderImages:
        files, labels = self._index()
        n = len(files)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
        n_val, n_test = int(round(n * self.val_split)), int(round(n * self.test_split))
        pick = {"val": order[:n_val], "test": order[n_val:n_val + n_test], "train": order[n_val + n_test:]}[split]
        pick = sorted(pick)
        return PathfinderImages([files[i] for i in pick], [labels[i] for i in pick], self.resolution)
