"""How many of devoxelization's 8 neighbour entries per point fall on the padding row (missing
voxels) in the point<->voxel benchmark's scene: the figure benchmarks/HISTORY.md's GPU section
quotes for the triton scatter's slow backward.

    PYTHONPATH=. .venv/bin/python benchmarks/diagnostics/devox_padding.py
"""

import torch

from perception.benchmarks.point_voxel_ops import point_coords
from perception.ops.point_voxel import _corner_weights, point_to_voxel

coords = point_coords(300_000, "cpu")
x = point_to_voxel(torch.randn(coords.shape[0], 32), coords, 1)
corner, _ = _corner_weights(coords, x.stride)
offs = [torch.tensor([0, s]) for s in x.stride]
rows = x.cache.index(x.coord_id).lookup(corner, *offs)
counts = torch.bincount(rows.reshape(-1), minlength=len(x) + 1)
print(
    f"{rows.numel()} entries, {counts[-1].item()} on the padding row, "
    f"largest real row {counts[:-1].max().item()}"
)
