"""Write one nuScenes scene as a ROS 2 bag (rosbag2, mcap storage by default).

    python tools/nusc_to_bag.py --root data/synth --scene scene-0061 --out bags/scene-0061

LiDAR at 20 Hz on `/lidar/top` (every sweep, frame `lidar_top`), six compressed camera streams
at 12 Hz (`/cam_front/image/compressed`, ..., the original JPEG bytes) with their
`/cam_*/camera_info`, ego poses on `/tf` (map -> base_link) and the sensor mounts on
`/tf_static` (base_link -> sensor frames). Stamps are the nuScenes timestamps. Works on any
nuScenes dataroot, real or synthetic (reads the JSON tables directly).
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True, help="nuScenes dataroot")
    parser.add_argument("--scene", required=True, help="scene name, e.g. scene-0061")
    parser.add_argument("--out", required=True, help="bag directory to create (must not exist)")
    parser.add_argument("--version", default="v1.0-mini")
    parser.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    args = parser.parse_args(argv)
    from perception.deploy.bag import write_nuscenes_bag  # after parsing: --help needs no torch

    start = time.perf_counter()
    try:
        counts = write_nuscenes_bag(
            args.root, args.scene, args.out, version=args.version, storage=args.storage
        )
    except (FileNotFoundError, ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for topic, n in sorted(counts.items()):
        print(f"{topic:40s} {n:6d}")
    total = sum(counts.values())
    print(f"wrote {total} messages to {args.out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
