"""Experiment loggers: Weights & Biases (offline by default) or nothing.

Offline runs are written under ``<run_dir>/wandb`` and can be uploaded later with
``wandb sync <run_dir>/wandb/offline-run-*``. Only rank 0 logs.
"""

from __future__ import annotations

import os
from typing import Any

from snn_engine.errors import UserError

WANDB_MODES = ("online", "offline", "disabled")


class NullLogger:
    """Logs nothing (``logger=none``)."""

    name = "none"

    def start(self, run_dir: str, config: dict) -> None:
        pass

    def log(self, metrics: dict[str, Any], step: int) -> None:
        pass

    def summary(self, values: dict[str, Any]) -> None:
        pass

    def log_images(self, images: dict[str, str], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbLogger(NullLogger):
    """W&B run in ``mode`` online/offline/disabled (the ``WANDB_MODE`` environment variable wins)."""

    name = "wandb"

    def __init__(self, project: str = "snn-research", mode: str = "offline", entity: str | None = None,
                 name: str | None = None, tags: list[str] | None = None, group: str | None = None):
        self.project, self.entity, self.run_name, self.group = project, entity, name, group
        self.mode = os.environ.get("WANDB_MODE", mode)
        if self.mode not in WANDB_MODES:
            source = "the WANDB_MODE environment variable" if "WANDB_MODE" in os.environ else "logger.mode"
            raise UserError(f"W&B mode {self.mode!r} (from {source}) is not one of {', '.join(WANDB_MODES)}; "
                            "set logger.mode=offline, or logger=none")
        if not isinstance(project, str) or not project:
            raise UserError(f"logger.project={project!r} must be a non-empty name; set logger.project=NAME")
        self.tags = list(tags or [])
        self.run = None

    def start(self, run_dir: str, config: dict) -> None:
        import wandb

        self.run = wandb.init(project=self.project, entity=self.entity, name=self.run_name, group=self.group,
                              tags=self.tags, mode=self.mode, dir=run_dir, config=config, reinit="finish_previous")

    def log(self, metrics: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(metrics, step=step)

    def summary(self, values: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update(values)

    def log_images(self, images: dict[str, str], step: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({key: wandb.Image(path) for key, path in images.items()}, step=step)

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
