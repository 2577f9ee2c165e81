"""tools/nusc_to_bag.py on the tiny synthetic world: every sweep and frame lands in the bag."""

from __future__ import annotations

import json
import runpy
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest

from perception.datasets.io import read_points
from perception.deploy import convert, messages
from perception.deploy.bag import bag_topics, read_bag

SCENE = "scene-0061"
CAMERAS = (
    "cam_front",
    "cam_front_right",
    "cam_front_left",
    "cam_back",
    "cam_back_left",
    "cam_back_right",
)


def _main():
    return runpy.run_path(str(Path(__file__).parents[2] / "tools" / "nusc_to_bag.py"))["main"]


@pytest.fixture(scope="module")
def scene_bag(tiny_world, tmp_path_factory):
    out = tmp_path_factory.mktemp("bag") / SCENE
    assert _main()(["--root", str(tiny_world), "--scene", SCENE, "--out", str(out)]) == 0
    return out


def _scene_records(root: Path) -> dict[str, list[dict]]:
    """sample_data of SCENE per channel, from the JSON tables."""
    tables = {t: json.loads((root / "v1.0-mini" / f"{t}.json").read_text())
              for t in ("scene", "sample", "sample_data")}  # fmt: skip
    scene = next(s for s in tables["scene"] if s["name"] == SCENE)
    samples = {s["token"] for s in tables["sample"] if s["scene_token"] == scene["token"]}
    per_channel = defaultdict(list)
    for sd in tables["sample_data"]:
        if sd["sample_token"] in samples:
            per_channel[sd["filename"].split("/")[1]].append(sd)
    return {c: sorted(v, key=lambda sd: sd["timestamp"]) for c, v in per_channel.items()}


def test_message_counts_match_the_dataset(scene_bag, tiny_world):
    records = _scene_records(tiny_world)
    topics = bag_topics(scene_bag)
    assert topics["/lidar/top"] == (messages.POINTCLOUD2, len(records["LIDAR_TOP"]))
    for cam in CAMERAS:
        n = len(records[cam.upper()])
        assert topics[f"/{cam}/image/compressed"] == (messages.COMPRESSED_IMAGE, n)
        assert topics[f"/{cam}/camera_info"] == (messages.CAMERA_INFO, n)
    assert topics["/tf_static"] == (messages.TF_MESSAGE, 1)
    n_poses = len({sd["timestamp"] for sds in records.values() for sd in sds})
    assert topics["/tf"] == (messages.TF_MESSAGE, n_poses)
    assert (tiny_world / "v1.0-mini").exists() and (scene_bag / "metadata.yaml").is_file()
    assert next(scene_bag.glob("*.mcap")).stat().st_size > 0


def test_stamps_monotone_and_equal_to_nuscenes_timestamps(scene_bag, tiny_world):
    records = _scene_records(tiny_world)
    log_times, header_stamps = defaultdict(list), defaultdict(list)
    for topic, msgtype, log_ns, cdr in read_bag(scene_bag):
        log_times["all"].append(log_ns)
        msg = messages.deserialize(cdr, msgtype)
        stamp = (
            messages.stamp_to_ns(msg.transforms[0].header.stamp)
            if msgtype == messages.TF_MESSAGE
            else messages.stamp_to_ns(msg.header.stamp)
        )
        assert stamp == log_ns
        header_stamps[topic].append(stamp)
    assert log_times["all"] == sorted(log_times["all"])
    assert header_stamps["/lidar/top"] == [sd["timestamp"] * 1000 for sd in records["LIDAR_TOP"]]
    cam = header_stamps["/cam_front/image/compressed"]
    assert cam == [sd["timestamp"] * 1000 for sd in records["CAM_FRONT"]]
    lidar_hz = 1e9 / np.median(np.diff(header_stamps["/lidar/top"]))
    cam_hz = 1e9 / np.median(np.diff(cam))
    assert lidar_hz == pytest.approx(20, rel=0.1) and cam_hz == pytest.approx(12, rel=0.1)


def test_cloud_decodes_to_the_pcd_bin_points_and_images_decode(scene_bag, tiny_world):
    records = _scene_records(tiny_world)
    clouds = [m for m in read_bag(scene_bag, ["/lidar/top"])]
    for i in (0, len(clouds) - 1):
        msg = messages.deserialize(clouds[i][3], messages.POINTCLOUD2)
        cloud = convert.pointcloud2_to_points(msg, topic="/lidar/top", extra=("ring",))
        expected = read_points(tiny_world / records["LIDAR_TOP"][i]["filename"])
        np.testing.assert_array_equal(cloud.points, expected)
        assert cloud.frame_id == "lidar_top"
    topic, _, _, cdr = next(iter(read_bag(scene_bag, ["/cam_back_left/image/compressed"])))
    image = messages.deserialize(cdr, messages.COMPRESSED_IMAGE)
    jpeg = (tiny_world / records["CAM_BACK_LEFT"][0]["filename"]).read_bytes()
    assert bytes(image.data) == jpeg  # the original bytes, not re-encoded
    info = messages.deserialize(next(iter(read_bag(scene_bag, ["/cam_back_left/camera_info"])))[3],
                                messages.CAMERA_INFO)  # fmt: skip
    calib = convert.camera_info_to_calibration(info, topic="/cam_back_left/camera_info")
    rgb = convert.compressed_image_to_rgb(image, topic=topic, expected_size=calib.size)
    assert rgb.shape == (180, 320, 3) and image.header.frame_id == "cam_back_left"


def test_tf_static_holds_every_sensor_mount(scene_bag):
    ((_, _, _, cdr),) = list(read_bag(scene_bag, ["/tf_static"]))
    transforms = convert.tf_message_to_transforms(
        messages.deserialize(cdr, messages.TF_MESSAGE), topic="/tf_static"
    )
    assert {t.parent for t in transforms} == {"base_link"}
    assert {t.child for t in transforms} == {"lidar_top", *CAMERAS}
    counts = Counter(t for t, *_ in read_bag(scene_bag, ["/tf"]))
    assert counts["/tf"] > 0


def test_unknown_scene_is_an_error(tiny_world, tmp_path, capsys):
    assert (
        _main()(["--root", str(tiny_world), "--scene", "scene-9999", "--out", str(tmp_path / "b")])
        == 2
    )
    assert "no scene 'scene-9999'" in capsys.readouterr().err
