"""`check_dataroot` and the index builder on damaged dataroots: every token field, every
sensor file (sweeps included), and errors that name the table, record and field."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from perception.datasets.checks import REFERENCES, check_dataroot, check_tables
from perception.datasets.index import IndexFileError, build_index
from perception.datasets.io import DataError
from perception.datasets.nuscenes import NuScenesDataset

VERSION = "v1.0-mini"


def _tables_copy(world: Path, dest: Path) -> Path:
    """The tables and map masks of `world` (what the devkit and the table checks read)."""
    shutil.copytree(world / VERSION, dest / VERSION)
    shutil.copytree(world / "maps", dest / "maps")
    return dest


def _load(root: Path, table: str) -> list[dict]:
    return json.loads((root / VERSION / f"{table}.json").read_text())


def _save(root: Path, table: str, records: list[dict]) -> None:
    (root / VERSION / f"{table}.json").write_text(json.dumps(records))


def _corrupt_jpeg_middle(path: Path) -> None:
    """2,000 random bytes (no 0xFF: no marker) over the middle of the file: libjpeg only warns
    ("Corrupt JPEG data") and returns an image, grey where the data was lost."""
    raw = bytearray(path.read_bytes())
    mid = len(raw) // 2
    raw[mid - 1000 : mid + 1000] = (
        np.random.default_rng(0).integers(0, 255, 2000, np.uint8).tobytes()
    )
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize(
    "table,field,target", REFERENCES, ids=[f"{t}.{f}" for t, f, _ in REFERENCES]
)
def test_check_follows_every_token_field(tiny_world, tmp_path, table, field, target):
    root = _tables_copy(tiny_world, tmp_path)
    records = _load(root, table)
    record = next(r for r in records if r.get(field) not in ("", []))
    if isinstance(record[field], list):
        record[field] = [*record[field], "no-such-token"]
    else:
        record[field] = "no-such-token"
    _save(root, table, records)
    problems = check_tables(root, VERSION)
    text = "\n".join(str(p) for p in problems)
    assert len(problems) == 1, text
    assert problems[0].path.endswith(f"{table}.json")
    assert f"{field} token(s) not in {target}.json" in text
    assert f"record {record['token']}: {field} " in text and "no-such-token" in text


def test_check_names_a_missing_token_field_and_an_unmapped_log(tiny_world, tmp_path):
    root = _tables_copy(tiny_world, tmp_path)
    annotations = _load(root, "sample_annotation")
    del annotations[0]["visibility_token"]
    _save(root, "sample_annotation", annotations)
    maps = _load(root, "map")
    log_token = maps[0]["log_tokens"].pop()
    _save(root, "map", maps)
    text = "\n".join(str(p) for p in check_tables(root, VERSION))
    assert "without the field 'visibility_token'" in text and annotations[0]["token"] in text
    assert "no map.json record lists in log_tokens" in text and log_token in text


def _first_lidar_keyframe_with_prev(records: list[dict]) -> dict:
    return next(
        r for r in records if r["is_key_frame"] and r["filename"].endswith(".pcd.bin") and r["prev"]
    )


@pytest.mark.parametrize(
    "table,field",
    [
        ("sample_annotation", "attribute_tokens"),
        ("sample_annotation", "next"),
        ("sample_annotation", "visibility_token"),
        ("sample_annotation", "instance_token"),  # the devkit itself fails to load
        ("sample_data", "prev"),
    ],
)
def test_index_names_table_record_and_field_of_a_dangling_token(tiny_world, tmp_path, table, field):
    root = _tables_copy(tiny_world, tmp_path)
    records = _load(root, table)
    if table == "sample_data":
        record = _first_lidar_keyframe_with_prev(records)
    else:
        record = next(r for r in records if r[field] not in ("", []))
    record[field] = ["no-such-token"] if field == "attribute_tokens" else "no-such-token"
    _save(root, table, records)
    with pytest.raises(IndexFileError) as error:
        build_index(root, VERSION, out=tmp_path / "index.json.gz", progress=False)
    message = str(error.value)
    assert f"{table}.json" in message and f"record {record['token']}: {field}" in message
    assert "tools/create_data.py check" in message


# -- sensor files: keyframes and sweeps, and the strict JPEG decoder ------------------------


@pytest.fixture(scope="module")
def damaged_root(indexed_world_copy):
    """A world with one of each damage: a JPEG corrupted in the middle, a deleted LiDAR
    sweep, and dangling attribute / next / prev / visibility tokens."""
    root = indexed_world_copy("checks")
    sample_data = _load(root, "sample_data")
    image = next(r for r in sample_data if r["is_key_frame"] and r["fileformat"] == "jpg")
    _corrupt_jpeg_middle(root / image["filename"])
    sweep = next(r for r in sample_data if not r["is_key_frame"] and r["fileformat"] == "pcd")
    (root / sweep["filename"]).unlink()
    dangling_prev = _first_lidar_keyframe_with_prev(sample_data)
    dangling_prev["prev"] = "gone-sd"
    _save(root, "sample_data", sample_data)
    annotations = _load(root, "sample_annotation")
    with_next = next(r for r in annotations if r["next"])
    with_next["next"] = "gone-ann"
    annotations[0]["attribute_tokens"] = ["gone-attr"]
    annotations[1]["visibility_token"] = "gone-vis"
    _save(root, "sample_annotation", annotations)
    return root, root / image["filename"], root / sweep["filename"]


def test_check_lists_every_damage_in_one_run(damaged_root):
    root, image, sweep = damaged_root
    result = check_dataroot(root, VERSION, progress=False, workers=2)
    text = "\n".join(str(p) for p in result.problems)
    assert re.search(re.escape(image.name) + ": .*corrupt JPEG", text, re.I)  # libjpeg: a warning
    assert f"{sweep.name}: LiDAR file is missing" in text  # sweeps are read by default
    for token in ("gone-sd", "gone-ann", "gone-attr", "gone-vis"):
        assert token in text
    assert len(result.problems) == 6, text
    assert result.files_not_checked == {}


def test_keyframes_only_says_what_it_did_not_read(damaged_root):
    root, image, sweep = damaged_root
    result = check_dataroot(root, VERSION, keyframes_only=True, progress=False)
    text = "\n".join(str(p) for p in result.problems)
    assert re.search(re.escape(image.name) + ": .*corrupt JPEG", text, re.I)
    assert sweep.name not in text
    sample_data = _load(root, "sample_data")
    lidar_sweeps = sum(not r["is_key_frame"] and r["fileformat"] == "pcd" for r in sample_data)
    assert result.files_not_checked["LiDAR sweep file(s)"] == lidar_sweeps
    assert f"NOT read: {lidar_sweeps} LiDAR sweep file(s)" in result.scope()
    assert result.files_checked == sum(r["is_key_frame"] for r in sample_data)


def test_dataset_raises_naming_a_jpeg_corrupted_in_the_middle(indexed_world_copy):
    root = indexed_world_copy("corrupt_jpeg")
    ds = NuScenesDataset(root, VERSION, "all", sweeps=1, clip_frames=1)
    image = root / ds.records[0]["cameras"]["CAM_FRONT"]["frames"][0]["path"]
    _corrupt_jpeg_middle(image)
    with pytest.raises(DataError, match=re.escape(str(image)) + ": .*(?i:corrupt JPEG)"):
        ds[0]
