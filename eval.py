"""Evaluate a checkpoint: ``python eval.py ckpt=outputs/train/<run>/checkpoints/best.pt``.

The model, neuron and data settings come from the checkpoint; ``key=value`` arguments override them
(``paths.data=/data``, ``dataset.batch_size=256``, ``trainer.accelerator=cpu``).
"""

import sys

import hydra
from omegaconf import DictConfig

from snn_engine import cli, run


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> None:
    overrides = [o for o in cli.task_overrides() if not o.split("=")[0].lstrip("+") in ("ckpt", "use_ema") and not o.startswith("logger")]
    status = cli.guarded(lambda: run.evaluate(cfg, cli.run_dir(), overrides) and 0)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
