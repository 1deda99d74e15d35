"""Train a spiking network: ``python train.py model=sparse_mlp_s dataset=imagenet paths.data=/data``.

Several GPUs or nodes: ``torchrun --nproc_per_node=8 train.py experiment=imagenet/mlp_spe_t``.
The default (``python train.py``) trains a small spiking sparse-MLP on the embedded shapes data on CPU.
"""

import sys

import hydra
from omegaconf import DictConfig

from snn_engine import cli, run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> None:
    def job():
        summary = run.train(cfg, cli.run_dir())
        return 128 + summary["stop_signal"] if summary["stop_signal"] else 0

    status = cli.guarded(job)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
