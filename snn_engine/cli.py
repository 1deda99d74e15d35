"""Shared behaviour of the ``train.py`` / ``eval.py`` entrypoints: one-line errors, no leftovers."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Callable

from hydra.core.hydra_config import HydraConfig

from snn_engine.protection import run_folder
from snn_engine.errors import RunFailed, UserError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


def run_dir() -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def task_overrides() -> list[str]:
    """The ``key=value`` overrides given on the command line (Hydra's own settings excluded)."""
    return [o for o in HydraConfig.get().overrides.task if not o.startswith(("hydra.", "hydra/"))]


def user_error_in(error: BaseException) -> UserError | None:
    """The :class:`UserError` behind ``error``: itself, or the cause of a wrapper such as Hydra's
    ``InstantiationException`` (raised when a model or data constructor rejects its config); else ``None``."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, UserError):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def guarded(main: Callable[[], int | None]) -> int:
    """Run ``main`` in the run folder this process claimed (:mod:`snn_engine.protection.run_folder`); a :class:`UserError` (also
    one wrapped by Hydra's instantiation) becomes one line on stderr and exit status 1, and a run that failed before
    it started leaves nothing behind (one that started and failed, :class:`RunFailed`, keeps its folder)."""
    try:
        run_folder.check_claim()
        return int(main() or 0)
    except Exception as raised:
        error = user_error_in(raised)
        if error is None:
            raise
        logging.getLogger("snn_engine").debug("user error", exc_info=True)
        print("error: " + " ".join(line.strip() for line in str(error).splitlines()), file=sys.stderr)
        if not isinstance(error, RunFailed):  # a run that started keeps its folder: its log says what it did
            run_folder.remove_leftovers(run_dir())
        return 1
