"""Same answers as offline: a bag of one tiny-world scene replayed into the node (in-process
transport, sequential, every message waited for) gives, for each keyframe, the inputs and the
detections of offline inference (`perception.evaluation.inference.run_inference`, the path of
tools/test.py) with the same checkpoint.

Camera history: the dataset's clip for a keyframe is the keyframe camera frame and the T - 1
12 Hz frames before it. In `clip` mode the node keeps each camera's recent frames and runs the
encoder on exactly that clip, so every keyframe matches. In `stream` mode, with every cloud
processed (the node keeps up), the TSM cache holds every frame encoded since the last reset; it
equals a clip only while at most T frames were fed: the first keyframe of the scene after 5
pre-roll camera frames, compared with T = 6. With only keyframes processed (frames skipped, as
under load) the stream cache is rebuilt from the T - 1 previous frames: every keyframe matches.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from perception.config import parse_config
from perception.datasets.pipeline import build_dataset
from perception.deploy.bag import write_nuscenes_bag
from perception.deploy.node import NodeOptions, PerceptionNode, load_node_model, replay_into_node
from perception.deploy.transport import InProcessTransport
from perception.evaluation.inference import run_inference
from tests.deploy.node_helpers import SCENE, node_raw, save_micro_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def world(indexed_world_copy):
    return indexed_world_copy("node_parity", max_sweeps=3, max_clip_frames=6)


@pytest.fixture(scope="module")
def bag(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("node_bag") / "scene"
    write_nuscenes_bag(world, SCENE, out)
    return out


def _offline_and_node(
    world, bag, tmp_path, temporal, clip_frames, keyframes=None, every_cloud=False, data=None
):
    raw = node_raw(world, clip_frames=clip_frames, **(data or {}))
    _, work = save_micro_checkpoint(raw, tmp_path)
    config = parse_config(raw)
    dataset = build_dataset(config, "mini_val", train=False)
    indices = [i for i, r in enumerate(dataset.records) if r["scene_name"] == SCENE]
    indices = indices if keyframes is None else indices[:keyframes]
    key_stamps = {int(dataset.records[i]["timestamp"]) * 1000: i for i in indices}
    offline = run_inference(load_node_model(config, work), Subset(dataset, indices), progress=False)

    jobs = {}
    options = NodeOptions(
        temporal=temporal,
        pipelined=False,
        wall_timeout=False,
        # every cloud up to the last compared keyframe, or the keyframes only
        process=(lambda s: s <= max(key_stamps)) if every_cloud else key_stamps.__contains__,
    )
    transport = InProcessTransport()
    node = PerceptionNode(
        load_node_model(config, work),
        config,
        transport,
        options,
        on_result=lambda job: jobs.__setitem__(job.stamp_ns, job),
    )
    with node:
        replay_into_node(bag, node, transport)
    return dataset, key_stamps, offline.detections(), jobs, node


def _same_detections(node_dets, offline_dets):
    assert len(node_dets) == len(offline_dets) > 0
    assert torch.equal(node_dets.labels, offline_dets.labels)
    np.testing.assert_allclose(
        node_dets.boxes.tensor.double().numpy(), offline_dets.boxes.tensor.numpy(), atol=1e-4
    )
    np.testing.assert_allclose(
        node_dets.scores.double().numpy(), offline_dets.scores.numpy(), atol=1e-5
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "sweeps",
    [{}, {"sweeps": 2, "sweep_stride": 2}, {"max_sweep_age": 0.06, "max_clip_frame_age": 0.03}],
    ids=["consecutive", "strided", "age_limits"],
)
def test_clip_mode_matches_offline_inputs_and_detections(world, bag, tmp_path, sweeps):
    dataset, key_stamps, offline, jobs, node = _offline_and_node(
        world, bag, tmp_path, "clip", 2, data=sweeps
    )
    assert set(jobs) == set(key_stamps), "every keyframe cloud processed"
    assert node.stats.dropped == {} and node.stats.rejected == {}
    if "max_sweep_age" in sweeps:  # the limits did cut: the same sweeps and frames left out
        assert node.stats.stale_sweeps > 0 and node.stats.stale_clip_frames > 0
    for stamp, index in key_stamps.items():
        sample = dataset[index]
        batch = jobs[stamp].batch
        # merged sweeps: the dataset's sweep choice, ego-motion compensation and time lag
        assert batch.points.shape == (len(sample.points), 6)
        np.testing.assert_allclose(batch.points[:, 1:].numpy(), sample.points.numpy(), atol=1e-4)
        assert torch.equal(batch.camera_mask[0], sample.camera_mask)
        # the same clip frames, decoded and resized/cropped as the dataset does
        assert torch.equal(batch.images[0], sample.images)
        np.testing.assert_allclose(batch.camera_to_lidar[0], sample.camera_to_lidar, atol=1e-5)
        np.testing.assert_allclose(batch.intrinsics[0], sample.intrinsics)
        np.testing.assert_allclose(batch.image_aug[0], sample.image_aug, atol=1e-6)
        np.testing.assert_allclose(batch.camera_time_lag[0], sample.camera_time_lag, atol=1e-6)
        _same_detections(jobs[stamp].detections, offline[sample.token])


@pytest.mark.slow
def test_stream_mode_matches_offline_on_the_first_keyframe(world, bag, tmp_path):
    dataset, key_stamps, offline, jobs, node = _offline_and_node(
        world, bag, tmp_path, "stream", 6, keyframes=1, every_cloud=True
    )
    (stamp, index), *_ = key_stamps.items()
    # (a camera whose first frame no cloud picked has its cache built over it: same history)
    # six cameras x six frames since the bag's start (five pre-roll frames, then the keyframe)
    job = jobs[stamp]
    assert all(f is not None and f.seq == 5 for f in job.frames)
    _same_detections(job.detections, offline[dataset.records[index]["token"]])


@pytest.mark.slow
def test_stream_mode_rebuilds_skipped_history_to_match_offline(world, bag, tmp_path):
    dataset, key_stamps, offline, jobs, node = _offline_and_node(world, bag, tmp_path, "stream", 2)
    assert set(jobs) == set(key_stamps)
    assert node.stats.tsm_gaps == 6 * len(key_stamps)  # each camera rebuilt at each keyframe
    assert node.stats.backbone_passes == 6 * 2 * len(key_stamps)
    for stamp, index in key_stamps.items():
        _same_detections(jobs[stamp].detections, offline[dataset.records[index]["token"]])
