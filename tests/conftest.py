"""Shared pytest set-up: visible skips for CUDA-only cases, a small generated world and the
object banks of its splits."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from perception.runtime import set_cpu_threads

# Without a GPU, triton's interpreter runs the ops' triton kernels on CPU tensors, so their
# parity tests run in CI too (ops/_triton.py; set before anything imports triton). With a GPU
# (tools/gpu_check.sh) they compile and run on it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# The session is the program here, so it sets the thread counts (the library never does):
# numba's pool follows torch's threads. Under pytest-xdist every worker is a process; more
# threads than cores per worker oversubscribes the CPU (tests then run many times slower), so
# each worker uses one.
set_cpu_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else None)


@pytest.fixture
def one_torch_thread():
    """Runs a test at one torch thread (restored after): tiny tensors gain nothing from
    intra-op threads, and on a shared machine their hand-offs dominate. Use with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(
        reason="needs a CUDA GPU; none here (run tools/gpu_check.sh on one)"
    )
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A small synthetic v1.0-mini world, generated once per session; returns its dataroot.

    3 scenes (scene-0103 and scene-0916 of mini_val, scene-0061 of mini_train), 4 samples each,
    320x180 images, seed 0. Load with NuScenes("v1.0-mini", str(tiny_world)).
    """
    from perception.datasets.synth import generate_world

    root = tmp_path_factory.mktemp("tiny_world")
    generate_world(
        root, version="v1.0-mini", scenes=3, samples_per_scene=4, seed=0,
        image_size=(320, 180), workers=2,
    )  # fmt: skip
    return root


@pytest.fixture(scope="session")
def indexed_world_copy(tiny_world, tmp_path_factory):
    """A factory: `indexed_world_copy(name, **index_options) -> Path`, a private copy of the
    tiny world with its dataset index built (tests may alter their copy, never the shared one)."""
    import shutil

    from perception.datasets.index import build_index

    def make(name: str, **index_options) -> Path:
        root = tmp_path_factory.mktemp(name) / "world"
        shutil.copytree(tiny_world, root)
        build_index(root, "v1.0-mini", progress=False, **index_options)
        return root

    return make


def _file_digests(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file below `folder`."""
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _shared_bank(world: Path, out: Path, split: str, **options):
    """Writes a bank of `split` of `world` to `out`, yields it, and fails the session at
    teardown if any test changed, added or removed one of its files."""
    from perception.generative.bank import write_bank

    write_bank(world, "v1.0-mini", split, out, progress=False, **options)
    before = _file_digests(out)
    yield out
    after = _file_digests(out)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"{out}: a test wrote into the shared bank (read-only): {changed}"


@pytest.fixture(scope="session")
def tiny_bank_world(indexed_world_copy):
    """The indexed copy of the tiny world that `tiny_train_bank` and `tiny_val_bank` are
    extracted from (its dataroot). Read-only for tests: the banks point into it."""
    return indexed_world_copy("tiny_banks")


@pytest.fixture(scope="session")
def tiny_train_bank(tiny_bank_world, tmp_path_factory):
    """The object bank (folder Path) of the tiny world's mini_train split (scene-0061, a
    training bank), written once per session by `perception.generative.bank.write_bank` with
    its defaults. Read-only for tests: a test that must change a bank copies it first
    (`shutil.copytree(tiny_train_bank, tmp_path / "bank")`); a changed file fails the session."""
    out = tmp_path_factory.mktemp("tiny_train_bank") / "bank"
    yield from _shared_bank(tiny_bank_world, out, "mini_train")


@pytest.fixture(scope="session")
def tiny_val_bank(tiny_bank_world, tmp_path_factory):
    """The object bank (folder Path) of the tiny world's mini_val split (scene-0103 and
    scene-0916), written with `allow_eval_split=True`, so an evaluation bank (`training:
    false`). Read-only for tests, as `tiny_train_bank`."""
    out = tmp_path_factory.mktemp("tiny_val_bank") / "bank"
    yield from _shared_bank(tiny_bank_world, out, "mini_val", allow_eval_split=True)
