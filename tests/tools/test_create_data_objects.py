"""tools/create_data.py objects: builds an object bank of a split, refuses an evaluation split
for a training bank, and names what is wrong (exit 2)."""

from __future__ import annotations

import json

import pytest

from perception.generative.bank import INDEX_NAME, ObjectBank
from tools.create_data import main as create_data

VERSION = "v1.0-mini"


@pytest.fixture(scope="module")
def world(indexed_world_copy):
    return indexed_world_copy("objects_cli")


def _objects(world, out, *extra):
    args = ["objects", "--root", str(world), "--version", VERSION, "--out", str(out)]
    return create_data([*args, *extra])


def test_objects_writes_a_training_bank_and_says_so(world, tmp_path, capsys):
    out = tmp_path / "bank"
    assert _objects(world, out, "--split", "mini_train", "--workers", "1") == 0
    printed = capsys.readouterr().out
    bank = ObjectBank.open(out, version=VERSION, split="mini_train", training=True)
    assert f"wrote training object bank of {VERSION} mini_train to {out.resolve()}" in printed
    assert f"{len(bank)} objects" in printed and f"car {bank.counts()['car']}" in printed
    assert len(bank) > 0 and bank.settings["sweeps"] == 10


def test_objects_refuses_an_evaluation_split_unless_asked(world, tmp_path, capsys):
    out = tmp_path / "val"
    with pytest.raises(SystemExit) as exit_info:
        _objects(world, out, "--split", "mini_val")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "split 'mini_val' holds 2 scene(s) of an evaluation split" in err
    assert "--allow-eval-split" in err and not out.exists()
    assert _objects(world, out, "--split", "mini_val", "--allow-eval-split", "--workers", "1") == 0
    assert "wrote EVALUATION (never train on it) object bank" in capsys.readouterr().out
    assert json.loads((out / INDEX_NAME).read_text())["training"] is False


def test_objects_names_a_missing_index_and_an_existing_output(world, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _objects(tmp_path, tmp_path / "b", "--split", "mini_train")
    assert exit_info.value.code == 2
    assert f"perception_index_{VERSION}.json.gz: no index file" in capsys.readouterr().err
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "x").write_text("x")
    with pytest.raises(SystemExit):
        _objects(world, existing, "--split", "mini_train")
    assert f"{existing} exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.slow
def test_workers_write_the_same_bank_as_one_process(world, tmp_path):
    """Two worker processes (spawned) write byte-identical shards to one process's."""
    one, two = tmp_path / "one", tmp_path / "two"
    split = ["--split", "mini_train", "--shard-samples", "2"]  # 4 samples: 2 shards
    assert _objects(world, one, *split, "--workers", "1") == 0
    assert _objects(world, two, *split, "--workers", "2") == 0
    shards = [json.loads((b / INDEX_NAME).read_text())["shards"] for b in (one, two)]
    assert shards[0] == shards[1] and len(shards[0]) == 2


def test_objects_names_a_damaged_sensor_file(world, tmp_path, capsys):
    import shutil

    root = tmp_path / "damaged"
    shutil.copytree(world, root)
    # every keyframe image of the training scene gets the same damage: whichever is read first
    for path in (root / "samples" / "CAM_FRONT").iterdir():
        path.write_bytes(b"not a jpeg")
    with pytest.raises(SystemExit) as exit_info:
        _objects(root, tmp_path / "b", "--split", "mini_train", "--workers", "1")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "samples/CAM_FRONT/" in err and "camera image cannot be decoded" in err
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.partial").exists()
