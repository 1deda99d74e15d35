"""ListOps (LRA): nested list operations over digits, 10 classes (the value of the expression).

An expression is a digit ``0..9`` or ``[OP a1 ... ak ]`` with ``OP`` one of ``MAX, MIN, MED`` (median,
rounded down) and ``SM`` (sum modulo 10), 2 <= k <= max_args, arguments nested recursively. The LRA
generator (``lra_benchmarks/data/listops.py``) draws a digit with probability 0.75 (always at
``max_depth``), otherwise an operator with ``randint(2, max_args)`` arguments, and keeps expressions
whose length (digits + operators + closing brackets) lies strictly between ``min_length`` and ``max_length``.
Its TSV files (``Source\\tTarget``) write each operator application as nested pairs in parentheses:
``( ( ( [MAX 2 ) 9 ) ] )`` is ``[MAX 2 9 ]`` = 9. Tokenising drops the parentheses (as s4 does).

Vocabulary (``LISTOPS_VOCAB``, size 18): ``0`` padding, ``1`` unknown, ``2`` end-of-sequence, digits
``'0'..'9'`` -> ``3..12``, ``'[MIN'`` 13, ``'[MAX'`` 14, ``'[MED'`` 15, ``'[SM'`` 16, ``']'`` 17.
Items are ``(int64 [L_i], int)``, with the end token appended when ``append_eos`` (s4's default).

* :class:`ListOpsGenerated`: expressions generated in memory, deterministic by seed (the embedded default).
* :class:`ListOpsTSV`: the LRA release ``<root>/lra_release/listops-1000/basic_{train,val,test}.tsv``.
"""

from __future__ import annotations

import csv
import random
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import torch

from snn_engine.data.sequence import SequenceData, positive_int
from snn_engine.data.sequence.collate import PadCollate, TokenDataset
from snn_engine.errors import UserError

OPERATORS = ("[MIN", "[MAX", "[MED", "[SM")
END = "]"
PAD, UNK, EOS = 0, 1, 2
LISTOPS_VOCAB: dict[str, int] = {"<pad>": PAD, "<unk>": UNK, "<eos>": EOS,
                                 **{str(d): 3 + d for d in range(10)},
                                 **{op: 13 + i for i, op in enumerate(OPERATORS)}, END: 17}
VALUE_P = 0.25  # LRA: a node is an operator when random() <= VALUE_P (and depth < max_depth)

Tree = Union[int, tuple[str, list["Tree"]]]


