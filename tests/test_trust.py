"""Issue 24: a checkpoint's stored config is data. Whatever it holds (dict literals behind interpolations, targets in
lists, Hydra switches, every resolver the loaders know), loading it either fails with one line or gives a config that
builds only targets of ``conf/``; in both cases nothing else is ever imported or called.

The property test loads generated configs through :func:`snn_engine.run.checkpoint_config` (the door of ``eval.py``,
``generate`` and the LM tools), then builds the accepted ones as ``eval.py`` does, with Hydra's ``_locate`` recording
every path it is asked for (allowed targets become stubs, so no real data set or model is built; the canaries of
:mod:`tests.canary` stay real, so a hole would run them).
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from unittest import mock

import hydra._internal.utils as hydra_utils
import pytest
from hydra._internal.instantiate._instantiate2 import _Keys
from hydra.core.utils import setup_globals
from hydra.utils import get_class, instantiate
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from omegaconf.basecontainer import BaseContainer

from snn_engine import run
from snn_engine.protection import trust
from snn_engine.errors import UserError
from tests import canary

# the resolvers as the loaders see them: Hydra's (now, hydra), the engine's (data, run_suffix, ...), plus a canary
setup_globals()
RESOLVER_CALLS: list = []
OmegaConf.register_new_resolver("canary", lambda *args: RESOLVER_CALLS.append(args) or "x", replace=True)

MODEL = "spiking_ssm.lm.language_model.SpikingSSMLanguageModel"
DATA = "snn_engine.data.ShapesData"
NEURON = "snn_engine.neurons.make_neuron"
ALLOWED = sorted(trust.config_targets())
CANARIES = ["tests.canary.fire", "tests.canary_import.fire", "tests.canary_import"]
FORBIDDEN = [*CANARIES, "builtins.open", "os.system", "torch.save", "shutil.copyfile", "snn_engine.run.write_json"]
SOURCE = "crafted.pt"


class Stub:
    """What an allowed target builds in these tests: takes anything, does nothing."""

    def __init__(self, *args, **kwargs):
        pass


class Forbidden:
    """What a forbidden target other than a canary would build here (the real one is never reached)."""

    CALLS: list = []

    def __init__(self, *args, **kwargs):
        Forbidden.CALLS.append((args, kwargs))


def base_config() -> dict:
    """A checkpoint's config as train.py stores it, in miniature."""
    return {"model": {"_target_": MODEL, "size": 2, "vocab_size": "${data:vocab_size}"},
            "neuron": {"_target_": NEURON, "_partial_": True, "kind": "lif"},
            "dataset": {"_target_": DATA, "root": "${paths.data}/shapes"},
            "paths": {"data": "${oc.env:SNN_DATA,data}"}, "dollar": "$",
            "run_name": "${now:%Y-%m-%d}_${run_suffix:}", "box": {"size": 1}}


# --------------------------------------------------------------------------------------------- strategies
names = st.sampled_from(ALLOWED[:4] + [MODEL, DATA, NEURON] + FORBIDDEN)
switch_values = st.sampled_from([True, False, 1, "all", "none", "partial", [1, 2]])


@st.composite
def literals(draw) -> str:
    """OmegaConf grammar for a default or an ``oc.create`` argument that builds a target."""
    target, other = draw(names), draw(names)
    return draw(st.sampled_from([
        f"{{_target_: {target}, file: /tmp/victim, mode: w}}", f"[{{_target_: {target}}}]", target,
        f"{{a: {{_target_: {target}, _partial_: true}}}}", f"{{_target_: {target}, _args_: [1]}}",
        f"{{_target_: {target}, _recursive_: false, inner: {{_target_: {other}}}}}",
        f"{{_target_: {target}, _convert_: all}}", "{x: 1, y: [2, 3]}", "plain"]))


@st.composite
def interpolations(draw) -> str:
    literal = draw(literals())
    key = draw(st.sampled_from(["missing.key", "model", "neuron", "dataset", "model._target_", "box", "box.size"]))
    return draw(st.sampled_from([
        f"${{oc.select:{key}}}", f"${{oc.select:{key},{literal}}}", f"${{oc.create:{literal}}}",
        f"${{oc.decode:'{literal}'}}", "${oc.env:SNN_TRUST_CANARY}", "${oc.env:SNN_TRUST_UNSET,fallback}",
        "${oc.env:HOME}", f"${{oc.env:SNN_TRUST_UNSET,{literal}}}", "${now:%Y}", "${run_suffix:}",
        "${data:vocab_size}", "${data:_secret}", "${canary:1}", "${hydra:runtime.cwd}",
        "${dollar}{oc.create:{_target_: tests.canary.fire}}", "\\${oc.select:missing,x}", "\\${data:vocab_size}",
        f"${{oc.select:missing,{literal}}}/suffix", "${box}", "${model._target_}"]))


