"""Forward+backward time of one SpikingSSM layer with each soma: the SDN against BPTT and SLTT LIF.

    python benchmarks/neuron_speed.py                       # L = 1K, 2K, 4K, 8K; batch 4, width 64 on this device
    python benchmarks/neuron_speed.py --batch 64 --width 256 --lengths 1024 8192

The three layers share their weights; only the soma differs:
- ``sdn``: the packaged surrogate dynamic network, parallel over time (``neuron=sdn``);
- ``lif``: SpikingJelly 2.0's eager ``LIFNode`` with the SpikingSSM dynamics, back-propagation through time, the
  strongest iterative baseline (``neuron=lif`` inside a SpikingSSM model);
- ``sltt``: the same LIF with the membrane detached every step (``neuron=sltt``).
It prints the median seconds of a forward+backward pass and the speed-up of ``sdn`` over each baseline, measured
in the same run. The paper reports 7.5x at 1K and 101x at 8K over BPTT on a GPU (batch 64).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path

import torch
from spikingjelly.activation_based.functional import reset_net

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spiking_ssm.layer import SpikingSSM  # noqa: E402
from spiking_ssm.neurons import make_ssm_neuron  # noqa: E402

SOMAS = ("sdn", "lif", "sltt")


def time_layer(layer: torch.nn.Module, x: torch.Tensor, repeats: int, warmup: int) -> float:
    """Median seconds of ``layer(x).sum().backward()`` (state reset between passes)."""
    times = []
    for i in range(warmup + repeats):
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        start = time.perf_counter()
        layer(x).float().square().mean().backward()
        reset_net(layer)
        if x.is_cuda:
            torch.cuda.synchronize(x.device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
        layer.zero_grad(set_to_none=True)
        x.grad = None
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=64, help="d_model H")
    parser.add_argument("--d-state", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; one SpikingSSM layer, batch {args.batch}, width {args.width}, d_state {args.d_state}; "
          f"median of {args.repeats} forward+backward passes after {args.warmup} warm-up")
    print(f"{'L':>6}" + "".join(f"{soma + ' s':>11}" for soma in SOMAS) + f"{'lif/sdn':>10}{'sltt/sdn':>10}")
    torch.manual_seed(0)
    layers = {}
    for soma in SOMAS:
        torch.manual_seed(0)  # identical weights in the three layers
        layers[soma] = SpikingSSM(args.width, functools.partial(make_ssm_neuron, kind=soma), d_state=args.d_state,
                                  bidirectional=True).to(device)
    for length in args.lengths:
        x = torch.randn(args.batch, args.width, length, device=device, requires_grad=True)
        seconds = {soma: time_layer(layer, x, args.repeats, args.warmup) for soma, layer in layers.items()}
        print(f"{length:>6}" + "".join(f"{seconds[s]:>11.4f}" for s in SOMAS)
              + f"{seconds['lif'] / seconds['sdn']:>9.1f}x{seconds['sltt'] / seconds['sdn']:>9.1f}x", flush=True)


if __name__ == "__main__":
    main()
