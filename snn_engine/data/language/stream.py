"""One token stream per split, cut into next-token-prediction samples; the base class of the language data.

A split is one contiguous stream ``t[0..N)``. Sample ``i`` (length ``L``) is::

    inputs  = t[i*L     : (i+1)*L]        int64 [L]
    targets = t[i*L + 1 : (i+1)*L + 1]    int64 [L]   (next token of every input position)

so each of the ``N - 1`` tokens after the first is a target exactly once. Training drops the last
incomplete sample; evaluation keeps it, padded with input id 0 and target ``IGNORE_INDEX`` (-100), so that
every token of the split is predicted exactly once.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch.utils.data import Dataset

from snn_engine.data.language.record import RECORD_KEY, check_same_vocab, vocab_record
from snn_engine.data.language.vocab import IGNORE_INDEX, Vocab
from snn_engine.data.sequence import SequenceData, positive_int
from snn_engine.errors import UserError

PAD_ID = 0


class TokenStream(Dataset):
    """Fixed-length next-token samples of one stream.

    Args:
        tokens: ``int [N]`` (any integer dtype; int32 saves memory) the split's stream.
        length: L, tokens per sample.
        drop_last: drop the last incomplete sample (training) instead of padding it (evaluation).
    Items: ``(inputs int64 [L], targets int64 [L])``.
    """

    def __init__(self, tokens: torch.Tensor, length: int, drop_last: bool) -> None:
        if tokens.ndim != 1 or tokens.is_floating_point():
            raise ValueError(f"tokens must be a 1-D integer tensor, got {tokens.dtype} {tuple(tokens.shape)}")
        self.tokens, self.length, self.drop_last = tokens, int(length), bool(drop_last)
        predicted = max(tokens.numel() - 1, 0)
        self._len = predicted // self.length if drop_last else math.ceil(predicted / self.length)

    def __len__(self) -> int:
        return self._len

    @property
    def tokens_in(self) -> int:
        """The number of predicted tokens (targets other than ``IGNORE_INDEX``) over all samples."""
        return min(self._len * self.length, max(self.tokens.numel() - 1, 0))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = int(index)
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"sample {index} of {self._len}")
        start, L = index * self.length, self.length
        chunk = self.tokens[start: start + L + 1].to(torch.long)
        inputs, targets = chunk[:-1], chunk[1:]
        if targets.numel() < L:  # the padded last evaluation sample
            n = targets.numel()
            inputs = torch.cat([inputs, inputs.new_full((L - n,), PAD_ID)])
            targets = torch.cat([targets, targets.new_full((L - n,), IGNORE_INDEX)])
        return inputs, targets

    def __repr__(self) -> str:
        return (f"TokenStream({self.tokens.numel()} tokens, {self._len} samples of {self.length}, "
                f"{'drop_last' if self.drop_last else 'padded'})")


class LanguageData(SequenceData):
    """Base class of the language-modelling data sets (``task = "language_model"``).

    Args:
        name: short identifier.
        vocab_size: number of token ids V; ``num_classes`` is V too (the model predicts a token).
        max_length: L, tokens per sample (``seq_len``).
        batch_size, num_workers, root: see :class:`~snn_engine.data.sequence.SequenceData`.
    Subclasses set ``vocab`` (a :class:`Vocab`), ``entropy_per_token`` (nats per token of the true
    distribution, ``None`` when unknown) and implement :meth:`tokens`.
    """

    task = "language_model"
    splits = ("train", "val", "test")
    entropy_per_token: float | None = None
    vocab: Vocab

    def __init__(self, name: str, vocab_size: int, max_length: int, batch_size: int = 1, num_workers: int = 0,
                 root=None) -> None:
        self.max_length = positive_int(max_length, "dataset.max_length")
        vocab_size = positive_int(vocab_size, "dataset.vocab_size")
        super().__init__(name, vocab_size, self.max_length, d_input=None, vocab_size=vocab_size,
                         batch_size=batch_size, num_workers=num_workers, root=root)

    @property
    def best_perplexity(self) -> float | None:
        """``exp(entropy_per_token)``: the perplexity of the true distribution (``None`` when unknown)."""
        return None if self.entropy_per_token is None else math.exp(self.entropy_per_token)

    def tokens(self, split: str) -> torch.Tensor:
        """The whole stream of ``split`` as ``int [N]``; subclasses implement it."""
        raise NotImplementedError

    def where(self) -> str:
        """This data set in error messages (file-backed subclasses name their folder)."""
        return self.title

    # ---------------------------------------------------------------- what a checkpoint carries (record.py)
    def checkpoint_extras(self) -> dict:
        """``{"vocab": record}``, for the trainer to store in every checkpoint: the vocabulary (plain str/list/
        None values, readable with ``torch.load(weights_only=True)``), so generation needs no data set and
        :meth:`check_checkpoint` can tell another data copy apart."""
        return {RECORD_KEY: vocab_record(self.vocab, self.name)}

    def check_checkpoint(self, state: dict, source: object) -> None:
        """A one-line :class:`UserError` when checkpoint ``state`` (read from ``source``) was trained with another
        vocabulary than this data's (other words, or the same words in another order); a warning when it carries
        none (written before checkpoints held their vocabulary: nothing to compare)."""
        if RECORD_KEY not in state:
            warnings.warn(f"checkpoint {source} does not carry its vocabulary (written by an older version); "
                          f"cannot check that {self.where()} is the data copy it was trained on", stacklevel=2)
            return
        check_same_vocab(state[RECORD_KEY], self.vocab, source, self.where())

    def check_split(self, split: str) -> str:
        """``split`` if it is one of ``splits``, else a :class:`UserError`."""
        if split not in self.splits:
            raise UserError(f"unknown split {split!r} of {self.title}; use one of {', '.join(self.splits)}")
        return split

    def build(self, split: str) -> TokenStream:
        return TokenStream(self.tokens(split), self.max_length, drop_last=split == "train")

    def _split(self, split: str) -> TokenStream:
        return super()._split(self.check_split(split))

    def tokens_in(self, split: str) -> int:
        """The number of tokens ``split`` predicts (targets other than ``IGNORE_INDEX``)."""
        return self._split(split).tokens_in

    def collate_fn(self) -> None:
        """Samples have one length: torch's default stacking gives ``(int64 [B, L], int64 [B, L])``."""
        return None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, vocab_size={self.vocab_size}, "
                f"max_length={self.max_length}, batch_size={self.batch_size}, num_workers={self.num_workers})")