leaves = st.one_of(st.integers(-3, 3), st.booleans(), st.none(), st.sampled_from(["x", "/tmp/v", "1.5"]),
                   names, interpolations())
keys = st.sampled_from(["a", "b", "kwargs", "_target_", "_partial_", "_args_", "_recursive_", "_convert_", 1])


def _containers(children):
    targets = st.one_of(names, st.sampled_from(["${oc.env:SNN_TRUST_CANARY}", "${oc.select:missing,tests.canary.fire}",
                                                "${oc.select:model._target_}", "${box.size}"]))
    with_target = st.builds(lambda target, kwargs, switches: {"_target_": target, **kwargs, **switches}, targets,
                            st.dictionaries(st.sampled_from(["a", "b", "f"]), children, max_size=2),
                            st.dictionaries(st.sampled_from(trust.SWITCHES), switch_values, max_size=2))
    return st.one_of(st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=3), with_target)


nodes = st.recursive(leaves, _containers, max_leaves=10)
safe_leaves = st.one_of(st.integers(0, 9), st.booleans(), st.sampled_from([
    "x", "${oc.select:missing.key,3}", "${oc.select:box.size}", "${oc.select:missing,{_target_: " + DATA + ", n: 1}}",
    "${oc.env:SNN_TRUST_UNSET,7}", "${data:vocab_size}", "${run_suffix:}", "${now:%H}", "${box}",
    "${oc.select:missing,[1, 2]}", "\\${data:d_input}"]))
safe_nodes = st.recursive(safe_leaves, lambda children: st.one_of(
    st.lists(st.sampled_from([0, "x", "${box.size}", "${data:vocab_size}"]), max_size=3),
    st.dictionaries(st.sampled_from(["a", "b"]), children, max_size=2),
    st.builds(lambda target, kwargs: {"_target_": target, **kwargs}, st.sampled_from([MODEL, DATA]),
              st.dictionaries(st.sampled_from(["a", "b"]), children, max_size=2))), max_leaves=6)


@st.composite
def hazards(draw):
    """One dangerous or malformed node, each kind about equally often."""
    target = draw(names)
    allowed = draw(st.sampled_from([MODEL, DATA, NEURON, "torch.optim.AdamW"]))
    switch, value = draw(st.sampled_from(trust.SWITCHES)), draw(switch_values)
    return draw(st.sampled_from([
        f"${{oc.select:nonexistent.key,{{_target_: {target}, file: /tmp/victim}}}}",
        f"${{oc.select:nonexistent.key,[{{_target_: {allowed}}}]}}", [{"_target_": allowed}],
        "${dollar}{oc.create:{_target_: tests.canary.fire}}", "\\${oc.create:{_target_: tests.canary.fire}}",
        f"${{oc.create:{{_target_: {target}}}}}", f"${{oc.decode:'{{_target_: {target}}}'}}", "${oc.env:HOME}",
        {"_target_": "${oc.env:SNN_TRUST_CANARY}"}, {"_target_": allowed, switch: value}, {switch: value},
        {"_target_": target}, {1: {"_target_": allowed}}, "${data:_secret}", "${canary:1}", "${hydra:runtime.cwd}",
        f"${{oc.select:missing,{{_target_: {allowed}, {switch}: true}}}}", {"_target_": ["tests.canary.fire"]},
        {"_target_": allowed, "inner": {"_target_": target, "_recursive_": False}},
        "${oc.select:missing,$}{oc.select:missing,{_target_: tests.canary.fire}}"]))


places = st.sampled_from([("model",), ("model", "size"), ("model", "layers"), ("neuron",), ("neuron", "extra"),
                          ("dataset",), ("dataset", "root"), ("box",), ("box", "size"), ("extra",), ("paths", "data")])
overrides = st.sampled_from([["model.size=3"], ["paths.data=/elsewhere"], ["+model.extra=${box}"],
                             ["+model.extra={_target_: tests.canary.fire}"], ["box.size=${oc.env:HOME}"],
                             ["+model.extra=${oc.select:missing,{_target_: tests.canary.fire}}"]])


def place(config: dict, where: tuple, value) -> None:
    node = config
    for key in where[:-1]:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[where[-1]] = value


# ---------------------------------------------------------------------------------------------- checking
def _walk(node, in_list=False):
    yield node, in_list
    if isinstance(node, dict):
        for value in node.values():
            yield from _walk(value, in_list)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value, True)


