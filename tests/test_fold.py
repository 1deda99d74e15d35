"""BN folding of the sparse-MLP (mixer_snn.fold): the folded model's logits equal the eval-mode logits of the
trained model in float64 for every variant, no BatchNorm is left, and unsupported cases fail clearly."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from mixer_snn.fold import fold_model
from mixer_snn.folded import ThresholdNeuron
from mixer_snn.mfi import audit, format_audit
from snn_engine.training.evaluation import compare_logits
from mixer_snn.model import SparseMLPSNN
from snn_engine.errors import UserError
from snn_engine.measure.metrics import FiringRateMeter
from snn_engine.neurons import make_neuron
from snn_engine.measure.ops import OpCounter
from tests.mixer_fixtures import eval_logits, images, trained_like

pytestmark = pytest.mark.usefixtures("one_thread")

VARIANTS = [dict(spe=spe, norm=norm, channel_bn_axis=axis)
            for spe, norm, axis in itertools.product((True, False), ("bn", "tdbn", "tebn"), ("token", "channel"))]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(f"{k}={v[k]}" for k in v))
def test_folded_logits_equal_unfolded(variant):
    model = trained_like(**variant)
    x = images()
    with FiringRateMeter(model) as meter:
        expected = eval_logits(model, x)
    rate = meter.compute(torch.device("cpu"))["overall"]
    assert 0.02 < rate < 0.6, f"degenerate test: firing rate {rate}"
    folded = fold_model(model)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    got = eval_logits(folded, x)
    assert got.shape == expected.shape == (3, 4, 5)
    assert (got - expected).abs().max().item() < 1e-9
    assert expected.std() > 1e-3  # the logits carry information


@pytest.mark.parametrize("position_bn", ["threshold", "scale", "replicate"])
@pytest.mark.parametrize("kind", ["lif", "plif", "if"])
def test_position_bn_treatments_and_neurons(position_bn, kind):
    model = trained_like(seed=3, kind=kind, norm="tebn" if kind == "plif" else "bn")
    x = images()
    folded = fold_model(model, position_bn=position_bn)
    has_threshold = any(isinstance(m, ThresholdNeuron) for m in folded.modules())
    assert has_threshold == (position_bn != "scale")
    assert (eval_logits(folded, x) - eval_logits(model, x)).abs().max().item() < 1e-9


def test_time_major_input_head_lif_and_source_untouched():
    model = trained_like(seed=5, head_lif=True, norm="tebn")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = images(T=3)
    folded = fold_model(model)
    assert (eval_logits(folded, x) - eval_logits(model, x)).abs().max().item() < 1e-9
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_threshold_neuron_matches_scaled_spikingjelly_lif():
    """neuron(s * I) with SpikingJelly's LIF == ThresholdNeuron(I) with threshold 1/s, for s of both signs."""
    torch.manual_seed(0)
    scale = torch.tensor([2.0, 0.5, -1.5, -0.3], dtype=torch.float64)
    current = torch.randn(16, 8, 4, dtype=torch.float64)
    lif = make_neuron(kind="lif", tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0).double()
    with torch.no_grad():
        expected = lif(current * scale)
    ours = ThresholdNeuron(1.0 / scale, torch.sign(scale), 0.5, True, 0.0)(current)
    assert torch.equal(ours, expected)
    assert 0.05 < expected.mean() < 0.6


def test_unfoldable_models_fail_clearly():
    with pytest.raises(UserError, match="norm=ln is not MFI-compatible"):
        fold_model(trained_like(norm="ln"))
    with pytest.raises(UserError, match="position_bn"):
        fold_model(trained_like(), position_bn="nope")
    with pytest.raises(UserError, match="sparse-MLP"):
        fold_model(nn.Linear(2, 2))


def audit_of(model: SparseMLPSNN, position_bn: str = "threshold") -> dict:
    folded = fold_model(model, position_bn=position_bn)
    with OpCounter(folded, time_steps=model.T) as counter:
        eval_logits(folded, images())
    return audit(folded, counter.compute())


def test_audit_lists_only_the_first_layer_when_every_bn_folds():
    result = audit_of(trained_like(channel_bn_axis="channel"))
    assert result["multiplication_free_after_first_layer"]
    assert [e["layer"] for e in result["true_multiplications"]] == ["stages.0.embed.convs.0"]
    assert "first layer" in result["true_multiplications"][0]["reason"]
    assert result["accumulate_layers"] > 10


def test_audit_names_the_per_position_bn_multiplications():
    model = trained_like()  # channel_bn_axis=token, the reference's
    scaled = audit_of(model)
    names = [e["layer"] for e in scaled["true_multiplications"]]
    assert names[0] == "stages.0.embed.convs.0"
    assert names[1:] == [f"stages.{s}.blocks.0.channel.scale2" for s in range(4)]
    assert not scaled["multiplication_free_after_first_layer"]
    assert "per-token-position BN" in format_audit(scaled)
    replicated = audit_of(model, "replicate")
    assert [e["layer"] for e in replicated["true_multiplications"]] == ["stages.0.embed.convs.0"]
    assert replicated["multiplication_free_after_first_layer"]


def test_compare_logits_reports_float64_agreement():
    model = trained_like(seed=2)
    data = torch.utils.data.TensorDataset(images(batch=6), torch.zeros(6, dtype=torch.long))
    loader = torch.utils.data.DataLoader(data, batch_size=3)
    result = compare_logits(model, fold_model(model), loader, torch.device("cpu"))
    assert result["compared_samples"] == 6 and result["prediction_agreement"] == 1.0
    assert result["max_logit_diff"] < 1e-9


def test_ann_twin_of_a_folded_tebn_model_counts_one_pass():
    """Per-step weight copies (tebn) must not multiply the ANN twin: same architecture, same dense count."""
    dense = {}
    for norm in ("bn", "tebn"):
        folded = fold_model(trained_like(norm=norm))
        with OpCounter(folded, time_steps=3) as counter:
            eval_logits(folded, images())
        dense[norm] = counter.compute()["total"]["ann_mac"]
    assert dense["tebn"] == pytest.approx(dense["bn"], rel=1e-12)
