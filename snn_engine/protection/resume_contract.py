"""What a resumed run may change, and how the changes it may make are applied.

A checkpoint stores the resolved config it was trained with. Resuming compares it, key by key, with the new
command's resolved config:

- :data:`MAY_CHANGE` keys change freely (where the run writes and logs, how often it validates, how far it goes);
  ``trainer.epochs`` / ``trainer.max_steps`` rebuild the learning-rate schedule for the new length from where the run
  stands, so the lr is what a run of that length would have at that step;
- :data:`APPLIED` keys (``optimizer.lr``, ``trainer.grad_clip``) take their new value, logged;
- every other difference (model, neuron, ``T``, data set, batch size, seed, precision, ...) is refused with one
  line listing each change (``model.T: 4 -> 6``), unless ``trainer.resume_allow_changes=true``.
"""

from __future__ import annotations

from typing import Any

from snn_engine.errors import UserError

MAY_CHANGE = (
    "paths.", "logger.", "run_name", "task_name",
    "trainer.resume", "trainer.resume_allow_changes", "trainer.epochs", "trainer.max_steps", "trainer.stop_after_steps",
    "trainer.accelerator", "trainer.log_every_n_steps", "trainer.val_every_n_steps", "trainer.val_every_n_epochs",
    "trainer.limit_val_batches", "trainer.progress_bar", "trainer.compile", "trainer.compile_backend",
    "trainer.compile_baseline_steps", "dataset.num_workers", "dataset.root",
    "model.spike_storage", "model.checkpoint_stages",  # memory only: the same numbers either way (tested)
    "model.conv", "model.conv_chunk", "model.conv_precision", "model.fuse_soma",  # the current path: the same currents to rounding (tests/test_chunked_conv.py)
)
APPLIED = ("optimizer.lr", "trainer.grad_clip")
LENGTH_KEYS = ("trainer.epochs", "trainer.max_steps")


def flatten(node: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": [1, 2]}`` (lists are compared whole)."""
    if not isinstance(node, dict):
        return {prefix: node}
    flat: dict[str, Any] = {}
    for key, value in node.items():
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    if not node and prefix:
        flat[prefix] = {}
    return flat


def _matches(key: str, patterns: tuple[str, ...]) -> bool:
    return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".") for p in patterns)


def differences(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
    """Every key whose value differs between two resolved configs: ``{key: (old, new)}`` (absent = ``"<unset>"``)."""
    a, b = flatten(old), flatten(new)
    return {key: (a.get(key, "<unset>"), b.get(key, "<unset>")) for key in sorted(set(a) | set(b))
            if a.get(key, "<unset>") != b.get(key, "<unset>")}


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) and value != "<unset>" else str(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check(old: dict | None, new: dict, path, allow_changes: bool) -> dict[str, tuple[Any, Any]]:
    """The changes resuming from ``path`` makes (all of them when ``allow_changes``); raise :class:`UserError` listing
    the forbidden ones otherwise. ``old`` is the checkpoint's resolved config (None: an old checkpoint without one)."""
    if old is None:
        return {}
    changes = differences(old, new)
    forbidden = {k: v for k, v in changes.items() if not _matches(k, MAY_CHANGE + APPLIED)}
    if forbidden and not allow_changes:
        listed = ", ".join(f"{k}: {_show(a)} -> {_show(b)}" for k, (a, b) in list(forbidden.items())[:12])
        more = f" (and {len(forbidden) - 12} more)" if len(forbidden) > 12 else ""
        raise UserError(f"resuming {path} would change settings it was trained with: {listed}{more}; undo them, start "
                        "a new run, or pass trainer.resume_allow_changes=true to accept them")
    return {k: v for k, v in changes.items() if not _matches(k, ("paths.", "logger.", "run_name", "task_name",
                                                                 "trainer.resume"))}


def describe(changes: dict[str, tuple[Any, Any]]) -> str:
    """One log line of the changes a resume applies."""
    notes = {key: " (schedule rebuilt for the new length)" for key in LENGTH_KEYS}
    notes.update({key: " (applied)" for key in APPLIED})
    return "; ".join(f"{k}: {_show(a)} -> {_show(b)}{notes.get(k, '')}" for k, (a, b) in changes.items())
