"""What a run trains: classification (the default) or language modelling, chosen by the data module's ``task``.

The training loop and evaluation ask the task, never the model family, how to call the network, which loss it
takes, what to count and what to print. A data module declares ``task = "language_model"`` to get the token path:

- :class:`ClassificationTask`: ``net(x) -> logits [T, B, K]`` (or ``[B, K]``), any classification loss; metrics
  loss, top-1/top-5 (%); throughput in images/s; best checkpoint by ``val/acc1`` (max).
- :class:`LanguageModelTask`: ``net(tokens [B, L], targets [B, L]) -> nll [B, L]`` (nats per token, the model
  owns its softmax, e.g. adaptive), loss ``loss=token_nll``; metrics loss (nats/token), perplexity and bits per
  token over predicted tokens (targets != -100); throughput in tokens/s; best checkpoint by ``val/ppl`` (min).
"""

from __future__ import annotations

import torch
from torch import nn

from snn_engine.errors import UserError
from snn_engine.training.losses import TokenNLL
from snn_engine.measure.metrics import ClassificationMeter, TokenMeter, TrainMeter, time_averaged

IGNORE_INDEX = -100


class ClassificationTask:
    name = "classification"
    unit = "images"
    default_monitor = ("val/acc1", "max")

    def check_criterion(self, criterion: nn.Module) -> None:
        if isinstance(criterion, TokenNLL):
            raise UserError("loss=token_nll is for language models; a classifier trains with loss=ce or loss=tet")

    def forward(self, net: nn.Module, x, y: torch.Tensor) -> torch.Tensor:
        return net(x)

    def units(self, y: torch.Tensor) -> int:
        """Samples in a batch (from its shape: no synchronisation)."""
        return int(y.shape[0])

    def train_meter(self) -> TrainMeter:
        return TrainMeter()

    def update_train(self, meter: TrainMeter, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        meter.update(time_averaged(out.detach().float()), y, loss)

    def eval_meter(self) -> ClassificationMeter:
        return ClassificationMeter()

    def update_eval(self, meter: ClassificationMeter, out: torch.Tensor, y: torch.Tensor) -> None:
        """Plain cross-entropy on the time-averaged logits (no smoothing), as the papers report."""
        logits = time_averaged(out.float())
        meter.update(logits, y, torch.nn.functional.cross_entropy(logits, y).item())

    def postfix(self, stats: dict) -> dict[str, str]:
        return {"loss": f"{stats['loss']:.4f}", "acc": f"{stats['acc1']:.1f}"}

    def train_metrics(self, stats: dict) -> dict[str, float]:
        return {"train/loss": stats["loss"], "train/acc1": stats["acc1"]}

    def describe(self, result: dict) -> str:
        return f"loss {result['loss']:.4f} acc1 {result['acc1']:.2f} acc5 {result['acc5']:.2f}"

    def best_fields(self, result: dict) -> dict[str, float]:
        return {k: result[k] for k in ("acc1", "acc5", "loss")}


class LanguageModelTask(ClassificationTask):
    name = "language_model"
    unit = "tokens"
    default_monitor = ("val/ppl", "min")

    def check_criterion(self, criterion: nn.Module) -> None:
        if not isinstance(criterion, TokenNLL):
            raise UserError(f"a language model trains with loss=token_nll (its forward returns per-token NLL); got "
                            f"{type(criterion).__name__}")

    def forward(self, net: nn.Module, x, y: torch.Tensor) -> torch.Tensor:
        return net(x, y)

    def units(self, y: torch.Tensor) -> int:
        """Token positions in a batch (padding included; training samples have none)."""
        return int(y.numel())

    def train_meter(self) -> TokenMeter:
        return TokenMeter(IGNORE_INDEX)

    def update_train(self, meter: TokenMeter, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        meter.update(out, y)

    eval_meter = train_meter

    def update_eval(self, meter: TokenMeter, out: torch.Tensor, y: torch.Tensor) -> None:
        meter.update(out, y)

    def postfix(self, stats: dict) -> dict[str, str]:
        return {"loss": f"{stats['loss']:.4f}", "ppl": f"{stats['ppl']:.2f}"}

    def train_metrics(self, stats: dict) -> dict[str, float]:
        return {"train/loss": stats["loss"], "train/ppl": stats["ppl"], "train/bits_per_token": stats["bits_per_token"]}

    def describe(self, result: dict) -> str:
        return (f"loss {result['loss']:.4f} nats/token, perplexity {result['ppl']:.2f}, "
                f"{result['bits_per_token']:.3f} bits/token over {result['tokens']:,} tokens")

    def best_fields(self, result: dict) -> dict[str, float]:
        return {k: result[k] for k in ("ppl", "bits_per_token", "loss")}


TASKS = {"classification": ClassificationTask, "language_model": LanguageModelTask}


def task_for(data) -> ClassificationTask:
    """The task a data module declares (``data.task``; classification when it declares none)."""
    name = getattr(data, "task", "classification")
    if name not in TASKS:
        raise UserError(f"data set {getattr(data, 'name', data)!r} declares task {name!r}; known: {sorted(TASKS)}")
    return TASKS[name]()


def resolve_monitor(task: ClassificationTask, monitor: str, mode: str) -> tuple[str, str]:
    """``trainer.monitor`` / ``trainer.monitor_mode``, ``auto`` replaced by the task's default."""
    default_metric, default_mode = task.default_monitor
    metric = default_metric if str(monitor) == "auto" else str(monitor)
    if str(mode) == "auto":
        mode = default_mode if metric == default_metric else ("min" if "loss" in metric or "ppl" in metric else "max")
    if mode not in ("min", "max"):
        raise UserError(f"trainer.monitor_mode={mode!r}: choose auto, min or max")
    return metric, str(mode)
