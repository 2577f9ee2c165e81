"""Shared pytest set-up: visible skips for CUDA-only cases, and a small generated world."""

from __future__ import annotations

import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(
        reason="needs a CUDA GPU; none here (run tools/gpu_check.sh on one)"
    )
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)
