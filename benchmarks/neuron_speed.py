"""Speed of SpikingSSM's somas, alone and inside one layer, forward+backward, with every ratio from this run.

    python benchmarks/neuron_speed.py                                     # this device; L = 1K..8K
    python benchmarks/neuron_speed.py --batch 64 --width 256              # the paper's setting (a GPU)
    python benchmarks/neuron_speed.py --batch 64 --width 256 --decompose  # where the layer's time goes
    python benchmarks/neuron_speed.py --verify                            # fused kernels against torch first
    python benchmarks/neuron_speed.py --convs fft chunked --decompose     # the two current paths, part by part

Somas (the layers share their weights; only the soma and the S4D path differ):
- ``sdn fused``: the SDN soma's Triton kernel (``neuron=sdn``, the default on CUDA);
- ``sdn torch``: the SDN soma in torch (``neuron.implementation=torch``, the path before the kernels);
- ``lif sj``: SpikingJelly 2.0's stock ``LIFNode`` with SpikingSSM's constants (BPTT; its Triton kernel on CUDA; its
  own arithmetic ``v - v / tau_sj + y``), fed the contiguous time-major copy it needs, as the layer does
  (``neuron=lif neuron.leak=null``; ``neuron=lif`` before issue 24);
- ``lif torch``: SpikingSSM's ``lif`` soma since issue 24 (``neuron=lif``): the paper's ``tau u + y`` through
  SpikingJelly's node machinery, a torch loop over L on every device;
- ``sltt fused`` / ``sltt torch``: SLTT as a Triton scan / as the Python loop over L (``neuron=sltt``);
- ``bptt loop``: the paper's BPTT comparison, a Python loop over L with gradients through the membrane;
- ``exact fused`` / ``exact torch``: the ``lif_parallel`` soma (exact LIF spikes by fixed-point scans from the SDN's
  guess, BPTT by a reverse scan; ``neuron=lif_parallel``) with its Triton scans / in torch.
The ``torch`` rows run the whole layer in torch (``model.s4d_implementation=torch``); the others use the fused
S4D kernel where it runs. Fused rows need CUDA (or ``TRITON_INTERPRET=1``, meaningful for ``--verify`` only).

``--convs`` builds each soma's layer once per current path (``model.conv``: ``fft``, the reference and the default
here, ``chunked`` or ``auto``); a row is named ``soma / conv`` when a path other than ``fft`` is asked for. The
Python-loop somas run with ``fft`` only (their layer time is the loop's, whatever the convolution).

Columns: ``soma ms``, median milliseconds of the soma alone (on [L, B, H] currents seen as the layer's [B, H, L]
memory; the same soma, so the same number, for each conv); ``/floor``, that over the soma's memory floor (reading y
and writing s forward, reading ds and writing dy backward, at the copy bandwidth measured here; the ``floor`` row);
``layer ms``, the whole layer; ``vs fft``, the speed-up of this layer over the same soma's layer with the FFT path
(``-`` without one); ``vs lif sj``, over ``lif sj`` with the FFT path; ``vs loop``, over ``bptt loop``; ``peak
GiB``, the peak memory of a layer step (CUDA only); ``path``, the current path that ran
(``layer.last_implementation``). ``--decompose`` then prints each layer's parts (:mod:`benchmarks.layer_parts`: S4D
kernel, the current path, permutes, soma, the mixing in each of its forms, the whole layer), median milliseconds
forward+backward. ``--amp`` runs the layers and their parts under autocast as ``trainer=gpu`` does (the somas stay
float32: both current paths hand them float32 currents). The paper reports 7.5x (1K) to 101x (8K) over its BPTT.
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
from spikingjelly.activation_based.surrogate import PiecewiseQuadratic

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spiking_ssm.kernels.runtime import triton_unavailable  # noqa: E402
from spiking_ssm.layer import CONVS, SpikingSSM  # noqa: E402
from spiking_ssm.somas import make_spikingjelly_lif, make_ssm_neuron  # noqa: E402

LOOP_MAX_LENGTH = 8192  # the Python loops are timed up to here (minutes per pass beyond)


class LoopBPTT(torch.nn.Module):
    """The paper's BPTT soma: ``h = tau u + y_t``, triangle surrogate, reset with a detached spike, a Python loop."""

    accepts_strided_input = True

    def __init__(self, tau: float = 0.125):
        super().__init__()
        self.tau, self.surrogate = tau, PiecewiseQuadratic(alpha=1.0)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        u, spikes = torch.zeros_like(y[0]), []
        for t in range(y.shape[0]):
            h = self.tau * u + y[t]
            s = self.surrogate(h - 1.0)
            u = h * (1.0 - s.detach())
            spikes.append(s)
        return torch.stack(spikes)


