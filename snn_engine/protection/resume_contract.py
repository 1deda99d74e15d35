"""What a resumed run may change, and how the changes it may make are applied.

A checkpoint stores the resolved config it was trained with. Resuming compares it, key by key, with the new
command's resolved config:

- :data:`MAY_CHANGE` keys change freely (where the run writes and logs, how often it validates, how far it goes);
  ``trainer.epochs`` / ``trainer.max_steps`` rebuild the learning-rate schedule for the new length from where the run
  stands, so the lr is what a run of that length would have at that step;
- :data:`APPLIED` keys (``optimizer.lr``, ``trainer.grad_clip``) take their new value, logged;
- :data:`ADDED` keys, which configs gained later, count as unchanged where the checkpoint lacks them and their new
  value reproduces what it ran (e.g. ``neuron.leak`` null: SpikingJelly's LIF, as before it existed);
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
ANY = object()
# Keys added to the configs after checkpoints were written without them: absent from the checkpoint's config and,
# in the new one, resolving to the value that reproduces what older runs ran (ANY: read only through a key
# compared on its own) is no change.
ADDED = {
    "neuron.leak": None,  # issue 24: SpikingSSM's lif in the paper's arithmetic; null: SpikingJelly's LIF, as before
    "neuron_profiles.spiking_ssm.leak": ANY,  # read only through neuron.leak
}


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


def _added_unchanged(key: str, old: Any, resolve) -> bool:
    """Whether ``key`` is an :data:`ADDED` key absent from the checkpoint whose new value reproduces older runs."""
    if key not in ADDED or old != "<unset>":
        return False
    return ADDED[key] is ANY or resolve(key) == ADDED[key]


def check(old: dict | None, new: dict, path, allow_changes: bool, resolve=None) -> dict[str, tuple[Any, Any]]:
    """The changes resuming from ``path`` makes (all of them when ``allow_changes``); raise :class:`UserError` listing
    the forbidden ones otherwise. ``old`` is the checkpoint's config (None: an old checkpoint without one);
    ``resolve(key)`` gives a key's resolved value in the new config (default: its value in ``new``), for
    :data:`ADDED` keys."""
    if old is None:
        return {}
    resolve = resolve or (lambda key: flatten(new).get(key))
    changes = {k: v for k, v in differences(old, new).items() if not _added_unchanged(k, v[0], resolve)}
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
