"""The real-time perception node: ROS 2 sensor topics in, 3-D detections out.

    node = PerceptionNode(model, config, transport, NodeOptions())
    with node:  # starts the receive and stage threads
        ...     # publish sensor messages on `transport`
    node.stats.summary()

Inputs (names as `deploy/bag.py` writes them): `/lidar/top` PointCloud2, six
`/<cam>/image/compressed` CompressedImage and `/<cam>/camera_info` CameraInfo, `/tf` (map ->
base_link), `/tf_static` (base_link -> sensors), `/perception/reset` (std_msgs/Empty).

Outputs, each stamped with the LiDAR cloud's stamp and frame: `/perception/objects`
(autoware_perception_msgs/DetectedObjects), `/perception/detections` (vision_msgs/Detection3DArray),
`/perception/markers` (MarkerArray), `/perception/status` (diagnostic_msgs/DiagnosticArray, one per
processed cloud: level WARN and `degraded: ...` when cameras were masked) and
`/perception/diagnostics` (DiagnosticArray every `diagnostics_period_s`: counts, drops and
rejections by reason, per-stage and receive-to-publish latency p50/p99, and the transport's
DDS loss counters as `transport/...`, see docs/dds.md).

Sync (Autoware BEVFusion's rule, `max_camera_lidar_delay`): each LiDAR cloud triggers one
model run with, per camera, the image nearest in time to the cloud; a camera whose nearest image
is more than `max_camera_delay_s` away is masked (`camera_mask` False) and the output marked
degraded. A camera whose newest image is older than the cloud but within the delay is live: the
cloud waits for its next image at most `camera_wait_s` (sensor time, or wall time when
`wall_timeout`), since cameras fire while the LiDAR spins past them, some just after the cloud's
stamp. Dead cameras are never waited for; a newer cloud ends the wait.

Streaming state (`deploy/state.py`): the TF buffer, `data.sweeps - 1` earlier clouds (every
`data.sweep_stride`-th) merged into each new one with ego motion from TF, each camera's recent
frames (decoded and pre-processed at arrival), and the camera encoder's TSM caches
(`deploy/pipeline.py`). Sweeps and clips follow the dataset's rules
(`perception.datasets.sensors`): earlier sweeps older than `data.max_sweep_age` are not merged
and a clip stops at a frame older than `data.max_clip_frame_age` before the cloud (padded),
both counted (`stale_sweeps`, `stale_clip_frames`); each camera's CameraInfo and mount are
checked once against the image crop as the dataset checks them (`crop_below_horizon`, a
warning). All of it resets on a jump back in time (counted in `resets`;
`StampTracker`: one stamp series steps back by more than `time_jump_s`, or `time_jump_series`
series are behind their last stamps at once, e.g. a bag replay restarted or looping) or a
message on `/perception/reset`.

Threads and drop policy: the receive thread deserializes and validates every message, has each
image decoded strictly and pre-processed (resize/crop) once (a batch's images in parallel on
`decode_workers` threads), and does the sync; a bad image is rejected there alone
(`corrupt_image`) and never reaches the model. A cloud ready for the model goes into a one-slot
"latest frame" entry: a cloud still waiting there when a newer one arrives is dropped (counted
`stale`), so a slow model skips frames instead of queueing them. Subscriptions are keep-last,
deep enough to absorb a burst. With `pipelined` the model runs as five threads (pre-process:
sweep merge, image gathering -> camera branch -> LiDAR branch -> fuser/decoder/head -> publish)
joined by one-deep queues, with at most `max_in_flight` clouds inside, so consecutive clouds
overlap without piling up between stages; otherwise one thread runs the stages in turn.
`process_every` N > 1 runs the model on one received cloud in N (a 20 Hz LiDAR at 10 Hz with
N = 2, the deployment target's policy); the others are still merged into the next processed
cloud as its earlier sweeps and are counted as dropped (`policy`), never silently lost.

Bad input never stops the node: `InvalidMessage` (and undecodable CDR, missing transforms) is
logged, counted by reason in `stats.rejected`, and the message is ignored; state is unchanged.
Failures in the model stages are isolated per camera where they can be: that camera is masked
for the cloud (counted in `camera_errors`) and the cloud goes on.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from perception.config.schema import ExperimentConfig
from perception.datasets.pipeline import camera_crop_problems
from perception.datasets.sensors import sweep_reach_problem
from perception.structures import Detections

from .bag import (
    BASE_FRAME,
    LIDAR_CHANNEL,
    MAP_FRAME,
    TF_STATIC_TOPIC,
    TF_TOPIC,
    camera_info_topic,
    frame_of,
    image_topic,
    lidar_topic,
)
from .convert import (
    DEFAULT_MAX_POINTS,
    CameraCalibration,
    camera_info_to_calibration,
    compressed_image_to_rgb,
    detections_to_detected_objects,
    detections_to_detection3d_array,
    detections_to_marker_array,
    pointcloud2_to_points,
    tf_message_to_transforms,
)
from .diagnostics import (  # noqa: F401  (the node's public names, re-exported)
    DIAGNOSTIC_ARRAY,
    NodeStats,
    diagnostic_array,
    diagnostic_values,
    frame_status,
    node_status,
    summary_json,
    summary_line,
)
from .messages import (
    CAMERA_INFO,
    COMPRESSED_IMAGE,
    DETECTED_OBJECTS,
    DETECTION3D_ARRAY,
    MARKER_ARRAY,
    POINTCLOUD2,
    TF_MESSAGE,
    DecodeError,
    serialize,
    stamp_to_ns,
)
from .pipeline import (
    TEMPORAL_MODES,
    CameraStreamState,
    ImagePreprocess,
    ModelStages,
    make_batch,
    points_in_range,
)
from .recorder import Recorder  # noqa: F401
from .scheduler import LatestSlot
from .state import (
    CameraHistory,
    MissingTransform,
    Sweep,
    SweepAccumulator,
    TfBuffer,
    merge_earlier,
)
from .sync import cloud_ready
from .transport import Transport
from .validation import (
    InvalidMessage,
    StampTracker,
    check_encoded_image,
    check_frame,
    encoded_image_size,
)

log = logging.getLogger(__name__)

RESET_TOPIC = "/perception/reset"
OBJECTS_TOPIC = "/perception/objects"
DETECTIONS_TOPIC = "/perception/detections"
MARKERS_TOPIC = "/perception/markers"
STATUS_TOPIC = "/perception/status"
DIAGNOSTICS_TOPIC = "/perception/diagnostics"


@dataclass(frozen=True)
class TopicKind:
    """How the node subscribes to one kind of input topic and where its messages go.

    `order` sorts messages of equal stamps within a received batch (TF first, the cloud last:
    a cloud finds the transforms and images of its own instant). `depth` is the keep-last
    queue: deep enough to absorb a burst (1 s of clouds); stale clouds are dropped, and
    counted, at the model's entry instead. `handler` is the `PerceptionNode` method that
    applies a message of this kind (`TOPIC_KINDS`, after the class).
    """

    msgtype: str
    depth: int
    order: int
    handler: Callable[..., None]
    reliable: bool = False
    transient_local: bool = False
    per_camera: bool = False


@dataclass(frozen=True)
class InputTopic:
    """One subscribed topic: its kind, its camera (camera kinds) and the bound handler."""

    topic: str
    kind: str
    camera: str | None
    handler: Callable[[Any, Any, str | None, float], None]

    @property
    def spec(self) -> TopicKind:
        return TOPIC_KINDS[self.kind]


EMPTY = "std_msgs/msg/Empty"

# Stages whose latency the node reports (ms); `voxelize` is part of `lidar`.
STAGES: tuple[str, ...] = ("receive", "image_decode", "sync_wait", "preprocess", "camera", "lidar",
                           "voxelize", "fuse_head", "publish", "receive_to_publish",
                           "stamp_to_publish")  # fmt: skip
# Sensor stamp -> publish latency is only meaningful when the stamps are on this machine's
# clock (live sensors); a replayed bag's stamps are from the past.
STAMP_CLOCK_WINDOW_NS = 60_000_000_000

# Why a message was rejected beyond `validation.REASONS`.
MISSING_TRANSFORM = "missing_transform"
UNDECODABLE = "undecodable"
INTERNAL_ERROR = "internal_error"  # a message that made the node's own code fail
# Why a cloud ready for the model was not processed.
DROP_STALE = "stale"  # a newer cloud replaced it in the latest-frame entry
DROP_RESET = "reset"  # state reset (time jump or reset topic) while it waited
DROP_POLICY = "policy"  # not run by choice (`NodeOptions.process_every`): a sweep of the next


@dataclass(frozen=True)
class NodeOptions:
    """How the node syncs, drops and runs (see the module docstring)."""

    max_camera_delay_s: float = 0.12
    camera_wait_s: float = 0.05
    wall_timeout: bool = True  # False: only sensor time ends a camera wait (deterministic)
    temporal: str = "stream"  # "stream" (TSM caches) or "clip" (T frames per cloud, offline-exact)
    pipelined: bool = True
    max_in_flight: int = 2  # clouds inside the pipelined stages at once (>= 1)
    # camera -> LiDAR with the ego motion between the image and cloud stamps (as the dataset);
    # False: the static mount only, so the camera BEV pooling plan stays cached between clouds
    camera_motion: bool = True
    nonfinite: str = "drop"  # NaN/inf points: "drop" them (counted) or "reject" the cloud
    max_points: int = DEFAULT_MAX_POINTS
    # a jump back in time resets the state: one stamp series (topic, TF pair) stepping back by
    # more than `time_jump_s`, or `time_jump_series` of them behind at once (validation.py)
    time_jump_s: float = 2.0
    time_jump_series: int = 3
    decode_workers: int = 2  # threads decoding a received batch's images (<= 1: in turn)
    # JPEGs decoded at the smallest DCT scale that keeps the model's input resolution
    # (libjpeg scale-on-decode, then the same test-time transform): faster, not bit-equal to
    # the dataset's full decode (tests/deploy/test_reduced_decode.py bounds the difference)
    reduced_decode: bool = False
    diagnostics_period_s: float = 5.0
    print_diagnostics: bool = False
    latency_window: int = 2000  # latest samples kept per stage for p50/p99
    process: Callable[[int], bool] | None = None  # which cloud stamps to run the model on
    process_every: int = 1  # run the model on one received cloud in this many (DROP_POLICY)

    def __post_init__(self) -> None:
        if self.temporal not in TEMPORAL_MODES:
            raise ValueError(f"temporal must be one of {TEMPORAL_MODES}, got {self.temporal!r}")
        if self.nonfinite not in ("drop", "reject"):
            raise ValueError(f"nonfinite must be 'drop' or 'reject', got {self.nonfinite!r}")
        if self.max_camera_delay_s < 0 or self.camera_wait_s < 0:
            raise ValueError("max_camera_delay_s and camera_wait_s must be >= 0")
        if self.time_jump_series < 1:
            raise ValueError(f"time_jump_series must be >= 1, got {self.time_jump_series}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.process_every < 1:
            raise ValueError(f"process_every must be >= 1, got {self.process_every}")


@dataclass
class _Pending:
    """A cloud waiting for live cameras' next images."""

    sweep: Sweep
    earlier: tuple[Sweep, ...]  # the sweeps to merge into it
    frame_id: str
    receive_ns: int
    arrival: float  # time.monotonic()
    receive_ms: float

    @property
    def stamp_ns(self) -> int:
        return self.sweep.stamp_ns


