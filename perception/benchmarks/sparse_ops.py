"""Sparse-conv benchmark: a SECOND-like 6-layer stack on a LiDAR-like nuScenes-scale scene.

Rows (same run, same input): spconv's CPU forward (the baseline, when spconv is importable),
ours forward (kernel maps built from scratch every call, as spconv does), ours forward +
backward, and a dense ``nn.Conv3d`` stack on a crop small enough to run densely.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from perception.benchmarks.common import BenchRow, compare
from perception.ops.sparse import Conv3d, SparseTensor

# (in, out, stride) of the stack; kernel 3 everywhere.
LAYERS = [(5, 16, 1), (16, 16, 1), (16, 32, 2), (32, 32, 1), (32, 64, 2), (64, 64, 1)]
VOXEL_SIZE = 0.075
PC_RANGE = (-54.0, -54.0, -5.0, 54.0, 54.0, 3.0)


def lidar_like_voxels(
    target_voxels: int = 120_000, seed: int = 0, voxel_size: float = VOXEL_SIZE
) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Voxel coordinates of a synthetic multi-sweep LiDAR scene.

    A 32-beam spinning LiDAR (elevation -30..10 deg, 1084 azimuth steps) 1.8 m above flat
    ground, buildings 20-50 m away per 15-degree sector, 40 car-sized obstacles, sweeps taken
    0.6 m apart along x (as nuScenes stacks 10 sweeps), range +-54 m, z in [-5, 3].
    Sweeps are added until ``target_voxels`` voxels are occupied; the excess of the last sweep
    is dropped at random.

    Returns:
        ``coords [N, 4]`` int32 ``(0, x, y, z)`` voxel indices and the grid ``(X, Y, Z)``.
    """
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor(PC_RANGE[:3])
    hi = torch.tensor(PC_RANGE[3:])
    grid = ((hi - lo) / voxel_size).round().long()
    elev = torch.linspace(-30.0, 10.0, 32) * math.pi / 180
    azim = torch.arange(1084) * (2 * math.pi / 1084)
    obj = torch.rand(40, 2, generator=g)
    obj_r, obj_a = 5 + 40 * obj[:, 0], 2 * math.pi * obj[:, 1]
    wall = 20 + 30 * torch.rand(24, generator=g)
    keys = torch.zeros(0, dtype=torch.int64)
    for sweep in range(100):
        ox = 0.6 * sweep
        e, a = torch.meshgrid(elev, azim, indexing="ij")
        e = e + 0.001 * torch.randn(e.shape, generator=g)
        d = torch.where(e < 0, 1.8 / torch.tan(-e).clamp(min=1e-6), torch.full(e.shape, 1e9))
        sector = (a / (2 * math.pi) * 24).long().clamp(max=23)
        d = torch.minimum(d, wall[sector] / torch.cos(e))
        for r0, a0 in zip(obj_r.tolist(), obj_a.tolist()):
            rx, ry = r0 * math.cos(a0) - ox, r0 * math.sin(a0)
            r = math.hypot(rx, ry)
            ang = math.atan2(ry, rx) % (2 * math.pi)
            da = torch.remainder(a - ang + math.pi, 2 * math.pi) - math.pi
            z = (r - 1.0) * torch.tan(e)
            hit = (da.abs() < 1.5 / r) & (z > -1.8) & (z < -0.2)
            d = torch.where(hit, torch.minimum(d, (r - 1.0) / torch.cos(e)), d)
        d = d + 0.02 * torch.randn(d.shape, generator=g)
        pts = torch.stack(
            [
                d * torch.cos(e) * torch.cos(a) + ox,
                d * torch.cos(e) * torch.sin(a),
                d * torch.sin(e),
            ],
            dim=-1,
        ).view(-1, 3)
        pts = pts[((pts >= lo) & (pts < hi)).all(1)]
        v = torch.minimum(((pts - lo) / voxel_size).floor().long(), grid - 1)
        new = torch.unique((v[:, 0] * grid[1] + v[:, 1]) * grid[2] + v[:, 2])
        new = new[~torch.isin(new, keys)]
        if keys.numel() + new.numel() >= target_voxels:
            pick = torch.randperm(new.numel(), generator=g)[: target_voxels - keys.numel()]
            keys = torch.cat([keys, new[pick]])
            break
        keys = torch.cat([keys, new])
    z = keys % grid[2]
    y = (keys // grid[2]) % grid[1]
    x = keys // (grid[2] * grid[1])
    coords = torch.stack([torch.zeros_like(x), x, y, z], 1).to(torch.int32)
    coords = coords[torch.randperm(coords.shape[0], generator=g)]
    return coords, tuple(int(s) for s in grid)  # type: ignore[return-value]


def build_stack() -> nn.Sequential:
    """Our SECOND-like stack (no BN/ReLU: the figures are about the convolutions)."""
    torch.manual_seed(0)
    return nn.Sequential(*[Conv3d(i, o, 3, stride=s) for i, o, s in LAYERS])


def _spconv_stack(ours: nn.Sequential):
    """The same stack in spconv (weights copied), or None when spconv is not importable.

    SubM layers share ``indice_key`` per resolution ("subm1", "subm2", "subm4") so spconv
    reuses its submanifold indices within a forward, as SECOND configures it; strided layers
    are ``SparseConv3d(kernel 3, stride 2, padding 1)`` (same output sites as ours).
    """
    try:
        import spconv.pytorch as spconv
    except Exception:  # noqa: BLE001 - any import failure means "no baseline"
        return None
    layers, level = [], 1
    for conv, (i, o, s) in zip(ours, LAYERS):
        if s == 1:
            layer = spconv.SubMConv3d(i, o, 3, padding=1, bias=False, indice_key=f"subm{level}")
        else:
            level *= s
            layer = spconv.SparseConv3d(i, o, 3, stride=s, padding=1, bias=False)
        # spconv 2.x CPU weight layout: [out, kx, ky, kz, in]; ours [K, in, out].
        w = conv.weight.detach().reshape(3, 3, 3, i, o).permute(4, 0, 1, 2, 3).contiguous()
        with torch.no_grad():
            layer.weight.copy_(w.reshape(layer.weight.shape))
        layers.append(layer)
    return spconv, spconv.SparseSequential(*layers)


def _interleaved_ms(
    fns: dict[str, Callable[[], object]], *, device: str, warmup: int, repeat: int
) -> dict[str, float]:
    """Median wall time (ms) of each function, the functions run in turn ``repeat`` times.

    Interleaving puts every row under the same background load (a shared CPU slows whole
    stretches of a run, which sequential blocks would charge to one row only).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(t) for name, t in times.items()}


def run(device: str = "cpu", quick: bool = False) -> list[BenchRow]:
    """Timings of the 6-layer stack; ``quick`` uses a 5k-voxel scene (CI smoke test).

    The machine's thread count is left as it is (``torch.set_num_threads`` is the caller's);
    every note states it. Rows are medians of interleaved repeats (see :func:`_interleaved_ms`).
    """
    target = 5_000 if quick else 120_000
    repeat = 3 if quick else 5
    warmup = 1
    coords, grid = lidar_like_voxels(target)
    coords = coords.to(device)
    feats = torch.randn(coords.shape[0], 5, device=device)
    stack = build_stack().to(device)
    shape = f"{coords.shape[0] // 1000}k LiDAR-like voxels (0.075 m), SECOND-like 6-layer stack"
    threads = f"{torch.get_num_threads()} CPU thread(s)"

    def ours_forward():
        with torch.no_grad():
            return stack(SparseTensor(feats, coords)).feats

    def ours_train():
        out = stack(SparseTensor(feats, coords)).feats
        out.square().mean().backward()

    # Dense on a crop: the whole 1440 x 1440 x 107 grid is far beyond dense Conv3d on a CPU.
    crop = (32, 32, 16) if quick else (128, 128, 64)
    dense_stack = nn.Sequential(
        *[nn.Conv3d(i, o, 3, stride=s, padding=1, bias=False) for i, o, s in LAYERS]
    ).to(device)
    dense_in = torch.randn(1, 5, *crop, device=device)

    def dense_forward():
        with torch.no_grad():
            return dense_stack(dense_in)

    fns: dict[str, Callable[[], object]] = {}
    notes: dict[str, str] = {}
    baseline = "ours forward"
    spconv_pair = _spconv_stack(stack) if device == "cpu" else None
    if spconv_pair is not None:
        spconv, sp_stack = spconv_pair

        def spconv_forward():
            with torch.no_grad():
                x = spconv.SparseConvTensor(feats, coords, list(grid), 1)
                return sp_stack(x).features

        fns["spconv forward"] = spconv_forward
        baseline = "spconv forward"
        notes["spconv forward"] = (
            f"{threads}; spconv 2.x CPU, SubMConv3d with per-resolution indice_key, "
            "SparseConv3d k3 s2 p1; spconv cannot train on CPU (its CPU backward raises)"
        )
    fns["ours forward"] = ours_forward
    fns["ours forward+backward"] = ours_train
    fns["dense Conv3d forward (crop)"] = dense_forward
    timings = _interleaved_ms(fns, device=device, warmup=warmup, repeat=repeat)
    notes["ours forward"] = f"{threads}; kernel maps rebuilt every call" + (
        "" if spconv_pair is not None else "; spconv not importable (or not CPU): no spconv row"
    )
    notes["ours forward+backward"] = (
        f"{threads}; {timings['ours forward+backward'] / timings['ours forward']:.2f}x ours "
        "forward; maps built once per forward, reused by the backward"
    )
    notes["dense Conv3d forward (crop)"] = (
        f"{threads}; torch.nn.Conv3d stack on a dense {crop} crop (0.075 m voxels: "
        f"{crop[0] * 0.075:.1f} x {crop[1] * 0.075:.1f} x {crop[2] * 0.075:.1f} m), "
        "not the whole scene"
    )
    return compare("sparse_conv", shape, baseline, timings, notes)


if __name__ == "__main__":
    for row in run(quick=False):
        print(row)
