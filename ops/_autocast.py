"""The ops under mixed precision: each custom op runs with autocast off, its floating inputs cast
to float32 first (pooled sums, sparse products and IoUs keep float32 accuracy, and the ops'
kernels see the dtype they check for). Without this, a bfloat16 autocast region hands the ops
mixed dtypes (a float32 softmax beside a bfloat16 convolution) and casts the torch fallbacks'
products inside them to bfloat16."""

from __future__ import annotations

import torch


def float32_under_autocast(op) -> None:
    """Registers the float32 rule above for ``op`` (a ``torch.library.custom_op``) on CPU and
    CUDA. A no-op on torch builds without ``torch.library.register_autocast`` (before 2.5)."""
    register = getattr(torch.library, "register_autocast", None)
    if register is None:
        return
    for device_type in ("cpu", "cuda"):
        register(op, device_type, torch.float32)
