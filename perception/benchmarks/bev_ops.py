"""BEV-op benchmark: BEV pooling (materialized and fused), voxelization, BEV NMS.

Every group times its rows in one run on the same inputs:

* ``bev_pool``: BEVFusion's camera shape, 6 cameras x 118 depth bins (1-60 m) x 32 x 88
  feature pixels (~2M frustum points), 80 channels, a 1 x 360 x 360 grid of 0.3 m over
  +-54 m, from synthetic camera poses. Rows: the LSS cumsum trick (baseline), ``index_add_``,
  ours with a cached plan, and the memory floor (one read of the ``[N, 80]`` features).
* ``bev_pool_plan_build_frustum`` / ``..._scattered`` / ``bev_pool_depth_plan_build``: the
  pool without a cached plan (in training each sample's augmentation moves the frustum): plan
  build + pool against ``index_add_`` (see :func:`_plan_build_rows`).
* ``bev_pool_fused_fwd`` / ``bev_pool_fused_fwd_bwd``: from ``depth`` and ``context``: the
  cumsum trick on materialized ``depth x context`` features (baseline) vs
  :func:`bev_pool_depth`.
* ``voxelize``: 300k LiDAR-like points (10 sweeps), 0.075 x 0.075 x 0.2 m voxels, 10 points a
  voxel, 120k voxels: spconv's ``PointToVoxel`` on CPU (baseline, when importable) vs ours
  (the default path, numba on CPU and triton's voxel keys on CUDA, and the vectorized torch
  path), timed in turns (five rounds of five calls each,
  :func:`~perception.benchmarks.common.time_interleaved`).
* ``nms``: ~1000 crowded boxes: shapely brute force (baseline) vs ours; circle NMS too.

``quick=True`` shrinks every input for a CI smoke run (a few seconds).
"""

from __future__ import annotations

import math
import time
from functools import partial

import torch

from perception.benchmarks.common import BenchRow, compare, time_interleaved, time_ms
from perception.ops._impl import ImplTrace
from perception.ops.bev_pool import bev_pool, bev_pool_depth, build_bev_pool_plan
from perception.ops.bev_pool_reference import bev_pool_cumsum, bev_pool_index_add
from perception.ops.nms import circle_nms, nms_bev
from perception.ops.nms_reference import circle_nms_reference, nms_bev_reference
from perception.ops.voxelize import voxelize

BEV_RANGE = 54.0  # metres, +-
BEV_CELL = 0.3  # metres
VOXEL_SIZE = (0.075, 0.075, 0.2)
PC_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)


