"""Every SpikingSSM experiment composes, instantiates and trains two steps on a fixture in its official format.

Model widths are reduced so the suite stays fast on 2 CPU cores; the exact paper sizes are built (and their
parameter counts checked) in ``test_configs.py``. The neuron is the recipe's packaged SDN.
"""

from __future__ import annotations

import sys

import pytest

from snn_engine import run
from snn_engine.errors import UserError
from tests.data_fixtures import write_cifar10, write_mnist
from tests.helpers import compose_train
from tests.seq_fixtures import (
    write_aan, write_dvs_gesture, write_imdb, write_listops_tsv, write_pathfinder, write_speech_commands)

FIXTURES = {
    "lra/listops": lambda root: write_listops_tsv(root, n_train=16, n_val=8),
    "lra/text": lambda root: write_imdb(root, per_class=8),
    "lra/retrieval": lambda root: write_aan(root, n_train=16, n_eval=8),
    "lra/image": lambda root: write_cifar10(root, n_train=40, n_test=10),
    "lra/pathfinder": lambda root: write_pathfinder(root, resolution=32, n_dirs=2, per_dir=20),
    "lra/pathx": lambda root: write_pathfinder(root, resolution=128, n_dirs=2, per_dir=20),
    "seq/smnist": lambda root: write_mnist(root, n_train=60, n_test=10),
    "seq/psmnist": lambda root: write_mnist(root, n_train=60, n_test=10),
    "seq/speech_commands": lambda root: write_speech_commands(root, per_word=8),
}
SMALL = ["model.d_model=16", "model.n_layers=1", "dataset.batch_size=2", "dataset.num_workers=0", "logger=none",
         "trainer.epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=1",
         "trainer.progress_bar=false", "trainer.accelerator=cpu"]


@pytest.mark.slow
@pytest.mark.parametrize("experiment", sorted(FIXTURES))
def test_experiment_trains_two_steps_on_its_fixture(experiment, tmp_path):
    fixture = FIXTURES[experiment](tmp_path / "data")
    cfg = compose_train([f"experiment={experiment}", f"dataset.root={fixture.root}", *SMALL])
    summary = run.train(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["step"] == 2
    rates = summary["final"]["firing_rate"]
    layers = [name for name in rates if name not in ("mean", "overall", "sparsity")]
    assert len(layers) == 1, sorted(rates)  # one spiking soma per SpikingSSM layer
    assert 0.0 <= rates["overall"] <= 1.0 and rates["sparsity"] == pytest.approx(1 - rates["overall"])


def test_dvs_gesture_without_tonic_says_how_to_install_it(tmp_path, monkeypatch):
    cfg = compose_train(["experiment=seq/dvs_gesture", f"paths.data={tmp_path}", *SMALL])
    monkeypatch.setitem(sys.modules, "tonic", None)  # import tonic -> ImportError, installed or not
    with pytest.raises(UserError, match=r"tonic.*not installed.*`uv sync --extra dvs`.*make setup"):
        run.train(cfg, tmp_path / "run")


@pytest.mark.slow
def test_dvs_gesture_experiment_trains_two_steps_through_tonic(tmp_path):
    tonic = pytest.importorskip("tonic", reason="tonic (the dvs extra: uv sync --extra dvs) is not installed")
    fixture = write_dvs_gesture(tmp_path / "data")
    cfg = compose_train(["experiment=seq/dvs_gesture", f"paths.data={fixture.root}", *SMALL])
    assert cfg.dataset.root == str(fixture.root) and not cfg.dataset.get("download", False)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tonic.datasets.DVSGesture, "download", lambda self: pytest.fail("tonic tried to download"))
        summary = run.train(cfg, tmp_path / "run")
    assert summary["status"] == "finished" and summary["step"] == 2


@pytest.mark.parametrize("dataset", ["lra_listops", "lra_text", "lra_retrieval", "lra_image", "lra_pathfinder",
                                     "lra_pathx", "smnist", "psmnist", "speech_commands"])
def test_missing_sequence_data_names_the_setting(dataset, tmp_path):
    cfg = compose_train([f"dataset={dataset}", "model=spiking_ssm", f"paths.data={tmp_path / 'nowhere'}"])
    data = run.instantiate(cfg.dataset)
    with pytest.raises(UserError, match=r"paths\.data|dataset\.root"):
        data.train_set()


@pytest.mark.slow
def test_embedded_spiking_ssm_learns_clearly_above_chance(tmp_path):
    """``python train.py experiment=seq/shapes``: SDN soma on the embedded data, 10 classes (chance 10%)."""
    cfg = compose_train(["experiment=seq/shapes", "logger=none", "trainer.progress_bar=false", "trainer.epochs=2"])
    summary = run.train(cfg, tmp_path)
    assert summary["final"]["acc1"] > 70.0, summary["final"]
    assert 0.02 < summary["final"]["firing_rate"]["overall"] < 0.5
