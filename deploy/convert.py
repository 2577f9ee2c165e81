"""Typed converters between the library's arrays/structures and ROS 2 messages.

Encoders (`*_to_<message>`) build rosbags message objects; `messages.serialize` turns them into
CDR. Decoders (`<message>_to_*`) validate what they read and raise `InvalidMessage` naming the
topic and field (the node counts and drops those).

Frames: points stay in the sensor frame of the cloud's `header.frame_id`; transforms map the
child frame into the parent frame (`parent_from_child`, a 4x4 acting on column vectors), the
tf2 convention. Boxes are `Boxes3D` (x, y, z, w, l, h, yaw, vx, vy) in the LiDAR frame; ROS
boxes hold (length, width, height) along the box's own x (heading), y, z axes. Quaternions are
`(w, x, y, z)` in the library (`perception.datasets.sensors`, which does all pose and quaternion
arithmetic); ROS messages carry them in named fields, mapped here at the message boundary only.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import cv2
import numpy as np

from perception.datasets.io import DataError, declared_kind, decode_image, image_kind
from perception.datasets.sensors import (
    matrix_to_quaternion,
    pose_matrix,
    quaternion_yaw,
    yaw_to_quaternion,
)
from perception.structures import CLASS_NAMES, Detections
from perception.structures.classes import CLASS_COLORS

from .messages import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    DETECTED_OBJECTS,
    DETECTION3D_ARRAY,
    IMAGE,
    MARKER_ARRAY,
    POINTCLOUD2,
    TF_MESSAGE,
    header,
    msg_class,
    stamp_to_ns,
)
from .validation import InvalidMessage, check_frame, check_image_markers

# -- geometry helpers ---------------------------------------------------------------------


def _quaternion_msg(q: Sequence[float]) -> Any:
    """A `geometry_msgs/Quaternion` of `q = (w, x, y, z)` (the library's order, `sensors`)."""
    w, x, y, z = q
    return msg_class("geometry_msgs/msg/Quaternion")(x=x, y=y, z=z, w=w)


def _wxyz(q: Any) -> tuple[float, float, float, float]:
    """`(w, x, y, z)` of a `geometry_msgs/Quaternion`."""
    return (q.w, q.x, q.y, q.z)


def _pose(x: float, y: float, z: float, yaw: float) -> Any:
    point = msg_class("geometry_msgs/msg/Point")(x=x, y=y, z=z)
    return msg_class("geometry_msgs/msg/Pose")(
        position=point, orientation=_quaternion_msg(yaw_to_quaternion(yaw))
    )


def _vector3(x: float, y: float, z: float) -> Any:
    return msg_class("geometry_msgs/msg/Vector3")(x=x, y=y, z=z)


def _yaw_of(orientation: Any) -> float:
    return quaternion_yaw(_wxyz(orientation))


# -- PointCloud2 --------------------------------------------------------------------------

# sensor_msgs/PointField datatypes -> little-endian numpy dtypes.
POINTFIELD_DTYPES: Mapping[int, str] = MappingProxyType(
    {1: "i1", 2: "u1", 3: "<i2", 4: "<u2", 5: "<i4", 6: "<u4", 7: "<f4", 8: "<f8"}
)
_DATATYPE_OF = {"<f4": 7, "<u2": 4}
# Point channels after (x, y, z, intensity) the converters know, with their wire dtype
# (the Velodyne/Autoware convention: `ring` uint16, `time` float32 seconds from the sweep start).
EXTRA_POINT_FIELDS: Mapping[str, str] = MappingProxyType({"time": "<f4", "ring": "<u2"})
BASE_POINT_FIELDS: tuple[str, ...] = ("x", "y", "z", "intensity")

# A nuScenes sweep holds ~35k points; a 64-beam LiDAR up to ~130k. 10x a large sweep is junk.
DEFAULT_MAX_POINTS = 400_000


@dataclass(frozen=True)
class PointCloud:
    """A decoded cloud: `points` `[N, 4 + len(extra)]` float32 (x, y, z, intensity, *extra) in
    the sensor frame `frame_id`; `dropped_nonfinite` points held NaN/inf and were removed."""

    points: np.ndarray
    frame_id: str
    stamp_ns: int
    dropped_nonfinite: int = 0


def _cloud_dtype(names: Sequence[str]) -> np.dtype:
    formats = ["<f4"] * 4 + [EXTRA_POINT_FIELDS[n] for n in names[4:]]
    return np.dtype({"names": list(names), "formats": formats})  # packed, no padding


def points_to_pointcloud2(
    points: np.ndarray, *, frame_id: str, stamp_ns: int, extra: Sequence[str] = ()
) -> Any:
    """`points` `[N, 4 + len(extra)]` (x, y, z, intensity, *extra) -> sensor_msgs/PointCloud2
    (height 1, little-endian, packed fields: x, y, z, intensity float32, then `extra` from
    `EXTRA_POINT_FIELDS`). `ring` values must be whole numbers in [0, 65535]."""
    unknown = [n for n in extra if n not in EXTRA_POINT_FIELDS]
    if unknown:
        raise ValueError(f"unknown extra point fields {unknown}; known: {list(EXTRA_POINT_FIELDS)}")
    points = np.asarray(points)
    n_cols = 4 + len(extra)
    if points.ndim != 2 or points.shape[1] != n_cols:
        raise ValueError(
            f"points must be [N, {n_cols}] for extra={tuple(extra)}, got {points.shape}"
        )
    names = (*BASE_POINT_FIELDS, *extra)
    if not extra:
        data = np.ascontiguousarray(points, dtype="<f4").view(np.uint8).reshape(-1)
        dtype = _cloud_dtype(names)
    else:
        dtype = _cloud_dtype(names)
        packed = np.empty(len(points), dtype)
        for i, name in enumerate(names):
            column = points[:, i]
            if name == "ring":
                if not (
                    np.all(column == np.round(column)) and np.all((column >= 0) & (column < 65536))
                ):
                    raise ValueError("ring values must be whole numbers in [0, 65535]")
            packed[name] = column
        data = packed.view(np.uint8).reshape(-1)
    point_field = msg_class("sensor_msgs/msg/PointField")
    fields = [
        point_field(
            name=name,
            offset=dtype.fields[name][1],
            datatype=_DATATYPE_OF[dtype.fields[name][0].str],
            count=1,
        )
        for name in names
    ]
    return msg_class(POINTCLOUD2)(
        header=header(frame_id, stamp_ns),
        height=1,
        width=len(points),
        fields=fields,
        is_bigendian=False,
        point_step=dtype.itemsize,
        row_step=dtype.itemsize * len(points),
        data=data,
        is_dense=bool(np.isfinite(points).all()),
    )


def pointcloud2_to_points(
    msg: Any,
    *,
    topic: str,
    extra: Sequence[str] = (),
    max_points: int = DEFAULT_MAX_POINTS,
    nonfinite: str = "drop",
    known_frames: Collection[str] | None = None,
) -> PointCloud:
    """Validates a sensor_msgs/PointCloud2 and reads `[N, 4 + len(extra)]` float32 points.

    Raises `InvalidMessage` for: `is_bigendian` true (`big_endian`); x, y, z, intensity or a
    requested extra field missing or of an unknown datatype (`missing_field`); fields that do
    not fit in `point_step`, or `row_step != width * point_step` (`point_step`); more than
    `max_points` points (`too_large`, checked before the data is touched); data length not
    `height * row_step` (`truncated`); an unknown frame (`unknown_frame`).

    NaN/inf points: `nonfinite="drop"` removes them and reports how many in
    `PointCloud.dropped_nonfinite` (the default: one bad return should not cost a sweep);
    `"reject"` raises `InvalidMessage(reason="non_finite")`.
    """
    if nonfinite not in ("drop", "reject"):
        raise ValueError(f"nonfinite must be 'drop' or 'reject', got {nonfinite!r}")
    frame_id = msg.header.frame_id
    check_frame(topic, frame_id, known_frames)
    if msg.is_bigendian:
        raise InvalidMessage(
            topic, "is_bigendian", "big_endian", "big-endian clouds are not supported"
        )
    by_name = {f.name: f for f in msg.fields}
    names = (*BASE_POINT_FIELDS, *extra)
    point_step = int(msg.point_step)
    formats, offsets = [], []
    for name in names:
        f = by_name.get(name)
        if f is None:
            raise InvalidMessage(
                topic,
                "fields",
                "missing_field",
                f"no field {name!r} (has {sorted(by_name)}); need {list(names)}",
            )
        fmt = POINTFIELD_DTYPES.get(int(f.datatype))
        if fmt is None or int(f.count) not in (0, 1):
            raise InvalidMessage(
                topic,
                f"fields[{name}]",
                "missing_field",
                f"datatype {f.datatype} count {f.count} is not a scalar PointField type",
            )
        size = np.dtype(fmt).itemsize
        if int(f.offset) + size > point_step:
            raise InvalidMessage(
                topic,
                "point_step",
                "point_step",
                f"field {name!r} at offset {f.offset} ({size} bytes) does not fit in "
                f"point_step {point_step}",
            )
        formats.append(fmt)
        offsets.append(int(f.offset))
    width, height = int(msg.width), int(msg.height)
    if int(msg.row_step) != width * point_step:
        raise InvalidMessage(
            topic,
            "row_step",
            "point_step",
            f"row_step {msg.row_step} != width {width} * point_step {point_step}",
        )
    n = width * height
    if n > max_points:
        raise InvalidMessage(
            topic, "width", "too_large", f"{n} points exceed the limit of {max_points}"
        )
    data = msg.data
    expected = height * int(msg.row_step)
    if len(data) != expected:
        raise InvalidMessage(
            topic,
            "data",
            "truncated",
            f"{len(data)} bytes, but height {height} * row_step {msg.row_step} = {expected}",
        )
    dtype = np.dtype(
        {"names": list(names), "formats": formats, "offsets": offsets, "itemsize": point_step}
    )
    records = np.frombuffer(data, dtype=dtype, count=n)
    points = np.empty((n, len(names)), np.float32)
    for i, name in enumerate(names):
        points[:, i] = records[name]
    finite = np.isfinite(points).all(axis=1)
    dropped = int(n - finite.sum())
    if dropped:
        if nonfinite == "reject":
            raise InvalidMessage(
                topic, "data", "non_finite", f"{dropped} of {n} points hold NaN or inf"
            )
        points = points[finite]
    return PointCloud(points, frame_id, stamp_to_ns(msg.header.stamp), dropped)


# -- images -------------------------------------------------------------------------------


def jpeg_to_compressed_image(
    jpeg: bytes, *, frame_id: str, stamp_ns: int, format: str = "jpeg"
) -> Any:
    """Encoded image bytes (as stored, not re-encoded) -> sensor_msgs/CompressedImage."""
    return msg_class(COMPRESSED_IMAGE)(
        header=header(frame_id, stamp_ns),
        format=format,
        data=np.frombuffer(jpeg, dtype=np.uint8),
    )


def _check_size(topic: str, field: str, width: int, height: int, expected_size) -> None:
    if expected_size is not None and (width, height) != tuple(expected_size):
        raise InvalidMessage(
            topic,
            field,
            "image_size",
            f"image is {width}x{height}, CameraInfo says {expected_size[0]}x{expected_size[1]}",
        )


def compressed_image_to_rgb(
    msg: Any,
    *,
    topic: str,
    expected_size: tuple[int, int] | None = None,
    known_frames: Collection[str] | None = None,
    min_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decodes a sensor_msgs/CompressedImage (JPEG or PNG) strictly to `[H, W, 3]` uint8 RGB
    (`perception.datasets.io.decode_image`, the dataset's decoder: damaged scan data that
    libjpeg would only warn about, and would decode to grey or noise, is an error).

    `format` names the codec (`"jpeg"`, `"png"`, or image_transport's `"bgr8; jpeg compressed
    bgr8"`) and must match the content; an empty `format` is not checked. `expected_size` is
    (width, height), from the camera's CameraInfo. `min_size` (W, H): decode a JPEG at a reduced
    DCT scale of at least this size (`perception.datasets.io.decode_image`; the full size is
    then not checked here: `validation.check_encoded_image` checks the header's). Raises
    `InvalidMessage` (`corrupt_image` on
    field `data`, or `format` when the declared format is not the content's, `image_size`,
    `unknown_frame`).
    """
    check_frame(topic, msg.header.frame_id, known_frames)
    data = np.asarray(msg.data, dtype=np.uint8).tobytes()
    declared = str(msg.format).strip()
    if declared:
        kind, named = image_kind(data), declared_kind(declared)
        if kind is not None and named != kind:
            shown = "neither JPEG nor PNG" if named is None else f"{named.upper()}"
            raise InvalidMessage(
                topic,
                "format",
                "corrupt_image",
                f"format {declared!r} declares {shown}, the data is {kind.upper()}",
            )
    check_image_markers(topic, data, declared)
    try:
        image = decode_image(
            data, source=f"topic {topic}", declared_format=declared or None, min_size=min_size
        )
    except DataError as exc:
        raise InvalidMessage(topic, "data", "corrupt_image", exc.problem) from None
    if min_size is None:  # a reduced decode is smaller: its header size is checked instead
        _check_size(topic, "data", image.shape[1], image.shape[0], expected_size)
    return image


def rgb_to_image(rgb: np.ndarray, *, frame_id: str, stamp_ns: int) -> Any:
    """`[H, W, 3]` uint8 RGB -> sensor_msgs/Image with encoding `rgb8`."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"rgb must be [H, W, 3], got {rgb.shape}")
    h, w, _ = rgb.shape
    return msg_class(IMAGE)(
        header=header(frame_id, stamp_ns),
        height=h,
        width=w,
        encoding="rgb8",
        is_bigendian=0,
        step=3 * w,
        data=rgb.reshape(-1),
    )


def image_to_rgb(
    msg: Any,
    *,
    topic: str,
    expected_size: tuple[int, int] | None = None,
    known_frames: Collection[str] | None = None,
    min_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """sensor_msgs/Image (`rgb8`, `bgr8`, `rgba8`, `bgra8` or `mono8`) -> `[H, W, 3]` uint8
    RGB. Raises `InvalidMessage` (`image_layout`) for other encodings or a step/data
    mismatch, `image_size` against `expected_size` (width, height)."""
    check_frame(topic, msg.header.frame_id, known_frames)
    channels = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1}.get(msg.encoding)
    if channels is None:
        raise InvalidMessage(
            topic, "encoding", "image_layout", f"unsupported encoding {msg.encoding!r}"
        )
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if step < w * channels:
        raise InvalidMessage(
            topic, "step", "image_layout", f"step {step} < width {w} * {channels} channels"
        )
    if len(msg.data) != h * step:
        raise InvalidMessage(
            topic,
            "data",
            "truncated",
            f"{len(msg.data)} bytes, but height {h} * step {step} = {h * step}",
        )
    _check_size(topic, "width", w, h, expected_size)
    pixels = np.asarray(msg.data, np.uint8).reshape(h, step)[:, : w * channels]
    pixels = pixels.reshape(h, w, channels)
    code = {
        "bgr8": cv2.COLOR_BGR2RGB,
        "rgba8": cv2.COLOR_RGBA2RGB,
        "bgra8": cv2.COLOR_BGRA2RGB,
        "mono8": cv2.COLOR_GRAY2RGB,
    }.get(msg.encoding)
    return np.ascontiguousarray(pixels) if code is None else cv2.cvtColor(pixels, code)


# -- CameraInfo ---------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraCalibration:
    """Pinhole intrinsics `[3, 3]` float64 (pixels) of a `width` x `height` image."""

    intrinsics: np.ndarray
    width: int
    height: int
    frame_id: str
    distortion_model: str = "plumb_bob"
    distortion: tuple[float, ...] = ()

    @property
    def size(self) -> tuple[int, int]:
        return (self.width, self.height)


def calibration_to_camera_info(
    intrinsics: np.ndarray,
    *,
    width: int,
    height: int,
    frame_id: str,
    stamp_ns: int,
    distortion: Sequence[float] = (0.0, 0.0, 0.0, 0.0, 0.0),
    distortion_model: str = "plumb_bob",
) -> Any:
    """3x3 intrinsics -> sensor_msgs/CameraInfo (R identity, P = [K | 0]: a monocular camera;
    nuScenes images are already undistorted, hence zero plumb_bob coefficients)."""
    k = np.asarray(intrinsics, dtype=np.float64).reshape(3, 3)
    p = np.zeros((3, 4))
    p[:, :3] = k
    roi = msg_class("sensor_msgs/msg/RegionOfInterest")(
        x_offset=0, y_offset=0, height=0, width=0, do_rectify=False
    )
    return msg_class(CAMERA_INFO)(
        header=header(frame_id, stamp_ns),
        height=int(height),
        width=int(width),
        distortion_model=distortion_model,
        d=np.asarray(distortion, dtype=np.float64),
        k=k.reshape(-1),
        r=np.eye(3).reshape(-1),
        p=p.reshape(-1),
        binning_x=0,
        binning_y=0,
        roi=roi,
    )


def camera_info_to_calibration(
    msg: Any, *, topic: str, known_frames: Collection[str] | None = None
) -> CameraCalibration:
    """Validates a sensor_msgs/CameraInfo (positive size, fx, fy > 0, K[2] = (0, 0, 1))."""
    check_frame(topic, msg.header.frame_id, known_frames)
    k = np.asarray(msg.k, dtype=np.float64).reshape(3, 3)
    if int(msg.width) <= 0 or int(msg.height) <= 0:
        raise InvalidMessage(
            topic, "width", "camera_info", f"image size {msg.width}x{msg.height} is empty"
        )
    if not (np.isfinite(k).all() and k[0, 0] > 0 and k[1, 1] > 0 and np.allclose(k[2], [0, 0, 1])):
        raise InvalidMessage(topic, "k", "camera_info", f"K {k.tolist()} is not a pinhole matrix")
    return CameraCalibration(
        intrinsics=k,
        width=int(msg.width),
        height=int(msg.height),
        frame_id=msg.header.frame_id,
        distortion_model=msg.distortion_model,
        distortion=tuple(float(v) for v in msg.d),
    )


# -- TF -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StampedTransform:
    """`matrix` `[4, 4]` float64 maps points in `child` to `parent` (tf2's parent <- child)."""

    parent: str
    child: str
    stamp_ns: int
    matrix: np.ndarray


def transform_stamped(parent: str, child: str, stamp_ns: int, matrix: np.ndarray) -> Any:
    """A geometry_msgs/TransformStamped from a rigid 4x4 `parent <- child` matrix."""
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"transform must be 4x4, got {m.shape}")
    rotation = m[:3, :3]
    if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-6) or np.linalg.det(rotation) < 0:
        raise ValueError(f"{parent} <- {child}: the 3x3 block is not a rotation")
    transform = msg_class("geometry_msgs/msg/Transform")(
        translation=_vector3(*(float(v) for v in m[:3, 3])),
        rotation=_quaternion_msg(matrix_to_quaternion(rotation)),
    )
    return msg_class("geometry_msgs/msg/TransformStamped")(
        header=header(parent, stamp_ns), child_frame_id=child, transform=transform
    )


def transforms_to_tf_message(transforms: Sequence[StampedTransform]) -> Any:
    """tf2_msgs/TFMessage holding each transform."""
    return msg_class(TF_MESSAGE)(
        transforms=[transform_stamped(t.parent, t.child, t.stamp_ns, t.matrix) for t in transforms]
    )


def tf_message_to_transforms(
    msg: Any, *, topic: str, known_frames: Collection[str] | None = None
) -> list[StampedTransform]:
    """Reads every transform of a tf2_msgs/TFMessage as a 4x4 `parent <- child` matrix."""
    out = []
    for i, t in enumerate(msg.transforms):
        for frame in (t.header.frame_id, t.child_frame_id):
            check_frame(topic, frame, known_frames)
        tr, r = t.transform.translation, t.transform.rotation
        try:
            m = pose_matrix((tr.x, tr.y, tr.z), _wxyz(r))
        except ValueError:
            raise InvalidMessage(
                topic, f"transforms[{i}].transform.rotation", "undecodable", "zero quaternion"
            ) from None
        out.append(
            StampedTransform(t.header.frame_id, t.child_frame_id, stamp_to_ns(t.header.stamp), m)
        )
    return out


# -- detections out -----------------------------------------------------------------------

# Autoware's ObjectClassification labels (autoware_perception_msgs).
AUTOWARE_UNKNOWN, AUTOWARE_CAR, AUTOWARE_TRUCK, AUTOWARE_BUS, AUTOWARE_TRAILER = 0, 1, 2, 3, 4
AUTOWARE_MOTORCYCLE, AUTOWARE_BICYCLE, AUTOWARE_PEDESTRIAN = 5, 6, 7

# Our CLASS_NAMES -> Autoware label. Autoware has no construction vehicle (its nuScenes-trained
# CenterPoint folds it into TRUCK) and no static-obstacle classes: barriers and traffic cones
# go out as UNKNOWN, which Autoware's planning still treats as obstacles.
AUTOWARE_LABELS: Mapping[str, int] = MappingProxyType(
    {
        "car": AUTOWARE_CAR,
        "truck": AUTOWARE_TRUCK,
        "construction_vehicle": AUTOWARE_TRUCK,
        "bus": AUTOWARE_BUS,
        "trailer": AUTOWARE_TRAILER,
        "barrier": AUTOWARE_UNKNOWN,
        "motorcycle": AUTOWARE_MOTORCYCLE,
        "bicycle": AUTOWARE_BICYCLE,
        "pedestrian": AUTOWARE_PEDESTRIAN,
        "traffic_cone": AUTOWARE_UNKNOWN,
    }
)
# DetectedObjectKinematics.orientation_availability per class: nuScenes scores a barrier's
# heading modulo pi and a cone's not at all, so the model is not trained to know them.
ORIENTATION_AVAILABILITY: Mapping[str, int] = MappingProxyType(
    {**{c: 2 for c in CLASS_NAMES}, "barrier": 1, "traffic_cone": 0}
)


def _detection_arrays(detections: Detections):
    boxes = detections.boxes.tensor.detach().to("cpu", dtype=detections.boxes.tensor.dtype)
    boxes = boxes.double().numpy()  # [K, 9]
    scores = detections.scores.detach().cpu().double().numpy()
    labels = detections.labels.detach().cpu().numpy()
    return boxes, scores, labels


def detections_to_detection3d_array(detections: Detections, *, frame_id: str, stamp_ns: int) -> Any:
    """vision_msgs/Detection3DArray: one Detection3D per box, one hypothesis (class name as
    `class_id`, score), `bbox.size` = (length, width, height) along the box's axes."""
    boxes, scores, labels = _detection_arrays(detections)
    hdr = header(frame_id, stamp_ns)
    hypothesis = msg_class("vision_msgs/msg/ObjectHypothesis")
    with_pose = msg_class("vision_msgs/msg/ObjectHypothesisWithPose")
    pose_cov = msg_class("geometry_msgs/msg/PoseWithCovariance")
    bbox = msg_class("vision_msgs/msg/BoundingBox3D")
    detection = msg_class("vision_msgs/msg/Detection3D")
    out = []
    for i, (x, y, z, w, l, h, yaw, _, _) in enumerate(boxes):
        pose = _pose(x, y, z, yaw)
        result = with_pose(
            hypothesis=hypothesis(class_id=CLASS_NAMES[int(labels[i])], score=float(scores[i])),
            pose=pose_cov(pose=pose, covariance=np.zeros(36)),
        )
        out.append(
            detection(
                header=hdr,
                results=[result],
                bbox=bbox(center=pose, size=_vector3(l, w, h)),
                id="",
            )
        )
    return msg_class(DETECTION3D_ARRAY)(header=hdr, detections=out)


def detections_to_detected_objects(
    detections: Detections,
    *,
    frame_id: str,
    stamp_ns: int,
    label_map: Mapping[str, int] = AUTOWARE_LABELS,
) -> Any:
    """autoware_perception_msgs/DetectedObjects: existence probability and classification
    probability = score; BOUNDING_BOX shape with dimensions (length, width, height); twist in
    the object's own frame (linear.x along the heading), as Autoware's trackers read it."""
    boxes, scores, labels = _detection_arrays(detections)
    classification = msg_class("autoware_perception_msgs/msg/ObjectClassification")
    kinematics = msg_class("autoware_perception_msgs/msg/DetectedObjectKinematics")
    shape = msg_class("autoware_perception_msgs/msg/Shape")
    detected = msg_class("autoware_perception_msgs/msg/DetectedObject")
    pose_cov = msg_class("geometry_msgs/msg/PoseWithCovariance")
    twist_cov = msg_class("geometry_msgs/msg/TwistWithCovariance")
    twist = msg_class("geometry_msgs/msg/Twist")
    polygon = msg_class("geometry_msgs/msg/Polygon")
    objects = []
    for i, (x, y, z, w, l, h, yaw, vx, vy) in enumerate(boxes):
        name = CLASS_NAMES[int(labels[i])]
        cos, sin = math.cos(yaw), math.sin(yaw)
        local_v = _vector3(vx * cos + vy * sin, -vx * sin + vy * cos, 0.0)
        objects.append(
            detected(
                existence_probability=float(scores[i]),
                classification=[
                    classification(label=label_map[name], probability=float(scores[i]))
                ],
                kinematics=kinematics(
                    pose_with_covariance=pose_cov(
                        pose=_pose(x, y, z, yaw), covariance=np.zeros(36)
                    ),
                    has_position_covariance=False,
                    orientation_availability=ORIENTATION_AVAILABILITY[name],
                    twist_with_covariance=twist_cov(
                        twist=twist(linear=local_v, angular=_vector3(0.0, 0.0, 0.0)),
                        covariance=np.zeros(36),
                    ),
                    has_twist=True,
                    has_twist_covariance=False,
                ),
                shape=shape(type=0, footprint=polygon(points=[]), dimensions=_vector3(l, w, h)),
            )
        )
    return msg_class(DETECTED_OBJECTS)(header=header(frame_id, stamp_ns), objects=objects)


def detections_to_marker_array(
    detections: Detections, *, frame_id: str, stamp_ns: int, lifetime_ns: int = 0
) -> Any:
    """visualization_msgs/MarkerArray for RViz: a DELETEALL marker (clears the previous frame's
    boxes), then per box a translucent CUBE (namespace `boxes`) and a TEXT_VIEW_FACING label
    `class score` above it (namespace `labels`), both with id = the box's index."""
    boxes, scores, labels = _detection_arrays(detections)
    marker = msg_class("visualization_msgs/msg/Marker")
    color = msg_class("std_msgs/msg/ColorRGBA")
    duration = msg_class("builtin_interfaces/msg/Duration")
    hdr = header(frame_id, stamp_ns)
    lifetime = duration(sec=lifetime_ns // 1_000_000_000, nanosec=lifetime_ns % 1_000_000_000)
    texture = msg_class(COMPRESSED_IMAGE)(
        header=header("", 0), format="", data=np.zeros(0, np.uint8)
    )
    mesh_file = msg_class("visualization_msgs/msg/MeshFile")(
        filename="", data=np.zeros(0, np.uint8)
    )

    def make(ns, marker_id, type_, action, pose, scale, rgba, text=""):
        return marker(
            header=hdr,
            ns=ns,
            id=marker_id,
            type=type_,
            action=action,
            pose=pose,
            scale=scale,
            color=color(r=rgba[0], g=rgba[1], b=rgba[2], a=rgba[3]),
            lifetime=lifetime,
            frame_locked=False,
            points=[],
            colors=[],
            texture_resource="",
            texture=texture,
            uv_coordinates=[],
            text=text,
            mesh_resource="",
            mesh_file=mesh_file,
            mesh_use_embedded_materials=False,
        )

    markers = [make("", 0, 1, 3, _pose(0, 0, 0, 0), _vector3(1, 1, 1), (0, 0, 0, 0))]  # DELETEALL
    for i, (x, y, z, w, l, h, yaw, _, _) in enumerate(boxes):
        name = CLASS_NAMES[int(labels[i])]
        r, g, b = (channel / 255 for channel in CLASS_COLORS[name])
        markers.append(
            make("boxes", i, 1, 0, _pose(x, y, z, yaw), _vector3(l, w, h), (r, g, b, 0.4))
        )
        markers.append(
            make(
                "labels",
                i,
                9,
                0,
                _pose(x, y, z + h / 2 + 0.5, 0.0),
                _vector3(0.0, 0.0, 0.8),
                (r, g, b, 1.0),
                text=f"{name} {scores[i]:.2f}",
            )
        )
    return msg_class(MARKER_ARRAY)(markers=markers)


def _boxes_from_poses(items) -> np.ndarray:
    rows = [
        [
            p.position.x,
            p.position.y,
            p.position.z,
            size.y,
            size.x,
            size.z,
            _yaw_of(p.orientation),
            vx,
            vy,
        ]
        for p, size, vx, vy in items
    ]
    return np.asarray(rows, dtype=np.float64).reshape(-1, 9)


def detection3d_array_to_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes `[K, 9]` as `Boxes3D` rows with zero velocity, labels `[K]` int64 index into
    CLASS_NAMES (-1 if unknown), scores `[K]`) of a vision_msgs/Detection3DArray (best
    hypothesis per detection)."""
    items, labels, scores = [], [], []
    for d in msg.detections:
        best = max(d.results, key=lambda r: r.hypothesis.score) if d.results else None
        items.append((d.bbox.center, d.bbox.size, 0.0, 0.0))
        name = best.hypothesis.class_id if best else ""
        labels.append(CLASS_NAMES.index(name) if name in CLASS_NAMES else -1)
        scores.append(best.hypothesis.score if best else 0.0)
    return _boxes_from_poses(items), np.asarray(labels, np.int64), np.asarray(scores)


def detected_objects_to_arrays(msg: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes `[K, 9]` with velocity back in the message frame, Autoware labels `[K]`,
    existence probabilities `[K]`) of an autoware_perception_msgs/DetectedObjects."""
    items, labels, scores = [], [], []
    for o in msg.objects:
        pose = o.kinematics.pose_with_covariance.pose
        yaw = _yaw_of(pose.orientation)
        v = o.kinematics.twist_with_covariance.twist.linear
        cos, sin = math.cos(yaw), math.sin(yaw)
        items.append((pose, o.shape.dimensions, v.x * cos - v.y * sin, v.x * sin + v.y * cos))
        best = max(o.classification, key=lambda c: c.probability) if o.classification else None
        labels.append(best.label if best else AUTOWARE_UNKNOWN)
        scores.append(o.existence_probability)
    return _boxes_from_poses(items), np.asarray(labels, np.int64), np.asarray(scores)
