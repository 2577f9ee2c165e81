"""Shared pytest set-up: visible skips for CUDA-only cases, and a small generated world."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Without a GPU, triton's interpreter runs the ops' triton kernels on CPU tensors, so their
# parity tests run in CI too (ops/_triton.py; set before anything imports triton). With a GPU
# (tools/gpu_check.sh) they compile and run on it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# Under pytest-xdist every worker is a process; more torch threads than cores per worker
# oversubscribes the CPU (tests then run many times slower), so each worker uses one.
if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


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
