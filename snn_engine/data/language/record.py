"""What a language model's checkpoint carries about its data: the vocabulary, with a checksum.

A token id means nothing without the vocabulary it was trained with: generation reads the words from the
checkpoint (no data set needed), and an evaluation or a resumed run on another data copy (say a WikiText-103 copy
whose vocabulary order differs) is stopped with one line instead of silently scoring other words::

    state.update(data.checkpoint_extras())            # the trainer: {"vocab": vocab_record(data.vocab, ...)}
    vocab = vocab_from_record(state["vocab"], path)   # generation: a Vocab, its checksum verified
    data.check_checkpoint(state, path)                # eval / resume: UserError when the data's vocabulary differs

The record is a plain dict (``torch.load(weights_only=True)`` reads it): ``itos`` (list of V str, id order),
``unk`` (str or None), ``eos`` (str), ``sha256`` (hex digest of ``itos``, :func:`vocab_digest`), ``data`` (the
data set's name, for messages).
"""

from __future__ import annotations

import hashlib
from typing import Any

import torch

from snn_engine.data.language.vocab import EOS, Vocab
from snn_engine.errors import UserError

#: the key of the record in a checkpoint
RECORD_KEY = "vocab"


def vocab_digest(itos: list[str]) -> str:
    """SHA-256 (hex) of the words in id order; words hold no whitespace, so ``"\\n".join`` is unambiguous."""
    return hashlib.sha256("\n".join(itos).encode("utf-8")).hexdigest()


def vocab_record(vocab: Vocab, data_name: str = "") -> dict[str, Any]:
    """The checkpoint record of ``vocab`` (see the module docstring)."""
    return {"itos": list(vocab.itos), "unk": vocab.unk, "eos": vocab.eos, "sha256": vocab_digest(vocab.itos),
            "data": str(data_name)}


def vocab_from_record(record: Any, source: object) -> Vocab:
    """The :class:`Vocab` of a record read from ``source`` (a checkpoint path, for messages); a one-line
    :class:`UserError` when the record is malformed or its words do not match its checksum."""
    itos = record.get("itos") if isinstance(record, dict) else None
    if not isinstance(itos, list) or not itos or not all(isinstance(w, str) for w in itos):
        raise UserError(f"checkpoint {source} has a malformed vocabulary record (expected a dict with a non-empty "
                        f"list of words 'itos'); pass a checkpoint written by train.py")
    if record.get("sha256") != vocab_digest(itos):
        raise UserError(f"the vocabulary stored in checkpoint {source} does not match its checksum (damaged or "
                        f"edited file); use an intact copy of the checkpoint")
    try:
        return Vocab(itos, unk=record.get("unk"), eos=record.get("eos") or EOS)
    except ValueError as err:
        raise UserError(f"checkpoint {source} has an invalid vocabulary ({err}); pass a checkpoint written by "
                        f"train.py") from None


def check_same_vocab(record: Any, vocab: Vocab, source: object, where: str) -> None:
    """A one-line :class:`UserError` unless ``vocab`` (the data set's, described by ``where``) is the vocabulary
    recorded in checkpoint ``source``: same words in the same id order."""
    stored = vocab_from_record(record, source).itos
    if vocab_digest(vocab.itos) == record["sha256"]:
        return
    common = min(len(stored), len(vocab.itos))
    differ = [i for i in range(common) if stored[i] != vocab.itos[i]]
    if differ:
        i = differ[0]
        detail = (f"id {i} is {vocab.itos[i]!r} here but {stored[i]!r} in the checkpoint; {len(differ)} of the "
                  f"first {common} ids differ")
    else:
        detail = f"{len(vocab.itos)} words here, {len(stored)} in the checkpoint"
    raise UserError(f"the vocabulary of {where} differs from the one checkpoint {source} was trained with ({detail}); "
                    f"point paths.data (or dataset.root) at the data copy the model was trained on")


def check_token_ids(tokens: torch.Tensor, vocab_size: int, source: object, fix: str = "") -> None:
    """A one-line :class:`UserError` naming ``source`` (the file the stream came from) unless every id of
    ``tokens`` (``int [N]``) lies in ``[0, vocab_size)``; ``fix`` ends the message (default: restore the file)."""
    if tokens.numel() == 0:
        return
    low, high = int(tokens.min()), int(tokens.max())
    if low >= 0 and high < vocab_size:
        return
    bad = (tokens < 0) | (tokens >= vocab_size)
    position = int(bad.nonzero()[0, 0])
    raise UserError(f"{source} holds token id {int(tokens[position])} at position {position}, outside the "
                    f"vocabulary [0, {vocab_size}) ({int(bad.sum())} such ids); "
                    f"{fix or 'restore the original file'}")
