"""Camera-model tests run small models on tiny tensors: one intra-op thread is faster there
(and does not oversubscribe the cores that pytest-xdist workers share)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
