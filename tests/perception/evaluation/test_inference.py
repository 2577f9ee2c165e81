"""perception.evaluation.inference on the tiny world with a micro, randomly initialised model:
sensor dropping really changes what the branches see, half beams match the sensor's rings,
records keep the split's order, and per-stage latency is reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import Subset

from perception.config import parse_config
from perception.datasets.collate import collate_samples
from perception.datasets.io import read_points
from perception.datasets.pipeline import build_dataset
from perception.evaluation.inference import (
    DROPPABLE,
    STAGES,
    apply_drop_sensors,
    beam_index,
    check_drop_sensors,
    run_inference,
)
from perception.models.builder import build_model
from perception.structures import CAMERA_NAMES
from tests.perception.models.helpers import MICRO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def micro_raw(root: Path) -> dict:
    """The micro detector's config on the world at `root` (its mini_val has 8 samples); every
    box of the random model is kept (score threshold 0) so the evaluation has boxes to match."""
    return {
        **MICRO,
        "name": "micro",
        "data": {**MICRO["data"], "root": str(root), "workers": 0},
        "model": {**MICRO["model"], "head": {**MICRO["model"]["head"], "score_threshold": 0.0}},
    }


def make_micro_checkpoint(root: Path, base: Path, step: int = 5) -> tuple[Path, Path]:
    """Writes `base/micro.yaml` and a checkpoint of a seeded random micro model under
    `base/work`; returns (config path, work dir)."""
    from perception.engine import save_checkpoint

    raw = micro_raw(root)
    config_path = base / "micro.yaml"
    config_path.write_text(yaml.safe_dump(raw))
    torch.manual_seed(0)
    config = parse_config(raw)
    save_checkpoint(base / "work", step=step, model=build_model(config), config=config)
    return config_path, base / "work"


@pytest.fixture(scope="module")
def world(indexed_world_copy) -> Path:
    return indexed_world_copy("inference", max_sweeps=1, max_clip_frames=2)


@pytest.fixture(scope="module")
def config(world):
    return parse_config(micro_raw(world))


@pytest.fixture(scope="module")
def dataset(config):
    return build_dataset(config, "mini_val", train=False)


@pytest.fixture(scope="module")
def model(config):
    torch.manual_seed(0)
    return build_model(config).eval()


def test_unknown_sensor_names_the_choices():
    assert check_drop_sensors(["lidar", "CAM_FRONT", "lidar"]) == ("lidar", "CAM_FRONT")
    with pytest.raises(ValueError, match="CAM_BACK_LEFT") as info:
        check_drop_sensors(["radar"])
    assert "'radar'" in str(info.value)
    assert set(CAMERA_NAMES) < set(DROPPABLE)


def _seen_by_branches(model, dataset, drop):
    """What the camera and LiDAR branches receive when `run_inference` drops `drop`."""
    seen = {}

    def camera_hook(_module, args):
        seen["camera_mask"] = args[0].camera_mask.clone()
        seen["images"] = args[0].images.clone()

    def lidar_hook(_module, args):
        points, _batch_size, lidar_mask = args
        seen["points"], seen["lidar_mask"] = points.clone(), lidar_mask.clone()

    handles = [
        model.camera.register_forward_pre_hook(camera_hook),
        model.lidar.register_forward_pre_hook(lidar_hook),
    ]
    try:
        run_inference(model, Subset(dataset, [0]), drop_sensors=drop, progress=False)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_dropping_reaches_the_branches(model, dataset):
    intact = _seen_by_branches(model, dataset, ())
    assert intact["lidar_mask"].all() and len(intact["points"]) > 1000
    assert intact["camera_mask"].all() and intact["images"].any()

    no_lidar = _seen_by_branches(model, dataset, ("lidar",))
    assert not no_lidar["lidar_mask"].any() and len(no_lidar["points"]) == 0
    assert no_lidar["camera_mask"].all()

    no_cameras = _seen_by_branches(model, dataset, ("cameras",))
    assert not no_cameras["camera_mask"].any() and not no_cameras["images"].any()
    assert no_cameras["lidar_mask"].all()
    assert torch.equal(no_cameras["points"], intact["points"])

    front = dataset[0].camera_names.index("CAM_FRONT")
    one = _seen_by_branches(model, dataset, ("CAM_FRONT",))
    expected = torch.ones_like(one["camera_mask"])
    expected[:, front] = False
    assert torch.equal(one["camera_mask"], expected)
    assert not one["images"][:, front].any()
    others = [c for c in range(len(CAMERA_NAMES)) if c != front]
    assert torch.equal(one["images"][:, others], intact["images"][:, others])


def test_half_beams_keep_every_other_ring(world, dataset):
    """On the keyframe sweep (the sensor at the origin) the elevation binning recovers the ring
    index the synthetic sensor stored in the .pcd.bin for (nearly) every point."""
    record = dataset.records[0]
    raw = read_points(world / record["lidar"]["path"])  # [N, 5] x, y, z, intensity, ring
    points = torch.zeros(len(raw), 6)
    points[:, 1:5] = torch.from_numpy(raw[:, :4].copy())
    beams = beam_index(points, torch.eye(4)[None])
    agree = (beams.numpy() == raw[:, 4].astype(np.int64)).mean()
    assert agree > 0.99, agree

    batch = collate_samples([dataset[0], dataset[1]])
    halved = apply_drop_sensors(batch, ["lidar_half_beams"])
    kept = len(halved.points) / len(batch.points)
    assert 0.4 < kept < 0.6, kept
    assert set(beam_index(halved.points).remainder(2).tolist()) == {0}
    for b in range(2):  # both samples keep points
        assert (halved.points[:, 0] == b).sum() > 0.3 * (batch.points[:, 0] == b).sum()
    assert halved.lidar_mask.all() and torch.equal(halved.images, batch.images)


def test_beam_index_undoes_the_lidar_augmentation():
    elevations = torch.tensor([-30.67, -10.67 + 1.333 / 2 - 0.1, 10.67])  # beams 0, 15, 31
    ranges = torch.tensor([10.0, 20.0, 30.0])
    el = torch.deg2rad(elevations)
    xyz = torch.stack([ranges * el.cos(), torch.zeros(3), ranges * el.sin()], 1)
    points = torch.cat([torch.zeros(3, 1), xyz, torch.zeros(3, 2)], 1)
    assert beam_index(points).tolist() == [0, 15, 31]
    aug = torch.eye(4)
    aug[2, 3] = 5.0  # a global translation up shifts every elevation
    moved = points.clone()
    moved[:, 3] += 5.0
    assert beam_index(moved).tolist() != [0, 15, 31]
    assert beam_index(moved, aug[None]).tolist() == [0, 15, 31]


def test_records_follow_the_dataset_and_time_each_stage(model, dataset):
    subset = Subset(dataset, [0, 1, 2])
    result = run_inference(model, subset, progress=False)
    assert result.tokens == [dataset.tokens[i] for i in range(3)]
    latency = result.latency()
    assert set(latency) == set(STAGES) - {"fuse_decoder_head"}  # that one: a decode backend
    for stage, stats in latency.items():
        assert stats["n"] == 3 and 0 <= stats["p50"] <= stats["p90"], stage
    parts = sum(latency[s]["mean"] for s in ("camera", "lidar", "fuse_decoder", "head_decode"))
    assert latency["camera"]["mean"] > 0 and latency["lidar"]["mean"] > 0
    assert parts <= latency["total"]["mean"] * 1.001

    # The records rebuild the model's own detections and a submission of those samples.
    detections = result.detections()
    with torch.inference_mode():
        direct = model(collate_samples([dataset[0]]))[0]
    again = detections[dataset.tokens[0]]
    assert len(again) == len(direct) > 0
    assert torch.equal(again.boxes.tensor, direct.boxes.tensor.double())
    assert torch.equal(again.labels, direct.labels)
    writer = result.submission(use_camera=True, use_lidar=True)
    assert writer.sample_tokens == result.tokens


def test_a_decode_backend_is_timed_as_one_stage_not_as_zeros(model, dataset):
    """With a decode backend (the INT8 decoder-head graph) the decoder and head modules are not
    called: their rows are n/a (absent), and the graph's span is its own stage."""
    subset = Subset(dataset, [0, 1])
    model.decode_backend = lambda fused: model.head.forward(model.decoder.forward(fused))
    try:
        latency = run_inference(model, subset, progress=False).latency()
    finally:
        model.decode_backend = None
    assert "fuse_decoder" not in latency and "head_decode" not in latency
    assert latency["fuse_decoder_head"]["n"] == 2
    assert 0 < latency["fuse_decoder_head"]["mean"] <= latency["total"]["mean"]
