"""Evaluation figures as small PNG files: firing rates per layer, a spike raster, membrane traces, rate along time.

The ``plot_*`` functions are pure: arrays or dicts in, one PNG out, the written :class:`~pathlib.Path` returned.
:func:`write_eval_figures` is the glue that records one input with :func:`snn_engine.measure.probe.record_activity`
and writes all four under ``run_dir/figures``. matplotlib (Agg backend) is imported inside the functions:
importing it costs seconds and most runs never plot.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from snn_engine.errors import UserError

FIGSIZE = (8, 4.5)
DPI = 100


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _array(values, ndim: int, what: str) -> np.ndarray:
    """``values`` (tensor, array or list) as a float numpy array with ``ndim`` axes."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != ndim or array.size == 0:
        raise UserError(f"{what} must be a non-empty {ndim}-d array, got shape {array.shape}; "
                        "pass probe.record_activity output")
    return array


def _integer_axis(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI, format="png")
    _pyplot().close(fig)
    return path


def plot_firing_rates(rates: dict[str, float], path, title: str = "firing rate per layer") -> Path:
    """Bar chart of spikes per neuron per step for each layer (``rates`` from ``FiringRateMeter.compute``).

    The summary keys ``mean``/``overall``/``sparsity`` are not drawn as bars; ``overall`` (or the mean of the
    bars) is drawn as a line. More than 12 layers switch to horizontal bars with the first layer on top.
    """
    layers = {k: float(v) for k, v in rates.items() if k not in ("mean", "overall", "sparsity")}
    if not layers:
        raise UserError("plot_firing_rates needs at least one layer rate; pass FiringRateMeter.compute(device)")
    names, values = list(layers), np.array(list(layers.values()))
    overall = float(rates.get("overall", values.mean()))
    plt = _pyplot()
    horizontal = len(names) > 12
    height = min(max(4.0, 0.22 * len(names) + 1.0), 12.0) if horizontal else FIGSIZE[1]
    fig, ax = plt.subplots(figsize=(FIGSIZE[0], height))
    positions = np.arange(len(names))
    if horizontal:
        ax.barh(positions, values, color="tab:blue")
        ax.set_yticks(positions, names, fontsize=max(5, 9 - len(names) // 20))
        ax.invert_yaxis()
        ax.axvline(overall, color="tab:red", linestyle="--", label=f"overall {overall:.4f}")
        ax.set_xlabel("spikes / neuron / step")
    else:
        ax.bar(positions, values, color="tab:blue")
        ax.set_xticks(positions, names, rotation=45, ha="right", fontsize=8)
        ax.axhline(overall, color="tab:red", linestyle="--", label=f"overall {overall:.4f}")
        ax.set_ylabel("spikes / neuron / step")
    ax.set_title(title)
    ax.legend(loc="best", fontsize=8)
    return _save(fig, path)


def plot_raster(spikes, path, title: str = "spike raster", xlabel: str = "time step") -> Path:
    """Raster of ``spikes [time, n]``: a black cell at (step, neuron) for every spike of the sampled neurons."""
    spikes = _array(spikes, 2, "spikes")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    # one cell per (step, neuron), black where it spiked: readable for T = 2 as for L = 1024
    ax.imshow((spikes > 0).T, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest", origin="lower")
    _integer_axis(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("sampled neuron")
    ax.set_title(f"{title} ({int(spikes.sum())} spikes, {spikes.shape[1]} neurons)")
    return _save(fig, path)


def plot_membranes(membrane, path, threshold: float = 1.0, n_traces: int = 5, title: str = "membrane potential",
                   xlabel: str = "time step") -> Path:
    """The first ``n_traces`` columns of ``membrane [time, n]`` against time, with the threshold as a line."""
    membrane = _array(membrane, 2, "membrane")
    if int(n_traces) < 1:
        raise UserError(f"n_traces={n_traces} must be >= 1; pass how many membrane traces to draw")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    steps = np.arange(membrane.shape[0])
    for i in range(min(int(n_traces), membrane.shape[1])):
        ax.plot(steps, membrane[:, i], marker="." if len(steps) <= 64 else None, linewidth=1, label=f"neuron {i}")
    ax.axhline(float(threshold), color="tab:red", linestyle="--", label=f"threshold {threshold:g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("membrane (after reset)")
    _integer_axis(ax)
    ax.set_title(title)
    ax.legend(loc="best", fontsize=7)
    return _save(fig, path)


def plot_rate_along_time(rate, path, xlabel: str = "time step", title: str = "firing rate along time") -> Path:
    """Spikes per neuron at each step of ``rate [time]`` (for SpikingSSM: along the sequence)."""
    rate = _array(rate, 1, "rate")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=FIGSIZE)
    ax.plot(np.arange(len(rate)), rate, marker="o" if len(rate) <= 32 else None, linewidth=1)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("spikes / neuron")
    _integer_axis(ax)
    ax.set_ylim(bottom=0)
    ax.set_title(title)
    return _save(fig, path)


def write_eval_figures(model, x, run_dir, rates: dict, time_label: str = "time step", max_neurons: int = 64,
                       seed: int = 0) -> dict[str, Path]:
    """Record the first sample of ``x`` and write ``run_dir/figures/{firing_rates,raster,membrane,rate_along_time}.png``.

    The raster shows the layer with the most spikes among the sampled neurons; the membrane plot the first
    layer that exposes a membrane (skipped when none does); the rate along time averages the layers that share
    the most common time length. ``time_label`` names the time axis ("sequence position" for SpikingSSM).
    Returns ``{figure name: path written}``.
    """
    from snn_engine.measure.probe import record_activity

    figures = Path(run_dir) / "figures"
    activity = record_activity(model, x, max_neurons=max_neurons, seed=seed)
    paths = {"firing_rates": plot_firing_rates(rates, figures / "firing_rates.png")}
    busiest = max(activity, key=lambda name: float(activity[name]["spikes"].sum()))
    paths["raster"] = plot_raster(activity[busiest]["spikes"], figures / "raster.png", title=f"spikes of {busiest}",
                                  xlabel=time_label)
    with_membrane = [name for name, a in activity.items() if a["membrane"] is not None]
    if with_membrane:
        name = with_membrane[0]
        threshold = float(getattr(_module(model, name), "v_threshold", 1.0))
        paths["membrane"] = plot_membranes(activity[name]["membrane"], figures / "membrane.png", threshold=threshold,
                                           title=f"membrane of {name}", xlabel=time_label)
    lengths = [a["rate_along_time"].shape[0] for a in activity.values()]
    length = max(set(lengths), key=lengths.count)
    rows = [a["rate_along_time"].double() for a in activity.values() if a["rate_along_time"].shape[0] == length]
    paths["rate_along_time"] = plot_rate_along_time(
        sum(rows) / len(rows), figures / "rate_along_time.png",
        xlabel=time_label,
        title=f"firing rate along time (mean of {len(rows)} layers)",
    )
    return paths


def _module(model, name: str):
    return dict(model.named_modules())[name]
