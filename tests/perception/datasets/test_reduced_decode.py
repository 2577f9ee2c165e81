"""Scale-on-decode: a JPEG decoded at a reduced DCT scale and then given the test-time
transform, against decoding it whole and transforming that (what the dataset does).

The two are not bit-equal: the full path downsamples with a bilinear warp (no anti-aliasing),
the reduced one averages 8x8 DCT blocks first. Against an anti-aliased reference (an area
resize of the full image, then the same crop) the reduced path is the closer one; the mean
absolute difference between the two paths stays under a few grey levels (measured on this
synthetic 1600x900 scene: 4.4 for the tiny model's 256x96 input, 2.7 for the paper-scale
704x256 one; bound below with a margin)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import simplejpeg

from perception.config import load_config
from perception.datasets.io import decode_image
from perception.datasets.sensors import TestTimeImageTransform

REPO = Path(__file__).resolve().parents[3]
W, H = 1600, 900


@pytest.fixture(scope="module")
def jpeg() -> bytes:
    """A 1600x900 scene: colour ramps, 60 flat discs with sharp edges, sensor noise."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:H, 0:W]
    image = np.stack([x / W * 255, y / H * 255, (x + y) % 255], -1)
    for _ in range(60):
        cx, cy, r = rng.integers(0, W), rng.integers(0, H), rng.integers(10, 120)
        image[(x - cx) ** 2 + (y - cy) ** 2 < r * r] = rng.integers(0, 255, 3)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    return simplejpeg.encode_jpeg(image, quality=90, colorspace="RGB")


def _transform(name: str) -> TestTimeImageTransform:
    return TestTimeImageTransform.from_config(load_config(REPO / "configs" / f"{name}.yaml"))


@pytest.mark.parametrize(("name", "bound"), [("bevfusion_tiny", 6.0), ("bevfusion_b2_nusc", 4.0)])
def test_reduced_decode_is_close_to_the_full_path_and_less_aliased(jpeg, name, bound):
    t = _transform(name)
    min_size = t.decode_size(W, H)
    full = decode_image(jpeg, source="scene")
    small = decode_image(jpeg, source="scene", min_size=min_size)
    assert small.shape[1] >= min_size[0] and small.shape[0] >= min_size[1]
    assert small.shape[1] < W and small.shape[0] < H  # a reduced scale was used
    a = t(full).astype(np.float64)
    b = t(small, full_size=(W, H)).astype(np.float64)
    assert a.shape == b.shape == (3, t.size[1], t.size[0])
    assert np.abs(a - b).mean() <= bound
    # anti-aliased reference: the full image area-resized by the transform's scale, cropped
    m = t.affine(W, H)
    r = m[0, 0]
    area = cv2.resize(full, (round(W * r), round(H * r)), interpolation=cv2.INTER_AREA)
    crop = np.array([[1.0, 0.0, m[0, 2]], [0.0, 1.0, m[1, 2]]])
    ref = cv2.warpAffine(area, crop, t.size, flags=cv2.INTER_LINEAR).transpose(2, 0, 1)
    assert np.abs(b - ref).mean() < np.abs(a - ref).mean()


def test_full_size_input_is_the_plain_transform(jpeg):
    t = _transform("bevfusion_tiny")
    full = decode_image(jpeg, source="scene")
    np.testing.assert_array_equal(t(full), t(full, full_size=(W, H)))


def test_decode_size_never_exceeds_the_image():
    t = _transform("bevfusion_tiny")
    w, h = t.decode_size(200, 100)  # smaller than the model's input: upscaled, never decoded up
    assert (w, h) == (200, 100)


def test_png_ignores_min_size():
    image = np.zeros((90, 160, 3), np.uint8)
    image[20:40, 30:90] = (200, 10, 30)
    ok, png = cv2.imencode(".png", image)
    assert ok
    decoded = decode_image(png.tobytes(), source="p.png", min_size=(40, 20))
    assert decoded.shape == (90, 160, 3)
