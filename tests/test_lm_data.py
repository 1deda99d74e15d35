"""Language-modelling data: the token-stream samples, WikiText-103 on a tiny fixture in the release format
(tests/lm_fixtures.py), its cache, and the embedded grammar language with its exact entropy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from snn_engine.data.language import IGNORE_INDEX, GrammarLanguage, TokenStream, UnifilarSource, Vocab, WikiText103
from snn_engine.data.language import grammar as grammar_module
from snn_engine.data.language import wikitext as wikitext_module
from snn_engine.errors import UserError
from tests.helpers import compose_train
from tests.lm_fixtures import reference_vocab, reference_words, write_wikitext


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    yield


# ------------------------------------------------------------------------------------------------ samples
@pytest.mark.parametrize("n,train_len,eval_len", [(11, 2, 2), (12, 2, 3), (5, 0, 1), (1, 0, 0)])
def test_token_stream_cuts_the_stream_into_shifted_samples(n, train_len, eval_len):
    tokens = torch.arange(100, 100 + n, dtype=torch.int32)
    train, evaluation = TokenStream(tokens, 5, drop_last=True), TokenStream(tokens, 5, drop_last=False)
    assert (len(train), len(evaluation)) == (train_len, eval_len)
    assert train.tokens_in == 5 * train_len and evaluation.tokens_in == n - 1
    for i in range(train_len):
        x, y = train[i]
        assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (5,)
        assert x.tolist() == list(range(100 + 5 * i, 105 + 5 * i)) and y.tolist() == [t + 1 for t in x.tolist()]
    targets = [y[y != IGNORE_INDEX] for _, y in evaluation]
    assert torch.cat(targets).tolist() == tokens[1:].tolist() if targets else n == 1  # each token once
    if eval_len and (n - 1) % 5:
        x, y = evaluation[eval_len - 1]
        real = (n - 1) % 5
        assert y[real:].eq(IGNORE_INDEX).all() and x[real + 1:].eq(0).all() and y[:real].ne(IGNORE_INDEX).all()
    with pytest.raises(IndexError):
        evaluation[eval_len]


# ------------------------------------------------------------------------------------------ WikiText-103
@pytest.fixture
def wiki(tmp_path):
    return write_wikitext(tmp_path / "data")


def test_wikitext_vocabulary_is_train_words_by_frequency_with_eos_first(wiki):
    data = WikiText103(root=wiki.root, vocab_size=None, max_length=8)
    itos = data.vocab.itos
    assert itos == reference_vocab(wiki.texts["train"])
    words = reference_words(wiki.texts["train"])
    assert data.vocab_size == data.num_classes == len(itos) == len(set(words))
    assert itos[:5] == ["<eos>", "=", ".", "the", "river"]  # <eos> is special; then 12, 8, 7 and 6 occurrences
    # count ties keep first-occurrence order, not alphabetical: "rises" comes before "flows"
    assert data.vocab.stoi["rises"] < data.vocab.stoi["flows"] and "<unk>" in data.vocab.stoi
    assert "Alba" in itos and "harbour" not in itos  # valid/test words do not enter the vocabulary
    assert (data.task, data.seq_len, data.d_input, data.repeated_aug, data.entropy_per_token) == \
        ("language_model", 8, None, 0, None)
    assert data.collate_fn() is None and data.mixup_fn() is None and data.best_perplexity is None


def test_wikitext_appends_eos_to_every_line_including_blank_ones(wiki):
    data = WikiText103(root=wiki.root, vocab_size=None, max_length=8)
    for split in ("train", "val", "test"):
        stream = data.tokens(split)
        text = wiki.texts[split]
        assert stream.dtype == torch.int32 and stream.numel() == len(reference_words(text))
        assert int((stream == data.vocab.eos_id).sum()) == text.count("\n")  # 1 per line, blank ones too
    train = data.vocab.decode(data.tokens("train")).split(" ")
    assert train[:8] == ["<eos>", "=", "Zeta", "River", "=", "<eos>", "<eos>", "The"]
    valid = data.vocab.decode(data.tokens("val"))
    assert valid == ("<eos> = Alba = <eos> <eos> Alba is a <unk> on the Zeta River . <unk> <unk> has <unk> @,@ "
                     "<unk> <unk> . <eos> <eos>")  # words absent from train are <unk>


def test_wikitext_samples_are_the_stream_shifted_by_one_and_eval_is_padded(wiki):
    data = WikiText103(root=wiki.root, vocab_size=None, max_length=7)
    stream = data.tokens("train").long()
    train = data.train_set()
    assert len(train) == (stream.numel() - 1) // 7 and data.tokens_in("train") == 7 * len(train)
    x, y = train[3]
    assert torch.equal(x, stream[21:28]) and torch.equal(y, stream[22:29])
    val, n_val = data.val_set(), data.tokens("val").numel()
    assert (n_val - 1) % 7 and len(val) == math.ceil((n_val - 1) / 7)  # the fixture leaves a padded sample
    xs, ys = next(iter(DataLoader(val, batch_size=len(val), collate_fn=data.collate_fn())))
    assert xs.shape == ys.shape == (len(val), 7) and xs.dtype == ys.dtype == torch.int64
    assert int((ys != IGNORE_INDEX).sum()) == data.tokens_in("val") == n_val - 1
    assert torch.equal(ys[ys != IGNORE_INDEX], data.tokens("val")[1:].long())
    assert ys[-1, -1] == IGNORE_INDEX and xs[-1, -1] == 0
    assert data.tokens_in("test") == data.tokens("test").numel() - 1


def test_wikitext_cache_is_written_reused_and_rebuilt_when_a_file_changes(wiki, monkeypatch):
    first = WikiText103(root=wiki.root, vocab_size=None, max_length=8)
    streams = {s: first.tokens(s).clone() for s in ("train", "val", "test")}
    cache = wiki.folder / ".cache"
    assert sorted(p.name for p in cache.iterdir()) == ["test.pt", "train.pt", "valid.pt", "vocab.pt"]

    def fail(*args, **kwargs):
        raise AssertionError("rebuilt although the cache is fresh")

    with monkeypatch.context() as m:
        m.setattr(wikitext_module, "count_and_encode", fail)
        m.setattr(wikitext_module, "encode_file", fail)
        again = WikiText103(root=wiki.root, vocab_size=len(first.vocab), max_length=8)
        assert again.vocab.itos == first.vocab.itos
        assert all(torch.equal(again.tokens(s), streams[s]) for s in streams)

    # a changed train file: a new word (and the valid file's "harbour" is now known)
    train_file = wiki.folder / "wiki.train.tokens"
    train_file.write_text(wiki.texts["train"] + " The harbour of Alba . \n", encoding="utf-8", newline="")
    with monkeypatch.context() as m:
        m.setattr(wikitext_module, "encode_file", fail)  # valid must be re-encoded: caught here
        with pytest.raises(AssertionError, match="rebuilt"):
            WikiText103(root=wiki.root, vocab_size=None, max_length=8).tokens("val")
    rebuilt = WikiText103(root=wiki.root, vocab_size=None, max_length=8)
    assert len(rebuilt.vocab) == len(first.vocab) + 1 and "harbour" in rebuilt.vocab
    assert rebuilt.tokens("train").numel() == streams["train"].numel() + 6
    assert "harbour" in rebuilt.vocab.decode(rebuilt.tokens("val"))
    assert torch.equal(rebuilt.tokens("test"), torch.tensor(rebuilt.vocab.lookup(reference_words(wiki.texts["test"])),
                                                             dtype=torch.int32))


def test_wikitext_without_cache_writes_nothing(wiki):
    data = WikiText103(root=wiki.root, vocab_size=None, max_length=8, cache=False)
    assert data.tokens("val").numel() > 0 and not (wiki.folder / ".cache").exists()


def test_wikitext_declared_vocab_size_is_lazy_and_checked(wiki, tmp_path):
    absent = WikiText103(root=tmp_path / "nowhere", vocab_size=267735, num_classes=267735)  # no disk access yet
    assert absent.vocab_size == absent.num_classes == 267735 and absent.seq_len == 8192 and absent.batch_size == 1
    with pytest.raises(UserError, match="dataset.vocab_size=") as err:
        WikiText103(root=wiki.root, vocab_size=267735).train_set()
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="num_classes"):
        WikiText103(root=wiki.root, vocab_size=10, num_classes=11)


def test_wikitext_missing_files_give_one_line_errors(wiki, tmp_path):
    for root, missing in ((tmp_path / "nowhere", "wiki.train.tokens"), (wiki.root, "wiki.test.tokens")):
        if root == wiki.root:
            (wiki.folder / "wiki.test.tokens").unlink()
        with pytest.raises(UserError) as err:
            WikiText103(root=root, vocab_size=None)
        message = str(err.value)
        assert "\n" not in message and "paths.data" in message and "dataset.root" in message
        assert missing in message and str(root / "wikitext-103") in message
    with pytest.raises(UserError, match="paths.data"):
        WikiText103(root=None, vocab_size=None)


def test_wikitext_root_may_be_the_release_folder_itself(wiki):
    assert WikiText103(root=wiki.folder, vocab_size=None).vocab.itos == reference_vocab(wiki.texts["train"])


def test_vocab_encode_decode_round_trip(wiki):
    vocab = WikiText103(root=wiki.root, vocab_size=None).vocab
    text = "The river is 1 @,@ 200 km long . <eos> café"
    ids = vocab.encode(text)
    assert ids.dtype == torch.int64 and ids.shape == (11,) and vocab.decode(ids) == text
    assert vocab.decode(vocab.encode("The submarine river")) == "The <unk> river"
    assert vocab.decode(vocab.encode("a b\n\nriver", add_eos=True)) == "a <unk> <eos> <eos> river <eos>"
    assert vocab.decode(torch.tensor([[vocab.stoi["river"], IGNORE_INDEX]])) == "river"
    closed = Vocab(["<eos>", "x"], unk=None)
    with pytest.raises(UserError, match="not in the vocabulary"):
        closed.encode("x y")
    with pytest.raises(ValueError):
        closed.decode([2])


def test_bad_settings_raise_user_errors(wiki):
    with pytest.raises(UserError, match="dataset.max_length"):
        WikiText103(root=wiki.root, vocab_size=None, max_length=0)
    with pytest.raises(UserError, match="dataset.max_length"):
        GrammarLanguage(max_length=0)
    data = GrammarLanguage(train_tokens=300, val_tokens=50, test_tokens=50, max_length=16)
    with pytest.raises(UserError, match="unknown split 'dev'"):
        data.tokens_in("dev")
    with pytest.raises(UserError, match="unknown split"):
        WikiText103(root=wiki.root, vocab_size=None).tokens("valid")
    for kwargs, key in ((dict(train_tokens=16, max_length=16), "train_tokens"), (dict(val_tokens=1), "val_tokens"),
                        (dict(vocab_size=70), "vocab_size"), (dict(num_classes=3), "num_classes"),
                        (dict(batch_size=0), "batch_size")):
        with pytest.raises(UserError, match=f"dataset.{key}"):
            GrammarLanguage(**kwargs)


def test_dataset_configs_instantiate(tmp_path):
    wiki = instantiate(compose_train(["dataset=wikitext103", f"paths.data={tmp_path}"]).dataset)
    assert isinstance(wiki, WikiText103) and (wiki.vocab_size, wiki.seq_len, wiki.batch_size) == (267735, 8192, 1)
    with pytest.raises(UserError, match="paths.data"):
        wiki.val_set()
    cfg = compose_train(["dataset=lm_grammar"]).dataset
    grammar = instantiate(cfg)
    assert isinstance(grammar, GrammarLanguage) and grammar.num_classes == cfg.num_classes == 69
    assert (grammar.seq_len, grammar.batch_size, grammar.split_tokens["train"]) == (128, 16, 200_000)


# ------------------------------------------------------------------------------------------ the grammar
def test_unifilar_source_entropy_and_stationary_distribution_are_exact():
    # A: "a" (1/2) -> A, "b" (1/2) -> B;  B: "a" -> A.  pi = (2/3, 1/3), h = (2/3) ln 2
    table = {"A": [(0.5, "a", "A"), (0.5, "b", "B")], "B": [(1.0, "a", "A")]}
    source = UnifilarSource("A", table.__getitem__, ["a", "b"])
    assert np.allclose(source.stationary, [2 / 3, 1 / 3]) and math.isclose(source.entropy_rate, 2 / 3 * math.log(2))
    assert np.allclose(source.word_frequencies, [2 / 3, 1 / 3])
    with pytest.raises(ValueError, match="unifilar"):
        UnifilarSource("A", {"A": [(0.5, "a", "A"), (0.5, "a", "B")], "B": [(1.0, "a", "A")]}.__getitem__, ["a"])
    with pytest.raises(ValueError, match="sum to"):
        UnifilarSource("A", {"A": [(0.4, "a", "A")]}.__getitem__, ["a"])


def test_grammar_interface_shapes_and_determinism():
    data = GrammarLanguage(train_tokens=2000, val_tokens=300, test_tokens=300, max_length=32, seed=3, batch_size=4)
    assert data.task == "language_model" and data.vocab_size == data.num_classes == len(data.vocab.itos) == 69
    assert data.vocab.itos[0] == "<eos>" and data.d_input is None and data.seq_len == 32
    assert data.best_perplexity == pytest.approx(math.exp(data.entropy_per_token))
    x, y = next(iter(DataLoader(data.train_set(), batch_size=data.batch_size)))
    assert x.shape == y.shape == (4, 32) and x.dtype == y.dtype == torch.int64 and torch.equal(x[:, 1:], y[:, :-1])
    same = GrammarLanguage(train_tokens=2000, val_tokens=300, test_tokens=300, max_length=32, seed=3)
    other = GrammarLanguage(train_tokens=2000, val_tokens=300, test_tokens=300, max_length=32, seed=4)
    assert all(torch.equal(data.tokens(s), same.tokens(s)) for s in ("train", "val", "test"))
    assert not torch.equal(data.tokens("train"), other.tokens("train"))
    assert not torch.equal(data.tokens("val"), data.tokens("test"))  # independent draws
    assert len(data.val_set()) == math.ceil(299 / 32) and data.tokens_in("val") == 299
    assert data.vocab.decode(data.tokens("train")[:1]) in ("does", "do", *grammar_module.DETERMINERS)


def test_grammar_entropy_matches_a_long_stream_and_frequencies_match_the_stationary_distribution():
    data = GrammarLanguage()  # the default: 200k training tokens
    h = data.entropy_per_token
    assert h == pytest.approx(1.88200718, abs=1e-8)
    stream = data.tokens("train")
    nll = -data.log_probs(stream)
    # the per-token standard deviation is ~1.05 nats and the correlations are short: the mean has sd ~0.002
    assert abs(float(nll.mean()) - h) < 0.01
    freq = np.bincount(stream.numpy(), minlength=data.vocab_size) / stream.numel()
    assert 0.5 * np.abs(freq - data.source.word_frequencies).sum() < 0.015
    assert np.abs(freq - data.source.word_frequencies).max() < 0.004
    # a model without memory across samples: slightly above h; with 2-token samples clearly above
    window = data.window_entropy("val")
    assert h - 0.02 < window < h + 0.05
    short = GrammarLanguage(val_tokens=20_000, max_length=2)
    assert short.window_entropy("val") > window + 0.2


def test_grammar_has_agreement_and_question_marks_far_from_their_cause():
    data = GrammarLanguage(train_tokens=20_000, max_length=16)
    words = data.vocab.decode(data.tokens("train")).replace("<eos> ", "").split(" ")
    number = {w: n for pairs in (grammar_module.NOUNS, grammar_module.INTRANSITIVE, grammar_module.TRANSITIVE,
                                 [grammar_module.COPULA]) for pair in pairs for w, n in zip(pair, ("sg", "pl"))}
    sentences, current = [], []
    for w in words[: max(i for i, w in enumerate(words) if w in ".?") + 1]:
        current.append(w)
        if w in ".?":
            sentences.append(current)
            current = []
    checked = 0
    for s in sentences:
        assert (s[0] in ("does", "do")) == (s[-1] == "?")
        if s[0] in ("does", "do"):
            noun = next(w for w in s if w in number)
            assert number[noun] == ("sg" if s[0] == "does" else "pl")
        elif "that" not in s:  # subject noun, then the agreeing verb
            noun, verb = [w for w in s if w in number][:2]
            assert number[noun] == number[verb]
            checked += 1
    assert len(sentences) > 1000 and checked > 500
