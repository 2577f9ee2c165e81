"""Every message the node speaks round-trips through CDR, and its CDR equals what a DDS IDL type
with the ROS member layout serializes (cyclonedds' own XCDR1 encoder as the oracle)."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest
import torch

from perception.datasets.sensors import quaternion_to_matrix
from perception.deploy import convert, messages
from perception.deploy.convert import StampedTransform
from perception.structures import CLASS_NAMES, Boxes3D, Detections
from perception.structures.classes import CLASS_COLORS

STAMP = 1_532_000_000_123_456_789


def _points(n: int = 257, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(n, 5)).astype(np.float32) * 20
    pts[:, 3] = rng.uniform(0, 255, n)
    pts[:, 4] = rng.integers(0, 32, n)
    return pts


def _detections() -> Detections:
    boxes = torch.tensor(
        [
            [10.0, -2.0, 0.8, 1.9, 4.6, 1.7, 0.4, 3.0, 1.0],
            [-5.0, 7.0, 1.2, 2.9, 11.0, 3.4, -2.5, 0.0, -4.0],
            [3.0, 3.0, 0.3, 0.4, 0.4, 0.9, 1.0, 0.0, 0.0],
        ]
    )
    labels = torch.tensor(
        [CLASS_NAMES.index(c) for c in ("car", "construction_vehicle", "traffic_cone")]
    )
    return Detections("tok", Boxes3D(boxes), torch.tensor([0.9, 0.55, 0.3]), labels, -torch.ones(3))


def _jpeg(w: int = 64, h: int = 48) -> bytes:
    image = np.zeros((h, w, 3), np.uint8)
    image[:, : w // 2] = (0, 0, 255)  # BGR red left half
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def _all_messages() -> dict[str, object]:
    k = np.array([[800.0, 0, 320], [0, 800, 240], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, :3] = quaternion_to_matrix((0.9, 0.1, -0.2, 0.3))  # (w, x, y, z)
    pose[:3, 3] = (1500.0, 900.0, 0.5)
    det = _detections()
    return {
        messages.POINTCLOUD2: convert.points_to_pointcloud2(
            _points(), frame_id="lidar_top", stamp_ns=STAMP, extra=("ring",)
        ),
        messages.COMPRESSED_IMAGE: convert.jpeg_to_compressed_image(
            _jpeg(), frame_id="cam_front", stamp_ns=STAMP
        ),
        messages.IMAGE: convert.rgb_to_image(
            np.arange(6 * 5 * 3, dtype=np.uint8).reshape(6, 5, 3),
            frame_id="cam_front",
            stamp_ns=STAMP,
        ),
        messages.CAMERA_INFO: convert.calibration_to_camera_info(
            k, width=640, height=480, frame_id="cam_front", stamp_ns=STAMP
        ),
        messages.TF_MESSAGE: convert.transforms_to_tf_message(
            [StampedTransform("map", "base_link", STAMP, pose)]
        ),
        messages.DETECTION3D_ARRAY: convert.detections_to_detection3d_array(
            det, frame_id="lidar_top", stamp_ns=STAMP
        ),
        messages.DETECTED_OBJECTS: convert.detections_to_detected_objects(
            det, frame_id="lidar_top", stamp_ns=STAMP
        ),
        messages.MARKER_ARRAY: convert.detections_to_marker_array(
            det, frame_id="lidar_top", stamp_ns=STAMP
        ),
    }


@pytest.mark.parametrize("msgtype", messages.NODE_MSGTYPES)
def test_cdr_round_trip_is_byte_stable(msgtype):
    msg = _all_messages()[msgtype]
    cdr = messages.serialize(msg)
    assert cdr[:4] == b"\x00\x01\x00\x00"  # CDR little-endian encapsulation, as ROS 2 sends
    back = messages.deserialize(cdr, msgtype)
    assert messages.serialize(back) == cdr


@pytest.mark.parametrize("msgtype", messages.NODE_MSGTYPES)
def test_cdr_equals_the_dds_idl_type_encoding(msgtype):
    """The IDL type the DDS transport declares serializes a message to the very bytes rosbags
    produces: the wire layout a ROS 2 peer expects."""
    pytest.importorskip("cyclonedds")
    from perception.deploy.idl import idl_type, to_idl

    msg = _all_messages()[msgtype]
    ours = messages.serialize(msg)
    theirs = to_idl(msg).serialize(use_version_2=False)
    pad = -len(ours) % 4
    assert theirs[:4] == ours[:4]
    assert theirs[4:] == ours[4:] + b"\0" * pad or theirs == ours
    assert idl_type(msgtype).__idl_typename__ == messages.dds_type_name(msgtype)


def test_ros_dds_names():
    assert messages.dds_type_name(messages.POINTCLOUD2) == "sensor_msgs::msg::dds_::PointCloud2_"
    assert (
        messages.dds_type_name(messages.DETECTED_OBJECTS)
        == "autoware_perception_msgs::msg::dds_::DetectedObjects_"
    )
    assert messages.dds_topic_name("/lidar/top") == "rt/lidar/top"
    with pytest.raises(ValueError, match="absolute"):
        messages.dds_topic_name("lidar/top")


def test_autoware_and_vision_msgs_layouts_match_upstream():
    """Field names and order as in autoware_msgs and vision_msgs 4.x (they fix the wire)."""
    fields = {
        n: [f for f, _ in messages.typestore().fielddefs[n][1]]
        for n in messages.typestore().fielddefs
    }
    assert fields[messages.DETECTED_OBJECTS] == ["header", "objects"]
    assert fields["autoware_perception_msgs/msg/DetectedObject"] == [
        "existence_probability", "classification", "kinematics", "shape",
    ]  # fmt: skip
    assert fields["autoware_perception_msgs/msg/DetectedObjectKinematics"] == [
        "pose_with_covariance", "has_position_covariance", "orientation_availability",
        "twist_with_covariance", "has_twist", "has_twist_covariance",
    ]  # fmt: skip
    assert fields["autoware_perception_msgs/msg/ObjectClassification"] == ["label", "probability"]
    assert fields["autoware_perception_msgs/msg/Shape"] == ["type", "footprint", "dimensions"]
    assert fields["vision_msgs/msg/Detection3D"] == ["header", "results", "bbox", "id"]
    assert fields["vision_msgs/msg/ObjectHypothesisWithPose"] == ["hypothesis", "pose"]
    assert fields["vision_msgs/msg/ObjectHypothesis"] == ["class_id", "score"]
    assert fields["vision_msgs/msg/BoundingBox3D"] == ["center", "size"]
    consts = dict((n, v) for n, _, v in messages.typestore().fielddefs[
        "autoware_perception_msgs/msg/ObjectClassification"][0])  # fmt: skip
    assert (consts["CAR"], consts["PEDESTRIAN"], consts["UNKNOWN"]) == (1, 7, 0)


@pytest.mark.parametrize("extra", [(), ("ring",), ("time", "ring")])
def test_pointcloud2_round_trip(extra):
    pts = _points()
    if "time" in extra:
        pts = np.concatenate([pts[:, :4], np.linspace(0, 0.05, len(pts))[:, None], pts[:, 4:]], 1)
    pts = pts[:, : 4 + len(extra)].astype(np.float32)
    msg = convert.points_to_pointcloud2(pts, frame_id="lidar_top", stamp_ns=STAMP, extra=extra)
    assert msg.point_step == 16 + sum({"time": 4, "ring": 2}[e] for e in extra)
    back = messages.deserialize(messages.serialize(msg), messages.POINTCLOUD2)
    cloud = convert.pointcloud2_to_points(back, topic="/lidar/top", extra=extra)
    np.testing.assert_array_equal(cloud.points, pts)
    assert (cloud.frame_id, cloud.stamp_ns, cloud.dropped_nonfinite) == ("lidar_top", STAMP, 0)


def test_pointcloud2_reads_foreign_layouts():
    """A cloud with padding, extra fields and fields in another order (an Ouster-style layout)."""
    n = 10
    dtype = np.dtype(
        {
            "names": ["intensity", "t", "x", "y", "z"],
            "formats": ["<f4", "<u4", "<f4", "<f4", "<f4"],
            "offsets": [0, 4, 16, 20, 24],
            "itemsize": 32,
        }
    )
    rec = np.zeros(n, dtype)
    for i, name in enumerate(["x", "y", "z", "intensity"]):
        rec[name] = np.arange(n) + 100 * i
    point_field = messages.msg_class(messages.POINT_FIELD)
    msg = messages.msg_class(messages.POINTCLOUD2)(
        header=messages.header("os_sensor", 5),
        height=1,
        width=n,
        fields=[
            point_field(
                name=nm, offset=dtype.fields[nm][1], datatype=7 if nm != "t" else 6, count=1
            )
            for nm in dtype.names
        ],  # fmt: skip
        is_bigendian=False,
        point_step=32,
        row_step=32 * n,
        data=rec.view(np.uint8).reshape(-1),
        is_dense=True,
    )
    cloud = convert.pointcloud2_to_points(msg, topic="/os/points")
    np.testing.assert_array_equal(cloud.points[:, 0], np.arange(n))
    np.testing.assert_array_equal(cloud.points[:, 3], np.arange(n) + 300)


def test_compressed_image_round_trip_keeps_the_jpeg_bytes():
    jpeg = _jpeg()
    msg = convert.jpeg_to_compressed_image(jpeg, frame_id="cam_front", stamp_ns=STAMP)
    back = messages.deserialize(messages.serialize(msg), messages.COMPRESSED_IMAGE)
    assert bytes(back.data) == jpeg and back.format == "jpeg"
    rgb = convert.compressed_image_to_rgb(
        back, topic="/cam_front/image/compressed", expected_size=(64, 48)
    )
    assert rgb.shape == (48, 64, 3)
    assert rgb[10, 5, 0] > 200 and rgb[10, 5, 2] < 50  # red stays red: RGB order


def test_raw_image_round_trip_and_bgr():
    rgb = np.random.default_rng(0).integers(0, 255, (6, 5, 3), dtype=np.uint8)
    msg = messages.deserialize(
        messages.serialize(convert.rgb_to_image(rgb, frame_id="c", stamp_ns=1)), messages.IMAGE
    )
    np.testing.assert_array_equal(convert.image_to_rgb(msg, topic="/c/image"), rgb)
    msg.encoding = "bgr8"
    np.testing.assert_array_equal(convert.image_to_rgb(msg, topic="/c/image"), rgb[..., ::-1])


def test_camera_info_round_trip():
    k = np.array([[1266.4, 0, 816.3], [0, 1266.4, 491.5], [0, 0, 1]])
    msg = convert.calibration_to_camera_info(
        k, width=1600, height=900, frame_id="cam_front", stamp_ns=STAMP
    )
    back = messages.deserialize(messages.serialize(msg), messages.CAMERA_INFO)
    calib = convert.camera_info_to_calibration(back, topic="/cam_front/camera_info")
    np.testing.assert_array_equal(calib.intrinsics, k)
    assert calib.size == (1600, 900) and calib.frame_id == "cam_front"
    np.testing.assert_array_equal(np.asarray(back.p).reshape(3, 4)[:, :3], k)


def test_tf_round_trip():
    rng = np.random.default_rng(1)
    transforms = []
    for i in range(4):
        q = rng.normal(size=4)
        m = np.eye(4)
        m[:3, :3] = quaternion_to_matrix(q)
        m[:3, 3] = rng.normal(size=3) * 100
        transforms.append(StampedTransform("base_link", f"cam_{i}", STAMP + i, m))
    msg = convert.transforms_to_tf_message(transforms)
    back = convert.tf_message_to_transforms(
        messages.deserialize(messages.serialize(msg), messages.TF_MESSAGE), topic="/tf"
    )
    for a, b in zip(transforms, back):
        assert (a.parent, a.child, a.stamp_ns) == (b.parent, b.child, b.stamp_ns)
        np.testing.assert_allclose(b.matrix, a.matrix, atol=1e-12)
    with pytest.raises(ValueError, match="not a rotation"):
        convert.transform_stamped("a", "b", 0, np.diag([2.0, 1, 1, 1]))


def test_detection3d_array_round_trip():
    det = _detections()
    msg = messages.deserialize(
        messages.serialize(
            convert.detections_to_detection3d_array(det, frame_id="lidar_top", stamp_ns=STAMP)
        ),
        messages.DETECTION3D_ARRAY,
    )
    assert msg.header.frame_id == "lidar_top" and messages.stamp_to_ns(msg.header.stamp) == STAMP
    assert msg.detections[1].results[0].hypothesis.class_id == "construction_vehicle"
    assert msg.detections[0].bbox.size.x == pytest.approx(4.6)  # length along the heading
    boxes, labels, scores = convert.detection3d_array_to_arrays(msg)
    np.testing.assert_allclose(boxes[:, :7], det.boxes.tensor[:, :7].numpy(), atol=1e-6)
    np.testing.assert_array_equal(labels, det.labels.numpy())
    np.testing.assert_allclose(scores, det.scores.numpy(), atol=1e-7)


def test_detected_objects_round_trip_and_label_mapping():
    det = _detections()
    msg = messages.deserialize(
        messages.serialize(
            convert.detections_to_detected_objects(det, frame_id="lidar_top", stamp_ns=STAMP)
        ),
        messages.DETECTED_OBJECTS,
    )
    car, cv, cone = msg.objects
    assert [o.classification[0].label for o in msg.objects] == [1, 2, 0]  # CAR, TRUCK, UNKNOWN
    assert [o.kinematics.orientation_availability for o in msg.objects] == [2, 2, 0]
    assert car.shape.type == 0 and car.shape.dimensions.x == pytest.approx(4.6)
    # twist in the object's frame: (3, 1) m/s at yaw 0.4
    v = car.kinematics.twist_with_covariance.twist.linear
    assert v.x == pytest.approx(3 * math.cos(0.4) + math.sin(0.4))
    assert v.y == pytest.approx(-3 * math.sin(0.4) + math.cos(0.4))
    boxes, labels, scores = convert.detected_objects_to_arrays(msg)
    np.testing.assert_allclose(boxes, det.boxes.tensor.numpy(), atol=1e-5)
    np.testing.assert_allclose(scores, det.scores.numpy(), atol=1e-7)
    assert set(convert.AUTOWARE_LABELS) == set(CLASS_NAMES)


def test_marker_array_clears_then_draws_each_box():
    det = _detections()
    msg = messages.deserialize(
        messages.serialize(
            convert.detections_to_marker_array(det, frame_id="lidar_top", stamp_ns=STAMP)
        ),
        messages.MARKER_ARRAY,
    )
    assert msg.markers[0].action == 3  # DELETEALL
    cubes = [m for m in msg.markers if m.ns == "boxes"]
    texts = [m for m in msg.markers if m.ns == "labels"]
    assert len(cubes) == len(texts) == 3
    assert all(m.type == 1 and m.header.frame_id == "lidar_top" for m in cubes)
    assert texts[0].text == "car 0.90"
    # the markers wear the pictures' class colours (one palette, perception.structures)
    car = np.array(CLASS_COLORS["car"]) / 255
    np.testing.assert_allclose(
        [cubes[0].color.r, cubes[0].color.g, cubes[0].color.b], car, atol=1e-6
    )


def test_empty_detections():
    det = Detections(
        "t", Boxes3D.empty(), torch.zeros(0), torch.zeros(0, dtype=torch.int64), torch.zeros(0)
    )
    for fn, msgtype in [
        (convert.detections_to_detection3d_array, messages.DETECTION3D_ARRAY),
        (convert.detections_to_detected_objects, messages.DETECTED_OBJECTS),
        (convert.detections_to_marker_array, messages.MARKER_ARRAY),
    ]:
        cdr = messages.serialize(fn(det, frame_id="lidar_top", stamp_ns=1))
        assert messages.deserialize(cdr, msgtype) is not None
