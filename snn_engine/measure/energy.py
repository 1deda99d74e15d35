"""Three views of a spiking model's energy, its ANN and quantized-ANN twins, and the firing rate where they cross.

- ``sop``: the papers' convention, today's numbers unchanged: AC x ``e_ac`` + MAC x ``e_mac`` counted by
  :class:`snn_engine.measure.ops.OpCounter` over the whole validation set (compute only, no memory traffic);
- ``memory``: SpikingJelly 2.0's memory-inclusive estimators (:mod:`snn_engine.measure.energy_estimators`), run by its
  own counters on the first ``energy.samples`` validation samples one at a time (batch 1, the deployment setting:
  Lemaire's and NeuroMC's costs depend on the batch), plus, priced in each estimator's units, what its counters
  cannot see (:mod:`snn_engine.measure.energy_unseen`), shown as its own lines;
- ``ann`` / ``qann``: the same views on the ANN twin (:func:`snn_engine.measure.twins.ann_twin`) and on that twin
  re-priced for integer datapaths of ``energy.qann_bits`` bits and of the spiking model's own weight width.

The silenced network and the ANN twin (below) do the same work on every input of a shape (no spikes; dense
activations), so they run on the first quarter of the samples only (at least one; a language model's adaptive
softmax still varies a little with the words).

**Crossover.** Every energy is modelled as affine in the overall firing rate r (spikes per neuron per step),
``E(r) = E(0) + r / r0 (E(r0) - E(0))``, anchored by two runs of the same estimator: at the measured rate r0 and
with every spiking neuron silenced (``E(0)``; for ``sop`` the MAC energy). The spiking model beats a baseline of
energy B below ``r* = r0 (B - E(0)) / (E(r0) - E(0))`` (0 when even a silent network costs more than B). The
model assumes every layer's activity scales with the overall rate.

Energies are per image (sparse-MLP), per sequence (sequence classifiers) or per token (language models).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time

import torch
from spikingjelly.activation_based import functional
from torch import nn

from snn_engine.measure import energy_estimators as est
from snn_engine.measure.energy_unseen import KINDS, UnseenCounter, by_kind
from snn_engine.errors import UserError
from snn_engine.measure.ops import eng
from snn_engine.measure.twins import ann_twin, int_unit_costs, silenced, weight_bits

log = logging.getLogger(__name__)

def crossover(rate: float, zero_pj: float, measured_pj: float, baseline_pj: float) -> float | None:
    """The firing rate below which the spiking model costs less than ``baseline_pj`` (module docstring); None when
    its energy does not grow with the rate (no spikes seen)."""
    event = measured_pj - zero_pj
    if not (event > 0 and rate > 0):
        return None
    return max(rate * (baseline_pj - zero_pj) / event, 0.0)


def _view(compute=0.0, weights=0.0, state=0.0, spikes=0.0, other=0.0) -> dict:
    entry = {"compute_pj": compute, "weights_pj": weights, "state_pj": state, "spikes_pj": spikes, "other_pj": other}
    return {**entry, "total_pj": sum(entry.values())}


def _with_unseen(entry: dict, unseen: dict | None) -> dict:
    return _view(*(entry[k] + (unseen[k] if unseen else 0.0) for k in est.CATEGORIES))


def sop_views(ops: dict, rate: float, qann_bits: list[int]) -> dict:
    """The ``sop`` view from :meth:`OpCounter.compute` (per sample): SNN, ANN twin, quantized twins, crossovers."""
    total, unit = ops["total"], ops["unit_energy_pj"]
    snn = _view(compute=total["energy_pj"])
    ann = _view(compute=total["ann_energy_pj"])
    qann = {f"int{b}": _view(compute=total["ann_mac"] * sum(int_unit_costs(b))) for b in qann_bits}
    zero = unit["mac"] * total["mac"]
    cross = {"ann": crossover(rate, zero, snn["total_pj"], ann["total_pj"]),
             **{f"qann_{k}": crossover(rate, zero, snn["total_pj"], v["total_pj"]) for k, v in qann.items()}}
    return {"snn": snn, "ann": ann, "qann": qann, "crossover": cross, "zero_rate_pj": zero,
            "convention": ops["convention"], "e_ac": unit["ac"], "e_mac": unit["mac"], "samples": ops["samples"]}


def _slice(x, i: int):
    return type(x)(_slice(t, i) for t in x) if isinstance(x, (tuple, list)) else x[i:i + 1]


def first_samples(loader, count: int, device, dtype, with_targets: bool) -> list[tuple]:
    """The first ``count`` validation samples, one per entry, as the positional arguments of a call: ``(x,)`` with
    x [1, ...] (an image [1, C, H, W], a sequence [1, L(, d)], or a tuple of such), or ``(x, y)`` with token ids
    x, y [1, L] for a model that takes its targets (a language model)."""
    from snn_engine.training.evaluation import to_device

    samples: list[tuple] = []
    for x, y in loader:
        x, y = to_device(x, device, dtype), y.to(device)
        for i in range(len(y)):
            samples.append((_slice(x, i), y[i:i + 1]) if with_targets else (_slice(x, i),))
            if len(samples) >= count:
                return samples
    return samples


def _measure(model: nn.Module, samples: list[tuple], names: tuple[str, ...], time_steps: int, silent: bool = False):
    """Per-sample means of each estimator's entry and our unseen records of ``model`` on ``samples``, and the
    firing rate seen."""
    sums = {name: est.empty_entry() for name in names}
    with silenced(model) if silent else contextlib.nullcontext():
        for name in names:
            try:
                for args in samples:
                    est.accumulate(sums[name], est.run(name, model, args))
            except Exception as error:  # noqa: BLE001 - an estimator that refuses a network: its reason, one line
                sums[name] = f"{type(error).__name__}: {str(error).strip().splitlines()[0][:200]}"
        with UnseenCounter(model, time_steps) as unseen, torch.no_grad():
            for args in samples:
                model(*args)
                functional.reset_net(model)
    share = 1.0 / max(len(samples), 1)
    entries = {name: est.scaled(e, share) if isinstance(e, dict) else e for name, e in sums.items()}
    return entries, unseen, unseen.firing_rate()


def memory_views(model: nn.Module, reference: nn.Module, samples: list[tuple], names: tuple[str, ...],
                 qann_bits: list[int], time_steps: int) -> dict:
    """The ``memory`` view of ``model`` and the ``ann``/``qann`` entries of ``reference``'s ANN twin, per sample
    (keys ``memory``, ``ann``, ``qann``, ``crossover``, ``firing_rate``, ``samples``)."""
    snn, unseen, rate = _measure(model, samples, names, time_steps)
    anchors = samples[:max(1, len(samples) // 4)]  # no spikes / dense activations: the same work on every input
    silent, silent_unseen, _ = _measure(model, anchors, names, time_steps, silent=True)
    memory, ann, qann, cross = {}, {}, {}, {}
    try:
        twin = ann_twin(reference, samples[0])
        twin_entries, twin_unseen, _ = _measure(twin, anchors, names, 1)
        twin_bits = weight_bits(twin)
    except UserError as error:
        log.warning("%s", error)
        twin_entries, twin_unseen, twin_bits = None, None, 32
    for name in names:
        spec = est.ESTIMATORS[name]
        if isinstance(snn[name], str) or isinstance(silent[name], str):
            reason = snn[name] if isinstance(snn[name], str) else silent[name]
            memory[name] = {"title": spec.title, "error": reason}
            log.warning("energy estimator %s could not run on %s: %s", name, type(model).__name__, reason)
            continue
        records = unseen.lines(spec.sees_soma, spec.sees_compute)
        priced = est.price_unseen(name, records)
        entry = _with_unseen(snn[name], priced)
        silent_lines = silent_unseen.lines(spec.sees_soma, spec.sees_compute)
        zero = _with_unseen(silent[name], est.price_unseen(name, silent_lines))["total_pj"]
        memory[name] = {**entry, "title": spec.title, "spikingjelly": _with_unseen(snn[name], None),
                        "unseen": _unseen_summary(records, priced is not None),
                        "zero_rate_pj": zero, "counts": snn[name]["counts"], "warnings": snn[name]["warnings"]}
        if twin_entries is None:
            continue
        if isinstance(twin_entries[name], str):
            memory[name]["warnings"] = memory[name]["warnings"] + [f"the ANN twin: {twin_entries[name]}"]
            continue
        twin_records = twin_unseen.lines(lambda m: True, spec.sees_compute)
        ann[name] = _with_unseen(twin_entries[name], est.price_unseen(name, twin_records))
        cross.setdefault("ann", {})[name] = crossover(rate, zero, entry["total_pj"], ann[name]["total_pj"])
        for bits in qann_bits:
            requant = est.requantize(name, twin_entries[name], bits, twin_bits)
            if requant is None:
                continue
            qentry = _with_unseen(requant, est.price_unseen(name, twin_records, bits, twin_bits))
            qann.setdefault(f"int{bits}", {})[name] = qentry
            cross.setdefault(f"qann_int{bits}", {})[name] = crossover(rate, zero, entry["total_pj"],
                                                                      qentry["total_pj"])
    return {"memory": memory, "ann": ann, "qann": qann, "crossover": cross, "firing_rate": rate,
            "samples": len(samples)}


def _unseen_summary(records: dict, priced: bool) -> dict:
    return {kind: {**row, "what": KINDS[kind], "priced": priced} for kind, row in by_kind(records).items()}


def energy_report(settings, model: nn.Module, reference: nn.Module, loader, device, dtype, ops: dict,
                  firing_rate: float, tokens: float | None = None, autocast: bool = False) -> dict:
    """Every view of ``model`` (the evaluated model; ``reference``: the model its ANN twin is built from, the
    unfolded one under ``mfi=true``), per unit: ``{"unit", "firing_rate", "sop", "memory", "ann", "qann",
    "crossover", "memory_samples", "memory_firing_rate", "weight_bits"}`` (module docstring). ``tokens``: for a
    language model, the validation tokens the ``ops`` counts are spread over (energies become per token)."""
    names = est.check_names(settings.get("estimators", est.DEFAULT_ESTIMATORS))
    own_bits = weight_bits(model, autocast)
    try:
        widths = {int(b) for b in settings.get("qann_bits", [8])}
    except (TypeError, ValueError):
        raise UserError(f"energy.qann_bits={settings.get('qann_bits')!r} must be a list of integer widths, "
                        "e.g. energy.qann_bits=[8]") from None
    bits = sorted(widths | ({own_bits} if own_bits <= 32 else set()))
    for b in bits:
        int_unit_costs(b)  # a width < 1 is a one-line error
    sop = sop_views(ops, firing_rate, bits)
    per_sample = 1.0
    if tokens:
        per_sample = ops["samples"] / tokens
        sop = _scale_views(sop, per_sample)
    first = next(iter(loader))[0]
    unit = "token" if tokens else ("image" if torch.is_tensor(first) and first.ndim >= 4 else "sequence")
    report = {"unit": unit,
              "firing_rate": firing_rate, "weight_bits": own_bits, "qann_bits": bits,
              "sop": {k: v for k, v in sop.items() if k not in ("ann", "qann", "crossover")},
              "ann": {"sop": sop["ann"]}, "qann": {k: {"sop": v} for k, v in sop["qann"].items()},
              "crossover": {k: {"sop": v} for k, v in sop["crossover"].items()}, "memory": {}}
    count = int(settings.get("samples", 16))
    if names and count > 0:
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        samples = first_samples(loader, count, device, dtype, with_targets=tokens is not None)
        views = memory_views(model, reference, samples, names, bits, int(getattr(model, "T", 1) or 1))
        model.train(was_training)
        if tokens:
            seen = sum(args[0].numel() for args in samples) / max(len(samples), 1)
            views = _scale_views(views, 1.0 / max(seen, 1.0))
        report["memory"] = views["memory"]
        report.update(memory_samples=views["samples"], memory_firing_rate=views["firing_rate"],
                      memory_seconds=time.perf_counter() - started)
        log.info("energy: %s on %d samples, their ANN and quantized twins in %.1f s", ", ".join(names),
                 views["samples"], report["memory_seconds"])
        for key in ("ann", "qann", "crossover"):
            for sub, entries in views[key].items():
                if key == "ann":
                    report["ann"][sub] = entries
                else:
                    report[key].setdefault(sub, {}).update(entries)
    return report


def _scale_views(tree, factor: float, inside: bool = False):
    """Every ``*_pj`` number of a nested dict, and every count under ``counts``/``unseen``, multiplied by
    ``factor`` (rates, sample counts and layer counts unchanged)."""
    if isinstance(tree, dict):
        out = {}
        for k, v in tree.items():
            number = isinstance(v, (int, float)) and not isinstance(v, bool) and k != "layers"
            out[k] = v * factor if number and (inside or k.endswith("_pj")) else _scale_views(
                v, factor, inside or k in ("counts", "unseen"))
        return out
    return tree


def _j(pj: float) -> str:
    return eng(pj * 1e-12, "J") if pj else "-"


def _rate(r) -> str:
    if r is None:
        return "n/a"
    return "never (0)" if r == 0 else (f"{r:.3g} (wins at any rate)" if r >= 1 else f"{r:.3g}")


def format_energy_table(report: dict) -> str:
    """The console table: one row per view, estimator and network, with the categories, total and crossover."""
    unit = report["unit"]
    cols = ("view", "network", "compute", "weights", "state", "spikes", "other", "total", "x SNN", "SNN wins below")
    rows = []

    def add(view, network, entry, snn_total, cross):
        ratio = entry["total_pj"] / snn_total if snn_total else float("nan")
        rows.append((view, network, *(_j(entry[k]) for k in est.CATEGORIES), _j(entry["total_pj"]),
                     "" if cross == "" else f"{ratio:.3g}", cross))

    views = [("sop", report["sop"]["snn"])] + [(name, m) for name, m in report["memory"].items() if "error" not in m]
    for view, snn in views:
        add(view, "SNN", snn, snn["total_pj"], "")
        if view in report["ann"]:
            add("", "ANN (fp)", report["ann"][view], snn["total_pj"], _rate(report["crossover"]["ann"].get(view)))
        for width, entries in report["qann"].items():
            if view in entries:
                add("", f"QANN {width}", entries[view], snn["total_pj"],
                    _rate(report["crossover"].get(f"qann_{width}", {}).get(view)))
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]

    def line(cells):
        return "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    rule = "-" * len(line(cols))
    sop = report["sop"]
    head = [f"energy per {unit}: sop = the papers' convention (AC x {sop['e_ac']} pJ + MAC x {sop['e_mac']} pJ, "
            f"compute only, {sop['samples']} samples, firing rate {report['firing_rate']:.4g})"]
    if report["memory"]:
        head.append(f"memory views: SpikingJelly's estimators + our lines for what they cannot see, on "
                    f"{report['memory_samples']} validation samples one at a time (firing rate "
                    f"{report['memory_firing_rate']:.4g}); QANN intN: the ANN twin on N-bit integers "
                    f"(the SNN's weights are {report['weight_bits']}-bit)")
    out = head + [line(cols), rule]
    for row in rows:
        if row[0] and len(out) > len(head) + 2:
            out.append(rule)
        out.append(line(row))
    out.append(rule)
    for name, m in report["memory"].items():
        if "error" in m:
            out.append(f"{name}: could not run on this model: {m['error']}")
            continue
        if m["unseen"] and not next(iter(m["unseen"].values()))["priced"]:
            out.append(f"{name}: what its counters cannot see ({', '.join(m['unseen'])}) has no price in its model: "
                       "left out of its total (summary.json lists it under unseen)")
            m = {**m, "unseen": {}}
        for kind, row in m["unseen"].items():
            amount = ", ".join(x for x in (f"{eng(row['mac'])} MAC" if row["mac"] else "",
                                           f"{eng(row['ac'])} AC" if row["ac"] else "",
                                           f"{eng(row['bytes'])}B" if row["bytes"] else "") if x)
            tail = "included above" if row["priced"] else "not priced by this estimator, left out"
            out.append(f"{name}: not seen by its counters, our rules: {row['what']}: {amount} ({tail})")
        for warning in m["warnings"][:4]:
            out.append(f"{name}: {warning}")
    out.append("SNN wins below: the firing rate (spikes per neuron per step) under which the SNN would cost less "
               "than that network, E(r) affine in r between a silenced run and the measured one")
    return "\n".join(out)


def flat_metrics(report: dict) -> dict[str, float]:
    """Scalars for the logger: ``eval/energy/<view>/<network>_uj`` and ``eval/energy/crossover/<baseline>/<view>``."""
    out = {f"eval/energy/sop/snn_uj": report["sop"]["snn"]["total_pj"] * 1e-6}
    for name, m in report["memory"].items():
        if "error" not in m:
            out[f"eval/energy/{name}/snn_uj"] = m["total_pj"] * 1e-6
    for view, entry in report["ann"].items():
        out[f"eval/energy/{view}/ann_uj"] = entry["total_pj"] * 1e-6
    for width, entries in report["qann"].items():
        for view, entry in entries.items():
            out[f"eval/energy/{view}/qann_{width}_uj"] = entry["total_pj"] * 1e-6
    for baseline, entries in report["crossover"].items():
        for view, r in entries.items():
            out[f"eval/energy/crossover/{baseline}/{view}"] = float("nan") if r is None else r
    return {k: v for k, v in out.items() if not (isinstance(v, float) and math.isnan(v) and "crossover" not in k)}
