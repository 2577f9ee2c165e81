"""Every bad incoming message raises InvalidMessage naming its topic, field and reason."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from perception.deploy import convert, messages
from perception.deploy.validation import InvalidMessage, StampTracker, check_frame

TOPIC = "/lidar/top"


def _cloud(n: int = 100, **changes):
    pts = np.random.default_rng(0).normal(size=(n, 4)).astype(np.float32)
    msg = convert.points_to_pointcloud2(pts, frame_id="lidar_top", stamp_ns=7)
    for key, value in changes.items():
        setattr(msg, key, value)
    return msg, pts


def _raises(reason: str, field: str, fn, *args, **kwargs) -> InvalidMessage:
    with pytest.raises(InvalidMessage) as info:
        fn(*args, **kwargs)
    err = info.value
    assert (err.reason, err.field) == (reason, field)
    assert str(err).startswith(f"topic {err.topic}: field {field}:")
    return err


def test_cloud_missing_xyz():
    msg, _ = _cloud()
    msg.fields = [f for f in msg.fields if f.name != "y"]
    err = _raises("missing_field", "fields", convert.pointcloud2_to_points, msg, topic=TOPIC)
    assert err.topic == TOPIC and "'y'" in err.problem


def test_cloud_missing_requested_extra_field():
    msg, _ = _cloud()
    _raises(
        "missing_field", "fields", convert.pointcloud2_to_points, msg, topic=TOPIC, extra=("ring",)
    )


def test_cloud_wrong_point_step():
    msg, _ = _cloud(point_step=12)  # intensity at offset 12 no longer fits
    _raises("point_step", "point_step", convert.pointcloud2_to_points, msg, topic=TOPIC)


def test_cloud_row_step_inconsistent_with_point_step():
    msg, _ = _cloud(point_step=20)  # fields fit, but width * 20 != row_step
    _raises("point_step", "row_step", convert.pointcloud2_to_points, msg, topic=TOPIC)


def test_cloud_truncated_data():
    msg, _ = _cloud()
    msg.data = msg.data[:-5]
    err = _raises("truncated", "data", convert.pointcloud2_to_points, msg, topic=TOPIC)
    assert "1595 bytes" in err.problem


def test_cloud_big_endian():
    msg, _ = _cloud(is_bigendian=True)
    _raises("big_endian", "is_bigendian", convert.pointcloud2_to_points, msg, topic=TOPIC)


def test_cloud_nonfinite_points_dropped_and_counted_or_rejected():
    pts = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32)
    pts[3, 0] = np.nan
    pts[7, 3] = np.inf
    msg = convert.points_to_pointcloud2(pts, frame_id="lidar_top", stamp_ns=7)
    assert msg.is_dense is False
    cloud = convert.pointcloud2_to_points(msg, topic=TOPIC)
    assert cloud.dropped_nonfinite == 2 and len(cloud.points) == 48
    np.testing.assert_array_equal(cloud.points, np.delete(pts, [3, 7], axis=0))
    _raises(
        "non_finite", "data", convert.pointcloud2_to_points, msg, topic=TOPIC, nonfinite="reject"
    )


def test_cloud_ten_times_too_large():
    msg, _ = _cloud(n=1000)
    _raises("too_large", "width", convert.pointcloud2_to_points, msg, topic=TOPIC, max_points=100)
    assert len(convert.pointcloud2_to_points(msg, topic=TOPIC, max_points=1000).points) == 1000


def test_cloud_unknown_frame():
    msg, _ = _cloud()
    err = _raises(
        "unknown_frame", "header.frame_id", convert.pointcloud2_to_points, msg,
        topic=TOPIC, known_frames={"velodyne"},
    )  # fmt: skip
    assert "'lidar_top'" in err.problem


def test_truncated_cdr_is_a_decode_error_naming_the_topic():
    msg, _ = _cloud()
    cdr = messages.serialize(msg)
    with pytest.raises(messages.DecodeError, match=f"topic {TOPIC}:"):
        messages.deserialize(cdr[:40], messages.POINTCLOUD2, topic=TOPIC)


def _jpeg_msg(data: bytes, frame: str = "cam_front"):
    return convert.jpeg_to_compressed_image(data, frame_id=frame, stamp_ns=1)


def _jpeg(w: int = 32, h: int = 24) -> bytes:
    ok, buf = cv2.imencode(".jpg", np.full((h, w, 3), 128, np.uint8))
    return buf.tobytes()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not an image at all",
        _jpeg()[: len(_jpeg()) // 2],  # truncated: libjpeg would pad it grey silently
        _jpeg()[:20] + bytes(200) + b"\xff\xd9",  # markers right, body garbage
    ],
    ids=["empty", "garbage", "truncated", "corrupt-body"],
)
def test_corrupt_jpeg(data):
    _raises(
        "corrupt_image",
        "data",
        convert.compressed_image_to_rgb,
        _jpeg_msg(data),
        topic="/cam_front/image/compressed",
    )


def _textured_jpeg(w: int = 160, h: int = 90) -> bytes:
    noise = np.random.default_rng(0).integers(0, 256, (h, w, 3), np.uint8)
    ok, buf = cv2.imencode(".jpg", cv2.GaussianBlur(noise, (9, 9), 3))
    return buf.tobytes()


def test_random_scan_data_is_corrupt_though_opencv_decodes_noise():
    """#28 item 9: headers and end marker intact around random entropy-coded data."""
    raw = _textured_jpeg()
    sos = raw.index(b"\xff\xda")
    start = sos + 2 + int.from_bytes(raw[sos + 2 : sos + 4], "big")
    noise = np.random.default_rng(1).integers(0, 255, len(raw) - start - 2, np.uint8)
    damaged = raw[:start] + noise.tobytes() + b"\xff\xd9"
    assert cv2.imdecode(np.frombuffer(damaged, np.uint8), cv2.IMREAD_COLOR) is not None
    err = _raises(
        "corrupt_image", "data", convert.compressed_image_to_rgb, _jpeg_msg(damaged),
        topic="/cam_front/image/compressed",
    )  # fmt: skip
    assert err.topic == "/cam_front/image/compressed" and "corrupt JPEG" in err.problem