# ------------------------------------------------------------------------------------ expressions
def apply_op(op: str, args: Sequence[int]) -> int:
    """The value of ``op`` over ``args`` (LRA semantics: median rounded down, sum modulo 10)."""
    if not args:
        raise ValueError(f"{op} has no arguments")
    if op == "[MIN":
        return min(args)
    if op == "[MAX":
        return max(args)
    if op == "[MED":
        s = sorted(args)
        n = len(s)
        return s[n // 2] if n % 2 else (s[n // 2 - 1] + s[n // 2]) // 2
    if op == "[SM":
        return sum(args) % 10
    if op == "[FIRST":
        return args[0]
    if op == "[LAST":
        return args[-1]
    raise ValueError(f"unknown ListOps operator {op!r}")


def tokenize(source: str) -> list[str]:
    """An LRA ``Source`` string (with or without the pairing parentheses) -> tokens."""
    return [t for t in source.split() if t not in ("(", ")")]


def evaluate_listops(tokens: Iterable[str] | str) -> int:
    """Evaluate a tokenised (or LRA-string) expression with a stack; raises ``ValueError`` when malformed."""
    if isinstance(tokens, str):
        tokens = tokenize(tokens)
    stack: list[tuple[str, list[int]]] = [("", [])]
    for tok in tokens:
        if tok.startswith("["):
            stack.append((tok, []))
        elif tok == END:
            if len(stack) < 2:
                raise ValueError("unbalanced ']'")
            op, args = stack.pop()
            stack[-1][1].append(apply_op(op, args))
        elif tok.isdigit() and len(tok) == 1:
            stack[-1][1].append(int(tok))
        else:
            raise ValueError(f"unknown ListOps token {tok!r}")
    if len(stack) != 1 or len(stack[0][1]) != 1:
        raise ValueError("malformed expression (unclosed operator or several top-level values)")
    return stack[0][1][0]


class _TooLong(Exception):
    pass


def _draw(rng: random.Random, depth: int, max_depth: int, max_args: int, budget: list[int],
          force_op: bool = False) -> Tree:
    """One LRA tree; ``budget[0]`` counts the tokens left and aborts early past ``max_length``.

    ``force_op`` skips the digit draw at the root: a lone digit is always rejected by ``min_length >= 1``,
    so conditioning on an operator root keeps the LRA distribution of the kept trees and saves 3/4 of
    the draws. (Draws use ``random()`` only, which is faster than ``randint``/``choice``.)
    """
    r = 0.0 if force_op else (rng.random() if depth < max_depth else 1.0)
    budget[0] -= 1
    if budget[0] < 0:
        raise _TooLong
    if r > VALUE_P:
        return int(rng.random() * 10)
    budget[0] -= 1  # the closing bracket
    n = 2 + int(rng.random() * (max_args - 1))
    args = [_draw(rng, depth + 1, max_depth, max_args, budget) for _ in range(n)]
    return OPERATORS[int(rng.random() * len(OPERATORS))], args


def tree_tokens(tree: Tree) -> list[str]:
    """Tokens of a tree: ``[OP``, arguments, ``]``."""
    if isinstance(tree, int):
        return [str(tree)]
    op, args = tree
    return [op, *(t for a in args for t in tree_tokens(a)), END]


def tree_value(tree: Tree) -> int:
    if isinstance(tree, int):
        return tree
    return apply_op(tree[0], [tree_value(a) for a in tree[1]])


def tree_lra_string(tree: Tree) -> str:
    """The LRA TSV ``Source`` text of a tree (each application written as nested parenthesised pairs)."""
    if isinstance(tree, int):
        return str(tree)
    op, args = tree
    return "( " * (len(args) + 1) + op + " " + " ".join(f"{tree_lra_string(a)} )" for a in args) + " ] )"


def generate_listops(n: int, seed: int, split: str = "train", min_length: int = 1, max_length: int = 200,
                     max_depth: int = 10, max_args: int = 10,
                     exclude: set[tuple[str, ...]] | None = None) -> list[Tree]:
    """Draw ``n`` distinct trees with ``min_length < length < max_length`` (LRA's rule); deterministic.

    ``seed`` and ``split`` select the random stream; trees whose tokens are in ``exclude`` (e.g. the
    training set, when drawing validation) are skipped.
    """
    if max_length - min_length < 2:
        raise UserError(f"dataset.max_length must exceed dataset.min_length + 1, got {min_length}, {max_length}")
    rng = random.Random(f"listops/{int(seed)}/{split}")
    seen: set[tuple[str, ...]] = set(exclude or ())
    trees: list[Tree] = []
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 4 * max_depth + 100))
    attempts = 0
    try:
        while len(trees) < n:
            attempts += 1
            if attempts > 1000 * n + 100000:
                raise UserError(f"ListOps: could not draw {n} distinct expressions with {min_length} < length < "
                                f"{max_length} (max_depth={max_depth}, max_args={max_args}); widen dataset.max_length "
                                f"or lower dataset.min_length / the split sizes")
            try:
                tree = _draw(rng, 1, max_depth, max_args, [max_length - 1], force_op=min_length >= 1 and max_depth > 1)
            except _TooLong:
                continue
            toks = tuple(tree_tokens(tree))
            if len(toks) <= min_length or toks in seen:
                continue
            seen.add(toks)
            trees.append(tree)
    finally:
        sys.setrecursionlimit(limit)
    return trees


def encode(tokens: Sequence[str], seq_len: int, append_eos: bool = True) -> torch.Tensor:
    """Tokens -> ``int64 [L]`` ids (unknown tokens -> 1), truncated so that ``L <= seq_len``."""
    ids = [LISTOPS_VOCAB.get(t, UNK) for t in tokens][: seq_len - int(append_eos)]
    if append_eos:
        ids.append(EOS)
    return torch.tensor(ids, dtype=torch.long)


class _ListOpsBase(SequenceData):
    def __init__(self, name: str, num_classes: int, seq_len: int, batch_size: int, num_workers: int,
                 root, append_eos: bool, with_lengths: bool) -> None:
        if num_classes != 10:
            raise UserError(f"ListOps has 10 classes; set dataset.num_classes=10, got {num_classes}")
        super().__init__(name, num_classes, seq_len, d_input=None, vocab_size=len(LISTOPS_VOCAB),
                         batch_size=batch_size, num_workers=num_workers, root=root)
        self.append_eos, self.with_lengths = bool(append_eos), bool(with_lengths)

    def collate_fn(self) -> PadCollate:
        """Pads each batch to its longest expression with id 0: ``(int64 [B, L], labels)``
        (``((tokens, lengths), labels)`` when ``with_lengths``)."""
        return PadCollate(PAD, self.with_lengths)


