"""Object conditions (perception.generative.conditions): validation naming the field, batch
indexing and concatenation, a JSON round trip, the condition embedding's null rows and
gradients, and the training range's errors naming the field, the row and the range."""

from __future__ import annotations

import json
import math

import pytest
import torch

from perception.generative.conditions import (
    LIDAR_SENSOR,
    SENSOR_NAMES,
    ConditionEmbedding,
    ConditionRange,
    ObjectConditions,
)
from perception.structures.classes import CAMERA_NAMES, CLASS_NAMES

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _conds(B=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ObjectConditions(
        label=torch.randint(0, len(CLASS_NAMES), (B,), generator=g),
        size=0.5 + 4 * torch.rand((B, 3), generator=g),
        view_angle=(torch.rand(B, generator=g) * 2 - 1) * math.pi,
        depth=1 + 50 * torch.rand(B, generator=g),
        sensor=torch.randint(0, len(SENSOR_NAMES), (B,), generator=g),
    )


def _fields(c):
    return (c.label, c.size, c.view_angle, c.depth, c.sensor)


def _assert_equal(a, b):
    for x, y in zip(_fields(a), _fields(b)):
        assert x.dtype == y.dtype and torch.equal(x, y)


def test_sensor_names_end_with_the_lidar():
    assert SENSOR_NAMES[:6] == CAMERA_NAMES and SENSOR_NAMES[LIDAR_SENSOR] == "LIDAR_TOP"
    assert len(SENSOR_NAMES) == 7


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("label", torch.zeros(4), "label: dtype"),
        ("size", torch.ones(4, 2), r"size: shape must be \[B, 3\]"),
        ("view_angle", torch.zeros(3), "view_angle: batch size 3"),
        ("depth", torch.zeros(4, dtype=torch.long), "depth: dtype"),
        ("sensor", [0, 0, 0, 0], "sensor: expected a torch.Tensor"),
    ],
)
def test_bad_conditions_are_errors_naming_the_field(field, value, message):
    good = {n: getattr(_conds(4), n) for n in ("label", "size", "view_angle", "depth", "sensor")}
    with pytest.raises((ValueError, TypeError), match=message):
        ObjectConditions(**{**good, field: value})


def test_index_and_cat_take_and_join_rows():
    c = _conds(6)
    assert len(c) == 6
    parts = [c.index(slice(0, 2)), c.index(torch.tensor([2, 3])), c.index([4]), c.index(5)]
    assert [len(p) for p in parts] == [2, 2, 1, 1]
    _assert_equal(ObjectConditions.cat(parts), c)
    mask = torch.tensor([True, False, True, False, False, True])
    _assert_equal(c.index(mask), c.index([0, 2, 5]))
    _assert_equal(c.index(-1), c.index([5]))
    _assert_equal(c.to("cpu"), c)
    with pytest.raises(ValueError, match="items"):
        ObjectConditions.cat([])


def test_to_dict_from_dict_round_trips_through_json():
    c = _conds(5)
    data = json.loads(json.dumps(c.to_dict()))
    assert data["class_name"] == [CLASS_NAMES[i] for i in c.label.tolist()]
    assert data["sensor_name"] == [SENSOR_NAMES[i] for i in c.sensor.tolist()]
    _assert_equal(ObjectConditions.from_dict(data), c)  # float32 values survive exactly
    del data["depth"]
    with pytest.raises(ValueError, match="depth"):
        ObjectConditions.from_dict(data)


def test_create_accepts_names():
    c = ObjectConditions.create(
        label=["bicycle", 0], size=[[0.6, 1.7, 1.2], [2, 4.5, 1.6]], view_angle=[0.0, 1.0],
        depth=[10.0, 20.0], sensor=["CAM_BACK", "LIDAR_TOP"],
    )  # fmt: skip
    assert c.label.tolist() == [CLASS_NAMES.index("bicycle"), 0]
    assert c.sensor.tolist() == [3, LIDAR_SENSOR]
    with pytest.raises(ValueError, match="label: unknown name 'unicorn'"):
        ObjectConditions.create(label=["unicorn"], size=[[1, 1, 1]], view_angle=[0], depth=[1],
                                sensor=[0])  # fmt: skip


