"""Checkpoints on disk: safetensors + JSON + YAML, written atomically, never pickled.

The one module that reads and writes checkpoints, below everything that uses them: the
training engine saves and resumes with it, and inference (`tools/test.py`, the node, ONNX
export) reads weights with it (through `perception.models.loading.load_model`) without
importing the training loop. It imports only the config layer.

`resolve_checkpoint` is the one rule for what a path names (a checkpoint directory, or a work
dir's latest checkpoint); `read_training_state` and `read_config` read one file of a
checkpoint directory each, verified against its manifest when it has one.

Layout of one checkpoint, ``<work_dir>/checkpoints/step_<N>/``:

=========================  ==========================================================
``model.safetensors``      the model's state dict
``optimizer.safetensors``  optimizer tensors, keys like ``state.<param_id>.<name>``
``optimizer.json``         the rest of the optimizer state (scalars, ``param_groups``)
``scheduler.json``         LR-scheduler state (+ ``scheduler.safetensors`` if it holds tensors)
``rng.safetensors``        torch CPU generator state and CUDA generator states, if any
``rng.json``               Python ``random`` and numpy global RNG states
``training_state.json``    ``step``, ``epoch`` and the trainer's ``extra`` dict
``config.yaml``            the fully resolved experiment config
``checkpoint.json``        manifest: kind, format version, sha256 of every other file
=========================  ==========================================================

``<work_dir>/checkpoints/latest`` names the newest checkpoint directory.

A checkpoint is written into a temporary directory next to its target (``.tmp-...``), each
file fsynced, then moved into place with ``os.replace``; the ``latest`` pointer is replaced the
same way. A process killed at any point leaves the previous checkpoint and pointer intact;
leftover temporary directories are ignored by the readers and removed by the next save.

Non-tensor state is stored as JSON with a few tagged forms so it rebuilds exactly:
``{"__tuple__": [...]}``, ``{"__intdict__": [[k, v], ...]}`` (dicts with non-string keys),
``{"__float__": "inf"}`` and ``{"__tensor__": "<safetensors key>"}``.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
from pydantic import BaseModel
from torch import nn

from .config import ConfigError, ExperimentConfig, load_config, save_config

CHECKPOINT_FORMAT_VERSION = 1
CHECKPOINT_KIND = "perception.checkpoint"

CHECKPOINTS_DIRNAME = "checkpoints"
LATEST_NAME = "latest"
MANIFEST_NAME = "checkpoint.json"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
TRAINING_STATE_FILE = "training_state.json"

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, corrupt, foreign or does not fit the objects given."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A path that names no checkpoint (nothing there, or a directory without one); a
    `FileNotFoundError` too, for callers that treat it as a missing file."""


@dataclass(frozen=True)
class TrainingState:
    """What a trainer needs to resume, besides the objects restored in place."""

    step: int
    epoch: int
    config: BaseModel  # the ExperimentConfig of a detector, a generator's config otherwise
    path: Path  # the checkpoint directory it came from
    extra: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Encoding non-tensor state as JSON (tensors go to a side table for safetensors)


def _encode(obj: Any, tensors: dict[str, torch.Tensor], key: str) -> Any:
    """Returns a JSON-able form of `obj`; tensors are moved into `tensors` under `key`."""
    if isinstance(obj, torch.Tensor):
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__tensor__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, np.integer | np.floating | np.bool_):
        return _encode(obj.item(), tensors, key)
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj) and not any(k.startswith("__") for k in obj):
            return {k: _encode(v, tensors, f"{key}.{k}") for k, v in obj.items()}
        items = []
        for k, v in obj.items():
            if not isinstance(k, int | str) or isinstance(k, bool):
                raise CheckpointError(f"{key}: dict key {k!r} is not an int or str")
            items.append([k, _encode(v, tensors, f"{key}.{k}")])
        return {"__intdict__": items}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{key}.{i}") for i, v in enumerate(obj)]
    raise CheckpointError(
        f"{key}: cannot store a {type(obj).__name__} without pickle "
        "(only tensors, numbers, str, None, lists, tuples and dicts)"
    )


