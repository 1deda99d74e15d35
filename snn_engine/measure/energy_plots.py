"""The two energy figures of ``eval.py`` (from :func:`snn_engine.measure.energy.energy_report`'s result):

- ``figures/energy.png``: one panel per view (``sop`` and each memory estimator), stacked bars per network (SNN,
  ANN twin, quantized twins) split into compute, weight reads, state reads/writes, spike traffic and the rest;
- ``figures/energy_vs_rate.png``: one panel per view, the SNN's energy against the firing rate (the affine model
  of :mod:`snn_engine.measure.energy`), the ANN and quantized twins as horizontal lines, the measured rate and each
  crossover marked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snn_engine.errors import UserError
from snn_engine.measure.plots import _pyplot, _save

PARTS = (("compute_pj", "compute", "tab:blue"), ("weights_pj", "weight reads", "tab:orange"),
         ("state_pj", "state reads/writes", "tab:green"), ("spikes_pj", "spike traffic", "tab:red"),
         ("other_pj", "other (not split)", "tab:gray"))


def _views(report: dict) -> list[tuple[str, dict, float, float]]:
    """(view name, SNN entry, zero-rate energy pJ, firing rate at which the SNN entry was measured) per view."""
    sop = report["sop"]
    views = [("sop (papers')", sop["snn"], sop["zero_rate_pj"], report["firing_rate"], "sop")]
    for name, entry in report["memory"].items():
        if "error" in entry:
            continue
        views.append((name, entry, entry["zero_rate_pj"], report.get("memory_firing_rate", 0.0), name))
    return views


def _baselines(report: dict, key: str) -> list[tuple[str, dict, float | None]]:
    out = []
    if key in report["ann"]:
        out.append(("ANN", report["ann"][key], report["crossover"].get("ann", {}).get(key)))
    for width, entries in report["qann"].items():
        if key in entries:
            out.append((f"QANN {width}", entries[key], report["crossover"].get(f"qann_{width}", {}).get(key)))
    return out


def _panels(count: int):
    plt = _pyplot()
    cols = min(count, 3)
    rows = (count + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def plot_energy_bars(report: dict, path) -> Path:
    """``energy.png``: stacked bars per network in every view (module docstring)."""
    views = _views(report)
    if not views:
        raise UserError("plot_energy_bars needs an energy report; pass snn_engine.measure.energy.energy_report(...)")
    fig, axes = _panels(len(views))
    unit = report["unit"]
    for ax, (title, snn, _zero, _rate, key) in zip(axes, views):
        networks = [("SNN", snn)] + [(name, entry) for name, entry, _ in _baselines(report, key)]
        bottom = np.zeros(len(networks))
        for part, label, color in PARTS:
            values = np.array([entry[part] for _, entry in networks]) * 1e-6
            if values.any():
                ax.bar(range(len(networks)), values, bottom=bottom, color=color, label=label)
                bottom += values
        ax.set_xticks(range(len(networks)), [n for n, _ in networks], rotation=20, fontsize=8)
        ax.set_ylabel(f"uJ per {unit}")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle(f"energy per {unit}: SNN, ANN twin and quantized twins", fontsize=11)
    return _save(fig, path)


def plot_energy_vs_rate(report: dict, path) -> Path:
    """``energy_vs_rate.png``: the SNN's energy against its firing rate, baselines and crossovers marked."""
    views = _views(report)
    fig, axes = _panels(len(views))
    for ax, (title, snn, zero, rate, key) in zip(axes, views):
        baselines = _baselines(report, key)
        crossings = [c for _, _, c in baselines if c]
        top = min(1.0, max([3 * rate, 0.05] + [1.3 * c for c in crossings]))
        r = np.linspace(0.0, top, 200)
        slope = (snn["total_pj"] - zero) / rate if rate > 0 else 0.0
        ax.plot(r, (zero + slope * r) * 1e-6, color="black", label="SNN")
        ax.axvline(rate, color="black", linestyle=":", linewidth=1, label=f"measured rate {rate:.3g}")
        for (name, entry, cross), color in zip(baselines, ("tab:blue", "tab:orange", "tab:green", "tab:purple")):
            ax.axhline(entry["total_pj"] * 1e-6, color=color, linestyle="--", linewidth=1, label=name)
            if cross is not None and 0 < cross <= top:
                ax.plot([cross], [entry["total_pj"] * 1e-6], "o", color=color)
                ax.annotate(f"{cross:.3g}", (cross, entry["total_pj"] * 1e-6), fontsize=7,
                            textcoords="offset points", xytext=(4, 4))
        ax.set_xlim(0, top)
        ax.set_ylim(bottom=0)
        ax.set_xlabel("firing rate (spikes / neuron / step)")
        ax.set_ylabel(f"uJ per {report['unit']}")
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("SNN energy against firing rate; dots: crossovers (the SNN wins left of them)", fontsize=11)
    return _save(fig, path)


def write_energy_figures(report: dict, run_dir) -> dict[str, str]:
    """Both figures under ``run_dir/figures``; ``{name: path}``."""
    figures = Path(run_dir) / "figures"
    return {"energy": str(plot_energy_bars(report, figures / "energy.png")),
            "energy_vs_rate": str(plot_energy_vs_rate(report, figures / "energy_vs_rate.png"))}

