"""Classes that moved inside the project, so that checkpoints written before a move keep loading.

A checkpoint names classes by dotted path: its model's ``model_target`` and every ``_target_`` of its training
config (``config``, resolved, and ``config_raw``, as written). When a class moves, :data:`MOVED` maps the old path to
the new one and :func:`update_targets` rewrites a checkpoint as :func:`snn_engine.checkpoint.load` reads it, before
anything checks, imports or compares what it names. So resuming, ``eval.py`` and the LM tools see only current paths
(a resumed run's config does not differ from its checkpoint's by the move, and :mod:`snn_engine.trust` allows only
targets that ``conf/`` names), and the old modules need not stay behind as aliases. The paths here are strings; the
engine imports no model family.
"""

from __future__ import annotations

from typing import Any

MOVED = {
    # issue 17: spiking_ssm's language model went into the spiking_ssm/lm/ folder
    "spiking_ssm.language_model.SpikingSSMLanguageModel": "spiking_ssm.lm.language_model.SpikingSSMLanguageModel",
    # issue 26: the engine in rooms (training loop) and SpikingSSM's somas in one sub-package
    "snn_engine.losses.TimeAveragedCrossEntropy": "snn_engine.training.losses.TimeAveragedCrossEntropy",
    "snn_engine.losses.TETLoss": "snn_engine.training.losses.TETLoss",
    "snn_engine.losses.TokenNLL": "snn_engine.training.losses.TokenNLL",
    "snn_engine.optim.warmup_cosine": "snn_engine.training.optim.warmup_cosine",
    "spiking_ssm.neurons.make_ssm_neuron": "spiking_ssm.somas.make_ssm_neuron",
}


def current(target: Any) -> Any:
    """Where ``target`` lives now (itself unless it moved; non-strings unchanged)."""
    return MOVED.get(target, target) if isinstance(target, str) else target


def _rewrite(node: Any) -> Any:
    """A copy of plain container ``node`` with every ``_target_`` value replaced by :func:`current`."""
    if isinstance(node, dict):
        return {key: current(value) if key == "_target_" else _rewrite(value) for key, value in node.items()}
    if isinstance(node, list):
        return [_rewrite(value) for value in node]
    return node


def update_targets(state: dict) -> dict:
    """Checkpoint ``state`` with moved paths in ``model_target``, ``config`` and ``config_raw`` rewritten (the same
    dict, updated in place and returned; other entries untouched)."""
    if "model_target" in state:
        state["model_target"] = current(state["model_target"])
    for key in ("config", "config_raw"):
        if key in state:
            state[key] = _rewrite(state[key])
    return state
