"""Thread counts are the program's: the ops never set them (nor write the environment), and
the scripts size numba's pool to torch's threads with perception.runtime.set_cpu_threads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("numba", reason="numba is not importable: no numba kernels to size")

OPS = Path(__file__).resolve().parents[2] / "ops"

# Runs every numba path of the ops, then prints the thread state they leave.
RUN_OPS = """
import os, torch
from perception.ops import bev_pool, voxelize
from perception.ops._impl import ImplTrace
from perception.ops.sparse import SparseTensor, conv3d
trace = ImplTrace()
points = torch.rand(200, 4) * 4
voxelize(points, 0.5, (0, 0, 0, 4, 4, 4), 4, 100, impl="numba", trace=trace)
coords = torch.unique(torch.randint(0, 5, (60, 4)), dim=0).int()
conv3d(SparseTensor(torch.randn(len(coords), 3), coords), torch.randn(27, 3, 2), impl="numba",
       trace=trace)
bev_pool(torch.randn(50, 3), torch.randint(0, 3, (50, 4)), 3, (3, 3, 3), impl="numba",
         trace=trace)
assert trace.impls() == {"numba"}, trace.calls
import numba
print(os.environ.get("NUMBA_NUM_THREADS"), numba.config.NUMBA_NUM_THREADS,
      numba.get_num_threads(), torch.get_num_threads())
"""


def _run(code: str, omp: str, numba_env: str | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_NUM_THREADS"}
    env["OMP_NUM_THREADS"] = omp
    if numba_env is not None:
        env["NUMBA_NUM_THREADS"] = numba_env
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return out.stdout.strip().splitlines()[-1].split()


def test_ops_leave_numba_threads_and_environment_alone():
    """Without set_cpu_threads, the ops' numba paths run on numba's own default pool (every
    core) and leave the environment as it was. (Numba's OpenMP threading layer then sets the
    process's OpenMP thread count, torch's too, to that pool on its first parallel region:
    why the scripts size the pool at start-up.)"""
    env_var, pool, used, _ = _run(RUN_OPS, omp="1")
    assert env_var == "None"
    assert int(used) == int(pool) == (os.cpu_count() or 1)


def test_ops_sources_never_set_threads_or_environment():
    pattern = re.compile(r"set_num_threads\(|os\.environ\[[^]]+\]\s*=|environ\.setdefault|putenv")
    offenders = [
        f"{path.relative_to(OPS.parent)}:{number}"
        for path in sorted(OPS.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert not offenders, f"library code sets threads or the environment: {offenders}"


SET_UP = (
    """
import sys, torch
from perception.runtime import set_cpu_threads
count = set_cpu_threads(None if sys.argv[-1] == "None" else int(sys.argv[-1]))
assert count == torch.get_num_threads()
"""
    + RUN_OPS
)


@pytest.mark.parametrize(
    "omp, numba_env, threads, expected",
    [("1", None, None, 1), ("2", None, None, 2), ("1", "2", None, 2), ("2", None, 1, 1)],
)
def test_set_cpu_threads_sizes_numba_pool_to_torch(omp, numba_env, threads, expected):
    """The scripts' start-up call: numba's pool follows torch's threads (OMP_NUM_THREADS, or
    the count given); a NUMBA_NUM_THREADS the user set wins."""
    code = SET_UP.replace("sys.argv[-1]", repr(str(threads)))
    _, pool, _, torch_threads = _run(code, omp=omp, numba_env=numba_env)
    assert int(pool) == expected
    if numba_env is None:  # the ops' numba calls left torch's count where it was set
        assert int(torch_threads) == (threads or int(omp))


def test_set_cpu_threads_after_numba_is_imported_caps_the_calling_thread():
    code = """
import numba, torch
from perception.runtime import set_cpu_threads
set_cpu_threads(1)
print(numba.get_num_threads(), torch.get_num_threads())
"""
    assert _run(code, omp="2") == ["1", "1"]