def _decode(obj: Any, tensors: dict[str, torch.Tensor], source: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, source) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if len(obj) == 1:
        ((tag, value),) = obj.items()
        if tag == "__tensor__":
            if value not in tensors:
                raise CheckpointError(f"{source}: tensor {value!r} is missing")
            return tensors[value]
        if tag == "__float__":
            return float(value)
        if tag == "__tuple__":
            return tuple(_decode(v, tensors, source) for v in value)
        if tag == "__intdict__":
            return {k: _decode(v, tensors, source) for k, v in value}
    return {k: _decode(v, tensors, source) for k, v in obj.items()}


def _strip_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensor table with a leading `prefix.` dropped from every key (file keys)."""
    return {k[len(prefix) + 1 :]: v for k, v in tensors.items()}


# --------------------------------------------------------------------------------------
# File writing


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> str:
    """Writes `data`, fsyncs it and returns its sha256 (hex)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    return hashlib.sha256(data).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, allow_nan=False) + "\n").encode()


def _safetensors_bytes(tensors: dict[str, torch.Tensor]) -> bytes:
    """safetensors refuses tensors that share memory (tied weights); store copies."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        value = value.detach().to("cpu").contiguous()
        storage = value.untyped_storage().data_ptr()
        if value.numel() and storage in seen:
            value = value.clone()
        seen.add(storage)
        out[key] = value
    return safetensors.torch.save(out)


def _unwrap(model: nn.Module) -> nn.Module:
    parallel = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, parallel) else model


# --------------------------------------------------------------------------------------
# RNG state


def _rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda.{i}"] = state
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 (the global RNG is what we save)
    plain = {
        "python_random": {"version": version, "state": list(internal), "gauss_next": gauss_next},
        "numpy": {
            "name": name,
            "keys": [int(k) for k in keys],
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
    }
    return tensors, plain


def _restore_rng(tensors: dict[str, torch.Tensor], plain: dict[str, Any]) -> None:
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("torch_cuda.")]
    if cuda and torch.cuda.is_available():
        n = min(len(cuda), torch.cuda.device_count())
        for i in range(n):
            torch.cuda.set_rng_state(cuda[i], device=i)
    py = plain["python_random"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    npy = plain["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npy["name"],
            np.asarray(npy["keys"], dtype=np.uint32),
            npy["pos"],
            npy["has_gauss"],
            npy["cached_gaussian"],
        )
    )


# --------------------------------------------------------------------------------------
# Directory bookkeeping


def _checkpoints_dir(work_dir: Path) -> Path:
    return Path(work_dir) / CHECKPOINTS_DIRNAME


def _step_dirs(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoint directories (with a manifest) under `root`, oldest step first."""
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and (child / MANIFEST_NAME).is_file():
            found.append((int(match.group(1)), child))
    return sorted(found)


def _remove_dir(path: Path) -> None:
    """Renames first, so a delete cut short never leaves a half checkpoint under its name."""
    trash = path.with_name(f"{_TRASH_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_leftovers(root: Path) -> None:
    for child in root.iterdir():
        if child.name.startswith((_TMP_PREFIX, _TRASH_PREFIX)):
            if child.is_dir():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)


def _write_latest(root: Path, name: str) -> None:
    tmp = root / f"{_TMP_PREFIX}{LATEST_NAME}-{uuid.uuid4().hex[:8]}"
    _write_file(tmp, f"{name}\n".encode())
    os.replace(tmp, root / LATEST_NAME)
    _fsync_dir(root)