@pytest.mark.parametrize("declared", ["jpeg", "jpg", "rgb8; jpeg compressed bgr8", ""])
def test_declared_jpeg_formats_are_accepted(declared):
    msg = convert.jpeg_to_compressed_image(_jpeg(), frame_id="c", stamp_ns=1, format=declared)
    assert convert.compressed_image_to_rgb(msg, topic="/c").shape == (24, 32, 3)


@pytest.mark.parametrize(
    ("declared", "shown"), [("png", "PNG"), ("bgr8; png compressed", "PNG"), ("tiff", "neither")]
)
def test_declared_format_must_match_the_content(declared, shown):
    """#28 item 9: the `format` field is read; a JPEG declared as anything else is rejected."""
    msg = convert.jpeg_to_compressed_image(_jpeg(), frame_id="c", stamp_ns=1, format=declared)
    err = _raises("corrupt_image", "format", convert.compressed_image_to_rgb, msg, topic="/c")
    assert repr(declared) in err.problem and shown in err.problem and "JPEG" in err.problem
    ok, png = cv2.imencode(".png", np.zeros((4, 5, 3), np.uint8))
    as_jpeg = convert.jpeg_to_compressed_image(png.tobytes(), frame_id="c", stamp_ns=1)
    _raises("corrupt_image", "format", convert.compressed_image_to_rgb, as_jpeg, topic="/c")


def test_image_size_differs_from_camera_info():
    info = convert.calibration_to_camera_info(
        np.array([[100.0, 0, 16], [0, 100, 12], [0, 0, 1]]), width=1600, height=900,
        frame_id="cam_front", stamp_ns=1,
    )  # fmt: skip
    calib = convert.camera_info_to_calibration(info, topic="/cam_front/camera_info")
    err = _raises(
        "image_size", "data", convert.compressed_image_to_rgb, _jpeg_msg(_jpeg()),
        topic="/cam_front/image/compressed", expected_size=calib.size,
    )  # fmt: skip
    assert "32x24" in err.problem and "1600x900" in err.problem
    rgb = np.zeros((24, 32, 3), np.uint8)
    raw = convert.rgb_to_image(rgb, frame_id="cam_front", stamp_ns=1)
    _raises("image_size", "width", convert.image_to_rgb, raw, topic="/c", expected_size=(16, 12))


def test_image_unknown_frame():
    _raises(
        "unknown_frame", "header.frame_id", convert.compressed_image_to_rgb, _jpeg_msg(_jpeg(), "cam_x"),
        topic="/cam_x/image/compressed", known_frames={"cam_front"},
    )  # fmt: skip


def test_raw_image_bad_layout():
    raw = convert.rgb_to_image(np.zeros((4, 5, 3), np.uint8), frame_id="c", stamp_ns=1)
    raw.encoding = "yuv422"
    _raises("image_layout", "encoding", convert.image_to_rgb, raw, topic="/c")
    raw.encoding, raw.step = "rgb8", 10
    _raises("image_layout", "step", convert.image_to_rgb, raw, topic="/c")
    raw.step, raw.data = 15, raw.data[:-1]
    _raises("truncated", "data", convert.image_to_rgb, raw, topic="/c")


def test_bad_camera_info():
    info = convert.calibration_to_camera_info(
        np.zeros((3, 3)), width=10, height=10, frame_id="c", stamp_ns=1
    )
    _raises("camera_info", "k", convert.camera_info_to_calibration, info, topic="/c/camera_info")


def test_tf_unknown_frame():
    msg = convert.transforms_to_tf_message(
        [convert.StampedTransform("map", "base_link", 1, np.eye(4))]
    )
    _raises(
        "unknown_frame", "header.frame_id", convert.tf_message_to_transforms, msg,
        topic="/tf", known_frames={"map", "odom"},
    )  # fmt: skip


