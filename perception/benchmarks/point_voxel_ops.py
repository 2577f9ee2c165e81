"""Point <-> voxel benchmark (SPVConv's point branch) on a nuScenes-scale LiDAR scene.

Rows (same run, same inputs, timed in turns with
:func:`~perception.benchmarks.common.time_interleaved`), for 300k points of 10 stacked sweeps
(:func:`perception.benchmarks.bev_ops.lidar_sweeps`) at 0.075 m voxels, 32 channels:

* ``point_to_voxel``: the mean of the points' features per occupied voxel. Baseline: plain
  PyTorch, one linear int64 key per point, ``torch.unique(return_inverse=True)``,
  ``index_add_`` and ``bincount``; ours: :func:`perception.ops.point_voxel.point_to_voxel`.
  Forward, and forward + backward.
* ``voxel_to_point``: trilinear devoxelization onto the points from the 8 surrounding voxels
  (missing ones dropped, weights renormalized). Baseline: plain PyTorch, the voxels' linear
  keys sorted once, ``searchsorted`` for the 8 corners, an ``[N, 8, C]`` gather and a weighted
  sum; ours: :func:`perception.ops.point_voxel.voxel_to_point` (hash lookup cached on the
  sparse tensor, one fused ``embedding_bag``). Forward, and forward + backward.

Each group's note gives the largest difference between the baseline's and ours' outputs.
"""

from __future__ import annotations

import torch

from perception.benchmarks.bev_ops import lidar_sweeps
from perception.benchmarks.common import BenchRow, compare, time_interleaved
from perception.ops.point_voxel import point_to_voxel, voxel_to_point

VOXEL_SIZE = 0.075
PC_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)
CHANNELS = 32


def point_coords(num_points: int, device: str) -> torch.Tensor:
    """``[N, 4]`` float32 ``(0, x, y, z)`` in stride-1 voxel units of the points in range."""
    pts = lidar_sweeps(num_points)[:, :3]
    lo, hi = torch.tensor(PC_RANGE[:3]), torch.tensor(PC_RANGE[3:])
    inside = ((pts >= lo) & (pts < hi)).all(dim=1)
    scaled = (pts[inside] - lo) / VOXEL_SIZE
    return torch.cat([torch.zeros(scaled.shape[0], 1), scaled], dim=1).to(device)


