"""End-to-end behaviour of the engine on the embedded shapes data: learning, eval, resume, DDP, errors."""

from __future__ import annotations

import pytest
import torch

from snn_engine import run
from snn_engine.errors import UserError
from snn_engine.training.evaluation import evaluate_model
from tests.cli_fork import run_forked
from tests.helpers import TINY, compose_train, load_weights, read_summary, run_cli


@pytest.mark.slow
def test_short_run_lowers_validation_loss(tmp_path):
    cfg = compose_train(TINY + ["trainer.epochs=4", "dataset.train_size=512"])
    run.seed_everything(cfg.seed)
    data = run.instantiate(cfg.dataset)
    model = run.build_model(cfg)
    loader = torch.utils.data.DataLoader(data.val_set(), batch_size=32)
    before = evaluate_model(model, loader, torch.device("cpu"))
    summary = run.train(cfg, tmp_path)
    assert summary["status"] == "finished" and summary["step"] == 4 * (512 // 32)
    assert summary["final"]["loss"] < before["loss"] - 0.3
    assert summary["final"]["acc1"] > before["acc1"]
    assert 0.0 < summary["final"]["firing_rate"]["overall"] < 1.0
    assert summary["num_params"] == sum(p.numel() for p in model.parameters())
    ran = summary["neuron_implementations_ran"]  # counted per call over the run: train and validation passes
    n_layers = len(ran["layers"])
    assert n_layers == len(summary["final"]["firing_rate"]) - 3 and set(ran["calls"]) == {"torch (cpu)"}
    assert ran["calls"]["torch (cpu)"] >= n_layers * summary["step"] and ran["fallback_layers"] == []
    for name in ("last.pt", "best.pt"):
        assert (tmp_path / "checkpoints" / name).is_file()


@pytest.mark.slow
def test_cli_train_then_eval_reproduces_accuracy(tmp_path):
    args = TINY + ["trainer.epochs=1", f"paths.output={tmp_path}", "run_name=r"]
    done = run_cli("train.py", args, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "train" / "r"
    summary = read_summary(run_dir)
    assert (run_dir / ".hydra" / "config.yaml").is_file()
    done = run_cli("eval.py", [f"ckpt={run_dir / 'checkpoints' / 'last.pt'}", f"paths.output={tmp_path}", "run_name=e",
                               "logger=none"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    evaluated = read_summary(tmp_path / "eval" / "e")
    assert evaluated["val"]["acc1"] == pytest.approx(summary["final"]["acc1"], abs=1e-9)
    assert evaluated["val"]["loss"] == pytest.approx(summary["final"]["loss"], rel=1e-6)
    assert evaluated["val"]["firing_rate"]["overall"] == pytest.approx(summary["final"]["firing_rate"]["overall"])


def test_resume_mid_epoch_equals_uninterrupted_run(tmp_path):
    base = TINY + ["trainer.epochs=2", "trainer.limit_train_batches=4", "optimizer=sgd", "optimizer.lr=0.05"]
    full = run.train(compose_train(base), tmp_path / "full")
    stopped = run.train(compose_train(base + ["trainer.stop_after_steps=3"]), tmp_path / "part")
    assert stopped["status"] == "interrupted" and stopped["step"] == 3
    last = tmp_path / "part" / "checkpoints" / "last.pt"
    resumed = run.train(compose_train(base + [f"trainer.resume={last}"]), tmp_path / "resumed")
    assert resumed["step"] == full["step"] == 8
    a, b = load_weights(tmp_path / "full"), load_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed["final"]["acc1"] == full["final"]["acc1"]
    assert resumed["final"]["loss"] == full["final"]["loss"]


def test_resume_auto_starts_fresh_then_continues(tmp_path):
    base = TINY + ["trainer.epochs=1", "trainer.limit_train_batches=3", "trainer.resume=auto"]
    first = run.train(compose_train(base + ["trainer.stop_after_steps=1"]), tmp_path)
    assert first["step"] == 1
    second = run.train(compose_train(base), tmp_path)
    assert second["status"] == "finished" and second["step"] == 3


@pytest.mark.slow
def test_two_process_ddp_equals_one_process(tmp_path):
    common = TINY + ["trainer.epochs=1", "trainer.limit_train_batches=3", "trainer.precision=64", "trainer.sync_bn=true",
                     f"paths.output={tmp_path}", "optimizer=sgd", "optimizer.lr=0.05"]
    single = run_forked("train.py", common + ["run_name=one", "dataset.batch_size=32"], tmp_path)
    assert single.returncode == 0, single.stderr[-3000:]
    double = run_cli("train.py", common + ["run_name=two", "dataset.batch_size=16", "trainer.limit_train_batches=3"],
                     tmp_path, torchrun_procs=2)
    assert double.returncode == 0, double.stderr[-3000:]
    one, two = read_summary(tmp_path / "train" / "one"), read_summary(tmp_path / "train" / "two")
    assert two["world_size"] == 2 and one["step"] == two["step"] == 3
    wa, wb = load_weights(tmp_path / "train" / "one"), load_weights(tmp_path / "train" / "two")
    for key in wa:  # float64, so only summation order differs; spikes flip only if a membrane sits within ~1e-12 of threshold
        assert torch.allclose(wa[key], wb[key], rtol=1e-7, atol=1e-9), key
    assert one["final"]["acc1"] == pytest.approx(two["final"]["acc1"], abs=1e-9)
    assert one["final"]["loss"] == pytest.approx(two["final"]["loss"], rel=1e-7)
    assert not (tmp_path / "train" / "two" / "checkpoints" / "rank1").exists()


def test_missing_data_directory_is_one_clear_line(tmp_path):
    done = run_forked("train.py", ["dataset=mnist", f"paths.data={tmp_path / 'nowhere'}", f"paths.output={tmp_path / 'out'}",
                                "logger=none"], tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "paths.data" in lines[0], done.stderr
    assert not any((tmp_path / "out").rglob("*.*")), list((tmp_path / "out").rglob("*"))


def test_unknown_config_value_lists_options(tmp_path):
    done = run_forked("train.py", ["model=no_such_model"], tmp_path)
    assert done.returncode != 0
    assert "no_such_model" in done.stderr and "sparse_mlp_s" in done.stderr


def test_constructor_error_through_hydra_is_one_line(tmp_path):
    done = run_forked("train.py", ["model.dim=32", "logger=none", f"paths.output={tmp_path / 'out'}"], tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: model.dim=32 must be a multiple of 3"), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "InstantiationException" not in done.stderr


def test_unavailable_neuron_implementation_is_an_error(tmp_path):
    with pytest.raises(UserError, match="needs a CUDA device"):
        run.train(compose_train(TINY + ["neuron.implementation=cuda"]), tmp_path)


def test_checkpoint_of_another_model_is_refused(tmp_path):
    run.train(compose_train(TINY + ["trainer.max_steps=1"]), tmp_path / "a")
    other = TINY + ["model.dim=18", f"trainer.resume={tmp_path / 'a' / 'checkpoints' / 'last.pt'}"]
    with pytest.raises(UserError, match="would change settings it was trained with: model.dim: 24 -> 18"):
        run.train(compose_train(other), tmp_path / "b")
    with pytest.raises(UserError, match="different model"):  # accepted changes still cannot load other shapes
        run.train(compose_train(other + ["trainer.resume_allow_changes=true"]), tmp_path / "c")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    cfg = TINY + ["optimizer=sgd", "optimizer.lr=1e30", "optimizer.momentum=0.0", "trainer.epochs=3",
                  "trainer.val_every_n_steps=1", "trainer.limit_val_batches=1"]
    with pytest.raises(UserError, match="training diverged .*; the last finite checkpoint is .*last.pt"):
        run.train(compose_train(cfg), tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] >= 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert read_summary(tmp_path)["status"] == "diverged"


@pytest.mark.slow
def test_ema_accumulation_and_eval_of_ema_weights(tmp_path, caplog):
    cfg = TINY + ["trainer.epochs=1", "trainer.grad_accum=2", "trainer.ema_decay=0.5", "trainer.grad_clip=1.0"]
    with caplog.at_level("INFO", logger="snn_engine.training.trainer"):
        summary = run.train(compose_train(cfg), tmp_path / "t")
    ema_acc = summary["final"]["val_ema/acc1"]
    assert any("; EMA weights: loss" in r.getMessage() and f"acc1 {ema_acc:.2f}" in r.getMessage() for r in caplog.records)
    assert summary["step"] == (192 // 32) // 2  # one optimizer step per two micro-batches
    assert "val_ema/acc1" in summary["final"]
    state = torch.load(tmp_path / "t" / "checkpoints" / "last.pt", weights_only=True)
    assert state["ema"] is not None and not torch.equal(state["ema"]["head.weight"], state["model"]["head.weight"])
    done = run_forked("eval.py", [f"ckpt={tmp_path / 't' / 'checkpoints' / 'last.pt'}", "use_ema=true", "logger=none",
                               f"paths.output={tmp_path}", "run_name=e"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert read_summary(tmp_path / "eval" / "e")["val"]["acc1"] == pytest.approx(summary["final"]["val_ema/acc1"])


@pytest.mark.slow
def test_default_logger_leaves_an_offline_wandb_run(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [o for o in TINY if o != "logger=none"] + ["trainer.max_steps=2", "logger=wandb"]
    run.train(compose_train(overrides), tmp_path)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].rglob("*.wandb"))