def find_latest(work_dir: str | Path) -> Path | None:
    """The newest checkpoint directory of `work_dir`, or None if it has none.

    Follows the ``latest`` pointer; if that is missing or names no complete checkpoint, falls
    back to the highest ``step_<N>`` directory that holds a manifest.
    """
    root = _checkpoints_dir(Path(work_dir))
    pointer = root / LATEST_NAME
    if pointer.is_file():
        name = pointer.read_text().strip()
        if _STEP_DIR.match(name) and (root / name / MANIFEST_NAME).is_file():
            return root / name
    found = _step_dirs(root)
    return found[-1][1] if found else None


# --------------------------------------------------------------------------------------
# Saving


def save_checkpoint(
    work_dir: str | Path,
    *,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    config: BaseModel,
    epoch: int = 0,
    extra: dict[str, Any] | None = None,
    keep: int | None = 3,
) -> Path:
    """Writes ``<work_dir>/checkpoints/step_<step>/`` atomically and points ``latest`` at it.

    `scheduler` is anything with ``state_dict()``/``load_state_dict()`` (a torch LR
    scheduler). `extra` is a JSON-able dict stored with the step (e.g. the best metric).
    `keep` is how many checkpoints (highest steps) remain afterwards; the one just written is
    always kept; None keeps all. Returns the checkpoint directory.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if keep is not None and keep < 1:
        raise ValueError(f"keep must be >= 1 or None, got {keep}")
    extra = dict(extra or {})
    try:
        json.dumps(extra, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"extra must be a JSON-able dict: {exc}") from None

    root = _checkpoints_dir(Path(work_dir))
    root.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(root)
    name = f"step_{step}"
    target = root / name
    tmp = root / f"{_TMP_PREFIX}{name}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()

    files: dict[str, dict[str, Any]] = {}

    def write(filename: str, data: bytes) -> None:
        files[filename] = {"sha256": _write_file(tmp / filename, data), "bytes": len(data)}

    write(MODEL_FILE, _safetensors_bytes(_unwrap(model).state_dict()))

    if optimizer is not None:
        tensors: dict[str, torch.Tensor] = {}
        plain = _encode(optimizer.state_dict(), tensors, "optimizer")
        write("optimizer.safetensors", _safetensors_bytes(_strip_prefix(tensors, "optimizer")))
        write("optimizer.json", _json_bytes(plain))

    if scheduler is not None:
        tensors = {}
        plain = _encode(scheduler.state_dict(), tensors, "scheduler")
        if tensors:
            write("scheduler.safetensors", _safetensors_bytes(_strip_prefix(tensors, "scheduler")))
        write("scheduler.json", _json_bytes(plain))

    rng_tensors, rng_plain = _rng_state()
    write("rng.safetensors", _safetensors_bytes(rng_tensors))
    write("rng.json", _json_bytes(rng_plain))

    write(TRAINING_STATE_FILE, _json_bytes({"step": step, "epoch": epoch, "extra": extra}))

    save_config(config, tmp / CONFIG_FILE)
    config_bytes = (tmp / CONFIG_FILE).read_bytes()
    write(CONFIG_FILE, config_bytes)

    from . import __version__

    manifest = {
        "kind": CHECKPOINT_KIND,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "step": step,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": torch.__version__,
        "perception_version": __version__,
        "files": files,
    }
    _write_file(tmp / MANIFEST_NAME, _json_bytes(manifest))  # last: marks the dir complete
    _fsync_dir(tmp)

    if target.exists():  # re-saving a step: move the old one aside first
        _remove_dir(target)
    os.replace(tmp, target)
    _fsync_dir(root)
    _write_latest(root, name)

    if keep is not None:
        others = [path for s, path in _step_dirs(root) if path != target]
        for path in others[: max(0, len(others) - (keep - 1))]:
            _remove_dir(path)
    return target


# --------------------------------------------------------------------------------------
# Loading


def resolve_checkpoint(path: str | Path) -> Path:
    """The checkpoint directory `path` names: itself when it holds a checkpoint (a manifest,
    or at least ``model.safetensors``), else the latest checkpoint of a work dir
    (`find_latest`). `CheckpointNotFoundError` naming the path when there is none."""
    path = Path(path)
    if not path.exists():
        raise CheckpointNotFoundError(f"checkpoint not found: {path}")
    if (path / MANIFEST_NAME).is_file() or (path / MODEL_FILE).is_file():
        return path
    latest = find_latest(path)
    if latest is None:
        raise CheckpointNotFoundError(
            f"{path}: no checkpoint here (no {MANIFEST_NAME} or {MODEL_FILE}, and no "
            f"{CHECKPOINTS_DIRNAME}/step_<N> under it)"
        )
    return latest


def work_dir_of(checkpoint: str | Path) -> Path:
    """The work dir a checkpoint directory belongs to: two levels up for
    ``<work_dir>/checkpoints/step_<N>``, else the directory itself."""
    directory = Path(checkpoint)
    return directory.parent.parent if directory.parent.name == CHECKPOINTS_DIRNAME else directory


class _Checkpoint:
    """A verified view of one checkpoint directory; `read` checks each file's sha256."""

    def __init__(self, path: Path) -> None:
        self.path = path
        manifest_path = path / MANIFEST_NAME
        try:
            manifest = json.loads(manifest_path.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{manifest_path}: missing; not a checkpoint") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{manifest_path}: unreadable manifest: {exc}") from None
        if not isinstance(manifest, dict) or manifest.get("kind") != CHECKPOINT_KIND:
            kind = manifest.get("kind") if isinstance(manifest, dict) else None
            raise CheckpointError(
                f"{manifest_path}: kind is {kind!r}, not {CHECKPOINT_KIND!r}; "
                "not a checkpoint of this project"
            )
        version = manifest.get("format_version")
        if version != CHECKPOINT_FORMAT_VERSION:
            raise CheckpointError(
                f"{manifest_path}: format_version {version!r} is not "
                f"{CHECKPOINT_FORMAT_VERSION}, the version this code reads"
            )
        files = manifest.get("files")
        if not isinstance(files, dict):
            raise CheckpointError(f"{manifest_path}: has no 'files' table")
        self.manifest = manifest
        self.files: dict[str, dict[str, Any]] = files

    def has(self, filename: str) -> bool:
        return filename in self.files

    def read(self, filename: str) -> bytes:
        file_path = self.path / filename
        if filename not in self.files:
            raise CheckpointError(f"{file_path}: not listed in {MANIFEST_NAME}")
        try:
            data = file_path.read_bytes()
        except FileNotFoundError:
            raise CheckpointError(f"{file_path}: missing (listed in {MANIFEST_NAME})") from None
        except OSError as exc:
            raise CheckpointError(f"{file_path}: cannot read: {exc.strerror}") from None
        expected = self.files[filename].get("sha256")
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise CheckpointError(
                f"{file_path}: sha256 mismatch (manifest {expected}, file {actual}); "
                "the file is corrupt or was changed after saving"
            )
        return data

    def tensors(self, filename: str) -> dict[str, torch.Tensor]:
        data = self.read(filename)
        try:
            return safetensors.torch.load(data)
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(
                f"{self.path / filename}: not a valid safetensors file: {exc}"
            ) from None

    def json(self, filename: str) -> Any:
        try:
            return json.loads(self.read(filename))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CheckpointError(f"{self.path / filename}: not valid JSON: {exc}") from None

    def config(self, schema: type[BaseModel] = ExperimentConfig) -> BaseModel:
        self.read(CONFIG_FILE)  # verifies the sha256
        try:
            return load_config(self.path / CONFIG_FILE, schema=schema)
        except ConfigError as exc:
            raise CheckpointError(f"{self.path / CONFIG_FILE}: invalid config: {exc}") from None


