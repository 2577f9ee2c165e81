"""What a generated object is conditioned on: class, box size, the sensor's viewing angle and
distance, and which sensor (six cameras or the LiDAR).

`ObjectConditions` is the batch of conditions (frozen, batch-first tensors) that the crop and
grid datasets (`perception.generative.crops`) produce and the generators read;
`ConditionEmbedding` turns it into one vector per object (with a learned null condition for
classifier-free guidance); `ConditionRange` records what the training data covered and refuses
conditions outside it (a class never seen, an impossible size), naming the field and the row.

Angles are in the box frame (`perception.generative.bank.BOX_FRAME`): `view_angle` is the
azimuth of the sensor seen from the box centre, 0 when the sensor is in front of the object,
pi/2 on its left, +-pi behind (as `CameraView.view_angle`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn

from ..structures.classes import CAMERA_NAMES, CLASS_NAMES

LIDAR_SENSOR = 6
SENSOR_NAMES: tuple[str, ...] = (*CAMERA_NAMES, "LIDAR_TOP")

RANGE_KIND = "perception.condition-range"
RANGE_FORMAT_VERSION = 1

__all__ = [
    "LIDAR_SENSOR",
    "SENSOR_NAMES",
    "ConditionEmbedding",
    "ConditionRange",
    "ObjectConditions",
    "continuous_features",
]

_INTEGER_FIELDS = ("label", "sensor")
_FIELD_SHAPES = {"label": (), "size": (3,), "view_angle": (), "depth": (), "sensor": ()}


@dataclass(frozen=True, eq=False)
class ObjectConditions:
    """A batch of B objects' conditions (all tensors on one device, batch first).

    Attributes:
        label: `[B]` int64, index into `CLASS_NAMES`.
        size: `[B, 3]` float, (w, l, h) of the box, m.
        view_angle: `[B]` float, rad: the sensor's azimuth seen from the box, box frame
            (0: front, pi/2: left, +-pi: behind).
        depth: `[B]` float, m: a camera's depth of the box centre (its camera-frame z) or, for
            the LiDAR, the box centre's ground-plane range from the LiDAR origin.
        sensor: `[B]` int64: 0..5 the `CAMERA_NAMES` index, 6 (`LIDAR_SENSOR`) the LiDAR.
    """

    label: Tensor
    size: Tensor
    view_angle: Tensor
    depth: Tensor
    sensor: Tensor

    def __post_init__(self) -> None:
        batch = None
        device = None
        for name, trailing in _FIELD_SHAPES.items():
            value = getattr(self, name)
            if not isinstance(value, Tensor):
                raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
            if name in _INTEGER_FIELDS:
                if value.dtype != torch.long:
                    raise TypeError(f"{name}: dtype must be torch.int64, got {value.dtype}")
            elif not value.is_floating_point():
                raise TypeError(f"{name}: dtype must be floating point, got {value.dtype}")
            if value.dim() != 1 + len(trailing) or tuple(value.shape[1:]) != trailing:
                want = "[B" + "".join(f", {t}" for t in trailing) + "]"
                raise ValueError(f"{name}: shape must be {want}, got {list(value.shape)}")
            if batch is None:
                batch, device = value.shape[0], value.device
            elif value.shape[0] != batch:
                raise ValueError(f"{name}: batch size {value.shape[0]}, label has {batch}")
            elif value.device != device:
                raise ValueError(f"{name}: on {value.device}, label is on {device}")

    def __len__(self) -> int:
        return self.label.shape[0]

    @property
    def device(self) -> torch.device:
        return self.label.device

    def index(self, idx: int | slice | Tensor | Sequence[int]) -> ObjectConditions:
        """The rows `idx` (a slice, an index or bool tensor, a list of ints; an int keeps the
        batch dimension: one row, B = 1)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        elif not isinstance(idx, slice | Tensor):
            idx = torch.as_tensor(list(idx), dtype=torch.long, device=self.device)
        return ObjectConditions(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})

    def to(self, device: torch.device | str) -> ObjectConditions:
        return ObjectConditions(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    @classmethod
    def cat(cls, items: Sequence[ObjectConditions]) -> ObjectConditions:
        """The rows of `items` one after the other (at least one item)."""
        if not items:
            raise ValueError("items: nothing to concatenate (empty list)")
        return cls(**{f.name: torch.cat([getattr(c, f.name) for c in items]) for f in fields(cls)})

    @classmethod
    def create(
        cls,
        *,
        label: Sequence[int | str] | Tensor,
        size: Sequence[Sequence[float]] | Tensor,
        view_angle: Sequence[float] | Tensor,
        depth: Sequence[float] | Tensor,
        sensor: Sequence[int | str] | Tensor,
    ) -> ObjectConditions:
        """From plain values: labels as `CLASS_NAMES` indices or names, sensors as
        `SENSOR_NAMES` indices or names (e.g. "CAM_FRONT", "LIDAR_TOP"); floats to float32."""
        return cls(
            label=_indices("label", label, CLASS_NAMES),
            size=torch.as_tensor(size, dtype=torch.float32).reshape(-1, 3),
            view_angle=torch.as_tensor(view_angle, dtype=torch.float32),
            depth=torch.as_tensor(depth, dtype=torch.float32),
            sensor=_indices("sensor", sensor, SENSOR_NAMES),
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe lists (float32 values as Python floats; the class and sensor names
        beside their indices, for people reading a saved grid's conditions)."""
        out: dict[str, Any] = {
            f.name: getattr(self, f.name).detach().cpu().tolist() for f in fields(self)
        }
        out["class_name"] = [_name(CLASS_NAMES, i) for i in out["label"]]
        out["sensor_name"] = [_name(SENSOR_NAMES, i) for i in out["sensor"]]
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ObjectConditions:
        """The inverse of `to_dict` (float fields as float32; the names are not needed)."""
        missing = [f.name for f in fields(cls) if f.name not in data]
        if missing:
            raise ValueError(f"{missing[0]}: missing from the conditions (keys: {sorted(data)})")
        return cls(
            label=torch.as_tensor(data["label"], dtype=torch.long).reshape(-1),
            size=torch.as_tensor(data["size"], dtype=torch.float32).reshape(-1, 3),
            view_angle=torch.as_tensor(data["view_angle"], dtype=torch.float32).reshape(-1),
            depth=torch.as_tensor(data["depth"], dtype=torch.float32).reshape(-1),
            sensor=torch.as_tensor(data["sensor"], dtype=torch.long).reshape(-1),
        )


def _name(names: Sequence[str], i: int) -> str:
    return names[i] if 0 <= i < len(names) else f"<{i}>"


def _indices(field: str, values: Sequence[int | str] | Tensor, names: Sequence[str]) -> Tensor:
    if isinstance(values, Tensor):
        return values.to(torch.long).reshape(-1)
    out = []
    for v in values:
        if isinstance(v, str):
            if v not in names:
                raise ValueError(f"{field}: unknown name {v!r}; known: {list(names)}")
            v = names.index(v)
        out.append(int(v))
    return torch.tensor(out, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Embedding
# ---------------------------------------------------------------------------------------------
NUM_CONTINUOUS = 6  # log w, log l, log h, sin(view_angle), cos(view_angle), log1p(depth)


def continuous_features(conds: ObjectConditions) -> Tensor:
    """`[B, 6]` float32: log of the size (3), sin and cos of the view angle, log1p of the depth
    (each of order 1 over the data's range: sizes 0.3-20 m, depths 0-80 m)."""
    size = conds.size.float().clamp_min(1e-3)  # [B, 3]
    angle = conds.view_angle.float()  # [B]
    depth = conds.depth.float().clamp_min(0.0)  # [B]
    return torch.cat(
        [size.log(), angle.sin()[:, None], angle.cos()[:, None], depth.log1p()[:, None]], 1
    )  # [B, 6]


class ConditionEmbedding(nn.Module):
    """`ObjectConditions` -> `[B, dim]`: a class embedding plus a sensor embedding plus an MLP of
    the continuous features (`continuous_features`), summed.

    `forward(conds, drop)` replaces the rows where `drop` is True by one learned null
    embedding (classifier-free guidance: training drops rows at random, drawn by the caller
    with its own generator; sampling passes all-True for the unconditional branch).
    """

    def __init__(
        self,
        *,
        dim: int,
        num_classes: int = len(CLASS_NAMES),
        num_sensors: int = len(SENSOR_NAMES),
    ) -> None:
        super().__init__()
        if dim <= 0:
            raise ValueError(f"dim: must be positive, got {dim}")
        if num_classes <= 0 or num_sensors <= 0:
            raise ValueError(f"num_classes={num_classes}, num_sensors={num_sensors}: must be > 0")
        self.dim = dim
        self.num_classes = num_classes
        self.num_sensors = num_sensors
        self.class_embedding = nn.Embedding(num_classes, dim)
        self.sensor_embedding = nn.Embedding(num_sensors, dim)
        self.continuous = nn.Sequential(
            nn.Linear(NUM_CONTINUOUS, dim), nn.SiLU(), nn.Linear(dim, dim)
        )
        self.null = nn.Parameter(torch.randn(dim) * 0.02)  # [dim]

    def forward(self, conds: ObjectConditions, drop: Tensor | None = None) -> Tensor:
        """Args:
            conds: B objects' conditions.
            drop: `[B]` bool or None; True rows get the null embedding.

        Returns:
            `[B, dim]` float32.
        """
        B = len(conds)
        label, sensor = conds.label, conds.sensor
        if B and (int(label.min()) < 0 or int(label.max()) >= self.num_classes):
            raise ValueError(
                f"label: values must be in [0, {self.num_classes}), got "
                f"{int(label.min())}..{int(label.max())}"
            )
        if B and (int(sensor.min()) < 0 or int(sensor.max()) >= self.num_sensors):
            raise ValueError(
                f"sensor: values must be in [0, {self.num_sensors}), got "
                f"{int(sensor.min())}..{int(sensor.max())}"
            )
        out = (
            self.class_embedding(label)  # [B, dim]
            + self.sensor_embedding(sensor)  # [B, dim]
            + self.continuous(continuous_features(conds).to(self.null.dtype))  # [B, dim]
        )
        if drop is None:
            return out
        if drop.dtype != torch.bool or tuple(drop.shape) != (B,):
            raise ValueError(
                f"drop: must be a [{B}] bool tensor, got {drop.dtype} {list(drop.shape)}"
            )
        return torch.where(drop[:, None], self.null[None, :].expand(B, -1), out)  # [B, dim]

    def with_null(self, conds: ObjectConditions) -> Tensor:
        """`[2B, dim]`: the B conditional rows, then B null rows (classifier-free guidance
        runs both in one batch; `guided` combines the two halves of the output)."""
        B = len(conds)
        cond = self(conds)  # [B, dim]
        return torch.cat([cond, self.null[None, :].expand(B, -1)])  # [2B, dim]


def guided(conditional: Tensor, null: Tensor, weight: float) -> Tensor:
    """Classifier-free guidance, HART's convention: `c + w (c - u)` = `(1 + w) c - w u`
    (w = 0: the conditional output alone). Logits or noise predictions of the same shape."""
    return conditional + weight * (conditional - null)


# ---------------------------------------------------------------------------------------------
# Range of the training conditions
# ---------------------------------------------------------------------------------------------
@dataclass
class ConditionRange:
    """What the training conditions covered, to refuse conditions a generator never saw.

    Attributes:
        counts: class name -> number of training rows (classes with at least one).
        size_min / size_max: class name -> (w, l, h) smallest / largest of that class, m.
        depth_min / depth_max: m, over every row.
        sensors: the names of the sensors present (`SENSOR_NAMES`).
    """

    counts: dict[str, int]
    size_min: dict[str, tuple[float, float, float]]
    size_max: dict[str, tuple[float, float, float]]
    depth_min: float
    depth_max: float
    sensors: tuple[str, ...]

    @classmethod
    def fit(cls, conds: ObjectConditions) -> ConditionRange:
        """From the training set's conditions (at least one row)."""
        if len(conds) == 0:
            raise ValueError("conds: no training conditions to fit a range to (0 rows)")
        conds = conds.to("cpu")
        label, size = conds.label, conds.size.double()  # [B], [B, 3]
        counts, size_min, size_max = {}, {}, {}
        for c in torch.unique(label).tolist():
            name = _name(CLASS_NAMES, c)
            rows = size[label == c]  # [n, 3]
            counts[name] = int(rows.shape[0])
            size_min[name] = tuple(float(v) for v in rows.min(0).values)
            size_max[name] = tuple(float(v) for v in rows.max(0).values)
        sensors = tuple(_name(SENSOR_NAMES, s) for s in torch.unique(conds.sensor).tolist())
        return cls(
            counts=counts,
            size_min=size_min,
            size_max=size_max,
            depth_min=float(conds.depth.min()),
            depth_max=float(conds.depth.max()),
            sensors=sensors,
        )

    def check(
        self, conds: ObjectConditions, *, size_margin: float = 0.5, depth_margin: float = 0.5
    ) -> None:
        """Raises ValueError naming the field, the first offending row and the allowed range:
        a class with no training rows, an unknown sensor, a size outside
        `[min * (1 - size_margin), max * (1 + size_margin)]` of its class (each of w, l, h), a
        depth outside `[depth_min * (1 - depth_margin), depth_max * (1 + depth_margin)]`, a
        non-finite view angle."""
        if not 0.0 <= size_margin < 1.0 or not 0.0 <= depth_margin < 1.0:
            raise ValueError(f"size_margin={size_margin}, depth_margin={depth_margin}: need [0, 1)")
        conds = conds.to("cpu")
        labels, sensors = conds.label.tolist(), conds.sensor.tolist()
        sizes, depths = conds.size.double().tolist(), conds.depth.double().tolist()
        angles = conds.view_angle.double().tolist()
        low_d, high_d = self.depth_min * (1 - depth_margin), self.depth_max * (1 + depth_margin)
        for row, (c, s, size, depth, angle) in enumerate(
            zip(labels, sensors, sizes, depths, angles)
        ):
            name = _name(CLASS_NAMES, c)
            if name not in self.counts:
                raise ValueError(
                    f"label: row {row} is class {name!r}, which has no training examples "
                    f"(classes trained on: {sorted(self.counts)})"
                )
            sensor = _name(SENSOR_NAMES, s)
            if sensor not in self.sensors:
                raise ValueError(
                    f"sensor: row {row} is sensor {sensor!r}, not among the training sensors "
                    f"{list(self.sensors)}"
                )
            lo = [v * (1 - size_margin) for v in self.size_min[name]]
            hi = [v * (1 + size_margin) for v in self.size_max[name]]
            for k, axis in enumerate("wlh"):
                if not lo[k] <= size[k] <= hi[k]:
                    raise ValueError(
                        f"size: row {row} ({name!r}) has {axis} = {size[k]:.3f} m, outside "
                        f"[{lo[k]:.3f}, {hi[k]:.3f}] m (training {axis} range "
                        f"[{self.size_min[name][k]:.3f}, {self.size_max[name][k]:.3f}] m, "
                        f"margin {size_margin})"
                    )
            if not low_d <= depth <= high_d:
                raise ValueError(
                    f"depth: row {row} has depth {depth:.3f} m, outside [{low_d:.3f}, "
                    f"{high_d:.3f}] m (training range [{self.depth_min:.3f}, "
                    f"{self.depth_max:.3f}] m, margin {depth_margin})"
                )
            if not math.isfinite(angle):
                raise ValueError(f"view_angle: row {row} is {angle} (must be finite)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, with a kind and format version."""
        return {
            "kind": RANGE_KIND,
            "format_version": RANGE_FORMAT_VERSION,
            "counts": dict(self.counts),
            "size_min": {k: list(v) for k, v in self.size_min.items()},
            "size_max": {k: list(v) for k, v in self.size_max.items()},
            "depth_min": self.depth_min,
            "depth_max": self.depth_max,
            "sensors": list(self.sensors),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ConditionRange:
        if data.get("kind") != RANGE_KIND or data.get("format_version") != RANGE_FORMAT_VERSION:
            raise ValueError(
                f"kind/format_version: expected {RANGE_KIND!r} version {RANGE_FORMAT_VERSION}, "
                f"got {data.get('kind')!r} version {data.get('format_version')!r}"
            )
        try:
            return cls(
                counts={k: int(v) for k, v in data["counts"].items()},
                size_min={k: tuple(float(x) for x in v) for k, v in data["size_min"].items()},
                size_max={k: tuple(float(x) for x in v) for k, v in data["size_max"].items()},
                depth_min=float(data["depth_min"]),
                depth_max=float(data["depth_max"]),
                sensors=tuple(data["sensors"]),
            )
        except KeyError as exc:
            raise ValueError(f"{exc.args[0]}: missing from the condition range") from None
