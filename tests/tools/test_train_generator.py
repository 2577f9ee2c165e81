"""tools/train_generator.py and tools/sample_generator.py on a bank of the tiny world: the three
stages run and resume, the sample grid and its JSON are written, and bad input is one line
naming what is wrong (exit 2)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.generative_helpers import TINY_GAN, TINY_HART, TINY_HART_LIDAR
from tools.sample_generator import main as sample_generator
from tools.train_generator import main as train_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def bank(tiny_train_bank):
    return tiny_train_bank  # read-only (tests/conftest.py)


def _train(bank, work, *extra):
    config = "configs/generative/hart_camera.yaml"
    return train_generator(
        [config, "--work-dir", str(work), "--no-progress", "--set", f"data.bank={bank}",
         *TINY_HART, *extra]
    )  # fmt: skip


def test_trains_resumes_and_samples_a_grid(bank, tmp_path, capsys):
    work = tmp_path / "hart"
    assert _train(bank, work) == 0
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [
        ("tokenizer", 2), ("tokenizer", 4), ("transformer", 2), ("transformer", 4)
    ]  # fmt: skip
    assert {"recon", "commit", "feature"} <= set(log[0]) and {"ce", "diffusion"} <= set(log[-1])
    assert (work / "classifier.safetensors").is_file() and (work / "conditions.json").is_file()
    # a longer run resumes the transformer stage where it stopped
    assert _train(bank, work, "--resume", "--set", "train.transformer_steps=6") == 0
    assert "transformer: resumed at step 4" in capsys.readouterr().out
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log[4:]] == [("transformer", 6)]
    # killed after step 6's log line but before its checkpoint: the resumed run writes that
    # interval again, and the log keeps one line for it
    shutil.rmtree(work / "transformer" / "checkpoints" / "step_6")
    (work / "transformer" / "checkpoints" / "latest").write_text("step_4\n")
    assert _train(bank, work, "--resume", "--set", "train.transformer_steps=6") == 0
    assert "(1 log line(s) past it dropped)" in capsys.readouterr().out
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log[3:]] == [("transformer", 4), ("transformer", 6)]

    out = tmp_path / "grid.png"
    assert sample_generator([str(work), "--class", "car", "--n", "3", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert out.stat().st_size > 1000 and record["conditions"]["class_name"] == ["car"] * 3
    assert record["sampling"]["use_residual"] is True and record["kind"] == "hart"


def test_bad_input_is_one_line_naming_it(bank, tmp_path, capsys):
    assert _train(tmp_path / "nope", tmp_path / "w") == 2
    assert "data.bank:" in capsys.readouterr().err
    assert _train(bank, tmp_path / "w", "--set", "tokenizer.bogus=1") == 2
    assert "tokenizer.bogus: unknown key" in capsys.readouterr().err
    assert _train(bank, tmp_path / "w", "--kind", "gan") == 2
    assert (
        "--kind gan: configs/generative/hart_camera.yaml is a 'hart' config"
        in capsys.readouterr().err
    )
    assert _train(bank, tmp_path / "w", *TINY_HART_LIDAR, "--set", "data.min_points=100000") == 2
    err = capsys.readouterr().err
    assert "bank.json" in err and "100000" in err
    assert sample_generator([str(tmp_path / "missing")]) == 2
    assert "missing: no such generator" in capsys.readouterr().err


def test_sampling_refuses_a_class_it_never_saw(bank, tmp_path, capsys):
    work = tmp_path / "hart"
    assert _train(bank, work, "--set", "data.classes=[car]") == 0
    capsys.readouterr()
    assert (
        sample_generator([str(work), "--class", "pedestrian", "--out", str(tmp_path / "g.png")])
        == 2
    )
    assert "class 'pedestrian': the generator saw no 'pedestrian'" in capsys.readouterr().err
    assert sample_generator([str(work), "--class", "car", "--size", "9,30,9"]) == 2
    assert "size: row 0 ('car')" in capsys.readouterr().err


def test_the_gan_trains_and_samples_through_the_same_tools(bank, tmp_path):
    work = tmp_path / "gan"
    tiny = ["--set", f"data.bank={bank}", *TINY_GAN]
    config = "configs/generative/gan_camera.yaml"
    assert train_generator([config, "--work-dir", str(work), "--no-progress", *tiny]) == 0
    out = tmp_path / "gan.png"
    assert sample_generator([str(work), "--n", "2", "--truncation", "0.5", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["kind"] == "gan" and record["sampling"] == {"truncation": 0.5}


def test_the_lidar_generator_trains_and_draws_its_grids(bank, tmp_path):
    work = tmp_path / "lidar"
    assert _train(bank, work, *TINY_HART_LIDAR) == 0
    out = tmp_path / "lidar.png"
    assert sample_generator([str(work), "--n", "2", "--out", str(out)]) == 0
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["modality"] == "lidar" and set(record["conditions"]["sensor_name"]) == {
        "LIDAR_TOP"
    }


def test_the_tool_offers_every_registered_kind():
    from perception.generative.registry import GENERATOR_KINDS
    from tools.train_generator import KINDS

    assert set(KINDS) == set(GENERATOR_KINDS)
