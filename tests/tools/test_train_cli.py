"""tools/train.py: a short run writes the resolved config and a checkpoint; bad keys fail;
(slow) 2 processes under torchrun follow 1 process, DDP resume is exact, and a run killed
with SIGKILL resumes to the weights of an uninterrupted run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import safetensors.torch
import torch
import yaml

from perception.engine import find_latest
from tests.perception.models.helpers import MICRO
from tools.train import main as train


@pytest.fixture(scope="module")
def micro_yaml(indexed_world_copy, tmp_path_factory):
    base = tmp_path_factory.mktemp("train_cli")
    root = indexed_world_copy("train_cli", max_sweeps=1, max_clip_frames=2)
    raw = {**MICRO, "data": {**MICRO["data"], "root": str(root), "train_split": "all"}}
    path = base / "micro.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_two_steps_write_config_and_checkpoint(micro_yaml, tmp_path, capsys):
    code = train([str(micro_yaml), "--work-dir", str(tmp_path), "--no-progress",
                  "--set", "train.max_steps=2", "--set", "train.batch_size=2",
                  "--set", "train.workers=0"])  # fmt: skip
    assert code == 0
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["train"]["max_steps"] == 2 and saved["data"]["train_split"] == "all"
    assert (tmp_path / "checkpoints" / "step_2" / "checkpoint.json").is_file()
    assert str(tmp_path / "checkpoints") in capsys.readouterr().out


def test_unknown_override_key_names_its_path(micro_yaml, tmp_path, capsys):
    code = train([str(micro_yaml), "--work-dir", str(tmp_path), "--set", "train.bogus_key=1"])
    assert code == 2
    assert "train.bogus_key: unknown key" in capsys.readouterr().err
    assert not (tmp_path / "config.yaml").exists()


def test_a_setting_the_model_lacks_fails_with_its_key(micro_yaml, tmp_path, capsys):
    code = train([str(micro_yaml), "--work-dir", str(tmp_path), "--no-progress",
                  "--set", "train.freeze_prefixes=[camera.nothing.]", "--set", "train.workers=0"])  # fmt: skip
    assert code == 2
    assert (
        "train.freeze_prefixes: 'camera.nothing.' matches no parameter" in capsys.readouterr().err
    )
    assert not (tmp_path / "checkpoints").exists()


def test_missing_dataroot_is_named_without_the_index_hint(micro_yaml, tmp_path, capsys):
    missing = tmp_path / "no_such_root"
    code = train([str(micro_yaml), "--work-dir", str(tmp_path / "w"),
                  "--set", f"data.root={missing}"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err == f"error: data.root: dataroot {missing} does not exist " + (
        "(set the path of a nuScenes dataroot)\n"
    )
    assert not (tmp_path / "w").exists()


def test_unknown_split_is_one_line(micro_yaml, tmp_path, capsys):
    code = train([str(micro_yaml), "--work-dir", str(tmp_path / "w"),
                  "--set", "data.train_split=minitrain"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown split 'minitrain'") and err.count("\n") == 1, err
    assert not (tmp_path / "w" / "config.yaml").exists()


def test_resume_must_fails_where_there_is_nothing_to_resume(micro_yaml, tmp_path, capsys):
    typo = tmp_path / "wrok_dir"
    assert train([str(micro_yaml), "--work-dir", str(typo), "--resume=must"]) == 2
    assert capsys.readouterr().err == (
        f"error: --resume=must: work dir {typo} does not exist; nothing to resume\n"
    )
    assert not typo.exists()


def test_resume_says_whether_it_resumes(micro_yaml, tmp_path, capsys):
    """--resume on a work dir without a checkpoint says it trains from scratch (mmengine and
    detectron2 log it too); on one with a checkpoint it names the checkpoint."""
    work = tmp_path / "run"
    common = ["--no-progress", "--set", "train.max_steps=1", "--set", "train.batch_size=2",
              "--set", "train.workers=0"]  # fmt: skip
    assert train([str(micro_yaml), "--work-dir", str(work), "--resume", *common]) == 0
    assert f"--resume: work dir {work} does not exist; training from scratch" in (
        capsys.readouterr().out
    )
    assert train([str(micro_yaml), "--work-dir", str(work), "--resume=must", *common]) == 0
    assert f"--resume: continuing from {work / 'checkpoints' / 'step_1'}" in (
        capsys.readouterr().out
    )


def _torchrun(*args: str, timeout: float = 300) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "tools/train.py", *args],
        check=True, env=env, timeout=timeout,
    )  # fmt: skip


def _log(work_dir: Path) -> list[dict]:
    return [json.loads(x) for x in (work_dir / "log.jsonl").read_text().splitlines()]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(checkpoint / "model.safetensors")


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_torchrun_two_processes_follow_one_process(micro_yaml, tmp_path):
    """2 gloo processes x batch 1 against 1 process x batch 2, 4 steps: the same loss curve.

    Same samples per step: the sampler gives rank r the shuffled indices r, r + 2, ..., so the
    two batch-1 batches of a step are the one-process batch of 2; augmentation draws from
    (seed, epoch, sample index); modality dropout is off. Synchronized BatchNorm and global
    loss normalizers make the rest equal up to float summation order. Measured: total loss
    within 2e-5 relative, loss terms within 2e-4 relative (the gap grows with steps, AdamW
    turning tiny gradient differences into lr-sized updates); before both, the curves were
    35% apart by step 2. The tolerances leave 10-50x room and still catch any per-process
    statistic."""
    common = ["--no-progress", "--set", "train.max_steps=4", "--set", "train.workers=0",
              "--set", "train.log_every=1", "--set", "model.modality_dropout=[0.0, 0.0]"]  # fmt: skip
    assert train([str(micro_yaml), "--work-dir", str(tmp_path / "one"), *common,
                  "--set", "train.batch_size=2"]) == 0  # fmt: skip
    _torchrun(str(micro_yaml), "--work-dir", str(tmp_path / "two"), *common,
              "--set", "train.batch_size=1")  # fmt: skip

    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    print("one process", [x["loss"] for x in one], "two processes", [x["loss"] for x in two])
    assert [x["step"] for x in one] == [x["step"] for x in two] == [1, 2, 3, 4]
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3), a["step"]
        assert b["losses"].keys() == a["losses"].keys()
        for name, value in a["losses"].items():
            assert b["losses"][name] == pytest.approx(value, rel=5e-3, abs=1e-3), (a["step"], name)
    assert (tmp_path / "two" / "checkpoints" / "step_4" / "checkpoint.json").is_file()


@pytest.mark.slow
def test_torchrun_resume_is_exact_on_every_rank(micro_yaml, tmp_path):
    """With modality dropout on, every rank draws training randomness; resuming a 2-process
    run from step 2 must end at the weights of the uninterrupted run, bit for bit."""
    common = ["--no-progress", "--set", "train.max_steps=4", "--set", "train.workers=0",
              "--set", "train.batch_size=1", "--set", "train.checkpoint_every=2",
              "--set", "train.log_every=1", "--set", "model.modality_dropout=[0.3, 0.3]"]  # fmt: skip
    straight = tmp_path / "straight"
    _torchrun(str(micro_yaml), "--work-dir", str(straight), *common)
    # the state of an interruption after step 2: only step_2 saved
    resumed = tmp_path / "resumed"
    shutil.copytree(straight, resumed)
    shutil.rmtree(resumed / "checkpoints" / "step_4")
    (resumed / "checkpoints" / "latest").write_text("step_2\n")
    (resumed / "log.jsonl").write_text("".join(
        json.dumps(x) + "\n" for x in _log(straight) if x["step"] <= 2))  # fmt: skip
    _torchrun(str(micro_yaml), "--work-dir", str(resumed), *common, "--resume")
    _assert_same_weights(
        _weights(straight / "checkpoints" / "step_4"), _weights(resumed / "checkpoints" / "step_4")
    )
    assert [x["loss"] for x in _log(resumed)] == [x["loss"] for x in _log(straight)]


@pytest.mark.slow
def test_sigkill_then_resume_ends_at_the_uninterrupted_weights(micro_yaml, tmp_path):
    """A run killed with SIGKILL after a checkpoint (at whatever point it had reached: inside a
    step, inside a later checkpoint write) and resumed with --resume ends at the weights of an
    uninterrupted run, bit for bit. The interrupted run loads with 2 worker processes, the
    uninterrupted one with none: augmentation depends on (seed, epoch, sample) only."""
    steps = 6  # 12 samples, batch 2: crosses no epoch; the kill lands around step 2..3
    common = ["--no-progress", "--set", f"train.max_steps={steps}", "--set",
              "train.batch_size=2", "--set", "train.checkpoint_every=1",
              "--set", "train.keep_checkpoints=2"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(work_dir: Path, *extra: str) -> subprocess.Popen:
        command = [sys.executable, "tools/train.py", str(micro_yaml), "--work-dir",
                   str(work_dir), *common, *extra]  # fmt: skip
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)

    straight = run(tmp_path / "straight", "--set", "train.workers=0")
    killed_dir = tmp_path / "killed"
    victim = run(killed_dir, "--set", "train.workers=2")
    deadline = time.monotonic() + 300
    while not (killed_dir / "checkpoints" / "step_2" / "checkpoint.json").is_file():
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "no step_2 checkpoint after 300 s"
        time.sleep(0.02)
    assert victim.poll() is None
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(timeout=60) == -signal.SIGKILL
    latest = find_latest(killed_dir)
    assert latest is not None and 2 <= int(latest.name.split("_")[1]) < steps
    resumed = run(killed_dir, "--set", "train.workers=2", "--resume")
    assert resumed.wait(timeout=300) == 0
    assert straight.wait(timeout=300) == 0
    _assert_same_weights(
        _weights(tmp_path / "straight" / "checkpoints" / f"step_{steps}"),
        _weights(killed_dir / "checkpoints" / f"step_{steps}"),
    )
