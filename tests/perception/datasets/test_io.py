"""Strict image decoding: what libjpeg only warns about is an error that names the source."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from perception.datasets.io import DataError, declared_kind, decode_image, read_image


def _image(h: int = 90, w: int = 160) -> np.ndarray:
    rng = np.random.default_rng(0)
    noise = (rng.random((h, w, 3)) * 255).astype(np.uint8)
    return cv2.GaussianBlur(noise, (9, 9), 3)  # JPEG-friendly content, [H, W, 3] RGB


def _jpeg(rgb: np.ndarray) -> bytes:
    ok, encoded = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return encoded.tobytes()


def _scan_start(raw: bytes) -> int:
    """Index of the first entropy-coded byte (after the SOS segment)."""
    sos = raw.index(b"\xff\xda")
    length = int.from_bytes(raw[sos + 2 : sos + 4], "big")
    return sos + 2 + length


def test_a_good_jpeg_decodes_as_opencv_does():
    rgb = _image()
    raw = _jpeg(rgb)
    decoded = decode_image(raw, source="cam.jpg")
    reference = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert decoded.dtype == np.uint8 and decoded.shape == (90, 160, 3)
    np.testing.assert_array_equal(decoded, reference)


def test_a_png_decodes():
    rgb = _image()
    ok, encoded = cv2.imencode(".png", rgb[..., ::-1])
    np.testing.assert_array_equal(decode_image(encoded.tobytes(), source="cam.png"), rgb)


def test_random_bytes_in_the_middle_are_an_error_though_opencv_decodes_them(tmp_path):
    raw = bytearray(_jpeg(_image(450, 800)))
    middle = len(raw) // 2
    raw[middle : middle + 2000] = np.random.default_rng(1).bytes(2000)
    # the old reader: OpenCV returns an image (grey below the damage) and only warns
    assert cv2.imdecode(np.frombuffer(bytes(raw), np.uint8), cv2.IMREAD_COLOR) is not None
    path = tmp_path / "n015-CAM_FRONT.jpg"
    path.write_bytes(bytes(raw))
    with pytest.raises(
        DataError, match="n015-CAM_FRONT.jpg: camera image cannot be decoded: corrupt JPEG"
    ):
        read_image(path)


def test_random_scan_data_is_an_error():
    raw = _jpeg(_image())
    start = _scan_start(raw)
    noise = np.random.default_rng(2).integers(0, 256, len(raw) - start - 2, np.uint8)
    damaged = raw[:start] + noise.tobytes() + b"\xff\xd9"
    with pytest.raises(DataError, match="corrupt JPEG"):
        decode_image(damaged, source="/camera/front")


def test_a_truncated_jpeg_is_an_error():
    raw = _jpeg(_image())
    with pytest.raises(DataError, match="corrupt JPEG"):
        decode_image(raw[: len(raw) * 2 // 3], source="x.jpg")


@pytest.mark.parametrize(
    ("declared", "kind"),
    [("jpeg", "jpeg"), ("rgb8; jpeg compressed bgr8", "jpeg"), ("png", "png"), ("jpg", "jpeg")],
)
def test_declared_formats_name_their_codec(declared, kind):
    assert declared_kind(declared) == kind


def test_a_declared_format_must_match_the_content():
    raw = _jpeg(_image())
    assert decode_image(raw, source="t", declared_format="jpeg").shape == (90, 160, 3)
    with pytest.raises(DataError, match="declared format 'png' but the content is JPEG"):
        decode_image(raw, source="t", declared_format="png")
    with pytest.raises(DataError, match="neither JPEG nor PNG"):
        decode_image(raw, source="t", declared_format="tiff")


def test_bytes_without_a_signature_and_empty_data_are_errors():
    with pytest.raises(DataError, match="no signature"):
        decode_image(b"GIF89a" + bytes(100), source="t")
    with pytest.raises(DataError, match="empty"):
        decode_image(b"", source="t")
