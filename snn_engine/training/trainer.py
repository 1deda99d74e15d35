"""The training loop: mixed precision, accumulation, clipping, EMA, validation, checkpoints, pre-emption.

One :class:`Trainer` drives one run on one rank. Positions are counted in optimizer steps
(``step``) and in micro-batches consumed within the current epoch (``batch_in_epoch``), so a run
stopped anywhere resumes on the same batch with the same random state.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from pathlib import Path

import torch
from spikingjelly.activation_based.functional import reset_net
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from snn_engine.protection import checkpoint as ckpt_io
from snn_engine.protection.config_check import max_steps
from snn_engine.training.compiling import CompileTimer, resolve_compile_mode
from snn_engine.training.distributed import DistEnv, ShardSampler, SkipSampler, any_rank, set_sampler_epoch, train_sampler
from snn_engine.errors import RunFailed, UserError
from snn_engine.training.evaluation import evaluate_model, to_device
from snn_engine.tasks import resolve_monitor, task_for

log = logging.getLogger(__name__)
PRECISIONS = {"32": torch.float32, "64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> fp16 AMP on CUDA (the sparse-MLP recipe), fp32 on CPU; half precision needs CUDA."""
    precision = str(precision)
    if precision == "auto":
        return "fp16" if device.type == "cuda" else "32"
    if precision not in PRECISIONS:
        raise UserError(f"unknown trainer.precision={precision!r}; choose auto, 32, 64, bf16 or fp16")
    if precision in ("bf16", "fp16") and device.type != "cuda":
        raise UserError(f"trainer.precision={precision} needs CUDA; use trainer.precision=32 on {device.type}")
    return precision


