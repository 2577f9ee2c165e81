"""`check_dataroot`: every problem in a nuScenes dataroot at once (the devkit stops at the
first). Reads the JSON tables directly, so it works where the devkit cannot load the root.

What it covers: every table the devkit loads (missing, not JSON, not a list of records),
every token field of every table (`REFERENCES`: a missing field or a token that names no
record of its table), logs that no map lists, map masks, and the files of `sample_data`:
LiDAR `.pcd.bin` (missing, truncated, NaN/inf) and camera images (missing, undecodable or
damaged JPEG/PNG, size other than the table says); other files (radar `.pcd`, which nothing
here reads) only have to exist. By default every file is read, keyframes and sweeps;
`keyframes_only=True` skips the sweeps and says how many were not read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from .io import DataError, read_image, read_points
from .sensors import read_table

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

# Every token field of the nuScenes schema (the devkit's tables, v1.0): (table, field,
# referenced table). List fields hold tokens of the referenced table each.
REFERENCES = (
    ("instance", "category_token", "category"),
    ("instance", "first_annotation_token", "sample_annotation"),
    ("instance", "last_annotation_token", "sample_annotation"),
    ("calibrated_sensor", "sensor_token", "sensor"),
    ("scene", "log_token", "log"),
    ("scene", "first_sample_token", "sample"),
    ("scene", "last_sample_token", "sample"),
    ("sample", "scene_token", "scene"),
    ("sample", "next", "sample"),
    ("sample", "prev", "sample"),
    ("sample_data", "sample_token", "sample"),
    ("sample_data", "ego_pose_token", "ego_pose"),
    ("sample_data", "calibrated_sensor_token", "calibrated_sensor"),
    ("sample_data", "next", "sample_data"),
    ("sample_data", "prev", "sample_data"),
    ("sample_annotation", "sample_token", "sample"),
    ("sample_annotation", "instance_token", "instance"),
    ("sample_annotation", "attribute_tokens", "attribute"),
    ("sample_annotation", "visibility_token", "visibility"),
    ("sample_annotation", "next", "sample_annotation"),
    ("sample_annotation", "prev", "sample_annotation"),
    ("map", "log_tokens", "log"),
)
LIST_FIELDS = frozenset({("sample_annotation", "attribute_tokens"), ("map", "log_tokens")})
# Fields where "" means "none" (the ends of a next/prev chain).
OPTIONAL_FIELDS = frozenset({"next", "prev"})
# Dangling tokens named per problem line (the count says how many there are in all).
EXAMPLES = 3


@dataclass(frozen=True)
class Problem:
    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass
class CheckResult:
    """What `check_dataroot` found (`problems`) and what it read: `files_checked` sensor
    files, and per kind the `files_not_checked` (empty unless `keyframes_only`)."""

    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    files_not_checked: dict[str, int] = field(default_factory=dict)

    def scope(self) -> str:
        """One line saying what was and was not read."""
        text = f"{self.files_checked} sensor file(s) read"
        if self.files_not_checked:
            skipped = ", ".join(f"{n} {kind}" for kind, n in self.files_not_checked.items())
            text += (
                f"; NOT read: {skipped} (sweeps; training reads LiDAR sweeps when "
                "data.sweeps > 1 and earlier camera frames when data.clip_frames > 1)"
            )
        return text


def read_tables(table_dir: Path) -> tuple[dict[str, list[dict]], list[Problem]]:
    """The tables of `table_dir` that parse as lists of records with a `token`, and a problem
    for each that is missing or malformed."""
    tables: dict[str, list[dict]] = {}
    problems: list[Problem] = []
    for name in TABLES:
        path = table_dir / f"{name}.json"
        try:
            data = read_table(table_dir.parent, table_dir.name, name)
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
    return tables, problems


def reference_problems(tables: dict[str, list[dict]], table_dir: Path) -> list[Problem]:
    """Every token field of every record (`REFERENCES`) that is missing or names no record of
    its table, and every log no map lists (the devkit needs each log's map). One problem per
    (table, field), with the count and the first records: `record <token>: <field> <value>`."""
    problems: list[Problem] = []
    tokens = {name: {r["token"] for r in records} for name, records in tables.items()}
    for table, name, target in REFERENCES:
        if table not in tables or target not in tokens:
            continue  # the missing table is a problem of its own
        is_list = (table, name) in LIST_FIELDS
        missing, dangling = [], []
        for record in tables[table]:
            if name not in record:
                missing.append(record["token"])
                continue
            value = record[name]
            values = value if is_list and isinstance(value, list) else [value]
            if is_list and not isinstance(value, list):
                dangling.append((record["token"], value))
                continue
            for v in values:
                if name in OPTIONAL_FIELDS and v == "":
                    continue
                if not isinstance(v, str) or v not in tokens[target]:
                    dangling.append((record["token"], v))
        path = str(table_dir / f"{table}.json")
        if missing:
            first = ", ".join(missing[:EXAMPLES])
            problems.append(
                Problem(path, f"{len(missing)} record(s) without the field {name!r} ({first})")
            )
        if dangling:
            first = "; ".join(f"record {t}: {name} {v!r}" for t, v in dangling[:EXAMPLES])
            problems.append(
                Problem(
                    path,
                    f"{len(dangling)} {name} token(s) not in {target}.json ({first}"
                    f"{'; ...' if len(dangling) > EXAMPLES else ''})",
                )
            )
    if "log" in tables and "map" in tables:
        mapped = {
            t
            for m in tables["map"]
            if isinstance(m.get("log_tokens"), list)
            for t in m["log_tokens"]
        }
        unmapped = [r["token"] for r in tables["log"] if r["token"] not in mapped]
        if unmapped:
            problems.append(
                Problem(
                    str(table_dir / "log.json"),
                    f"{len(unmapped)} log record(s) that no map.json record lists in log_tokens "
                    f"({', '.join(unmapped[:EXAMPLES])})",
                )
            )
    return problems


def check_tables(root: str | Path, version: str) -> list[Problem]:
    """The table problems of `check_dataroot` alone (no sensor file is read)."""
    table_dir = Path(root) / version
    if not table_dir.is_dir():
        return [Problem(str(table_dir), f"no table folder for version {version!r}")]
    tables, problems = read_tables(table_dir)
    return problems + reference_problems(tables, table_dir)


def _file_problem(root: Path, record: dict) -> Problem | None:
    path = root / str(record.get("filename", ""))
    try:
        if path.name.endswith(".pcd.bin"):
            read_points(path)
        elif record.get("fileformat") in ("jpg", "png"):
            read_image(path, (record["width"], record["height"]))
        elif not path.is_file():  # radar .pcd and others: this stack does not read them
            return Problem(str(path), "sensor file is missing")
    except DataError as exc:
        return Problem(exc.path, exc.problem)
    except KeyError as exc:
        return Problem(str(path), f"sample_data record {record['token']} has no field {exc}")
    return None


def _kind(record: dict) -> str:
    if str(record.get("filename", "")).endswith(".pcd.bin"):
        return "LiDAR"
    return "camera" if record.get("fileformat") in ("jpg", "png") else "other"


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def check_dataroot(
    root: str | Path,
    version: str,
    *,
    keyframes_only: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> CheckResult:
    """Returns every problem found (see the module docstring for what is covered).

    Every sensor file is read (keyframes and sweeps) on `workers` threads (default: the CPU
    count), unless `keyframes_only`.
    """
    root = Path(root)
    table_dir = root / version
    if not table_dir.is_dir():
        return CheckResult([Problem(str(table_dir), f"no table folder for version {version!r}")])
    tables, problems = read_tables(table_dir)
    problems += reference_problems(tables, table_dir)
    for record in tables.get("map", []):
        if not (root / str(record.get("filename", ""))).is_file():
            problems.append(
                Problem(str(root / str(record.get("filename", ""))), "map mask is missing")
            )

    sample_data = tables.get("sample_data", [])
    records = [r for r in sample_data if not keyframes_only or r.get("is_key_frame", False)]
    not_checked: dict[str, int] = {}
    if keyframes_only:
        for r in sample_data:
            if not r.get("is_key_frame", False):
                kind = f"{_kind(r)} sweep file(s)"
                not_checked[kind] = not_checked.get(kind, 0) + 1
    workers = max(1, workers or os.cpu_count() or 1)
    bar = tqdm(total=len(records), desc="check files", unit="file", disable=not progress)
    with ThreadPoolExecutor(workers) as pool, bar:  # decoding and reading release the GIL
        for chunk in _chunks(records, 1024):  # bounded: a real root has ~2M files
            for found in pool.map(lambda r: _file_problem(root, r), chunk):
                if found is not None:
                    problems.append(found)
            bar.update(len(chunk))
    return CheckResult(problems, len(records), not_checked)
