"""Rebuild a trained SpikingSSM language model and its vocabulary from an engine checkpoint, for generation.

    model, vocab, cfg = load_model("outputs/.../best.pt", ["paths.data=/data"], use_ema=False)

The checkpoint (``torch.load(weights_only=True)``) holds the weights, the training config (``config_raw``) and,
when written by a trainer that stores ``data.checkpoint_extras()``, the vocabulary (``vocab``:
:mod:`snn_engine.data.language.record`). With it no data set is read: the words come from the checkpoint, so a
missing or different data copy cannot change the text. An older checkpoint without it falls back to rebuilding
the data set of its config, with a warning.

Everything the config names (model, neuron and, for old checkpoints, data ``_target_``s) is imported and built in
one function, :func:`build_from_config`, from the config of :func:`snn_engine.run.checkpoint_config` (resolved and
checked by :mod:`snn_engine.protection.trust`; checked again here as given, so no unchecked config is built from). Override keys
(``section.key=value``) must exist in the stored config (``+section.key=value`` adds one); a misspelt key is a
one-line error with the closest existing key.
"""

from __future__ import annotations

import warnings

from omegaconf import DictConfig, OmegaConf

from snn_engine.protection import checkpoint as ckpt_io
from snn_engine.data.language.record import RECORD_KEY, vocab_from_record
from snn_engine.errors import UserError
from spiking_ssm.lm.language_model import SpikingSSMLanguageModel


class CheckpointVocabulary:
    """What a model config reads from its data set (``${data:vocab_size}``) when the vocabulary comes from the
    checkpoint: ``vocab``, ``vocab_size = num_classes = V``, ``task``, ``name``; other attributes are ``None``."""

    task = "language_model"

    def __init__(self, vocab, name: str = "") -> None:
        self.vocab, self.name = vocab, name
        self.vocab_size = self.num_classes = len(vocab)

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return None


def checkpoint_data(cfg: DictConfig, state: dict, source: object):
    """The vocabulary's holder: the checkpoint's record when present, else (older checkpoints) the data set of the
    config, rebuilt with a warning. Called by :func:`build_from_config` only."""
    if RECORD_KEY in state:
        return CheckpointVocabulary(vocab_from_record(state[RECORD_KEY], source), state[RECORD_KEY].get("data", ""))
    from hydra.utils import instantiate

    data = instantiate(cfg.dataset)
    vocab = getattr(data, "vocab", None)
    if vocab is None or not hasattr(vocab, "stoi") or not hasattr(vocab, "decode"):
        raise UserError(f"data set {cfg.dataset.get('_target_')} has no vocabulary (data.vocab with stoi/decode); "
                        "generation needs the tokenizer the model was trained with")
    where = data.where() if hasattr(data, "where") else cfg.dataset.get("_target_")
    warnings.warn(f"checkpoint {source} does not carry its vocabulary (written by an older version); the words come "
                  f"from {where}: if that is not the data copy the model was trained on, the text is wrong",
                  stacklevel=2)
    return data


def build_from_config(cfg: DictConfig, state: dict, source: object) -> tuple[SpikingSSMLanguageModel, object]:
    """(untrained model, vocabulary) of checkpoint ``state`` read from ``source``: the one place that imports or
    instantiates what its config names (model class check, data set of old checkpoints, neuron and model)."""
    from hydra.utils import get_class

    from snn_engine.run import build_model  # the engine's restore path (heavy import)
    from snn_engine.protection.trust import require_resolved

    require_resolved(cfg, str(source))  # cfg is checkpoint_config's: resolved and checked; nothing imported before
    target = OmegaConf.select(cfg, "model._target_")
    try:
        cls = get_class(str(target))
    except Exception:  # noqa: BLE001 - hydra raises several types for a missing class
        cls = None
    if cls is None or not issubclass(cls, SpikingSSMLanguageModel):
        raise UserError(f"checkpoint {source} holds a {target} model, not a SpikingSSM language model "
                        "(spiking_ssm.lm.language_model.SpikingSSMLanguageModel); pass a language-model checkpoint")
    data = checkpoint_data(cfg, state, source)
    return build_model(cfg, data), data.vocab


def load_model(ckpt: str, overrides: list[str], use_ema: bool = False):
    """(model in eval mode on CPU, vocabulary, training config) of an engine checkpoint of a language model."""
    from snn_engine.run import checkpoint_config

    state = ckpt_io.load(ckpt)
    added = frozenset(item.partition("=")[0][1:] for item in overrides if item.startswith("+"))
    cfg = checkpoint_config(state, overrides, ckpt, added=added)  # trusted config, known keys only
    model, vocab = build_from_config(cfg, state, ckpt)
    ckpt_io.check_compatible(state, model, str(cfg.model._target_), ckpt)
    weights = state["ema"] if use_ema else state["model"]
    if weights is None:
        raise UserError("use_ema=true but the checkpoint has no EMA weights; drop use_ema")
    model.load_state_dict(weights)
    return model.eval(), vocab, cfg
