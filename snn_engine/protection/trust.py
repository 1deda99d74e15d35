"""Configs read from checkpoints build only what the project's own configs build.

A checkpoint stores its training config, and ``eval.py``, ``generate`` and the LM tools rebuild the model and the
data set from it with Hydra's ``instantiate``, which imports and calls whatever ``_target_`` names. A checkpoint from
a stranger could name ``numpy.savetxt`` or ``shutil.copyfile``, directly or through an interpolation that only
produces the dangerous section when it is resolved (``model: ${oc.select:missing,{_target_: builtins.open, ...}}``).
So the stored config is treated as data, and every loader gets it through :func:`trusted_config` (via
:func:`snn_engine.run.checkpoint_config`), which

1. refuses strings that call a resolver other than :data:`SAFE_RESOLVERS` (``oc.env`` only for ``SNN_*`` variables),
   and targets written out that step 3 would refuse;
2. builds the OmegaConf config, applies the command line's overrides and resolves it completely, with only those
   resolvers registered (this module's own implementations, whatever else the process has registered); ``${data:NAME}``
   stays as written, since it reads an attribute of the data set that is built later;
3. checks every node of the resolved result (:func:`check_resolved`): every ``_target_`` is a plain string equal to
   one that a YAML file under ``conf/`` names, or one listed in ``$SNN_TRUSTED_TARGETS`` (a plug-in's classes), and
   never inside a list; Hydra's other switches (:data:`SWITCHES`) appear only with a target and value that a ``conf/``
   file uses (``_partial_: true`` on the optimizers, schedulers and neurons); keys are strings; no string holds an
   interpolation that a later resolution would run (except the exact ``${data:NAME}``); ``model``, ``neuron`` and
   ``dataset`` are mappings with a target;
4. returns a config made from the resolved plain container, so nothing later re-resolves anything from the file.

Every refusal is one :class:`UserError` line, raised before anything the config names is imported or called.
``torch.load(..., weights_only=True)`` (:func:`snn_engine.protection.checkpoint.load`) already keeps pickles from running code.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.basecontainer import BaseContainer

from snn_engine.errors import UserError

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
SAFE_RESOLVERS = frozenset({"oc.select", "now", "data", "run_suffix", "oc.env"})
#: Hydra's instantiation keys besides ``_target_`` (each changes what ``instantiate`` calls or how)
SWITCHES = ("_partial_", "_args_", "_recursive_", "_convert_")
#: the sections that the loaders instantiate
SECTIONS = ("model", "neuron", "dataset")
_RESOLVER_CALL = re.compile(r"\$\{\s*([\w.\-]+)\s*:")
_ENV_CALL = re.compile(r"\$\{\s*oc\.env\s*:\s*([^,}]*)")
_DEFERRED = re.compile(r"\$\{data:[A-Za-z][A-Za-z0-9_]*\}")


# ------------------------------------------------------------------------------------------ what conf/ builds
def _conf_mappings(node: Any) -> Iterator[dict]:
    """Every mapping inside a YAML document."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _conf_mappings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _conf_mappings(value)


@functools.lru_cache(maxsize=1)
def _conf_usage() -> tuple[frozenset[str], frozenset[tuple[str, str, Any]]]:
    """(every ``_target_`` that a YAML file under ``conf/`` names, every ``(target, switch, value)`` they use)."""
    targets, switches = set(), set()
    for path in sorted(CONF_DIR.rglob("*.yaml")):
        for mapping in _conf_mappings(yaml.safe_load(path.read_text(encoding="utf-8"))):
            target = mapping.get("_target_")
            if isinstance(target, str):
                targets.add(target)
                switches.update((target, key, mapping[key]) for key in SWITCHES if key in mapping)
    return frozenset(targets), frozenset(switches)


def config_targets() -> frozenset[str]:
    """Every ``_target_`` named by a YAML file under ``conf/`` (``conf/local/`` included)."""
    return _conf_usage()[0]


def config_switches() -> frozenset[tuple[str, str, Any]]:
    """Every ``(target, switch, value)`` that a YAML file under ``conf/`` uses, e.g.
    ``("torch.optim.AdamW", "_partial_", True)``."""
    return _conf_usage()[1]


def trusted_targets() -> frozenset[str]:
    """The targets of ``conf/`` plus the exact names listed in ``$SNN_TRUSTED_TARGETS`` (comma-separated: classes of
    a plug-in package whose configs live elsewhere; they take no switches)."""
    extra = {name.strip() for name in os.environ.get("SNN_TRUSTED_TARGETS", "").split(",") if name.strip()}
    return config_targets() | extra


