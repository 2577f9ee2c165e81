"""SparseTensor and the per-input cache of coordinate indexes and kernel maps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .kernel_map import (
    CoordIndex,
    KernelMap,
    Triple,
    as_triple,
    build_kernel_map,
    build_strided_kernel_map,
    make_coord_index,
)


@dataclass
class _CoordSet:
    coords: torch.Tensor  # [N, 4] int32
    stride: Triple
    index: CoordIndex | None = None


class SparseCache:
    """Coordinate sets, their indexes and kernel maps, shared by tensors derived from one input.

    Never global: each input :class:`SparseTensor` built without a cache gets a fresh one, and
    every op's output carries its input's cache, so two models (or two inputs) never share maps.

    Attributes:
        num_builds: kernel maps built so far (a cache hit does not count).
        num_hits: kernel-map requests answered from the cache.
    """

    def __init__(self, index_layout: str = "auto") -> None:
        self.index_layout = index_layout
        self._sets: list[_CoordSet] = []
        self._maps: dict[tuple, KernelMap] = {}
        self._children: dict[tuple, int] = {}  # (parent id, kernel, stride, dilation) -> child
        self._parents: dict[tuple, int] = {}  # (child id, kernel, stride, dilation) -> parent
        self.num_builds = 0
        self.num_hits = 0

    def register(self, coords: torch.Tensor, stride: Triple) -> int:
        """Adds a coordinate set; returns its id."""
        self._sets.append(_CoordSet(coords, stride))
        return len(self._sets) - 1

    def coords(self, coord_id: int) -> torch.Tensor:
        return self._sets[coord_id].coords

    def index(self, coord_id: int) -> CoordIndex:
        entry = self._sets[coord_id]
        if entry.index is None:
            entry.index = make_coord_index(entry.coords, entry.stride, self.index_layout)
        return entry.index

    def kernel_map(
        self,
        coord_id: int,
        kernel_size: Triple,
        stride: Triple,
        dilation: Triple,
        transposed: bool,
        transpose_table: bool = True,
    ) -> tuple[KernelMap, int]:
        """The kernel map of a conv on coordinate set ``coord_id`` and its output set's id.

        Built on first request, then reused. ``transpose_table=False`` lets a strided map skip
        its transposed table (a forward without autograd does not read it; it is built on
        first use if a later call does). A transposed strided conv maps back onto the
        coordinates of the strided conv (same kernel, stride, dilation) that produced
        ``coord_id``; a :class:`ValueError` says so when there is none.
        """
        in_stride = self._sets[coord_id].stride
        if transposed and stride != (1, 1, 1):
            key = (coord_id, kernel_size, stride, dilation)
            if key not in self._parents:
                raise ValueError(
                    "transposed conv: no strided conv with kernel_size="
                    f"{kernel_size}, stride={stride}, dilation={dilation} produced this tensor; "
                    "a transposed conv upsamples onto the coordinates of its matching "
                    "downsampling layer"
                )
            parent = self._parents[key]
            kmap, _ = self.kernel_map(parent, kernel_size, stride, dilation, False)
            return kmap.transposed(), parent
        key = (coord_id, kernel_size, stride, dilation)
        if key in self._maps:
            self.num_hits += 1
            out_id = coord_id if stride == (1, 1, 1) else self._children[key]
        elif stride == (1, 1, 1):
            out_id = coord_id
            self.num_builds += 1
            self._maps[key] = build_kernel_map(
                self.index(coord_id),
                self.index(coord_id),
                self._sets[coord_id].coords,
                self._sets[coord_id].coords,
                kernel_size,
                dilation,
                in_stride,
            )
        else:
            # Output sites and the map come from one enumeration of the input pairs.
            out_coords, self._maps[key] = build_strided_kernel_map(
                self._sets[coord_id].coords,
                in_stride,
                kernel_size,
                stride,
                dilation,
                transpose=transpose_table,
            )
            self.num_builds += 1
            out_stride = tuple(a * b for a, b in zip(in_stride, stride))
            out_id = self.register(out_coords, out_stride)  # type: ignore[arg-type]
            self._children[key] = out_id
            self._parents[(out_id, kernel_size, stride, dilation)] = coord_id
        kmap = self._maps[key]
        return (kmap.transposed() if transposed else kmap), out_id


def _check_coords(coords: torch.Tensor, feats: torch.Tensor, stride: Triple) -> torch.Tensor:
    if not isinstance(coords, torch.Tensor) or coords.dtype not in (torch.int32, torch.int64):
        raise ValueError(
            f"coords must be an int32 or int64 tensor, got {getattr(coords, 'dtype', type(coords))}"
        )
    if coords.dim() != 2 or coords.shape[1] != 4:
        raise ValueError(f"coords must be [N, 4] (batch, x, y, z), got {tuple(coords.shape)}")
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2 or not feats.is_floating_point():
        raise ValueError("feats must be a floating-point [N, C] tensor")
    if feats.shape[0] != coords.shape[0]:
        raise ValueError(
            f"feats and coords differ in length: {feats.shape[0]} vs {coords.shape[0]}"
        )
    if feats.device != coords.device:
        raise ValueError(f"feats on {feats.device} but coords on {coords.device}")
    if coords.shape[0]:
        if bool((coords < 0).any()):
            raise ValueError("coords must be non-negative (batch, x, y, z)")
        stride_t = torch.tensor(stride, dtype=coords.dtype, device=coords.device)
        if stride != (1, 1, 1) and bool((coords[:, 1:] % stride_t).any()):
            raise ValueError(f"coords are not multiples of the tensor stride {stride}")
    return coords.to(torch.int32)


class SparseTensor:
    """Features on a sparse set of voxels (torchsparse-style).

    Args:
        feats: ``[N, C]`` float features, one row per voxel.
        coords: ``[N, 4]`` int32 (int64 accepted, stored as int32) ``(batch, x, y, z)`` in
            stride-1 voxel units, unique rows, non-negative, spatial parts multiples of
            ``stride``.
        stride: the tensor stride, an int or 3 ints (default 1).
        cache: the :class:`SparseCache` to use; a fresh one when None (a new input).

    Ops return tensors that share the input's cache, so kernel maps are built once per
    (coordinate set, kernel size, stride, dilation).
    """

    def __init__(
        self,
        feats: torch.Tensor,
        coords: torch.Tensor,
        stride: int | tuple[int, int, int] = 1,
        *,
        cache: SparseCache | None = None,
        _coord_id: int | None = None,
    ) -> None:
        self.stride: Triple = as_triple(stride, "stride")
        self.cache = cache if cache is not None else SparseCache()
        if _coord_id is None:
            coords = _check_coords(coords, feats, self.stride)
            _coord_id = self.cache.register(coords, self.stride)
        self.feats = feats
        self.coords = coords
        self.coord_id = _coord_id

    @property
    def num_channels(self) -> int:
        return self.feats.shape[1]

    def __len__(self) -> int:
        return self.feats.shape[0]

    def replace_feats(self, feats: torch.Tensor) -> SparseTensor:
        """Same coordinates, stride and cache with new ``feats [N, C']``."""
        if feats.dim() != 2 or feats.shape[0] != self.feats.shape[0]:
            raise ValueError(
                f"replace_feats: need [{self.feats.shape[0]}, C], got {tuple(feats.shape)}"
            )
        return SparseTensor(
            feats, self.coords, self.stride, cache=self.cache, _coord_id=self.coord_id
        )

    def batch_size(self) -> int:
        return int(self.coords[:, 0].max()) + 1 if len(self) else 0

    def __repr__(self) -> str:
        return (
            f"SparseTensor(N={len(self)}, C={self.num_channels}, stride={self.stride}, "
            f"dtype={self.feats.dtype}, device={self.feats.device})"
        )
