"""Issue 15, language models: nothing lost, nothing silently wrong.

A checkpoint carries its vocabulary (generation needs no data; another data copy is caught), the token cache
verifies its checksums (a changed id is rebuilt), bad ids name their file, and ``generate`` streams its text,
stops cleanly on Ctrl-C and refuses bad or misspelt arguments with one line.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from snn_engine.data.language import GrammarLanguage, WikiText103
from snn_engine.data.language.cache import load_fresh, save_atomic
from snn_engine.data.language.record import check_token_ids, vocab_from_record
from snn_engine.errors import UserError
from spiking_ssm.lm.generate import USAGE
from tests.helpers import REPO
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



# ------------------------------------------------------------------------------------------- generation
def lm_checkpoint(folder, data_root, carry_vocab: bool = True) -> str:
    """A trainer-format checkpoint of a tiny LM on the WikiText fixture at ``data_root`` (random weights), with the
    vocabulary record the trainer stores (``data.checkpoint_extras()``) unless ``carry_vocab`` is false."""
    from omegaconf import OmegaConf

    from snn_engine.protection import checkpoint as ckpt_io
    from snn_engine.run import build_model
    from tests.helpers import compose_train

    cfg = compose_train(["model=spiking_ssm_lm", "dataset=wikitext103", "neuron=lif", "logger=none",
                         f"paths.data={data_root}", "dataset.vocab_size=null", "dataset.num_classes=null",
                         "dataset.max_length=8", "model.d_model=16", "model.d_state=8", "model.n_layers=1"])
    data = WikiText103(root=data_root, vocab_size=None, max_length=8)
    torch.manual_seed(3)
    model = build_model(cfg, data)
    state = {"model": model.state_dict(), "optimizer": {}, "scheduler": {}, "scaler": {}, "ema": None, "step": 1,
             "epoch": 0, "batch_in_epoch": 0, "best": {}, "last_val": {}, "model_target": cfg.model._target_,
             "config": OmegaConf.to_container(cfg, resolve=False), "config_raw": OmegaConf.to_container(cfg),
             **(data.checkpoint_extras() if carry_vocab else {})}
    path = folder / "checkpoints" / "last.pt"
    ckpt_io.atomic_save(state, path)
    return str(path)


def run_generate(args: list[str], capsys) -> tuple[int, str, str]:
    from spiking_ssm.lm.generate import main

    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def trained(wiki, tmp_path):
    """(checkpoint carrying its vocabulary, the fixture it was trained on)."""
    return lm_checkpoint(tmp_path / "run", wiki.root), wiki


GREEDY = ["prompt=The river is", "max_new_tokens=12", "temperature=0"]


def test_generation_reads_the_vocabulary_from_the_checkpoint_not_the_data(trained, tmp_path, capsys):
    ckpt, wiki = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no fallback warning: the vocabulary is in the checkpoint
        code, reference, err = run_generate([f"ckpt={ckpt}", *GREEDY], capsys)
        assert code == 0, err
        nowhere = run_generate([f"ckpt={ckpt}", *GREEDY, f"paths.data={tmp_path / 'nowhere'}"], capsys)
        other = write_wikitext(tmp_path / "other", train=TRAIN[::-1])  # a reordered copy
        reordered = run_generate([f"ckpt={ckpt}", *GREEDY, f"paths.data={other.root}"], capsys)
    text = reference.split("---")[0]
    assert text.startswith("The river is ") and len(text.split()) == 15
    assert nowhere[0] == 0 and nowhere[1].split("---")[0] == text
    assert reordered[0] == 0 and reordered[1].split("---")[0] == text


def test_an_old_checkpoint_without_a_vocabulary_warns_which_data_gives_the_words(wiki, tmp_path, capsys):
    old = lm_checkpoint(tmp_path / "old", wiki.root, carry_vocab=False)
    other = write_wikitext(tmp_path / "other", train=TRAIN[::-1])
    with pytest.warns(UserWarning, match=f"does not carry its vocabulary.*{other.folder}"):
        code, out, err = run_generate([f"ckpt={old}", *GREEDY, f"paths.data={other.root}"], capsys)
    assert code == 0, err
    code, out, err = run_generate([f"ckpt={old}", *GREEDY, f"paths.data={tmp_path / 'nowhere'}"], capsys)
    assert code == 1 and "WikiText-103 not found" in err and err.count("\n") == 1


@pytest.mark.parametrize("temperature", ["nan", "inf", "-inf", "-0.5", "1e400"])
def test_non_finite_or_negative_temperatures_are_one_line_errors(temperature, capsys):
    code, out, err = run_generate(["ckpt=X", f"temperature={temperature}"], capsys)
    assert code == 1 and err.startswith("error: temperature=") and "0 = greedy" in err and err.count("\n") == 1


def test_sampling_refuses_bad_temperatures_and_survives_tiny_ones():
    from spiking_ssm.lm.generate import sample

    log_probs = torch.log_softmax(torch.tensor([0.0, 3.0, 1.0, -2.0]), dim=0).float()
    generator = torch.Generator().manual_seed(0)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(UserError, match="temperature"):
            sample(log_probs, bad, 0, generator)
    assert sample(log_probs, 1e-300, 0, generator) == 1  # (log p - max) / T: no overflow to NaN
    assert sample(log_probs, 0.0, 0, generator) == 1
    with pytest.raises(UserError, match="not finite"):
        sample(torch.full((4,), float("nan")), 1.0, 0, generator)


@pytest.mark.parametrize("arg,suggestion", [("temprature=0.5", "'temperature'"),
                                            ("max_new_token=3", "'max_new_tokens'"), ("promt=the", "'prompt'"),
                                            ("sed=1", "'seed'")])
def test_misspelt_arguments_are_refused_with_the_closest_name(arg, suggestion, capsys):
    code, out, err = run_generate(["ckpt=X", arg], capsys)
    assert code == 1 and err.startswith("error: unknown argument") and f"did you mean {suggestion}?" in err
    assert err.count("\n") == 1


def test_misspelt_config_overrides_are_refused_and_plus_adds_a_key(trained, capsys):
    ckpt, wiki = trained
    code, out, err = run_generate([f"ckpt={ckpt}", "max_new_tokens=2", "paths.dta=/data"], capsys)
    assert code == 1 and "unknown setting paths.dta" in err and "did you mean paths.data" in err
    assert err.count("\n") == 1
    code, out, err = run_generate([f"ckpt={ckpt}", "max_new_tokens=2", "+paths.extra=1", "model.dropout=0.0"], capsys)
    assert code == 0, err


class FlushRecorder:
    """A stdout that keeps what was visible (flushed) after every flush."""

    def __init__(self) -> None:
        self.buffer, self.flushed = "", []

    def write(self, text: str) -> int:
        self.buffer += text
        return len(text)

    def flush(self) -> None:
        self.flushed.append(self.buffer)


def test_each_generated_word_is_flushed_as_it_is_sampled(trained, monkeypatch):
    from spiking_ssm.lm import generate

    ckpt, _ = trained
    recorder, steps = FlushRecorder(), []
    real_sample = generate.sample

    def sample(*args, **kwargs):  # what the reader sees when each next token is drawn
        steps.append(recorder.flushed[-1] if recorder.flushed else "")
        return real_sample(*args, **kwargs)

    monkeypatch.setattr(generate, "sample", sample)
    monkeypatch.setattr(sys, "stdout", recorder)
    assert generate.main([f"ckpt={ckpt}", "prompt=The river", "max_new_tokens=6", "seed=2"]) == 0
    text = recorder.buffer.split("---")[0]
    assert [len(seen.split()) for seen in steps] == [2, 3, 4, 5, 6, 7]  # the prompt, then one more word each time
    assert all(text.startswith(seen) for seen in steps) and len(text.split()) == 8


def generate_process(args: list[str]) -> subprocess.Popen:
    """``python -m spiking_ssm.lm.generate ARGS`` with pipes, SIGINT at its default (Ctrl-C raises KeyboardInterrupt
    even when the test runner was started with SIGINT ignored, as background jobs are)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "spiking_ssm.lm.generate", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def read_until(proc: subprocess.Popen, enough, timeout: float) -> str:
    """Stdout read so far, as soon as ``enough(text)`` holds (or the process ends, or ``timeout`` passes)."""
    text, deadline = b"", time.monotonic() + timeout
    while not enough(text.decode("utf-8", "replace")) and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.5)
        if ready:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            text += chunk
    return text.decode("utf-8")


