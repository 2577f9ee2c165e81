"""TensorBoard logging: off by default, the same scalars as log.jsonl when `train.tensorboard`
is on, and an error naming the extra when the package is missing."""

from __future__ import annotations

import importlib.util
import json

import pytest

from perception.config import ConfigError
from tests.perception.engine.test_trainer import indexed_world, make_trainer  # noqa: F401


def test_off_by_default_even_when_installed(indexed_world, tmp_path):  # noqa: F811
    pytest.importorskip("tensorboard")
    make_trainer(indexed_world, tmp_path, "train.max_steps=1").train()
    assert (tmp_path / "log.jsonl").is_file()
    assert not (tmp_path / "tensorboard").exists()


def test_writes_the_logged_scalars(indexed_world, tmp_path):  # noqa: F811
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    make_trainer(indexed_world, tmp_path, "train.max_steps=2", "train.tensorboard=true").train()
    log = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss", "lr", "samples_per_s"} <= tags
    assert {f"loss/{name}" for name in log[-1]["losses"]} <= tags
    for tag in ("loss", "lr"):
        scalars = events.Scalars(tag)
        assert [s.step for s in scalars] == [r["step"] for r in log] == [1, 2]
        assert [s.value for s in scalars] == pytest.approx([r[tag] for r in log], rel=1e-6)


def test_asking_without_the_package_names_the_extra(indexed_world, tmp_path, monkeypatch):  # noqa: F811
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args),
    )
    with pytest.raises(ConfigError, match=r"perception-bev\[tensorboard\]"):
        make_trainer(indexed_world, tmp_path, "train.max_steps=1", "train.tensorboard=true")
    # not asked for: trains without it
    make_trainer(indexed_world, tmp_path, "train.max_steps=1").train()
    assert (tmp_path / "log.jsonl").is_file()