def frustum_coords(
    num_cameras: int = 6,
    depth_bins: int = 118,
    height: int = 32,
    width: int = 88,
    bev_range: float = BEV_RANGE,
    cell: float = BEV_CELL,
    batch_size: int = 1,
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Cell coordinates of the frustum points of ``num_cameras`` cameras per sample.

    Cameras 1.6 m above the ego origin, evenly spread in yaw, a 704 x 256 image seen as a
    feature map downsampled 8x (``width x height`` pixels), fx = fy = 700 px, depth bins
    evenly spaced in [1, 60) m. Ego frame: x forward, y left, z up; the grid covers
    ``+-bev_range`` m in x and y with ``cell`` m cells and z in [-10, 10) m as one cell.

    Returns:
        ``coords [batch_size * num_cameras, D, H, W, 4]`` int64 ``(batch, z, x, y)`` and the
        grid ``(1, X, Y)``.
    """
    depth = torch.linspace(1.0, 60.0, depth_bins + 1)[:-1]
    stride_u, stride_v = 704.0 / width, 256.0 / height
    u = (torch.arange(width) + 0.5) * stride_u
    v = (torch.arange(height) + 0.5) * stride_v
    d, vv, uu = torch.meshgrid(depth, v, u, indexing="ij")  # [D, H, W]
    right = (uu - 352.0) / 700.0 * d  # camera frame: x right, y down, z forward
    down = (vv - 128.0) / 700.0 * d
    per_camera = []
    for k in range(num_cameras):
        yaw = 2 * math.pi * k / num_cameras
        fwd = torch.tensor([math.cos(yaw), math.sin(yaw), 0.0])
        rgt = torch.tensor([math.sin(yaw), -math.cos(yaw), 0.0])
        points = (
            right[..., None] * rgt + d[..., None] * fwd + torch.tensor([0.0, 0.0, 1.6])
        )  # [D, H, W, 3] ego frame, metres
        points[..., 2] -= down
        per_camera.append(points)
    points = torch.stack(per_camera)  # [Ncam, D, H, W, 3]
    n_xy = round(2 * bev_range / cell)
    ix = torch.floor((points[..., 0] + bev_range) / cell).long()
    iy = torch.floor((points[..., 1] + bev_range) / cell).long()
    iz = torch.floor((points[..., 2] + 10.0) / 20.0).long()
    coords = torch.stack([torch.zeros_like(ix), iz, ix, iy], dim=-1)
    coords = coords.repeat(batch_size, 1, 1, 1, 1)
    coords[..., 0] = torch.arange(batch_size).repeat_interleave(num_cameras)[:, None, None, None]
    return coords, (1, n_xy, n_xy)


def lidar_sweeps(num_points: int = 300_000, seed: int = 0) -> torch.Tensor:
    """``[num_points, 5]`` float32 ``(x, y, z, intensity, time_lag)`` LiDAR-like points.

    A 32-beam spinning LiDAR (elevation -30..10 deg, 1084 azimuth steps) 1.8 m above flat
    ground with walls 20-50 m away per 15-degree sector; sweeps 0.5 m apart along x, 0.05 s
    apart, stacked (as nuScenes' 10 sweeps) until ``num_points`` points; metres, ego frame.
    """
    g = torch.Generator().manual_seed(seed)
    elev = torch.linspace(-30.0, 10.0, 32) * math.pi / 180
    azim = torch.arange(1084) * (2 * math.pi / 1084)
    wall = 20 + 30 * torch.rand(24, generator=g)
    sweeps, total, sweep = [], 0, 0
    while total < num_points:
        e, a = torch.meshgrid(elev, azim, indexing="ij")
        e = e + 0.002 * torch.randn(e.shape, generator=g)
        ground = torch.where(e < 0, 1.8 / torch.tan(-e).clamp(min=1e-6), torch.full(e.shape, 1e9))
        sector = (a / (2 * math.pi) * 24).long().clamp(max=23)
        rng = torch.minimum(ground, wall[sector] / torch.cos(e))
        rng = rng + 0.02 * torch.randn(rng.shape, generator=g)
        x = rng * torch.cos(e) * torch.cos(a) - 0.5 * sweep
        y = rng * torch.cos(e) * torch.sin(a)
        z = rng * torch.sin(e)
        intensity = torch.rand(e.shape, generator=g)
        lag = torch.full(e.shape, 0.05 * sweep)
        sweeps.append(torch.stack([x, y, z, intensity, lag], dim=-1).reshape(-1, 5))
        total += sweeps[-1].shape[0]
        sweep += 1
    return torch.cat(sweeps)[:num_points].contiguous()


def crowded_boxes(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``[n, 5]`` ``(x, y, w, l, yaw)`` detections clustered around ~n/8 objects, scores."""
    g = torch.Generator().manual_seed(seed)
    num_objects = max(1, n // 8)
    centres = torch.rand(num_objects, 2, generator=g) * 100 - 50
    which = torch.randint(0, num_objects, (n,), generator=g)
    xy = centres[which] + 0.5 * torch.randn(n, 2, generator=g)
    wl = torch.tensor([1.9, 4.6]) * (1 + 0.1 * torch.randn(n, 2, generator=g))
    yaw = (torch.rand(num_objects, generator=g) * 2 * math.pi)[which] + 0.1 * torch.randn(
        n, generator=g
    )
    return torch.cat([xy, wl, yaw[:, None]], dim=1), torch.rand(n, generator=g)


def _bev_pool_rows(quick: bool, device: str) -> list[BenchRow]:
    if quick:
        ncam, d, h, w, c = 2, 16, 8, 22, 16
    else:
        ncam, d, h, w, c = 6, 118, 32, 88, 80
    coords, grid = frustum_coords(ncam, d, h, w)
    coords = coords.to(device)
    flat = coords.reshape(-1, 4)
    n = flat.shape[0]
    g = torch.Generator().manual_seed(0)
    depth = torch.rand(ncam, d, h, w, generator=g).softmax(dim=1).to(device)
    context = torch.randn(ncam, c, h, w, generator=g).to(device)
    feats = (depth[:, :, None] * context[:, None]).permute(0, 1, 3, 4, 2).reshape(n, c)
    feats = feats.contiguous()
    shape = f"{ncam} cams x {d} D x {h}x{w} px, C={c} ({n / 1e6:.2f}M pts) -> {grid}"
    slow = dict(device=device, warmup=0 if not quick else 1, repeat=3)
    fast = dict(device=device, warmup=1, repeat=5)

    start = time.perf_counter()
    plan = build_bev_pool_plan(coords, 1, grid)
    plan_ms = (time.perf_counter() - start) * 1e3
    timings = {
        "cumsum trick (LSS)": time_ms(lambda: bev_pool_cumsum(feats, flat, 1, grid), **slow),
        "index_add_": time_ms(lambda: bev_pool_index_add(feats, flat, 1, grid), **slow),
        "ours, cached plan": time_ms(lambda: bev_pool(feats, None, 1, grid, plan=plan), **fast),
        "memory floor (feats.sum())": time_ms(lambda: feats.sum(), **fast),
    }
    ours = timings["ours, cached plan"]
    notes = {
        "ours, cached plan": (
            f"{timings['index_add_'] / ours:.2f}x faster than index_add_; floor/ours = "
            f"{timings['memory floor (feats.sum())'] / ours:.2f}; plan build {plan_ms:.0f} ms "
            f"(once per geometry); kept {plan.num_kept / n:.1%} of points"
        )
    }
    rows = compare("bev_pool", shape, "cumsum trick (LSS)", timings, notes)
    rows += _plan_build_rows(feats, coords, grid, shape, slow, fast, depth, context)

    def cumsum_from_depth() -> torch.Tensor:
        lifted = (depth_g[:, :, None] * context_g[:, None]).permute(0, 1, 3, 4, 2)
        return bev_pool_cumsum(lifted.reshape(n, c), flat, 1, grid)

    def fused() -> torch.Tensor:
        return bev_pool_depth(depth_g, context_g, plan)

    def fwd_bwd(fn) -> None:
        out = fn()
        out.backward(upstream)

    depth_g = depth.clone().requires_grad_(True)
    context_g = context.clone().requires_grad_(True)
    upstream = torch.randn(1, c, *grid, generator=g).to(device)
    with torch.no_grad():
        fwd = {
            "cumsum trick on depth x context": time_ms(cumsum_from_depth, **slow),
            "fused bev_pool_depth": time_ms(fused, **fast),
        }
    rows += compare("bev_pool_fused_fwd", shape, "cumsum trick on depth x context", fwd)
    fwd_bwd_ms = {
        "cumsum trick on depth x context": time_ms(lambda: fwd_bwd(cumsum_from_depth), **slow),
        "fused bev_pool_depth": time_ms(lambda: fwd_bwd(fused), **fast),
    }
    rows += compare("bev_pool_fused_fwd_bwd", shape, "cumsum trick on depth x context", fwd_bwd_ms)
    return rows


def _plan_build_rows(
    feats: torch.Tensor,
    coords: torch.Tensor,
    grid,
    shape: str,
    slow: dict,
    fast: dict,
    depth: torch.Tensor,
    context: torch.Tensor,
) -> list[BenchRow]:
    """The pool without a cached plan (training: every sample's augmentation moves the
    frustum).

    * ``bev_pool_plan_build_frustum`` / ``_scattered``: plan build + :func:`bev_pool` against
      ``index_add_``, on the frustum's cells and on as many points in uniformly scattered
      cells; the plan (its point-by-cell part, what :func:`bev_pool` reads) by numba's counting
      sorts and by torch's sorts, and the pool by its default path (numba's point-order
      scatter) and torch's CSR product (a gather in cell order).
    * ``bev_pool_depth_plan_build``: the view transform's step: the whole frustum plan (with
      its (cell, pixel) pairs) + the fused :func:`bev_pool_depth` against materializing
      ``depth x context`` and ``index_add_``.
    """
    n, c = feats.shape
    flat = coords.reshape(-1, 4)
    g = torch.Generator().manual_seed(1)
    _, x_, y_ = grid
    scattered = torch.stack(
        [torch.zeros(n, dtype=torch.int64), torch.zeros(n, dtype=torch.int64),
         torch.randint(0, x_, (n,), generator=g), torch.randint(0, y_, (n,), generator=g)], 1
    ).to(coords.device)  # fmt: skip
    cpu = coords.device.type == "cpu"
    plan_impls = ["numba", "torch"] if cpu else ["torch"]
    rows: list[BenchRow] = []
    for group, geometry in (
        ("bev_pool_plan_build_frustum", flat),
        ("bev_pool_plan_build_scattered", scattered),
    ):
        timings = {
            "index_add_": time_ms(partial(bev_pool_index_add, feats, geometry, 1, grid), **slow)
        }
        for impl in plan_impls:
            build = partial(build_bev_pool_plan, geometry, 1, grid, impl=impl)
            timings[f"ours, plan build ({impl}) + pool"] = time_ms(
                partial(_pool_with_new_plan, feats, build, grid), **fast
            )
            timings[f"plan build alone ({impl})"] = time_ms(build, **fast)
        if cpu:
            build = partial(build_bev_pool_plan, geometry, 1, grid)
            timings["ours, plan build + pool (torch CSR)"] = time_ms(
                partial(_pool_with_new_plan, feats, build, grid, impl="torch"), **fast
            )
        rows += compare(group, shape, "index_add_", timings)

    def materialized() -> torch.Tensor:
        lifted = (depth[:, :, None] * context[:, None]).permute(0, 1, 3, 4, 2)
        return bev_pool_index_add(lifted.reshape(n, c), flat, 1, grid)

    with torch.no_grad():
        timings = {"depth x context + index_add_": time_ms(materialized, **slow)}
        for impl in plan_impls:
            build = partial(build_bev_pool_plan, coords, 1, grid, impl=impl)
            timings[f"ours, frustum plan build ({impl}) + bev_pool_depth"] = time_ms(
                lambda build=build: bev_pool_depth(depth, context, build()), **fast
            )
            timings[f"frustum plan build alone ({impl})"] = time_ms(build, **fast)
    rows += compare("bev_pool_depth_plan_build", shape, "depth x context + index_add_", timings)
    return rows


def _pool_with_new_plan(feats: torch.Tensor, build, grid, impl: str = "auto") -> torch.Tensor:
    return bev_pool(feats, None, 1, grid, plan=build(), impl=impl)


def _voxelize_rows(quick: bool, device: str) -> list[BenchRow]:
    num_points = 20_000 if quick else 300_000
    max_voxels = 10_000 if quick else 120_000
    points = lidar_sweeps(num_points).to(device)
    shape = f"{num_points // 1000}k pts, voxel {VOXEL_SIZE} m, 10 pts/voxel, {max_voxels // 1000}k voxels"
    notes = {}
    try:
        from spconv.pytorch.utils import PointToVoxel
    except ImportError:
        PointToVoxel = None  # noqa: N806
    fns = {}
    if PointToVoxel is not None and device == "cpu":
        generator = PointToVoxel(
            vsize_xyz=list(VOXEL_SIZE), coors_range_xyz=list(PC_RANGE), num_point_features=5,
            max_num_voxels=max_voxels, max_num_points_per_voxel=10,
        )  # fmt: skip
        fns["spconv PointToVoxel"] = lambda: generator(points)
    # The default path (CPU: numba; CUDA: the torch path with triton's voxel keys, where
    # importable) and the vectorized torch path (the fallback); timed in turns with spconv (a
    # few ms a call: five rounds of five)
    trace = ImplTrace()
    voxelize(points, VOXEL_SIZE, PC_RANGE, 10, max_voxels, trace=trace)
    impls = tuple(dict.fromkeys([trace.calls[0][1], "torch"]))
    for impl in impls:
        ours = voxelize(points, VOXEL_SIZE, PC_RANGE, 10, max_voxels, impl=impl)
        name = f"ours ({impl})"
        fns[name] = lambda impl=impl: voxelize(
            points, VOXEL_SIZE, PC_RANGE, 10, max_voxels, impl=impl
        )
        notes[name] = (
            f"{ours.coords.shape[0]} voxels, {ours.num_dropped} dropped, "
            f"{ours.num_overflow} overflow"
        )
    timings = time_interleaved(fns, device=device)
    if "spconv PointToVoxel" not in timings:
        return [
            BenchRow(
                "voxelize",
                name,
                shape,
                ms,
                note=notes[name] + "; spconv row skipped: not importable (or not CPU)",
            )
            for name, ms in timings.items()
        ]
    return compare("voxelize", shape, "spconv PointToVoxel", timings, notes)


def _nms_rows(quick: bool, device: str) -> list[BenchRow]:
    n = 100 if quick else 1000
    boxes, scores = crowded_boxes(n)
    shape = f"{n} boxes around {n // 8} objects, IoU 0.2 / radius 1 m"
    boxes_d, scores_d = boxes.to(device), scores.to(device)
    kept = nms_bev(boxes_d, scores_d, 0.2)
    same = kept.cpu().tolist() == nms_bev_reference(boxes, scores, 0.2).tolist()
    rows = compare(
        "nms_bev",
        shape,
        "shapely brute force",
        {
            "shapely brute force": time_ms(
                lambda: nms_bev_reference(boxes, scores, 0.2), warmup=0, repeat=1
            ),
            "ours": time_ms(lambda: nms_bev(boxes_d, scores_d, 0.2), device=device),
        },
        {"ours": f"kept {kept.shape[0]}, same indices as the reference: {same}"},
    )
    rows += compare(
        "circle_nms",
        shape,
        "python loops",
        {
            "python loops": time_ms(
                lambda: circle_nms_reference(boxes[:, :2], scores, 1.0), warmup=0, repeat=1
            ),
            "ours": time_ms(lambda: circle_nms(boxes_d[:, :2], scores_d, 1.0), device=device),
        },
    )
    return rows


def run(device: str = "cpu", quick: bool = False) -> list[BenchRow]:
    """Times every BEV op on ``device``; returns the rows (see the module docstring)."""
    rows = _bev_pool_rows(quick, device)
    rows += _voxelize_rows(quick, device)
    rows += _nms_rows(quick, device)
    return rows


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    for row in run(args.device, args.quick):
        ratio = f"{row.ratio:8.2f}x" if row.ratio is not None else "  (base) "
        print(f"{row.group:24s} {row.name:34s} {row.ms:10.2f} ms {ratio}  {row.note}")
