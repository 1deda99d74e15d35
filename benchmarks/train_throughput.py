"""Training-step throughput and peak memory of the sparse-MLP presets, with an in-run baseline.

    python benchmarks/train_throughput.py                          # every paper preset at 224 px, T=4, batch 8
    python benchmarks/train_throughput.py --presets sparse_mlp_tiny --image-size 32 --batch 64

For each preset it times a full training step (forward, loss, backward, SGD step, state reset) with
our neurons (SpikingJelly 2.0 ``LIFNode``: fused multi-step kernels) and with the baseline
(SpikingJelly's pure-PyTorch ``SimpleLIFNode``, stepping through T in Python as the official code's
torch backend does), and prints medians, images/s, peak memory and the speed-up ratio.
Mixed precision (fp16 autocast) on CUDA, fp32 on CPU. Nothing is asserted: the numbers are the output.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate
from spikingjelly.activation_based.functional import reset_net

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mixer_snn import PRESETS, create_model  # noqa: E402
from snn_engine.neurons import make_neuron  # noqa: E402

def baseline_neuron():
    return sj_neuron.SimpleLIFNode(tau=2.0, decay_input=True, v_threshold=1.0, v_reset=0.0,
                                   surrogate_function=surrogate.Sigmoid(alpha=4.0), detach_reset=True, step_mode="m")


def time_steps(model, x, y, device, steps: int, warmup: int) -> tuple[float, float]:
    """Median seconds per training step and peak memory in MiB (CUDA: allocator peak of this model; CPU: the
    process's maximum resident set so far, which only grows, so later rows include earlier models' peaks)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    times = []
    if use_amp:
        torch.cuda.reset_peak_memory_stats(device)
    for i in range(warmup + steps):
        if use_amp:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
            loss = torch.nn.functional.cross_entropy(model(x).mean(0), y)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        reset_net(model)
        if use_amp:
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    if use_amp:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return statistics.median(times), peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", choices=list(PRESETS),
                        default=[p for p in PRESETS if p != "sparse_mlp_tiny"])
    parser.add_argument("--T", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; T={args.T}, batch {args.batch}, {args.image_size} px, {args.classes} classes; "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    peak_name = "peak MiB" if device.type == "cuda" else "maxRSS MiB"
    print(f"{'preset':<16}{'params (M)':>11}{'ours s/step':>13}{'ours img/s':>12}{peak_name:>11}"
          f"{'baseline s/step':>17}{'speed-up':>10}")
    x = torch.randn(args.batch, 3, args.image_size, args.image_size, device=device)
    y = torch.randint(0, args.classes, (args.batch,), device=device)
    for preset in args.presets:
        kwargs = dict(num_classes=args.classes, img_size=args.image_size, T=args.T)
        torch.manual_seed(0)
        model = create_model(preset, functools.partial(make_neuron), **kwargs).to(device)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        ours, peak = time_steps(model, x, y, device, args.steps, args.warmup)
        line = f"{preset:<16}{params:>11.2f}{ours:>13.4f}{args.batch / ours:>12.1f}{peak:>11.0f}"
        if not args.no_baseline:
            torch.manual_seed(0)
            base_model = create_model(preset, baseline_neuron, **kwargs).to(device)
            base, _ = time_steps(base_model, x, y, device, args.steps, args.warmup)
            line += f"{base:>17.4f}{base / ours:>9.2f}x"
            del base_model
        print(line, flush=True)
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
