"""Publish a rosbag2 on DDS in real time, ROS 2-compatible (rmw_cyclonedds sees the topics).

    python tools/replay.py bags/scene-0061 --rate 1.0 --loop --topics /lidar/top /tf

Header stamps are the bag's (a loop jumps back to the bag's start); `--rate` scales the
wall-clock pacing. DDS stays on this machine (loopback: its sockets bound to `lo`; see
docs/dds.md) unless `--dds-config env`, which uses CYCLONEDDS_URI or Cyclone's defaults.
Prints messages per topic at the end (and per loop). A DDS configuration that cannot be
applied or a failed write is one `error:` line (exit 2 / 1).
"""

from __future__ import annotations

import argparse
import signal
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("bag", help="rosbag2 directory")
    parser.add_argument("--rate", type=float, default=1.0, help="playback speed factor")
    parser.add_argument("--loop", action="store_true", help="start over at the end")
    parser.add_argument("--max-loops", type=int, default=None, help="stop after N loops")
    parser.add_argument("--topics", nargs="+", default=None, help="only these topics")
    parser.add_argument("--domain-id", type=int, default=None, help="default: ROS_DOMAIN_ID or 0")
    parser.add_argument(
        "--dds-config",
        choices=("loopback", "env"),
        default="loopback",
        help="loopback: this machine only; env: CYCLONEDDS_URI / Cyclone's defaults",
    )
    parser.add_argument(
        "--wait-subscribers",
        type=float,
        default=2.0,
        help="seconds to wait for subscribers to match before playing",
    )
    args = parser.parse_args(argv)
    # After parsing: --help answers without importing torch.
    from cyclonedds.core import DDSException

    from perception.deploy.bag import replay_bag
    from perception.deploy.transport import LOOPBACK, DdsTransport

    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(True))
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))

    def report(loop: int, stats) -> None:
        counts = " ".join(f"{t}={n}" for t, n in sorted(stats.counts.items()))
        print(f"loop {loop}: {counts}", flush=True)

    config = LOOPBACK if args.dds_config == "loopback" else None
    start = time.perf_counter()
    try:
        transport = DdsTransport(args.domain_id, config=config)
    except RuntimeError as exc:  # the DDS configuration cannot be applied (says why)
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with transport:
        try:
            stats = replay_bag(
                args.bag,
                transport,
                rate=args.rate,
                loop=args.loop,
                max_loops=args.max_loops,
                topics=args.topics,
                wait_for_subscribers_s=args.wait_subscribers,
                should_stop=lambda: bool(stop),
                on_loop=report,
            )
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except DDSException as exc:  # names the topic
            print(f"error: {exc}", file=sys.stderr)
            return 1
    for topic, n in sorted(stats.counts.items()):
        print(f"{topic:40s} {n:6d}")
    print(
        f"published {sum(stats.counts.values())} messages in {time.perf_counter() - start:.1f} s "
        f"({stats.loops} loops, max lag {stats.max_lag_ms:.1f} ms)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