def _load_model_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    model = _unwrap(model)
    expected = set(model.state_dict())
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:

        def listed(keys: list[str]) -> str:
            shown = ", ".join(keys[:20])
            return shown + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")

        parts = []
        if missing:
            parts.append(f"missing keys (in the model, not the file): {listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys (in the file, not the model): {listed(unexpected)}")
        raise CheckpointError(f"{source}: does not fit the model; " + "; ".join(parts))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # shape mismatches
        raise CheckpointError(f"{source}: does not fit the model: {exc}") from None


def load_checkpoint(
    path_or_work_dir: str | Path,
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    restore_rng: bool = True,
    schema: type[BaseModel] = ExperimentConfig,
) -> TrainingState:
    """Restores `model` (and `optimizer`, `scheduler`, global RNGs) in place from a checkpoint.

    `path_or_work_dir` is a checkpoint directory or a work dir (its latest checkpoint is
    used). The manifest's kind, format version and every file's sha256 are checked first;
    any problem raises `CheckpointError` naming the file. Model keys must match exactly.
    `schema` is the config's type (a generator's checkpoint holds its own config).
    """
    ckpt = _Checkpoint(resolve_checkpoint(path_or_work_dir))
    model_state = ckpt.tensors(MODEL_FILE)
    config = ckpt.config(schema)
    training = ckpt.json(TRAINING_STATE_FILE)
    optimizer_state = scheduler_state = None
    if optimizer is not None:
        if not ckpt.has("optimizer.json"):
            raise CheckpointError(f"{ckpt.path}: holds no optimizer state, but one was given")
        tensors = ckpt.tensors("optimizer.safetensors")
        tensors = {f"optimizer.{k}": v for k, v in tensors.items()}
        optimizer_state = _decode(ckpt.json("optimizer.json"), tensors, "optimizer.json")
    if scheduler is not None:
        if not ckpt.has("scheduler.json"):
            raise CheckpointError(f"{ckpt.path}: holds no scheduler state, but one was given")
        tensors = {}
        if ckpt.has("scheduler.safetensors"):
            tensors = ckpt.tensors("scheduler.safetensors")
            tensors = {f"scheduler.{k}": v for k, v in tensors.items()}
        scheduler_state = _decode(ckpt.json("scheduler.json"), tensors, "scheduler.json")
    rng = (ckpt.tensors("rng.safetensors"), ckpt.json("rng.json")) if restore_rng else None

    # Everything is read and verified; only now change the objects given.
    _load_model_state(model, model_state, ckpt.path / MODEL_FILE)
    if optimizer is not None:
        try:
            optimizer.load_state_dict(optimizer_state)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{ckpt.path / 'optimizer.json'}: does not fit: {exc}") from None
    if scheduler is not None:
        scheduler.load_state_dict(scheduler_state)
    if rng is not None:
        _restore_rng(*rng)
    return TrainingState(
        step=int(training["step"]),
        epoch=int(training.get("epoch", 0)),
        config=config,
        path=ckpt.path,
        extra=dict(training.get("extra", {})),
    )


