"""Configs read from checkpoints build only what the project's own configs build.

A checkpoint stores its training config, and ``eval.py``, ``generate`` and the LM tools rebuild the model and the
data set from it with Hydra's ``instantiate``, which imports and calls whatever ``_target_`` names. A checkpoint from
a stranger could name ``numpy.savetxt`` or ``shutil.copyfile``. So before anything is imported or instantiated from
such a config, :func:`check_config` requires:

- every ``_target_`` to be a plain string equal to one that a YAML file under ``conf/`` names (an exact allow-list:
  even the project's own helpers, such as a file writer, are refused unless a config instantiates them), or one that
  the user lists in ``$SNN_TRUSTED_TARGETS`` (a plug-in's classes);
- no Hydra instantiation switch that calls something else (``_args_`` is fine, ``_target_`` nested anywhere is
  checked the same way);
- interpolations to use only harmless resolvers (:data:`SAFE_RESOLVERS`); ``oc.env`` only for ``SNN_*`` variables.

``torch.load(..., weights_only=True)`` (:func:`snn_engine.checkpoint.load`) already keeps pickles from running code.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

from snn_engine.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SAFE_RESOLVERS = frozenset({"oc.select", "now", "data", "run_suffix", "oc.env"})
_TARGET_LINE = re.compile(r"^\s*_target_\s*:\s*([A-Za-z_][\w.]*)\s*(#.*)?$", re.MULTILINE)
_RESOLVER_CALL = re.compile(r"\$\{\s*([\w.\-]+)\s*:")
_ENV_CALL = re.compile(r"\$\{\s*oc\.env\s*:\s*([^,}]*)")


@functools.lru_cache(maxsize=1)
def config_targets() -> frozenset[str]:
    """Every ``_target_`` named by a YAML file under ``conf/`` (``conf/local/`` included)."""
    names = set()
    for path in CONF_DIR.rglob("*.yaml"):
        names.update(match.group(1) for match in _TARGET_LINE.finditer(path.read_text(encoding="utf-8")))
    return frozenset(names)


def trusted_targets() -> frozenset[str]:
    """The targets of ``conf/`` plus the exact names listed in ``$SNN_TRUSTED_TARGETS`` (comma-separated: classes of
    a plug-in package whose configs live elsewhere)."""
    extra = {name.strip() for name in os.environ.get("SNN_TRUSTED_TARGETS", "").split(",") if name.strip()}
    return config_targets() | extra


def _walk(node: Any, key: str = ""):
    """Yield ``(dotted key, node)`` for every mapping, sequence and leaf inside a plain container."""
    yield key, node
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _walk(value, f"{key}.{name}" if key else str(name))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _walk(value, f"{key}[{index}]")


def _refuse(source: str, reason: str) -> UserError:
    return UserError(f"refusing to load {source}: {reason}; nothing was run or written (only checkpoints whose "
                     "config builds what conf/ builds can be loaded)")


def check_config(config: Any, source: str) -> None:
    """Raise :class:`UserError` unless plain container ``config`` (e.g. a checkpoint's ``config_raw``) only builds
    trusted targets through safe interpolations. ``source`` names the file in the message."""
    if not isinstance(config, dict):
        raise _refuse(source, f"its config is a {type(config).__name__}, not a mapping")
    allowed = trusted_targets()
    for key, value in _walk(config):
        if isinstance(value, dict) and "_target_" in value:
            target = value["_target_"]
            if not isinstance(target, str) or target not in allowed:
                where = f"{key}._target_" if key else "_target_"
                raise _refuse(source, f"{where}={target!r} is not a target that the project's configs use")
        if isinstance(value, str) and "${" in value:
            for name in _RESOLVER_CALL.findall(value):
                if name not in SAFE_RESOLVERS:
                    raise _refuse(source, f"{key} calls the resolver {name!r}")
            for variable in _ENV_CALL.findall(value):
                if not variable.strip().startswith("SNN_"):
                    raise _refuse(source, f"{key} reads the environment variable {variable.strip()!r}")
