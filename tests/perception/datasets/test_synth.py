"""The synthetic world: the nuScenes devkit loads it, evaluates it, and its tables tell the truth."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.common.loaders import load_gt
from nuscenes.eval.detection.data_classes import DetectionBox
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import (
    category_to_detection_name,
    detection_name_to_rel_attributes,
)
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import points_in_box
from nuscenes.utils.splits import create_splits_scenes
from pyquaternion import Quaternion

from perception.datasets.synth import generate_world, scene_truth
from perception.datasets.synth.catalog import DETECTION_CLASSES
from tools.create_data import main

# Must match the tiny_world fixture in tests/conftest.py.
TINY = dict(version="v1.0-mini", scenes=3, samples_per_scene=4, seed=0, image_size=(320, 180))


@pytest.fixture(scope="module")
def nusc(tiny_world: Path) -> NuScenes:
    return NuScenes(version="v1.0-mini", dataroot=str(tiny_world), verbose=False)


@pytest.fixture(scope="module")
def truth():
    return scene_truth(**TINY)


def _lidar_to_global(nusc: NuScenes, sd_token: str) -> LidarPointCloud:
    """The devkit's own chain: sensor -> ego -> global, on the stored float32 cloud."""
    sd = nusc.get("sample_data", sd_token)
    pc = LidarPointCloud.from_file(nusc.get_sample_data_path(sd_token))
    cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
    pose = nusc.get("ego_pose", sd["ego_pose_token"])
    pc.rotate(Quaternion(cs["rotation"]).rotation_matrix)
    pc.translate(np.array(cs["translation"]))
    pc.rotate(Quaternion(pose["rotation"]).rotation_matrix)
    pc.translate(np.array(pose["translation"]))
    return pc


def test_devkit_loads_world_and_files_exist(nusc: NuScenes, tiny_world: Path):
    assert len(nusc.scene) == 3 and len(nusc.sample) == 12
    assert {s["name"] for s in nusc.scene} == {"scene-0103", "scene-0916", "scene-0061"}
    splits = create_splits_scenes()
    assert sum(s["name"] in splits["mini_val"] for s in nusc.scene) == 2
    for sd in nusc.sample_data:
        path = tiny_world / sd["filename"]
        assert path.is_file(), sd["filename"]
        if sd["fileformat"] == "pcd":
            assert path.name.endswith(".pcd.bin") and path.stat().st_size % 20 == 0
            assert sd["width"] == 0 and sd["height"] == 0
        else:
            assert (sd["width"], sd["height"]) == (320, 180)
        folder = "samples" if sd["is_key_frame"] else "sweeps"
        assert sd["filename"].startswith(f"{folder}/{sd['channel']}/")
    for sample in nusc.sample:
        assert len(sample["data"]) == 7  # LIDAR_TOP and six cameras
        points = np.fromfile(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]), np.float32)
        points = points.reshape(-1, 5)
        assert 20_000 < len(points) < 40_000
        assert np.all(np.linalg.norm(points[:, :3], axis=1) < 71.0)
        assert set(np.unique(points[:, 4])) <= set(range(32))


def test_every_scene_has_all_detection_classes(nusc: NuScenes):
    for ann in nusc.sample_annotation:
        assert category_to_detection_name(ann["category_name"]) is not None
    for scene in nusc.scene:
        classes = {
            category_to_detection_name(nusc.get("sample_annotation", a)["category_name"])
            for s in nusc.sample
            if s["scene_token"] == scene["token"]
            for a in s["anns"]
        }
        assert classes == set(DETECTION_CLASSES), scene["name"]


def test_attributes_and_visibility_are_valid(nusc: NuScenes):
    for ann in nusc.sample_annotation:
        name = category_to_detection_name(ann["category_name"])
        allowed = detection_name_to_rel_attributes(name)
        attrs = [nusc.get("attribute", t)["name"] for t in ann["attribute_tokens"]]
        assert len(attrs) == (1 if allowed else 0) and set(attrs) <= set(allowed)
        assert ann["visibility_token"] in {"1", "2", "3", "4"}
        assert ann["num_radar_pts"] == 0
    levels = [a["visibility_token"] for a in nusc.sample_annotation]
    assert len(set(levels)) >= 3  # occlusion really varies


