"""Checkpoints: exact round trip, RNG continuation, atomicity under SIGKILL, corruption."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from perception.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    find_latest,
    load_checkpoint,
    load_partial_weights,
    load_weights,
    read_config,
    read_training_state,
    resolve_checkpoint,
    save_checkpoint,
    work_dir_of,
)
from perception.config import ExperimentConfig

REPO_ROOT = Path(__file__).resolve().parents[2]


def _model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 4))


def _training(seed: int):
    model = _model(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.95))
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    return model, optimizer, scheduler


def _train(model, optimizer, scheduler, steps: int) -> None:
    """Draws its data from the global torch RNG, so resuming needs the RNG state too."""
    model.train()
    for _ in range(steps):
        x = torch.rand(5, 8)
        target = torch.rand(5, 4)
        loss = (model(x) - target).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        scheduler.step()


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            _assert_same_state(a[key], b[key])
        else:
            assert a[key] == b[key], key


def test_round_trip_and_bitwise_resume(tmp_path):
    config = ExperimentConfig(name="ckpt-test", seed=3)
    torch.manual_seed(0)
    model, optimizer, scheduler = _training(seed=1)
    _train(model, optimizer, scheduler, steps=3)
    path = save_checkpoint(
        tmp_path,
        step=3,
        epoch=1,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        config=config,
        extra={"best_map": 0.25},
    )
    assert path == tmp_path / "checkpoints" / "step_3"
    assert find_latest(tmp_path) == path
    _train(model, optimizer, scheduler, steps=3)  # the uninterrupted run

    # _training reseeds the global RNG; the load below must restore it.
    resumed, resumed_optimizer, resumed_scheduler = _training(seed=4)
    load_checkpoint(
        path,
        model=resumed,
        optimizer=resumed_optimizer,
        scheduler=resumed_scheduler,
        restore_rng=False,
    )
    saved_opt = resumed_optimizer.state_dict()
    assert saved_opt["param_groups"][0]["betas"] == (0.8, 0.95)
    assert isinstance(next(iter(saved_opt["state"])), int)

    torch.manual_seed(123)  # scramble the RNG; the checkpoint must restore it
    fresh, fresh_optimizer, fresh_scheduler = _training(seed=2)
    state = load_checkpoint(
        tmp_path, model=fresh, optimizer=fresh_optimizer, scheduler=fresh_scheduler
    )
    assert (state.step, state.epoch, state.extra) == (3, 1, {"best_map": 0.25})
    assert state.config == config
    assert state.path == path

    _train(fresh, fresh_optimizer, fresh_scheduler, steps=3)
    _assert_same_state(fresh.state_dict(), model.state_dict())
    _assert_same_state(fresh_optimizer.state_dict(), optimizer.state_dict())
    assert fresh_scheduler.state_dict() == scheduler.state_dict()


def test_loaded_optimizer_state_matches_saved(tmp_path):
    model, optimizer, scheduler = _training(seed=1)
    _train(model, optimizer, scheduler, steps=2)
    save_checkpoint(
        tmp_path,
        step=2,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        config=ExperimentConfig(),
    )
    model2, optimizer2, scheduler2 = _training(seed=9)
    load_checkpoint(tmp_path, model=model2, optimizer=optimizer2, scheduler=scheduler2)
    _assert_same_state(model2.state_dict(), model.state_dict())
    _assert_same_state(optimizer2.state_dict(), optimizer.state_dict())
    assert scheduler2.state_dict() == scheduler.state_dict()
    saved = load_checkpoint(tmp_path, model=_model(5), restore_rng=False)
    assert saved.step == 2


def test_rng_streams_continue(tmp_path):
    torch.manual_seed(7)
    random.seed(7)
    np.random.seed(7)  # noqa: NPY002 (the global RNG is what checkpoints restore)
    save_checkpoint(tmp_path, step=0, model=_model(0), config=ExperimentConfig())
    expected = (torch.rand(4), random.random(), np.random.rand(3))  # noqa: NPY002
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)  # noqa: NPY002
    load_checkpoint(tmp_path, model=_model(0))
    assert torch.equal(torch.rand(4), expected[0])
    assert random.random() == expected[1]
    assert np.array_equal(np.random.rand(3), expected[2])  # noqa: NPY002


def test_only_safetensors_json_yaml_and_keep(tmp_path):
    model = _model(0)
    for step in (1, 2, 3, 4):
        save_checkpoint(tmp_path, step=step, model=model, config=ExperimentConfig(), keep=2)
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_3", "step_4"]
    assert (root / "latest").read_text().strip() == "step_4"
    for path in (root / "step_4").iterdir():
        assert path.suffix in {".safetensors", ".json", ".yaml"}, path.name
        assert not path.read_bytes().startswith(b"\x80"), f"{path.name} looks pickled"
    manifest = json.loads((root / "step_4" / "checkpoint.json").read_text())
    assert manifest["kind"] == "perception.checkpoint"
    assert set(manifest["files"]) == {
        p.name for p in (root / "step_4").iterdir() if p.name != "checkpoint.json"
    }
    assert manifest["torch_version"] == torch.__version__


def test_load_weights_for_inference(tmp_path):
    model = _model(1)
    config = ExperimentConfig(name="infer")
    save_checkpoint(tmp_path, step=5, model=model, config=config)
    other = _model(2)
    assert load_weights(tmp_path, other) == config
    _assert_same_state(other.state_dict(), model.state_dict())


def test_partial_weights_load_only_the_named_prefix(tmp_path):
    source = _model(1)
    save_checkpoint(tmp_path, step=3, model=source, config=ExperimentConfig())
    target = _model(2)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    assert load_partial_weights(tmp_path, target, ["0."]) == ["0.bias", "0.weight"]
    after = target.state_dict()
    for key in ("0.weight", "0.bias"):
        assert torch.equal(after[key], source.state_dict()[key])
    for key in ("3.weight", "3.bias"):  # not named: left as they were
        assert torch.equal(after[key], before[key])
        assert not torch.equal(after[key], source.state_dict()[key])
    everything = _model(3)
    assert len(load_partial_weights(tmp_path, everything)) == 4  # no prefix: all
    _assert_same_state(everything.state_dict(), source.state_dict())


def test_partial_weights_name_what_does_not_fit(tmp_path):
    save_checkpoint(tmp_path, step=1, model=_model(0), config=ExperimentConfig())
    with pytest.raises(CheckpointError, match=r"model\.safetensors: no weight named camera\."):
        load_partial_weights(tmp_path, _model(1), ["camera."])
    wider = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 4))
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"0\.bias has shape \(16,\), the model's \(32,\)"):
        load_partial_weights(tmp_path, wider)
    _assert_same_state(wider.state_dict(), before)  # nothing half-loaded
    with pytest.raises(CheckpointError, match=r"3\.bias is not a weight of this model"):
        load_partial_weights(tmp_path, nn.Sequential(nn.Linear(8, 16)))


def test_flipped_byte_names_sha256_and_file(tmp_path):
    path = save_checkpoint(tmp_path, step=1, model=_model(0), config=ExperimentConfig())
    weights = path / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*sha256"):
        load_checkpoint(tmp_path, model=_model(0))


def test_missing_listed_file_is_named(tmp_path):
    path = save_checkpoint(tmp_path, step=1, model=_model(0), config=ExperimentConfig())
    (path / "rng.json").unlink()
    with pytest.raises(CheckpointError, match=r"rng\.json: missing"):
        load_checkpoint(path, model=_model(0))


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("format_version", 99, "format_version 99"),
        ("kind", "someone.else", "not a checkpoint of this project"),
    ],
)
def test_foreign_manifest(tmp_path, field, value, message):
    path = save_checkpoint(tmp_path, step=1, model=_model(0), config=ExperimentConfig())
    manifest_path = path / "checkpoint.json"
    manifest = json.loads(manifest_path.read_text())
    manifest[field] = value
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path, model=_model(0))


def test_key_mismatch_lists_keys(tmp_path):
    save_checkpoint(tmp_path, step=1, model=_model(0), config=ExperimentConfig())
    other = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))  # no Dropout at 2
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path, model=other)
    missing, unexpected = str(info.value).split("unexpected keys")
    assert "model.safetensors" in missing
    assert "missing keys" in missing and "2.weight" in missing and "2.bias" in missing
    assert "3.weight" in unexpected and "3.bias" in unexpected


def test_no_checkpoint_is_a_clear_error(tmp_path):
    assert find_latest(tmp_path) is None
    with pytest.raises(CheckpointError, match="no checkpoint here"):
        load_checkpoint(tmp_path, model=_model(0))


def test_one_resolver_for_checkpoint_dirs_and_work_dirs(tmp_path):
    """What every reader (test, node, export, resume) takes a path to mean."""
    first = save_checkpoint(tmp_path, step=1, model=_model(0), config=ExperimentConfig())
    latest = save_checkpoint(tmp_path, step=2, model=_model(0), config=ExperimentConfig())
    assert resolve_checkpoint(tmp_path) == latest  # a work dir: its latest
    assert resolve_checkpoint(first) == first  # a checkpoint dir: itself
    assert work_dir_of(first) == tmp_path and work_dir_of(tmp_path) == tmp_path
    weights_only = tmp_path / "weights"
    weights_only.mkdir()
    (weights_only / "model.safetensors").write_bytes((first / "model.safetensors").read_bytes())
    assert resolve_checkpoint(weights_only) == weights_only  # no manifest: still a checkpoint
    missing = tmp_path / "no_such_run"
    with pytest.raises(CheckpointNotFoundError, match=f"checkpoint not found: {missing}"):
        resolve_checkpoint(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=f"{empty}: no checkpoint here"):
        resolve_checkpoint(empty)  # a CheckpointError and a FileNotFoundError
    assert issubclass(CheckpointNotFoundError, CheckpointError)


def test_training_state_and_config_readers(tmp_path):
    config = ExperimentConfig(name="readers")
    path = save_checkpoint(
        tmp_path, step=7, model=_model(0), config=config, epoch=2, extra={"planned_steps": 9}
    )
    state = read_training_state(path)
    assert state == {"step": 7, "epoch": 2, "extra": {"planned_steps": 9}}
    assert read_config(path) == config
    (path / "training_state.json").write_text('{"step": 8}')  # changed after saving
    with pytest.raises(CheckpointError, match=r"training_state\.json: sha256 mismatch"):
        read_training_state(path)
    hand_made = tmp_path / "hand_made"  # no manifest: read as it is, checked for its form
    hand_made.mkdir()
    with pytest.raises(CheckpointError, match=r"training_state\.json: missing"):
        read_training_state(hand_made)
    (hand_made / "training_state.json").write_text('{"step": "7"}')
    with pytest.raises(CheckpointError, match="'step' is '7', not an integer"):
        read_training_state(hand_made)
    (hand_made / "training_state.json").write_text('{"step": 7}')
    assert read_training_state(hand_made) == {"step": 7, "epoch": 0, "extra": {}}


def test_the_engine_reexports_the_one_implementation():
    import perception.checkpoint as io
    import perception.engine.checkpoint as engine

    for name in engine.__all__:
        assert getattr(engine, name) is getattr(io, name), name


# The child saves step 1, then stalls inside the save of step 2 (at the hook named by
# argv[2]) after touching a marker file, so that the parent can SIGKILL it there.
_CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import torch
    from perception.config import ExperimentConfig
    import perception.checkpoint as ckpt

    work_dir, stall_in = Path(sys.argv[1]), sys.argv[2]
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    ckpt.save_checkpoint(work_dir, step=1, model=model, config=ExperimentConfig())
    original = getattr(ckpt, stall_in)

    def stalled(*args, **kwargs):
        if stall_in == "_write_file":  # stall with the temp dir half written
            original(*args, **kwargs)
        (work_dir / "stalled").touch()
        time.sleep(120)

    setattr(ckpt, stall_in, stalled)
    with torch.no_grad():
        model.weight.add_(1.0)
    ckpt.save_checkpoint(work_dir, step=2, model=model, config=ExperimentConfig())
    """
)


@pytest.mark.parametrize("stall_in", ["_write_file", "_write_latest"])
def test_sigkill_mid_save_keeps_previous_checkpoint(tmp_path, stall_in):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), stall_in], env=env)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "stalled").exists():
            assert child.poll() is None, "child exited before stalling"
            assert time.monotonic() < deadline, "child never reached the stall point"
            time.sleep(0.05)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    root = tmp_path / "checkpoints"
    if stall_in == "_write_file":
        assert any(p.name.startswith(".tmp-step_2") for p in root.iterdir())
    else:
        assert (root / "step_2").is_dir()  # moved into place; pointer not yet updated

    torch.manual_seed(0)
    expected = nn.Linear(4, 2)
    model = nn.Linear(4, 2)
    state = load_checkpoint(tmp_path, model=model)
    assert state.step == 1
    assert torch.equal(model.weight, expected.weight)

    save_checkpoint(tmp_path, step=3, model=model, config=ExperimentConfig())
    names = {p.name for p in root.iterdir()}
    assert not any(n.startswith((".tmp-", ".trash-")) for n in names)
    assert find_latest(tmp_path) == root / "step_3"
    assert load_checkpoint(tmp_path, model=nn.Linear(4, 2)).step == 3