def test_embedding_drops_rows_to_the_null_embedding_and_trains_every_parameter():
    torch.manual_seed(0)
    embed = ConditionEmbedding(dim=32)
    c = _conds(6)
    drop = torch.tensor([True, False, False, True, False, False])
    full = embed(c)  # [6, 32]
    out = embed(c, drop)
    assert out.shape == (6, 32) and out.dtype == torch.float32
    assert torch.equal(out[drop], embed.null.detach().expand(2, -1))
    assert torch.equal(out[~drop], full[~drop])
    assert not torch.allclose(full[0], full[1])  # different conditions, different vectors
    out.square().sum().backward()
    for name, p in embed.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_embedding_is_periodic_in_the_view_angle_and_refuses_out_of_range_indices():
    embed = ConditionEmbedding(dim=16)
    c = _conds(4)
    turned = ObjectConditions(c.label, c.size, c.view_angle + 2 * math.pi, c.depth, c.sensor)
    assert torch.allclose(embed(c), embed(turned), atol=1e-5)
    bad = ObjectConditions(c.label, c.size, c.view_angle, c.depth, c.sensor + 7)
    with pytest.raises(ValueError, match="sensor"):
        embed(bad)
    with pytest.raises(ValueError, match="drop"):
        embed(c, torch.ones(3, dtype=torch.bool))


def _training():
    return ObjectConditions.create(
        label=["car", "car", "bicycle"],
        size=[[1.8, 4.0, 1.5], [2.0, 5.0, 1.7], [0.6, 1.7, 1.2]],
        view_angle=[0.0, 1.0, -2.0],
        depth=[10.0, 40.0, 20.0],
        sensor=["CAM_FRONT", "LIDAR_TOP", "CAM_FRONT"],
    )


def _one(label="car", size=(1.9, 4.5, 1.6), depth=20.0, sensor="CAM_FRONT", angle=0.0):
    return ObjectConditions.create(label=[label], size=[size], view_angle=[angle], depth=[depth],
                                   sensor=[sensor])  # fmt: skip


def test_condition_range_accepts_its_training_conditions():
    r = ConditionRange.fit(_training())
    assert r.counts == {"car": 2, "bicycle": 1}
    assert r.size_min["car"] == pytest.approx((1.8, 4.0, 1.5))
    assert r.size_max["car"] == pytest.approx((2.0, 5.0, 1.7))
    assert (r.depth_min, r.depth_max) == (10.0, 40.0)
    assert set(r.sensors) == {"CAM_FRONT", "LIDAR_TOP"}
    r.check(_training())
    r.check(_one(size=(1.8 * 0.51, 5.0 * 1.49, 1.6)))  # inside the 50% margin


@pytest.mark.parametrize(
    "conds, message",
    [
        (_one(label="bus"), r"label: row 0 is class 'bus', which has no training examples"),
        (_one(size=(1.9, 8.0, 1.6)), r"size: row 0 \('car'\) has l = 8.000 m, outside \[2.000, 7.500\]"),
        (_one(size=(0.8, 4.5, 1.6)), r"size: row 0 \('car'\) has w = 0.800 m"),
        (_one(depth=70.0), r"depth: row 0 has depth 70.000 m, outside \[5.000, 60.000\]"),
        (_one(sensor="CAM_BACK"), r"sensor: row 0 is sensor 'CAM_BACK'"),
        (_one(angle=math.inf), "view_angle: row 0"),
    ],
)  # fmt: skip
def test_condition_range_errors_name_the_field_row_and_range(conds, message):
    r = ConditionRange.fit(_training())
    with pytest.raises(ValueError, match=message):
        r.check(conds)
    # the row is the offending one within a batch
    batch = ObjectConditions.cat([_training(), conds])
    with pytest.raises(ValueError, match=message.replace("row 0", "row 3")):
        r.check(batch)


def test_condition_range_round_trips_through_json():
    r = ConditionRange.fit(_training())
    back = ConditionRange.from_dict(json.loads(json.dumps(r.to_dict())))
    assert back == r
    with pytest.raises(ValueError, match="kind"):
        ConditionRange.from_dict({**r.to_dict(), "kind": "something-else"})
    with pytest.raises(ValueError, match="conds"):
        ConditionRange.fit(_training().index(slice(0, 0)))
