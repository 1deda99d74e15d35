"""Issue 15, language models: nothing lost, nothing silently wrong.

A checkpoint carries its vocabulary (generation needs no data; another data copy is caught), the token cache
verifies its checksums (a changed id is rebuilt), bad ids name their file, and ``generate`` streams its text,
stops cleanly on Ctrl-C and refuses bad or misspelt arguments with one line.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from snn_engine.data.language import GrammarLanguage, WikiText103
from snn_engine.data.language.cache import load_fresh, save_atomic
from snn_engine.data.language.record import check_token_ids, vocab_from_record
from snn_engine.errors import UserError
from tests.lm_fixtures import TRAIN, write_wikitext


@pytest.fixture
def wiki(tmp_path):
    return write_wikitext(tmp_path / "data")


def saved_and_loaded(obj: dict, path) -> dict:
    """``obj`` through a checkpoint file, read back the way checkpoints are (``weights_only``)."""
    torch.save(obj, path)
    return torch.load(path, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------ the vocabulary in a checkpoint
@pytest.mark.parametrize("kind", ["wikitext", "grammar"])
def test_checkpoint_extras_carry_the_vocabulary_through_a_weights_only_load(kind, wiki, tmp_path):
    data = (WikiText103(root=wiki.root, vocab_size=None, max_length=8) if kind == "wikitext"
            else GrammarLanguage(train_tokens=200, val_tokens=20, test_tokens=20, max_length=8))
    state = saved_and_loaded({"model": {}, **data.checkpoint_extras()}, tmp_path / "ckpt.pt")
    vocab = vocab_from_record(state["vocab"], "ckpt.pt")
    assert vocab.itos == data.vocab.itos and (vocab.unk, vocab.eos) == (data.vocab.unk, data.vocab.eos)
    assert state["vocab"]["data"] == data.name
    data.check_checkpoint(state, "ckpt.pt")  # the same data: silent


def test_another_data_copy_with_a_reordered_vocabulary_is_caught(wiki, tmp_path):
    data = WikiText103(root=wiki.root, vocab_size=None, max_length=8)
    state = saved_and_loaded(data.checkpoint_extras(), tmp_path / "ckpt.pt")
    # the same paragraphs in another order: the same words and counts, ties broken in another order
    other = write_wikitext(tmp_path / "other", train=TRAIN[::-1])
    copy = WikiText103(root=other.root, vocab_size=None, max_length=8)
    assert sorted(copy.vocab.itos) == sorted(data.vocab.itos) and copy.vocab.itos != data.vocab.itos
    with pytest.raises(UserError) as error:
        copy.check_checkpoint(state, "ckpt.pt")
    message = str(error.value)
    assert "\n" not in message and "ckpt.pt" in message and str(other.folder) in message
    assert "ids differ" in message and "paths.data" in message

    bigger = write_wikitext(tmp_path / "bigger", train=TRAIN + [" A new word : zebra . "])
    grown = WikiText103(root=bigger.root, vocab_size=None, max_length=8)
    with pytest.raises(UserError, match="differs from the one checkpoint"):
        grown.check_checkpoint(state, "ckpt.pt")


def test_a_checkpoint_without_a_vocabulary_warns_and_an_edited_one_is_refused(wiki, tmp_path):
    data = WikiText103(root=wiki.root, vocab_size=None, max_length=8)
    with pytest.warns(UserWarning, match="does not carry its vocabulary"):
        data.check_checkpoint({"model": {}}, "old.pt")
    record = data.checkpoint_extras()["vocab"]
    swapped = dict(record, itos=[record["itos"][0], record["itos"][2], record["itos"][1], *record["itos"][3:]])
    for bad, message in [(swapped, "checksum"), ({"itos": "words"}, "malformed"), (None, "malformed")]:
        with pytest.raises(UserError, match=message):
            vocab_from_record(bad, "edited.pt")
        with pytest.raises(UserError, match="edited.pt"):
            data.check_checkpoint({"vocab": bad}, "edited.pt")


# ----------------------------------------------------------------------------------------- the token cache
def corrupt_one_id(path, position: int = 3) -> None:
    """Change one token id inside a cache file, keeping its key and stored checksums (a silent bit flip)."""
    stored = torch.load(path, weights_only=True)
    tokens = stored["tokens"].clone()
    tokens[position] = (tokens[position] + 1) % int(tokens.max() + 1)
    torch.save({**stored, "tokens": tokens}, path)


@pytest.mark.parametrize("split,stem", [("train", "train"), ("val", "valid")])
def test_a_changed_id_in_a_cached_stream_is_detected_and_rebuilt(split, stem, wiki):
    original = WikiText103(root=wiki.root, vocab_size=None, max_length=8)
    streams = {s: original.tokens(s).clone() for s in ("train", "val", "test")}
    path = wiki.folder / ".cache" / f"{stem}.pt"
    corrupt_one_id(path)
    with pytest.warns(UserWarning, match=f"{path}.*checksum"):
        rebuilt = WikiText103(root=wiki.root, vocab_size=None, max_length=8).tokens(split)
    assert torch.equal(rebuilt, streams[split])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten cache is fresh again: no warning, the same stream
        again = WikiText103(root=wiki.root, vocab_size=None, max_length=8)
        assert all(torch.equal(again.tokens(s), streams[s]) for s in streams)


def test_an_unreadable_cache_file_is_rebuilt_with_a_warning(wiki):
    first = WikiText103(root=wiki.root, vocab_size=None, max_length=8).tokens("test").clone()
    path = wiki.folder / ".cache" / "test.pt"
    path.write_bytes(path.read_bytes()[:40])
    with pytest.warns(UserWarning, match="cannot read the cache file"):
        assert torch.equal(WikiText103(root=wiki.root, vocab_size=None, max_length=8).tokens("test"), first)


def test_cache_checksums_cover_every_payload_value(tmp_path):
    key = {"version": 1}
    save_atomic(tmp_path / "c.pt", key, tokens=torch.arange(5, dtype=torch.int32), itos=["a", "b"])
    assert load_fresh(tmp_path / "c.pt", key)["itos"] == ["a", "b"]
    stored = torch.load(tmp_path / "c.pt", weights_only=True)
    torch.save({**stored, "itos": ["b", "a"]}, tmp_path / "c.pt")
    with pytest.warns(UserWarning, match="checksum"):
        assert load_fresh(tmp_path / "c.pt", key) is None
    torch.save({**stored, "extra": 1}, tmp_path / "c.pt")  # a value without a checksum is not trusted either
    with pytest.warns(UserWarning, match="checksum"):
        assert load_fresh(tmp_path / "c.pt", key) is None


def test_out_of_vocabulary_ids_in_a_cache_file_name_the_file(wiki):
    data = WikiText103(root=wiki.root, vocab_size=None, max_length=8)
    tokens = data.tokens("val").clone()
    path = wiki.folder / ".cache" / "valid.pt"
    key = WikiText103(root=wiki.root, vocab_size=None, max_length=8)._key("tokens", "train", "val")
    tokens[4] = len(data.vocab) + 2
    save_atomic(path, key, tokens=tokens)  # a consistent checksum: only the range check can tell
    with pytest.raises(UserError) as error:
        WikiText103(root=wiki.root, vocab_size=None, max_length=8).tokens("val")
    message = str(error.value)
    assert str(path) in message and f"token id {len(data.vocab) + 2} at position 4" in message
    assert "\n" not in message and "delete" in message and "wiki.valid.tokens" in message
    with pytest.raises(UserError, match=r"labels\.bin holds token id -1 at position 1"):
        check_token_ids(torch.tensor([0, -1, 2]), 3, "labels.bin")
    check_token_ids(torch.tensor([0, 1, 2]), 3, "labels.bin")

