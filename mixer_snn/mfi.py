"""Multiplication-free inference (MFI) audit of a BN-folded sparse-MLP.

The paper's claim: after folding every BN, every layer but the first receives binary spikes, so its
synaptic operations are accumulates. :func:`audit` checks it on data: it takes the per-layer operation
counts of the folded model (:class:`snn_engine.measure.ops.OpCounter`, which looks at the actual inputs of every
conv/linear/scale) and lists every layer that still performs true multiplications (real-valued input),
with the reason. Neuron updates (the leak of LIF with tau = 2 is a shift) and additions are not
multiplications of the synaptic kind and are not listed.

:func:`snn_engine.training.evaluation.compare_logits` measures the largest logit difference between the folded and the
unfolded model.
"""

from __future__ import annotations

from torch import nn

from mixer_snn.folded import FoldedConv, FoldedLIFHead, PositionScale, SpikeAffine

REASONS = {
    FoldedConv: "first layer: the conv reads real-valued image pixels (the paper's one exception)",
    PositionScale: ("per-token-position BN of the channel MLP: its scale cannot merge into the weight shared by "
                    "all positions (fold with position_bn=replicate for accumulate-only at H*W x the memory)"),
    SpikeAffine: "a BN applied to real-valued values (spike counts) with no linear map to fold into",
}


def _reason(module: nn.Module, is_stem: bool) -> str:
    for kind, text in REASONS.items():
        if isinstance(module, kind):
            if kind is FoldedConv and not is_stem:
                return "conv on real-valued input"
            return text
    return "real-valued input"


def audit(folded: nn.Module, ops: dict) -> dict:
    """Classify the synaptic operations of ``folded`` (a :class:`~mixer_snn.fold.FoldedSparseMLP`, which calls this
    from its ``mfi_audit``) from ``ops`` (an ``OpCounter.compute()`` result).

    Returns ``{"multiplication_free_after_first_layer": bool, "true_multiplications": [{"layer", "mac",
    "reason"}], "accumulate_layers": int, "position_bn": str}`` (``mac`` per sample).
    """
    modules = dict(folded.named_modules())
    stem = "stages.0.embed"
    found, accumulate_layers = [], 0
    for name, row in ops["layers"].items():
        if row["mac"] > 0:
            owner = name
            while owner not in modules and "." in owner:
                owner = owner.rsplit(".", 1)[0]
            module = modules.get(owner)
            if isinstance(module, nn.Conv2d):  # a step of a FoldedConv
                owner = owner.rsplit(".", 2)[0]
                module = modules.get(owner, module)
            if isinstance(module, FoldedLIFHead) or (module is not None and owner.startswith("head")):
                reason = "head LIF: the pooled BN scales real-valued spike counts"
            else:
                reason = _reason(module, owner == stem)
            found.append({"layer": name, "mac": row["mac"], "reason": reason})
        elif row["ac"] > 0:
            accumulate_layers += 1
    only_first = all(entry["layer"].startswith(stem) for entry in found)
    return {"applicable": True, "multiplication_free_after_first_layer": only_first, "true_multiplications": found,
            "accumulate_layers": accumulate_layers, "position_bn": folded.position_bn}


def format_audit(result: dict) -> str:
    """Console text of :func:`audit` (plus ``max_logit_diff`` when present)."""
    lines = [f"MFI audit (position_bn={result['position_bn']}): {result['accumulate_layers']} layers accumulate "
             f"only; true multiplications left:"]
    for entry in result["true_multiplications"]:
        lines.append(f"  {entry['layer']:<44} {entry['mac']:>12.4g} MAC/sample  {entry['reason']}")
    verdict = ("multiplication-free after the first layer" if result["multiplication_free_after_first_layer"]
               else "NOT multiplication-free after the first layer (see the reasons above)")
    lines.append(f"  => {verdict}")
    if "max_logit_diff" in result:
        lines.append(f"  folded vs unfolded: max |logit difference| {result['max_logit_diff']:.3g}, "
                     f"same prediction on {100 * result['prediction_agreement']:.2f}% of samples")
    return "\n".join(lines)
