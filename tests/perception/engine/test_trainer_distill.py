"""Training with a teacher (issue #27): the `Distill` hook attaches the teacher the config
names, log.jsonl carries the `distill/...` losses and the teacher's time, the checkpoint holds
the student only, a resumed run (built from the checkpoint's config) reloads the same teacher
and ends where an uninterrupted run does, another teacher on resume is refused, and the time
budget leaves the teacher's time out. A micro camera student on synthetic batches."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch
from torch.utils.data import DataLoader, Dataset

from perception.checkpoint import read_config, read_training_state, save_checkpoint
from perception.config import ConfigError
from perception.engine import TimeBudget, Trainer, build_hooks, seed_everything
from perception.models.builder import build_model
from tests.perception.models.helpers import micro_config, synthetic_batch

STUDENT = ("model.lidar=null", "model.distill.feature_points=[camera_bev, decoder]",
           "train.max_steps=3", "train.log_every=1", "train.checkpoint_every=2",
           "train.warmup=0", "train.lr=1e-3", "train.workers=0")  # fmt: skip


class SyntheticBatches(Dataset):
    """`n` synthetic batches of 2 (one per item: the loader's batch size is 1)."""

    def __init__(self, config, n: int = 3):
        self.batches = [synthetic_batch(config, seed=i) for i in range(n)]

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, index):
        return self.batches[index]

    def set_epoch(self, epoch):
        pass


def first(items):
    return items[0]


def teacher_checkpoint(root, name="teacher", seed=0):
    torch.manual_seed(seed)
    config = micro_config("model.camera=null")
    return save_checkpoint(root / name, step=10, model=build_model(config), config=config)


def make_trainer(config, work_dir, *, resume=False):
    seed_everything(config.seed)
    model = build_model(config)
    loader = DataLoader(SyntheticBatches(config), batch_size=1, collate_fn=first)
    hooks = build_hooks(config, model=model, progress=False)
    return Trainer(config=config, model=model, loader=loader, work_dir=work_dir, device="cpu",
                   resume=resume, hooks=hooks)  # fmt: skip


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    return teacher_checkpoint(tmp_path_factory.mktemp("teachers"))


def test_training_with_a_teacher_logs_its_losses_and_resumes_with_it(tmp_path, teacher):
    config = micro_config(*STUDENT, f"train.teacher={teacher}")
    whole = make_trainer(config, tmp_path / "whole")
    whole.train()

    trainer = make_trainer(config, tmp_path / "run")
    distiller = trainer.model.distiller
    assert distiller.teacher is not None and distiller.teacher_source == str(teacher.resolve())
    last = trainer.train(until_step=2)
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").open()]
    losses = [r["losses"] for r in records if "losses" in r]
    assert len(losses) == 2
    for step in losses:
        assert {"distill/feature/camera_bev", "distill/feature/decoder",
                "distill/response"} <= set(step)  # fmt: skip
        assert all(v > 0 for k, v in step.items() if k.startswith("distill/"))
    assert [r["step"] for r in records if "teacher_seconds" in r] == [1, 2]
    # the checkpoint: the student's weights (adapters included), the teacher by name only
    saved = safetensors.torch.load((last / "model.safetensors").read_bytes())
    assert set(saved) == set(trainer.model.state_dict())
    state = read_training_state(last)["extra"]
    assert state["teacher"] == str(teacher.resolve()) and state["teacher_seconds"] > 0

    # a resumed run, from the checkpoint's own config, reloads the teacher it names
    resumed_config = read_config(last)
    assert resumed_config.train.teacher == str(teacher)
    resumed = make_trainer(resumed_config, tmp_path / "run", resume=True)
    resumed.train()
    assert resumed.step == 3
    assert resumed.model.distiller.teacher is not None
    assert resumed.model.distiller.teacher_seconds > state["teacher_seconds"]
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_resuming_with_another_teacher_is_refused(tmp_path, teacher):
    trainer = make_trainer(micro_config(*STUDENT, f"train.teacher={teacher}"), tmp_path / "run")
    trainer.train(until_step=2)
    other = teacher_checkpoint(tmp_path, "other", seed=1)
    config = micro_config(*STUDENT, f"train.teacher={other}")
    resumed = make_trainer(config, tmp_path / "run", resume=True)
    with pytest.raises(ConfigError, match=r"train\.teacher: .*other.*teacher"):
        resumed.train()


def test_a_missing_teacher_stops_before_training(tmp_path):
    config = micro_config(*STUDENT, f"train.teacher={tmp_path / 'nowhere'}")
    with pytest.raises(ConfigError, match=r"train\.teacher: .*nowhere"):
        build_hooks(config, model=build_model(config), progress=False)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_the_time_budget_leaves_the_teachers_time_out():
    clock, teacher_seconds = Clock(), [5.0]  # 5 s before this `train` call: not this loop's
    budget = TimeBudget(100.0, clock=clock, excluded=lambda: teacher_seconds[0])
    budget.before_train()
    clock.now, teacher_seconds[0] = 10.0, 9.0  # 10 s of loop, 4 of them in the teacher
    assert budget.spent() == pytest.approx(6.0)
    budget.after_train()
    assert budget.spent() == pytest.approx(6.0)


# -- tools/train.py ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def student_yaml(indexed_world_copy, tmp_path_factory):
    import yaml

    from tests.perception.models.helpers import MICRO

    root = indexed_world_copy("train_distill", max_sweeps=1, max_clip_frames=2)
    model = {**MICRO["model"], "lidar": None, "distill": {"feature_points": ["camera_bev"]}}
    raw = {**MICRO, "data": {**MICRO["data"], "root": str(root), "train_split": "all"},
           "model": model}  # fmt: skip
    path = tmp_path_factory.mktemp("train_distill") / "student.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


CLI = ("--no-progress", "--set", "train.batch_size=2", "--set", "train.workers=0")


@pytest.mark.parametrize("kind", ["missing", "camera"])
def test_the_cli_refuses_a_bad_teacher_naming_the_field(student_yaml, tmp_path, capsys, kind):
    from tools.train import main as train

    if kind == "missing":
        path = tmp_path / "nowhere"
    else:
        config = micro_config("model.lidar=null")
        path = save_checkpoint(tmp_path / "cam", step=1, model=build_model(config), config=config)
    code = train([str(student_yaml), "--work-dir", str(tmp_path / "w"), *CLI,
                  "--set", f"train.teacher={path}", "--set", "train.max_steps=1"])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "train.teacher: " in err and str(path.name) in err
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_the_cli_resumes_with_the_checkpoints_teacher(student_yaml, teacher, tmp_path, capsys):
    from tools.train import main as train

    work = tmp_path / "w"
    code = train([str(student_yaml), "--work-dir", str(work), *CLI,
                  "--set", f"train.teacher={teacher}", "--set", "train.max_steps=1"])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    code = train([str(student_yaml), "--work-dir", str(work), *CLI, "--resume",
                  "--set", "train.max_steps=2"])  # fmt: skip
    assert code == 0
    assert f"distilling from its teacher (train.teacher={teacher})" in capsys.readouterr().out
    records = [json.loads(line) for line in (work / "log.jsonl").open()]
    assert [r["step"] for r in records if "teacher_seconds" in r] == [1, 2]
    assert (
        "distill/response"
        in [r for r in records if r.get("step") == 2 and "losses" in r][0]["losses"]
    )
