"""Memory-inclusive energy per generated token of the streaming language model (``python -m spiking_ssm.lm.generate``).

:func:`replay_energy` steps a fresh :class:`~spiking_ssm.lm.streaming.StreamingLanguageModel` through the prompt,
then through the generated tokens under SpikingJelly 2.0's ``SimpleEnergyProfiler`` (its own MAC/AC counters on
the aten ops of each step, and its memory counter on the ``nn.Linear``/``nn.Conv*`` modules the step calls: the
1x1 mixing convs, one weight read per synaptic operation on spikes). Replaying the same tokens reproduces the
same spikes, so the decoding loop's tokens/s is measured without the counters.

What the step does outside SpikingJelly's view is counted per token with our rules (:func:`streaming_lines`, the
rules of :mod:`snn_engine.measure.energy_unseen`) and priced in SimpleEnergy's units (45 nm Horowitz: 4.6 pJ per MAC,
0.9 pJ per AC, 24.96 pJ per byte): per layer and sequence, the S4D recurrence (``4 N + 2`` MACs per channel, as
:meth:`spiking_ssm.layer.SpikingSSM.count_ops`, and one read of its ``4 N + 2`` parameters), the S4D state
(``N`` reals read and written per channel), the soma membrane (one float read and written per channel: the
streaming LIF is not a SpikingJelly node), the GLU product and a LayerNorm (SpikingJelly's counters have no rule
for either); the adaptive embedding's and softmax's weight reads (one per MAC, their ``count_ops``). SpikingJelly's
AC counter also counts the additions of the S4D update (about N/2 per channel and step), which the recurrence's
MACs include: an overlap under 3 % of that line.
"""

from __future__ import annotations

import torch
from torch import nn

from snn_engine.measure.energy_estimators import CATEGORIES, price_unseen
from snn_engine.measure.ops import OpContext
from spiking_ssm.lm.language_model import SpikingSSMLanguageModel

BYTES = 4  # float32 values (complex64 S4D modes: two of them)


def _record(kind: str, layer: str, category: str, mac=0.0, nbytes=0.0, capacity=0.0) -> dict:
    return {"kind": kind, "layer": layer, "category": category, "mac": float(mac), "ac": 0.0, "bytes": float(nbytes),
            "capacity_bytes": float(capacity)}


def streaming_lines(model: SpikingSSMLanguageModel, token: torch.Tensor) -> dict[str, dict]:
    """Our records for one streaming step of one sequence on ``token`` [1] (module docstring), in the format of
    :meth:`snn_engine.measure.energy_unseen.UnseenCounter.lines`."""
    records = {}
    ctx = OpContext(time_steps=1, batch_size=1)
    for k, block in enumerate(model.backbone.blocks):
        layer, name = block.layer, f"backbone.blocks.{k}"
        H, N = layer.d_model, layer.kernel.d_state
        per_channel = 4 * N + 2
        records[f"s4d:{k}"] = _record("compute", f"{name}.layer", "compute_pj", mac=H * per_channel)
        records[f"s4d_params:{k}"] = _record("weights", f"{name}.layer", "weights_pj", nbytes=H * per_channel * BYTES,
                                             capacity=H * per_channel * BYTES)
        records[f"s4d_state:{k}"] = _record("recurrent_state", f"{name}.layer", "state_pj", nbytes=2 * H * N * BYTES,
                                            capacity=H * N * BYTES)
        records[f"soma:{k}"] = _record("somas", f"{name}.layer.neuron", "state_pj", nbytes=2 * H * BYTES,
                                       capacity=H * BYTES)
        records[f"glu:{k}"] = _record("compute", f"{name}.layer.glu", "compute_pj", mac=H)
        if isinstance(block.norm, nn.LayerNorm):
            records[f"norm:{k}"] = _record("compute", f"{name}.norm", "compute_pj", mac=2 * H)
    with torch.no_grad():
        hidden = torch.zeros(1, model.backbone.blocks[0].layer.d_model)
        for key, module, inputs in (("embed", model.embed, (token.reshape(1, 1),)),
                                    ("softmax", model.softmax, (hidden,))):
            macs = module.count_ops(inputs, None, ctx).mac
            size = sum(p.numel() for p in module.parameters()) * BYTES
            records[key] = _record("weights", key, "weights_pj", nbytes=macs * BYTES, capacity=size)
    return records


def replay_energy(model: SpikingSSMLanguageModel, prompt_ids: list[int], new_ids: list[int],
                  device: torch.device | str = "cpu") -> dict[str, float]:
    """Per generated token (one sequence): ``memory_energy_pj_per_token`` (SpikingJelly's SimpleEnergy on the
    replayed decoding steps + our lines) and its parts ``{compute,weights,state}_pj_per_token``,
    ``spikingjelly_pj_per_token``, ``ours_pj_per_token`` (module docstring)."""
    from spikingjelly.activation_based.op_counter import SimpleEnergyProfiler

    from spiking_ssm.lm.streaming import StreamingLanguageModel

    if not new_ids:
        return {}
    device = torch.device(device)
    stream = StreamingLanguageModel(model.eval())
    stream.prefill(torch.tensor([prompt_ids], dtype=torch.long, device=device))
    profiler = SimpleEnergyProfiler()
    profiler.bind_model(model)
    with profiler, torch.no_grad():
        for token in new_ids:
            stream.step(torch.tensor([token], device=device))
    report = profiler.get_report()
    n = len(new_ids)
    ours = {k: 0.0 for k in CATEGORIES}
    for token in new_ids:
        for k, v in price_unseen("simple", streaming_lines(model, torch.tensor([token]))).items():
            ours[k] += v / n
    sj = {"compute_pj": report.energy_compute_pj / n, "weights_pj": report.breakdown_pj["parameter_memory_pj"] / n,
          "state_pj": report.breakdown_pj["neuron_state_memory_pj"] / n}
    parts = {k: sj.get(k, 0.0) + ours[k] for k in ("compute_pj", "weights_pj", "state_pj")}
    return {"memory_energy_pj_per_token": sum(parts.values()),
            **{f"{k[:-3]}_pj_per_token": v for k, v in parts.items()},
            "spikingjelly_pj_per_token": sum(sj.values()), "ours_pj_per_token": sum(ours.values())}
