"""Evaluate a checkpoint: ``python eval.py ckpt=outputs/train/<run>/checkpoints/best.pt``.

The model, neuron and data settings come from the checkpoint; ``key=value`` arguments override them
(``paths.data=/data``, ``dataset.batch_size=256``, ``trainer.accelerator=cpu``). A key the checkpoint's config does not
have is an error with the nearest known keys (``+key=value`` adds one on purpose); a config group (``model=...``)
cannot replace the checkpoint's model or data.
"""

import sys

import hydra
from omegaconf import DictConfig

from snn_engine import cli, run

# settings of eval.yaml itself; every other key=value overrides the checkpoint's training config
EVAL_KEYS = ("ckpt", "use_ema", "logger", "mfi", "position_bn", "mfi_compare_batches", "nir", "figures", "energy",
             "neurobench")
OWN_KEYS = EVAL_KEYS + ("paths", "run_name", "task_name", "hydra")
USER_ADDED: set[str] = set()  # keys the user wrote as +key=value


def allow_checkpoint_overrides(argv: list[str]) -> list[str]:
    """``trainer.precision=64`` -> ``+trainer.precision=64``: keys of the training config are not in eval.yaml,
    so Hydra must add them instead of rejecting them; the checkpoint's config then takes them (and
    :func:`snn_engine.run.checkpoint_config` refuses keys it does not have)."""
    return [arg if "=" not in arg or arg.startswith(("+", "~", "-")) or arg.split("=")[0].split(".")[0].split("/")[0]
            in OWN_KEYS else "+" + arg for arg in argv]


def refuse_group_overrides(argv: list[str]) -> str | None:
    """The one-line error for ``model=...``-style arguments (the checkpoint fixes its model, data and recipe)."""
    groups = sorted(p.name for p in cli.CONF_DIR.iterdir() if p.is_dir() and p.name not in ("paths", "logger", "hydra"))
    for arg in argv:
        key = arg.split("=", 1)[0].lstrip("+~")
        if "=" in arg and "." not in key and key in groups:
            return (f"eval.py takes the {key} from the checkpoint, so {arg} cannot replace it; change one setting with "
                    f"{key}.KEY=VALUE, or evaluate a checkpoint trained with that {key}")
    return None


def eval_config_keys(argv: list[str]) -> list[str]:
    """Every dotted key of eval.yaml with its paths group and the chosen logger (``logger=...`` in ``argv``)."""
    from omegaconf import OmegaConf

    from snn_engine.protection.resume_contract import flatten

    logger = next((a.split("=", 1)[1] for a in argv if a.startswith("logger=")), "wandb")
    node = OmegaConf.to_container(OmegaConf.load(cli.CONF_DIR / "eval.yaml"))
    node.pop("defaults", None)
    node["paths"] = OmegaConf.to_container(OmegaConf.load(cli.CONF_DIR / "paths" / "default.yaml"))
    logger_file = cli.CONF_DIR / "logger" / f"{logger}.yaml"
    node["logger"] = OmegaConf.to_container(OmegaConf.load(logger_file)) if logger_file.is_file() else {}
    return list(flatten(node))


def refuse_unknown_own_keys(argv: list[str]) -> str | None:
    """The one-line error for a misspelt setting of eval.py itself (``paths.dta=``), with the closest keys."""
    from snn_engine.run import suggest

    known = eval_config_keys(argv)
    for arg in argv:
        key = arg.split("=", 1)[0]
        top = key.split(".")[0]
        if "=" in arg and not arg.startswith(("+", "~", "-")) and top in OWN_KEYS and top not in ("hydra", "logger"):
            if key not in known and not any(k.startswith(key + ".") for k in known):
                return f"unknown setting {key}{suggest(key, known)}; eval.py has no such key"
    return None


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    overrides = [o for o in cli.task_overrides() if o.split("=")[0].lstrip("+").split(".")[0] not in EVAL_KEYS]
    status = cli.guarded(lambda: run.evaluate(cfg, cli.run_dir(), overrides, frozenset(USER_ADDED)) and 0)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    refused = refuse_group_overrides(sys.argv[1:]) or refuse_unknown_own_keys(sys.argv[1:])
    if refused:
        print(f"error: {refused}", file=sys.stderr)
        sys.exit(1)
    USER_ADDED.update(arg.split("=", 1)[0][1:] for arg in sys.argv[1:] if arg.startswith("+") and "=" in arg)
    sys.argv[1:] = allow_checkpoint_overrides(sys.argv[1:])
    main()