def test_box_velocity_matches_simulation(nusc: NuScenes, truth):
    moving, static = 0, 0
    for scene in nusc.scene:
        world = truth[scene["name"]]
        obj_of = {tok: i for i, tok in enumerate(world.object_tokens)}
        for ann in nusc.sample_annotation:
            if nusc.get("sample", ann["sample_token"])["scene_token"] != scene["token"]:
                continue
            if not (ann["prev"] and ann["next"]):
                continue
            obj = obj_of[ann["instance_token"]]
            t = (nusc.get("sample", ann["sample_token"])["timestamp"] - world.t0_us) / 1e6
            # Offset paths change speed where a straight meets an arc; a centred difference
            # across such a joint averages the two, so compare only within one segment.
            road, tracks = world.layout.road, world.layout.objects.tracks
            ends = np.array(
                [
                    nusc.get("sample", nusc.get("sample_annotation", ann[k])["sample_token"])[
                        "timestamp"
                    ]
                    for k in ("prev", "next")
                ]
            )
            te = (ends - world.t0_us) / 1e6
            s = tracks.s0[obj] + tracks.v[obj] * te + 0.5 * tracks.a[obj] * te**2
            segment = np.searchsorted(road.seg_s0, s, side="right")
            if segment[0] != segment[1]:
                continue
            _, _, velocity = world.layout.objects.boxes(road, t)
            estimate = nusc.box_velocity(ann["token"])[:2]
            np.testing.assert_allclose(estimate, velocity[obj], atol=0.05)
            if np.hypot(*velocity[obj]) > 1.0:
                moving += 1
            elif world.layout.objects.kind[obj] in ("parked", "static", "standing"):
                assert np.hypot(*estimate) < 1e-6
                static += 1
    assert moving > 10 and static > 10


def test_num_lidar_pts_matches_devkit_points_in_box(nusc: NuScenes):
    checked = 0
    for sample in nusc.sample:
        pc = _lidar_to_global(nusc, sample["data"]["LIDAR_TOP"])
        for token in sample["anns"]:
            ann = nusc.get("sample_annotation", token)
            count = int(points_in_box(nusc.get_box(token), pc.points[:3]).sum())
            assert ann["num_lidar_pts"] == count, ann["category_name"]
            checked += count > 0
    assert checked > 100


def test_timing_and_chains(nusc: NuScenes):
    by_channel: dict[tuple[str, str], list[dict]] = {}
    for sd in nusc.sample_data:
        scene = nusc.get("sample", sd["sample_token"])["scene_token"]
        by_channel.setdefault((scene, sd["channel"]), []).append(sd)
    for (_, channel), frames in by_channel.items():
        firsts = [f for f in frames if f["prev"] == ""]
        assert len(firsts) == 1
        chain = [firsts[0]]
        while chain[-1]["next"]:
            nxt = nusc.get("sample_data", chain[-1]["next"])
            assert nxt["prev"] == chain[-1]["token"]
            chain.append(nxt)
        assert len(chain) == len(frames)
        times = np.array([f["timestamp"] for f in chain])
        period = 50_000 if channel == "LIDAR_TOP" else 83_333
        assert np.all(np.abs(np.diff(times) - period) < 1_000)
        keys = [i for i, f in enumerate(chain) if f["is_key_frame"]]
        assert np.all(np.diff(keys) == (10 if channel == "LIDAR_TOP" else 6))
        for f in chain:
            sample = nusc.get("sample", f["sample_token"])
            pose = nusc.get("ego_pose", f["ego_pose_token"])
            assert pose["timestamp"] == f["timestamp"]
            if f["is_key_frame"]:
                assert abs(f["timestamp"] - sample["timestamp"]) <= 25_000
            else:
                assert f["timestamp"] < sample["timestamp"]  # sweeps belong to the next sample
    for scene in nusc.scene:
        sample = nusc.get("sample", scene["first_sample_token"])
        times = [sample["timestamp"]]
        while sample["next"]:
            sample = nusc.get("sample", sample["next"])
            times.append(sample["timestamp"])
        assert sample["token"] == scene["last_sample_token"]
        assert len(times) == scene["nbr_samples"]
        assert np.all(np.abs(np.diff(times) - 500_000) < 1_000)
    for inst in nusc.instance:
        ann = nusc.get("sample_annotation", inst["first_annotation_token"])
        assert ann["prev"] == ""
        n = 1
        while ann["next"]:
            ann = nusc.get("sample_annotation", ann["next"])
            n += 1
        assert ann["token"] == inst["last_annotation_token"] and n == inst["nbr_annotations"]