class ListOpsGenerated(_ListOpsBase):
    """ListOps generated in memory (the embedded sequence default): no files, deterministic by ``seed``.

    Args:
        train_size, val_size: expressions per split (distinct; val excludes every training expression).
        min_length, max_length: kept lengths satisfy ``min_length < length < max_length`` (LRA: 500, 2000).
        max_depth, max_args: LRA generator limits (LRA: 10, 10).
        seed: data seed; train and val use independent streams under it.
        append_eos: append the end token (id 2); ``seq_len`` is ``max_length - 1 + append_eos``.
        with_lengths: batches carry ``(tokens, lengths)`` instead of tokens.
        Other arguments: see :class:`~snn_engine.data.sequence.SequenceData`.
    """

    title = "ListOps (generated)"

    def __init__(self, name: str = "listops_gen", num_classes: int = 10, train_size: int = 10000,
                 val_size: int = 1000, min_length: int = 20, max_length: int = 200, max_depth: int = 10,
                 max_args: int = 10, seed: int = 0, append_eos: bool = True, with_lengths: bool = False,
                 batch_size: int = 32, num_workers: int = 0, root=None) -> None:
        self.min_length = positive_int(min_length, "dataset.min_length", allow_zero=True)
        self.max_length = positive_int(max_length, "dataset.max_length")
        super().__init__(name, num_classes, self.max_length - 1 + int(bool(append_eos)), batch_size, num_workers,
                         None, append_eos, with_lengths)
        self.train_size = positive_int(train_size, "dataset.train_size")
        self.val_size = positive_int(val_size, "dataset.val_size")
        self.max_depth = positive_int(max_depth, "dataset.max_depth")
        self.max_args = positive_int(max_args, "dataset.max_args")
        if self.max_args < 2:
            raise UserError(f"dataset.max_args must be >= 2, got {max_args}")
        self.seed = int(seed)
        self._trees: dict[str, list[Tree]] = {}

    def trees(self, split: str) -> list[Tree]:
        """The generated trees of ``split`` (cached)."""
        if split not in self._trees:
            exclude = None if split == "train" else {tuple(tree_tokens(t)) for t in self.trees("train")}
            n = self.train_size if split == "train" else self.val_size
            self._trees[split] = generate_listops(n, self.seed, split, self.min_length, self.max_length,
                                                  self.max_depth, self.max_args, exclude)
        return self._trees[split]

    def build(self, split: str) -> TokenDataset:
        trees = self.trees(split)
        return TokenDataset([encode(tree_tokens(t), self.seq_len, self.append_eos) for t in trees],
                            [tree_value(t) for t in trees])


class ListOpsTSV(_ListOpsBase):
    """LRA ListOps from the release TSV files (96k train, 2k val, 2k test).

    Args:
        root: folder holding ``lra_release/listops-1000/basic_{train,val,test}.tsv`` (or ``listops-1000``
            itself, or the files directly); columns ``Source\\tTarget`` with a header row.
        seq_len: truncation length including the end token (s4: 2048; LRA expressions are < 2000 tokens).
        Other arguments: see :class:`ListOpsGenerated`.
    """

    title = "LRA ListOps"
    default_subdir = "lra_release/listops-1000"
    root_holds = "listops-1000/basic_{train,val,test}.tsv"
    splits = ("train", "val", "test")

    def __init__(self, name: str = "listops", num_classes: int = 10, seq_len: int = 2048, root=None,
                 append_eos: bool = True, with_lengths: bool = False, batch_size: int = 32,
                 num_workers: int = 0) -> None:
        super().__init__(name, num_classes, seq_len, batch_size, num_workers, root, append_eos, with_lengths)

    def _file(self, split: str) -> Path:
        name = f"basic_{split}.tsv"
        found = self.find(f"listops-1000/{name}", name)
        if found is None:
            raise self.missing(self.require_root(), f"<root>/lra_release/listops-1000/{name} (LRA release layout, "
                                                    f"columns Source<TAB>Target)")
        return found

    def build(self, split: str) -> TokenDataset:
        path = self._file(split)
        seqs, labels = [], []
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            if header is None or [h.strip() for h in header[:2]] != ["Source", "Target"]:
                raise UserError(f"{path} must start with the header 'Source<TAB>Target', got {header!r}; "
                                f"restore the LRA file")
            for line, row in enumerate(reader, start=2):
                try:
                    label = int(float(row[1]))
                except (IndexError, ValueError):
                    raise UserError(f"{path}:{line}: expected 'expression<TAB>label', got {row!r}") from None
                if not 0 <= label < 10:
                    raise UserError(f"{path}:{line}: label {label} is outside 0..9")
                seqs.append(encode(tokenize(row[0]), self.seq_len, self.append_eos))
                labels.append(label)
        if not seqs:
            raise UserError(f"{path} holds no examples; restore the LRA file")
        return TokenDataset(seqs, labels)
