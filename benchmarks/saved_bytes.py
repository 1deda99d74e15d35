"""Bytes a training forward of a sparse-MLP saves for backward (the CPU proxy of its GPU activation memory).

    python benchmarks/saved_bytes.py                          # MLP-SPE-T, 224 px, batch 1, T = 4, float32
    python benchmarks/saved_bytes.py --model sparse_mlp_b --T 6

Counts every tensor storage autograd keeps from one forward pass (each storage once), with the spike inputs of the
synaptic maps saved as floats (what autograd does by itself), booleans and packed bits (``model.spike_storage``:
``snn_engine.training.spike_memory`` through SpikingJelly's ``memopt`` compressors), measured in the same run, and splits the
total by the module that saved it; then what ``model.checkpoint_stages=true`` keeps through the forward and holds
at most while a stage is recomputed. For reference, the issue that
set the target measured the official mixer-snn model at 1191.0 MiB under the same setting (SpikingJelly 2.0
neurons, CPU, float32); the target is 0.8x that, 953 MiB.
"""

from __future__ import annotations

import argparse
import collections
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixer_snn import model as presets  # noqa: E402
from snn_engine.training import spike_memory  # noqa: E402
from snn_engine.neurons import make_neuron  # noqa: E402

MIB = 2**20


def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> tuple[int, collections.Counter, collections.Counter, int]:
    """Total bytes of the storages saved for backward by ``model(x)``, split by module class and by stage, and the
    bytes of the compressed spikes among them."""
    stack: list[str] = []
    kinds = {name: type(module).__name__ for name, module in model.named_modules()}
    handles = []
    for name, module in model.named_modules():
        handles.append(module.register_forward_pre_hook(lambda m, i, name=name: stack.append(name)))
        handles.append(module.register_forward_hook(lambda m, i, o: stack.pop() and None))
    seen: dict[int, int] = {}
    by_kind: collections.Counter = collections.Counter()
    by_stage: collections.Counter = collections.Counter()
    packed: list[int] = []

    def count(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen[storage.data_ptr()] = storage.nbytes()
            name = stack[-1] if stack else ""
            by_kind[kinds.get(name, "?")] += storage.nbytes()
            by_stage[".".join(name.split(".")[:2]) if name.startswith("stages.") else "head"] += storage.nbytes()
        return t

    def count_packed(t: torch.Tensor) -> None:  # what spike_memory keeps: spikes as bool / uint8, the rest as is
        if t.dtype in (torch.bool, torch.uint8):
            packed.append(t.untyped_storage().nbytes())
        count(t)

    spike_memory.pack_observers.append(count_packed)
    try:
        with torch.autograd.graph.saved_tensors_hooks(count, lambda t: t):
            model(x)
    finally:
        spike_memory.pack_observers.remove(count_packed)
        for handle in handles:
            handle.remove()
    return sum(seen.values()), by_kind, by_stage, sum(packed)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="sparse_mlp_t", choices=sorted(presets.PRESETS))
    parser.add_argument("--img-size", type=int, default=None, help="default: the preset's")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--T", type=int, default=4)
    args = parser.parse_args(argv)
    neuron = functools.partial(make_neuron, kind="lif", tau=2.0, decay_input=True, surrogate="sigmoid", alpha=4.0)
    overrides = {"T": args.T} | ({"img_size": args.img_size} if args.img_size else {})
    model = presets.create_model(args.model, neuron, num_classes=1000, **overrides)
    size = model.img_size
    x = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    print(f"{args.model}, {size} px, batch {args.batch}, T = {args.T}, float32 on CPU: bytes saved for backward")
    totals, stages, spikes = {}, {}, {}
    for storage in spike_memory.STORAGES:
        model.spike_storage = storage
        totals[storage], by_kind, stages[storage], spikes[storage] = saved_bytes(model, x)
        split = ", ".join(f"{kind} {nbytes / MIB:.1f}" for kind, nbytes in by_kind.most_common(6))
        print(f"  spikes saved as {storage:5s}: {totals[storage] / MIB:8.1f} MiB  ({split})")
    print(f"  ratio to float: bool {totals['bool'] / totals['float']:.3f}, bits {totals['bits'] / totals['float']:.3f}")
    float_spikes = spikes["bool"] * x.element_size()  # one bool per spike value
    print(f"  the saved spikes alone: float {float_spikes / MIB:.1f} MiB, bool {spikes['bool'] / MIB:.1f} MiB, "
          f"bits {spikes['bits'] / MIB:.1f} MiB")
    model.spike_storage, model.checkpoint_stages = "bool", True
    kept, _, _, _ = saved_bytes(model, x)
    model.checkpoint_stages = False
    largest = max(v for k, v in stages["float"].items() if k != "head")  # recomputed with float spikes
    print(f"  model.checkpoint_stages=true: {kept / MIB:8.1f} MiB kept through the forward (saved tensors outside "
          f"the stages); while the largest stage is recomputed in backward {(kept + largest) / MIB:.1f} MiB "
          f"({(kept + largest) / totals['bool']:.2f}x the bool total)")


if __name__ == "__main__":
    main()