def assert_only_allowed(container: dict) -> None:
    """The accepted config, as written: allow-listed targets only, no switch that conf/ does not use, no key that is
    not a string, no target inside a list, no interpolation left but ``${data:NAME}``."""
    conf_switches = {(t, s): v for t, s, v in trust.config_switches()}
    for node, in_list in _walk(container):
        if isinstance(node, dict):
            assert all(isinstance(key, str) for key in node), node
            if "_target_" in node:
                assert not in_list and isinstance(node["_target_"], str) and node["_target_"] in ALLOWED, node
            for switch in trust.SWITCHES:
                if switch in node:
                    expected = conf_switches.get((node.get("_target_"), switch), object())
                    assert node[switch] is expected, node  # True is True; 1 is not
        elif isinstance(node, str) and "${" in node:
            assert node.startswith("${data:") and node.count("$") == 1 and node.endswith("}"), node


def build_like_eval(cfg) -> None:
    """What eval.py instantiates from the training config (and resolves to log it)."""
    data = instantiate(cfg.dataset)
    run.build_model(cfg, data)
    get_class(cfg.model._target_)
    OmegaConf.to_container(cfg, resolve=True)


class Recorder:
    """Patches Hydra's ``_locate`` and ``importlib.import_module`` to record every name they are given."""

    def __init__(self):
        self.located, self.imported = [], []
        self._locate, self._import = hydra_utils._locate, importlib.import_module

    def locate(self, path: str):
        self.located.append(path)
        if path in ALLOWED:
            return Stub
        return self._locate(path) if path.startswith("tests.canary") else Forbidden

    def import_module(self, name: str, package=None):
        self.imported.append(name)
        return self._import(name, package)

    def __enter__(self):
        self._patches = [mock.patch("hydra._internal.instantiate._instantiate2._locate", self.locate),
                         mock.patch("hydra.utils._locate", self.locate), mock.patch("hydra._internal.utils._locate",
                                                                                   self.locate),
                         mock.patch("importlib.import_module", self.import_module),
                         mock.patch.dict(os.environ, {"SNN_TRUST_CANARY": "tests.canary.fire"})]
        for patch in self._patches:
            patch.start()
        return self

    def __exit__(self, *exc):
        for patch in reversed(self._patches):
            patch.stop()


def load(config: dict, extra: list[str]):
    """:func:`snn_engine.run.checkpoint_config` on ``config``: the config, or the refusal's message."""
    added = frozenset(item.partition("=")[0][1:] for item in extra if item.startswith("+"))
    try:
        return run.checkpoint_config({"config_raw": config}, extra, SOURCE, added=added)
    except UserError as error:
        return str(error)


# ------------------------------------------------------------------------------------------------ the property
@given(edits=st.lists(st.tuples(places, st.one_of(safe_nodes, nodes)), max_size=2),
       hazard=st.one_of(st.none(), st.tuples(places, hazards())), extra=st.one_of(st.just([]), overrides))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_crafted_config_is_refused_or_builds_only_allowed_targets(edits, hazard, extra):
    config = base_config()
    for where, value in edits + ([hazard] if hazard else []):
        place(config, where, copy.deepcopy(value))
    resolvers = set(BaseContainer._resolvers)
    with Recorder() as record:
        cfg = load(config, extra)
        event("refused" if isinstance(cfg, str) else "accepted")
        if isinstance(cfg, str):
            assert cfg.startswith(f"refusing to load {SOURCE}") or cfg.startswith("unknown setting"), cfg
            assert "\n" not in cfg
        else:
            assert_only_allowed(OmegaConf.to_container(cfg, resolve=False))
            build_like_eval(cfg)
    assert set(BaseContainer._resolvers) == resolvers  # the process's resolvers are back
    assert all(path in ALLOWED for path in record.located), record.located
    assert all(any(target.startswith(name + ".") or target == name for target in ALLOWED) for name in record.imported)
    assert not canary.CALLS and not canary.IMPORTS and "tests.canary_import" not in sys.modules
    assert not Forbidden.CALLS and not RESOLVER_CALLS


@given(edits=st.lists(st.tuples(places.filter(lambda p: len(p) == 2 and p[0] == "model"), safe_nodes),
                      max_size=4))
@settings(max_examples=60, deadline=None)
def test_configs_of_allowed_targets_through_safe_resolvers_load(edits):
    config = base_config()
    for where, value in edits:
        place(config, where, value)
    with Recorder() as record:
        cfg = load(config, ["paths.data=/elsewhere"])
        assert not isinstance(cfg, str), cfg
        assert_only_allowed(OmegaConf.to_container(cfg, resolve=False))
        assert cfg.dataset.root == "/elsewhere/shapes" and cfg.paths.data == "/elsewhere"  # overrides before resolving
        build_like_eval(cfg)
    assert set(record.located) <= set(ALLOWED)