@dataclass
class Job:
    """One cloud on its way through the model stages."""

    stamp_ns: int
    frame_id: str
    pending: _Pending
    geometry: dict[str, np.ndarray]  # make_batch's camera and ego arguments
    clips: list  # per camera: its clip of CameraFrames (oldest first) or None (masked)
    generation: int
    batch: Any = None  # built by the pre-process stage
    frames: list = field(default_factory=list)  # per camera: the chosen frame or None
    masked: tuple[str, ...] = ()
    times_ms: dict[str, float] = field(default_factory=dict)
    admitted: bool = False  # holds one of the node's in-flight admissions
    camera_bev: torch.Tensor | None = None
    lidar_bev: torch.Tensor | None = None
    detections: Detections | None = None
    tsm_gaps: int = 0
    stale_sweeps: int = 0  # set by the pre-process stage
    stale_clip_frames: int = 0

    @property
    def receive_ns(self) -> int:
        return self.pending.receive_ns

    @property
    def degraded(self) -> bool:
        return bool(self.masked)


class PerceptionNode:
    """Runs a `BEVFusion` on ROS 2 sensor topics of `transport` (see the module docstring).

    Args:
        model: the detector (put in eval mode here).
        config: its experiment config (cameras, sweeps, clip frames, point range, image size).
        transport: `DdsTransport` or `InProcessTransport`.
        options: sync, drop and threading choices.
        recorder: writes inputs and outputs when given.
        on_result: called from the publish stage with each `Job` after publishing.
    """

    def __init__(
        self,
        model: nn.Module,
        config: ExperimentConfig,
        transport: Transport,
        options: NodeOptions | None = None,
        *,
        recorder: Recorder | None = None,
        on_result: Callable[[Job], None] | None = None,
    ):
        options = options or NodeOptions()
        self.config = config
        self.options = options
        self.transport = transport
        self.recorder = recorder
        self.on_result = on_result
        self.stages = ModelStages(model)
        self.cameras: tuple[str, ...] = tuple(config.data.cameras)
        self.camera_frames = {c: frame_of(c) for c in self.cameras}
        # frames per camera in the batch (stream mode encodes one, from its cache)
        self.clip_frames = config.data.clip_frames if options.temporal == "clip" else 1
        self.preprocess = ImagePreprocess.from_config(config)
        self.stats = NodeStats(window=options.latency_window)
        self.stats.transport = getattr(transport, "stats", None)
        self.stats.precision = getattr(model, "precision", "float32")

        # streaming state (receive thread)
        self.tf = TfBuffer(map_frame=MAP_FRAME, base_frame=BASE_FRAME)
        self.sweeps = SweepAccumulator(
            config.data.sweeps, max_age_s=config.data.max_sweep_age, stride=config.data.sweep_stride
        )
        self.histories = {c: CameraHistory(config.data.clip_frames + 2) for c in self.cameras}
        self.calibrations: dict[str, CameraCalibration] = {}
        self._crop_checked: dict[str, bytes] = {}  # per camera: the calibration last checked
        self._stale_sweep_clouds = 0  # clouds that merged fewer sweeps for their age
        self._clouds_seen = 0  # clouds received since the last reset (`process_every`)
        self.stamps = StampTracker(
            time_jump_ns=int(options.time_jump_s * 1e9), jump_series=options.time_jump_series
        )
        self.pending: _Pending | None = None
        self.sensor_clock_ns: int | None = None
        self.generation = 0
        self._camera_state = CameraStreamState.fresh(len(self.cameras))
        self._camera_generation = 0

        # topics
        self.lidar_topic = lidar_topic(LIDAR_CHANNEL)
        names = {"tf_static": TF_STATIC_TOPIC, "tf": TF_TOPIC, "reset": RESET_TOPIC,
                 "cloud": self.lidar_topic}  # fmt: skip
        self.inputs: dict[str, InputTopic] = {}
        for kind, spec in TOPIC_KINDS.items():
            handler = functools.partial(spec.handler, self)
            if spec.per_camera:
                topic_of = camera_info_topic if kind == "camera_info" else image_topic
                for c in self.cameras:
                    self.inputs[topic_of(c)] = InputTopic(topic_of(c), kind, c, handler)
            else:
                self.inputs[names[kind]] = InputTopic(names[kind], kind, None, handler)
        self._subscriptions = [
            transport.subscribe(
                t.topic,
                t.spec.msgtype,
                depth=t.spec.depth,
                reliable=t.spec.reliable,
                transient_local=t.spec.transient_local,
            )
            for t in self.inputs.values()
        ]
        self._publishers = {
            OBJECTS_TOPIC: transport.publisher(OBJECTS_TOPIC, DETECTED_OBJECTS),
            DETECTIONS_TOPIC: transport.publisher(DETECTIONS_TOPIC, DETECTION3D_ARRAY),
            MARKERS_TOPIC: transport.publisher(MARKERS_TOPIC, MARKER_ARRAY),
            STATUS_TOPIC: transport.publisher(STATUS_TOPIC, DIAGNOSTIC_ARRAY),
            DIAGNOSTICS_TOPIC: transport.publisher(DIAGNOSTICS_TOPIC, DIAGNOSTIC_ARRAY),
        }

        # threads
        self._entry = LatestSlot()
        in_flight = options.max_in_flight if options.pipelined else 1
        self._admission = threading.Semaphore(max(1, in_flight))
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._queues: list[queue.Queue] = []
        self._idle = threading.Condition()  # guards handled / _in_flight
        self._state_lock = threading.RLock()  # the streaming state (receive thread, flush)
        self._in_flight = 0
        self.handled = 0  # messages the receive thread finished with
        self._decoder: ThreadPoolExecutor | None = None  # arrival image decoding (handle_batch)
        self._decoding: dict[int, Future] = {}  # id(Received) -> its image being decoded
        self._last_diagnostics = time.monotonic()

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        run = [("receive", self._receive_loop)]
        if self.options.pipelined:
            self._queues = [queue.Queue(maxsize=1) for _ in range(4)]
            q0, q1, q2, q3 = self._queues
            run += [
                ("preprocess", lambda: self._stage_loop(None, q0, self._run_preprocess)),
                ("camera", lambda: self._stage_loop(q0, q1, self._run_camera)),
                ("lidar", lambda: self._stage_loop(q1, q2, self._run_lidar)),
                ("fuse_head", lambda: self._stage_loop(q2, q3, self._run_fuse_head)),
                ("publish", lambda: self._stage_loop(q3, None, self._run_publish)),
            ]
        else:
            run.append(("model", lambda: self._stage_loop(None, None, self._run_all)))
        for name, target in run:
            thread = threading.Thread(target=target, name=f"node-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()
        if self._decoder is not None:
            self._decoder.shutdown(wait=True, cancel_futures=True)
            self._decoder = None

    def __enter__(self) -> PerceptionNode:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def wait_idle(self, handled: int, timeout_s: float = 30.0) -> bool:
        """Blocks until the receive thread has handled `handled` messages and no cloud is in
        the model stages (a cloud waiting for cameras does not count)."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self.handled < handled or self._in_flight > 0:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(min(left, 0.05))
        return True

    def finish_pending(self) -> None:
        """Sends a cloud still waiting for cameras to the model now (end of input)."""
        with self._state_lock:
            self._finalize(force=True)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """`finish_pending`, then waits until the model stages are idle."""
        with self._state_lock:
            handled = self.handled
            self._finalize(force=True)
        return self.wait_idle(handled, timeout_s)

    # -- receive / decode stage ----------------------------------------------------------

    def _receive_loop(self) -> None:
        subs = self._subscriptions
        while not self._stop.is_set():
            ready = self.transport.wait(subs, 0.02)
            samples = [r for s in ready for r in s.take()]
            # publish order (a bag loop's old and new messages must not swap: a stray old
            # stamp after the jump would reset the state again), TF first among equals
            samples.sort(key=lambda r: (r.source_time_ns, self.inputs[r.topic].spec.order))
            self.handle_batch(samples)
            with self._state_lock:
                if self.pending is not None and self.options.wall_timeout:
                    if time.monotonic() - self.pending.arrival > self.options.camera_wait_s:
                        self._finalize(force=True)
            now = time.monotonic()
            if now - self._last_diagnostics >= self.options.diagnostics_period_s:
                self._last_diagnostics = now
                self.publish_diagnostics()

    def handle_batch(self, samples: Sequence[Any]) -> None:
        """`handle`s `samples` in order, their images decoded ahead, in parallel, on
        `decode_workers` threads (the decoders release the GIL): what the receive thread does
        with each batch it takes."""
        if self.options.decode_workers > 1:
            if self._decoder is None:
                self._decoder = ThreadPoolExecutor(
                    self.options.decode_workers, thread_name_prefix="node-decode"
                )
            for received in samples:
                if self.inputs[received.topic].kind == "image":
                    self._decoding[id(received)] = self._decoder.submit(
                        self._decode_received, received
                    )
        try:
            for received in samples:
                self.handle(received)
        finally:
            self._decoding.clear()

    def _decode_received(self, received: Any) -> np.ndarray:
        return self._decode(received.message(), received.topic)

    def _decode(self, message: Any, topic: str) -> np.ndarray:
        """A CompressedImage decoded strictly and pre-processed: `[3, H, W]` uint8. The size
        is checked against the CameraInfo on the header, before (`check_encoded_image`).
        With `reduced_decode`, a JPEG is decoded at the smallest DCT scale of at least the
        model's resolution (`TestTimeImageTransform.decode_size`)."""
        start = time.perf_counter()
        if self.options.reduced_decode:
            size = encoded_image_size(np.asarray(message.data, np.uint8).tobytes())
            min_size = None if size is None else self.preprocess.decode_size(*size)
            rgb = compressed_image_to_rgb(message, topic=topic, min_size=min_size)
            image = self.preprocess(rgb, full_size=size)
        else:
            image = self.preprocess(compressed_image_to_rgb(message, topic=topic))
        self.stats.add_latency("image_decode", 1e3 * (time.perf_counter() - start))
        return image

    def handle(self, received: Any) -> None:
        """Decodes, validates and applies one received message (the decode stage). Bad input
        is rejected: logged, counted by reason, otherwise ignored."""
        source = self.inputs[received.topic]
        start = time.perf_counter()
        with self._state_lock:
            try:
                with self.stats.lock:
                    self.stats.received[received.topic] += 1
                if self.recorder is not None:
                    self.recorder.write(
                        received.topic, received.msgtype, received.cdr, received.receive_time_ns
                    )
                message = received.message()
                source.handler(received, message, source.camera, start)
            except InvalidMessage as exc:
                self._reject(exc.reason, str(exc))
            except DecodeError as exc:
                self._reject(UNDECODABLE, str(exc))
            except MissingTransform as exc:
                self._reject(MISSING_TRANSFORM, f"topic {received.topic}: {exc}")
            except Exception as exc:  # anything else a message triggers must not stop the node
                log.exception("topic %s: failed to handle a message", received.topic)
                self._reject(INTERNAL_ERROR, f"topic {received.topic}: {exc!r}")
            finally:
                with self._idle:
                    self.handled += 1
                    self._idle.notify_all()

    def _reject(self, reason: str, text: str) -> None:
        with self.stats.lock:
            self.stats.rejected[reason] += 1
            n = self.stats.rejected[reason]
        if n <= 10 or n % 100 == 0:  # a broken sensor must not flood the log
            log.warning("rejected (%s, %d so far): %s", reason, n, text)

    def _check_stamp(self, topic: str, stamp_ns: int, series: str | None = None) -> None:
        if self.stamps.check(topic, stamp_ns, series) == "time_jump":
            log.warning(
                "jump back in time: %s stamp %d ns is %.3f s before the newest; resetting the "
                "sync, sweeps, camera frames, TSM caches and ego poses",
                topic if series is None else f"{topic} ({series})",
                stamp_ns,
                self.stamps.last_jump_ns / 1e9,
            )
            self.reset("time_jump")
            self.stamps.check(topic, stamp_ns, series)  # `reset` emptied the tracker
        if self.sensor_clock_ns is None or stamp_ns > self.sensor_clock_ns:
            self.sensor_clock_ns = stamp_ns

    def reset(self, cause: str) -> None:
        """Forgets the streaming state (sweeps, camera frames, TSM caches, ego poses)."""
        self.sweeps.reset()
        for history in self.histories.values():
            history.reset()
        self.tf.reset()
        self.stamps.reset()
        self.sensor_clock_ns = None
        self._clouds_seen = 0  # the first cloud after a reset is processed
        self.generation += 1
        with self.stats.lock:
            self.stats.resets[cause] += 1
            if self.pending is not None:
                self.stats.dropped[DROP_RESET] += 1
        self.pending = None
        waiting = self._entry.take_waiting()
        if waiting is not None:
            self._job_done(dropped=DROP_RESET)
        log.info("state reset (%s)", cause)

    def _on_reset(self, received, message, camera, start) -> None:
        self.reset("reset_topic")

    def _on_tf_static(self, received, message, camera, start) -> None:
        self.tf.add(tf_message_to_transforms(message, topic=received.topic), static=True)

    def _on_tf(self, received, message, camera, start) -> None:
        transforms = tf_message_to_transforms(message, topic=received.topic)
        for t in transforms:
            self._check_stamp(received.topic, t.stamp_ns, f"{t.parent}->{t.child}")
        self.tf.add(transforms, static=False)

    def _known_frames(self) -> set[str] | None:
        return self.tf.known_frames if self.tf.static else None

    def _on_camera_info(self, received, message, camera, start) -> None:
        calib = camera_info_to_calibration(
            message, topic=received.topic, known_frames=self._known_frames()
        )
        self._check_stamp(received.topic, stamp_to_ns(message.header.stamp))
        self.calibrations[camera] = calib

    def _on_image(self, received, message, camera, start) -> None:
        decoding: Future | None = self._decoding.pop(id(received), None)
        check_frame(received.topic, message.header.frame_id, self._known_frames())
        calib = self.calibrations.get(camera)
        size = None if calib is None else calib.size
        check_encoded_image(message, topic=received.topic, expected_size=size)  # header only
        # Decoded strictly, and pre-processed, once, here: a frame in the history is always
        # usable, so a bad image is rejected alone and never costs a later cloud.
        image = self._decode(message, received.topic) if decoding is None else decoding.result()
        stamp = stamp_to_ns(message.header.stamp)
        self._check_stamp(received.topic, stamp)
        self.histories[camera].add(stamp, image, received.receive_time_ns)
        self._finalize()

    def _on_cloud(self, received, message, camera, start) -> None:
        cloud = pointcloud2_to_points(
            message,
            topic=received.topic,
            max_points=self.options.max_points,
            nonfinite=self.options.nonfinite,
            known_frames=self._known_frames(),
        )
        lidar_to_map = self.tf.sensor_to_map(cloud.frame_id, cloud.stamp_ns)
        self._check_stamp(received.topic, cloud.stamp_ns)
        if self.tf.static and cloud.frame_id not in self.tf.static:
            raise MissingTransform(f"no static transform {BASE_FRAME} -> {cloud.frame_id}")
        lidar_to_map = self.tf.sensor_to_map(cloud.frame_id, cloud.stamp_ns)  # after a reset
        if cloud.dropped_nonfinite:
            with self.stats.lock:
                self.stats.nonfinite_points += cloud.dropped_nonfinite
        sweep = Sweep(cloud.stamp_ns, cloud.points[:, :4], lidar_to_map)
        earlier = self.sweeps.add(sweep)
        self._finalize(force=True)  # a newer cloud ends the previous one's wait
        process = self.options.process
        if process is not None and not process(cloud.stamp_ns):
            return
        self._clouds_seen += 1
        if (self._clouds_seen - 1) % self.options.process_every:
            with self.stats.lock:
                self.stats.dropped[DROP_POLICY] += 1
            return
        self.pending = _Pending(
            sweep,
            earlier,
            cloud.frame_id,
            received.receive_time_ns,
            time.monotonic(),
            1e3 * (time.perf_counter() - start),
        )
        self._finalize()

    # -- sync ----------------------------------------------------------------------------

    def _finalize(self, force: bool = False) -> None:
        """Sends the pending cloud to the model once every live camera has an image at or
        after its stamp, the camera wait is over (`deploy.sync.cloud_ready`), or `force`."""
        p = self.pending
        if p is None:
            return
        if not force:
            latest = [self.histories[c].latest for c in self.cameras]
            ready = cloud_ready(
                p.stamp_ns,
                [None if f is None else f.stamp_ns for f in latest],
                self.sensor_clock_ns,
                max_camera_delay_ns=int(self.options.max_camera_delay_s * 1e9),
                camera_wait_ns=int(self.options.camera_wait_s * 1e9),
            )
            if not ready:
                return
        self.pending = None
        sync_ms = 1e3 * (time.monotonic() - p.arrival)
        try:
            job = self._build_job(p)
        except MissingTransform as exc:
            self._reject(MISSING_TRANSFORM, f"cloud {p.stamp_ns}: {exc}")
            return
        job.times_ms["receive"] = p.receive_ms
        job.times_ms["sync_wait"] = sync_ms
        with self._idle:
            self._in_flight += 1
        replaced = self._entry.put(job)
        if replaced is not None:
            self._job_done(dropped=DROP_STALE)

    def _build_job(self, p: _Pending) -> Job:
        """Chooses each camera's frame and clip and computes the geometry (cheap; the
        receive thread does it). Decoding and the merge happen on the pre-process stage."""
        n, T = len(self.cameras), self.clip_frames
        max_delay = int(self.options.max_camera_delay_s * 1e9)
        map_to_lidar = np.linalg.inv(p.sweep.sensor_to_map)
        lidar_from_ego = np.linalg.inv(self.tf.sensor_to_ego(p.frame_id))
        intrinsics = np.tile(np.eye(3, dtype=np.float32), (n, 1, 1))
        camera_to_lidar = np.tile(np.eye(4, dtype=np.float32), (n, T, 1, 1))
        time_lag = np.zeros((n, T), np.float32)
        image_aug = np.tile(np.eye(4, dtype=np.float32), (n, 1, 1))
        clips: list = [None] * n
        stale_frames = 0
        for c, name in enumerate(self.cameras):
            calib = self.calibrations.get(name)
            frame_id = self.camera_frames[name]
            if calib is not None:
                intrinsics[c] = calib.intrinsics
                image_aug[c] = self.preprocess.matrix(calib.width, calib.height)
            if frame_id in self.tf.static:
                mount = lidar_from_ego @ self.tf.sensor_to_ego(frame_id)  # static extrinsics
                camera_to_lidar[c, :] = mount  # kept if the camera is masked
                if calib is not None:
                    self._check_crop(name, calib, self.tf.sensor_to_ego(frame_id))
            history = self.histories[name]
            frame = history.nearest(p.stamp_ns, max_delay) if calib is not None else None
            if frame is None or frame_id not in self.tf.static:
                continue
            # the dataset's clip; stream mode puts only its last frame in the batch (and uses
            # the earlier ones if its TSM cache must be rebuilt)
            clip, stale = history.clip(
                frame,
                self.config.data.clip_frames,
                reference_ns=p.stamp_ns,
                max_age_s=self.config.data.max_clip_frame_age,
            )
            try:
                extrinsics = [
                    map_to_lidar @ self.tf.sensor_to_map(frame_id, f.stamp_ns)
                    if self.options.camera_motion
                    else mount
                    for f in clip[-T:]
                ]
            except MissingTransform:
                continue
            for j, (f, extrinsic) in enumerate(zip(clip[-T:], extrinsics)):
                camera_to_lidar[c, j] = extrinsic
                time_lag[c, j] = (p.stamp_ns - f.stamp_ns) * 1e-9
            clips[c] = clip
            stale_frames += stale
        geometry = {
            "intrinsics": intrinsics,
            "camera_to_lidar": camera_to_lidar,
            "camera_time_lag": time_lag,
            "image_aug": image_aug,
            "lidar_to_ego": self.tf.sensor_to_ego(p.frame_id),
            "ego_to_global": self.tf.ego_pose(p.stamp_ns),
        }
        job = Job(p.stamp_ns, p.frame_id, p, geometry, clips, self.generation)
        job.stale_clip_frames = stale_frames
        return job

    def _check_crop(self, camera: str, calib: CameraCalibration, camera_to_ego: np.ndarray) -> None:
        """The dataset's horizon check (`camera_crop_problems`) on a camera's CameraInfo and
        static mount, once per calibration; a crop that keeps too little above the horizon is
        logged once per camera and counted in `crop_below_horizon` (the node runs on)."""
        key = b"".join(
            (np.asarray(calib.size).tobytes(), calib.intrinsics.tobytes(), camera_to_ego.tobytes())
        )
        if self.stats.crop_below_horizon.get(camera) or self._crop_checked.get(camera) == key:
            return
        self._crop_checked[camera] = key
        aug = self.preprocess.aug
        error, warning = camera_crop_problems(
            aug,
            calib.width,
            calib.height,
            np.asarray(calib.intrinsics, np.float64)[None],
            np.asarray(camera_to_ego, np.float64)[None],
            [f"its CameraInfo and {TF_STATIC_TOPIC} mount ({calib.frame_id})"],
            where=f"node: {camera}",
        )
        problem = error or warning
        if problem:
            with self.stats.lock:
                self.stats.crop_below_horizon[camera] += 1
            log.warning("%s", problem)

    # -- model stages --------------------------------------------------------------------

    def _job_done(self, job: Job | None = None, dropped: str | None = None) -> None:
        if job is not None and job.admitted:
            self._admission.release()
        if dropped is not None:
            with self.stats.lock:
                self.stats.dropped[dropped] += 1
        with self._idle:
            self._in_flight -= 1
            self._idle.notify_all()

    def _stage_loop(self, source: queue.Queue | None, sink: queue.Queue | None, work) -> None:
        with torch.inference_mode():
            while not self._stop.is_set():
                if source is None:
                    # at most `max_in_flight` clouds inside the stages: more would only wait
                    # in the queues between them (latency), the entry drops them instead
                    if not self._admission.acquire(timeout=0.05):
                        continue
                    job = self._entry.get(0.05)
                    if job is None:
                        self._admission.release()
                        continue
                    job.admitted = True
                else:
                    try:
                        job = source.get(timeout=0.05)
                    except queue.Empty:
                        continue
                if job is None or not self._work(job, work) or sink is None:
                    continue
                while not self._stop.is_set():
                    try:
                        sink.put(job, timeout=0.05)
                        break
                    except queue.Full:
                        continue

    def _work(self, job: Job, work) -> bool:
        """Runs one stage on `job`; a failure drops the cloud (counted), never the node."""
        try:
            work(job)
        except Exception:
            log.exception("model stage failed on cloud %d", job.stamp_ns)
            self._job_done(job, dropped="stage_error")
            return False
        return True

    def run_entry(self) -> bool:
        """Runs the cloud waiting at the model's entry, if any, through every stage on the
        calling thread, as the model thread would: for stepping a node that was not started
        (tests, offline tools) without threads or wall-clock waits. Returns whether one ran."""
        job = self._entry.take_waiting()
        if job is None:
            return False
        with torch.inference_mode():
            self._work(job, self._run_all)
        return True

    def _timed(self, job: Job, stage: str, fn, *args):
        start = time.perf_counter()
        out = fn(*args)
        job.times_ms[stage] = 1e3 * (time.perf_counter() - start)
        return out

    def _preprocess(self, job: Job) -> None:
        p = job.pending
        points, job.stale_sweeps = merge_earlier(p.sweep, p.earlier, self.sweeps.max_age_s)
        with self.stats.lock:
            self.stats.stale_sweeps += job.stale_sweeps
            self.stats.stale_clip_frames += job.stale_clip_frames
        if job.stale_sweeps:
            self._stale_sweeps_found(p, job.stale_sweeps)
        points = points_in_range(points, self.config.data.point_range)
        n, T = len(self.cameras), self.clip_frames
        W, H = self.preprocess.size
        images = np.zeros((n, T, 3, H, W), np.uint8)
        mask = np.zeros(n, bool)
        job.frames = [None] * n
        for c, clip in enumerate(job.clips):
            if clip is None:
                continue
            try:
                for j, f in enumerate(clip[-T:]):
                    images[c, j] = f.image  # decoded and pre-processed at arrival
            except Exception as exc:  # one camera's failure masks that camera only
                self._camera_failed(job, c, f"pre-process: {exc!r}")
                continue
            mask[c] = True
            job.frames[c] = clip[-1]
        job.batch = make_batch(
            token=str(job.stamp_ns),
            points=points,
            images=images,
            camera_names=self.cameras,
            camera_mask=mask,
            **job.geometry,
        )
        job.masked = tuple(name for name, m in zip(self.cameras, mask) if not m)

    def _stale_sweeps_found(self, p: _Pending, skipped: int) -> None:
        """Logs (rate-limited) that a cloud merged fewer sweeps than `data.sweeps`, naming
        the settings when they, not a gap in the stream, are the cause."""
        data = self.config.data
        stamps = [old.stamp_ns for old in p.earlier] + [p.stamp_ns]
        period = float(np.median(np.diff(stamps))) * 1e-9 / self.sweeps.stride
        cause = sweep_reach_problem(data.sweeps, data.sweep_stride, period, data.max_sweep_age)
        self._stale_sweep_clouds += 1  # the pre-process stage's own count
        n = self._stale_sweep_clouds
        if n <= 10 or n % 100 == 0:
            log.warning(
                "cloud %d: %d earlier sweep(s) older than data.max_sweep_age=%s s not merged "
                "(%d clouds so far): %s",
                p.stamp_ns,
                skipped,
                data.max_sweep_age,
                n,
                cause or "a gap in the LiDAR stream",
            )

    def _run_preprocess(self, job: Job) -> None:
        self._timed(job, "preprocess", self._preprocess, job)

    def _run_camera(self, job: Job) -> None:
        if self.options.temporal == "clip":
            job.camera_bev = self._timed(job, "camera", self.stages.camera_clip, job.batch)
            return
        if job.generation != self._camera_generation:
            self._camera_state = CameraStreamState.fresh(len(self.cameras))
            self._camera_generation = job.generation
        state = self._camera_state
        gaps, passes = state.gaps, state.passes
        job.camera_bev, job.batch, failed = self._timed(
            job, "camera", self.stages.camera_stream, job.batch, job.clips, state
        )
        for c, problem in failed.items():
            self._camera_failed(job, c, f"camera encoder: {problem}")
        if failed:
            job.masked = tuple(n for n, m in zip(self.cameras, job.batch.camera_mask[0]) if not m)
        job.tsm_gaps = state.gaps - gaps
        with self.stats.lock:
            self.stats.tsm_gaps += state.gaps - gaps
            self.stats.backbone_passes += state.passes - passes

    def _camera_failed(self, job: Job, c: int, problem: str) -> None:
        """Masks camera `c` of `job` (its frame could not be used) and counts it."""
        name = self.cameras[c]
        job.clips[c] = None
        if job.frames:
            job.frames[c] = None
        with self.stats.lock:
            self.stats.camera_errors[name] += 1
            n = self.stats.camera_errors[name]
        if n <= 10 or n % 100 == 0:
            log.warning(
                "cloud %d: camera %s masked (%d so far): %s", job.stamp_ns, name, n, problem
            )

    def _run_lidar(self, job: Job) -> None:
        job.lidar_bev, voxelize_s = self._timed(job, "lidar", self.stages.lidar, job.batch)
        job.times_ms["voxelize"] = 1e3 * voxelize_s

    def _run_fuse_head(self, job: Job) -> None:
        job.detections = self._timed(
            job, "fuse_head", self.stages.fuse_head, job.batch, job.camera_bev, job.lidar_bev
        )

    def _run_publish(self, job: Job) -> None:
        start = time.perf_counter()
        self._publish(job)
        job.times_ms["publish"] = 1e3 * (time.perf_counter() - start)
        now = time.time_ns()
        job.times_ms["receive_to_publish"] = (now - job.receive_ns) / 1e6
        if abs(now - job.stamp_ns) < STAMP_CLOCK_WINDOW_NS:  # live sensors, not an old bag
            job.times_ms["stamp_to_publish"] = (now - job.stamp_ns) / 1e6
        for stage, ms in job.times_ms.items():
            self.stats.add_latency(stage, ms)
        with self.stats.lock:
            self.stats.processed += 1
            if job.degraded:
                self.stats.degraded += 1
                self.stats.masked.update(job.masked)
        if self.on_result is not None:
            self.on_result(job)
        job.camera_bev = job.lidar_bev = None
        job.pending = job.clips = None  # keep no raw sensor data alive
        self._job_done(job)

    def _run_all(self, job: Job) -> None:
        self._run_preprocess(job)
        self._run_camera(job)
        self._run_lidar(job)
        self._run_fuse_head(job)
        self._run_publish(job)

    # -- output --------------------------------------------------------------------------

    def _send(self, topic: str, message: Any) -> None:
        cdr = serialize(message)
        self._publishers[topic].publish_cdr(cdr)
        if self.recorder is not None:
            self.recorder.write(topic, message.__msgtype__, cdr, time.time_ns())

    def _publish(self, job: Job) -> None:
        dets, frame, stamp = job.detections, job.frame_id, job.stamp_ns
        self._send(
            OBJECTS_TOPIC, detections_to_detected_objects(dets, frame_id=frame, stamp_ns=stamp)
        )
        self._send(
            DETECTIONS_TOPIC, detections_to_detection3d_array(dets, frame_id=frame, stamp_ns=stamp)
        )
        self._send(MARKERS_TOPIC, detections_to_marker_array(dets, frame_id=frame, stamp_ns=stamp))
        self._send(STATUS_TOPIC, frame_status(job))

    def publish_diagnostics(self) -> dict[str, Any]:
        """Publishes (and returns) the aggregate diagnostics; prints them if asked."""
        summary = self.stats.summary()
        self._send(
            DIAGNOSTICS_TOPIC, node_status(summary, self.lidar_topic, self.sensor_clock_ns or 0)
        )
        if self.options.print_diagnostics:
            print(summary_line(summary), flush=True)
        return summary


# The node's input topics, one row per kind (the camera kinds have one topic per camera).
TOPIC_KINDS: dict[str, TopicKind] = {
    "tf_static": TopicKind(
        TF_MESSAGE, 1, 0, PerceptionNode._on_tf_static, reliable=True, transient_local=True
    ),
    "reset": TopicKind(EMPTY, 5, 1, PerceptionNode._on_reset, reliable=True),
    "tf": TopicKind(TF_MESSAGE, 200, 2, PerceptionNode._on_tf),
    "camera_info": TopicKind(CAMERA_INFO, 24, 3, PerceptionNode._on_camera_info, per_camera=True),
    "image": TopicKind(COMPRESSED_IMAGE, 24, 4, PerceptionNode._on_image, per_camera=True),
    "cloud": TopicKind(POINTCLOUD2, 20, 5, PerceptionNode._on_cloud),
}  # fmt: skip  (msgtype, queue depth, order among equal stamps, handler)


def replay_into_node(
    bag: str | Path,
    node: PerceptionNode,
    transport: Transport,
    *,
    topics: Sequence[str] | None = None,
    timeout_s: float = 60.0,
    limit: int | None = None,
) -> int:
    """Feeds a bag's messages to a running node in bag order, waiting after each until the node
    has handled it and finished every cloud it sent to the model: deterministic (no drops, no
    wall-clock effects if the node's `wall_timeout` is off). Returns the messages fed."""
    from .bag import bag_topics, replay_bag

    chosen = [t for t in (topics or sorted(bag_topics(bag))) if t in node.inputs]
    fed = [node.handled, 0]  # handled count to wait for, messages published

    def wait(topic: str) -> None:
        fed[0] += 1
        fed[1] += 1
        if not node.wait_idle(fed[0], timeout_s):
            raise TimeoutError(
                f"the node did not finish message {fed[1] - 1} ({topic}) in {timeout_s} s"
            )

    replay_bag(
        bag,
        transport,
        rate=None,
        topics=chosen,
        should_stop=lambda: limit is not None and fed[1] >= limit,
        after_publish=wait,
    )
    if not node.flush(timeout_s):
        raise TimeoutError(f"the node did not finish its last cloud in {timeout_s} s")
    return fed[0]


def load_node_model(config: ExperimentConfig, checkpoint: str | Path | None) -> nn.Module:
    """The config's model with the checkpoint's weights (random init when None)."""
    if checkpoint is None:
        from perception.models.builder import build_model

        torch.manual_seed(config.seed)
        return build_model(config).eval()
    from perception.models.loading import load_model

    model, _ = load_model(checkpoint, config)
    return model
