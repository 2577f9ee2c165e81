"""Process-wide CPU thread set-up: the program's choice, made once at start-up by the scripts
(``tools/*.py``), never by the library (two models in one process must not fight over it).

Numba starts ``NUMBA_NUM_THREADS`` (default: every core) workers on its first parallel call and
never shrinks the pool; ``numba.set_num_threads`` only caps how many a region of the calling
thread uses. Two single-threaded training runs side by side on a 2-core machine
(``OMP_NUM_THREADS=1`` each, as the accuracy benchmark runs them) were ~7x slower per step with
a 2-worker pool in each process than with one worker each. So a script sizes numba's pool to
torch's thread count (which honours ``OMP_NUM_THREADS``) before numba is first imported.
"""

from __future__ import annotations

import os
import sys

import torch

__all__ = ["set_cpu_threads"]


def set_cpu_threads(threads: int | None = None) -> int:
    """Sets torch's intra-op thread count to ``threads`` (None: keeps torch's) and numba's to
    the same number; returns it.

    Numba's pool is sized through ``NUMBA_NUM_THREADS`` when numba is not imported yet and the
    user did not set the variable (the user's setting wins); once numba is imported its pool is
    fixed, and the calling thread's parallel regions are capped at the count instead.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    count = threads if threads is not None else max(1, torch.get_num_threads())
    if "numba" not in sys.modules:
        os.environ.setdefault("NUMBA_NUM_THREADS", str(count))
    else:
        import numba

        # launches numba's pool if it is not running yet, whose OpenMP layer then sets the
        # process's OpenMP thread count to the pool's size: torch's count is set after it
        numba.set_num_threads(min(count, numba.config.NUMBA_NUM_THREADS))
    torch.set_num_threads(count)
    return count