# --------------------------------------------------------------------------------------------- the cases
@pytest.mark.parametrize("section", ["model", "dataset", "neuron"])
@pytest.mark.parametrize("target", ["torch.save", "builtins.open", "shutil.copyfile", "os.system"])
def test_a_whole_section_behind_oc_select_is_checked_after_resolution(section, target):
    config = base_config()
    config[section] = f"${{oc.select:nonexistent.key,{{_target_: {target}, file: /tmp/victim, mode: w}}}}"
    message = load(config, [])
    assert message == (f"refusing to load {SOURCE}: {section}._target_='{target}' is not a target that the project's "
                       "configs use; nothing was run or written (only checkpoints whose config builds what conf/ "
                       "builds can be loaded)")


def test_switches_are_those_of_hydra_and_conf_uses_only_partial():
    assert {key.value for key in _Keys} == {"_target_", *trust.SWITCHES}
    assert {(s, v) for _, s, v in trust.config_switches()} == {("_partial_", True)}
    assert {t for t, _, _ in trust.config_switches()} >= {NEURON, "torch.optim.AdamW", "snn_engine.training.optim.warmup_cosine"}
    config = base_config()
    config["neuron"]["_partial_"] = 1  # equal to True, but not what conf/ writes
    assert "neuron._partial_=1 is a Hydra switch that no conf/ file uses" in load(config, [])


def test_the_returned_config_holds_no_interpolation_of_the_file():
    with mock.patch.dict(os.environ, {"SNN_DATA": "/from/env"}):
        cfg = load(base_config(), [])
    raw = OmegaConf.to_container(cfg, resolve=False)
    assert raw["dataset"]["root"] == "/from/env/shapes" and raw["model"]["vocab_size"] == "${data:vocab_size}"
    assert raw["run_name"].endswith("_" + run.run_folder.run_suffix()) and "$" not in raw["run_name"]
    trust.require_resolved(cfg, SOURCE)
    with pytest.raises(UserError, match="still holds an interpolation"):  # an unchecked config is not built from
        trust.require_resolved(OmegaConf.create(base_config()), SOURCE)


def test_a_resolver_outside_the_safe_ones_is_never_called_even_when_registered():
    config = base_config()
    config["box"]["size"] = "${canary:1}"
    assert "box.size calls the resolver 'canary'" in load(config, [])
    with trust.only_safe_resolvers():
        assert not OmegaConf.has_resolver("canary") and not OmegaConf.has_resolver("hydra")
        with pytest.raises(Exception) as error:
            OmegaConf.to_container(OmegaConf.create({"a": "${oc.env:HOME}"}), resolve=True)
        assert "SNN_* only" in str(error.value)
    assert OmegaConf.has_resolver("canary") and not RESOLVER_CALLS


def test_data_attributes_are_public_plain_values():
    class Data:
        vocab_size, table, _secret = 5, {"_target_": "tests.canary.fire"}, 1

    cfg = OmegaConf.create({"a": "${data:vocab_size}", "b": "${data:table}", "c": "${data:_secret}"})
    run._BOUND_DATA[0] = Data()
    try:
        assert cfg.a == 5
        for key, message in [("b", "is a dict of the data set"), ("c", "does not name a public attribute")]:
            with pytest.raises(Exception) as error:
                getattr(cfg, key)
            assert message in str(error.value)
    finally:
        run._BOUND_DATA[0] = None


def test_resuming_compares_a_crafted_config_and_builds_nothing_from_it(tmp_path):
    """A resumed run builds from its command line's config; the checkpoint's config is only compared with it."""
    from snn_engine.protection import checkpoint as ckpt_io
    from tests.helpers import compose_train

    crafted = base_config()
    crafted["model"] = "${oc.select:nonexistent.key,{_target_: tests.canary.fire, f: victim}}"
    ckpt_io.atomic_save({"config_raw": crafted, "model": {}}, tmp_path / "last.pt")
    cfg = compose_train(["logger=none", f"trainer.resume={tmp_path / 'last.pt'}", "trainer.resume_allow_changes=true"])
    with Recorder() as record:
        path, state, changes = run.prepare_resume(cfg, tmp_path / "run")
    assert path == tmp_path / "last.pt" and state["config_raw"]["model"] == crafted["model"]
    assert "model" in changes and changes["model"][0] == crafted["model"]  # compared as written, not resolved
    assert not record.located and not record.imported and not canary.CALLS and not canary.IMPORTS
