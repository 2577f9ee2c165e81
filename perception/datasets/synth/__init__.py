"""Synthetic nuScenes-format world generator: the project's embedded default dataset.

`generate_world(out_dir, ...)` writes scenes (roads, traffic, pedestrians, construction zones,
buildings) with ray-cast LiDAR sweeps and rendered camera images, in the exact on-disk format
that nuscenes-devkit loads and evaluates. Modules: `road` and `layout` (the world), `sensors`
(rig and timing), `lidar` (ray casting), `camera` (rendering), `writer` (tables and files).
"""

from perception.datasets.synth.writer import (
    SceneWorld,
    WorldSummary,
    generate_world,
    make_token,
    scene_names,
    scene_truth,
)

__all__ = [
    "SceneWorld",
    "WorldSummary",
    "generate_world",
    "make_token",
    "scene_names",
    "scene_truth",
]