def test_check_frame_accepts_known_and_anything_without_a_list():
    check_frame("/t", "lidar_top", {"lidar_top"})
    check_frame("/t", "whatever", None)


def test_stamp_tracker_out_of_order_and_duplicate():
    tracker = StampTracker(time_jump_ns=2_000_000_000)
    assert tracker.check(TOPIC, 1_000) == "ok"
    assert tracker.check("/cam_front/image/compressed", 500) == "ok"  # topics are independent
    err = _raises("duplicate_stamp", "header.stamp", tracker.check, TOPIC, 1_000)
    assert err.topic == TOPIC
    assert tracker.check(TOPIC, 50_000_000) == "ok"
    _raises("out_of_order", "header.stamp", tracker.check, TOPIC, 49_000_000)
    assert tracker.last_ns[TOPIC] == 50_000_000  # the rejected stamp is not recorded
    assert tracker.check(TOPIC, 100_000_000) == "ok"


def test_stamp_tracker_time_jump_resets_every_topic():
    tracker = StampTracker(time_jump_ns=1_000_000_000)
    tracker.check(TOPIC, 10_000_000_000)
    tracker.check("/tf", 10_000_000_000)
    assert tracker.check(TOPIC, 1_000_000_000) == "time_jump"
    assert tracker.check("/tf", 1_000_000_000) == "ok"  # history forgotten
    strict = StampTracker(time_jump_ns=None)
    strict.check(TOPIC, 10_000_000_000)
    _raises("out_of_order", "header.stamp", strict.check, TOPIC, 1)


def test_stamp_tracker_topics_behind_together_are_a_jump_however_small():
    """#28 item 13: a replay restarted 0.1 s back (far below `time_jump_ns`) moves every topic
    back; once `jump_series` series are behind at once it is a jump, not disorder."""
    tracker = StampTracker(time_jump_ns=2_000_000_000, jump_series=3)
    for topic in ("/a", "/b", "/c"):
        tracker.check(topic, 1_000_000_000)
    tracker.check("/tf", 1_000_000_000, "map->base_link")
    _raises("out_of_order", "header.stamp", tracker.check, "/a", 900_000_000)
    err = _raises(
        "out_of_order", "header.stamp", tracker.check, "/tf", 900_000_000, "map->base_link"
    )
    assert err.topic == "/tf" and "map->base_link" in err.problem
    assert tracker.check("/b", 900_000_000) == "time_jump"
    assert tracker.last_jump_ns == 100_000_000
    assert tracker.last_ns == {"/b": 900_000_000}  # every other series forgotten
    assert tracker.check("/a", 900_000_000) == "ok"


def test_stamp_tracker_late_messages_on_separate_topics_are_not_a_jump():
    tracker = StampTracker(time_jump_ns=2_000_000_000, jump_series=2)
    tracker.check("/a", 1_000_000_000)
    tracker.check("/b", 1_000_000_000)
    _raises("out_of_order", "header.stamp", tracker.check, "/a", 999_000_000)  # one late message
    assert tracker.check("/a", 1_050_000_000) == "ok"  # /a moves forward: no longer behind
    _raises("out_of_order", "header.stamp", tracker.check, "/b", 999_000_000)
    assert tracker.behind_ns == {"/b": 999_000_000}
    # a series behind long ago (beyond the jump window) is not part of a jump now
    tracker = StampTracker(time_jump_ns=1_000_000_000, jump_series=2)
    tracker.check("/a", 10_000_000_000)
    tracker.check("/b", 20_000_000_000)
    _raises("out_of_order", "header.stamp", tracker.check, "/a", 9_900_000_000)
    _raises("out_of_order", "header.stamp", tracker.check, "/b", 19_900_000_000)
    assert tracker.behind_ns == {"/b": 19_900_000_000}


def test_stamp_tracker_constant_stamps_are_duplicates_not_a_jump():
    """Publishers that repeat one stamp (a CameraInfo stamped once) are duplicates, however
    many of them: no series is behind."""
    tracker = StampTracker(time_jump_ns=2_000_000_000, jump_series=2)
    for topic in ("/a/camera_info", "/b/camera_info", "/c/camera_info"):
        tracker.check(topic, 7)
    for _ in range(3):
        for topic in ("/a/camera_info", "/b/camera_info", "/c/camera_info"):
            _raises("duplicate_stamp", "header.stamp", tracker.check, topic, 7)
    assert tracker.behind_ns == {}


def test_stamp_tracker_reset_of_one_topic_forgets_its_series():
    tracker = StampTracker()
    tracker.check("/tf", 5, "map->base_link")
    tracker.check("/tfx", 5)
    tracker.reset("/tf")
    assert tracker.last_ns == {"/tfx": 5}


def test_invalid_message_reason_must_be_known():
    with pytest.raises(ValueError, match="unknown InvalidMessage reason"):
        InvalidMessage("/t", "f", "bogus", "x")