@pytest.mark.slow
def test_generate_prints_words_as_they_come_and_ctrl_c_keeps_them(trained):
    ckpt, wiki = trained
    proc = generate_process([f"ckpt={ckpt}", "prompt=The river", "max_new_tokens=1000000", "seed=1"])
    try:
        seen = read_until(proc, lambda text: len(text.split()) >= 8, timeout=90)
        assert len(seen.split()) >= 8 and proc.poll() is None  # words printed while it still generates
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    out, err = seen + rest.decode("utf-8"), err.decode("utf-8")
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "interrupted (Ctrl-C)" in err
    assert out.startswith(seen) and out.startswith("The river ") and out.endswith("\n") and "---" not in out
    words = WikiText103(root=wiki.root, vocab_size=None, max_length=8).vocab.stoi
    assert all(w in words for w in out.split())  # whole words, the last one included


@pytest.mark.slow
def test_the_command_line_refuses_a_typo_with_one_line_and_no_traceback(trained):
    ckpt, _ = trained
    proc = generate_process([f"ckpt={ckpt}", "temprature=0.5"])
    out, err = (b.decode() for b in proc.communicate(timeout=120))
    assert proc.returncode == 1 and out == ""
    assert err == f"error: unknown argument 'temprature'; did you mean 'temperature'? ({USAGE})\n"


