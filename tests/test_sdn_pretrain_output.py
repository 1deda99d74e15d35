"""Where ``python -m spiking_ssm.sdn.pretrain`` writes (issue 24): a new run folder by default, ``--out`` checked before
training, the packaged weights only with ``--replace-packaged``; the packaged files' bytes never change here."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest

from snn_engine.protection import run_folder
from snn_engine.errors import UserError
from spiking_ssm.sdn import destination
from spiking_ssm.sdn.packaged import WEIGHTS_DIR, packaged_weights
from spiking_ssm.sdn.pretrain import main as pretrain_main
from tests.cli_fork import run_forked

TINY = ["--train-seqs", "32", "--val-seqs", "8", "--test-seqs", "4", "--length", "64", "--finetune-epochs", "1",
        "--warmup-steps", "1", "--suite-seqs", "1", "--no-suite-real"]
RUN_NAME = re.compile(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_[0-9a-f]{6}")


def packaged_bytes() -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(WEIGHTS_DIR.iterdir())}


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run in ``tmp_path`` with no ``SNN_OUTPUT``; the packaged weights folder must end as it began."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SNN_OUTPUT", raising=False)
    before = packaged_bytes()
    yield tmp_path
    assert packaged_bytes() == before


def test_the_default_is_a_new_run_folder_and_overwrite_replaces_only_when_asked(in_tmp, capsys):
    record = pretrain_main(TINY)
    folders = list((in_tmp / "outputs" / "sdn").iterdir())
    assert len(folders) == 1 and RUN_NAME.fullmatch(folders[0].name)
    out = folders[0] / "sdn_tau0.125.pt"
    assert sorted(p.name for p in folders[0].iterdir()) == ["sdn_tau0.125.json", "sdn_tau0.125.pt"]  # no staging left
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == record["sha256"] == hashlib.sha256(
        out.read_bytes()).hexdigest()
    printed = capsys.readouterr().out
    assert f"writing {Path('outputs/sdn') / folders[0].name / 'sdn_tau0.125.pt'}" in printed
    assert f"use it with neuron.weights={Path('outputs/sdn') / folders[0].name / 'sdn_tau0.125.pt'}" in printed

    with pytest.raises(UserError, match="exists; pass --overwrite"):
        pretrain_main([*TINY, "--out", str(out)])
    again = pretrain_main([*TINY, "--seed", "1", "--out", str(out), "--overwrite"])
    assert again["sha256"] == hashlib.sha256(out.read_bytes()).hexdigest() != record["sha256"]  # another seed
    assert json.loads(out.with_suffix(".json").read_text())["sha256"] == again["sha256"]
    assert sorted(p.name for p in folders[0].iterdir()) == ["sdn_tau0.125.json", "sdn_tau0.125.pt"]


@pytest.mark.parametrize("argv,expected", [
    (["--out", str(packaged_weights(0.125))], "the packaged SDNs that neuron=sdn runs load; pass --replace-packaged"),
    (["--out", str(WEIGHTS_DIR / "mine.pt")], "the packaged SDNs that neuron=sdn runs load"),
    (["--out", "{tmp}/taken.pt"], "--out {tmp}/taken.pt exists; pass --overwrite"),
    (["--out", "{tmp}/record.pt"], "the record of --out {tmp}/record.pt, {tmp}/record.json, exists"),
    (["--out", "{tmp}/w.json"], "must name a .pt file"),
    (["--out", "{tmp}/taken.pt/w.pt"], "{tmp}/taken.pt is a file, not a directory"),
    (["--out", "{tmp}/dir.pt"], "{tmp}/dir.pt is a directory"),
    (["--out", "{tmp}/new.pt", "--replace-packaged"], "--replace-packaged writes the packaged weights; drop --out"),
])
def test_out_is_checked_before_anything_is_trained(in_tmp, argv, expected, capsys):
    (in_tmp / "taken.pt").write_bytes(b"earlier")
    (in_tmp / "record.json").write_text("{}")
    (in_tmp / "dir.pt").mkdir()
    before = sorted(p.name for p in in_tmp.rglob("*"))
    with pytest.raises(UserError) as error:
        pretrain_main([*TINY, *[a.replace("{tmp}", str(in_tmp)) for a in argv]])
    assert expected.replace("{tmp}", str(in_tmp)) in str(error.value) and "\n" not in str(error.value)
    assert "data (" not in capsys.readouterr().out  # refused before the training data were made
    assert sorted(p.name for p in in_tmp.rglob("*")) == before and (in_tmp / "taken.pt").read_bytes() == b"earlier"


def test_replace_packaged_is_the_only_way_to_the_packaged_file(in_tmp, monkeypatch):
    fake = in_tmp / "weights" / "sdn_tau0.125.pt"
    fake.parent.mkdir()
    fake.write_bytes(b"old packaged weights")
    monkeypatch.setattr(destination, "packaged_weights", lambda tau: fake.parent / f"sdn_tau{float(tau):g}.pt")
    record = pretrain_main([*TINY, "--replace-packaged"])
    assert hashlib.sha256(fake.read_bytes()).hexdigest() == record["sha256"]
    assert json.loads(fake.with_suffix(".json").read_text())["command"].endswith("--replace-packaged")
    assert sorted(p.name for p in fake.parent.iterdir()) == ["sdn_tau0.125.json", "sdn_tau0.125.pt"]
    assert not (in_tmp / "outputs").exists()


def test_a_run_that_fails_leaves_no_folder_and_no_staged_file(in_tmp, monkeypatch):
    from spiking_ssm.sdn import pretrain

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pretrain, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain_main(TINY)
    with pytest.raises(KeyboardInterrupt):
        pretrain_main([*TINY, "--out", str(in_tmp / "deep" / "er" / "w.pt")])
    assert list(in_tmp.iterdir()) == []


def test_run_folders_are_claimed_exclusively(tmp_path):
    first, made = run_folder.new_folder(tmp_path / "a" / "sdn", "same-second")
    second, _ = run_folder.new_folder(tmp_path / "a" / "sdn", "same-second")
    assert first != second and first.parent == second.parent and made == [tmp_path / "a" / "sdn", tmp_path / "a"]
    run_folder.remove_empty([second, first, *made])
    assert list(tmp_path.iterdir()) == []


def test_the_command_line_refuses_a_negative_lr_in_one_line(tmp_path):
    before = packaged_bytes()
    done = run_forked("spiking_ssm/sdn/pretrain.py", ["--lr", "-1"], tmp_path)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr == "error: invalid --lr -1.0: learning rates must be finite numbers > 0\n"
    assert list(tmp_path.iterdir()) == [] and packaged_bytes() == before
