"""Check a composed config's values (types and ranges) before anything is built or written.

Hydra checks that a key exists; it does not check that ``trainer.epochs=abc`` is a number. :func:`check_train_config`
reads every engine-owned setting once, against the rules below, and raises one :class:`UserError` naming the key, the
value and what it may be. Family-specific settings are checked by the constructors that take them.

Rules: ``int>=N``, ``int>=N|null``, ``size>=N``, ``seed``, ``float>0``, ``float>=0``, ``float>0|null``, ``bool``,
``choice:a|b|c``, ``str``. A rule ending in ``|null`` also accepts null; integers must be whole numbers (``2.0``
passes, ``2.5`` fails) within :mod:`snn_engine.protection.bounds`: ``int`` up to 2**63 - 1, ``size`` (counts and widths) up to
2**31 - 1, ``seed`` in [0, 2**32 - 1]. Every other integer of the config, wherever it is, must fit 64 bits
(:func:`check_integers`), so no value overflows on its way into torch.
"""

from __future__ import annotations

import math
from typing import Any

from omegaconf import DictConfig, OmegaConf

from snn_engine.protection.bounds import INT_MAX, INT_MIN, SEED_MAX, SIZE_MAX, out_of_range
from snn_engine.errors import UserError

TRAIN_RULES = {
    "seed": "seed",
    "trainer.accelerator": "choice:auto|cpu|cuda",
    "trainer.precision": "choice:auto|32|64|bf16|fp16",
    "trainer.epochs": "int>=1",
    "trainer.max_steps": "int>=-1|null",
    "trainer.grad_accum": "size>=1",
    "trainer.grad_clip": "float>0|null",
    "trainer.limit_train_batches": "int>=1|null",
    "trainer.limit_val_batches": "int>=1|null",
    "trainer.val_every_n_steps": "int>=1|null",
    "trainer.val_every_n_epochs": "int>=1",
    "trainer.log_every_n_steps": "int>=1",
    "trainer.sync_bn": "bool",
    "trainer.ema_decay": "float>0|null",
    "trainer.monitor_mode": "choice:auto|max|min",
    "trainer.stop_after_steps": "int>=1|null",
    "trainer.progress_bar": "bool",
    "trainer.compile_backend": "choice:inductor|aot_eager|eager",
    "trainer.compile_baseline_steps": "int>=0",
    "trainer.resume_allow_changes": "bool",
    "dataset.batch_size": "size>=1",
    "dataset.num_workers": "size>=0",
    "optimizer.lr": "float>0",
    "optimizer.weight_decay": "float>=0",
    "scheduler.warmup": "int>=0",
    "scheduler.total": "int>=1|null",
    "scheduler.interval": "choice:step|epoch",
    "model.T": "size>=1",
    "model.spike_storage": "choice:float|bool|bits",
    # widths and sizes of the model families and data sets that have them (absent keys are skipped)
    "model.dim": "size>=1",
    "model.d_model": "size>=1",
    "model.d_state": "size>=1",
    "model.n_layers": "size>=1",
    "model.patch_size": "size>=1",
    "dataset.train_size": "size>=1",
    "dataset.val_size": "size>=1",
    "dataset.seed": "seed",
    "logger.mode": "choice:online|offline|disabled",
    "logger.project": "str",
}

