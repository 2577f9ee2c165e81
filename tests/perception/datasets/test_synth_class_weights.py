"""Class weights: chosen classes made rare in the training scenes; val scenes keep the normal mix."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from perception.datasets.synth import scene_truth
from perception.datasets.synth.catalog import DETECTION_CLASSES
from perception.datasets.synth.class_weights import (
    RARE_WEIGHT,
    class_weights_option,
    parse_class_weights,
    rare_class_weights,
    validate_class_weights,
)
from perception.datasets.synth.writer import generate_world
from tools.create_data import main

# The tiny_world fixture's arguments (tests/conftest.py): scene-0103 and scene-0916 are
# mini_val, scene-0061 is mini_train.
TINY = dict(version="v1.0-mini", scenes=3, samples_per_scene=4, seed=0)
# sha256 of the tiny world's tables, written by the generator before class weights existed
# (commit 906f34a); a world made without the option must not change by a byte.
TINY_SHA256 = {
    "sample_annotation": "dcd04f70edca39f4efa5818d6ada77aa620ea22a87e580959ee22802b226646a",
    "instance": "e76f211e2e1070785662f5bf1795c3015886f3639a5d8215c297f4c727459ee4",
}
# A larger layout-only world (nothing rendered) for the statistics of the thinning.
MANY = dict(version="v1.0-trainval", scenes=10, val_scenes=2, samples_per_scene=4, seed=5)
MANY_WEIGHTS = {"car": 0.5, "pedestrian": 0.2, "bicycle": 0.0}


def _objects(world) -> np.ndarray:
    """An object's identity in its layout: [N, 8] (wlh, s0, v, a, d, yaw_offset)."""
    o = world.layout.objects
    t = o.tracks
    return np.concatenate([o.wlh, np.stack([t.s0, t.v, t.a, t.d, t.yaw_offset], axis=1)], 1)


def _is_subsequence(rows: np.ndarray, of: np.ndarray) -> bool:
    j = 0
    for row in rows:
        while j < len(of) and not np.array_equal(of[j], row):
            j += 1
        if j == len(of):
            return False
        j += 1
    return True


@pytest.fixture(scope="module")
def many():
    normal = scene_truth(**MANY)
    thinned = scene_truth(**MANY, class_weights=MANY_WEIGHTS)
    return normal, thinned


# ---- the option ------------------------------------------------------------------------------
def test_weights_are_validated_and_unknown_classes_named():
    full = validate_class_weights({"bicycle": 0.05})
    assert list(full) == list(DETECTION_CLASSES)
    assert full["bicycle"] == 0.05 and full["car"] == 1.0
    with pytest.raises(ValueError, match="unknown class 'bicycel'; valid classes: car, truck"):
        validate_class_weights({"bicycel": 0.1})
    with pytest.raises(ValueError, match="bicycle must be between 0 and 1.*got -0.1"):
        validate_class_weights({"bicycle": -0.1})
    with pytest.raises(ValueError, match="car must be between 0 and 1.*got 2"):
        validate_class_weights({"car": 2})
    with pytest.raises(ValueError, match="car must be between 0 and 1.*got nan"):
        validate_class_weights({"car": float("nan")})
    with pytest.raises(ValueError, match="car must be a number"):
        validate_class_weights({"car": "0.5"})