def load_partial_weights(
    path: str | Path, model: nn.Module, prefixes: list[str] | tuple[str, ...] = ()
) -> list[str]:
    """Initialises the weights of `model` whose names start with one of `prefixes` (all of
    them when empty) from a checkpoint (directory or work dir), verified as `load_checkpoint`
    does; the rest of the model is left as it is. Every prefix must match some weight of the
    checkpoint, and every weight loaded must exist in the model with the same shape, else
    `CheckpointError` names it (the model is unchanged then). Returns the names loaded."""
    ckpt = _Checkpoint(resolve_checkpoint(path))
    source = ckpt.path / MODEL_FILE
    saved = ckpt.tensors(MODEL_FILE)
    model = _unwrap(model)
    own = model.state_dict()
    chosen = {k: v for k, v in saved.items() if not prefixes or k.startswith(tuple(prefixes))}
    for prefix in prefixes:
        if not any(k.startswith(prefix) for k in saved):
            raise CheckpointError(f"{source}: no weight named {prefix}...")
    for key, value in sorted(chosen.items()):
        if key not in own:
            raise CheckpointError(f"{source}: {key} is not a weight of this model")
        if own[key].shape != value.shape:
            raise CheckpointError(
                f"{source}: {key} has shape {tuple(value.shape)}, the model's "
                f"{tuple(own[key].shape)}"
            )
    with torch.no_grad():
        for key, value in chosen.items():
            own[key].copy_(value)
    return sorted(chosen)