SOMAS = {  # name -> (soma factory, S4D implementation, needs Triton, a Python loop over L)
    "sdn fused": (functools.partial(make_ssm_neuron, "sdn", implementation="triton"), "auto", True, False),
    "sdn torch": (functools.partial(make_ssm_neuron, "sdn", implementation="torch"), "torch", False, False),
    "lif sj": (make_spikingjelly_lif, "auto", False, False),
    "lif torch": (functools.partial(make_ssm_neuron, "lif"), "auto", False, True),
    "sltt fused": (functools.partial(make_ssm_neuron, "sltt", implementation="triton"), "auto", True, False),
    "sltt torch": (functools.partial(make_ssm_neuron, "sltt", implementation="torch"), "torch", False, True),
    "bptt loop": (LoopBPTT, "auto", False, True),
    "exact fused": (functools.partial(make_ssm_neuron, "lif_parallel", implementation="triton"), "auto", True, False),
    "exact torch": (functools.partial(make_ssm_neuron, "lif_parallel", implementation="torch"), "torch", False, False),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(step, device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time of ``step()`` (synchronised on CUDA) after ``warmup`` untimed calls."""
    times = []
    for i in range(warmup + repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def copy_bandwidth(device: torch.device, numel: int) -> float:
    """Bytes per second of a device copy (one read + one write) of ``numel`` float32."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    seconds = median_seconds(lambda: dst.copy_(src), device, 5, 2)
    return 2 * src.numel() * src.element_size() / seconds


def build_layer(name: str, args, device: torch.device, conv: str = "fft") -> SpikingSSM:
    factory, s4d, _, _ = SOMAS[name]
    torch.manual_seed(0)  # identical weights in every layer
    return SpikingSSM(args.width, factory, d_state=args.d_state, bidirectional=True,
                      s4d_implementation=s4d, conv=conv).to(device)


def convs_for(name: str, args) -> list[str]:
    """The current paths ``name``'s layer is timed with: ``--convs``, the FFT only for the Python loops."""
    return ["fft"] if SOMAS[name][3] else list(args.convs)


def label(name: str, conv: str, args) -> str:
    return name if list(args.convs) == ["fft"] else f"{name} / {conv}"


def autocast(args, device: torch.device):
    """Mixed precision as ``trainer=gpu`` trains (fp16 on CUDA, bf16 on CPU) with ``--amp``, else nothing."""
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return torch.autocast(device.type, dtype=dtype, enabled=bool(args.amp))


def layer_step(layer, x: torch.Tensor, upstream: torch.Tensor, args, device: torch.device):
    def step():
        with autocast(args, device):
            out = layer(x)
        out.backward(upstream.to(out.dtype))
        reset_net(layer)
        layer.zero_grad(set_to_none=True)
        x.grad = None
    return step


def soma_step(soma, y_time_major: torch.Tensor, upstream: torch.Tensor, contiguous: bool):
    def step():
        y = y_time_major.contiguous() if contiguous else y_time_major
        soma(y).backward(upstream)
        reset_net(soma)
        y_time_major.grad = None
    return step


def peak_bytes(step, device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    step()
    synchronize(device)
    return torch.cuda.max_memory_allocated(device) - base


def runnable(names, args, device: torch.device, length: int) -> list[str]:
    keep = []
    for name in names:
        _, _, needs_triton, loop = SOMAS[name]
        if needs_triton and triton_unavailable(device):
            continue
        if loop and length > args.loop_max_length:
            continue
        keep.append(name)
    return keep


def measure_length(length: int, args, device: torch.device, bandwidth: float) -> None:
    names = runnable(args.somas, args, device, length)
    g = torch.Generator(device="cpu").manual_seed(length)
    x = torch.randn(args.batch, args.width, length, generator=g).to(device).requires_grad_()
    upstream = torch.randn(args.batch, args.width, length, generator=g).to(device)
    y = (torch.randn(args.batch, args.width, length, generator=g) * 1.2).to(device)
    y_view = y.permute(2, 0, 1).requires_grad_()  # [L, B, H] over the layer's [B, H, L] memory
    up_view = upstream.permute(2, 0, 1)
    rows = {}  # (soma, conv) -> (soma s, layer s, peak bytes, path that ran)
    for name in names:
        repeats = min(args.repeats, 3) if SOMAS[name][3] else args.repeats
        soma = None
        for conv in convs_for(name, args):
            layer = build_layer(name, args, device, conv)
            if soma is None:  # the soma alone does not depend on the conv
                strided = getattr(layer.neuron, "accepts_strided_input", False)
                soma = median_seconds(soma_step(layer.neuron, y_view, up_view, not strided), device, repeats,
                                      args.warmup)
            step = layer_step(layer, x, upstream, args, device)
            whole = median_seconds(step, device, repeats, args.warmup)
            rows[name, conv] = (soma, whole, peak_bytes(step, device), layer.last_implementation)
            del layer
    floor = 4 * y.numel() * y.element_size() / bandwidth
    width = label_width(args)
    for (name, conv), (soma, whole, peak, path) in rows.items():
        vs = [f"{rows[ref][1] / whole:>{w - 1}.1f}x" if ref in rows else f"{'-':>{w}}"
              for ref, w in (((name, "fft"), 8), (("lif sj", "fft"), 10), (("bptt loop", "fft"), 9))]
        memory = f"{peak / 2**30:>10.2f}" if peak is not None else f"{'-':>10}"
        print(f"{length:>6} {label(name, conv, args):<{width}}{1e3 * soma:>11.3f}{soma / floor:>9.1f}x"
              f"{1e3 * whole:>11.2f}" + "".join(vs) + memory + f"  {path}", flush=True)
    print(f"{length:>6} {'floor':<{width}}{1e3 * floor:>11.3f}", flush=True)


def label_width(args) -> int:
    return max(11, 1 + max(len(label(name, conv, args)) for name in args.somas for conv in args.convs))


def decompose(length: int, args, device: torch.device) -> None:
    """Forward+backward milliseconds of each part of the layer, for each runnable soma."""
    from benchmarks.layer_parts import layer_parts  # noqa: E402 - only for --decompose

    for name in runnable(args.somas, args, device, length):
        for conv in convs_for(name, args):
            layer = build_layer(name, args, device, conv)
            parts = layer_parts(layer, args.batch, length, device, lambda: autocast(args, device))
            cells = "  ".join(f"{part} {1e3 * median_seconds(step, device, args.repeats, args.warmup):.2f}"
                              for part, step in parts.items())
            print(f"{length:>6} {label(name, conv, args):<{label_width(args)}} {cells}", flush=True)
            del layer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width", type=int, default=64, help="d_model H")
    parser.add_argument("--d-state", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--somas", nargs="+", default=list(SOMAS), choices=list(SOMAS))
    parser.add_argument("--loop-max-length", type=int, default=LOOP_MAX_LENGTH,
                        help="skip the Python-loop somas above this length")
    parser.add_argument("--convs", nargs="+", default=["fft"], choices=list(CONVS),
                        help="the layer's current paths (model.conv) to time, each a row per soma")
    parser.add_argument("--decompose", action="store_true", help="also time each part of the layer")
    parser.add_argument("--amp", action="store_true", help="run the layers under autocast (fp16 on CUDA), as trainer=gpu")
    parser.add_argument("--verify", action="store_true", help="compare the fused kernels with torch first")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU x{torch.get_num_threads()} threads"
    print(f"device: {name}; torch {torch.__version__}; one SpikingSSM layer (bidirectional), batch {args.batch}, "
          f"width {args.width}, d_state {args.d_state}{', autocast' if args.amp else ''}; median of {args.repeats} "
          f"forward+backward passes "
          f"(Python loops: at most 3) after {args.warmup} warm-up")
    reason = triton_unavailable(device)
    if reason:
        print(f"fused rows skipped: {reason}")
    if args.verify:
        from benchmarks.verify_kernels import verify  # noqa: E402

        verify(args.batch, args.width, args.d_state, min(args.lengths), device)
    bandwidth = copy_bandwidth(device, args.batch * args.width * max(args.lengths))
    print(f"copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    print(f"{'L':>6} {'soma':<{label_width(args)}}{'soma ms':>11}{'/floor':>10}{'layer ms':>11}{'vs fft':>8}"
          f"{'vs lif sj':>10}{'vs loop':>9}{'peak GiB':>10}  path")
    for length in args.lengths:
        measure_length(length, args, device, bandwidth)
    if args.decompose:
        for length in args.lengths:
            decompose(length, args, device)


if __name__ == "__main__":
    main()
