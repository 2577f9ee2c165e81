"""Run the detector as a real-time ROS 2 node (Cyclone DDS, or in-process with a bag).

    python tools/node.py --config configs/bevfusion_tiny.yaml --checkpoint work/ \\
        [--transport dds|inprocess] [--bag bags/scene-0061 --rate 1 --loop] \\
        [--record run_out] [--max-camera-delay 0.12] [--sequential] [--duration 60]

Subscribes to `/lidar/top`, `/<cam>/image/compressed`, `/<cam>/camera_info`, `/tf`, `/tf_static`
and `/perception/reset`; publishes `/perception/objects` (Autoware DetectedObjects),
`/perception/detections` (vision_msgs Detection3DArray), `/perception/markers` (MarkerArray),
`/perception/status` (a DiagnosticArray per cloud, WARN when cameras were masked) and
`/perception/diagnostics` (DiagnosticArray: counts, drops, latency p50/p99), printed every
`--diagnostics-period` seconds too. See `perception/deploy/node.py` for the sync, state and drop
rules.

`--transport inprocess` needs `--bag` (the bag is replayed inside the process); with `dds` a
`--bag` is replayed on DDS by this process, else the node waits for publishers (e.g.
`tools/replay.py` or a ROS 2 system on rmw_cyclonedds). `--record DIR` writes every input and
output to a rosbag2 with MCAP storage (open `DIR/DIR.mcap` in Foxglove). `--foxglove PORT`
serves them live instead (or too): open Foxglove, "Open connection", `ws://127.0.0.1:PORT`
(loopback unless `--foxglove-host` says otherwise); no ROS install needed.

`--precision int8` (or `mixed`) runs the decoder and head as the checkpoint's quantized ONNX
graph on onnxruntime (`tools/export.py --checkpoint W --out W/onnx`, then `tools/quantize.py
W/onnx --checkpoint W`); the graph must come from the same weights (`quantize.json`), else the
node refuses to start. `--precision bf16` runs them under bfloat16 autocast (refused where the
CPU has no bfloat16 kernels). The diagnostics name the precision.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from pathlib import Path

from perception.cli import add_precision_options


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="experiment config (YAML)")
    parser.add_argument(
        "--checkpoint", help="checkpoint dir or work dir; omitted: random init (a warning)"
    )
    parser.add_argument("--transport", choices=("dds", "inprocess"), default="dds")
    parser.add_argument("--bag", help="rosbag2 to replay into the node")
    parser.add_argument("--rate", type=float, default=1.0, help="replay speed factor")
    parser.add_argument("--loop", action="store_true", help="replay the bag in a loop")
    parser.add_argument("--record", help="rosbag2 (MCAP) directory to write inputs and outputs")
    parser.add_argument("--max-camera-delay", type=float, default=0.12, help="seconds")
    parser.add_argument(
        "--camera-wait", type=float, default=0.05, help="longest wait for a live camera (s)"
    )
    parser.add_argument("--temporal", choices=("stream", "clip"), default="stream")
    parser.add_argument(
        "--static-camera-extrinsics",
        action="store_true",
        help="ignore ego motion between image and cloud stamps (keeps the BEV pooling plan "
        "cached; default: compensate it, as the dataset does)",
    )
    parser.add_argument("--sequential", action="store_true", help="no stage pipelining")
    parser.add_argument(
        "--reduced-decode",
        action="store_true",
        help="decode JPEGs at the smallest DCT scale that keeps the model's input resolution "
        "(faster; not bit-equal to the dataset's full decode)",
    )
    parser.add_argument("--nonfinite", choices=("drop", "reject"), default="drop")
    parser.add_argument(
        "--max-points", type=int, default=400_000, help="reject larger clouds (too_large)"
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after N seconds")
    parser.add_argument(
        "--process-every",
        type=int,
        default=1,
        metavar="N",
        help="run the model on one received cloud in N (2: a 20 Hz LiDAR at 10 Hz); the others "
        "are merged as sweeps and counted as dropped (policy)",
    )
    parser.add_argument("--diagnostics-period", type=float, default=5.0)
    add_precision_options(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--domain-id", type=int, default=None)
    parser.add_argument("--dds-config", choices=("loopback", "env"), default="loopback")
    parser.add_argument("--summary", help="write the final statistics as JSON here")
    parser.add_argument(
        "--foxglove",
        type=int,
        metavar="PORT",
        help="serve the node's inputs and outputs live over Foxglove's WebSocket protocol "
        "(open Foxglove, connect to ws://HOST:PORT; needs pip install -e '.[live]')",
    )
    parser.add_argument(
        "--foxglove-host",
        default="127.0.0.1",
        help="interface the live view listens on (default loopback; 0.0.0.0 serves others)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.transport == "inprocess" and not args.bag:
        print("error: --transport inprocess needs --bag (nothing else publishes)", file=sys.stderr)
        return 2
    if args.process_every < 1:
        print(f"error: --process-every must be >= 1, got {args.process_every}", file=sys.stderr)
        return 2
    if args.bag and not Path(args.bag).exists():
        print(f"error: bag not found: {args.bag}", file=sys.stderr)
        return 2

    from perception.checkpoint import CheckpointError
    from perception.config import ConfigError, load_config
    from perception.deploy.bag import replay_bag
    from perception.deploy.foxglove import Tee
    from perception.deploy.node import (
        NodeOptions,
        PerceptionNode,
        Recorder,
        load_node_model,
        summary_json,
    )
    from perception.deploy.quantize import QuantizationError, use_precision
    from perception.runtime import set_cpu_threads

    set_cpu_threads(args.threads or None)  # torch's and numba's threads
    try:
        config = load_config(args.config)
    except (ConfigError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.checkpoint is None:
        print("warning: no --checkpoint: the model is randomly initialized", file=sys.stderr)
    try:
        model = load_node_model(config, args.checkpoint)
        use_precision(
            model,
            config,
            args.precision,
            checkpoint=args.checkpoint,
            onnx_dir=args.onnx_dir,
            threads=args.threads or 1,
            fold_bn=args.fold_bn,
        )
    except (CheckpointError, FileNotFoundError, QuantizationError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    if args.transport == "dds":
        from perception.deploy.transport import LOOPBACK, DdsTransport

        try:
            transport = DdsTransport(
                args.domain_id, config=LOOPBACK if args.dds_config == "loopback" else None
            )
        except RuntimeError as exc:  # the DDS configuration cannot be applied (says why)
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        from perception.deploy.transport import InProcessTransport

        transport = InProcessTransport()
    options = NodeOptions(
        max_camera_delay_s=args.max_camera_delay,
        camera_wait_s=args.camera_wait,
        temporal=args.temporal,
        camera_motion=not args.static_camera_extrinsics,
        pipelined=not args.sequential,
        reduced_decode=args.reduced_decode,
        process_every=args.process_every,
        nonfinite=args.nonfinite,
        max_points=args.max_points,
        diagnostics_period_s=args.diagnostics_period,
        print_diagnostics=True,
    )
    recorder = Recorder(args.record) if args.record else None
    view = None
    if args.foxglove is not None:
        from perception.deploy.foxglove import FoxgloveUnavailable, FoxgloveView

        try:
            view = FoxgloveView(host=args.foxglove_host, port=args.foxglove)
        except (FoxgloveUnavailable, RuntimeError, OSError) as exc:
            print(f"error: --foxglove {args.foxglove}: {exc}", file=sys.stderr)
            return 2
        print(f"live view: open Foxglove and connect to {view.url}", flush=True)
    sinks = Tee(recorder, view) if view is not None else recorder
    node = PerceptionNode(model, config, transport, options, recorder=sinks)

    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    replay_done = threading.Event()

    def replay() -> None:
        try:
            replay_bag(
                args.bag,
                transport,
                rate=args.rate,
                loop=args.loop,
                should_stop=stop.is_set,
                wait_for_subscribers_s=2.0 if args.transport == "dds" else 0.0,
            )
        finally:
            replay_done.set()

    start = time.monotonic()
    print(
        f"node: {config.name}, {options.temporal} TSM, "
        f"{'pipelined' if options.pipelined else 'sequential'}, transport {args.transport}, "
        f"decoder + head {model.precision}"
        + (f", {model.folded_batchnorms} BatchNorms folded" if args.fold_bn else ""),
        flush=True,
    )
    with node:
        if args.bag:
            threading.Thread(target=replay, name="replay", daemon=True).start()
        while not stop.is_set():
            if args.duration is not None and time.monotonic() - start >= args.duration:
                break
            if replay_done.is_set():
                time.sleep(0.2)  # let the last messages arrive
                node.flush()
                break
            time.sleep(0.05)
        stop.set()
        node.publish_diagnostics()
    if recorder is not None:
        recorder.close()
        print(f"recorded {recorder.count} messages to {args.record}")
    if view is not None:
        view.close()
        print(f"live view: forwarded {view.count} messages ({view.bytes / 1e6:.1f} MB), "
              f"{view.errors} not forwarded")  # fmt: skip
    text = summary_json(node.stats)
    if args.summary:
        Path(args.summary).write_text(text)
        print(f"wrote {args.summary}")
    summary = json.loads(text)
    print(
        f"processed {summary['processed']} clouds in {time.monotonic() - start:.1f} s, "
        f"dropped {summary['dropped']}, rejected {summary['rejected']}"
    )
    transport.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
