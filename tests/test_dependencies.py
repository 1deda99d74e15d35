"""The environment the lock installs: every dependency of the project imports, nothing broken rides along, and the
SpikingJelly release whose private names we read is the one installed."""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import inspect
import re
import tomllib

import pytest

from tests.helpers import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# distribution -> what the project imports from it (a new dependency needs a line here, see the test below)
MODULES = {
    "torch": ["torch"], "torchvision": ["torchvision"], "hydra-core": ["hydra"], "omegaconf": ["omegaconf"],
    "wandb": ["wandb"], "timm": ["timm"], "tqdm": ["tqdm"], "numpy": ["numpy"], "pillow": ["PIL.Image"],
    "matplotlib": ["matplotlib.pyplot"],
    "spikingjelly": ["spikingjelly.activation_based.neuron", "spikingjelly.activation_based.memopt",
                     "spikingjelly.activation_based.op_counter"],
    "tonic": ["tonic.functional", "tonic.datasets"], "nir": ["nir"],
    "nirtorch": ["nirtorch", "spikingjelly.activation_based.nir_exchange"],
    "hydra-submitit-launcher": ["hydra_plugins.hydra_submitit_launcher.submitit_launcher"],
    "mkdocs-material": ["mkdocs", "material"], "mkdocstrings": ["mkdocstrings", "mkdocstrings_handlers.python"],
    "neurobench": ["neurobench.benchmarks", "neurobench.models", "neurobench.metrics.workload"],
}
# SpikingJelly's private names that snn_engine/measure/kernel_usage.py reads, and the dispatch rules it copies
SPIKINGJELLY_PIN = "2.0.0"
DISPATCH_DIGEST = "b95a73ac51d6cfd7"


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()


CORE = [_name(r) for r in PYPROJECT["project"]["dependencies"]]
EXTRAS = {extra: [_name(r) for r in reqs] for extra, reqs in PYPROJECT["project"]["optional-dependencies"].items()}


def test_every_dependency_has_its_imports_listed():
    listed = set(MODULES)
    missing = [name for name in CORE + [n for names in EXTRAS.values() for n in names] if name not in listed]
    assert not missing, f"add the modules the project imports from {missing} to MODULES in this test"


@pytest.mark.parametrize("dist", CORE)
def test_core_dependencies_import(dist):
    for module in MODULES[dist]:
        importlib.import_module(module)


@pytest.mark.parametrize("extra,dist", [(e, d) for e, names in EXTRAS.items() for d in names])
def test_extras_import_where_installed(extra, dist):
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        pytest.skip(f"{dist} (the {extra} extra) is not installed: uv sync --extra {extra}, or make setup")
    for module in MODULES[dist]:
        importlib.import_module(module)


def test_torchaudio_is_not_installed():
    """SpikingJelly declares torchaudio; the lock drops it ([tool.uv] override-dependencies): the newest build is
    compiled for another CUDA than the locked torch and fails on import, and nothing here uses it."""
    assert importlib.util.find_spec("torchaudio") is None, (
        "torchaudio is installed but the lock drops it (its build does not match torch): re-sync with `make setup`")


def test_spikingjelly_is_the_pinned_release_whose_private_names_we_read():
    """snn_engine/measure/kernel_usage.py imports spikingjelly._ops.surrogate._surrogate_spec and copies the dispatch rules of
    functional.lif/if/plif_multi_step. Any other release, or a change of those functions, fails here: re-read them,
    update spikingjelly_path() and this test's pin and digest together."""
    from spikingjelly._ops.surrogate import _surrogate_spec
    from spikingjelly.activation_based import surrogate
    from spikingjelly.activation_based.functional import neuron as sj_functional

    assert f"spikingjelly=={SPIKINGJELLY_PIN}" in PYPROJECT["project"]["dependencies"]
    assert importlib.metadata.version("spikingjelly") == SPIKINGJELLY_PIN
    assert _surrogate_spec(surrogate.Sigmoid(alpha=4.0)) == (0, 4.0)
    assert _surrogate_spec(surrogate.ATan()) is not None

    class Custom(surrogate.Sigmoid):
        pass

    assert _surrogate_spec(Custom()) is None  # a surrogate without a fused kernel: the reference path
    source = "".join(inspect.getsource(f) for f in (sj_functional.lif_multi_step, sj_functional.if_multi_step,
                                                    sj_functional.plif_multi_step, _surrogate_spec))
    assert hashlib.sha256(source.encode()).hexdigest()[:16] == DISPATCH_DIGEST, (
        "SpikingJelly's neuron dispatch changed: re-read functional.*_multi_step and update "
        "snn_engine.measure.kernel_usage.spikingjelly_path, then this digest")
