"""The detector split into the node's stages, and what feeds them.

`ModelStages` runs a `BEVFusion` in eval mode as four calls (camera branch, LiDAR branch,
fuser + decoder + head + decode, then publishing elsewhere) so the node can put each on its own
thread; composed in order they give exactly `model(batch)` (a test checks it).

Camera temporal modes:

- `clip`: each processed cloud runs the camera encoder on a clip of T frames per camera (the
  chosen frame and the T - 1 camera frames before it), exactly as offline inference does:
  T backbone passes per camera per processed cloud.
- `stream`: per-camera TSM caches (`CameraEncoder.forward_stream`): when each processed cloud
  uses the camera frame after the previous one (the node keeps up), a frame costs one backbone
  pass, and a cloud that picks the same frame again reuses its features. The cache then holds
  every frame since the cache was (re)built, a longer history than the offline clip of T. When
  frames were skipped (a slow model), or the frame before the chosen one is older than
  `data.max_clip_frame_age` (a gap in the camera stream: the clip is cut there, as the dataset
  cuts it), the cache is rebuilt over the clip's frames before the chosen one, which gives
  exactly the offline clip's features (`camera_stream`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from perception.datasets.sensors import (  # noqa: F401  (the node)
    TestTimeImageTransform,
    points_in_range,
)
from perception.models.camera import TemporalShiftState
from perception.structures import Batch, Boxes3D, Detections

TEMPORAL_MODES: tuple[str, ...] = ("stream", "clip")


# The node's sensor preprocessing is the dataset's (one implementation of each rule).
ImagePreprocess = TestTimeImageTransform  # the name the node and its tests know


def make_batch(
    *,
    token: str,
    points: np.ndarray,
    images: np.ndarray,
    camera_names: Sequence[str],
    intrinsics: np.ndarray,
    camera_to_lidar: np.ndarray,
    camera_time_lag: np.ndarray,
    image_aug: np.ndarray,
    lidar_to_ego: np.ndarray,
    ego_to_global: np.ndarray,
    camera_mask: np.ndarray,
) -> Batch:
    """A one-sample `Batch` as `collate_samples` builds it (no GT, no LiDAR augmentation).

    Shapes: points `[N, 5]` float32; images `[Ncam, T, 3, H, W]` uint8; intrinsics
    `[Ncam, 3, 3]`; camera_to_lidar `[Ncam, T, 4, 4]`; camera_time_lag `[Ncam, T]`; image_aug
    `[Ncam, 4, 4]`; lidar_to_ego, ego_to_global `[4, 4]` float64; camera_mask `[Ncam]` bool.
    """
    pts = torch.from_numpy(np.ascontiguousarray(points, np.float32))
    return Batch(
        tokens=(token,),
        points=torch.cat([torch.zeros(len(pts), 1), pts], 1),
        images=torch.from_numpy(images)[None],
        camera_names=tuple(camera_names),
        intrinsics=torch.from_numpy(np.asarray(intrinsics, np.float32))[None],
        camera_to_lidar=torch.from_numpy(np.asarray(camera_to_lidar, np.float32))[None],
        camera_time_lag=torch.from_numpy(np.asarray(camera_time_lag, np.float32))[None],
        image_aug=torch.from_numpy(np.asarray(image_aug, np.float32))[None],
        lidar_aug=torch.eye(4)[None],
        lidar_to_ego=torch.from_numpy(np.asarray(lidar_to_ego, np.float64))[None],
        ego_to_global=torch.from_numpy(np.asarray(ego_to_global, np.float64))[None],
        camera_mask=torch.from_numpy(np.asarray(camera_mask, bool))[None],
        lidar_mask=torch.tensor([True]),
        gt_boxes=(Boxes3D(torch.zeros(0, 9)),),
        gt_labels=(torch.zeros(0, dtype=torch.int64),),
        gt_attributes=(torch.zeros(0, dtype=torch.int64),),
    )


@dataclass
class CameraStreamState:
    """Per-camera TSM caches and the features of the frame each camera last encoded."""

    states: list[TemporalShiftState | None]
    seqs: list[int | None]
    features: list[torch.Tensor | None]
    gaps: int = 0  # times a camera's next encoded frame was not its next frame (skipped ones)
    passes: int = 0  # backbone passes (one per camera frame encoded)

    @classmethod
    def fresh(cls, num_cameras: int) -> CameraStreamState:
        return cls([None] * num_cameras, [None] * num_cameras, [None] * num_cameras)


@dataclass
class ModelStages:
    """A `BEVFusion` (eval mode) as the node's stages. Each method runs under
    `torch.inference_mode()` on the thread that calls it."""

    model: nn.Module
    timings: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model.eval()
        self._voxelize_time = None
        lidar = self.model.lidar
        if lidar is not None:
            # Voxelization is a function inside the LiDAR branch: time the branch's stem entry.
            stem = getattr(lidar, "stem", None)
            if stem is not None:
                stem.register_forward_pre_hook(self._mark_voxelized)

    def _mark_voxelized(self, *_args) -> None:
        import time

        self._voxelize_time = time.perf_counter()

    def camera_clip(self, batch: Batch) -> torch.Tensor | None:
        """Camera BEV `[1, C, X, Y]` from clips `[1, Ncam, T, 3, H, W]` (offline path):
        `BEVFusion.encode_camera`."""
        with torch.inference_mode():
            bev, _ = self.model.encode_camera(batch)
        return bev

    def camera_stream(
        self, batch: Batch, clips: Sequence, state: CameraStreamState
    ) -> tuple[torch.Tensor | None, Batch, dict[int, str]]:
        """Camera BEV `[1, C, X, Y]` with per-camera TSM caches.

        A camera's cache moves on by one pass when its chosen frame is the frame after the one
        it last encoded (and the clip holds that frame: it was not cut for its age), and is
        reused when it is the same frame. Otherwise (first use, frames skipped under load, or
        a gap in the camera stream) the cache no longer holds the right history: it is rebuilt
        from a fresh state over the clip's earlier frames (at most T - 1 passes), so the
        features equal the offline clip's, and the rebuild is counted in `state.gaps`.

        Failures are per camera: a camera whose cache cannot be rebuilt is masked for this
        cloud (its cache forgotten) and the others go on.

        Args:
            batch: the sample; `images[0, c, -1]` is camera c's chosen frame, pre-processed.
            clips: per camera its clip of `CameraFrame`s (oldest first, the chosen one last;
                padded at a stream's start by repeating the oldest) or None (masked).
            state: updated in place.

        Returns:
            the camera BEV, `batch` with the failed cameras masked, and per failed camera
            index what went wrong.
        """
        camera = self.model.camera
        if camera is None:
            return None, batch, {}
        W, H = batch.images.shape[-1], batch.images.shape[-2]
        encoder = camera.encoder
        failed: dict[int, str] = {}

        def fresh() -> TemporalShiftState:
            return encoder.initial_state(1, 1, (H, W))

        def rebuild(earlier: dict) -> TemporalShiftState:
            s = fresh()
            for f in sorted(earlier.values(), key=lambda f: f.seq):
                image = camera.normalize(torch.from_numpy(f.image))
                _, s = encoder.forward_stream(image[None, None], s)
                state.passes += 1
            return s

        with torch.inference_mode():
            todo = []
            for c, clip in enumerate(clips):
                if clip is None or state.seqs[c] == clip[-1].seq:
                    continue
                chosen = clip[-1]
                follows = state.seqs[c] is not None and chosen.seq == state.seqs[c] + 1
                if len(clip) > 1 and clip[-2].seq != chosen.seq - 1:
                    follows = False  # the previous frame was cut from the clip for its age
                if not follows:
                    earlier = {f.seq: f for f in clip[:-1] if f.seq < chosen.seq}
                    if state.seqs[c] is not None or earlier:
                        state.gaps += 1
                    try:
                        state.states[c] = rebuild(earlier)
                    except Exception as exc:  # one camera's failure masks that camera only
                        failed[c] = repr(exc)
                        state.states[c] = state.seqs[c] = state.features[c] = None
                        continue
                todo.append(c)
            if failed:
                mask = batch.camera_mask.clone()
                mask[0, list(failed)] = False
                batch = dataclasses.replace(batch, camera_mask=mask)
            if todo:
                images = camera.normalize(batch.images[0, todo, -1])[None]  # [1, n, 3, H, W]
                caches = [(state.states[c] or fresh()).caches for c in todo]
                joined = TemporalShiftState(tuple(torch.cat(x) for x in zip(*caches)))
                features, new = encoder.forward_stream(images, joined)  # [1, n, C, fh, fw]
                for i, c in enumerate(todo):
                    state.states[c] = TemporalShiftState(
                        tuple(x[i : i + 1] for x in new.caches), new.frames_seen
                    )
                    state.seqs[c] = clips[c][-1].seq
                    state.features[c] = features[0, i]
                state.passes += len(todo)
            reference = next((f for f in state.features if f is not None), None)
            if reference is None:  # no camera has ever been encoded: all masked
                C, stride = encoder.out_channels, encoder.stride
                reference = torch.zeros(C, -(-H // stride), -(-W // stride))
            feats = torch.stack(
                [
                    state.features[c]
                    if clip is not None and c not in failed
                    else torch.zeros_like(reference)
                    for c, clip in enumerate(clips)
                ]
            )[None]  # [1, Ncam, C, fh, fw]
            bev, _ = camera.view_transform(feats, batch)
        return bev, batch, failed

    def lidar(self, batch: Batch) -> tuple[torch.Tensor | None, float]:
        """LiDAR BEV `[1, C, X, Y]` (`BEVFusion.encode_lidar`) and the voxelization time (s)."""
        import time

        if self.model.lidar is None:
            return None, 0.0
        start = time.perf_counter()
        self._voxelize_time = None
        with torch.inference_mode():
            bev = self.model.encode_lidar(batch)  # painted when the model paints
        voxelize = (self._voxelize_time or start) - start
        return bev, voxelize

    def fuse_head(
        self, batch: Batch, camera_bev: torch.Tensor | None, lidar_bev: torch.Tensor | None
    ) -> Detections:
        """Fuser, BEV decoder, head, decode + NMS (`BEVFusion.fuse`, `decode`, `detect`): the
        sample's `Detections`."""
        model = self.model
        with torch.inference_mode():
            outputs = model.decode(model.fuse(batch, camera_bev, lidar_bev))
            return model.detect(outputs, batch)[0]
