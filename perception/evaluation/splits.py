"""Which samples a nuScenes split holds, read straight from a dataroot's JSON tables.

The devkit answers the same question only after loading the whole database (`NuScenes(...)`);
a submission check needs just `scene.json` and `sample.json`, so it reads those. Split names
follow the devkit: its predefined splits (`train`, `val`, `test`, `mini_train`, `mini_val`,
`train_detect`, `train_track`) and, like nuscenes-devkit >= 1.1.11, custom splits listed in
`<root>/<version>/splits.json` (`{"split name": ["scene-0001", ...]}`).
"""

from __future__ import annotations

import json
from pathlib import Path

from ..datasets.sensors import read_table

# Which database version each predefined split belongs to: the rule the devkit asserts in
# `nuscenes.eval.common.loaders.load_gt` (a version name ends with this suffix).
_SPLIT_VERSION_SUFFIX: dict[str, str] = {
    "train": "trainval",
    "val": "trainval",
    "train_detect": "trainval",
    "train_track": "trainval",
    "mini_train": "mini",
    "mini_val": "mini",
    "test": "test",
}


class SplitError(ValueError):
    """A split that does not exist, or does not belong to the database version asked for."""


def predefined_splits() -> dict[str, list[str]]:
    """The devkit's predefined splits: split name -> scene names."""
    from nuscenes.utils.splits import create_splits_scenes

    return create_splits_scenes()


def is_predefined_split(split: str) -> bool:
    return split in predefined_splits()


def check_version_split(version: str, split: str) -> None:
    """Raises `SplitError` if the devkit would refuse to evaluate predefined `split` on
    `version` (e.g. `val` on `v1.0-mini`). Custom splits pass: any version may hold them."""
    suffix = _SPLIT_VERSION_SUFFIX.get(split)
    if suffix is not None and not version.endswith(suffix):
        matching = sorted(s for s, v in _SPLIT_VERSION_SUFFIX.items() if version.endswith(v))
        raise SplitError(
            f"split {split!r} belongs to the *-{suffix} database, not {version!r}; "
            f"{version!r} has the splits {matching or 'none predefined'} "
            f"(or a custom split in {version}/splits.json)"
        )


def _read_table(root: Path, version: str, name: str) -> list[dict]:
    try:
        return read_table(root, version, name)
    except FileNotFoundError:
        path = root / version / f"{name}.json"
        raise SplitError(
            f"{path} not found: is {str(root)!r} a nuScenes dataroot holding version {version!r}?"
        ) from None


def split_scene_names(root: str | Path, version: str, split: str) -> list[str]:
    """Scene names of `split`: predefined (checked against `version`) or custom
    (`<root>/<version>/splits.json`)."""
    splits = predefined_splits()
    if split in splits:
        check_version_split(version, split)
        return list(splits[split])
    custom_path = Path(root) / version / "splits.json"
    if not custom_path.is_file():
        raise SplitError(
            f"unknown split {split!r}: not one of the devkit's {sorted(splits)} and there is no "
            f"{custom_path} for custom splits"
        )
    with open(custom_path) as f:
        custom = json.load(f)
    if split not in custom:
        raise SplitError(
            f"unknown split {split!r}: not one of the devkit's {sorted(splits)} nor of the "
            f"custom splits {sorted(custom)} in {custom_path}"
        )
    return list(custom[split])


def split_sample_tokens(root: str | Path, version: str, split: str) -> list[str]:
    """Tokens of every sample (keyframe) in `split` of the `version` tables under `root`, in
    `sample.json` order. Raises `SplitError` if the split is unknown, belongs to another
    version, or holds no sample of this database."""
    root = Path(root)
    scene_names = set(split_scene_names(root, version, split))
    scene_tokens = {
        s["token"] for s in _read_table(root, version, "scene") if s["name"] in scene_names
    }
    tokens = [
        s["token"] for s in _read_table(root, version, "sample") if s["scene_token"] in scene_tokens
    ]
    if not tokens:
        raise SplitError(
            f"split {split!r} holds no sample of {root / version} "
            f"(none of its {len(scene_names)} scenes is in scene.json)"
        )
    return tokens
