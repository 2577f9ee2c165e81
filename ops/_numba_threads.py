"""Sizes numba's thread pool to torch's thread count before numba is first imported.

Numba starts ``NUMBA_NUM_THREADS`` (default: every core) workers on its first parallel call and
never shrinks the pool; ``numba.set_num_threads`` only caps how many a region uses. Two
single-threaded training runs side by side on the 2-core machine (``OMP_NUM_THREADS=1`` each,
as the accuracy benchmark runs them) were ~7x slower per step with a 2-worker pool in each
process than with one worker each. So the pool follows torch: ``NUMBA_NUM_THREADS`` defaults to
``torch.get_num_threads()`` (which honours ``OMP_NUM_THREADS``) unless the user set it.
"""

from __future__ import annotations

import os
import sys

import torch


def size_numba_pool() -> None:
    """Sets ``NUMBA_NUM_THREADS`` from torch's thread count if numba is not imported yet and
    the variable is unset; no effect otherwise."""
    if "numba" not in sys.modules and "NUMBA_NUM_THREADS" not in os.environ:
        os.environ["NUMBA_NUM_THREADS"] = str(max(1, torch.get_num_threads()))
