"""Per-batch padding of variable-length sequences (token ids or float steps), with their lengths.

    loader = DataLoader(data.train_set(), batch_size=32, collate_fn=PadCollate(with_lengths=True))
    (tokens, lengths), labels = next(iter(loader))   # int64 [B, L_max], int64 [B], int64 [B]

Sequences are right-padded with ``pad_value`` (token id 0 is padding in every data set here).
A retrieval item ``((doc1, doc2), label)`` becomes ``(doc1 [B, L], doc2 [B, L])`` with one common L,
plus ``len1, len2`` when ``with_lengths``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_sequences(seqs: Sequence[torch.Tensor], pad_value: float = 0,
                  length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad ``[L_i]`` or ``[L_i, D]`` tensors into ``[B, L, ...]``.

    Args:
        seqs: B tensors of one dtype whose trailing dims agree.
        pad_value: fill value of the padding.
        length: L (at least the longest sequence); the longest ``L_i`` when ``None``.
    Returns:
        the padded batch and ``int64 [B]`` lengths.
    """
    lengths = torch.tensor([s.shape[0] for s in seqs], dtype=torch.long)
    out = torch.nn.utils.rnn.pad_sequence(list(seqs), batch_first=True, padding_value=pad_value)
    extra = 0 if length is None else int(length) - out.shape[1]
    if extra > 0:  # pad further, to the common length of a retrieval pair
        out = torch.cat([out, out.new_full((out.shape[0], extra, *out.shape[2:]), pad_value)], dim=1)
    return out, lengths


class PadCollate:
    """Collate ``(x, label)`` items into ``(x_batch, labels)``, padding each batch to its longest sequence.

    Args:
        pad_value: the padding token id (or float value).
        with_lengths: when true, ``x_batch`` is ``(padded, lengths)`` (retrieval: ``(doc1, doc2, len1, len2)``);
            otherwise just the padded tensor (retrieval: ``(doc1, doc2)``).
    Labels are ``int64 [B]``. A picklable class, so it works with worker processes.
    """

    def __init__(self, pad_value: float = 0, with_lengths: bool = False) -> None:
        self.pad_value = pad_value
        self.with_lengths = bool(with_lengths)

    def __call__(self, batch: Sequence[tuple]) -> tuple:
        xs, ys = zip(*batch)
        labels = torch.as_tensor([int(y) for y in ys], dtype=torch.long)
        if isinstance(xs[0], (tuple, list)):  # retrieval pairs
            firsts, seconds = [x[0] for x in xs], [x[1] for x in xs]
            length = max(max(s.shape[0] for s in firsts), max(s.shape[0] for s in seconds))
            a, la = pad_sequences(firsts, self.pad_value, length)
            b, lb = pad_sequences(seconds, self.pad_value, length)
            return ((a, b, la, lb) if self.with_lengths else (a, b)), labels
        x, lengths = pad_sequences(xs, self.pad_value)
        return ((x, lengths) if self.with_lengths else x), labels

    def __repr__(self) -> str:
        return f"PadCollate(pad_value={self.pad_value!r}, with_lengths={self.with_lengths})"


class TokenDataset(torch.utils.data.Dataset):
    """Held-in-memory sequences: items ``(seqs[i], int(labels[i]))``.

    Args:
        seqs: per-item tensors (``int64 [L_i]`` tokens, ``float32 [L, D]`` steps) or pairs of them.
        labels: ints, one per item.
    """

    def __init__(self, seqs: Sequence, labels: Sequence[int]) -> None:
        if len(seqs) != len(labels):
            raise ValueError(f"{len(seqs)} sequences but {len(labels)} labels")
        self.seqs, self.labels = list(seqs), [int(y) for y in labels]

    def __len__(self) -> int:
        return len(self.seqs)

    def __getitem__(self, index: int) -> tuple:
        return self.seqs[index], self.labels[index]
