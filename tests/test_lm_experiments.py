"""The language-modelling recipes end to end: the embedded LM trains, evaluates (valid and test) and generates; the
WikiText-103 recipe builds at the paper's 75.4M parameters and trains two steps on a fixture (issue 10)."""

import pytest
import torch
from hydra.utils import instantiate

from snn_engine import run
from snn_engine.run import build_model
from spiking_ssm.lm.generate import main as generate_main
from tests.helpers import compose_train, read_summary
from tests.lm_fixtures import write_wikitext

QUIET = ["logger=none", "trainer.progress_bar=false", "trainer.accelerator=cpu", "trainer.precision=32"]


@pytest.mark.slow
def test_embedded_lm_learns_evaluates_on_both_splits_and_generates(tmp_path, capsys):
    small = ["dataset.train_tokens=80000", "dataset.val_tokens=4000", "dataset.test_tokens=4000", "dataset.max_length=64",
             "model.d_model=64", "trainer.epochs=2", "scheduler.warmup=10"]
    cfg = compose_train(["experiment=lm/embedded"] + QUIET + small)
    summary = run.train(cfg, tmp_path / "run")
    final = summary["final"]
    assert summary["task"] == "language_model" and summary["tokens_per_s"] > 0
    assert summary["best"]["metric"] == "val/ppl" and final["tokens"] == 3999
    assert final["ppl"] < 20  # uniform over the 69 words: 69; the language's best: 6.57
    assert final["bits_per_token"] == pytest.approx(final["loss"] / 0.6931471805599453)

    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    eval_cfg = compose_eval_cfg(ckpt)
    evaluated = run.evaluate(eval_cfg, tmp_path / "eval", [])
    assert evaluated["val"]["ppl"] == pytest.approx(final["ppl"], rel=1e-5)
    assert evaluated["test"]["tokens"] == 3999 and evaluated["test"]["ppl"] < 20
    assert evaluated["energy_pj_per_token"] > 0 and read_summary(tmp_path / "eval")["task"] == "language_model"
    memory = evaluated["memory_energy_pj_per_token"]  # memory-inclusive, per token (issue 25)
    assert set(memory) == {"simple", "lemaire"} and memory["simple"] > evaluated["energy_pj_per_token"]
    assert evaluated["energy"]["unit"] == "token"
    assert evaluated["energy"]["sop"]["snn"]["total_pj"] == pytest.approx(evaluated["energy_pj_per_token"])

    capsys.readouterr()
    assert generate_main([f"ckpt={ckpt}", "prompt=the dog", "max_new_tokens=12", "seed=0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("the dog ") and "tokens/s" in out and "spikes per token" in out
    assert "memory-inclusive energy per token" in out


def compose_eval_cfg(ckpt):
    from hydra import compose, initialize_config_dir

    from tests.helpers import REPO

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="eval", overrides=[f"ckpt={ckpt}", "logger=none"])


def test_wt103_recipe_builds_at_the_papers_size():
    cfg = compose_train(["experiment=lm/wt103", "paths.data=/nonexistent", "neuron=lif"])  # meta: no SDN weights
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.model.ssm_lr) == (5e-4, 0.1, 1e-3)
    assert (cfg.scheduler.warmup, cfg.scheduler.total, cfg.dataset.max_length, cfg.seed) == (1000, 800_000, 8192, 1111)
    assert list(cfg.model.cutoffs) == [19997, 39997, 199997] and cfg.loss._target_.endswith("TokenNLL")
    data = instantiate(cfg.dataset)  # the vocabulary size comes from the config (267,735): no file is read yet
    with torch.device("meta"):
        model = build_model(cfg, data)
    assert sum(p.numel() for p in model.backbone.parameters()) == 35_766_272
    assert sum(p.numel() for p in model.parameters()) == 75_399_034  # the reference's 35.77M + 39.63M = 75.4M


@pytest.mark.slow
def test_wt103_recipe_trains_two_steps_on_a_fixture(tmp_path):
    info = write_wikitext(tmp_path / "data")
    overrides = ["experiment=lm/wt103", f"paths.data={info.root}", "dataset.vocab_size=null", "dataset.num_classes=null",
                 "dataset.max_length=32", "model.cutoffs=[20,40]", "trainer.max_steps=2", "trainer.val_every_n_steps=2",
                 "trainer.limit_val_batches=1"] + QUIET
    summary = run.train(compose_train(overrides), tmp_path / "run")
    assert summary["step"] == 2 and summary["status"] == "finished"
    assert summary["final"]["tokens"] > 0 and summary["final"]["loss"] > 0
    assert summary["num_params"] > 35_766_272  # the full-width backbone, a fixture-size vocabulary


@pytest.mark.slow
def test_two_process_lm_training_equals_one_process(tmp_path):
    """DDP for the language model: same weights, and every validation token counted once (no sampler padding)."""
    from tests.cli_fork import run_forked
    from tests.helpers import load_weights, run_cli

    common = QUIET + ["experiment=lm/embedded", "trainer.precision=64", "trainer.epochs=1", "trainer.limit_train_batches=2",
                      "dataset.train_tokens=20000", "dataset.val_tokens=1500", "dataset.test_tokens=1500",
                      "dataset.max_length=32", "model.d_model=32", "model.n_layers=1", "dataset.num_workers=0",
                      "optimizer.lr=0.01", "scheduler.warmup=0", f"paths.output={tmp_path}"]
    single = run_forked("train.py", common + ["run_name=one", "dataset.batch_size=8"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    double = run_cli("train.py", common + ["run_name=two", "dataset.batch_size=4"], tmp_path, torchrun_procs=2)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = read_summary(tmp_path / "lm_embedded" / "one"), read_summary(tmp_path / "lm_embedded" / "two")
    assert two["world_size"] == 2 and one["step"] == two["step"] == 2
    assert one["final"]["tokens"] == two["final"]["tokens"] == 1499  # 47 samples: rank 0 scores 24, rank 1 23
    assert one["final"]["loss"] == pytest.approx(two["final"]["loss"], rel=1e-9)
    wa, wb = load_weights(tmp_path / "lm_embedded" / "one"), load_weights(tmp_path / "lm_embedded" / "two")
    for key in wa:
        assert torch.allclose(wa[key], wb[key], rtol=1e-7, atol=1e-9), key
