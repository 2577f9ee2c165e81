"""The detector's stage API (`encode_camera`, `encode_lidar`, `fuse`, `decode`, `detect`,
`losses`): composed by hand, the stages give exactly what `forward` gives, in eval and in
train mode, for every modality and with a sensor missing. The node's pipeline, the model
benchmark and the ONNX export call these stages, so this is their parity by construction."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from perception.models.builder import build_model
from tests.perception.models.helpers import micro_config, synthetic_batch

OVERRIDES = {"fused": [], "camera": ["model.lidar=null"], "lidar": ["model.camera=null"]}


def _by_hand(model, batch):
    camera_bev, aux = model.encode_camera(batch)
    lidar_bev = model.encode_lidar(batch)
    return model.decode(model.fuse(batch, camera_bev, lidar_bev)), aux


@pytest.mark.parametrize("modalities", list(OVERRIDES))
@pytest.mark.parametrize("missing", [None, "camera", "lidar"])
def test_stages_compose_to_forward_in_eval(modalities, missing):
    torch.manual_seed(0)
    config = micro_config(*OVERRIDES[modalities])
    model = build_model(config).eval()
    batch = synthetic_batch(config, seed=3)
    if missing == "camera":
        batch = dataclasses.replace(batch, camera_mask=torch.zeros_like(batch.camera_mask))
    elif missing == "lidar":
        batch = dataclasses.replace(batch, lidar_mask=torch.tensor([False, True]))
    with torch.no_grad():
        expected = model(batch)
        outputs, _ = _by_hand(model, batch)
        got = model.detect(outputs, batch)
    assert len(got) == len(expected) == batch.batch_size
    for g, e in zip(got, expected):
        torch.testing.assert_close(g.boxes.tensor, e.boxes.tensor, rtol=0, atol=0)
        torch.testing.assert_close(g.scores, e.scores, rtol=0, atol=0)
        torch.testing.assert_close(g.labels, e.labels, rtol=0, atol=0)


def test_stages_compose_to_forward_in_train():
    """Without modality dropout (it draws at random) the train-mode losses are the stages'."""
    torch.manual_seed(0)
    config = micro_config("model.modality_dropout=[0.0,0.0]")
    model = build_model(config).train()
    batch = synthetic_batch(config, seed=4)
    torch.manual_seed(1)
    expected = model(batch)
    torch.manual_seed(1)
    outputs, aux = _by_hand(model, batch)
    got = {**model.losses(outputs, batch), **aux}
    assert got.keys() == expected.keys()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k], rtol=0, atol=0, msg=k)


def test_absent_branches_give_none():
    config = micro_config(*OVERRIDES["lidar"])
    model = build_model(config).eval()
    batch = synthetic_batch(config)
    assert model.encode_camera(batch) == (None, {})
    config = micro_config(*OVERRIDES["camera"])
    model = build_model(config).eval()
    assert model.encode_lidar(synthetic_batch(config)) is None
    assert len(model.presence(synthetic_batch(config))) == 1
