"""A word-level vocabulary: ids <-> words, whitespace tokenisation.

    vocab = Vocab(["<eos>", "the", ",", "<unk>"])
    ids = vocab.encode("the cat ,")            # int64 [3]: [1, 3, 2]  ("cat" is out of vocabulary -> <unk>)
    vocab.decode(ids)                            # "the <unk> ,"
    vocab.encode("a b\\nc", add_eos=True)        # one <eos> after every line (the corpus convention)
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

import torch

from snn_engine.errors import UserError

EOS = "<eos>"
UNK = "<unk>"
#: target id of positions that are not predicted (padding of the last evaluation sample); torch's default
IGNORE_INDEX = -100
_LINE_BREAK = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """The lines of ``text`` as Python's text files yield them (breaks ``\\n``, ``\\r``, ``\\r\\n``; a final
    break does not start another line), without their breaks."""
    lines = _LINE_BREAK.split(text)
    return lines[:-1] if lines[-1] == "" else lines


class Vocab:
    """Words by id (``itos``) and ids by word (``stoi``).

    Args:
        itos: the words in id order, each non-empty, without whitespace, distinct.
        unk: the word that out-of-vocabulary words map to (``None``: unknown words are an error).
        eos: the end-of-line word appended by ``encode(..., add_eos=True)``.
    """

    def __init__(self, itos: Sequence[str], unk: str | None = UNK, eos: str = EOS) -> None:
        self.itos: list[str] = [str(w) for w in itos]
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("the vocabulary has repeated words")
        if any(not w or len(w.split()) != 1 or w.split()[0] != w for w in self.itos):
            raise ValueError("vocabulary words must be non-empty and free of whitespace")
        self.unk = unk if unk in self.stoi else None
        self.unk_id = None if self.unk is None else self.stoi[self.unk]
        self.eos = eos
        self.eos_id = self.stoi.get(eos)

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, word: str) -> bool:
        return word in self.stoi

    def words(self, text: str, add_eos: bool = False) -> list[str]:
        """``text`` split on whitespace; with ``add_eos``, ``<eos>`` ends every line (empty lines too)."""
        if not add_eos:
            return text.split()
        out: list[str] = []
        for line in split_lines(text):
            out.extend(line.split())
            out.append(self.eos)
        return out

    def lookup(self, words: Iterable[str]) -> list[int]:
        """Ids of ``words``; out-of-vocabulary words become ``unk`` (a :class:`UserError` without one)."""
        if self.unk_id is not None:
            get, unk = self.stoi.get, self.unk_id
            return [get(w, unk) for w in words]
        try:
            return [self.stoi[w] for w in words]
        except KeyError as err:
            raise UserError(f"word {err.args[0]!r} is not in the vocabulary ({len(self)} words, no {UNK}); "
                            f"encode only words of vocab.itos") from None

    def encode(self, text: str, add_eos: bool = False) -> torch.Tensor:
        """``text`` -> ``int64 [n]`` ids of its whitespace-separated words (``<eos>`` is an ordinary word;
        ``add_eos`` appends one after every line, as the corpus reader does)."""
        return torch.tensor(self.lookup(self.words(text, add_eos)), dtype=torch.long)

    def decode(self, ids: torch.Tensor | Iterable[int]) -> str:
        """Ids (any shape is flattened) -> the words joined by single spaces; ``IGNORE_INDEX`` is skipped."""
        if isinstance(ids, torch.Tensor):
            ids = ids.reshape(-1).tolist()
        out = []
        for i in ids:
            i = int(i)
            if i == IGNORE_INDEX:
                continue
            if not 0 <= i < len(self.itos):
                raise ValueError(f"token id {i} is outside the vocabulary [0, {len(self.itos)})")
            out.append(self.itos[i])
        return " ".join(out)

    def __repr__(self) -> str:
        head = ", ".join(repr(w) for w in self.itos[:5])
        return f"Vocab({len(self)} words: {head}{', ...' if len(self) > 5 else ''})"
