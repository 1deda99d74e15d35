"""What ``eval.py`` reports beyond accuracy: spike accounting, operations and energy, MFI, figures.

:func:`spike_report` evaluates a model (or, with ``mfi=true``, its BN-folded inference form) on the
validation loader while counting spikes per neuron (:class:`~snn_engine.measure.metrics.FiringRateMeter`) and
synaptic operations (:class:`~snn_engine.measure.ops.OpCounter`), then, for a folded model, audits the remaining
multiplications and compares its logits with the unfolded model, and writes PNG figures.

The engine knows no model family. A model offers multiplication-free inference through a small protocol:

- ``model.fold_for_inference(position_bn) -> folded`` (``mfi=true``), where ``folded.mfi_audit(ops) -> dict``
  lists the multiplications left and ``folded.format_mfi_audit(result) -> str`` prints them;
- ``model.export_nir(path, position_bn) -> graph`` (``nir=true``, optional);
- a model without them may say why in ``model.mfi_unavailable`` (a sentence).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from snn_engine.errors import UserError
from snn_engine.training.evaluation import compare_logits, evaluate_model, to_device
from snn_engine.measure.metrics import format_rate_table
from snn_engine.measure.energy import energy_report, format_energy_table
from snn_engine.measure.energy import flat_metrics as energy_metrics
from snn_engine.measure.energy_estimators import DEFAULT_ESTIMATORS, check_names
from snn_engine.measure.energy_plots import write_energy_figures
from snn_engine.measure.ops import OpCounter, format_ops_table

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("mean", "overall", "sparsity")


def time_steps_of(model: nn.Module) -> int:
    """T of a model that repeats a static input (the sparse-MLP's ``T``); 1 for sequence models."""
    return int(getattr(model, "T", 1) or 1)


def is_foldable_family(model: nn.Module) -> bool:
    """Whether ``model`` has a BN-folded, multiplication-free inference form (``fold_for_inference``)."""
    return callable(getattr(model, "fold_for_inference", None))


def not_applicable(model: nn.Module) -> str:
    reason = getattr(model, "mfi_unavailable", None) or "it has no folded inference form (fold_for_inference)"
    return f"MFI does not apply to {type(model).__name__}: {reason}"


def fold_for_inference(model: nn.Module, position_bn: str) -> nn.Module:
    """The model's BN-folded inference form (``mfi=true`` / ``nir=true``)."""
    if not is_foldable_family(model):
        raise UserError(f"nir=true exports a folded multiplication-free model; {not_applicable(model)}")
    return model.fold_for_inference(position_bn)


def spike_report(cfg: DictConfig, model: nn.Module, loader: DataLoader, device: torch.device,
                 dtype: torch.dtype | None, autocast: contextlib.AbstractContextManager | None, run_dir: Path,
                 is_main: bool, task=None, progress: bool = True) -> dict:
    """Evaluate ``model`` with spike, operation and energy accounting; see the module docstring (``progress``: show
    the progress bar on the main process).

    Returns ``{"val": {the task's metrics (:mod:`snn_engine.tasks`), firing_rate}, "spikes":
    FiringRateMeter.compute_detailed(),
    "ops": OpCounter.compute(), "energy": the energy views (:mod:`snn_engine.measure.energy`, main process),
    "neurobench": NeuroBench's metrics (neurobench=true), "mfi": {...} (mfi=true; ``folded`` says whether the folded
    form was evaluated), "figures": {name: path}}``.
    """
    energy = cfg.energy
    estimators = check_names(energy.get("estimators", DEFAULT_ESTIMATORS))  # a bad name fails before evaluating
    model.eval()
    foldable = is_foldable_family(model)
    if cfg.mfi and not foldable:
        log.warning("mfi=true: %s; evaluating the model as trained", not_applicable(model))
    folded = fold_for_inference(model, str(cfg.position_bn)) if cfg.mfi and foldable else None
    evaluated = folded if folded is not None else model
    with OpCounter(evaluated, time_steps=time_steps_of(evaluated), e_ac=float(energy.e_ac),
                   e_mac=float(energy.e_mac), convention=str(energy.convention)) as counter:
        val = evaluate_model(evaluated, loader, device, dtype, autocast, progress=is_main and progress, detailed=True,
                             task=task)
    report = {"val": {k: v for k, v in val.items() if k != "spikes"}, "spikes": val["spikes"],
              "ops": counter.compute(device)}
    if folded is not None:
        report["mfi"] = {"folded": True, **folded.mfi_audit(report["ops"]),
                         **compare_logits(model, folded, loader, device, dtype, autocast,
                                          limit_batches=int(cfg.mfi_compare_batches))}
        report["mfi_text"] = folded.format_mfi_audit(report["mfi"])
    elif cfg.mfi:
        report["mfi"] = {"applicable": False, "folded": False, "reason": not_applicable(model)}
    if cfg.get("nir") and is_main:
        report["nir"] = export_nir_graph(model, run_dir / "model.nir", str(cfg.position_bn), loader)
    if is_main:
        tokens = val.get("tokens") if task is not None and task.unit == "tokens" else None
        report["energy"] = energy_report({**energy, "estimators": list(estimators)}, evaluated, model, loader,
                                         device, dtype, report["ops"], report["spikes"]["overall"]["rate"],
                                         tokens=tokens, autocast=autocast is not None)
    if cfg.get("neurobench") and is_main:
        from snn_engine.measure.neurobench_metrics import neurobench_report

        report["neurobench"] = neurobench_report(evaluated, loader, device, dtype, report["ops"], task=task)
    if cfg.figures and is_main:
        report["figures"] = write_figures(evaluated, loader, device, dtype, run_dir, val["firing_rate"])
        report["figures"].update(write_energy_figures(report["energy"], run_dir))
    return report


def export_nir_graph(model: nn.Module, path: Path, position_bn: str, loader: DataLoader | None = None,
                     samples: int = 4) -> dict:
    """Write the folded model as a NIR graph (``nir=true``); ``{"path", "nodes", "dense_params"}``, and with a
    ``loader``, ``"reimport_max_abs_diff"``: the file read back by SpikingJelly's ``import_from_nir``
    (:mod:`snn_engine.measure.nir_replay`) and run on the first ``samples`` validation images, against the model's logits."""
    if not callable(getattr(model, "export_nir", None)):
        raise UserError(f"nir=true exports a folded multiplication-free model; {not_applicable(model)}")
    try:
        graph = model.export_nir(path, position_bn)
    except ModuleNotFoundError as missing:
        raise UserError(f"nir=true needs the NIR package ({missing.name} is missing): install the extra with "
                        "`uv sync --extra nir`") from None
    log.info("wrote the folded model as a NIR graph of %d nodes to %s", len(graph.nodes), path)
    result = {"path": str(path), "nodes": len(graph.nodes), "dense_params": graph.metadata.get("dense_params")}
    if loader is not None:
        from snn_engine.measure.nir_replay import logit_difference

        images = next(iter(loader))[0][:samples]
        meta = graph.metadata
        result["reimport_max_abs_diff"] = logit_difference(model, path, images, int(meta["time_steps"]),
                                                           float(meta["dt"]))
        log.info("NIR graph read back with SpikingJelly's import_from_nir: max |logit difference| %.3g on %d "
                 "images", result["reimport_max_abs_diff"], len(images))
    return result


def write_figures(model: nn.Module, loader: DataLoader, device: torch.device, dtype: torch.dtype | None,
                  run_dir: Path, firing_rate: dict) -> dict[str, str]:
    """PNG figures of the first validation sample (see :func:`snn_engine.measure.plots.write_eval_figures`)."""
    from snn_engine.measure.plots import write_eval_figures

    x, _ = next(iter(loader))
    if not isinstance(x, torch.Tensor):
        log.warning("figures skipped: the model takes structured inputs (%s), the probe records one tensor input",
                    type(x).__name__)
        return {}
    rates = {k: v for k, v in firing_rate.items() if k not in SUMMARY_KEYS}
    label = "time step" if time_steps_of(model) > 1 else "sequence position"
    paths = write_eval_figures(model, to_device(x, device, dtype), run_dir, rates, time_label=label)
    return {name: str(path) for name, path in paths.items()}


def format_report(report: dict) -> str:
    """The console text: firing-rate table, AC/MAC/energy table and (mfi=true) the MFI audit, as the folded
    model's ``format_mfi_audit`` wrote it (``report["mfi_text"]``, set by :func:`spike_report`)."""
    parts = ["firing rates (spikes per neuron per step):", format_rate_table(report["spikes"]),
             "", "synaptic operations and energy per sample:", format_ops_table(report["ops"])]
    if "energy" in report:
        parts += ["", format_energy_table(report["energy"])]
    if "neurobench" in report:
        from snn_engine.measure.neurobench_metrics import format_neurobench

        parts += ["", format_neurobench(report["neurobench"])]
    if report.get("mfi", {}).get("applicable") is False:
        parts += ["", f"MFI audit: {report['mfi']['reason']}"]
    elif "mfi" in report:
        parts += ["", report["mfi_text"]]
    return "\n".join(parts)


def flat_metrics(report: dict) -> dict[str, float]:
    """Scalars for the logger: ``eval/acc1``, ``eval/firing_rate``, ``eval/energy_uj``, ... (no per-layer keys)."""
    val, total = report["val"], report["ops"]["total"]
    metrics = {f"eval/{k}": v for k, v in val.items() if k != "firing_rate"}
    metrics.update({"eval/firing_rate": report["spikes"]["overall"]["rate"],
                    "eval/sparsity": report["spikes"]["overall"]["sparsity"],
                    "eval/silent_fraction": report["spikes"]["overall"]["silent_fraction"],
                    "eval/ac_per_sample": total["ac"], "eval/mac_per_sample": total["mac"],
                    "eval/energy_uj": total["energy_pj"] * 1e-6, "eval/ann_energy_uj": total["ann_energy_pj"] * 1e-6})
    if "max_logit_diff" in report.get("mfi", {}):
        metrics["eval/mfi_max_logit_diff"] = report["mfi"]["max_logit_diff"]
    for name, layer in report["spikes"]["layers"].items():
        metrics[f"eval/firing_rate/{name}"] = layer["rate"]
        metrics[f"eval/silent_fraction/{name}"] = layer["silent_fraction"]
    for name, layer in report["ops"]["layers"].items():
        metrics[f"eval/energy_pj/{name}"] = layer["energy_pj"]
    if "energy" in report:
        metrics.update(energy_metrics(report["energy"]))
    for key, value in report.get("neurobench", {}).get("metrics", {}).items():
        if isinstance(value, (int, float)):
            metrics[f"eval/neurobench/{key}"] = value
    return metrics