# --------------------------------------------------------------------------------------------------- helpers
def _walk(node: Any, key: str = "", in_list: bool = False):
    """Yield ``(dotted key, node, inside a list)`` for every mapping, sequence and leaf inside a plain container."""
    yield key, node, in_list
    if isinstance(node, dict):
        for name, value in node.items():
            yield from _walk(value, f"{key}.{name}" if key else str(name), in_list)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _walk(value, f"{key}[{index}]", True)


def _refuse(source: str, reason: str) -> UserError:
    return UserError(f"refusing to load {source}: {reason}; nothing was run or written (only checkpoints whose "
                     "config builds what conf/ builds can be loaded)")


def _one_line(error: BaseException) -> str:
    """The message of the :class:`UserError` behind ``error`` if there is one, else its first line."""
    seen = set()
    cause: BaseException | None = error
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, UserError):
            return str(cause)
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    text = str(error).strip().splitlines()
    key = getattr(error, "full_key", None)
    return f"{type(error).__name__}{' at ' + str(key) if key else ''}: {text[0] if text else ''}"


# ------------------------------------------------------------------------ 1. what is written out
def precheck(config: Any, source: str) -> None:
    """Raise :class:`UserError` if a string inside plain container ``config`` calls a resolver outside
    :data:`SAFE_RESOLVERS` or reads an environment variable other than ``SNN_*``, or if a ``_target_`` written out
    (no interpolation) is not trusted: refused before resolving, which might fail first on the rest of the config."""
    allowed = trusted_targets()
    for key, value, _ in _walk(config):
        target = value.get("_target_") if isinstance(value, dict) else None
        if isinstance(target, str) and "${" not in target and target not in allowed:
            raise _refuse(source, f"{key + '.' if key else ''}_target_={target!r} is not a target that the project's "
                                  "configs use")
        if isinstance(value, str) and "${" in value:
            for name in _RESOLVER_CALL.findall(value):
                if name not in SAFE_RESOLVERS:
                    raise _refuse(source, f"{key} calls the resolver {name!r} (allowed: "
                                          f"{', '.join(sorted(SAFE_RESOLVERS))})")
            for variable in _ENV_CALL.findall(value):
                if not variable.strip().startswith("SNN_"):
                    raise _refuse(source, f"{key} reads the environment variable {variable.strip()!r} "
                                          "(oc.env may read SNN_* variables only)")


# ------------------------------------------------------------------------- 2. resolution, safe resolvers only
_NO_DEFAULT = object()


def _env(key: str, default: Any = _NO_DEFAULT) -> Any:
    from omegaconf.resolvers.oc import env

    if not str(key).startswith("SNN_"):
        raise UserError(f"an interpolation reads the environment variable {key!r} (oc.env may read SNN_* only)")
    return env(key) if default is _NO_DEFAULT else env(key, default)


def _deferred_data(name: str) -> str:
    """``${data:NAME}`` as text: the data set's attribute is read when the model is built (:func:`snn_engine.run.
    build_model`), from the config this module returns."""
    text = f"${{data:{name}}}"
    if not isinstance(name, str) or not _DEFERRED.fullmatch(text):
        raise UserError(f"${{data:{name}}} does not name a data set attribute (letters, digits and _)")
    return text


def _safe_resolvers() -> dict[str, tuple[Callable, bool]]:
    from omegaconf.resolvers.oc import select

    from snn_engine.protection.run_folder import run_suffix

    return {"oc.select": (select, False), "oc.env": (_env, False), "data": (_deferred_data, False),
            "now": (lambda pattern: datetime.now().strftime(pattern), True), "run_suffix": (run_suffix, False)}


@contextlib.contextmanager
def only_safe_resolvers() -> Iterator[None]:
    """While inside, OmegaConf knows only :data:`SAFE_RESOLVERS`, as implemented here (``oc.env`` refuses non-``SNN_*``
    variables, ``data`` stays deferred); the process's own registry comes back afterwards."""
    registry = BaseContainer._resolvers  # OmegaConf's one registry (2.1 to 2.3): name -> wrapped resolver
    saved = dict(registry)
    registry.clear()
    try:
        for name, (function, cache) in _safe_resolvers().items():
            OmegaConf.register_new_resolver(name, function, use_cache=cache)
        yield
    finally:
        registry.clear()
        registry.update(saved)


