"""tools/benchmark.py paste: collects tools/paste_benchmark.sh's run folders (faked here) into
one table of rare-class AP and mAP per model x paste variant x seed, with the spread."""

from __future__ import annotations

import json

import pytest
import yaml

from tools.benchmark import main as benchmark


def _fake_run(root, model, paste, seed, *, bicycle, cv, mAP, pasted=None):
    work = root / model / paste / f"seed{seed}"
    (work / "test").mkdir(parents=True)
    command = f"OMP_NUM_THREADS=2 python tools/train.py {model}.yaml --set seed={seed}"
    (work / "train_time.json").write_text(
        json.dumps({"variant": model, "model": model, "paste": paste, "seed": seed,
                    "train_seconds": 1500, "steps": 1200, "command": command,
                    "commit": "abc1234"})
    )  # fmt: skip
    errors = {"trans_err": 0.5, "scale_err": 0.2, "orient_err": 0.4, "vel_err": 1.0,
              "attr_err": 0.2}  # fmt: skip
    label_aps = {"car": {"0.5": 0.6, "2.0": 0.8}, "bicycle": {"0.5": bicycle, "2.0": bicycle},
                 "construction_vehicle": {"1.0": cv / 2, "4.0": cv * 1.5}}  # fmt: skip
    summary = {"mean_ap": mAP, "nd_score": mAP + 0.05, "tp_errors": errors, "label_aps": label_aps}
    (work / "test" / "metrics.json").write_text(
        json.dumps({"summary": summary, "evaluated": {"root": "data/synth-heldout"}})
    )
    log = [{"step": 10, "loss": 1.0}]
    if pasted is not None:
        log.append({"step": 20, "loss": 0.9, "paste_total": {"pasted": pasted, "requested": 80}})
    (work / "log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in log))
    return work


def test_paste_collects_runs_with_the_spread_over_seeds(tmp_path, capsys):
    runs = tmp_path / "runs"
    _fake_run(runs, "fused", "none", 0, bicycle=0.10, cv=0.20, mAP=0.50)
    _fake_run(runs, "fused", "none", 1, bicycle=0.20, cv=0.30, mAP=0.52)
    _fake_run(runs, "fused", "multimodal", 0, bicycle=0.30, cv=0.40, mAP=0.51, pasted=60)
    _fake_run(runs, "lidar", "lidar", 1, bicycle=0.25, cv=0.35, mAP=0.55, pasted=70)
    (runs / "fused" / "lidar" / "seed0").mkdir(parents=True)  # unfinished: left out
    out = tmp_path / "paste.json"
    assert benchmark(["paste", "--runs", str(runs), "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [(r["model"], r["paste"], r["seed"]) for r in result["runs"]] == [
        ("fused", "none", 0), ("fused", "none", 1), ("fused", "multimodal", 0),
        ("lidar", "lidar", 1),
    ]  # fmt: skip
    first = result["runs"][0]
    assert first["per_class_ap"]["construction_vehicle"] == pytest.approx(0.20)
    assert first["pasted"] is None and result["runs"][2]["pasted"]["pasted"] == 60
    none = result["summary"][0]
    assert (none["model"], none["paste"], none["seeds"]) == ("fused", "none", [0, 1])
    assert none["bicycle"]["mean"] == pytest.approx(0.15)
    assert none["bicycle"]["spread"] == pytest.approx(0.10)
    assert none["mAP"]["mean"] == pytest.approx(0.51)
    assert result["summary"][1]["bicycle"]["std"] is None  # one seed: no spread claimed
    assert result["machine"] and result["command"].startswith("python tools/benchmark.py paste")
    # the one result layout (benchmarks/results/README.md); configs are per run
    assert list(result)[:5] == ["date", "machine", "commit", "config_hash", "command"]
    assert result["config_hash"] is None and first["config_hash"] is None  # no config.yaml
    assert result["runs"][0]["commit"] == "abc1234"
    table = out.with_suffix(".md").read_text()
    assert (
        "| fused (`bevfusion_tiny`, cameras T=1) | no paste | 0, 1 | 1200 | 0.150 ± 0.050" in table
    )
    assert "60 of 80" in table and "--set seed=1" in table
    assert "wrote" in capsys.readouterr().out


def _generated(work, bank, camera_kind):
    """Makes a faked run one that pasted generated objects from `bank` (camera: camera_kind)."""
    bank.mkdir(parents=True, exist_ok=True)
    generators = {"lidar": {"kind": "hart", "path": "g/l"}, "camera": {"kind": camera_kind}}
    (bank / "bank.json").write_text(json.dumps({"generation": {"generators": generators}}))
    paste = {"enabled": True, "source": "generated", "bank": str(bank), "cameras": True}
    (work / "config.yaml").write_text(yaml.safe_dump({"data": {"paste": paste}}))


def test_paste_tells_generated_runs_apart_by_generator_across_run_dirs(tmp_path, capsys):
    real, hart, gan = tmp_path / "real", tmp_path / "hart", tmp_path / "gan"
    _fake_run(real, "fused", "multimodal", 0, bicycle=0.3, cv=0.4, mAP=0.5, pasted=60)
    work = _fake_run(hart, "fused", "generated", 0, bicycle=0.1, cv=0.2, mAP=0.4, pasted=50)
    _generated(work, hart / "banks" / "g", "hart")
    work = _fake_run(gan, "fused", "generated", 0, bicycle=0.2, cv=0.1, mAP=0.45, pasted=55)
    _generated(work, gan / "banks" / "g", "gan")
    out = tmp_path / "paste.json"
    runs = [str(real), str(hart), str(gan)]
    assert benchmark(["paste", "--runs", *runs, "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    rows = [(r["paste"], r["generators"], r["bicycle"]["mean"]) for r in result["summary"]]
    assert rows == [
        ("multimodal", None, pytest.approx(0.3)),
        ("generated", {"camera": "gan", "lidar": "hart"}, pytest.approx(0.2)),
        ("generated", {"camera": "hart", "lidar": "hart"}, pytest.approx(0.1)),
    ]
    table = out.with_suffix(".md").read_text()
    assert "| generated (camera gan, lidar hart) | 0 | 0.200 |" in table
    # a generated run whose bank is gone: one line naming the bank and the run's config
    (hart / "banks" / "g" / "bank.json").unlink()
    capsys.readouterr()
    assert benchmark(["paste", "--runs", *runs, "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "banks/g/bank.json (data.paste.bank of" in err and "seed0/config.yaml" in err


def test_paste_without_runs_or_with_a_foreign_record_is_one_line(tmp_path, capsys):
    assert benchmark(["paste", "--runs", str(tmp_path), "--out", str(tmp_path / "p.json")]) == 2
    assert "no finished run" in capsys.readouterr().err
    work = _fake_run(tmp_path, "fused", "none", 0, bicycle=0.1, cv=0.1, mAP=0.1)
    timing = json.loads((work / "train_time.json").read_text())
    del timing["paste"]
    (work / "train_time.json").write_text(json.dumps(timing))
    assert benchmark(["paste", "--runs", str(tmp_path), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "seed0/train_time.json: no paste" in err and not (tmp_path / "p.json").exists()


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["bogus"], {}, "unknown model bogus (fused or lidar)"),
        ([], {"VARIANTS": "none gan"}, "unknown variant gan"),
        (["lidar"], {"VARIANTS": "generated"}, "variant generated needs LIDAR_GENERATOR"),
        (
            ["fused"],
            {"VARIANTS": "generated_real", "LIDAR_GENERATOR": "."},
            "variant generated_real of the fused model needs CAMERA_GENERATOR",
        ),
        (
            ["lidar"],
            {"VARIANTS": "generated", "LIDAR_GENERATOR": "/nowhere/gen"},
            "/nowhere/gen/config.yaml: not found (not a generator's work dir)",
        ),
        ([], {"PASTE_CLASSES": "bicycle:2"}, "PASTE_CLASSES: bicycle:2 is not CLASS=COUNT"),
    ],
)
def test_paste_benchmark_script_refuses_bad_arguments_before_any_work(tmp_path, args, env, message):
    import os
    import subprocess

    out = tmp_path / "out"
    done = subprocess.run(
        ["bash", "tools/paste_benchmark.sh", str(out), *args],
        env={**os.environ, "DATA": str(tmp_path / "data"), **env},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2 and message in done.stderr
    assert not (tmp_path / "data").exists() and not out.exists()
