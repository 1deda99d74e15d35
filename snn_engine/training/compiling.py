"""``trainer.compile``: torch.compile for the training step, with what it gained measured inside the run.

``trainer.compile`` takes ``false`` (eager), ``true`` (``reduce-overhead`` on CUDA, i.e. the step replayed as
CUDA graphs, which removes the per-kernel Python and launch cost of small models; ``default`` elsewhere) or one
of torch's modes (:data:`MODES`). ``trainer.compile_backend`` picks the backend (``inductor``; ``aot_eager`` or
``eager`` to debug a failing compilation without code generation).

:class:`CompileTimer` makes the gain visible: the first ``trainer.compile_baseline_steps`` optimizer steps run
eagerly and are timed (they are ordinary training steps, so nothing is lost), then the network is compiled; the
first compiled step (which includes compilation) and the next ``measure_steps`` are timed too. The steps it
times are synchronised with the device; after that it costs nothing. Its :meth:`~CompileTimer.report` goes to
the log and into ``summary.json``::

    torch.compile (reduce-overhead, inductor): eager 112.3 ms/step, compiled 14.1 ms/step (7.96x), compilation 63 s
"""

from __future__ import annotations

import logging
import statistics
import time

import torch
from torch import nn

from snn_engine.errors import UserError

log = logging.getLogger(__name__)
MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
BACKENDS = ("inductor", "aot_eager", "eager")


def resolve_compile_mode(value, device: torch.device) -> str | None:
    """The torch.compile mode for ``trainer.compile=value`` on ``device``; ``None`` means eager.

    ``true`` picks ``reduce-overhead`` (CUDA graphs) on CUDA and ``default`` elsewhere; CUDA-graph modes asked for
    on another device are a :class:`UserError`.
    """
    if value is None or value is False or str(value).lower() in ("false", "none", "null", "off"):
        return None
    if value is True or str(value).lower() in ("true", "on", "auto"):
        return "reduce-overhead" if device.type == "cuda" else "default"
    mode = str(value)
    if mode not in MODES:
        raise UserError(f"unknown trainer.compile={mode!r}; choose false, true or a torch.compile mode {list(MODES)}")
    if mode in CUDA_GRAPH_MODES and device.type != "cuda":
        raise UserError(f"trainer.compile={mode} captures CUDA graphs and needs CUDA; use trainer.compile=default "
                        f"on {device.type}")
    return mode


class CompileTimer:
    """Eager baseline steps, then compilation, then timed compiled steps; call :meth:`begin` before and
    :meth:`end` after each optimizer step (``end`` returns the network to use from the next step on)."""

    def __init__(self, mode: str | None, backend: str, device: torch.device, baseline_steps: int = 5,
                 measure_steps: int = 20):
        if backend not in BACKENDS:
            raise UserError(f"unknown trainer.compile_backend={backend!r}; choose one of {list(BACKENDS)}")
        if int(baseline_steps) < 0:
            raise UserError(f"trainer.compile_baseline_steps={baseline_steps} must be >= 0 (0: compile at once)")
        self.mode, self.backend, self.device = mode, backend, device
        self.baseline_steps, self.measure_steps = int(baseline_steps), max(1, int(measure_steps))
        self.times: dict[str, list[float]] = {"eager": [], "compile": [], "compiled": []}
        self.compiled = False
        self._start = 0.0

    def initial(self, net: nn.Module) -> nn.Module:
        """The network for the first step: compiled at once without a baseline, else ``net`` itself."""
        return self._compile(net) if self.mode is not None and self.baseline_steps == 0 else net

    @property
    def phase(self) -> str | None:
        """Which kind of step comes next while timing (``eager``, ``compile``, ``compiled``), else ``None``."""
        if self.mode is None:
            return None
        if not self.compiled:
            return "eager"
        if not self.times["compile"]:
            return "compile"
        return "compiled" if len(self.times["compiled"]) < self.measure_steps else None

    def begin(self) -> None:
        if self.phase is not None:
            self._sync()
            self._start = time.perf_counter()

    def end(self, net: nn.Module) -> nn.Module:
        phase = self.phase
        if phase is None:
            return net
        self._sync()
        self.times[phase].append(time.perf_counter() - self._start)
        if phase == "eager" and len(self.times["eager"]) >= self.baseline_steps:
            return self._compile(net)
        if phase == "compiled" and len(self.times["compiled"]) == self.measure_steps:
            log.info(self.describe())
        return net

    def _compile(self, net: nn.Module) -> nn.Module:
        self.compiled = True
        log.info("compiling the training network: torch.compile(mode=%s, backend=%s)", self.mode, self.backend)
        if self.backend == "inductor":
            return torch.compile(net, mode=self.mode)
        return torch.compile(net, backend=self.backend)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def report(self) -> dict | None:
        """``{mode, backend, eager_step_s, compiled_step_s, speedup, compile_step_s, steps_timed}`` (medians;
        the first eager step, which warms kernels and caches up, is left out when there are others); ``None``
        when not compiling."""
        if self.mode is None:
            return None
        eager = self.times["eager"][1:] or self.times["eager"]
        compiled = self.times["compiled"]
        eager_s = statistics.median(eager) if eager else None
        compiled_s = statistics.median(compiled) if compiled else None
        return {"mode": self.mode, "backend": self.backend, "eager_step_s": eager_s, "compiled_step_s": compiled_s,
                "speedup": eager_s / compiled_s if eager_s and compiled_s else None,
                "compile_step_s": self.times["compile"][0] if self.times["compile"] else None,
                "steps_timed": {k: len(v) for k, v in self.times.items()}}

    def describe(self) -> str:
        """One line for the log (see the module docstring)."""
        r = self.report()
        if r is None:
            return "torch.compile: off"
        parts = [f"torch.compile ({r['mode']}, {r['backend']}):"]
        parts.append(f"eager {1e3 * r['eager_step_s']:.1f} ms/step," if r["eager_step_s"] else "no eager baseline,")
        if r["compiled_step_s"]:
            gain = f" ({r['speedup']:.2f}x)" if r["speedup"] else ""
            parts.append(f"compiled {1e3 * r['compiled_step_s']:.1f} ms/step{gain},")
        if r["compile_step_s"] is not None:
            parts.append(f"compilation {r['compile_step_s']:.0f} s")
        return " ".join(parts).rstrip(",")