def test_command_line_forms():
    weights = parse_class_weights("car=1, pedestrian=1,bicycle=0.05,construction_vehicle=0")
    assert weights["bicycle"] == 0.05 and weights["construction_vehicle"] == 0.0
    assert weights["truck"] == 1.0
    rare = rare_class_weights(["bicycle", "construction_vehicle"])
    assert {c for c, w in rare.items() if w != 1.0} == {"bicycle", "construction_vehicle"}
    assert rare["bicycle"] == RARE_WEIGHT
    both = class_weights_option("car=0.5", "bicycle")
    assert both is not None and both["car"] == 0.5 and both["bicycle"] == RARE_WEIGHT
    assert class_weights_option(None, None) is None
    for text, message in [
        ("car", "'car' is not CLASS=WEIGHT"),
        ("car=x", "weight of car is not a number: 'x'"),
        ("car=0.1,car=0.2", "car is given twice"),
        ("bike=0.1", "unknown class 'bike'"),
        (" , ", "no class named"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_class_weights(text)
    with pytest.raises(ValueError, match="bicycle named in both --class-weights and --rare"):
        class_weights_option("bicycle=0.2", "bicycle,trailer")
    with pytest.raises(ValueError, match="unknown class 'cyclist'"):
        class_weights_option(None, "cyclist")


def test_cli_reports_a_bad_weight_before_writing_anything(tmp_path: Path, capsys):
    out = tmp_path / "w"
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(out), "--scenes", "2", "--rare", "bicycle,tram"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "synth: error: class weights: unknown class 'tram'; valid classes: car," in err
    assert not out.exists()


# ---- the thinning (layouts only, nothing rendered) -------------------------------------------
def test_weight_zero_removes_a_class_from_training_scenes_only_and_ones_change_nothing():
    small = dict(version="v1.0-mini", scenes=2, val_scenes=1, samples_per_scene=2, seed=3)
    normal = scene_truth(**small)
    ones = scene_truth(**small, class_weights=dict.fromkeys(DETECTION_CLASSES, 1.0))
    zero = scene_truth(**small, class_weights={"pedestrian": 0.0})
    (val, train) = list(normal)  # val scenes come first
    for name in (val, train):
        assert np.array_equal(_objects(ones[name]), _objects(normal[name]))
        assert ones[name].layout.description == normal[name].layout.description
    assert np.array_equal(_objects(zero[val]), _objects(normal[val]))
    assert "pedestrian" in normal[train].layout.objects.detection
    assert "pedestrian" not in zero[train].layout.objects.detection
    kept = [d for d in normal[train].layout.objects.detection if d != "pedestrian"]
    assert zero[train].layout.objects.detection == kept


@pytest.mark.slow
def test_val_scenes_keep_the_normal_mix_and_train_scenes_a_subset(many):
    normal, thinned = many
    names = list(normal)
    assert names == list(thinned)
    for i, name in enumerate(names):
        a, b = _objects(normal[name]), _objects(thinned[name])
        if i < MANY["val_scenes"]:  # val scenes come first
            assert np.array_equal(a, b)
            assert normal[name].layout.description == thinned[name].layout.description
            continue
        assert _is_subsequence(b, a) and len(b) < len(a)
        # The rest of the scene is the normal world's.
        assert np.array_equal(
            normal[name].layout.clutter.centre, thinned[name].layout.clutter.centre
        )
        assert np.array_equal(normal[name].key_us, thinned[name].key_us)
        detection = thinned[name].layout.objects.detection
        assert f"{len(detection)} objects" in thinned[name].layout.description
        assert "bicycle" not in detection  # weight 0: never appears


@pytest.mark.slow
def test_counts_per_class_follow_the_weights(many):
    normal, thinned = many
    train = list(normal)[MANY["val_scenes"] :]
    before = Counter(d for n in train for d in normal[n].layout.objects.detection)
    after = Counter(d for n in train for d in thinned[n].layout.objects.detection)
    assert before["bicycle"] > 0 and after["bicycle"] == 0
    for name, weight in MANY_WEIGHTS.items():
        if weight > 0:
            # Binomial(n, w) with n > 150: 0.1 is more than 3 standard deviations of n_kept / n.
            assert before[name] > 150
            assert abs(after[name] / before[name] - weight) < 0.1, (name, after, before)
    for name in set(DETECTION_CLASSES) - set(MANY_WEIGHTS):
        assert after[name] == before[name]


@pytest.mark.slow
def test_thinning_is_deterministic_and_keeps_parts_with_their_objects(many):
    normal, thinned = many
    again = scene_truth(**MANY, class_weights=MANY_WEIGHTS)
    for name in normal:
        assert np.array_equal(_objects(again[name]), _objects(thinned[name]))
        # Parts follow their objects: every kept object keeps all its parts, in order.
        o, p = thinned[name].layout.objects, normal[name].layout.objects
        assert np.all(np.diff(o.part_object) >= 0) and o.part_object[-1] == len(o) - 1
        assert len(o.part_extent) == len(o.part_object) == len(o.part_style)
        assert len(p.part_extent) >= len(o.part_extent)


# ---- written worlds ---------------------------------------------------------------------------
def test_without_weights_the_world_is_what_it_was(tiny_world: Path):
    for table, digest in TINY_SHA256.items():
        data = (tiny_world / "v1.0-mini" / f"{table}.json").read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, table
    sidecar = json.loads((tiny_world / "synth_world_v1.0-mini.json").read_text())
    assert sidecar["class_weights"] is None and sidecar["format_version"] == 1


def _annotations_by_scene(root: Path) -> dict[str, list[tuple[str, dict]]]:
    """scene name -> [(detection class, annotation row)] from the written tables."""
    tables = {
        t: json.loads((root / "v1.0-mini" / f"{t}.json").read_text())
        for t in ("scene", "sample", "instance", "category", "sample_annotation")
    }
    scene_of_sample = {s["token"]: s["scene_token"] for s in tables["sample"]}
    scene_name = {s["token"]: s["name"] for s in tables["scene"]}
    category = {c["token"]: c["name"] for c in tables["category"]}
    cls = {i["token"]: category[i["category_token"]] for i in tables["instance"]}
    from nuscenes.eval.detection.utils import category_to_detection_name

    out: dict[str, list[tuple[str, dict]]] = {}
    for ann in tables["sample_annotation"]:
        scene = scene_name[scene_of_sample[ann["sample_token"]]]
        out.setdefault(scene, []).append(
            (category_to_detection_name(cls[ann["instance_token"]]), ann)
        )
    return out


@pytest.fixture(scope="module")
def rare_world(tmp_path_factory) -> tuple[Path, str]:
    """The tiny world's arguments (small images: annotations do not depend on them), with
    bicycle removed, cars halved and construction vehicles rare in the training scene."""
    root = tmp_path_factory.mktemp("rare_world")
    argv = ["synth", "--out", str(root), "--scenes", "3", "--samples-per-scene", "4"]
    argv += ["--seed", "0", "--image-size", "32", "18", "--workers", "2"]
    argv += ["--class-weights", "bicycle=0,car=0.5", "--rare", "construction_vehicle"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(argv) == 0
    return root, printed.getvalue()


@pytest.mark.slow
def test_written_world_rare_in_train_normal_in_val(rare_world, tiny_world: Path):
    root, _ = rare_world
    rare, normal = _annotations_by_scene(root), _annotations_by_scene(tiny_world)
    for val_scene in ("scene-0103", "scene-0916"):
        assert rare[val_scene] == normal[val_scene]  # row for row, tokens included
        assert any(c == "bicycle" for c, _ in normal[val_scene])
    train_rare = Counter(c for c, _ in rare["scene-0061"])
    train_normal = Counter(c for c, _ in normal["scene-0061"])
    assert train_normal["bicycle"] > 0 and train_rare["bicycle"] == 0
    assert 0.2 * train_normal["car"] < train_rare["car"] < 0.8 * train_normal["car"]
    assert train_rare["construction_vehicle"] <= train_normal["construction_vehicle"]
    for name in ("truck", "pedestrian", "traffic_cone", "barrier"):
        assert train_rare[name] == train_normal[name]
    # Kept objects are annotated exactly where the normal world annotates them.
    normal_boxes = {(a["sample_token"], tuple(a["translation"])) for _, a in normal["scene-0061"]}
    assert all(
        (a["sample_token"], tuple(a["translation"])) in normal_boxes for _, a in rare["scene-0061"]
    )


@pytest.mark.slow
def test_summary_and_sidecar_record_weights_and_split_counts(rare_world, tiny_world: Path):
    root, printed = rare_world
    weights = "class weights in the training scenes: car 0.5, construction_vehicle 0.15, bicycle 0"
    assert weights in printed
    assert "mini_train (1 scenes), instances/annotations per class: car " in printed
    assert "mini_val (2 scenes)" in printed
    sidecar = json.loads((root / "synth_world_v1.0-mini.json").read_text())
    assert sidecar["class_weights"]["bicycle"] == 0.0
    assert sidecar["class_weights"]["construction_vehicle"] == RARE_WEIGHT
    assert sidecar["class_weights_apply_to"] == "mini_train"
    normal = json.loads((tiny_world / "synth_world_v1.0-mini.json").read_text())
    assert sidecar["splits"]["mini_val"] == normal["splits"]["mini_val"]
    train, train_normal = sidecar["splits"]["mini_train"], normal["splits"]["mini_train"]
    assert train["instances_per_class"]["bicycle"] == 0
    assert train_normal["instances_per_class"]["bicycle"] > 0
    annotations = _annotations_by_scene(root)["scene-0061"]
    assert train["annotations_per_class"] == {
        c: sum(1 for d, _ in annotations if d == c) for c in DETECTION_CLASSES
    }


def test_generate_world_rejects_bad_weights_before_touching_disk(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown class 'Car'"):
        generate_world(tmp_path / "w", scenes=2, class_weights={"Car": 0.5})
    assert not (tmp_path / "w").exists()