class Trainer:
    """Fit ``model`` on ``train_set`` and validate on ``val_set`` as ``cfg.trainer`` says.

    The data module's task (:mod:`snn_engine.tasks`) says how the network is called: a classifier maps
    ``[B, C, H, W]`` to per-step logits ``[T, B, K]`` and ``criterion(logits, target)`` reduces over time; a
    language model maps ``(tokens, targets)`` to per-token NLL. Rank 0 writes ``<run_dir>/checkpoints/{last,best}.pt``
    and logs.
    """

    def __init__(self, cfg, model: nn.Module, data, train_set, val_set, criterion: nn.Module, optimizer_factory,
                 scheduler_factory, env: DistEnv, run_dir: Path, logger, meta: dict):
        self.cfg, self.tc, self.env, self.data = cfg, cfg.trainer, env, data
        self.run_dir, self.logger, self.meta = Path(run_dir), logger, meta
        self.model_target = meta["model_target"]
        self.train_set, self.val_set = train_set, val_set
        self.device = env.device
        self.precision = resolve_precision(self.tc.precision, self.device)
        self.model = model.to(self.device)
        if self.precision == "64":
            self.model = self.model.double()
        self.criterion = criterion.to(self.device)
        self.task = task_for(data)
        self.task.check_criterion(self.criterion)
        self.monitor, self.monitor_mode = resolve_monitor(self.task, self.tc.monitor, self.tc.monitor_mode)
        self.optimizer = optimizer_factory(self.model)
        self.batch_size, self.accum = int(data.batch_size), int(self.tc.grad_accum)
        self.steps_per_epoch = self._steps_per_epoch()
        total_epochs = int(self.tc.epochs)
        self.scheduler = scheduler_factory(self.optimizer, total_epochs, self.steps_per_epoch)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.ema = None
        if self.tc.ema_decay:
            from timm.utils import ModelEmaV3

            self.ema = ModelEmaV3(self.model, decay=float(self.tc.ema_decay))
        self.net = self.model
        if env.distributed:
            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.compiler = CompileTimer(resolve_compile_mode(self.tc.get("compile"), self.device),
                                     str(self.tc.get("compile_backend", "inductor")), self.device,
                                     int(self.tc.get("compile_baseline_steps", 5)))
        self.net = self.compiler.initial(self.net)
        self.mixup = data.mixup_fn()
        self.step = self.epoch = self.batch_in_epoch = 0
        self.best: dict = {}
        self.last_val: dict = {}
        self.stop_signal = 0
        self.last_saved: tuple[Path, int] | None = None  # the newest checkpoint this run wrote, and its step
        self.images_seen, self.units_seen, self.train_time = 0, 0, 0.0  # samples and task units (images/tokens)

    # ----------------------------------------------------------------------------------------- data
    def _steps_per_epoch(self) -> int:
        sampler = train_sampler(self.train_set, self.env, self.cfg.seed, self.data.repeated_aug)
        batches = len(sampler) // self.batch_size
        if self.tc.limit_train_batches:
            batches = min(batches, int(self.tc.limit_train_batches))
        if batches < self.accum:
            raise UserError(f"an epoch has {batches} batches of {self.batch_size}, fewer than trainer.grad_accum="
                            f"{self.accum}; lower dataset.batch_size or trainer.grad_accum")
        return batches // self.accum

    def _generator(self, epoch: int) -> torch.Generator:
        return torch.Generator().manual_seed(int(self.cfg.seed) * 1_000_003 + epoch * 1_009 + self.env.rank)

    def train_loader(self, epoch: int, skip_batches: int) -> DataLoader:
        sampler = train_sampler(self.train_set, self.env, self.cfg.seed, self.data.repeated_aug)
        set_sampler_epoch(sampler, epoch, int(self.cfg.seed))
        return DataLoader(self.train_set, batch_size=self.batch_size, sampler=SkipSampler(sampler, skip_batches * self.batch_size),
                          num_workers=int(self.data.num_workers), pin_memory=self.device.type == "cuda", drop_last=True,
                          generator=self._generator(epoch), persistent_workers=False, collate_fn=self._collate())

    def val_loader(self) -> DataLoader:
        sampler = ShardSampler(len(self.val_set), self.env.rank, self.env.world_size)
        return DataLoader(self.val_set, batch_size=self.batch_size, sampler=sampler, num_workers=int(self.data.num_workers),
                          pin_memory=self.device.type == "cuda", generator=self._generator(-1), collate_fn=self._collate())

    def _collate(self):
        """The data set's own batching (e.g. padding variable-length token sequences), else torch's default."""
        make = getattr(self.data, "collate_fn", None)
        return make() if make is not None else None

    def _to_device(self, x, y: torch.Tensor):
        dtype = torch.float64 if self.precision == "64" else None
        return to_device(x, self.device, dtype), to_device(y, self.device, dtype)

    def _autocast(self):
        if self.precision in ("bf16", "fp16"):
            return torch.autocast("cuda", dtype=PRECISIONS[self.precision])
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------- training
    def fit(self) -> str:
        """Train until ``trainer.epochs`` / ``trainer.max_steps``; return ``finished`` or ``interrupted``."""
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            return self._fit()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum
        log.warning("received signal %d: finishing this step, writing a checkpoint, then exiting", signum)

    def _done(self) -> bool:
        limit = max_steps(self.cfg)
        return limit is not None and self.step >= limit

    def _fit(self) -> str:
        val_every_steps = int(self.tc.val_every_n_steps or 0)
        while self.epoch < int(self.tc.epochs) and not self._done():
            status = self._train_epoch(val_every_steps)
            if status == "interrupted":
                return status
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
            if self.scheduler.interval == "epoch":
                self.scheduler.step()
            if not val_every_steps and (self.epoch % int(self.tc.val_every_n_epochs) == 0 or self.epoch == int(self.tc.epochs)):
                self.validate_and_checkpoint()
            else:
                self.save_checkpoint()
        if not self.last_val or self.last_val.get("step") != self.step:
            self.validate_and_checkpoint()
        return "finished"

    def _train_epoch(self, val_every_steps: int) -> str:
        self.net.train()
        skip = self.batch_in_epoch
        loader = self.train_loader(self.epoch, skip)
        micro_total = self.steps_per_epoch * self.accum
        bar = tqdm(total=micro_total, initial=skip, desc=f"epoch {self.epoch}", dynamic_ncols=True, leave=False,
                   disable=not (self.env.is_main and self.tc.progress_bar))
        meter, tick, units = self.task.train_meter(), time.perf_counter(), 0
        self.compiler.begin()
        for x, y in loader:
            if self.batch_in_epoch >= micro_total or self._done():
                break
            x, y = self._to_device(x, y)
            self._micro_step(x, y, meter)
            units += self.task.units(y) * self.env.world_size
            self.batch_in_epoch += 1
            bar.update(1)
            if self.batch_in_epoch % self.accum:
                continue
            self._optimizer_step()
            self.net = self.compiler.end(self.net)
            now = time.perf_counter()
            self.train_time += now - tick
            self.images_seen += self.batch_size * self.accum * self.env.world_size
            self.units_seen += units
            if self.step % int(self.tc.log_every_n_steps) == 0 or self.step == 1:
                stats = self._checked(meter)  # the loop's only host synchronisation between log points
                lr = self.optimizer.param_groups[0]["lr"]
                rate = units / max(now - tick, 1e-9)
                unit = "img" if self.task.unit == "images" else "tok"
                bar.set_postfix(**self.task.postfix(stats), lr=f"{lr:.2e}", **{f"{unit}_s": f"{rate:.0f}"})
                if self.env.is_main:
                    self.logger.log({**self.task.train_metrics(stats), "train/lr": lr,
                                     f"train/{self.task.unit}_per_s": rate, "epoch": self.epoch}, step=self.step)
                meter = self.task.train_meter()
            if val_every_steps and self.step % val_every_steps == 0:
                self.validate_and_checkpoint()
                self.net.train()
            if self._should_stop():
                bar.close()
                self.save_checkpoint()
                return "interrupted"
            tick, units = time.perf_counter(), 0
            self.compiler.begin()
        bar.close()
        self._checked(meter)  # before the epoch's validation writes a checkpoint
        self._log_module_statistics()
        return "epoch"

    def _log_module_statistics(self) -> None:
        """Per-epoch numbers that modules collect themselves (any module with ``pop_epoch_statistics() -> dict``, e.g.
        the ``lif_parallel`` soma's iteration counts): logged as ``epoch_stats/<module>/<key>`` and one console line
        per module (main rank only; every rank's modules are reset)."""
        metrics = {}
        for name, module in self.model.named_modules():
            pop = getattr(module, "pop_epoch_statistics", None)
            stats = pop() if callable(pop) else None
            if stats and self.env.is_main:
                log.info("epoch %d %s: %s", self.epoch, name,
                         ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in stats.items()))
                metrics.update({f"epoch_stats/{name}/{k}": v for k, v in stats.items()})
        if metrics:
            self.logger.log({**metrics, "epoch": self.epoch}, step=self.step)

    def _checked(self, meter) -> dict[str, float]:
        """The meter's statistics; a non-finite loss since the last check stops the run (before any checkpoint of
        the diverged weights is written)."""
        stats = meter.compute(self.device)
        if not math.isfinite(stats["loss"]):
            raise self.diverged(f"non-finite loss ({stats['loss']})")
        return stats

    def diverged(self, what: str) -> RunFailed:
        """The error that ends a diverged run, naming the newest finite checkpoint it wrote (or that there is none)."""
        if self.last_saved is not None:
            kept = f"the last finite checkpoint is {self.last_saved[0]} (step {self.last_saved[1]})"
        else:
            kept = "no checkpoint was written"
        return RunFailed(f"training diverged by step {self.step}: {what}; {kept}; lower optimizer.lr or set "
                         "trainer.grad_clip", status="diverged")

    def _should_stop(self) -> bool:
        """Stop after ``trainer.stop_after_steps`` (the same step on every rank) or on a signal. Signals arrive per
        rank, so several ranks agree through an all-reduce, made only at log points (no sync every step)."""
        if self.tc.stop_after_steps and self.step >= int(self.tc.stop_after_steps):
            return True
        if self.env.distributed and self.step % int(self.tc.log_every_n_steps):
            return False
        return any_rank(bool(self.stop_signal), self.device)

    def _micro_step(self, x: torch.Tensor, y: torch.Tensor, meter) -> None:
        if self.mixup is not None:
            x, y = self.mixup(x, y)
        last_micro = (self.batch_in_epoch + 1) % self.accum == 0
        sync = contextlib.nullcontext() if last_micro or not self.env.distributed else self.net.no_sync()
        with sync:
            with self._autocast():
                out = self.task.forward(self.net, x, y)
                loss = self.criterion(out, y)
            self.scaler.scale(loss / self.accum).backward()
        reset_net(self.net)
        self.task.update_train(meter, out, y, loss)

    def _optimizer_step(self) -> None:
        if self.tc.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(self.tc.grad_clip))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.model, step=self.step)
        if self.scheduler.interval == "step":
            self.scheduler.step()
        self.step += 1

    # ----------------------------------------------------------------------------------- validation
    def evaluate(self, model: nn.Module | None = None) -> dict:
        """The task's validation metrics (:mod:`snn_engine.tasks`) and per-layer firing rates of ``model`` (default:
        the trained one)."""
        dtype = torch.float64 if self.precision == "64" else None
        return evaluate_model(model if model is not None else self.model, self.val_loader(), self.device, dtype,
                              self._autocast(), int(self.tc.limit_val_batches or 0),
                              progress=self.env.is_main and bool(self.tc.progress_bar), task=self.task)

    def validate_and_checkpoint(self) -> dict:
        result = self.evaluate()
        metrics = {f"val/{k}": v for k, v in result.items() if k != "firing_rate"}
        metrics["val/firing_rate_mean"] = result["firing_rate"].get("overall", float("nan"))
        metrics.update({f"firing_rate/{k}": v for k, v in result["firing_rate"].items()})
        ema_result = None
        if self.ema is not None:
            ema_result = self.evaluate(self.ema.module)
            metrics.update({f"val_ema/{k}": v for k, v in ema_result.items() if k != "firing_rate"})
        self.last_val = {"step": self.step, "epoch": self.epoch, **result,
                         **{k: v for k, v in metrics.items() if k.startswith("val_ema/")}}
        monitor = self.monitor
        value = metrics.get(monitor)
        if value is None:
            raise UserError(f"trainer.monitor={monitor} is not a validation metric; choose one of {sorted(metrics)}")
        improved = not self.best or (value > self.best["value"] if self.monitor_mode == "max" else value < self.best["value"])
        if improved:
            self.best = {"metric": monitor, "value": value, "step": self.step, "epoch": self.epoch,
                         **self.task.best_fields(result)}
        if self.env.is_main:
            ema_text = f"; EMA weights: {self.task.describe(ema_result)}" if ema_result is not None else ""
            log.info("step %d epoch %d: val %s, firing rate %.4f%s", self.step, self.epoch, self.task.describe(result),
                     metrics["val/firing_rate_mean"], ema_text)
            self.logger.log(metrics, step=self.step)
        self.save_checkpoint(best=improved)
        return result

    # ---------------------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "ema": self.ema.module.state_dict() if self.ema is not None else None,
                "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "best": self.best,
                "last_val": {k: v for k, v in self.last_val.items()}, "rng": ckpt_io.rng_state(),
                **self.meta}

    def save_checkpoint(self, best: bool = False) -> None:
        """Write ``last.pt`` (and the same bytes as ``best.pt``, in place first); never a checkpoint holding NaN or
        infinity in its weights, EMA weights or optimizer state: that ends the run as diverged instead."""
        if not self.env.is_main:
            return
        state = self.state_dict()
        bad = ckpt_io.non_finite_tensors({k: state[k] for k in ("model", "ema", "optimizer") if state[k] is not None})
        if bad:
            raise self.diverged(f"{len(bad)} tensors of the weights or optimizer state are not finite "
                                f"(first: {bad[0]})")
        folder = self.run_dir / "checkpoints"
        ckpt_io.atomic_save(state, folder / "last.pt", also=(folder / "best.pt",) if best else ())
        self.last_saved = (folder / "last.pt", self.step)

    def load_state(self, state: dict, path) -> None:
        """Continue from a checkpoint written by :meth:`save_checkpoint` (same model; changes allowed by
        :mod:`snn_engine.protection.resume_contract` already checked).

        The optimizer's moments and the schedule's position come from the checkpoint; its hyper-parameters and the
        schedule's base lrs and length from this run's config, so the lr is the one a run of this length has at
        this step (with an unchanged config: exactly the checkpoint's)."""
        getattr(self.data, "check_checkpoint", lambda *_: None)(state, path)
        ckpt_io.check_compatible(state, self.model, self.model_target, path)
        self.model.load_state_dict(state["model"])
        fresh_groups = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in self.optimizer.param_groups]
        base_lrs = list(self.scheduler.base_lrs)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if hasattr(self.scheduler, "lr_lambdas"):  # the engine's schedules (LambdaLR); others resume as saved
            self.scheduler.base_lrs = base_lrs
            position = self.scheduler.last_epoch
            for group, fresh, base, factor in zip(self.optimizer.param_groups, fresh_groups, base_lrs,
                                                  self.scheduler.lr_lambdas):
                group.update(fresh)
                group["lr"] = base * factor(position)
            self.scheduler._last_lr = [group["lr"] for group in self.optimizer.param_groups]
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema") is not None:
            self.ema.module.load_state_dict(state["ema"])
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.last_saved = (Path(path), self.step)
        self.best, self.last_val = state["best"], state.get("last_val", {})
        ckpt_io.set_rng_state(state["rng"])
        if self.env.rank > 0:
            torch.manual_seed(int(self.cfg.seed) + 7919 * self.env.rank + self.step)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)