EVAL_RULES = {
    "use_ema": "bool",
    "mfi": "bool",
    "nir": "bool",
    "figures": "bool",
    "mfi_compare_batches": "int>=0",
    "position_bn": "choice:threshold|scale|replicate",
    "energy.e_ac": "float>=0",
    "energy.e_mac": "float>=0",
    "energy.convention": "choice:full|ssm_paper",
    "energy.samples": "int>=0",
    "neurobench": "bool",
    "logger.mode": "choice:online|offline|disabled",
}


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value == int(value):
        return int(value)
    if isinstance(value, str):
        try:
            return _as_int(float(value)) if value.strip() else None
        except ValueError:
            return None
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def violation(value: Any, rule: str) -> str | None:
    """What ``value`` should be under ``rule``, or None when it obeys it."""
    nullable = rule.endswith("|null")
    base = rule.removesuffix("|null")
    if value is None:
        return None if nullable else "a value, not null"
    or_null = " or null" if nullable else ""
    if base.startswith(("int>=", "size>=")) or base == "seed":
        low = 0 if base == "seed" else int(base.split(">=")[1])
        high = SEED_MAX if base == "seed" else SIZE_MAX if base.startswith("size") else INT_MAX
        number = _as_int(value)
        if number is not None and out_of_range(number, low, high) is None:
            return None
        if base.startswith("int>=") and (number is None or number < low):
            return f"a whole number >= {low}{or_null}"
        return f"a whole number in [{low}, {high}]{or_null}"
    if base.startswith("float"):
        number = _as_float(value)
        inclusive = ">=" in base
        bound = float(base.split(">=" if inclusive else ">")[-1])
        ok = number is not None and (number >= bound if inclusive else number > bound)
        return None if ok else f"a finite number {'>=' if inclusive else '>'} {bound:g}{or_null}"
    if base == "bool":
        return None if isinstance(value, bool) else "true or false"
    if base.startswith("choice:"):
        options = base[7:].split("|")
        return None if str(value) in options else "one of " + ", ".join(options)
    if base == "str":
        return None if isinstance(value, str) and value else "a non-empty string"
    raise ValueError(f"unknown rule {rule}")


def check(cfg: DictConfig, rules: dict[str, str], command: str = "") -> None:
    """Raise :class:`UserError` for the first setting of ``cfg`` that breaks its rule (keys absent from ``cfg`` are
    skipped: not every model has ``model.T``)."""
    for key, rule in rules.items():
        try:
            value = OmegaConf.select(cfg, key, throw_on_missing=True)
        except Exception as error:  # a missing mandatory value or a broken interpolation
            raise UserError(f"{key} cannot be read ({type(error).__name__}: {str(error).splitlines()[0]}); "
                            f"set it with {command}{key}=VALUE") from None
        if value is None and OmegaConf.select(cfg, key, default="__absent__") == "__absent__":
            continue
        wanted = violation(value, rule)
        if wanted is not None:
            raise UserError(f"{key}={value!r} is invalid: it must be {wanted}; fix it with {key}=...")


def check_integers(cfg: DictConfig) -> None:
    """Raise :class:`UserError` for the first integer anywhere in ``cfg`` (lists included) that does not fit 64 bits."""
    wanted = f"a whole number in [{INT_MIN}, {INT_MAX}] (64 bits)"

    def walk(node, key: str) -> None:
        if isinstance(node, dict):
            for name, value in node.items():
                walk(value, f"{key}.{name}" if key else str(name))
        elif isinstance(node, list):
            for value in node:
                if isinstance(value, int) and not isinstance(value, bool) and not INT_MIN <= value <= INT_MAX:
                    raise UserError(f"{key} holds {value}, which is invalid: each entry must be {wanted}; fix it with "
                                    f"{key}=[...]")
                walk(value, key)
        elif isinstance(node, int) and not isinstance(node, bool) and not INT_MIN <= node <= INT_MAX:
            raise UserError(f"{key}={node} is invalid: it must be {wanted}; fix it with {key}=...")

    walk(OmegaConf.to_container(cfg, resolve=False), "")


def check_train_config(cfg: DictConfig) -> None:
    """Every engine setting of a ``train.yaml`` config, before any folder, data set or model is made."""
    check(cfg, TRAIN_RULES)
    check_integers(cfg)
    compile_mode = cfg.trainer.get("compile")
    if not isinstance(compile_mode, (bool, str)) and compile_mode is not None:
        raise UserError(f"trainer.compile={compile_mode!r} is invalid: use false, true or a torch.compile mode")
    if OmegaConf.select(cfg, "trainer.max_steps") == 0:
        raise UserError("trainer.max_steps=0 is invalid: it must be a whole number >= 1, or -1 or null for no limit")
    resume = cfg.trainer.get("resume")
    if resume is not None and not isinstance(resume, str):
        raise UserError(f"trainer.resume={resume!r} is invalid: use null, auto or the path of a checkpoint")


def max_steps(cfg: DictConfig) -> int | None:
    """``trainer.max_steps`` as a limit: None for no limit (null or -1)."""
    value = cfg.trainer.max_steps
    return None if value is None or int(value) == -1 else int(value)
