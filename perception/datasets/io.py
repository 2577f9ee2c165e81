"""Reading nuScenes sensor files, with errors that name the file and the problem."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

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


def read_image(path: str | Path, expected_size: tuple[int, int] | None = None) -> np.ndarray:
    """Reads a camera image as `[H, W, 3]` uint8 RGB. `expected_size` is (W, H)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "camera image is missing")
    data = np.fromfile(path, dtype=np.uint8)
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise DataError(path, "camera image cannot be decoded (corrupt or not a JPEG/PNG)")
    if expected_size is not None and (image.shape[1], image.shape[0]) != tuple(expected_size):
        raise DataError(
            path,
            f"image is {image.shape[1]}x{image.shape[0]}, the dataset says "
            f"{expected_size[0]}x{expected_size[1]}",
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
