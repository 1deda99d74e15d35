"""How many membrane scans the ``lif_parallel`` soma needs, on synthetic and recorded layer currents (float64).

    python benchmarks/lif_parallel_iterations.py                       # N(0,1), N(0.5,1), N(0,9), 3 N(0,1); shapes
    python benchmarks/lif_parallel_iterations.py --sources smnist      # + sequential MNIST currents (needs the files)
    TRITON_INTERPRET=1 python benchmarks/lif_parallel_iterations.py --fused --sweep 64 --rows 64   # fused kernel

Per input and setting (tau, guess): the spikes that differ from the exact LIF after the guess and after each scan
(``errors``, e.g. ``39 -> 2 -> 0``), and per row the scans until no spike changed, the last one being the check
(``mean``, ``max``, ``histogram`` as fractions of rows; with ``--sweep`` steps after each scan), and the rows that
needed the rounding-exact phase. ``--fused`` runs the fused Triton kernel instead (on CUDA, or through Triton's
interpreter on CPU: slow, use fewer rows), which iterates each chunk of ``BLOCK`` steps on its own: scans per chunk
(mean over chunks, max, histogram of the chunks' counts as fractions of chunks) and the float-map steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from spiking_ssm.somas import lif_scan  # noqa: E402
from spiking_ssm.somas.lif_parallel import ParallelLIFNeuron  # noqa: E402

SYNTHETIC = {"N(0,1)": (0.0, 1.0), "N(0.5,1)": (0.5, 1.0), "N(0,9)": (0.0, 3.0), "N(-1,1)": (-1.0, 1.0)}
SETTINGS = [(0.125, "sdn"), (0.125, "zero"), (0.5, "zero"), (0.9, "zero")]


def error_trail(rows: torch.Tensor, guess: torch.Tensor, tau: float, limit: int = 64) -> list[int]:
    """Wrong spikes of the guess and of each scan's spikes, until none is wrong."""
    exact = lif_scan.sequential(rows, tau, 1.0) >= 1.0
    spikes, trail = guess, [int((guess != exact).sum())]
    while trail[-1] and len(trail) <= limit:
        spikes = lif_scan.membrane_given_spikes(rows, spikes, tau) >= 1.0
        trail.append(int((spikes != exact).sum()))
    return trail


def measure(name: str, rows: torch.Tensor, settings, sweep: int) -> None:
    for tau, guess in settings:
        soma = ParallelLIFNeuron(tau=tau, guess=guess, max_iters=200)
        trail = error_trail(rows, soma.initial_guess(rows), tau)
        _, _, stats = lif_scan.fixed_point(rows, soma.initial_guess(rows), tau, 1.0, max_iters=200, sweep=sweep)
        scans = stats.row_scans
        values, counts = torch.unique(scans, return_counts=True)
        histogram = " ".join(f"{v}:{c / scans.numel():.4f}" for v, c in zip(values.tolist(), counts.tolist()))
        print(f"{name:<22} {list(rows.shape)!s:<13} tau {tau:<6g} {guess:<5} rate {float(lif_scan.sequential(rows, tau, 1.0).ge(1).double().mean()):.3f}"
              f"  errors {' -> '.join(map(str, trail)):<26} scans mean {scans.double().mean():.3f} max {int(scans.max())}"
              f"  polished rows {int((stats.row_polish > 0).sum())}  histogram {histogram}", flush=True)


def measure_fused(name: str, rows: torch.Tensor, settings, sweep: int = 0) -> None:
    from spiking_ssm.kernels import lif_fixed_point

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = rows.to(device)
    block = lif_fixed_point.block_for(rows.shape[1])
    for tau, guess in settings:
        soma = ParallelLIFNeuron(tau=tau, guess=guess, max_iters=200)
        start = soma.initial_guess(rows) if guess == "sdn" else None
        spikes, _, stats = lif_fixed_point.fixed_point(rows, start, tau, max_iters=200, sweep=sweep)
        exact = lif_scan.sequential(rows, tau, 1.0) >= 1.0
        chunks = rows.shape[0] * -(-rows.shape[1] // block)
        print(f"{name:<22} {list(rows.shape)!s:<13} tau {tau:<6g} {guess:<5} exact {bool(torch.equal(spikes, exact))}"
              f"  scans per chunk of {block}: mean {int(stats.chunk_scans.sum()) / chunks:.3f}"
              f" max {stats.scans}  sweeps of {sweep} per chunk {stats.sweeps / chunks:.3f}"
              f"  float-map steps per chunk {int(stats.row_polish.sum()) / chunks:.4f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--length", type=int, default=1024)
    parser.add_argument("--sources", nargs="*", default=["shapes-pixels"], help="recorded layer currents "
                        "(spiking_ssm.sdn.layer_currents.SOURCES), each untrained and briefly trained")
    parser.add_argument("--sweep", type=int, default=0, help="sequential steps after each scan (the soma's "
                        "neuron.sweep; the error trail is always that of plain scans)")
    parser.add_argument("--fused", action="store_true", help="the fused Triton kernel's per-chunk iterations")
    args = parser.parse_args(argv)
    report = measure_fused if args.fused else measure
    g = torch.Generator().manual_seed(0)
    for name, (mean, std) in SYNTHETIC.items():
        rows = torch.randn(args.rows, args.length, generator=g, dtype=torch.float64) * std + mean
        report(name, rows, SETTINGS, args.sweep)
    if args.sources:
        from spiking_ssm.sdn.layer_currents import source_currents

        for source in args.sources:
            for trained in (False, True):
                rows = source_currents(source, trained, args.rows * args.length)
                if rows is None:
                    print(f"{source}: data files not found, skipped")
                    break
                report(f"{source} {'trained' if trained else 'untrained'}", rows, SETTINGS, args.sweep)


if __name__ == "__main__":
    main()
