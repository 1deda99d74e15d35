"""Language-modelling data (next-token prediction), instantiated from ``conf/dataset/*.yaml``.

Every object has ``task = "language_model"``, ``name, vocab_size, num_classes (= vocab_size), seq_len
(= max_length), d_input = None, batch_size, num_workers, repeated_aug = 0``, a ``vocab`` (:class:`Vocab`:
``itos, stoi, encode(text) -> int64 [n], decode(ids) -> str``) and ``entropy_per_token`` (nats per token of
the true distribution, ``None`` when unknown), and provides ``train_set(), val_set(), test_set()``,
``tokens_in(split)``, ``collate_fn()`` and ``mixup_fn()`` (both ``None``), and ``checkpoint_extras()`` /
``check_checkpoint(state, path)``: the vocabulary a checkpoint carries, and the check that a checkpoint was
trained with this data's vocabulary (:mod:`.record`).

A split is one token stream; its items are ``(inputs int64 [L], targets int64 [L])``, the targets shifted by
one token. Training drops the last incomplete sample; validation/test pad it (input 0, target
``IGNORE_INDEX = -100``) so every token is predicted exactly once (:mod:`.stream`).

* :class:`GrammarLanguage` (grammar.py): the embedded default, English-like sentences of a small probabilistic
  grammar with an exactly known entropy rate (no files).
* :class:`WikiText103` (wikitext.py): word-level WikiText-103 (Transformer-XL convention), cached encodings.

Submodules load on first use.
"""

from __future__ import annotations

from snn_engine.data.language.vocab import EOS, IGNORE_INDEX, UNK, Vocab

_LAZY = {
    "LanguageData": "stream", "TokenStream": "stream",
    "WikiText103": "wikitext", "WIKITEXT103_VOCAB_SIZE": "wikitext",
    "GrammarLanguage": "grammar", "english_grammar": "grammar",
    "UnifilarSource": "automaton",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["EOS", "IGNORE_INDEX", "UNK", "Vocab", *_LAZY]
