"""Evaluate a checkpoint: ``python eval.py ckpt=outputs/train/<run>/checkpoints/best.pt``.

The model, neuron and data settings come from the checkpoint; ``key=value`` arguments override them
(``paths.data=/data``, ``dataset.batch_size=256``, ``trainer.accelerator=cpu``).
"""

import sys

import hydra
from omegaconf import DictConfig

from snn_engine import cli, run

# settings of eval.yaml itself; every other key=value overrides the checkpoint's training config
EVAL_KEYS = ("ckpt", "use_ema", "logger", "mfi", "position_bn", "mfi_compare_batches", "nir", "figures", "energy")
OWN_KEYS = EVAL_KEYS + ("paths", "run_name", "task_name", "hydra")


def allow_checkpoint_overrides(argv: list[str]) -> list[str]:
    """``trainer.precision=64`` -> ``+trainer.precision=64``: keys of the training config are not in eval.yaml,
    so Hydra must add them instead of rejecting them; the checkpoint's config then takes them."""
    return [arg if "=" not in arg or arg.startswith(("+", "~", "-")) or arg.split("=")[0].split(".")[0].split("/")[0]
            in OWN_KEYS else "+" + arg for arg in argv]


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    overrides = [o for o in cli.task_overrides() if o.split("=")[0].lstrip("+").split(".")[0] not in EVAL_KEYS]
    status = cli.guarded(lambda: run.evaluate(cfg, cli.run_dir(), overrides) and 0)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    sys.argv[1:] = allow_checkpoint_overrides(sys.argv[1:])
    main()
