"""JPEG decoding benchmark: the strict decoder the dataset and the node use, against OpenCV.

Rows (same run, same bytes): OpenCV's `imdecode` (the baseline: what `read_image` used before
it decoded strictly), our `decode_image` (simplejpeg in strict mode, to RGB), and reduced-size
decoding with each library (OpenCV's `IMREAD_REDUCED_COLOR_2`, simplejpeg's `min_factor=2`),
for a camera-like image at nuScenes' 1600x900 and at the generated world's 800x450; and the
node's image input (decode + test-time transform) with and without scale-on-decode.
"""

from __future__ import annotations

import cv2
import numpy as np
import simplejpeg

from perception.benchmarks.common import BenchRow, compare, time_interleaved
from perception.datasets.io import decode_image


def camera_like_jpeg(width: int, height: int, *, quality: int = 90, seed: int = 0) -> bytes:
    """A JPEG with photo-like statistics: smooth gradients, edges and texture at several
    scales (random noise would make the entropy decoder, not the DCT, dominate)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.empty((height, width, 3), np.float32)
    for c in range(3):
        image[..., c] = 120 + 60 * np.sin(xx / (40 + 10 * c)) * np.cos(yy / (30 + 5 * c))
    for _ in range(200):  # rectangles: edges, as cars and buildings give
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(10, width // 6), rng.integers(10, height // 6)
        image[y0 : y0 + h, x0 : x0 + w] = rng.integers(0, 256, 3)
    texture = cv2.GaussianBlur(rng.normal(0, 25, (height, width, 3)).astype(np.float32), (0, 0), 1)
    rgb = np.clip(image + texture, 0, 255).astype(np.uint8)
    ok, encoded = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return encoded.tobytes()


def _size_rows(width: int, height: int, *, quick: bool) -> list[BenchRow]:
    raw = camera_like_jpeg(width, height)
    buffer = np.frombuffer(raw, np.uint8)
    fns = {
        "opencv imdecode": lambda: cv2.imdecode(buffer, cv2.IMREAD_COLOR),
        "ours decode_image (strict)": lambda: decode_image(raw, source="bench"),
        "opencv reduced 1/2": lambda: cv2.imdecode(buffer, cv2.IMREAD_REDUCED_COLOR_2),
        "simplejpeg strict 1/2": lambda: simplejpeg.decode_jpeg(
            raw, colorspace="RGB", min_factor=2, strict=True
        ),
    }
    timings = time_interleaved(fns, rounds=3 if quick else 5, repeat=5 if quick else 10)
    shape = f"{width}x{height} JPEG q90, {len(raw) // 1024} KiB"
    notes = {
        "opencv imdecode": "BGR, warns and returns an image for corrupt data",
        "ours decode_image (strict)": "RGB, corrupt data is a DataError",
    }
    return compare("jpeg_decode", shape, "opencv imdecode", timings, notes)


def _node_input_rows(width: int, height: int, *, quick: bool) -> list[BenchRow]:
    """The node's decode stage for one camera: decode + the test-time transform to the model's
    input, the full decode (baseline: what the dataset does) against scale-on-decode
    (`NodeOptions.reduced_decode`), for the tiny model's 256x96 and the paper-scale 704x256."""
    from perception.config import parse_config
    from perception.datasets.sensors import TestTimeImageTransform

    raw = camera_like_jpeg(width, height)
    rows = []
    for final in ((256, 96), (704, 256)):
        t = TestTimeImageTransform.from_config(
            parse_config({"augment": {"image": {"final_size": list(final)}}})
        )
        min_size = t.decode_size(width, height)
        fns = {
            "full decode + transform": lambda t=t: t(decode_image(raw, source="bench")),
            "reduced decode + transform": lambda t=t, m=min_size: t(
                decode_image(raw, source="bench", min_size=m), full_size=(width, height)
            ),
        }
        timings = time_interleaved(fns, rounds=3 if quick else 5, repeat=5 if quick else 10)
        decoded = decode_image(raw, source="bench", min_size=min_size).shape
        shape = f"{width}x{height} JPEG -> {final[0]}x{final[1]}"
        notes = {"reduced decode + transform": f"decoded at {decoded[1]}x{decoded[0]}"}
        rows += compare("node image input", shape, "full decode + transform", timings, notes)
    return rows


def run(*, quick: bool = False) -> list[BenchRow]:
    sizes = [(800, 450)] if quick else [(1600, 900), (800, 450)]
    rows = [row for width, height in sizes for row in _size_rows(width, height, quick=quick)]
    return rows + _node_input_rows(*sizes[0], quick=quick)
