"""``lif_parallel``: SpikingSSM's exact LIF soma at parallel cost (``neuron=lif_parallel``).

Maps time-major currents ``[L, B, ...]`` to spikes ``[L, B, ...]`` with SpikingSSM's dynamics (leak ``tau`` on the
membrane, threshold 1, hard reset to 0; the layer divides the currents by its learnable threshold first), equal
to the sequential LIF bit for bit in the input's precision (float32 arithmetic for half inputs):

- forward: a spike guess (the packaged SDN's for tau 0.125, no spikes otherwise), refined by membrane scans until
  no spike changes, then made rounding-exact (:func:`spiking_ssm.somas.lif_scan.fixed_point`); rows whose spikes still
  change after ``max_iters`` scans are logged (a warning with the counts), rows whose rounding phase reaches it
  raise an :class:`ExactLIFCapWarning`; with ``finish_sequential`` both are run sequentially. Rows with a
  non-finite or huge current run sequentially from the start, apart from the others, so a NaN or an infinity
  behaves as in ``lif`` (``+inf``: a spike, then NaN; NaN: no spike; ``-inf``: stays ``-inf``) and never changes
  another row. The fused kernel (:func:`spiking_ssm.kernels.lif_fixed_point.fixed_point`) does all of it in one
  launch, chunk by chunk of each row in registers;
- backward: ``gradient=bptt`` is BPTT with the reset detached (SpikingJelly ``detach_reset=True``), a reverse scan
  over time; ``gradient=sltt`` is the elementwise ``grad_s * sg'(h - 1)`` (SLTT: no temporal path). Surrogate:
  SpikingJelly's ``PiecewiseQuadratic(alpha)`` triangle.

``implementation``: ``torch`` (the reference, CPU) or ``triton`` (fused kernels on CUDA,
:mod:`spiking_ssm.kernels.lif_fixed_point`); ``auto`` picks Triton on CUDA. Stateless between calls.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import Counter
from pathlib import Path

import torch
from spikingjelly.activation_based import base

from snn_engine.errors import UserError
from spiking_ssm.somas import lif_scan
from spiking_ssm.kernels import runtime
from spiking_ssm.sdn.network import load_reduced
from spiking_ssm.sdn.packaged import check_tau as _check_tau, packaged_weights

log = logging.getLogger(__name__)
GUESSES = ("auto", "sdn", "zero")
GRADIENTS = ("bptt", "sltt")


class ExactLIFCapWarning(RuntimeWarning):
    """The ``lif_parallel`` soma's rounding-exact phase reached ``neuron.max_iters`` (typical in float32 at tau near
    1, where the scanned membrane differs from the sequential one in its last bits for long stretches); the rows
    were finished sequentially, so the spikes stay exact, but the call was slower."""


class _ExactLIF(torch.autograd.Function):
    """Rows ``y [N, L]`` -> spikes ``[N, L]``; ``solve(y) -> (spikes bool, membrane)`` runs the forward,
    ``backward_scan(grad, h, spikes, tau, alpha)`` the BPTT gradient."""

    @staticmethod
    def forward(ctx, y, solve, tau: float, alpha: float, gradient: str, backward_scan):
        spikes, h = solve(y.detach())
        ctx.save_for_backward(h, spikes)
        ctx.tau, ctx.alpha, ctx.gradient, ctx.backward_scan = tau, alpha, gradient, backward_scan
        ctx.mark_non_differentiable(spikes)
        return spikes.to(y.dtype)

    @staticmethod
    def backward(ctx, grad_spikes):
        h, spikes = ctx.saved_tensors
        grad = grad_spikes.to(h.dtype)
        if ctx.gradient == "sltt":
            grad_y = grad * lif_scan.surrogate_factor(h, 1.0, ctx.alpha)
        else:
            grad_y = ctx.backward_scan(grad, h, spikes, ctx.tau, ctx.alpha)
        return grad_y, None, None, None, None, None


def _torch_bptt(grad: torch.Tensor, h: torch.Tensor, spikes: torch.Tensor, tau: float, alpha: float) -> torch.Tensor:
    return lif_scan.bptt_gradient(grad, lif_scan.surrogate_factor(h, 1.0, alpha), spikes, tau)


class ParallelLIFNeuron(base.MemoryModule):
    """Exact LIF spikes by fixed-point iteration of membrane scans; BPTT gradient by a reverse scan.

    ``guess``: ``sdn`` (the packaged SDN for ``tau``, or ``weights``), ``zero`` (no spikes), ``auto``: in torch
    ``sdn`` when weights for ``tau`` exist (each scan is a pass over memory: fewer scans pay for the SDN), in the
    fused kernel ``zero`` (its scans run on registers: about two more per chunk cost less than the SDN's pass;
    spikes are identical either way). ``max_iters``: scans per call (per chunk in the fused kernel) before the rows
    still changing are reported (and, with ``finish_sequential``, run sequentially). ``sweep``: sequential steps each
    changed row (fused kernel: chunk, from its 5th scan) runs after each scan from its first corrected spike (see
    :func:`~spiking_ssm.somas.lif_scan.fixed_point`; smooth currents need it); in torch, regular firing found there is
    continued in the guess up to the end of the row (a constant current settles in a few scans at any length).
    ``last_stats`` holds the latest call's
    :class:`~spiking_ssm.somas.lif_scan.FixedPointStats`; training calls accumulate into :meth:`pop_epoch_statistics`.
    """

    emits_spikes = True  # the engine's firing-rate meter monitors it
    accepts_strided_input = True  # works on the layer's [B, H, L] memory seen time-major, without a copy

    def __init__(self, tau: float = 0.125, surrogate_alpha: float = 1.0, guess: str = "auto",
                 weights: str | Path | None = None, max_iters: int = 32, finish_sequential: bool = True,
                 gradient: str = "bptt", sweep: int = 64, implementation: str = "auto") -> None:
        super().__init__()
        self.step_mode = "m"
        self.tau = _check_tau(tau)
        self.v_threshold = 1.0
        self.surrogate_alpha = float(surrogate_alpha)
        if not self.surrogate_alpha > 0 or math.isinf(self.surrogate_alpha):
            raise UserError(f"neuron.surrogate_alpha={surrogate_alpha} must be a positive number (1.0 is SpikingSSM's)")
        if guess not in GUESSES:
            raise UserError(f"unknown neuron.guess={guess!r}; choose one of {GUESSES}")
        if gradient not in GRADIENTS:
            raise UserError(f"unknown neuron.gradient={gradient!r}; choose one of {GRADIENTS}")
        if int(max_iters) < 1:
            raise UserError(f"neuron.max_iters={max_iters} must be at least 1 (32 is plenty for tau <= 0.5)")
        if int(sweep) < 0:
            raise UserError(f"neuron.sweep={sweep} must be >= 0 (sequential steps after each scan; 0 switches it off)")
        self.max_iters, self.finish_sequential, self.gradient = int(max_iters), bool(finish_sequential), gradient
        self.sweep = int(sweep)
        self.implementation = runtime.check_implementation(implementation)
        self.last_implementation: str | None = None
        self.sdn = self._guess_network(guess, weights)
        self.guess = "sdn" if self.sdn is not None else "zero"  # the torch implementation's first guess
        self.guess_setting = guess
        self.last_stats: lif_scan.FixedPointStats | None = None
        self._epoch = _EpochStatistics()

    def _guess_network(self, guess: str, weights):
        path = Path(weights) if weights is not None else packaged_weights(self.tau)
        if guess == "zero" or (guess == "auto" and weights is None and not path.is_file()):
            return None
        if weights is None and not path.is_file():
            raise UserError(f"neuron.guess=sdn: no packaged SDN for neuron.tau={self.tau:g}; use neuron.guess=zero "
                            "(or auto), or pass neuron.weights=PATH.pt from "
                            f"`python -m spiking_ssm.sdn.pretrain --tau {self.tau:g}`")
        sdn = load_reduced(path)
        if not math.isclose(float(sdn.tau), self.tau, rel_tol=1e-6, abs_tol=1e-9):
            raise UserError(f"SDN weights {path} were trained for tau={float(sdn.tau):g}, not neuron.tau={self.tau:g}; "
                            "use neuron.guess=zero or weights trained for this tau")
        return sdn.float().requires_grad_(False)

    def implementation_for(self, device: torch.device, dtype: torch.dtype = torch.float32) -> str:
        """``"triton"`` or ``"torch"`` on ``device`` (an explicit choice that cannot run raises UserError)."""
        from spiking_ssm.kernels import lif_fixed_point

        return runtime.choose(self.implementation, "lif_parallel soma", device,
                              runtime.dtype_unsupported(dtype) or lif_fixed_point.unsupported())

    @torch.no_grad()
    def initial_guess(self, rows: torch.Tensor) -> torch.Tensor:
        """Spike guess ``[N, L]`` (bool) for rows of currents: ``H(SDN(y) + y - 1)`` or no spikes."""
        if self.sdn is None:
            return torch.zeros(rows.shape, dtype=torch.bool, device=rows.device)
        return self.sdn(rows.float()) + rows.float() >= 1.0  # float32 is plenty for a guess

    def _solve_torch(self, rows: torch.Tensor):
        spikes, h, stats = lif_scan.fixed_point(rows, self.initial_guess(rows), self.tau, 1.0, self.max_iters,
                                                self.finish_sequential, self.sweep)
        self._record(stats, rows)
        return spikes, h

    def _record(self, stats: lif_scan.FixedPointStats, rows: torch.Tensor) -> None:
        self.last_stats = stats
        if stats.spike_capped or (stats.capped and not stats.finished):
            log.warning("lif_parallel soma reached neuron.max_iters=%d: %s (of %d rows, length %d)%s", self.max_iters,
                        "; ".join(stats.notes), rows.shape[0], rows.shape[1],
                        "; finished sequentially, exact" + (f" ({stats.capped_changes} spikes corrected)"
                                                            if stats.capped_changes >= 0 else "") if stats.finished
                        else "; left inexact (neuron.finish_sequential=false): raise neuron.max_iters")
        elif stats.capped:  # only rounding bits were left (tau near 1 in float32): finished sequentially
            warnings.warn(f"lif_parallel soma reached neuron.max_iters={self.max_iters} in its rounding-exact "
                          f"phase: {'; '.join(stats.notes)} (of {rows.shape[0]} rows, length {rows.shape[1]}); "
                          "finished sequentially from the first doubtful step, exact but slower", ExactLIFCapWarning,
                          stacklevel=2)
        if self.training:
            self._epoch.add(stats)

    def multi_step_forward(self, y: torch.Tensor) -> torch.Tensor:
        if y.dim() < 1 or y.shape[0] == 0:
            raise UserError(f"the lif_parallel neuron needs time-major input [L, B, ...] with L >= 1, got {tuple(y.shape)}")
        self.last_implementation = self.implementation_for(y.device, y.dtype)
        compute = torch.float64 if y.dtype == torch.float64 else torch.float32
        time_last = y.movedim(0, -1)
        rows = time_last.reshape(-1, y.shape[0]).to(compute)  # a view of the layer's [B, H, L] memory if it can be
        if self.last_implementation == "triton":
            from spiking_ssm.kernels import lif_fixed_point

            solve, scan = (lambda r: self._solve_triton(r, lif_fixed_point)), lif_fixed_point.bptt_gradient
        else:
            rows = rows.contiguous()
            solve, scan = self._solve_torch, _torch_bptt
        spikes = _ExactLIF.apply(rows, solve, self.tau, self.surrogate_alpha, self.gradient, scan)
        return spikes.to(y.dtype).reshape(time_last.shape).movedim(-1, 0)

    def _solve_triton(self, rows: torch.Tensor, kernels):
        guess = self.initial_guess(rows) if self.guess_setting == "sdn" else None  # auto: see the class docstring
        spikes, h, stats = kernels.fixed_point(rows, guess, self.tau, self.max_iters, self.finish_sequential,
                                               self.sweep)
        self._record(stats, rows)
        return spikes, h

    def single_step_forward(self, y: torch.Tensor) -> torch.Tensor:
        raise UserError("the lif_parallel neuron works on whole sequences (step_mode='m', input [L, B, ...]); "
                        "use neuron=lif for step-by-step simulation (it is the same neuron)")

    def pop_epoch_statistics(self) -> dict[str, float]:
        """Iterations of the training calls since the last pop (engine: logged once per epoch), then reset."""
        out, self._epoch = self._epoch.summary(), _EpochStatistics()
        return out

    def extra_repr(self) -> str:
        return (f"tau={self.tau:g}, guess={self.guess}, max_iters={self.max_iters}, sweep={self.sweep}, "
                f"gradient={self.gradient}, "
                f"step_mode={self.step_mode}")


class _EpochStatistics:
    """Per-row scan counts summed over calls: mean, max, histogram; capped rows."""

    def __init__(self):
        self.calls, self.rows, self.scans, self.polish, self.capped = 0, 0, 0, 0, 0
        self.histogram: Counter = Counter()
        self.call_max = 0

    def add(self, stats: lif_scan.FixedPointStats) -> None:
        self.calls += 1
        self.rows += int(stats.row_scans.numel())
        self.scans += int(stats.row_scans.sum())
        self.polish += int(stats.row_polish.sum())
        self.capped += stats.capped
        self.call_max = max(self.call_max, stats.scans)
        values, counts = torch.unique(stats.row_scans.cpu(), return_counts=True)
        self.histogram.update(dict(zip(values.tolist(), counts.tolist())))

    def summary(self) -> dict[str, float]:
        if not self.rows:
            return {}
        out = {"calls": self.calls, "scans_mean": self.scans / self.rows, "scans_max": self.call_max,
               "polish_mean": self.polish / self.rows, "capped_rows": self.capped}
        out.update({f"rows_with_{k}_scans": v / self.rows for k, v in sorted(self.histogram.items())})
        return out