# ------------------------------------------------------- engine hooks (snn_engine/run.py and trainer.py)
# The trainer stores ``data.checkpoint_extras()`` in every checkpoint (run.train's meta); eval (run.evaluate) and a
# resumed run (Trainer.load_state) call ``data.check_checkpoint(state, path)``.


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A WikiText-fixture LM trained for one step by the engine: (its last checkpoint, a reordered data copy)."""
    from snn_engine import run
    from tests.helpers import compose_train

    root = tmp_path_factory.mktemp("hooks")
    info = write_wikitext(root / "data")
    run.train(compose_train([f"paths.data={info.root}", *TINY_WT103]), root / "run")
    return root / "run" / "checkpoints" / "last.pt", write_wikitext(root / "other", train=TRAIN[::-1])


TINY_WT103 = ["experiment=lm/wt103", "dataset.vocab_size=null", "dataset.num_classes=null", "dataset.max_length=16",
              "model.d_model=16", "model.n_layers=1", "model.d_state=8", "model.cutoffs=[]", "neuron=lif",
              "trainer.max_steps=1", "trainer.val_every_n_steps=1", "trainer.limit_val_batches=1", "logger=none",
              "trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.precision=32"]


def test_the_trainer_stores_the_vocabulary_in_every_checkpoint(trained_run, tmp_path, capsys):
    ckpt, _ = trained_run
    assert "vocab" in torch.load(ckpt, weights_only=True)
    code, out, err = run_generate([f"ckpt={ckpt}", "max_new_tokens=3", f"paths.data={tmp_path / 'nowhere'}"], capsys)
    assert code == 0, err


def test_evaluating_on_a_reordered_data_copy_is_refused(trained_run, tmp_path):
    from hydra import compose, initialize_config_dir

    from snn_engine import run

    ckpt, other = trained_run
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(config_name="eval", overrides=[f"ckpt={ckpt}", "logger=none"])
    with pytest.raises(UserError, match="differs from the one checkpoint"):
        run.evaluate(cfg, tmp_path / "eval", [f"paths.data={other.root}"])


def test_resuming_on_a_reordered_data_copy_is_refused(trained_run, tmp_path):
    from snn_engine import run
    from tests.helpers import compose_train

    ckpt, other = trained_run
    cfg = compose_train([f"paths.data={other.root}", *TINY_WT103, "trainer.max_steps=2", f"trainer.resume={ckpt}"])
    with pytest.raises(UserError, match="differs from the one checkpoint"):
        run.train(cfg, tmp_path / "resumed")
