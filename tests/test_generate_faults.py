"""``python -m spiking_ssm.lm.generate`` faults found in review (issue 24): integers beyond what torch takes, files
that are not checkpoints and a run folder given as ``ckpt=``; each one line on stderr, exit 1, no traceback.
(The language model's other cases are in ``tests/test_lm_faults.py``.)"""

from __future__ import annotations

import pytest

from tests.bad_checkpoints import BAD_FILES, assert_plain_line, make
from tests.cli_fork import run_forked


def run_generate(args: list[str], capsys) -> tuple[int, str, str]:
    from spiking_ssm.lm.generate import main

    capsys.readouterr()
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("arg,expected", [
    ("seed=18446744073709551617", "seed=18446744073709551617 must be a whole number in [0, 4294967295]"),
    ("seed=-1", "seed=-1 must be a whole number in [0, 4294967295]"),
    ("max_new_tokens=99999999999999999999", "max_new_tokens=99999999999999999999 must be a whole number in [1, "
                                            "2147483647]"),
    ("max_new_tokens=0", "max_new_tokens=0 must be a whole number in [1, 2147483647]"),
    ("top_k=4294967296", "top_k=4294967296 must be a whole number in [0, 2147483647]"),
])
def test_integers_beyond_their_range_are_one_line(arg, expected, capsys):
    code, out, err = run_generate(["ckpt=X", arg], capsys)
    assert code == 1 and out == "" and err == f"error: {expected}\n"


def test_the_command_line_refuses_a_seed_above_2_64_before_loading(tmp_path):
    done = run_forked("spiking_ssm/lm/generate.py", [f"ckpt={tmp_path / 'missing.pt'}", "seed=18446744073709551617"],
                      tmp_path)
    assert done.returncode == 1 and done.stdout == "" and list(tmp_path.iterdir()) == []
    assert done.stderr == "error: seed=18446744073709551617 must be a whole number in [0, 4294967295]\n"


@pytest.mark.parametrize("kind,expected", BAD_FILES, ids=[k for k, _ in BAD_FILES])
def test_a_file_that_is_not_a_checkpoint_is_one_plain_line(tmp_path, kind, expected, capsys):
    bad = make(kind, tmp_path)
    before = bad.read_bytes()
    code, out, err = run_generate([f"ckpt={bad}", "max_new_tokens=2"], capsys)
    assert code == 1 and out == "" and err.count("\n") == 1 and err.startswith(f"error: checkpoint {bad} ")
    assert_plain_line(err.strip(), bad, expected)
    assert bad.read_bytes() == before and not (tmp_path / "victim.txt").exists()


def test_a_run_folder_given_as_ckpt_is_named_a_directory(tmp_path, capsys):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "best.pt").write_bytes(b"")
    code, out, err = run_generate([f"ckpt={tmp_path / 'run'}"], capsys)
    assert code == 1 and err == (f"error: checkpoint {tmp_path / 'run'} is a directory, not a file; pass the checkpoint "
                                 f"inside it: {tmp_path / 'run' / 'checkpoints' / 'best.pt'}\n")