def _linear_keys(cells: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """``(x * Y + y) * Z + z`` of ``[N, 3]`` int64 cells (batch 0 only)."""
    return (cells[:, 0] * extent[1] + cells[:, 1]) * extent[2] + cells[:, 2]


def plain_point_to_voxel(feats: torch.Tensor, coords: torch.Tensor, extent: torch.Tensor):
    cells = torch.floor(coords[:, 1:]).long()
    keys, rows = torch.unique(_linear_keys(cells, extent), return_inverse=True)
    sums = feats.new_zeros(keys.shape[0], feats.shape[1]).index_add_(0, rows, feats)
    counts = torch.bincount(rows, minlength=keys.shape[0]).to(feats.dtype)
    return sums / counts[:, None]


def plain_voxel_to_point(
    voxel_feats: torch.Tensor, sorted_keys: torch.Tensor, coords: torch.Tensor, extent
) -> torch.Tensor:
    u = coords[:, 1:] - 0.5  # voxel-centre units (stride 1)
    base = torch.floor(u)
    frac = u - base
    base = base.long()
    gathered, weights = [], []
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                off = torch.tensor([dx, dy, dz], device=coords.device)
                cell = base + off
                inside = ((cell >= 0) & (cell < extent)).all(dim=1)
                key = _linear_keys(cell.clamp(min=0), extent)
                idx = torch.searchsorted(sorted_keys, key).clamp(max=sorted_keys.shape[0] - 1)
                hit = inside & (sorted_keys[idx] == key)
                w = torch.where(off.bool(), frac, 1 - frac).prod(dim=1)
                weights.append(torch.where(hit, w, 0.0))
                gathered.append(voxel_feats[idx])
    w = torch.stack(weights, dim=1)  # [N, 8]
    w = w / w.sum(dim=1, keepdim=True).clamp(min=1e-12)
    return (torch.stack(gathered, dim=1) * w[..., None]).sum(dim=1)  # [N, 8, C] -> [N, C]


def run(device: str = "cpu", quick: bool = False) -> list[BenchRow]:
    """Both groups' rows; ``quick``: 20k points (a smoke test)."""
    coords = point_coords(20_000 if quick else 300_000, device)
    n = coords.shape[0]
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(n, CHANNELS, generator=g).to(device)
    extent = (torch.floor(coords[:, 1:]).long().amax(dim=0) + 2).to(device)
    threads = f"{torch.get_num_threads()} CPU thread(s)"
    shape = f"{n // 1000}k points (10 sweeps), {VOXEL_SIZE} m voxels, C={CHANNELS}"

    def train(fn):
        leaf = feats.detach().requires_grad_(True)

        def step():
            fn(leaf).square().mean().backward()

        return step

    # point -> voxel
    ours_p2v = point_to_voxel(feats, coords, 1)
    plain_p2v = plain_point_to_voxel(feats, coords, extent)
    diff = (ours_p2v.feats - plain_p2v).abs().max().item()
    timings = time_interleaved(
        {
            "plain torch forward": lambda: plain_point_to_voxel(feats, coords, extent),
            "ours forward": lambda: point_to_voxel(feats, coords, 1),
            "plain torch forward+backward": train(
                lambda f: plain_point_to_voxel(f, coords, extent)
            ),
            "ours forward+backward": train(lambda f: point_to_voxel(f, coords, 1).feats),
        },
        device=device,
        rounds=3,
        repeat=3,
    )
    m = ours_p2v.feats.shape[0]
    note = f"{threads}; {m} voxels; max |ours - plain| = {diff:.1e}"
    rows = _split("point_to_voxel", shape, timings, note)

    # voxel -> point, from the voxels above (coords sorted by (batch, x, y, z): keys ascending)
    voxels = ours_p2v
    voxel_feats = torch.randn(m, CHANNELS, generator=g).to(device)
    sorted_keys = _linear_keys(voxels.coords[:, 1:].long(), extent)
    assert bool((sorted_keys[1:] > sorted_keys[:-1]).all())
    ours_v2p = voxel_to_point(voxels.replace_feats(voxel_feats), coords)
    plain_v2p = plain_voxel_to_point(voxel_feats, sorted_keys, coords, extent)
    diff = (ours_v2p - plain_v2p).abs().max().item()

    def train_v2p(fn):
        leaf = voxel_feats.detach().requires_grad_(True)

        def step():
            fn(leaf).square().mean().backward()

        return step

    timings = time_interleaved(
        {
            "plain torch forward": lambda: plain_voxel_to_point(
                voxel_feats, sorted_keys, coords, extent
            ),
            "ours forward": lambda: voxel_to_point(voxels.replace_feats(voxel_feats), coords),
            "plain torch forward+backward": train_v2p(
                lambda f: plain_voxel_to_point(f, sorted_keys, coords, extent)
            ),
            "ours forward+backward": train_v2p(
                lambda f: voxel_to_point(voxels.replace_feats(f), coords)
            ),
        },
        device=device,
        rounds=3,
        repeat=3,
    )
    note = (
        f"{threads}; {m} voxels, hash index cached on the tensor; max |ours - plain| = {diff:.1e}"
    )
    rows += _split("voxel_to_point", shape, timings, note)
    return rows


def _split(group: str, shape: str, timings: dict[str, float], note: str) -> list[BenchRow]:
    """Rows of ``group`` (forwards) and ``group_fwd_bwd``, each against plain torch's."""
    rows = []
    for suffix, kind in (("", "forward"), ("_fwd_bwd", "forward+backward")):
        part = {
            "plain torch": timings[f"plain torch {kind}"],
            "ours": timings[f"ours {kind}"],
        }
        rows += compare(group + suffix, shape, "plain torch", part, {"ours": note})
    return rows
