"""Real soma currents of SpikingSSM layers, recorded for measuring the SDN (``spiking_ssm.sdn.agreement``).

A *current* is the soma input ``y = (K * u + D u) / theta`` of one neuron (one channel of one layer for one
sample) along the sequence: exactly what the SDN sees. :func:`record_currents` collects them with forward
pre-hooks on every layer's ``neuron`` (input ``[L, B, H]``) and returns them as ``[B * H * n_layers, L]``.

Sources (:data:`SOURCES`), each a small SpikingSSM classifier (``d_model`` 64, 2 layers, ``d_state`` 16,
bidirectional, pre-BatchNorm, per-channel learnable threshold: ``conf/model/spiking_ssm.yaml``) whose soma is
the exact LIF (``neuron.kind=lif``), so the currents never depend on the SDN under test:

* ``shapes-rows``: the embedded shapes images as 32 row-steps of 96 features (``experiment=seq/shapes``).
* ``shapes-pixels``: the same images as 1024 grayscale pixel steps.
* ``smnist``: sequential MNIST (784 steps), only when the IDX files are found under ``<root>/MNIST/raw`` for
  the first root of :func:`mnist_roots` that has them (``None`` otherwise).

Each source is recorded from an untrained model (seeded initialisation) and from one trained for a few
hundred AdamW steps (seeded, single-threaded: deterministic). Sequences come from the validation split.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from spikingjelly.activation_based import functional
from torch import nn

from snn_engine.data.sequence.seq_mnist import SeqMNIST, SeqShapes
from snn_engine.errors import UserError
from snn_engine.training.optim import param_groups
from spiking_ssm.backbone import SpikingSSMClassifier
from spiking_ssm.somas import make_ssm_neuron

SOURCES = ("shapes-rows", "shapes-pixels", "smnist")
SHARED_DATA = Path("/work/shared/data")  # this workplace's shared data folder, the last place looked in
MODEL_KW = dict(d_model=64, n_layers=2, d_state=16, bidirectional=True, norm="batch", norm_place="pre",
                threshold="channel")
#: default training of each source's "trained" model: steps, peak lr, batch (about 10 s, 30 s and 25 s on one core)
TRAIN_KW = {"shapes-rows": dict(steps=150, lr=5e-3, batch=64), "shapes-pixels": dict(steps=60, lr=5e-3, batch=16),
            "smnist": dict(steps=60, lr=5e-3, batch=16)}


def mnist_roots() -> list[Path]:
    """Where MNIST is looked for: ``$SNN_DATA`` (the project's data root), ``./data``, then the shared folder."""
    roots = [Path(os.environ["SNN_DATA"])] if os.environ.get("SNN_DATA") else []
    return roots + [Path("data"), SHARED_DATA]


def _dataset(source: str, mnist_root: Path | None):
    """The data-set object of ``source`` or ``None`` when its files are absent (smnist only)."""
    if source == "shapes-rows":
        return SeqShapes(mode="rows", train_size=6000, val_size=1000, seed=0)
    if source == "shapes-pixels":
        return SeqShapes(mode="pixels", train_size=6000, val_size=1000, seed=0)
    if source == "smnist":
        roots = [Path(mnist_root)] if mnist_root is not None else mnist_roots()
        for root in roots:
            raw = root / "MNIST" / "raw"
            if any((raw / f"t10k-images-idx3-ubyte{ext}").is_file() for ext in ("", ".gz")):
                return SeqMNIST(root=root, val_split=0.1)
        return None
    raise UserError(f"unknown current source {source!r}; choose one of {list(SOURCES)}")


def build_model(data, seed: int) -> SpikingSSMClassifier:
    """The recording model for ``data`` with the exact LIF soma, initialised from ``seed``."""
    torch.manual_seed(seed)
    return SpikingSSMClassifier(lambda: make_ssm_neuron("lif"), d_input=data.d_input,
                                num_classes=data.num_classes, **MODEL_KW)


def _batch(dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    items = [dataset[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items])


def train_briefly(model: nn.Module, dataset, steps: int, lr: float, batch: int, seed: int) -> float:
    """``steps`` AdamW steps (weight decay 0.01 except norms/biases, SSM parameters at their hinted lr,
    linear warm-up over the first 10%) on seeded random batches; returns the last batch's accuracy."""
    optimizer = torch.optim.AdamW(param_groups(model, 0.01), lr=lr)
    warmup = max(1, steps // 10)
    generator = torch.Generator().manual_seed(seed)
    accuracy = float("nan")
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group.setdefault("base_lr", group["lr"])
            group["lr"] = group["base_lr"] * min(1.0, (step + 1) / warmup)
        idx = torch.randint(len(dataset), (batch,), generator=generator).tolist()
        x, y = _batch(dataset, idx)
        functional.reset_net(model)
        logits = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        accuracy = (logits.argmax(-1) == y).float().mean().item()
    functional.reset_net(model)
    return accuracy


@torch.no_grad()
def record_currents(model: SpikingSSMClassifier, x: torch.Tensor) -> torch.Tensor:
    """Soma currents of every layer of ``model`` (eval mode) on the batch ``x`` [B, L, d_input]:
    ``[n_layers * B * H, L]`` float64 (layer-major, then sample, then channel)."""
    recorded: list[torch.Tensor] = []

    def hook(_module, inputs):
        y = inputs[0]  # [L, B, H]
        recorded.append(y.detach().permute(1, 2, 0).reshape(-1, y.shape[0]).to(torch.float64))

    neurons = [block.layer.neuron for block in model.backbone.blocks]
    handles = [neuron.register_forward_pre_hook(hook) for neuron in neurons]
    was_training = model.training
    try:
        model.eval()
        functional.reset_net(model)
        model(x)
    finally:
        for handle in handles:
            handle.remove()
        functional.reset_net(model)
        model.train(was_training)
    return torch.cat(recorded, dim=0)


def source_currents(source: str, trained: bool, time_steps: int, steps: int | None = None, seed: int = 0,
                    mnist_root: Path | None = None) -> torch.Tensor | None:
    """About ``time_steps`` current values (whole sequences ``[N, L]``, float64) from ``source``'s validation
    split, recorded from an untrained model or one trained for ``steps`` steps (default: :data:`TRAIN_KW`);
    ``None`` if the data set's files are absent."""
    data = _dataset(source, mnist_root)
    kw = dict(TRAIN_KW[source])
    kw["steps"] = kw["steps"] if steps is None else int(steps)
    if int(time_steps) < 1 or kw["steps"] < 0:
        raise UserError(f"time_steps={time_steps} must be >= 1 and steps={steps} >= 0")
    if data is None:
        return None
    model = build_model(data, seed)
    if trained and kw["steps"] > 0:
        train_briefly(model, data.train_set(), seed=seed, **kw)
    val = data.val_set()
    per_sample = MODEL_KW["n_layers"] * MODEL_KW["d_model"] * data.seq_len
    n_samples = min(len(val), max(1, math.ceil(int(time_steps) / per_sample)))
    order = torch.randperm(len(val), generator=torch.Generator().manual_seed(seed + 1))[:n_samples].tolist()
    chunks = [record_currents(model, _batch(val, order[i:i + 64])[0]) for i in range(0, n_samples, 64)]
    return torch.cat(chunks, dim=0)
