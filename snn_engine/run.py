"""What ``train.py`` and ``eval.py`` run: build everything from the config, then train or evaluate.

Every object comes from a ``_target_`` config, so a new model family is a package plus config files:
``dataset`` (an object with ``train_set()``, ``val_set()``, ``mixup_fn()``), ``neuron`` (a partial the
model calls once per spiking layer), ``model`` (called with ``neuron=``), ``optimizer`` and
``scheduler`` (partials), ``loss`` and ``logger``.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

from snn_engine.protection import checkpoint as ckpt_io
from snn_engine.training import distributed
from snn_engine.protection import resume_contract, run_folder, summary_file, trust
from snn_engine.protection.config_check import EVAL_RULES, check, check_train_config, max_steps
from snn_engine.errors import RunFailed, UserError
from snn_engine.training.evaluation import evaluate_model
from snn_engine.logger import NullLogger
from snn_engine.measure.kernel_usage import ImplementationCounter, reports_path
from snn_engine.neurons import select_implementation
from snn_engine.training.optim import build_optimizer
from snn_engine.measure.report import flat_metrics, format_report, spike_report
from snn_engine.tasks import task_for
from snn_engine.training.trainer import PRECISIONS, Trainer, resolve_precision

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


_BOUND_DATA: list = [None]


def _data_attribute(name: str):
    """``${data:NAME}``: a public attribute of the data set being built on, a number, string, boolean or null."""
    if _BOUND_DATA[0] is None:
        raise UserError(f"a config refers to ${{data:{name}}} before a data set was built; build it with the dataset first")
    if not isinstance(name, str) or name.startswith("_"):
        raise UserError(f"${{data:{name}}} does not name a public attribute of the data set")
    value = getattr(_BOUND_DATA[0], name, None)
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise UserError(f"${{data:{name}}} is a {type(value).__name__} of the data set, not a number, string or "
                        "boolean")
    return value


OmegaConf.register_new_resolver("data", _data_attribute, replace=True)


def build_model(cfg: DictConfig, data=None) -> torch.nn.Module:
    """The model of ``cfg.model`` with neurons from ``cfg.neuron``.

    Model configs may read attributes of the instantiated data set with ``${data:NAME}`` (for example the
    vocabulary size of a token data set, ``${data:vocab_size}``); ``data`` is the object they refer to (without it,
    such a reference is an error, never an earlier build's data set).
    """
    _BOUND_DATA[0] = data
    neuron = instantiate(cfg.neuron)
    return instantiate(cfg.model, neuron=neuron)


def make_scheduler_factory(cfg: DictConfig):
    """A function ``(optimizer, epochs, steps_per_epoch) -> scheduler`` counting ``total`` in its interval.

    ``total`` is the run's length in that interval unless the scheduler config pins it (``scheduler.total``,
    as the SpikingSSM recipes pin their total steps)."""

    def factory(optimizer, epochs: int, steps_per_epoch: int):
        partial = instantiate(cfg.scheduler)
        if partial.keywords.get("total") is not None:
            return partial(optimizer=optimizer)
        partial.keywords.pop("total", None)
        interval = partial.keywords.get("interval", "epoch")
        total = epochs if interval == "epoch" else (max_steps(cfg) or epochs * steps_per_epoch)
        return partial(optimizer=optimizer, total=max(1, total))

    return factory


def resume_path(cfg: DictConfig, run_dir: Path) -> Path | None:
    """``trainer.resume``: null (fresh), ``auto`` (this run directory's last.pt if any) or a path."""
    resume = cfg.trainer.resume
    if not resume:
        return None
    if resume == "auto":
        candidate = run_dir / "checkpoints" / "last.pt"
        return candidate if candidate.is_file() else None
    return Path(str(resume))


def write_json(path: Path, values: dict) -> None:
    """Write ``values`` to ``path`` atomically (:func:`snn_engine.protection.summary_file.write_atomic`)."""
    summary_file.write_atomic(path, values)


def record_failure(run_dir: Path, trainer: Trainer, error: UserError, started: float) -> None:
    """Write the summary of a run that failed after it started (best effort: the disk may be full)."""
    saved = trainer.last_saved
    summary = {"status": getattr(error, "status", "failed"), "error": str(error), "step": trainer.step,
               "epoch": trainer.epoch, "final": trainer.last_val, "best": trainer.best,
               "last_checkpoint": str(saved[0]) if saved else None, "last_checkpoint_step": saved[1] if saved else None,
               "wall_time_s": time.perf_counter() - started}
    try:
        write_json(run_dir / "summary.json", summary)
    except OSError as write_error:
        log.error("could not write %s: %s; %s", run_dir / "summary.json", write_error,
                  summary_file.remove_stale(run_dir / "summary.json") or "no summary was there")


def prepare_resume(cfg: DictConfig, run_dir: Path) -> tuple[Path | None, dict | None, dict]:
    """The checkpoint to resume from, its state, and the setting changes the resume makes (checked against
    :mod:`snn_engine.protection.resume_contract`); a folder holding another run's results without ``trainer.resume`` is an
    error (Hydra runs are refused earlier, by :mod:`snn_engine.protection.run_folder`)."""
    if not cfg.trainer.resume and run_folder.holds_results(run_dir):
        raise UserError(f"run folder {run_dir} already holds another run's checkpoints or summary; pass "
                        "trainer.resume=auto to continue that run, or choose a new run_name")
    path = resume_path(cfg, run_dir)
    if path is None:
        return None, None, {}
    state = ckpt_io.load(path)
    changes = resume_contract.check(state.get("config_raw"), OmegaConf.to_container(cfg, resolve=False), path,
                                    bool(cfg.trainer.get("resume_allow_changes", False)),
                                    resolve=lambda key: OmegaConf.select(cfg, key))
    return path, state, changes


def train(cfg: DictConfig, run_dir: str | Path) -> dict:
    """Train ``cfg.model`` on ``cfg.dataset``; return (and write to ``summary.json``) the run's summary."""
    run_dir = Path(run_dir)
    started = time.perf_counter()
    check_train_config(cfg)
    path, state, changes = prepare_resume(cfg, run_dir)
    env = distributed.setup(cfg.trainer.accelerator)
    try:
        run_dir = distributed.shared_run_dir(run_dir, env)
        if not env.is_main:
            logging.getLogger().setLevel(logging.WARNING)
        else:
            for stale in run_folder.remove_stale_temp_files(run_dir):
                log.warning("removed %s, a checkpoint write that a killed run left unfinished", stale)
        seed_everything(int(cfg.seed))
        data = instantiate(cfg.dataset)
        train_set, val_set = data.train_set(), data.val_set()
        model = build_model(cfg, data)
        implementation = select_implementation(cfg.neuron.kind, cfg.neuron.get("implementation", "auto"), env.device,
                                              model)
        resolve_precision(cfg.trainer.precision, env.device)
        if cfg.trainer.sync_bn and env.distributed:
            model = distributed.convert_sync_batchnorm(model, env.device)
        seed_everything(int(cfg.seed) + env.rank)
        meta = {"model_target": cfg.model._target_, "config": OmegaConf.to_container(cfg, resolve=True),
                "config_raw": OmegaConf.to_container(cfg, resolve=False), **getattr(data, "checkpoint_extras", dict)()}
        logger = instantiate(cfg.logger) if env.is_main else NullLogger()
        trainer = Trainer(cfg, model, data, train_set, val_set, instantiate(cfg.loss),
                          lambda m: build_optimizer(instantiate(cfg.optimizer), m), make_scheduler_factory(cfg),
                          env, run_dir, logger, meta)
        if path is not None:
            trainer.load_state(state, path)
            if changes and env.is_main:
                log.info("resume changes: %s", resume_contract.describe(changes))
        num_params = count_parameters(model)
        if env.is_main:
            log.info("model %s: %.3fM parameters; neurons: %s; device %s x%d; precision %s; run dir %s",
                     cfg.model._target_, num_params / 1e6, implementation, env.device, env.world_size,
                     trainer.precision, run_dir)
            logger.start(str(run_dir), meta["config"])
            logger.summary({"num_params": num_params, "neuron_implementation": implementation})
        try:
            with ImplementationCounter(model) as usage, ImplementationCounter(model, reports_path) as paths:
                status = trainer.fit()
        except UserError as error:
            if env.is_main:
                record_failure(run_dir, trainer, error, started)
                logger.finish()
            raise
        if env.is_main:
            log.info("neurons ran (counted over the run): %s", usage.describe())
            if paths.counts:
                log.info("current paths ran (counted over the run): %s", paths.describe())
            if usage.fallbacks:
                log.warning("%d spiking layers fell back to a slower implementation at least once: %s",
                            len(usage.fallbacks), ", ".join(usage.fallbacks[:8]))
        summary = {
            "status": status, "step": trainer.step, "epoch": trainer.epoch, "final": trainer.last_val,
            "best": trainer.best, "num_params": num_params, "neuron_implementation": implementation,
            "neuron_implementations_ran": usage.summary(),
            **({"current_paths_ran": paths.summary()} if paths.counts else {}), "compile": trainer.compiler.report(),
            "images_per_s": trainer.images_seen / max(trainer.train_time, 1e-9), "train_time_s": trainer.train_time,
            "task": trainer.task.name,
            **({"tokens_per_s": trainer.units_seen / max(trainer.train_time, 1e-9)} if trainer.task.unit == "tokens" else {}),
            "wall_time_s": time.perf_counter() - started, "world_size": env.world_size, "device": str(env.device),
            "precision": trainer.precision, "checkpoints": str(run_dir / "checkpoints"),
            "resume_changes": {k: [a, b] for k, (a, b) in changes.items()},
        }
        if env.is_main:
            write_final_summary(run_dir, summary, logger)
            logger.summary({"best/" + k: v for k, v in trainer.best.items() if isinstance(v, (int, float))})
            logger.summary({f"neurons_ran/{impl}": calls for impl, calls in usage.summary()["calls"].items()})
            logger.finish()
            if trainer.last_val:
                log.info("%s after %d steps: val %s (best %s %.4g at step %d); summary in %s", status, trainer.step,
                         trainer.task.describe(trainer.last_val), trainer.best.get("metric"),
                         trainer.best.get("value", float("nan")), trainer.best.get("step", -1), run_dir / "summary.json")
        summary["stop_signal"] = trainer.stop_signal
        return summary
    finally:
        distributed.cleanup()


def write_final_summary(run_dir: Path, summary: dict, logger) -> None:
    """The finished (or stopped) run's ``summary.json``; a failed write is one :class:`RunFailed` line that says where
    the checkpoints are and how to write the summary later (:func:`snn_engine.protection.summary_file.write_or_fail`)."""
    status, step = summary["status"], summary["step"]
    later = ("without training further" if status == "finished" else "and continue the run")
    try:
        summary_file.write_or_fail(
            run_dir / summary_file.NAME, summary,
            f"the run {status} at step {step} with its checkpoints complete in {run_dir / 'checkpoints'}",
            f"free disk space (or make the folder writable), then run the same command with run_name={run_dir.name} "
            f"trainer.resume=auto to write it {later}")
    except RunFailed:
        logger.finish()
        raise


def checkpoint_config(state: dict, overrides: list[str], source="this checkpoint", added: frozenset = frozenset(),
                      own_keys: tuple[str, ...] = ()) -> DictConfig:
    """The training config stored in a checkpoint, with ``key=value`` overrides from the command line: the config
    that ``eval.py``, ``generate`` and the LM tools build from.

    It comes from :func:`snn_engine.protection.trust.trusted_config`: resolved with harmless resolvers only, after the overrides,
    and checked node by node (it builds only targets that ``conf/`` names) before anything reads it; no interpolation
    of the file is left in it but ``${data:NAME}``. An override must name a key the config has, unless its key is in
    ``added`` (the user wrote ``+key=value``); an unknown key is an error with the nearest known keys (``own_keys``:
    the command's own settings, offered as suggestions too).
    """
    if "config_raw" not in state:
        raise UserError(f"{source} has no training config; pass a checkpoint written by train.py")
    raw = state["config_raw"]
    known = list(resume_contract.flatten(raw)) + list(own_keys) if isinstance(raw, dict) else list(own_keys)

    def apply_overrides(cfg: DictConfig) -> None:
        for item in overrides:
            key, _, value = item.partition("=")
            key = key.lstrip("+~")
            if key not in added and OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
                raise UserError(f"unknown setting {key}{suggest(key, known)}; the checkpoint's config has no such key "
                                f"(write +{key}=... to add one on purpose)")
            OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"]).v, force_add=True)

    return trust.trusted_config(raw, str(source), apply_overrides)


_ABSENT = object()


def suggest(key: str, known: list[str]) -> str:
    """`` (did you mean X?)`` for the known keys closest to ``key``, or nothing."""
    import difflib

    close = difflib.get_close_matches(key, known, n=2, cutoff=0.6)
    if not close:
        leaf = key.rsplit(".", 1)[-1]
        close = [k for k in known if k.rsplit(".", 1)[-1] in difflib.get_close_matches(leaf, [
            k.rsplit(".", 1)[-1] for k in known], n=1, cutoff=0.75)][:2]
    return f" (did you mean {' or '.join(close)}?)" if close else ""


def language_model_extras(data, model, env, dtype, autocast, task, report: dict, progress: bool = True) -> dict:
    """A language model's evaluation beyond the validation split: energy per token (the validation report's
    per-sample energy over its tokens per sample) and the test split's perplexity, where the data set has one."""
    val_tokens = report["val"]["tokens"]
    samples = report["ops"].get("samples") or len(data.val_set())
    extras = {"energy_pj_per_token": report["ops"]["total"]["energy_pj"] * samples / max(val_tokens, 1)}
    if report.get("energy", {}).get("memory"):  # already per token (snn_engine.measure.energy)
        extras["memory_energy_pj_per_token"] = {k: v["total_pj"] for k, v in report["energy"]["memory"].items()
                                                if "total_pj" in v}
    if "test" in getattr(data, "splits", ("test",)):
        test_set = data.test_set()
        loader = torch.utils.data.DataLoader(test_set, batch_size=int(data.batch_size), num_workers=int(data.num_workers),
                                             sampler=distributed.ShardSampler(len(test_set), env.rank, env.world_size))
        extras["test"] = evaluate_model(model, loader, env.device, dtype, autocast, progress=env.is_main and progress,
                                         task=task)
    return extras


def folding(report: dict) -> str:
    """What the result line says about ``mfi=true``: folded, or (a model without a folded form) that nothing was."""
    mfi = report.get("mfi")
    if mfi is None:
        return ""
    if mfi.get("applicable") is False:
        return f", not folded (mfi=true, but {mfi['reason'].split(':')[0]}; evaluated as trained)"
    return " folded (mfi=true)"


def evaluate(cfg: DictConfig, run_dir: str | Path, overrides: list[str], added: frozenset = frozenset()) -> dict:
    """Evaluate ``cfg.ckpt`` on its validation set; write ``summary.json`` into ``run_dir``. ``overrides`` change the
    checkpoint's training config (``added``: keys the user may add with ``+key=value``)."""
    run_dir = Path(run_dir)
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise UserError("eval.py needs ckpt=PATH, a checkpoint written by train.py "
                        "(e.g. ckpt=outputs/train/<run>/checkpoints/best.pt)")
    check(cfg, EVAL_RULES)
    state = ckpt_io.load(cfg.ckpt)
    given = {item.partition("=")[0].lstrip("+~") for item in overrides}  # Hydra added them to cfg too
    own_keys = tuple(k for k in resume_contract.flatten(OmegaConf.to_container(cfg, resolve=False)) if k not in given)
    train_cfg = checkpoint_config(state, overrides, cfg.ckpt, added=added, own_keys=own_keys)
    check_train_config(train_cfg)
    bad = ckpt_io.non_finite_tensors({"model": state["model"], "ema": state.get("ema") or {}})
    if bad:
        raise UserError(f"checkpoint {cfg.ckpt} holds {len(bad)} non-finite weight tensors (first: {bad[0]}): it was "
                        "written by a diverged run; evaluate an earlier checkpoint")
    env = distributed.setup(train_cfg.trainer.accelerator)
    try:
        precision = resolve_precision(train_cfg.trainer.precision, env.device)
        data = instantiate(train_cfg.dataset)
        getattr(data, "check_checkpoint", lambda *_: None)(state, cfg.ckpt)
        val_set = data.val_set()
        model = build_model(train_cfg, data)
        if get_class(train_cfg.model._target_) is not type(model):
            raise UserError(f"checkpoint model {train_cfg.model._target_} could not be rebuilt")
        ckpt_io.check_compatible(state, model, train_cfg.model._target_, cfg.ckpt)
        weights = state["ema"] if cfg.use_ema else state["model"]
        if weights is None:
            raise UserError("use_ema=true but the checkpoint has no EMA weights; drop use_ema or train with trainer.ema_decay")
        model.load_state_dict(weights)
        implementation = select_implementation(train_cfg.neuron.kind, train_cfg.neuron.get("implementation", "auto"),
                                               env.device, model)
        model = model.to(env.device)
        dtype = PRECISIONS[precision] if precision == "64" else None
        if dtype is not None:
            model = model.to(dtype)
        loader = torch.utils.data.DataLoader(
            val_set, batch_size=int(data.batch_size), num_workers=int(data.num_workers),
            sampler=distributed.ShardSampler(len(val_set), env.rank, env.world_size),
            collate_fn=data.collate_fn() if hasattr(data, "collate_fn") else None)
        autocast = torch.autocast("cuda", dtype=PRECISIONS[precision]) if precision in ("bf16", "fp16") else None
        task = task_for(data)
        progress = bool(train_cfg.trainer.get("progress_bar", True))  # trainer.progress_bar=false: no bar here either
        report = spike_report(cfg, model, loader, env.device, dtype, autocast, run_dir, env.is_main, task=task,
                              progress=progress)
        result = report["val"]
        summary = {"ckpt": str(cfg.ckpt), "step": state["step"], "epoch": state["epoch"], "use_ema": bool(cfg.use_ema),
                   "task": task.name, "val": result, "num_params": count_parameters(model),
                   "neuron_implementation": implementation,
                   "model": OmegaConf.to_container(train_cfg.model, resolve=True),
                   **{k: report[k] for k in ("spikes", "ops", "energy", "neurobench", "mfi", "nir", "figures")
                      if k in report}}
        if task.unit == "tokens":
            summary.update(language_model_extras(data, model, env, dtype, autocast, task, report, progress))
        if env.is_main:
            log.info("evaluated %s (step %d)%s: val %s, firing rate %.4f", cfg.ckpt, state["step"], folding(report),
                     task.describe(result), result["firing_rate"].get("overall", 0.0))
            if "test" in summary:
                log.info("test split: %s", task.describe(summary["test"]))
            log.info("\n%s", format_report(report))
            summary_file.write_or_fail(run_dir / summary_file.NAME, summary,  # the results above are logged first
                                       f"evaluated {cfg.ckpt}: val {task.describe(result)}",
                                       "free disk space or point paths.output at another disk, then evaluate again")
            logger = instantiate(cfg.logger)
            logger.start(str(run_dir), {"eval": OmegaConf.to_container(cfg, resolve=True),
                                        "train": OmegaConf.to_container(train_cfg, resolve=True)})
            metrics = flat_metrics(report)
            logger.log(metrics, step=int(state["step"]))
            logger.log_images({f"eval/{name}": path for name, path in report.get("figures", {}).items()},
                              step=int(state["step"]))
            logger.summary(metrics)
            logger.finish()
        return summary
    finally:
        distributed.cleanup()
