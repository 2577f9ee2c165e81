"""Camera-model tests run small models on tiny tensors: one intra-op thread is faster there
(and does not oversubscribe the cores that pytest-xdist workers share)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every camera test at one torch thread (see tests/conftest.py)."""
