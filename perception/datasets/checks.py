"""`check_dataroot`: every problem in a nuScenes dataroot at once (the devkit stops at the
first). Reads the JSON tables directly, so it works where the devkit cannot load the root."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .io import DataError, read_image, read_points

TABLES = (
    "category",
    "attribute",
    "visibility",
    "instance",
    "sensor",
    "calibrated_sensor",
    "ego_pose",
    "log",
    "scene",
    "sample",
    "sample_data",
    "sample_annotation",
    "map",
)

# (table, field, referenced table) pairs the devkit follows when it builds its indices.
REFERENCES = (
    ("sample", "scene_token", "scene"),
    ("sample_data", "sample_token", "sample"),
    ("sample_data", "calibrated_sensor_token", "calibrated_sensor"),
    ("sample_data", "ego_pose_token", "ego_pose"),
    ("sample_annotation", "sample_token", "sample"),
    ("sample_annotation", "instance_token", "instance"),
    ("instance", "category_token", "category"),
    ("calibrated_sensor", "sensor_token", "sensor"),
    ("scene", "log_token", "log"),
)


@dataclass(frozen=True)
class Problem:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


def check_dataroot(
    root: str | Path, version: str, *, all_files: bool = False, progress: bool = True
) -> list[Problem]:
    """Returns every problem found: missing or malformed tables, dangling references, missing
    map masks, missing/truncated/non-finite LiDAR files, undecodable or mis-sized images.

    Files of keyframes are checked by default; `all_files=True` also checks every sweep.
    """
    root = Path(root)
    problems: list[Problem] = []
    table_dir = root / version
    if not table_dir.is_dir():
        return [Problem(str(table_dir), f"no table folder for version {version!r}")]
    tables: dict[str, list[dict]] = {}
    for name in TABLES:
        path = table_dir / f"{name}.json"
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            problems.append(Problem(str(path), "table is missing"))
            continue
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            problems.append(Problem(str(path), f"not valid JSON: {exc}"))
            continue
        if not isinstance(data, list) or not all(
            isinstance(r, dict) and "token" in r for r in data
        ):
            problems.append(Problem(str(path), "must be a JSON list of records with a 'token'"))
            continue
        tables[name] = data

    tokens = {name: {r["token"] for r in records} for name, records in tables.items()}
    for table, field, target in REFERENCES:
        if table not in tables or target not in tokens:
            continue
        dangling = [r for r in tables[table] if r.get(field) not in tokens[target]]
        if dangling:
            problems.append(
                Problem(
                    str(table_dir / f"{table}.json"),
                    f"{len(dangling)} record(s) whose {field} is not in {target}.json "
                    f"(first: token {dangling[0]['token']})",
                )
            )
    for record in tables.get("map", []):
        if not (root / record.get("filename", "")).is_file():
            problems.append(Problem(str(root / record.get("filename", "")), "map mask is missing"))

    records = [
        r for r in tables.get("sample_data", []) if all_files or r.get("is_key_frame", False)
    ]
    for record in tqdm(records, desc="check files", unit="file", disable=not progress):
        path = root / record.get("filename", "")
        try:
            if record.get("fileformat") == "pcd":
                read_points(path)
            elif record.get("fileformat") in ("jpg", "png"):
                read_image(path, (record["width"], record["height"]))
        except DataError as exc:
            problems.append(Problem(exc.path, exc.problem))
    return problems
