"""WikiText-103 at the word level, as Transformer-XL reads it (``corpus.vocab`` with ``add_eos=True``).

Files: ``<root>/wikitext-103/wiki.{train,valid,test}.tokens`` (the tokenised release; ``root`` may also be the
``wikitext-103`` folder itself). Conventions:

* every line is split on whitespace (``str.split()``, which also strips it) and ``<eos>`` is appended to it:
  **every** line, the empty ones (the blank ``" "`` lines around headings and paragraphs) included, exactly as
  Transformer-XL's corpus reader does; the lines are those of Python's text files (``\\n``, ``\\r``, ``\\r\\n``);
* the vocabulary comes from the train file only: ``<eos>`` is id 0 (Transformer-XL's special symbol), then every
  other word by descending train count, ties in order of first occurrence in the file (``Counter.most_common``),
  no minimum count: 267,735 ids on the real data (``<unk>`` is an ordinary word of the files). Frequency order is
  what adaptive-softmax cutoffs rely on;
* valid/test words missing from the train vocabulary become ``<unk>``.

Tokenising the 103M-word train file takes about a minute in Python, so the vocabulary and the three encoded
streams (``int32``) are cached beside the data, in ``<root>/wikitext-103/.cache/`` (or ``cache_dir``):
``vocab.pt`` (``itos``), ``train.pt``, ``valid.pt``, ``test.pt`` (``tokens``), each keyed by the signature
(size + SHA-256 of the first and last MiB) of the files it came from: the train file for the vocabulary and
train tokens, the train file and its own file for valid/test. A changed file means a rebuild. Each cache file
also holds the SHA-256 of its content, checked on load: a damaged or edited cache (one token id changed) is
rebuilt with a warning; a cached id outside the vocabulary is a one-line error naming the cache file.
"""

from __future__ import annotations

import itertools
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from snn_engine.data.language.cache import file_signature, load_fresh, save_atomic
from snn_engine.data.language.record import check_token_ids
from snn_engine.data.language.stream import LanguageData
from snn_engine.data.language.vocab import EOS, UNK, Vocab
from snn_engine.errors import UserError

FOLDER = "wikitext-103"
FILES = {"train": "wiki.train.tokens", "val": "wiki.valid.tokens", "test": "wiki.test.tokens"}
#: cache file stem of each split
STEMS = {"train": "train", "val": "valid", "test": "test"}
#: the vocabulary size of the real WikiText-103 train file with this convention
WIKITEXT103_VOCAB_SIZE = 267_735
CACHE_VERSION = 2  # 2: content checksums
CHUNK_CHARS = 1 << 24


def read_word_chunks(path: Path, chunk_chars: int = CHUNK_CHARS) -> Iterator[list[str]]:
    """The words of ``path`` with ``<eos>`` after every line, in chunks of whole lines (about ``chunk_chars``
    characters each). A :class:`UserError` when the file is not UTF-8 text."""
    try:
        with open(path, encoding="utf-8") as f:
            while lines := f.readlines(chunk_chars):
                # " <eos> " between lines (each ends with its own break) and one after the last: the words
                # of every line followed by <eos>, split at C speed
                yield (f" {EOS} ".join(lines) + f" {EOS}").split()
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start}); restore the original "
                        f"WikiText-103 file") from None
    except OSError as err:
        raise UserError(f"cannot read {path} ({err}); check the file and its permissions") from None


def count_and_encode(path: Path) -> tuple[list[str], torch.Tensor]:
    """Build the vocabulary of ``path`` and encode it in one pass.

    Returns:
        ``itos``: ``<eos>`` then the words by descending count, ties in first-occurrence order;
        ``tokens``: ``int32 [N]`` the ids of the file's words and line ends.
    """
    counts: Counter[str] = Counter()
    first_id: dict[str, int] = {}  # id by first occurrence, remapped once the counts are known
    parts = []
    for words in read_word_chunks(path):
        counts.update(words)
        if len(counts) > len(first_id):  # a Counter keeps insertion (= first-occurrence) order
            for word in itertools.islice(counts, len(first_id), None):
                first_id[word] = len(first_id)
        parts.append(np.fromiter(map(first_id.__getitem__, words), dtype=np.int32, count=len(words)))
    itos = [EOS] + [w for w, _ in counts.most_common() if w != EOS]  # most_common is a stable sort
    final = {w: i for i, w in enumerate(itos)}
    remap = np.fromiter((final[w] for w in first_id), dtype=np.int32, count=len(first_id))
    tokens = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    parts.clear()
    np.take(remap, tokens, out=tokens)  # in place (mode "raise" buffers): one int32 copy of the file in memory
    return itos, torch.from_numpy(tokens)


def encode_file(path: Path, vocab: Vocab) -> torch.Tensor:
    """``int32 [N]`` ids of the words and line ends of ``path``; unknown words become ``<unk>``."""
    parts = []
    for words in read_word_chunks(path):
        ids = np.fromiter(map(vocab.stoi.get, words, itertools.repeat(-1)), dtype=np.int32, count=len(words))
        unknown = ids < 0
        if unknown.any():
            if vocab.unk_id is None:
                word = words[int(np.argmax(unknown))]
                raise UserError(f"{path} has the word {word!r} that the train file lacks and the train file has no "
                                f"{UNK}; restore the original WikiText-103 files")
            ids[unknown] = vocab.unk_id
        parts.append(ids)
    return torch.from_numpy(np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32))