# --------------------------------------------------------------------------------- 3. the resolved result
def _check_mapping(key: str, node: dict, in_list: bool, source: str, allowed: frozenset[str]) -> None:
    where = f"{key}." if key else ""
    for name in node:
        if not isinstance(name, str):
            raise _refuse(source, f"{where}{name!r} is a {type(name).__name__} key, not a string")
    target = node.get("_target_")
    if "_target_" in node:
        if in_list:
            raise _refuse(source, f"{where}_target_={target!r} stands inside a list, where no conf/ file puts a target")
        if not isinstance(target, str) or target not in allowed:
            raise _refuse(source, f"{where}_target_={target!r} is not a target that the project's configs use")
    for switch in SWITCHES:
        if switch in node and not _switch_used(target, switch, node[switch]):
            raise _refuse(source, f"{where}{switch}={node[switch]!r} is a Hydra switch that no conf/ file uses "
                                  f"with {'_target_=' + repr(target) if target is not None else 'no target'}")


def _switch_used(target: Any, switch: str, value: Any) -> bool:
    """Whether a ``conf/`` file gives ``target`` this switch with this value, of the same type (``1`` is not
    ``true``)."""
    return any(t == target and s == switch and type(v) is type(value) and v == value for t, s, v in config_switches())


def _check_tree(node: Any, source: str, key: str = "", in_list: bool = False) -> None:
    """Step 3 on every node of resolved plain container ``node``, found at ``key`` (inside a list: ``in_list``)."""
    allowed = trusted_targets()
    for where, value, listed in _walk(node, key, in_list):
        if isinstance(value, dict):
            _check_mapping(where, value, listed, source, allowed)
        elif isinstance(value, str) and "${" in value and not _DEFERRED.fullmatch(value):
            raise _refuse(source, f"{where} still holds an interpolation after resolution ({value[:60]!r}), which a "
                                  "later resolution would run")


def check_resolved(config: Any, source: str) -> None:
    """Raise :class:`UserError` unless resolved plain container ``config`` only builds trusted targets (see the module
    docstring, step 3). ``source`` names the file in the message."""
    if not isinstance(config, dict):
        raise _refuse(source, f"its config is a {type(config).__name__}, not a mapping")
    _check_tree(config, source)
    for section in SECTIONS:
        if not isinstance(config.get(section), dict) or "_target_" not in config[section]:
            raise _refuse(source, f"its {section} section is not a mapping with a _target_ "
                                  f"({type(config.get(section)).__name__}); pass a checkpoint written by train.py")


def _check_parts(node: Any, source: str, key: str = "", in_list: bool = False) -> None:
    """Step 3 on every part of the unresolved config ``node`` that resolves on its own (called, inside the safe
    resolvers, when the whole does not resolve: a dangerous part is named rather than the failure elsewhere)."""
    try:
        part = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
    except Exception:  # noqa: BLE001 - then its children, one by one
        listed = OmegaConf.is_list(node)
        for name in (range(len(node)) if listed else list(node.keys())):
            try:
                child = node[name]
            except Exception:  # noqa: BLE001 - the part that does not resolve
                continue
            where = f"{key}[{name}]" if listed else f"{key}.{name}" if key else str(name)
            _check_parts(child, source, where, in_list or listed)
        return
    _check_tree(part, source, key, in_list)


# --------------------------------------------------------------------------------------------- the one door
def trusted_config(raw: Any, source: str, edit: Callable[[DictConfig], None] | None = None) -> DictConfig:
    """The config that a checkpoint's stored ``raw`` config (a plain container) builds, resolved, checked and free of
    interpolations other than ``${data:NAME}``: the only way a loader gets a checkpoint's config. ``edit`` applies the
    command line's overrides to the unresolved config (inside the safe resolvers). Raises :class:`UserError`."""
    source = str(source)
    try:
        if not isinstance(raw, dict):
            raise _refuse(source, f"its config is a {type(raw).__name__}, not a mapping")
        precheck(raw, source)
        with only_safe_resolvers():
            try:
                cfg = OmegaConf.create(raw)
                if edit is not None:
                    edit(cfg)
            except UserError:
                raise  # a refusal, or the overrides' own one-line error
            except Exception as error:  # noqa: BLE001 - OmegaConf raises many types; each becomes one line
                raise _refuse(source, f"its config cannot be read ({_one_line(error)})") from None
            precheck(OmegaConf.to_container(cfg, resolve=False), source)  # the overrides' values too
            try:
                resolved = OmegaConf.to_container(cfg, resolve=True)
            except Exception as error:  # noqa: BLE001
                _check_parts(cfg, source)
                raise _refuse(source, f"its config cannot be resolved ({_one_line(error)})") from None
        check_resolved(resolved, source)
        return OmegaConf.create(resolved)
    except RecursionError:
        raise _refuse(source, "its config is nested too deeply") from None


def require_resolved(cfg: DictConfig, source: str) -> None:
    """Raise :class:`UserError` unless ``cfg`` is a config that :func:`trusted_config` could have returned: checked as
    written, without resolving anything (for functions that take a config and instantiate from it)."""
    check_resolved(OmegaConf.to_container(cfg, resolve=False), str(source))
