"""How well reduced SDNs generalise: spike agreement with the exact LIF on many input distributions.

    python -m spiking_ssm.sdn.agreement [--weights PATH ...] [--seqs 2000] [--length 1024] [--no-real]

For each named distribution (:data:`DISTRIBUTIONS`: shifted, scaled, uniform, heavy-tailed and temporally
correlated currents) ``seqs`` sequences of ``length`` steps are drawn from fresh seeds (:data:`SUITE_SEED` and
up, never used by ``spiking_ssm.sdn.pretrain``), rounded to float32, and run through the exact LIF in float64
(:func:`spiking_ssm.sdn.lif_traces.lif_reference`: tau from the weights, threshold 1, hard reset to 0) and
through each SDN (in ``--dtype``, float32 by default, what the ``sdn`` neuron computes). Real currents
(``real/...`` rows, :mod:`spiking_ssm.sdn.layer_currents`) are the soma inputs of SpikingSSM layers, untrained and
briefly trained, about ``seqs * length`` values per source.

Spike agreement is the fraction of steps where ``H(m_hat + y - 1)`` equals the exact spike; also reported:
the membrane MAE ``mean |m_hat - tau u_{t-1}|``, the number of wrong spikes and both firing rates.
Default ``--weights``: the packaged SDN for tau 0.125. The table is printed and :func:`run_suite` returns it.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Callable

import torch

from snn_engine.errors import UserError
from snn_engine.protection.strict_args import StrictArgumentParser
from spiking_ssm.sdn.layer_currents import SOURCES, source_currents
from spiking_ssm.sdn.lif_traces import lif_reference
from spiking_ssm.sdn.network import ReducedSDN, load_reduced
from spiking_ssm.sdn.packaged import packaged_weights

SUITE_SEED = 900_001
Sampler = Callable[[int, int, torch.Generator], torch.Tensor]


def _normal(mean: float, std: float) -> Sampler:
    return lambda n, length, g: torch.randn(n, length, generator=g, dtype=torch.float64) * std + mean


def _uniform(low: float, high: float) -> Sampler:
    return lambda n, length, g: torch.rand(n, length, generator=g, dtype=torch.float64) * (high - low) + low


def _laplace(loc: float, scale: float) -> Sampler:
    def sample(n: int, length: int, g: torch.Generator) -> torch.Tensor:
        u = torch.rand(n, length, generator=g, dtype=torch.float64) - 0.5
        return loc - scale * torch.sign(u) * torch.log1p(-2.0 * u.abs())
    return sample


def _student_t(dof: float) -> Sampler:
    def sample(n: int, length: int, g: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, length, generator=g, dtype=torch.float64)
        chi2 = sum(torch.randn(n, length, generator=g, dtype=torch.float64) ** 2 for _ in range(int(dof)))
        return z / torch.sqrt(chi2 / dof)
    return sample


def ar1(noise: torch.Tensor, phi: float) -> torch.Tensor:
    """AR(1) filter along the last axis: ``x_t = phi x_{t-1} + sqrt(1 - phi^2) e_t``, stationary start
    (unit marginal variance for unit-variance noise ``e`` [..., L])."""
    out = torch.empty_like(noise)
    out[..., 0] = noise[..., 0]
    gain = math.sqrt(1.0 - phi * phi)
    for t in range(1, noise.shape[-1]):
        out[..., t] = phi * out[..., t - 1] + gain * noise[..., t]
    return out


def _ar(phi: float, mean: float = 0.0, std: float = 1.0) -> Sampler:
    return lambda n, length, g: ar1(torch.randn(n, length, generator=g, dtype=torch.float64), phi) * std + mean


DISTRIBUTIONS: dict[str, Sampler] = {
    "N(0,1)": _normal(0.0, 1.0),
    "N(0.5,1)": _normal(0.5, 1.0),
    "N(0,3^2)": _normal(0.0, 3.0),
    "U(-1,3)": _uniform(-1.0, 3.0),
    "N(-0.5,1)": _normal(-0.5, 1.0),
    "N(1,1)": _normal(1.0, 1.0),
    "N(0,0.5^2)": _normal(0.0, 0.5),
    "N(0,2^2)": _normal(0.0, 2.0),
    "N(0.3,1.5^2)": _normal(0.3, 1.5),
    "U(0,2)": _uniform(0.0, 2.0),
    "U(-2,2)": _uniform(-2.0, 2.0),
    "Laplace(0,1)": _laplace(0.0, 1.0),
    "t(3)": _student_t(3.0),
    "AR1(0.9) N(0,1)": _ar(0.9),
    "AR1(0.5) N(0.3,1)": _ar(0.5, 0.3),
    "AR1(-0.5) N(0,1)": _ar(-0.5),
}
#: the published official SDN's spike agreement (2000 x 1024 sequences, issue 8); for the printed table only
OFFICIAL = {"N(0,1)": 0.99979, "N(0.5,1)": 0.99949, "N(0,3^2)": 0.99929, "U(-1,3)": 0.99968}


def sample(name: str, n: int, length: int, seed: int = SUITE_SEED) -> torch.Tensor:
    """``n`` sequences ``[n, length]`` (float64 values that are exact float32 numbers) of distribution ``name``,
    from the seed ``seed + its index in DISTRIBUTIONS``."""
    if name not in DISTRIBUTIONS:
        raise UserError(f"unknown input distribution {name!r}; choose from {list(DISTRIBUTIONS)}")
    if int(n) < 1 or int(length) < 1:
        raise UserError(f"need n >= 1 sequences of length >= 1, got n={n}, length={length}")
    g = torch.Generator().manual_seed(int(seed) + list(DISTRIBUTIONS).index(name))
    return DISTRIBUTIONS[name](int(n), int(length), g).to(torch.float32).to(torch.float64)


@torch.no_grad()
def measure(sdns: dict[str, ReducedSDN], x: torch.Tensor, dtype: torch.dtype = torch.float32,
            chunk: int = 256) -> dict[str, dict[str, float]]:
    """Metrics of each SDN against the exact LIF on currents ``x`` [N, L] (float64).

    All SDNs must share one tau. Returns ``{label: {spike_agreement, mem_mae, wrong_spikes, rate_sdn,
    rate_lif, steps}}``.
    """
    taus = {float(s.tau) for s in sdns.values()}
    if len(taus) != 1 or not all(0.0 <= t < 1.0 for t in taus):
        raise UserError(f"the SDNs to compare must share one tau in [0, 1), got {sorted(taus)}")
    tau = taus.pop()
    models = {label: ReducedSDN(s.conv1_weight.shape[0], s.kernel_size).to(dtype) for label, s in sdns.items()}
    for label, s in sdns.items():
        models[label].load_state_dict({k: v.to(dtype) if k != "tau" else v for k, v in s.state_dict().items()})
    totals = {label: [0.0, 0.0, 0.0] for label in sdns}  # wrong spikes, |error| sum, sdn spikes
    lif_spikes = 0.0
    for start in range(0, x.shape[0], chunk):
        xs = x[start:start + chunk].to(torch.float64)
        m, s = lif_reference(xs, tau=tau)
        lif_spikes += s.sum().item()
        xd = xs.to(dtype)
        for label, model in models.items():
            m_hat = model(xd)
            spikes = (m_hat + xd - 1.0 >= 0).to(torch.float64)
            totals[label][0] += (spikes != s).sum().item()
            totals[label][1] += (m_hat.to(torch.float64) - m).abs().sum().item()
            totals[label][2] += spikes.sum().item()
    steps = float(x.numel())
    return {label: {"spike_agreement": 1.0 - wrong / steps, "mem_mae": abs_sum / steps, "wrong_spikes": int(wrong),
                    "rate_sdn": sdn_spikes / steps, "rate_lif": lif_spikes / steps, "steps": int(steps)}
            for label, (wrong, abs_sum, sdn_spikes) in totals.items()}


def real_inputs(time_steps: int, steps: int | None = None, seed: int = 0, sources=SOURCES,
                mnist_root: Path | None = None) -> dict[str, torch.Tensor]:
    """Recorded layer currents ``{"real/<source> <untrained|trained>": [N, L]}``, about ``time_steps`` values
    each; models trained ``steps`` steps (default per source); absent data sets are skipped."""
    out = {}
    for source in sources:
        for trained in (False, True):
            y = source_currents(source, trained, time_steps, steps, seed=seed, mnist_root=mnist_root)
            if y is not None:
                out[f"real/{source} {'trained' if trained else 'untrained'}"] = y
    return out


def run_suite(sdns: dict[str, ReducedSDN], seqs: int = 2000, length: int = 1024, real: bool = True,
              real_train_steps: int | None = None, names: list[str] | None = None, dtype: torch.dtype = torch.float32,
              seed: int = SUITE_SEED, mnist_root: Path | None = None, log=print) -> dict[str, dict[str, dict]]:
    """``{distribution: {sdn label: metrics}}`` over :data:`DISTRIBUTIONS` (or ``names``) and, with ``real``,
    the recorded layer currents (models trained ``real_train_steps`` steps)."""
    if not sdns:
        raise UserError("run_suite needs at least one SDN")
    results = {}
    for name in names if names is not None else list(DISTRIBUTIONS):
        start = time.time()
        results[name] = measure(sdns, sample(name, seqs, length, seed), dtype)
        log(f"  {name}: {time.time() - start:.1f}s")
    if real:
        start = time.time()
        inputs = real_inputs(seqs * length, real_train_steps, mnist_root=mnist_root)
        log(f"  recorded {len(inputs)} sets of layer currents: {time.time() - start:.1f}s")
        for name, y in inputs.items():
            results[name] = measure(sdns, y, dtype)
    return results


def format_table(results: dict[str, dict[str, dict]], official: dict[str, float] = OFFICIAL) -> str:
    """A markdown table: spike agreement (%) and membrane MAE per distribution and SDN (plus the official SDN)."""
    labels = list(next(iter(results.values())))
    head = ["input", "steps", "LIF rate"] + [f"{label} agreement" for label in labels] + ["official"]
    head += [f"{label} MAE" for label in labels]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in results.items():
        first = row[labels[0]]
        cells = [name, f"{first['steps']:,}", f"{first['rate_lif']:.3f}"]
        cells += [f"{100 * row[label]['spike_agreement']:.4f}%" for label in labels]
        cells += [f"{100 * official[name]:.3f}%" if name in official else ""]
        cells += [f"{row[label]['mem_mae']:.2e}" for label in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _labelled(paths: list[Path]) -> dict[str, ReducedSDN]:
    labels = [p.stem if [q.stem for q in paths].count(p.stem) == 1 else f"{p.parent.name}/{p.stem}" for p in paths]
    if len(set(labels)) != len(labels):
        raise UserError(f"--weights lists the same file twice: {[str(p) for p in paths]}")
    return {label: load_reduced(p) for label, p in zip(labels, paths)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = StrictArgumentParser(prog="python -m spiking_ssm.sdn.agreement", description=__doc__.split("\n")[0])
    parser.add_argument("--weights", type=Path, nargs="+", default=None,
                        help="reduced SDN files (default: the packaged SDN for tau 0.125)")
    parser.add_argument("--seqs", type=int, default=2000, help="sequences per distribution")
    parser.add_argument("--length", type=int, default=1024, help="steps per sequence")
    parser.add_argument("--only", nargs="+", default=None, help=f"distributions to run (of {list(DISTRIBUTIONS)})")
    parser.add_argument("--no-real", dest="real", action="store_false", help="skip the recorded layer currents")
    parser.add_argument("--real-train-steps", type=int, default=None,
                        help="training steps of the recording models (default per source: 150, 60, 60)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32", help="the SDNs' precision")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="folder holding MNIST/raw for the smnist currents (default: $SNN_DATA, ./data, the "
                             "shared data folder; skipped when absent)")
    parser.add_argument("--seed", type=int, default=SUITE_SEED)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.seqs < 1 or args.length < 1 or (args.real_train_steps or 0) < 0 or args.threads < 1:
        raise UserError("--seqs, --length and --threads must be >= 1 and --real-train-steps >= 0")
    return args


def main(argv: list[str] | None = None) -> dict[str, dict[str, dict]]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    sdns = _labelled(args.weights or [packaged_weights(0.125)])
    start = time.time()
    results = run_suite(sdns, args.seqs, args.length, real=args.real, real_train_steps=args.real_train_steps,
                        names=args.only, dtype=getattr(torch, args.dtype), seed=args.seed, mnist_root=args.data_root)
    print(f"spike agreement with the exact LIF ({args.seqs} x {args.length} per distribution, SDN in {args.dtype}, "
          f"seed {args.seed}; {time.time() - start:.0f}s)")
    print(format_table(results))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    try:
        main()
    except UserError as error:
        raise SystemExit(f"error: {error}") from None
