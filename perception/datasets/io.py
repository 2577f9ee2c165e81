"""Reading nuScenes sensor files, with errors that name the file and the problem."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import numpy as np
import simplejpeg

POINT_DIM = 5  # nuScenes .pcd.bin: x, y, z, intensity, ring index; float32 each


class DataError(ValueError):
    """A data file that cannot be used; the message names the file and what is wrong."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


def read_points(path: str | Path, *, allow_nonfinite: bool = False) -> np.ndarray:
    """Reads a nuScenes LiDAR `.pcd.bin`: `[N, 5]` float32 (x, y, z, intensity, ring) in the
    sensor frame. Raises `DataError` if the file is missing, truncated or holds NaN/inf."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(path, "LiDAR file is missing") from None
    except OSError as exc:
        raise DataError(path, f"cannot read LiDAR file: {exc.strerror}") from None
    record = 4 * POINT_DIM
    if len(raw) % record:
        raise DataError(
            path,
            f"{len(raw)} bytes is not a multiple of {record} ({POINT_DIM} float32 a point): "
            "the file is truncated or not a nuScenes .pcd.bin",
        )
    points = np.frombuffer(raw, dtype=np.float32).reshape(-1, POINT_DIM)
    if not allow_nonfinite:
        bad = ~np.isfinite(points).all(axis=1)
        if bad.any():
            raise DataError(
                path, f"{int(bad.sum())} of {len(points)} points hold NaN or inf values"
            )
    return points


JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# ROS CompressedImage.format strings name the codec first ("jpeg", "png; bgr8", "rgb8; jpeg
# compressed bgr8"); these are the names each content type may be declared under.
_FORMAT_NAMES = {"jpeg": ("jpeg", "jpg"), "png": ("png",)}


def image_kind(data: bytes) -> str | None:
    """The image codec the bytes hold by their signature: `"jpeg"`, `"png"` or None."""
    if data[:3] == JPEG_MAGIC:
        return "jpeg"
    if data[:8] == PNG_MAGIC:
        return "png"
    return None


def declared_kind(declared_format: str) -> str | None:
    """The codec a declared format string names (`"jpeg"`, `"png"`), or None if it names
    neither. ROS formats such as `"rgb8; jpeg compressed bgr8"` name it after a `;`."""
    words = re.split(r"[\s;:/]+", declared_format.lower())
    for kind, names in _FORMAT_NAMES.items():
        if any(word in names for word in words):
            return kind
    return None


def decode_image(
    data: bytes | np.ndarray,
    *,
    source: str | Path,
    declared_format: str | None = None,
    min_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Decodes a JPEG or PNG strictly to `[H, W, 3]` uint8 RGB.

    JPEG goes through libjpeg-turbo (simplejpeg) in strict mode: what libjpeg only warns about
    ("Corrupt JPEG data: premature end of data segment", damaged scan data that would decode to
    grey or noise) is an error here. PNG goes through OpenCV (zlib's CRC checks are strict).
    `declared_format` (a file suffix or a ROS `CompressedImage.format`), when given, must name
    the codec the content holds. Raises `DataError` naming `source`.

    `min_size` (W, H): a JPEG is decoded at the smallest of libjpeg's DCT scales (8/8, 7/8, ...,
    1/8) that still gives at least this size (scale-on-decode: far less work than decoding the
    full image and resizing it); a PNG is decoded whole. The caller maps the smaller image back
    to the full one's pixels (`sensors.TestTimeImageTransform` does).
    """
    raw = data.tobytes() if isinstance(data, np.ndarray) else bytes(data)
    if not raw:
        raise DataError(source, "camera image cannot be decoded: it is empty")
    kind = image_kind(raw)
    if kind is None:
        raise DataError(
            source,
            f"camera image cannot be decoded: {len(raw)} bytes are neither JPEG nor PNG "
            "(no signature)",
        )
    if declared_format is not None:
        named = declared_kind(declared_format)
        if named is None:
            raise DataError(source, f"declared format {declared_format!r} is neither JPEG nor PNG")
        if named != kind:
            raise DataError(
                source, f"declared format {declared_format!r} but the content is {kind.upper()}"
            )
    if kind == "jpeg":
        try:
            if min_size is None:
                return simplejpeg.decode_jpeg(raw, colorspace="RGB", strict=True)
            return simplejpeg.decode_jpeg(
                raw, colorspace="RGB", strict=True, min_width=min_size[0], min_height=min_size[1]
            )
        except ValueError as exc:
            raise DataError(
                source, f"camera image cannot be decoded: corrupt JPEG ({exc})"
            ) from None
    image = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise DataError(source, "camera image cannot be decoded: corrupt PNG")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Reads a camera image (JPEG or PNG, decoded strictly by `decode_image`) as `[H, W, 3]`
    uint8 RGB. `expected_size` is (W, H). Raises `DataError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "camera image is missing")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(path, f"cannot read camera image: {exc.strerror}") from None
    image = decode_image(raw, source=path)
    if expected_size is not None and (image.shape[1], image.shape[0]) != tuple(expected_size):
        raise DataError(
            path,
            f"image is {image.shape[1]}x{image.shape[0]}, the dataset says "
            f"{expected_size[0]}x{expected_size[1]}",
        )
    return image
