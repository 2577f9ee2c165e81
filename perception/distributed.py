"""Who and how many we are: the one place that asks `torch.distributed` (detectron2's
`utils/comm.py`).

Library code asks `rank()`, `world_size()`, `is_main_process()` and `is_distributed()` here,
never `torch.distributed` itself, so "no process group" (one process, the default) is
handled once: rank 0 of 1. Setting a process group up and tearing it down, and the
synchronized BatchNorm, belong to the training engine (`perception.engine`).

`global_mean_normaliser(count)` is the loss normalizer that makes `torchrun` training follow
one process on the global batch. It is here, below the models, because the models' losses
call it: a model must not import the training engine. It reduces over the processes only
inside `with global_batch():` (the trainer wraps its forward pass in it), and only when a
process group with more than one process is initialized; otherwise it is the plain
one-process computation, bit for bit. See `perception.engine.distributed` for why.

This module imports nothing of the project: it sits in the lowest layer (with structures and
config), so any module may use it.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as torch_dist

__all__ = [
    "all_gather_objects",
    "global_batch",
    "global_mean_normaliser",
    "is_distributed",
    "is_main_process",
    "rank",
    "synchronising_world_size",
    "world_size",
]

_GLOBAL_BATCH: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "perception_global_batch", default=False
)


def is_distributed() -> bool:
    """True when torch.distributed is built in and a default process group is initialized."""
    return torch_dist.is_available() and torch_dist.is_initialized()


def rank() -> int:
    """This process's rank in the default group; 0 without one."""
    return torch_dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    """The number of processes in the default group; 1 without one."""
    return torch_dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 (or no process group): the process that writes files and prints."""
    return rank() == 0


def all_gather_objects(obj: Any) -> list[Any]:
    """`obj` of every process, by rank (pickled; every process must call this). Without a
    process group: ``[obj]``."""
    if not is_distributed() or world_size() == 1:
        return [obj]
    gathered: list[Any] = [None] * world_size()
    torch_dist.all_gather_object(gathered, obj)
    return gathered


@contextlib.contextmanager
def global_batch(enabled: bool = True) -> Iterator[None]:
    """Inside, `global_mean_normaliser` (and the engine's `SyncBatchNorm`) reduce over all
    processes of the default group (when it has more than one). Scoped to the calling
    thread/context, like `torch.no_grad`."""
    token = _GLOBAL_BATCH.set(enabled)
    try:
        yield
    finally:
        _GLOBAL_BATCH.reset(token)


def synchronising_world_size() -> int:
    """The number of processes batch statistics and normalizers are reduced over here: the
    default group's size inside `global_batch()` with a group initialized, else 1."""
    if not _GLOBAL_BATCH.get():
        return 1
    return world_size()


def global_mean_normaliser(
    count: torch.Tensor, *, eps: float = 0.0, min_value: float | None = None
) -> torch.Tensor:
    """The normalizer that makes a per-process loss the process's share of the global loss.

    Args:
        count: a count of this process's batch (any shape, e.g. `[T]` for T losses); not
            differentiated.
        eps: added to the global count (as in ``count + 1e-4``).
        min_value: lower clamp of the global count plus `eps` (as in ``clamp_min(1)``).

    Returns:
        ``clamp(sum over processes of count + eps, min_value) / W``, float, same shape; in one
        process (or outside `global_batch`) exactly ``clamp(count + eps, min_value)`` (same
        dtype, same operations). Dividing a loss sum by it gives W x (this process's part of
        the global-batch loss): DDP's gradient average then equals the one-process gradient.
    """
    world = synchronising_world_size()
    if world > 1:
        count = count.detach().float().clone()
        torch_dist.all_reduce(count)  # every process must reach this call
    if eps:
        count = count + eps
    if min_value is not None:
        count = count.clamp_min(min_value)
    return count / world if world > 1 else count