def _read_json_file(directory: Path, filename: str) -> Any:
    """`filename` of a checkpoint directory, verified against the manifest when it has one."""
    if (directory / MANIFEST_NAME).is_file():
        return _Checkpoint(directory).json(filename)
    path = directory / filename
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: not valid JSON: {exc}") from None


def read_training_state(checkpoint: str | Path) -> dict[str, Any]:
    """``training_state.json`` of a checkpoint directory (as `resolve_checkpoint` gives it):
    ``{"step": int, "epoch": int, "extra": dict}`` (the trainer's `extra`, e.g.
    ``planned_steps``, ``train_seconds``). Verified against the manifest when there is one;
    `CheckpointError` naming the file when it is missing, unreadable or malformed."""
    directory = Path(checkpoint)
    state = _read_json_file(directory, TRAINING_STATE_FILE)
    path = directory / TRAINING_STATE_FILE
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a JSON object")
    step, epoch, extra = state.get("step"), state.get("epoch", 0), state.get("extra", {})
    if not isinstance(step, int) or isinstance(step, bool):
        raise CheckpointError(f"{path}: 'step' is {step!r}, not an integer")
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise CheckpointError(f"{path}: 'epoch' is {epoch!r}, not an integer")
    if not isinstance(extra, dict):
        raise CheckpointError(f"{path}: 'extra' is not a JSON object")
    return {"step": step, "epoch": epoch, "extra": extra}


def weights_sha256(checkpoint: str | Path) -> str:
    """The sha256 (hex) of a checkpoint directory's ``model.safetensors``: the manifest's entry
    (verified against the file), or the file's own hash for a directory without a manifest.
    What an artifact made from these weights (an exported or quantized graph) records, so a
    reader can refuse it beside other weights."""
    directory = Path(checkpoint)
    if (directory / MANIFEST_NAME).is_file():
        ckpt = _Checkpoint(directory)
        ckpt.read(MODEL_FILE)  # verifies the file against the manifest
        return str(ckpt.files[MODEL_FILE]["sha256"])
    path = directory / MODEL_FILE
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read: {exc.strerror}") from None


def read_config(checkpoint: str | Path, *, schema: type[BaseModel] = ExperimentConfig) -> BaseModel:
    """The config a checkpoint directory was saved with (``config.yaml``, validated into
    `schema`), verified against the manifest when there is one."""
    directory = Path(checkpoint)
    if (directory / MANIFEST_NAME).is_file():
        return _Checkpoint(directory).config(schema)
    try:
        return load_config(directory / CONFIG_FILE, schema=schema)
    except ConfigError as exc:
        raise CheckpointError(f"{directory / CONFIG_FILE}: {exc}") from None


def load_weights(
    path: str | Path, model: nn.Module, *, schema: type[BaseModel] = ExperimentConfig
) -> BaseModel:
    """Loads only the model weights (for inference) and returns the saved config.

    `path` is a checkpoint directory or a work dir. A directory with just
    ``model.safetensors`` and ``config.yaml`` (no manifest) is accepted too; when a manifest
    is present both files are verified against it. To build the model and load it in one
    call, see `perception.models.loading.load_model`.
    """
    directory = resolve_checkpoint(path)
    if (directory / MANIFEST_NAME).is_file():
        ckpt = _Checkpoint(directory)
        state = ckpt.tensors(MODEL_FILE)
    else:
        try:
            state = safetensors.torch.load((directory / MODEL_FILE).read_bytes())
        except Exception as exc:
            raise CheckpointError(f"{directory / MODEL_FILE}: cannot load: {exc}") from None
    config = read_config(directory, schema=schema)
    _load_model_state(model, state, directory / MODEL_FILE)
    return config
