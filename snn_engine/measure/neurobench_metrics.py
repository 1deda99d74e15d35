"""NeuroBench 2.3's static and workload metrics on the validation set (``eval.py neurobench=true``).

The model is wrapped in NeuroBench's ``TorchModel``; every spiking module class of ours (SpikingJelly nodes, the
SDN/SLTT/parallel-LIF somas, the folded threshold neurons) is registered as an activation module, so that its
activation sparsity is the spiking model's. Static: ``Footprint`` (bytes of parameters and buffers),
``ConnectionSparsity``, ``ParameterCount``; workload: ``ActivationSparsity``, ``SynapticOperations`` (dense,
effective MACs, effective ACs) and, for classifiers, ``ClassificationAccuracy``. NeuroBench is imported here only
(the ``neurobench`` extra: ``uv sync --extra neurobench``).

What NeuroBench's synaptic-operation hooks see: ``nn.Linear``/``nn.Conv*``/RNN modules, from their inputs. What
they cannot see (the sparse-MLP's token projections, a ``bmm`` inside their module; BatchNorm; the S4D
convolution; LayerNorm and GLU) is listed under ``not_seen`` from our :class:`~snn_engine.measure.ops.OpCounter` counts,
per module class. Its counting differs from ours in two ways (``docs/spike_accounting.md``): an input of only
-1/0/1 counts as spikes, and on real input it counts the **nonzero** inputs times the fan-out as effective MACs
where we count every in-range product (our ``MAC``; NeuroBench's ``Dense``).
"""

from __future__ import annotations

import contextlib
import io

import torch
from spikingjelly.activation_based import functional
from torch import nn

from snn_engine.errors import UserError
from snn_engine.training.evaluation import to_device
from snn_engine.measure.metrics import is_spiking

HOOKED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)  # NeuroBench's stateless connection layers


def _imports():
    try:
        from neurobench.benchmarks import Benchmark
        from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
        from neurobench.metrics.workload import ActivationSparsity, ClassificationAccuracy, SynapticOperations
        from neurobench.models import TorchModel
    except ModuleNotFoundError as missing:
        raise UserError(f"neurobench=true needs the neurobench extra ({missing.name} is missing): install it with "
                        "`uv sync --extra neurobench` (or make setup)") from None
    return (Benchmark, TorchModel, [Footprint, ConnectionSparsity, ParameterCount],
            [ActivationSparsity, SynapticOperations], ClassificationAccuracy)


def not_seen(model: nn.Module, ops: dict) -> dict[str, dict]:
    """Our counts (per sample) of the layers NeuroBench's synaptic-operation hooks do not see, per module class:
    ``{class name: {"ac", "mac", "layers"}}``."""
    modules = dict(model.named_modules())
    out: dict[str, dict] = {}
    for name, layer in ops["layers"].items():
        module = modules.get(name, model)
        if isinstance(module, HOOKED) or not (layer["ac"] or layer["mac"]):
            continue
        row = out.setdefault(type(module).__name__, {"ac": 0.0, "mac": 0.0, "layers": 0})
        row["ac"] += layer["ac"]
        row["mac"] += layer["mac"]
        row["layers"] += 1
    return out


def neurobench_report(model: nn.Module, loader, device, dtype, ops: dict, task=None) -> dict:
    """NeuroBench's metrics of ``model`` on ``loader`` beside ours: ``{"metrics": {name: value},
    "not_seen": not_seen(...), "ours": {"activation_sparsity", "ac_on_hooked_layers", "ac", "mac"}}``."""
    Benchmark, TorchModel, static, workload, accuracy = _imports()
    tokens = task is not None and task.unit == "tokens"
    wrapped = TorchModel(model)
    for cls in dict.fromkeys(type(m) for m in model.modules() if is_spiking(m)):
        wrapped.add_activation_module(cls)

    def preprocess(data):
        x, y = data
        return to_device(x, device, dtype), y.to(device)

    def postprocess(preds):
        functional.reset_net(model)  # stateful neurons start each batch at rest, as in evaluate_model
        if tokens:
            return preds
        logits = preds.mean(0) if preds.ndim == 3 else preds  # [T, B, K] per step -> [B, K]
        return logits.argmax(-1)

    metrics = [static, workload + ([] if tokens else [accuracy])]
    benchmark = Benchmark(wrapped, loader, [preprocess], [postprocess], metrics)
    with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        results = benchmark.run(quiet=True)
    wrapped.cleanup_hooks()
    flat: dict[str, float] = {}
    for key, value in results.items():
        if isinstance(value, dict):
            flat.update({f"{key}/{k}": float(v) for k, v in value.items()})
        else:
            flat[key] = float(value)
    modules = dict(model.named_modules())
    hooked_ac = sum(layer["ac"] for name, layer in ops["layers"].items() if isinstance(modules.get(name), HOOKED))
    return {"metrics": flat, "not_seen": not_seen(model, ops),
            "ours": {"ac_on_hooked_layers": hooked_ac, "ac": ops["total"]["ac"], "mac": ops["total"]["mac"]}}


def format_neurobench(report: dict) -> str:
    """NeuroBench's metrics, then what its hooks cannot see (our counts) and our totals beside its ACs."""
    lines = ["NeuroBench metrics (its TorchModel; our spiking modules registered as activations):"]
    width = max(len(k) for k in report["metrics"]) if report["metrics"] else 0
    lines += [f"  {k.ljust(width)}  {v:.6g}" for k, v in report["metrics"].items()]
    ours = report["ours"]
    lines.append(f"  ours: AC on the layers its hooks see {ours['ac_on_hooked_layers']:.6g}, all AC {ours['ac']:.6g}, "
                 f"all MAC {ours['mac']:.6g} (per sample)")
    for cls, row in report["not_seen"].items():
        lines.append(f"  not seen by NeuroBench's hooks: {cls} x{row['layers']}: {row['ac']:.6g} AC, "
                     f"{row['mac']:.6g} MAC per sample (our rules)")
    return "\n".join(lines)
