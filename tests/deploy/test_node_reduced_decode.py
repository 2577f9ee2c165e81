"""The node's `reduced_decode` option: its decode stage decodes the JPEG at a reduced scale
and gives the same-shaped model input as the full decode, close to it (the bound is
tests/perception/datasets/test_reduced_decode.py's); off by default, so the node matches the
dataset bit for bit unless asked."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import simplejpeg

from perception.config import load_config
from perception.deploy.convert import jpeg_to_compressed_image
from perception.deploy.diagnostics import NodeStats
from perception.deploy.node import NodeOptions, PerceptionNode
from perception.deploy.pipeline import ImagePreprocess

REPO = Path(__file__).resolve().parents[2]


def _decode(reduced: bool, message) -> np.ndarray:
    config = load_config(REPO / "configs" / "bevfusion_tiny.yaml")
    stage = SimpleNamespace(  # the decode stage's inputs, without a model or threads
        options=NodeOptions(reduced_decode=reduced),
        preprocess=ImagePreprocess.from_config(config),
        stats=NodeStats(),
    )
    image = PerceptionNode._decode(stage, message, "/CAM_FRONT/image/compressed")
    assert stage.stats.percentiles()["image_decode"]["n"] == 1
    return image


def test_reduced_decode_gives_the_same_input_shape_close_to_the_full_decode():
    assert NodeOptions().reduced_decode is False
    rng = np.random.default_rng(1)
    y, x = np.mgrid[0:900, 0:1600]
    rgb = np.stack([x / 1600 * 255, y / 900 * 255, (x + y) % 255], -1)  # ramps, no fine pattern
    rgb = np.clip(rgb + rng.normal(0, 4, rgb.shape), 0, 255).astype(np.uint8)
    jpeg = simplejpeg.encode_jpeg(rgb, quality=90, colorspace="RGB")
    message = jpeg_to_compressed_image(jpeg, frame_id="CAM_FRONT", stamp_ns=1)
    full, reduced = _decode(False, message), _decode(True, message)
    assert full.shape == reduced.shape == (3, 96, 256) and full.dtype == reduced.dtype
    assert not np.array_equal(full, reduced)
    assert np.abs(full.astype(float) - reduced.astype(float)).mean() <= 6.0
