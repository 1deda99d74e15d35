"""The documentation builds, and the commands it shows name only what exists.

- ``mkdocs build --strict`` into a temporary folder: a broken link, a missing anchor, or an API entry naming a module
  that has moved fails it (skipped when the ``docs`` extra is not installed).
- Every ``python train.py ...``, ``torchrun ... train.py ...``, ``python eval.py ...`` and ``make ...`` command shown in
  README.md and docs/*.md (shell blocks and inline code): the training overrides compose against ``conf/`` through
  Hydra's compose API (struct mode, so an unknown key or group option fails); eval.py's own settings pass eval.py's
  own checks and compose against ``conf/eval.yaml``, and the training keys it overrides exist in the default training
  config; a ``make`` target exists in the Makefile.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")
PLACEHOLDER = re.compile(r"<[^<>\s]*>")


def shown_commands() -> list[tuple[str, str]]:
    """(page, command) for every train/eval/torchrun/make command in the pages' shell blocks and inline code."""
    found = []
    for page in PAGES:
        text = page.read_text()
        for lang, body in FENCE.findall(text):
            if lang in ("bash", "sh", "shell", ""):
                for line in body.replace("\\\n", " ").splitlines():
                    found.append((page.name, line.strip()))
        for span in INLINE.findall(FENCE.sub("", text)):
            found.append((page.name, span.strip()))
    commands = set()
    for name, line in found:
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        if (words[:1] in (["python"], [".venv/bin/python"]) and words[1:2] in (["train.py"], ["eval.py"])
                or words[:1] == ["torchrun"] and "train.py" in words or words[:1] == ["make"] and len(words) > 1):
            commands.add((name, shlex.join(words)))
    return sorted(commands)


COMMANDS = shown_commands()


def overrides_after(words: list[str], script: str) -> list[str]:
    """The Hydra overrides after ``script``, flags (``-m``) dropped and ``<run>``-style placeholders filled in."""
    args = words[words.index(script) + 1:]
    return [PLACEHOLDER.sub("run", arg) for arg in args if not arg.startswith("-")]


def plain_keys(node, prefix: str = "") -> set[str]:
    keys = set()
    if isinstance(node, dict):
        for key, value in node.items():
            dotted = f"{prefix}{key}"
            keys.add(dotted)
            keys |= plain_keys(value, dotted + ".")
    return keys


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None
                    or importlib.util.find_spec("material") is None,
                    reason="mkdocs, mkdocstrings or mkdocs-material is not installed (the `docs` extra: make setup)")
def test_mkdocs_build_strict(tmp_path):
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file",
                           str(ROOT / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert (tmp_path / "site" / "api" / "index.html").is_file()


def test_readme_is_a_short_guide():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"


def test_readme_links_exist():
    """README.md is read on the forge, not through mkdocs: its relative links must name files that exist."""
    for target in re.findall(r"\]\(([^)\s]+)\)", (ROOT / "README.md").read_text()):
        if not re.match(r"[a-z]+:", target):
            assert (ROOT / target.split("#")[0]).exists(), f"README.md links to {target}, which does not exist"


def test_commands_were_found():
    """The scan itself works: the README shows the quick start and both families' commands."""
    readme = [line for page, line in COMMANDS if page == "README.md"]
    assert "make train" in " ".join(readme) and any("experiment=seq/shapes" in c for c in readme)
    assert any("eval.py" in c for c in readme)


@pytest.mark.parametrize("page,line", COMMANDS, ids=[f"{p}: {c[:80]}" for p, c in COMMANDS])
def test_shown_command_names_what_exists(page, line):
    words = shlex.split(line)
    if words[0] == "make":
        target = words[1]
        assert re.search(rf"^{re.escape(target)}:", (ROOT / "Makefile").read_text(), re.M), \
            f"{page}: `{line}` names no Makefile target {target!r}"
        return
    script = "eval.py" if "eval.py" in words else "train.py"
    overrides = overrides_after(words, script)
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        if script == "train.py":
            compose(config_name="train", overrides=overrides)
            return
        evalpy = importlib.import_module("eval")
        for check in (evalpy.refuse_group_overrides, evalpy.refuse_unknown_own_keys):
            refused = check(overrides)
            assert refused is None, f"{page}: `{line}`: {refused}"
        own = [o for o in overrides if o.split("=")[0].lstrip("+").split(".")[0] in evalpy.OWN_KEYS]
        compose(config_name="eval", overrides=own)
        train_keys = plain_keys(OmegaConf.to_container(compose(config_name="train"), resolve=False))
        for override in overrides:
            if override not in own and not override.startswith("+"):
                key = override.split("=")[0]
                assert key in train_keys, f"{page}: `{line}`: the training config has no {key}"
