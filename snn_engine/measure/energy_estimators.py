"""SpikingJelly 2.0's memory-inclusive energy estimators, run by its own counters, as one kind of entry.

Each estimator runs one forward pass of a model on one input (``run(name, model, inputs)``) and returns an entry
in pJ summed over that call, split into the categories every view draws (``figures/energy.png``):

- ``compute_pj``: arithmetic (MAC/AC; Lemaire: also its address arithmetic);
- ``weights_pj``: parameter reads (weights and biases);
- ``state_pj``: neuron state (membrane potential) reads and writes;
- ``spikes_pj``: spike and activation traffic (Lemaire's input/output buffers);
- ``other_pj``: what an estimator does not split (NeuroMC's memory hierarchy, SpikeSim's crossbar periphery).

``counts`` keeps the estimator's own counts (MAC, AC, bytes) and ``detail`` its own breakdown (pJ).

- ``simple``, ``estimate_simple_energy``: MAC/AC of mm, bmm, conv and BN (and adds) from the aten ops that ran;
  weight and bias reads of ``nn.Linear``/``nn.Conv*`` modules (one read per synaptic operation on spikes, dense
  otherwise); one read and one write per step of every ``BaseNode`` state. 45 nm Horowitz, 24.96 pJ/byte.
- ``lemaire``, ``estimate_lemaire_energy`` (``strict=False``): ``nn.Linear``/``nn.Conv*`` modules and SpikingJelly
  IF/LIF nodes only; every other leaf module (BN, our somas, the S4D layer) is omitted with a warning. SRAM cost
  per byte grows with the buffer size.
- ``neuromc``, ``estimate_neuromc_runtime_energy``: conv and matmul fragments mapped onto NeuroMC's cores and
  memories (32 nm, 16 bit).
- ``spikesim``, ``estimate_spikesim_energy`` (event mode): ungrouped ``nn.Conv2d`` stages only (an RRAM crossbar
  accelerator, 65 nm).

What an estimator cannot see is counted with our rules by :mod:`snn_engine.measure.energy_unseen` and priced here in the
estimator's own unit costs (:func:`price_unseen`); NeuroMC and SpikeSim have no per-operation prices to apply, so
their unseen lines are listed, not added. :func:`requantize` re-prices an ANN twin's entry at an integer width.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable

import torch
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.neuron import BaseNode
from torch import nn

from snn_engine.measure.energy_unseen import sees_aten_compute, sees_synaptic_modules
from snn_engine.errors import UserError
from snn_engine.measure.twins import int_unit_costs

CATEGORIES = ("compute_pj", "weights_pj", "state_pj", "spikes_pj", "other_pj")
DEFAULT_ESTIMATORS = ("simple", "lemaire")


def empty_entry() -> dict:
    return {**{k: 0.0 for k in CATEGORIES}, "counts": {}, "detail": {}, "warnings": []}


def total_pj(entry: dict) -> float:
    return float(sum(entry[k] for k in CATEGORIES))


def _entry(counts: dict, detail: dict, warnings_list: list, **energies: float) -> dict:
    entry = empty_entry()
    entry.update({k: float(v) for k, v in energies.items()})
    entry.update(counts={k: float(v) for k, v in counts.items() if isinstance(v, (int, float))},
                 detail={k: float(v) for k, v in detail.items()}, warnings=[str(w) for w in warnings_list])
    return entry


def _simple(model: nn.Module, inputs: Any) -> dict:
    from spikingjelly.activation_based.op_counter import estimate_simple_energy

    r = estimate_simple_energy(model, inputs)
    return _entry(r.counts, r.breakdown_pj, r.warnings, compute_pj=r.energy_compute_pj,
                  weights_pj=r.breakdown_pj["parameter_memory_pj"], state_pj=r.breakdown_pj["neuron_state_memory_pj"])


def _lemaire(model: nn.Module, inputs: Any) -> dict:
    from spikingjelly.activation_based.op_counter import LemaireEnergyConfig, estimate_lemaire_energy

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the omitted modules come back in r.warnings
        r = estimate_lemaire_energy(model, inputs, config=LemaireEnergyConfig(strict=False))
    b = r.breakdown_pj
    return _entry(r.counts, b, r.warnings, compute_pj=b["ops_pj"] + b["addressing_pj"], weights_pj=b["params_pj"],
                  state_pj=b["potential_pj"], spikes_pj=b["inout_pj"])


def _neuromc(model: nn.Module, inputs: Any) -> dict:
    from spikingjelly.activation_based.op_counter import estimate_neuromc_runtime_energy

    with torch.no_grad():  # forward only: without it our spike storage hooks would run on its meta tensors
        r = estimate_neuromc_runtime_energy(model, inputs)
    detail = {"mac_pj": r.energy_mac_pj, "extra_compute_pj": r.energy_extra_compute_pj,
              "base_memory_pj": r.energy_base_memory_pj, "extra_memory_pj": r.energy_extra_memory_pj}
    return _entry({}, detail, r.warnings, compute_pj=r.energy_compute_pj, other_pj=r.energy_memory_pj)


def _spikesim(model: nn.Module, inputs: Any) -> dict:
    from spikingjelly.activation_based.op_counter import SpikeSimEnergyConfig, estimate_spikesim_energy

    config = SpikeSimEnergyConfig(activity_mode="event", require_if_lif_neurons=False)
    with torch.no_grad():
        r = estimate_spikesim_energy(model, inputs, config=config, strict=False)
    b = r.breakdown_pj
    return _entry(r.counts, b, r.warnings, compute_pj=b.get("xbar_pj", 0.0) + b.get("neuron_pj", 0.0),
                  other_pj=b.get("patch_control_pj", 0.0))


def _lif_like(module: nn.Module) -> bool:
    from spikingjelly.activation_based.neuron import IFNode, LIFNode

    return isinstance(module, (IFNode, LIFNode))


@dataclass(frozen=True)
class Estimator:
    """``run(model, inputs) -> entry``; ``sees_soma(neuron module)``: whether its counters price that soma's state;
    ``sees_compute(layer module)``: whether they see a counted layer's arithmetic (:mod:`snn_engine.measure.energy_unseen`);
    ``priced``: whether :func:`price_unseen` and :func:`requantize` apply to it."""

    name: str
    title: str
    run: Callable[[nn.Module, Any], dict]
    sees_soma: Callable[[nn.Module], bool]
    sees_compute: Callable[[nn.Module], bool]
    priced: bool


ESTIMATORS = {
    "simple": Estimator("simple", "SpikingJelly SimpleEnergy (45 nm, Horowitz + 24.96 pJ/byte)", _simple,
                        lambda m: isinstance(m, BaseNode), sees_aten_compute, True),
    "lemaire": Estimator("lemaire", "Lemaire et al. 2022 analytical (45 nm, SRAM by buffer size)", _lemaire,
                         _lif_like, sees_synaptic_modules, True),
    "neuromc": Estimator("neuromc", "NeuroMC runtime (32 nm, 16 bit)", _neuromc, lambda m: False, sees_aten_compute,
                         False),
    "spikesim": Estimator("spikesim", "SpikeSim event mode (65 nm RRAM crossbar; Conv2d stages only)", _spikesim,
                          lambda m: False, lambda m: isinstance(m, nn.Conv2d), False),
}


def check_names(names) -> tuple[str, ...]:
    """The chosen estimators as a tuple, or a one-line :class:`UserError` listing the valid names."""
    if isinstance(names, str):
        names = [names]
    chosen = tuple(str(n) for n in (names or ()))
    unknown = [n for n in chosen if n not in ESTIMATORS]
    if unknown:
        raise UserError(f"energy.estimators: unknown estimator {unknown[0]!r}; valid names: "
                        f"{', '.join(ESTIMATORS)} (e.g. energy.estimators=[simple,lemaire])")
    return tuple(dict.fromkeys(chosen))


def run(name: str, model: nn.Module, inputs: Any) -> dict:
    """One estimator on one forward of ``model(inputs)`` (a tuple is unpacked); the model's neurons are reset
    afterwards."""
    try:
        return ESTIMATORS[name].run(model, inputs)
    finally:
        functional.reset_net(model)


def accumulate(into: dict, entry: dict) -> dict:
    """Add ``entry`` to ``into`` (categories, counts and detail summed; warnings collected once)."""
    for k in CATEGORIES:
        into[k] += entry[k]
    for key in ("counts", "detail"):
        for k, v in entry[key].items():
            into[key][k] = into[key].get(k, 0.0) + v
    into["warnings"] = list(dict.fromkeys(into["warnings"] + entry["warnings"]))
    return into


def scaled(entry: dict, factor: float) -> dict:
    """``entry`` with every energy and count multiplied by ``factor`` (e.g. 1 / samples)."""
    out = {**entry, **{k: entry[k] * factor for k in CATEGORIES}}
    out["counts"] = {k: v * factor for k, v in entry["counts"].items()}
    out["detail"] = {k: v * factor for k, v in entry["detail"].items()}
    return out


def price_unseen(name: str, lines: dict, bits: int | None = None, run_bits: int = 32) -> dict | None:
    """The pJ of our unseen lines (:class:`snn_engine.measure.energy_unseen.UnseenCounter` ``lines``) in estimator
    ``name``'s unit costs, by category (with ``bits``: at that integer width, as :func:`requantize` prices a twin);
    None for an estimator without per-operation prices."""
    if not ESTIMATORS[name].priced:
        return None
    if name == "simple":
        from spikingjelly.activation_based.op_counter import SimpleEnergyCostConfig

        cost = SimpleEnergyCostConfig()
        e_mac, e_ac = cost.e_mac_pj, cost.e_ac_pj

        def per_byte(_capacity):
            return cost.e_memory_pj_per_byte
    else:
        from spikingjelly.activation_based.op_counter import LemaireEnergyCostConfig

        cost = LemaireEnergyCostConfig()
        e_mac, e_ac = cost.e_mul_pj + cost.e_add_pj, cost.e_add_pj
        per_byte = cost.memory_cost_pj
    scale = 1.0
    if bits is not None:
        add, mul = int_unit_costs(bits)
        e_mac, e_ac, scale = add + mul, add, bits / run_bits
    priced = {k: 0.0 for k in CATEGORIES}
    for line in lines.values():
        priced["compute_pj"] += line["mac"] * e_mac + line["ac"] * e_ac
        if line["bytes"]:
            priced[line["category"]] += line["bytes"] * scale * per_byte(line["capacity_bytes"])
    return priced


def requantize(name: str, entry: dict, bits: int, run_bits: int) -> dict | None:
    """An ANN twin's entry (run at ``run_bits`` per value) re-priced for a ``bits``-wide integer datapath: the
    estimator's own MAC/AC counts at :func:`snn_engine.measure.twins.int_unit_costs`, memory traffic scaled by
    ``bits / run_bits`` (Lemaire: by ``bits / 32``, its word width; its address arithmetic is kept). None for an
    estimator without per-operation prices."""
    if not ESTIMATORS[name].priced:
        return None
    add, mul = int_unit_costs(bits)
    counts, out = entry["counts"], {**entry, "counts": dict(entry["counts"]), "detail": dict(entry["detail"])}
    if name == "simple":
        out["compute_pj"] = counts.get("mac", 0.0) * (add + mul) + counts.get("ac", 0.0) * add
        scale = bits / run_bits
    else:
        out["compute_pj"] = (counts.get("mac", 0.0) * (add + mul) + counts.get("ac", 0.0) * add
                             + entry["detail"].get("addressing_pj", 0.0))
        scale = bits / 32
    for k in ("weights_pj", "state_pj", "spikes_pj", "other_pj"):
        out[k] = entry[k] * scale
    return out
