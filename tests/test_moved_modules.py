"""What users wrote before ``spiking_ssm`` was regrouped into ``sdn/`` and ``lm/`` (issue 17) keeps working.

Checkpoints name the language model by its old class path (``spiking_ssm.language_model.SpikingSSMLanguageModel``);
:mod:`snn_engine.protection.moved_targets` renames it as the checkpoint is read, so it loads, generates and resumes like a new
one, and the old module is not kept as an alias. ``python -m spiking_ssm.generate`` and ``python -m
spiking_ssm.pretrain_sdn`` say their new names in one line on stderr and run the new modules.
"""

from __future__ import annotations

import importlib
import subprocess

import pytest
import torch

from snn_engine.protection import checkpoint as ckpt_io
from snn_engine.protection import trust
from snn_engine.protection.moved_targets import MOVED, update_targets
from tests.cli_fork import run_forked
from tests.helpers import REPO, compose_train
from tests.lm_fixtures import write_wikitext
from tests.test_lm_faults import lm_checkpoint

OLD_LM = "spiking_ssm.language_model.SpikingSSMLanguageModel"
NEW_LM = "spiking_ssm.lm.language_model.SpikingSSMLanguageModel"


def test_every_moved_target_is_a_configured_callable_and_its_old_module_is_gone():
    assert MOVED[OLD_LM] == NEW_LM
    for old, new in MOVED.items():
        assert new in trust.config_targets() and old not in trust.config_targets()
        module, _, name = new.rpartition(".")
        assert callable(getattr(importlib.import_module(module), name))  # a class or a factory function
        with pytest.raises(ModuleNotFoundError):  # no alias module left behind
            importlib.import_module(old.rpartition(".")[0])


def test_update_targets_renames_moved_targets_only():
    state = {"model_target": OLD_LM, "model": {"w": torch.zeros(1)},
             "config": {"model": {"_target_": OLD_LM, "note": OLD_LM}, "loss": {"_target_": "snn_engine.training.losses.TokenNLL"}},
             "config_raw": {"callbacks": [{"_target_": OLD_LM}], "model": {"_target_": OLD_LM}}}
    updated = update_targets(state)
    assert updated is state and state["model_target"] == NEW_LM
    assert state["config"] == {"model": {"_target_": NEW_LM, "note": OLD_LM},  # only _target_ values change
                               "loss": {"_target_": "snn_engine.training.losses.TokenNLL"}}
    assert state["config_raw"] == {"callbacks": [{"_target_": NEW_LM}], "model": {"_target_": NEW_LM}}
    assert update_targets({"x": 1}) == {"x": 1}


def _old_paths(node, renamed: list):
    """``node`` with every ``_target_`` that has moved put back at its old path (recorded in ``renamed``)."""
    before = {new: old for old, new in MOVED.items()}
    if isinstance(node, dict):
        return {k: (before[v] if k == "_target_" and v in before and not renamed.append(v) else _old_paths(v, renamed))
                for k, v in node.items()}
    if isinstance(node, list):
        return [_old_paths(v, renamed) for v in node]
    return node


def _as_written_before_the_move(path, out):
    """A copy of checkpoint ``path`` whose class paths are the old ones: the model's before issue 17, the
    scheduler's (and any other moved target the config names) before issue 26."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert state["model_target"] == NEW_LM
    state["model_target"] = OLD_LM
    for key in ("config", "config_raw"):
        renamed = []
        state[key] = _old_paths(state[key], renamed)
        assert {NEW_LM, "snn_engine.training.optim.warmup_cosine"} <= set(renamed), renamed
    torch.save(state, out)
    return out


@pytest.fixture
def old_and_new(tmp_path):
    wiki = write_wikitext(tmp_path / "data")
    new = lm_checkpoint(tmp_path / "run", wiki.root)
    return _as_written_before_the_move(new, tmp_path / "old.pt"), new, wiki


def test_a_checkpoint_naming_the_old_class_path_loads_and_generates_the_same(old_and_new, capsys):
    from spiking_ssm.lm.generate import main
    from spiking_ssm.lm.restore import load_model

    old, new, _ = old_and_new
    assert torch.load(old, weights_only=True)["config_raw"]["model"]["_target_"] == OLD_LM
    state = ckpt_io.load(old)
    assert state["model_target"] == NEW_LM and state["config_raw"]["model"]["_target_"] == NEW_LM
    model, vocab, cfg = load_model(str(old), [])
    assert type(model).__module__ == "spiking_ssm.lm.language_model" and cfg.model._target_ == NEW_LM
    texts = []
    for ckpt in (old, new):
        capsys.readouterr()
        assert main([f"ckpt={ckpt}", "prompt=The river is", "max_new_tokens=6", "temperature=0"]) == 0
        texts.append(capsys.readouterr().out.split("---")[0])
    assert texts[0] == texts[1] and len(texts[0].split()) == 9


def test_resuming_from_an_old_checkpoint_sees_no_change_from_the_move(old_and_new, tmp_path):
    from snn_engine.run import prepare_resume

    old, _, wiki = old_and_new
    cfg = compose_train(["model=spiking_ssm_lm", "dataset=wikitext103", "neuron=lif", "logger=none",
                         f"paths.data={wiki.root}", "dataset.vocab_size=null", "dataset.num_classes=null",
                         "dataset.max_length=8", "model.d_model=16", "model.d_state=8", "model.n_layers=1",
                         f"trainer.resume={old}"])
    path, state, changes = prepare_resume(cfg, tmp_path / "resumed")
    assert str(path) == str(old) and state["model_target"] == cfg.model._target_ == NEW_LM
    assert "model._target_" not in changes


def _run(module: str, args: list[str]) -> subprocess.CompletedProcess:
    """``python -m module args`` in the repository (a forked child: see tests/cli_fork.py)."""
    return run_forked(f"-m {module}", args, REPO, timeout=300)


@pytest.mark.parametrize("old, new, args", [
    ("spiking_ssm.generate", "spiking_ssm.lm.generate", ["prompt=hello"]),  # no ckpt: the usage error, exit 1
    ("spiking_ssm.pretrain_sdn", "spiking_ssm.sdn.pretrain", ["--help"]),
])
def test_the_old_commands_say_their_new_names_and_run_the_new_modules(old, new, args):
    before, after = _run(old, args), _run(new, args)
    assert (before.returncode, before.stdout) == (after.returncode, after.stdout)
    note, _, rest = before.stderr.partition("\n")
    assert note == f"note: `python -m {old}` is now `python -m {new}`"
    assert rest == after.stderr and (after.stdout + after.stderr).strip()
