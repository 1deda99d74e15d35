"""Every config composes; every model x vision-dataset pair, neuron and experiment instantiates."""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate

from snn_engine.run import build_model
from tests.helpers import REPO, compose_train

MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
DATASETS = sorted(p.stem for p in (REPO / "conf" / "dataset").glob("*.yaml"))
VISION = ["cifar10", "cifar100", "imagenet", "mnist", "shapes"]
LANGUAGE = ["lm_grammar", "wikitext103"]
SEQUENCE = sorted(set(DATASETS) - set(VISION) - set(LANGUAGE))


def _datasets_of(model: str) -> list[str]:
    if model.startswith("sparse_mlp"):
        return VISION
    return LANGUAGE if model == "spiking_ssm_lm" else SEQUENCE


PAIRS = [(m, d) for m in MODELS for d in _datasets_of(m) if (m == "spiking_ssm_retrieval") == (d == "lra_retrieval")]
EXPERIMENTS = sorted(str(p.relative_to(REPO / "conf" / "experiment").with_suffix(""))
                     for p in (REPO / "conf" / "experiment").rglob("*.yaml"))
GROUPS = ["neuron", "optimizer", "scheduler", "loss", "trainer", "logger"]


def test_config_tree_is_complete():
    assert {"sparse_mlp_t", "sparse_mlp_s", "sparse_mlp_b", "sparse_mlp_tiny"} <= set(MODELS)
    assert {"shapes", "imagenet", "cifar10", "cifar100", "mnist"} <= set(DATASETS)
    assert {"imagenet/mlp_spe_t", "imagenet/mlp_spe_t_T6", "imagenet/mlp_s", "imagenet/mlp_spe_s", "imagenet/mlp_spe_b",
            "cifar/cifar10", "cifar/cifar100"} | set(SSM_PARAMS) <= set(EXPERIMENTS)


@pytest.mark.parametrize("model,dataset", PAIRS)
def test_every_model_dataset_pair_instantiates(model, dataset):
    cfg = compose_train([f"model={model}", f"dataset={dataset}", "paths.data=/nonexistent"])
    data = instantiate(cfg.dataset)
    with torch.device("meta" if model.startswith("sparse_mlp") else "cpu"):
        net = build_model(cfg, data)
    assert data.num_classes == cfg.dataset.num_classes and data.batch_size > 0
    if model.startswith("sparse_mlp"):
        assert net.num_classes == data.num_classes and data.in_chans in (1, 3)
    elif model == "spiking_ssm_lm":
        assert data.task == net.task == "language_model" and data.vocab_size == cfg.model.vocab_size
    else:
        last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        assert last.out_features == data.num_classes


def test_family_pairs_cover_every_config():
    assert {m for m, _ in PAIRS} == set(MODELS) and {d for _, d in PAIRS} == set(DATASETS)


def test_neuron_override_follows_the_model_family():
    mixer = compose_train(["neuron=lif"]).neuron
    ssm = compose_train(["model=spiking_ssm", "dataset=listops_generated", "neuron=lif"]).neuron
    assert (mixer.tau, mixer.decay_input, mixer.surrogate) == (2.0, True, "sigmoid")
    assert ssm.tau == pytest.approx(8 / 7) and ssm.decay_input is False and ssm.surrogate == "piecewise_quadratic"
    lif = instantiate(ssm)()
    x = torch.tensor([[0.6], [0.6], [0.0]], dtype=torch.float64).unsqueeze(-1)  # u: 0.6, 0.075 + 0.6, 0.084
    assert lif(x).flatten().tolist() == [0.0, 0.0, 0.0]
    lif.reset()
    assert lif(torch.tensor([[0.9], [0.9]], dtype=torch.float64).unsqueeze(-1)).flatten().tolist() == [0.0, 1.0]


# backbone parameters of each SpikingSSM row (reference section 3; the SDN is frozen buffers, not counted)
SSM_PARAMS = {"lra/listops": 0.82e6, "lra/text": 0.82e6, "lra/retrieval": 1.09e6, "lra/image": 3.76e6,
              "lra/pathfinder": 1.09e6, "lra/pathx": 1.19e6, "seq/smnist": 0.75e6, "seq/psmnist": 0.66e6,
              "seq/speech_commands": 0.25e6, "seq/dvs_gesture": 3.36e6}


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_builds(experiment):
    cfg = compose_train([f"experiment={experiment}", "paths.data=/nonexistent"])
    data = instantiate(cfg.dataset)
    vision = experiment.startswith(("imagenet/", "cifar/", "mnist/"))
    with torch.device("meta" if vision else "cpu"):  # the SDN neuron loads its packaged weights: not on meta
        net = build_model(cfg, data)
    params = sum(p.numel() for p in net.parameters())
    if experiment.startswith(("imagenet/", "cifar/")):
        assert params > 1_000_000
        assert cfg.optimizer.lr == 0.1 and cfg.optimizer._target_ == "torch.optim.SGD" and cfg.trainer.epochs == 100
    elif experiment.startswith("mnist/"):  # a small CPU recipe: the sparse-MLP with shift augmentation
        assert 100_000 < params < 2_000_000 and cfg.dataset.random_shift > 0 and cfg.model.T == 4
    else:
        assert cfg.neuron.kind == "sdn" and cfg.neuron_profile == "spiking_ssm"
        assert cfg.optimizer._target_ == "torch.optim.AdamW" and cfg.scheduler.interval == "step"
        if experiment in SSM_PARAMS:  # a paper row: the reference's size and pinned schedule
            assert cfg.scheduler.total >= 10 * cfg.scheduler.warmup
            backbone = sum(p.numel() for p in net.backbone.parameters())
            assert backbone == pytest.approx(SSM_PARAMS[experiment], rel=0.01), (backbone, params)


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