class WikiText103(LanguageData):
    """WikiText-103, word level (Transformer-XL convention), for next-token prediction.

    Args:
        root: the folder holding ``wikitext-103/wiki.{train,valid,test}.tokens`` (or that folder itself).
        vocab_size: the expected vocabulary size (267,735 on the real data); the model can then be built before
            the data is read, and the vocabulary is checked against it when first loaded. ``None``: read the
            vocabulary now and take its size.
        num_classes: must equal ``vocab_size`` when given (the model predicts a word).
        max_length: L, tokens per sample (the reference: 8192).
        cache: keep the vocabulary and encoded streams in ``cache_dir`` (see the module docstring).
        cache_dir: where; default ``<root>/wikitext-103/.cache``.
        name, batch_size, num_workers: see :class:`~snn_engine.data.language.stream.LanguageData`.
    Attributes: ``vocab`` (loaded on first use), ``entropy_per_token = None`` (unknown).
    """

    title = "WikiText-103"
    default_subdir = FOLDER
    root_holds = f"{FOLDER}/wiki.{{train,valid,test}}.tokens"

    def __init__(self, root=None, vocab_size: int | None = WIKITEXT103_VOCAB_SIZE, num_classes: int | None = None,
                 max_length: int = 8192, batch_size: int = 1, num_workers: int = 0, cache: bool = True,
                 cache_dir: str | os.PathLike | None = None, name: str = "wikitext103") -> None:
        if vocab_size is not None and num_classes is not None and vocab_size != num_classes:
            raise UserError(f"dataset.num_classes ({num_classes}) must equal dataset.vocab_size ({vocab_size}) "
                            f"for language modelling")
        declared = vocab_size if vocab_size is not None else num_classes
        self._vocab: Vocab | None = None
        self._streams: dict[str, torch.Tensor] = {}
        self.cache = bool(cache)
        self._cache_dir = None if cache_dir is None else Path(os.path.expanduser(str(cache_dir))).absolute()
        super().__init__(name, declared if declared is not None else 1, max_length, batch_size, num_workers, root)
        self._declared = declared
        if declared is None:  # read the vocabulary now: its size is the model's
            self.vocab_size = self.num_classes = len(self.vocab)

    # ---------------------------------------------------------------------------------------- files
    def folder(self) -> Path:
        """The folder holding the three ``.tokens`` files; a :class:`UserError` when there is none."""
        root = self.require_root()
        for folder in (root / FOLDER, root):
            if all((folder / f).is_file() for f in FILES.values()):
                return folder
        folder = root / FOLDER
        absent = [f for f in FILES.values() if not (folder / f).is_file()]
        raise UserError(f"WikiText-103 not found at {folder}: expected {', '.join(FILES.values())} there "
                        f"(missing {', '.join(absent)}); set paths.data=/your/data (the folder holding {FOLDER}/) "
                        f"or dataset.root=/path/to/that/folder")

    def where(self) -> str:
        return f"{self.title} at {self.folder()}"

    def cache_dir(self) -> Path:
        return self._cache_dir if self._cache_dir is not None else self.folder() / ".cache"

    def _key(self, kind: str, *splits: str) -> dict:
        folder = self.folder()
        return {"version": CACHE_VERSION, "kind": kind,
                "sources": {FILES[s]: file_signature(folder / FILES[s]) for s in splits}}

    # ----------------------------------------------------------------------------------- vocabulary
    @property
    def vocab(self) -> Vocab:
        """The train vocabulary (cached; built on first use)."""
        if self._vocab is None:
            stored = load_fresh(self.cache_dir() / "vocab.pt", self._key("vocab", "train")) if self.cache else None
            self._set_vocab(stored["itos"] if stored is not None else self._build_train())
        return self._vocab

    def _set_vocab(self, itos: list[str]) -> None:
        if self._declared is not None and len(itos) != self._declared:
            raise UserError(f"the WikiText-103 train file at {self.folder()} gives {len(itos)} words but "
                            f"dataset.vocab_size is {self._declared}; set dataset.vocab_size={len(itos)} and "
                            f"dataset.num_classes={len(itos)} (or null to read it from the data)")
        self._vocab = Vocab(itos)

    def _build_train(self) -> list[str]:
        """Tokenise the train file: vocabulary and train stream, both cached; returns ``itos``."""
        path = self.folder() / FILES["train"]
        itos, tokens = count_and_encode(path)
        if tokens.numel() == 0:
            raise UserError(f"{path} is empty; restore the original WikiText-103 train file")
        if self.cache:
            key = self._key("vocab", "train")
            save_atomic(self.cache_dir() / "vocab.pt", key, itos=itos)
            save_atomic(self.cache_dir() / "train.pt", {**key, "kind": "tokens"}, tokens=tokens)
        self._streams["train"] = tokens
        return itos

    # --------------------------------------------------------------------------------------- streams
    def tokens(self, split: str) -> torch.Tensor:
        """``int32 [N]`` the ids of ``split``'s words and line ends (cached)."""
        split = self.check_split(split)
        vocab = self.vocab  # checks the declared size first; may build (and cache) the train stream too
        if split not in self._streams:
            sources = ("train",) if split == "train" else ("train", split)
            path = self.cache_dir() / f"{STEMS[split]}.pt"
            stored = load_fresh(path, self._key("tokens", *sources)) if self.cache else None
            if stored is not None:
                check_token_ids(stored["tokens"], len(vocab), path,
                                fix=f"delete {path} to rebuild it from {self.folder() / FILES[split]}")
                self._streams[split] = stored["tokens"]
            elif split == "train":
                self._set_vocab(self._build_train())
            else:
                tokens = encode_file(self.folder() / FILES[split], vocab)
                if self.cache:
                    save_atomic(path, self._key("tokens", *sources), tokens=tokens)
                self._streams[split] = tokens
        return self._streams[split]
