"""``eval.py`` spike accounting end to end: a checkpoint of each family -> firing-rate table, AC/MAC/energy
table, MFI audit (sparse-MLP), figures and summary.json; the CLI prints all three tables."""

from __future__ import annotations

import json

import pytest
from hydra import compose, initialize_config_dir

from snn_engine import run
from snn_engine.errors import UserError
from tests.cli_fork import run_forked
from tests.helpers import REPO, TINY, compose_train

PNG = b"\x89PNG\r\n\x1a\n"
SSM_TINY = ["experiment=seq/shapes", "logger=none", "trainer.progress_bar=false", "trainer.epochs=1",
            "trainer.limit_train_batches=3", "dataset.train_size=96", "dataset.val_size=64"]


def compose_eval(overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="eval", overrides=["logger=none", *overrides])


@pytest.fixture(scope="module")
def mixer_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixer")
    run.train(compose_train(TINY + ["trainer.epochs=1", "trainer.limit_train_batches=3", "model.dim=6"]), out)
    return out / "checkpoints" / "last.pt"


@pytest.fixture(scope="module")
def ssm_ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ssm")
    run.train(compose_train(SSM_TINY), out)
    return out / "checkpoints" / "last.pt"


def check_common(summary: dict, run_dir) -> None:
    spikes, ops = summary["spikes"], summary["ops"]
    assert set(spikes["overall"]) == {"rate", "sparsity", "silent_fraction", "neurons"}
    assert spikes["overall"]["rate"] == pytest.approx(summary["val"]["firing_rate"]["overall"])
    assert 0.0 <= spikes["overall"]["silent_fraction"] <= 1.0
    total = ops["total"]
    assert total["energy_pj"] == pytest.approx(0.9 * total["ac"] + 4.6 * total["mac"])
    assert total["ann_energy_pj"] == pytest.approx(4.6 * total["ann_mac"])
    assert ops["unit_energy_pj"] == {"ac": 0.9, "mac": 4.6}
    for name in ("firing_rates", "raster", "rate_along_time"):
        path = run_dir / "figures" / f"{name}.png"
        assert path.read_bytes()[:8] == PNG and summary["figures"][name] == str(path)
    assert json.loads((run_dir / "summary.json").read_text())["ops"]["total"]["ac"] == pytest.approx(total["ac"])


@pytest.mark.slow
def test_mixer_eval_with_mfi_reports_audit_and_equal_logits(mixer_ckpt, tmp_path):
    cfg = compose_eval([f"ckpt={mixer_ckpt}", "mfi=true", "position_bn=replicate", "nir=true"])
    summary = run.evaluate(cfg, tmp_path, ["trainer.precision=64"])
    check_common(summary, tmp_path)
    mfi = summary["mfi"]
    assert mfi["max_logit_diff"] < 1e-9 and mfi["prediction_agreement"] == 1.0 and mfi["compared_samples"] == 96
    assert [e["layer"] for e in mfi["true_multiplications"]] == ["stages.0.embed.convs.0"]
    assert mfi["multiplication_free_after_first_layer"]
    stem = summary["ops"]["layers"]["stages.0.embed.convs.0"]
    assert stem["input"] == "real" and stem["mac"] == 3 * 4 * 4 * 6 * 8 * 8  # one conv of the image, not T
    assert all(row["mac"] == 0 for name, row in summary["ops"]["layers"].items() if not name.startswith("stages.0.embed"))
    assert (tmp_path / "figures" / "membrane.png").is_file()
    nir = pytest.importorskip("nir")
    graph = nir.read(tmp_path / "model.nir")
    assert len(graph.nodes) == summary["nir"]["nodes"] and "stem.conv" in graph.nodes
    assert summary["nir"]["reimport_max_abs_diff"] < 1e-9  # read back by SpikingJelly's import_from_nir


@pytest.mark.slow
def test_mixer_eval_without_mfi_counts_unfolded_batchnorms(mixer_ckpt, tmp_path):
    summary = run.evaluate(compose_eval([f"ckpt={mixer_ckpt}", "figures=false", "energy.e_ac=1.0"]), tmp_path, [])
    assert "mfi" not in summary and "figures" not in summary
    bn_rows = [row for name, row in summary["ops"]["layers"].items() if name.endswith(".bn")]
    assert bn_rows and all(row["input"] == "real" and row["mac"] > 0 for row in bn_rows)
    total = summary["ops"]["total"]
    assert total["energy_pj"] == pytest.approx(1.0 * total["ac"] + 4.6 * total["mac"])


@pytest.mark.slow
def test_ssm_eval_paper_convention_and_rate_along_sequence(ssm_ckpt, tmp_path):
    summary = run.evaluate(compose_eval([f"ckpt={ssm_ckpt}", "energy.convention=ssm_paper"]), tmp_path, [])
    check_common(summary, tmp_path)
    layers = summary["ops"]["layers"]
    assert layers and all(name.endswith("output_linear") for name in layers)
    assert summary["ops"]["total"]["mac"] == 0 and summary["ops"]["total"]["ac"] > 0
    full = run.evaluate(compose_eval([f"ckpt={ssm_ckpt}", "figures=false"]), tmp_path / "full", [])
    assert full["ops"]["total"]["mac"] > 0  # S4D recurrence, GLU, norms, encoder, decoder
    mfi = run.evaluate(compose_eval([f"ckpt={ssm_ckpt}", "mfi=true", "figures=false"]), tmp_path / "mfi", [])
    assert mfi["mfi"]["applicable"] is False and "S4D" in mfi["mfi"]["reason"]
    assert mfi["val"]["acc1"] == full["val"]["acc1"] and mfi["ops"]["total"] == full["ops"]["total"]
    with pytest.raises(UserError, match="nir=true exports a folded multiplication-free model.*S4D dendrites"):
        run.evaluate(compose_eval([f"ckpt={ssm_ckpt}", "nir=true"]), tmp_path / "nir", [])


@pytest.mark.slow
def test_eval_cli_prints_the_three_tables(mixer_ckpt, tmp_path):
    done = run_forked("eval.py", [f"ckpt={mixer_ckpt}", "mfi=true", f"paths.output={tmp_path}", "run_name=e",
                               "logger=none", "trainer.precision=64", "dataset.batch_size=48"], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    text = done.stdout + done.stderr
    for expected in ("silent %", "SNN / ANN energy", "MFI audit (position_bn=threshold)", "max |logit difference|"):
        assert expected in text
    summary = json.loads((tmp_path / "eval" / "e" / "summary.json").read_text())
    assert summary["mfi"]["max_logit_diff"] < 1e-9  # the training-config overrides reached the checkpoint's config
    done = run_forked("eval.py", [f"ckpt={mixer_ckpt}", "energy.convention=nope", "logger=none",
                               f"paths.output={tmp_path}", "run_name=bad"], tmp_path)
    assert done.returncode == 1 and "convention" in done.stderr.strip().splitlines()[-1]
