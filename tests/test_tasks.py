"""The engine's tasks (classification, language modelling): token meters, the token loss, task choice, monitors."""

import math

import pytest
import torch

from snn_engine.errors import UserError
from snn_engine.training.losses import TimeAveragedCrossEntropy, TokenNLL
from snn_engine.measure.metrics import TokenMeter
from snn_engine.tasks import IGNORE_INDEX, ClassificationTask, LanguageModelTask, resolve_monitor, task_for


class _Data:
    def __init__(self, task=None):
        self.name = "fake"
        if task is not None:
            self.task = task


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    nll = torch.rand(3, 7, generator=g, dtype=torch.float64) * 4
    target = torch.randint(0, 50, (3, 7), generator=g)
    target[2, 4:] = IGNORE_INDEX  # a padded tail
    return nll, target


def test_token_meter_and_loss_leave_padding_out():
    (nll_a, y_a), (nll_b, y_b) = _batch(0), _batch(1)
    meter = TokenMeter()
    meter.update(nll_a, y_a)
    meter.update(nll_b, y_b)
    stats = meter.compute(torch.device("cpu"))
    valid = torch.cat([nll_a[y_a != IGNORE_INDEX], nll_b[y_b != IGNORE_INDEX]])
    assert stats["tokens"] == valid.numel() == 2 * (21 - 3)
    assert stats["loss"] == pytest.approx(valid.mean().item())
    assert stats["ppl"] == pytest.approx(math.exp(valid.mean().item()))
    assert stats["bits_per_token"] == pytest.approx(valid.mean().item() / math.log(2))
    assert TokenNLL()(nll_a, y_a).item() == pytest.approx(nll_a[y_a != IGNORE_INDEX].mean().item())
    poisoned = nll_a.clone()
    poisoned[y_a == IGNORE_INDEX] = float("inf")  # whatever a model puts at padding never counts
    assert TokenNLL()(poisoned, y_a).item() == pytest.approx(TokenNLL()(nll_a, y_a).item())
    assert TokenMeter().compute(torch.device("cpu"))["tokens"] == 0


def test_task_is_chosen_by_the_data_module_and_checks_its_loss():
    assert isinstance(task_for(_Data()), ClassificationTask) and not isinstance(task_for(_Data()), LanguageModelTask)
    lm = task_for(_Data("language_model"))
    assert isinstance(lm, LanguageModelTask) and lm.unit == "tokens"
    with pytest.raises(UserError, match="declares task 'segmentation'"):
        task_for(_Data("segmentation"))
    with pytest.raises(UserError, match="loss=token_nll"):
        lm.check_criterion(TimeAveragedCrossEntropy())
    with pytest.raises(UserError, match="is for language models"):
        ClassificationTask().check_criterion(TokenNLL())
    calls = []
    lm.forward(lambda x, y: calls.append((x, y)), "tokens", "targets")
    ClassificationTask().forward(lambda x: calls.append((x,)), "images", "labels")
    assert calls == [("tokens", "targets"), ("images",)]
    assert lm.units(torch.zeros(4, 9)) == 36 and ClassificationTask().units(torch.zeros(4)) == 4


def test_monitor_auto_follows_the_task():
    assert resolve_monitor(ClassificationTask(), "auto", "auto") == ("val/acc1", "max")
    assert resolve_monitor(LanguageModelTask(), "auto", "auto") == ("val/ppl", "min")
    assert resolve_monitor(LanguageModelTask(), "val/bits_per_token", "min") == ("val/bits_per_token", "min")
    assert resolve_monitor(ClassificationTask(), "val/loss", "auto") == ("val/loss", "min")
    with pytest.raises(UserError, match="monitor_mode"):
        resolve_monitor(ClassificationTask(), "auto", "largest")
