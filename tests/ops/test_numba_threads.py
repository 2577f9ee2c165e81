"""Numba's worker pool follows torch's thread count (see perception.ops._numba_threads)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("numba", reason="numba is not importable: no numba kernels to size")

PROBE = """
import torch
from perception.ops.sparse.kernel_map import numba_kernels
assert numba_kernels(torch.device("cpu")) is not None
import numba
print(numba.config.NUMBA_NUM_THREADS)
"""


@pytest.mark.parametrize(
    "omp, numba_env, expected", [("1", None, 1), ("2", None, 2), ("1", "2", 2)]
)
def test_numba_pool_follows_torch_threads(omp, numba_env, expected):
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    env["OMP_NUM_THREADS"] = omp
    if numba_env is not None:
        env["NUMBA_NUM_THREADS"] = numba_env  # the user's setting wins
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    assert int(out.stdout.strip().splitlines()[-1]) == expected
