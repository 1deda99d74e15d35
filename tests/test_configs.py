"""Every config composes; every model x vision-dataset pair, neuron and experiment instantiates."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from snn_engine.run import build_model
from tests.helpers import REPO, compose_train

MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (REPO / "conf" / "dataset").glob("*.yaml"))
EXPERIMENTS = sorted(str(p.relative_to(REPO / "conf" / "experiment").with_suffix(""))
                     for p in (REPO / "conf" / "experiment").rglob("*.yaml"))
GROUPS = ["neuron", "optimizer", "scheduler", "loss", "trainer", "logger"]


def test_config_tree_is_complete():
    assert {"sparse_mlp_t", "sparse_mlp_s", "sparse_mlp_b", "sparse_mlp_tiny"} <= set(MODELS)
    assert {"shapes", "imagenet", "cifar10", "cifar100", "mnist"} <= set(DATASETS)
    assert {"imagenet/mlp_spe_t", "imagenet/mlp_spe_t_T6", "imagenet/mlp_s", "imagenet/mlp_spe_s", "imagenet/mlp_spe_b",
            "cifar/cifar10", "cifar/cifar100"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("dataset", DATASETS)
def test_every_model_dataset_pair_instantiates(model, dataset):
    cfg = compose_train([f"model={model}", f"dataset={dataset}", "paths.data=/nonexistent"])
    data = instantiate(cfg.dataset)
    with torch.device("meta"):
        net = build_model(cfg)
    assert net.num_classes == data.num_classes == cfg.dataset.num_classes
    assert data.batch_size > 0 and data.in_chans in (1, 3)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment):
    cfg = compose_train([f"experiment={experiment}", "paths.data=/nonexistent"])
    instantiate(cfg.dataset)
    with torch.device("meta"):
        net = build_model(cfg)
    params = sum(p.numel() for p in net.parameters())
    assert params > 1_000_000
    assert cfg.optimizer.lr == 0.1 and cfg.optimizer._target_ == "torch.optim.SGD" and cfg.trainer.epochs == 100


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_of_every_group_composes(group):
    for option in sorted(p.stem for p in (REPO / "conf" / group).glob("*.yaml")):
        cfg = compose_train([f"{group}={option}"])
        node = cfg[group]
        if "_target_" in node:
            obj = instantiate(node)
            if group == "neuron":
                assert obj()(torch.zeros(2, 1, 3)).shape == (2, 1, 3)


def test_paper_presets_have_the_official_parameter_counts():
    expected = {"sparse_mlp_t": 25_229_180, "sparse_mlp_s": 37_975_568, "sparse_mlp_b": 65_008_348}
    for model, count in expected.items():
        cfg = compose_train([f"model={model}", "dataset=imagenet"])
        with torch.device("meta"):
            assert sum(p.numel() for p in build_model(cfg).parameters()) == count, model
    cfg = compose_train(["experiment=imagenet/mlp_s"])
    with torch.device("meta"):
        assert sum(p.numel() for p in build_model(cfg).parameters()) == 34_507_408
