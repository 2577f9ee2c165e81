"""tools/eval_generator.py on a tiny generator trained on the tiny world's mini_train bank,
measured against an evaluation bank of its mini_val split: the report has every figure, finite,
and bad input is one line naming the file (exit 2)."""

from __future__ import annotations

import json
import math
import shutil

import pytest

from tests.generative_helpers import TINY_HART
from tools.eval_generator import main as eval_generator
from tools.train_generator import main as train_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def banks(tiny_train_bank, tiny_val_bank):
    """(training bank, evaluation bank): read-only (tests/conftest.py)."""
    return tiny_train_bank, tiny_val_bank


def _finite_numbers(value, path="report"):
    """Every number in the report (bar the settings), as (path, value)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if k not in ("config", "sampling", "seconds"):
                yield from _finite_numbers(v, f"{path}.{k}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        yield path, value


def test_cheap_errors_answer_before_loading_anything(tmp_path, capsys):
    assert eval_generator([str(tmp_path / "nope"), "--held-out-bank", str(tmp_path)]) == 2
    assert "nope: no such generator work dir" in capsys.readouterr().err
    assert eval_generator([str(tmp_path), "--held-out-bank", str(tmp_path / "bank")]) == 2
    err = capsys.readouterr().err
    assert f"--held-out-bank: {tmp_path / 'bank' / 'bank.json'} not found" in err
    assert eval_generator([str(tmp_path), "--held-out-bank", str(tmp_path), "--n", "0"]) == 2
    assert "--n 0: must be >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        eval_generator([str(tmp_path), "--held-out-bank", str(tmp_path), "--steps", "8,x"])
    assert exc.value.code == 2
    with pytest.raises(SystemExit) as exc:
        eval_generator([str(tmp_path), "--held-out-bank", str(tmp_path),
                        "--residual-temperatures", "0.5,2"])  # fmt: skip
    assert exc.value.code == 2
    assert "expected numbers in [0, 1]" in capsys.readouterr().err


@pytest.mark.slow
def test_measures_a_tiny_generator_against_an_evaluation_bank(banks, tmp_path, capsys):
    train, held_out = banks
    work = tmp_path / "hart"
    config = "configs/generative/hart_camera.yaml"
    train_args = [config, "--work-dir", str(work), "--no-progress", "--set", f"data.bank={train}"]
    assert train_generator([*train_args, *TINY_HART]) == 0
    capsys.readouterr()
    out = tmp_path / "eval.json"
    args = [str(work), "--held-out-bank", str(held_out), "--no-progress", "--out", str(out)]
    assert eval_generator([*args, "--steps", "2,3", "--residual-temperatures", "1,0",
                           "--no-residual", "--throughput",
                           "--throughput-batch-sizes", "1,4", "--repeats", "1", "--threads", "1",
                           "--cas", "--cas-n", "16", "--cas-steps", "2",
                           "--rare-classes", "pedestrian", "--few", "2"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "noise floor A vs B" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    assert report["kind"] == "perception.generator-eval" and report["commit"]
    assert report["classifier"]["path"] == str(work / "classifier.safetensors")
    assert len(report["classifier"]["sha256"]) == 64
    assert report["held_out"]["version"] == "v1.0-mini" and report["held_out"]["num_signals"] > 8
    assert set(report["arms"]) == {
        "residual_steps=2", "residual_steps=3", "no_residual",
        "residual_steps=2,residual_temperature=0", "residual_steps=3,residual_temperature=0",
    }  # fmt: skip
    cold = report["arms"]["residual_steps=2,residual_temperature=0"]["sampling"]
    assert cold["residual_temperature"] == 0.0 and cold["use_residual"] is True
    for arm in report["arms"].values():
        generation = arm["generation"]
        assert {"generated", "generated_half", "noise_floor", "condition_fidelity"} <= set(
            generation
        )
        assert generation["num_samples"] == report["held_out"]["num_signals"]
        assert set(arm["throughput"]["batch_sizes"]) == {"1", "4"}
    assert report["arms"]["no_residual"]["sampling"]["use_residual"] is False
    recon = report["reconstruction"]
    assert {"hybrid", "discrete", "mse_ratio_vs_discrete"} <= set(recon)
    assert 0 < report["residual_head_share"]["share"] < 1
    assert set(report["cas"]) >= {"generated_only", "real_few", "real_few_plus_generated", "rare"}
    numbers = dict(_finite_numbers(report))  # NaN is written as null: not a number here
    bad = {p: v for p, v in numbers.items() if not math.isfinite(v)}
    assert not bad and len(numbers) > 100

    # bad input: one line naming the file, exit 2
    import torch

    from perception.generative.metrics import CropClassifier, save_crop_classifier

    torch.manual_seed(0)
    lidar_clf = save_crop_classifier(
        CropClassifier(in_channels=9, image_size=16, width=8), tmp_path / "lidar_clf.safetensors"
    )
    assert eval_generator([*args, "--classifier", str(lidar_clf)]) == 2
    err = capsys.readouterr().err
    assert f"--classifier: {lidar_clf} takes 9-channel" in err and err.count("\n") == 1
    other = tmp_path / "other_version"
    shutil.copytree(held_out, other)
    index = json.loads((other / "bank.json").read_text())
    index["dataset"]["version"] = "v1.0-trainval"
    (other / "bank.json").write_text(json.dumps(index))
    assert eval_generator([str(work), "--held-out-bank", str(other), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{other / 'bank.json'}: a bank of dataset version 'v1.0-trainval'" in err
    assert eval_generator([str(work), "--held-out-bank", str(work / "config.yaml")]) == 2
    assert "bank.json not found" in capsys.readouterr().err