def test_official_detection_eval_scores_ground_truth_perfectly(nusc: NuScenes, tmp_path: Path):
    gt = load_gt(nusc, "mini_val", DetectionBox)
    results = {
        token: [
            {
                "sample_token": token,
                "translation": list(b.translation),
                "size": list(b.size),
                "rotation": list(b.rotation),
                "velocity": [float(v) if np.isfinite(v) else 0.0 for v in b.velocity],
                "detection_name": b.detection_name,
                "detection_score": 0.9,
                "attribute_name": b.attribute_name,
            }
            for b in gt[token]
            if b.num_pts > 0  # the evaluation drops ground truth without points, not predictions
        ]
        for token in gt.sample_tokens
    }
    path = tmp_path / "results.json"
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False}
    path.write_text(json.dumps({"meta": {**meta, "use_external": False}, "results": results}))
    evaluator = DetectionEval(
        nusc, config_factory("detection_cvpr_2019"), str(path), "mini_val", str(tmp_path / "eval"),
        verbose=False,
    )  # fmt: skip
    metrics, _ = evaluator.evaluate()
    summary = metrics.serialize()
    # Every class has ground truth with points in mini_val, and perfect boxes score perfectly.
    assert set(summary["mean_dist_aps"]) == set(DETECTION_CLASSES)
    assert min(summary["mean_dist_aps"].values()) > 0.99
    assert summary["nd_score"] > 0.99


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_deterministic_for_a_seed_and_independent_of_workers(tmp_path: Path):
    args = dict(version="v1.0-mini", scenes=2, samples_per_scene=2, image_size=(96, 54))
    a = generate_world(tmp_path / "a", seed=3, workers=1, **args)
    generate_world(tmp_path / "b", seed=3, workers=2, **args)
    generate_world(tmp_path / "c", seed=4, workers=1, **args)
    ha, hb, hc = _hashes(tmp_path / "a"), _hashes(tmp_path / "b"), _hashes(tmp_path / "c")
    assert ha == hb
    assert a.scenes == 2 and a.samples == 4 and a.lidar_sweeps == 2 * 20
    assert a.images == 2 * 6 * 12 and sum(a.annotations_per_class.values()) == a.annotations
    for table in ("sample_annotation", "ego_pose", "sample_data", "instance"):
        assert ha[f"v1.0-mini/{table}.json"] != hc[f"v1.0-mini/{table}.json"]
    data_a = {h for k, h in ha.items() if k.startswith(("samples", "sweeps"))}
    data_c = {h for k, h in hc.items() if k.startswith(("samples", "sweeps"))}
    assert not data_a & data_c  # no image or sweep is the same


def test_cli_writes_a_world_and_reports_bad_arguments(tmp_path: Path, capsys):
    out = tmp_path / "w"
    argv = ["synth", "--out", str(out), "--scenes", "1", "--samples-per-scene", "2"]
    assert main([*argv, "--seed", "1", "--image-size", "64", "36", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert str(out.resolve()) in printed and "annotations per class" in printed
    nusc = NuScenes("v1.0-mini", str(out), verbose=False)
    assert nusc.scene[0]["name"] == "scene-0103"
    with pytest.raises(SystemExit) as exit_info:
        main(["synth", "--out", str(tmp_path / "x"), "--scenes", "11"])
    assert exit_info.value.code == 2
    assert "v1.0-mini has 10 scene names (mini_train 8 + mini_val 2); asked for 11" in (
        capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        main([*argv, "--seed", "1"])  # the world exists and --overwrite was not given
    assert "exists" in capsys.readouterr().err
