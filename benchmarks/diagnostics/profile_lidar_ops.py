"""Where the LiDAR ops spend their time: a torch.profiler table (top kernels and ops by self
device time) for point->voxel (forward + backward), voxel->point (forward + backward), the
sparse-conv stack (forward, and forward + backward), on the scenes of the point<->voxel and
sparse-conv benchmarks, and the tiny model's decode + NMS (random weights, as `benchmark.py model`).

    PYTHONPATH=. python benchmarks/diagnostics/profile_lidar_ops.py [--device cuda] [--rows 15]

Diagnostic only: the figures BENCHMARKS.md quotes come from ``tools/benchmark.py``.
"""

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from perception.benchmarks.point_voxel_ops import CHANNELS, point_coords
from perception.benchmarks.sparse_ops import build_stack, lidar_like_voxels
from perception.config.loader import load_config
from perception.datasets.random_batch import random_batch
from perception.models.builder import build_model
from perception.ops.point_voxel import point_to_voxel, voxel_to_point
from perception.ops.sparse import SparseTensor


def _maps(model, batch):
    """The fuser's inputs (camera and LiDAR BEV maps, presence) for `batch`."""
    cam = model.camera(batch)[0] if model.camera is not None else None
    lidar = model.lidar(batch.points, 1, batch.lidar_mask) if model.lidar is not None else None
    return [m for m in (cam, lidar) if m is not None], model._presence(batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rows", type=int, default=15)
    args = parser.parse_args()
    dev = args.device
    coords = point_coords(300_000, dev)
    feats = torch.randn(coords.shape[0], CHANNELS, device=dev)

    def p2v():
        leaf = feats.detach().requires_grad_(True)
        point_to_voxel(leaf, coords, 1).feats.square().mean().backward()

    voxels = point_to_voxel(feats, coords, 1)

    def v2p():
        leaf = torch.randn(len(voxels), CHANNELS, device=dev, requires_grad=True)
        voxel_to_point(voxels.replace_feats(leaf), coords).square().mean().backward()

    vcoords, _ = lidar_like_voxels(120_000)
    vcoords = vcoords.to(dev)
    vfeats = torch.randn(vcoords.shape[0], 5, device=dev)
    stack = build_stack().to(dev)

    def conv():
        with torch.no_grad():
            stack(SparseTensor(vfeats, vcoords))

    def conv_train():
        stack.zero_grad()
        stack(SparseTensor(vfeats, vcoords)).feats.square().mean().backward()

    config = load_config("configs/bevfusion_tiny.yaml")
    torch.manual_seed(0)
    model = build_model(config).eval().to(dev)
    batch = random_batch(config, batch_size=1, points_per_sample=30000).to(dev)
    with torch.no_grad():
        outputs = model.head(model.decoder(model.fuser(*_maps(model, batch))))

    def decode():
        with torch.no_grad():
            model.head.predict(outputs, batch)

    key = "self_cuda_time_total" if dev.startswith("cuda") else "self_cpu_time_total"
    activities = [ProfilerActivity.CPU]
    if dev.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    for name, fn in (
        ("point_to_voxel fwd+bwd", p2v),
        ("voxel_to_point fwd+bwd", v2p),
        ("sparse conv stack fwd", conv),
        ("sparse conv stack fwd+bwd", conv_train),
        ("tiny model decode + NMS (random weights)", decode),
    ):
        for _ in range(2):  # warm-up: triton compilation, caches
            fn()
        if dev.startswith("cuda"):
            torch.cuda.synchronize()
        with profile(activities=activities) as prof:
            for _ in range(3):
                fn()
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
        print(f"== {name} (3 calls)")
        print(prof.key_averages().table(sort_by=key, row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
