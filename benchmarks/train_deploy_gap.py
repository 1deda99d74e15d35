"""Spikes that differ between a trained causal SpikingSSM model's parallel (training) forward and its streaming
deployment (diagonal SSM state + exact LIF per step), per layer, on validation samples: classifiers through
:class:`~spiking_ssm.streaming.StreamingClassifier`, language models through the token-by-token
:class:`~spiking_ssm.lm.streaming.StreamingLanguageModel` that ``generate`` runs (there also the largest difference of
next-token log-probabilities, in nats).

    python benchmarks/train_deploy_gap.py CKPT [CKPT ...] [--samples 64] [--soma lif_parallel]

Both forms run in float64 so the currents of the FFT and of the recurrence agree to ~1e-12 and any difference is
the soma's: 0 for ``lif_parallel`` and ``lif`` (exact), the SDN's approximation for ``sdn``. ``--soma`` also runs the
parallel forward with another soma on the same weights (e.g. an sdn-trained model read with the exact soma).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from hydra.utils import instantiate
from spikingjelly.activation_based import functional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from snn_engine.protection import checkpoint as ckpt_io  # noqa: E402
from snn_engine.run import build_model, checkpoint_config  # noqa: E402
from spiking_ssm.somas import make_ssm_neuron  # noqa: E402
from spiking_ssm.streaming import StreamingClassifier  # noqa: E402


def load(path: str, soma: str | None, state: dict):
    cfg = checkpoint_config(state, [])
    data = instantiate(cfg.dataset)
    model = build_model(cfg, data)
    model.load_state_dict(state["model"])
    if soma:
        for block in model.backbone.blocks:
            block.layer.neuron = make_ssm_neuron(soma)
    return model.double().eval(), data, cfg.neuron.kind


def gap(model, x: torch.Tensor) -> list[tuple[int, int]]:
    records = []
    hooks = [b.layer.neuron.register_forward_hook(lambda m, i, o: records.append(o.permute(1, 2, 0)))
             for b in model.backbone.blocks]
    functional.reset_net(model)
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    stream = StreamingClassifier(model)
    steps = [[] for _ in model.backbone.blocks]
    for t in range(x.shape[1]):
        stream.step(x[:, t])
        for i, block in enumerate(stream.blocks):
            steps[i].append(block.layer.last_spikes)
    return [(int((torch.stack(s, -1) != r).sum()), r.numel()) for s, r in zip(steps, records)]


def load_language_model(path: str, soma: str | None):
    """(LM in float64 eval mode, validation tokens [N] of its data, neuron kind) from a language-model checkpoint."""
    from spiking_ssm.lm.restore import load_model

    model, _, cfg = load_model(path, [])
    data = instantiate(cfg.dataset)
    if soma:
        for block in model.backbone.blocks:
            block.layer.neuron = make_ssm_neuron(soma)
    return model.double().eval(), data.tokens("val"), cfg.neuron.kind


def language_model_gap(model, tokens: torch.Tensor) -> tuple[list[tuple[int, int]], float]:
    """Per layer (spikes that differ, spikes compared) and the largest |log p| difference over the vocabulary, between
    the parallel forward on ``tokens [B, L]`` and the streaming model fed one token at a time."""
    from spiking_ssm.lm.streaming import StreamingLanguageModel

    records = []
    hooks = [b.layer.neuron.register_forward_hook(lambda m, i, o: records.append(o.permute(1, 2, 0)))
             for b in model.backbone.blocks]
    functional.reset_net(model)
    with torch.no_grad():
        hidden = model.hidden(tokens)  # [B, L, H]
        parallel = torch.stack([model.log_probs_last(hidden[:, t]) for t in range(tokens.shape[1])], 1)
    for hook in hooks:
        hook.remove()
    stream = StreamingLanguageModel(model)
    steps, streamed = [[] for _ in model.backbone.blocks], []
    for t in range(tokens.shape[1]):
        streamed.append(stream.step(tokens[:, t]))
        for i, block in enumerate(stream.blocks):
            steps[i].append(block.layer.last_spikes)
    spikes = [(int((torch.stack(s, -1) != r).sum()), r.numel()) for s, r in zip(steps, records)]
    return spikes, float((torch.stack(streamed, 1) - parallel).abs().max())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--samples", type=int, default=64)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence (language models)")
    parser.add_argument("--soma", default=None, help="read the trained weights with this soma instead")
    args = parser.parse_args(argv)
    for path in args.checkpoints:
        state = ckpt_io.load(path)
        if "vocab" in state:  # a language model's checkpoint carries its vocabulary
            model, stream, kind = load_language_model(path, args.soma)
            length = min(args.length, stream.numel() // max(1, args.samples))
            tokens = stream[: args.samples * length].reshape(args.samples, length)
            spikes, nats = language_model_gap(model, tokens)
            cells = ", ".join(f"layer {i}: {d} of {n} ({100 * d / n:.3f}%)" for i, (d, n) in enumerate(spikes))
            print(f"{path} (LM trained with {kind}{', read with ' + args.soma if args.soma else ''}; {args.samples} x "
                  f"{length} tokens): {cells}; max |log p| difference {nats:.2e} nats", flush=True)
            continue
        model, data, kind = load(path, args.soma, state)
        val = data.val_set()
        x = torch.stack([val[i][0] for i in range(min(args.samples, len(val)))]).double()
        cells = ", ".join(f"layer {i}: {d} of {n} ({100 * d / n:.3f}%)" for i, (d, n) in enumerate(gap(model, x)))
        print(f"{path} (trained with {kind}{', read with ' + args.soma if args.soma else ''}): {cells}", flush=True)


if __name__ == "__main__":
    main()
