"""What makes `torchrun` training equivalent to one process on the global batch.

Data-parallel training with W processes of batch b each is meant to follow one process with
batch W x b. DistributedDataParallel averages the gradients, which is only right if each
process's loss is its share of the global-batch loss. Two things are per process unless made
global:

* batch statistics: BatchNorm normalizes with the mean and variance of the process's own
  samples. `convert_sync_batchnorm` swaps the model's BatchNorm layers (dense and the sparse
  `perception.ops.sparse.BatchNorm`) for `SyncBatchNorm`, whose training statistics are
  those of the global batch, weighted by each process's element count (sparse voxels and
  points differ in number between processes), with gradients flowing through the exchange;
* loss normalizers: a loss divided by "the number of objects in the batch" must divide by the
  global number. `global_mean_normaliser(count)` returns the global count divided by W, so
  the process's loss is W x (its part of the global loss) and DDP's average over W is the
  global-batch gradient; averaging the W losses for logging gives the global-batch loss.

Both act only inside `with global_batch():` (the trainer wraps its forward pass in it) and
only when a process group with more than one process is initialized; otherwise they are the
plain one-process computation, bit for bit. Inside the context every process must run the
same synchronizing layers and losses in the same order (they exchange tensors), so a forward
pass on one rank alone (say, validation on rank 0) must stay outside it, which is the
default.

Torch's own `nn.SyncBatchNorm` runs on CUDA only (torch 2.13 refuses CPU tensors), so the
gloo/CPU path needs this module; it is used on CUDA too, to keep one code path.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as torch_dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

# Who and how many we are, the global-batch context and the loss normalizer live below the
# models (the models' losses use them); re-exported here for the engine's callers.
from perception.distributed import (
    global_batch,
    global_mean_normaliser,
    synchronising_world_size,
)
from perception.ops.sparse import BatchNorm as SparseBatchNorm
from perception.ops.sparse import SparseTensor

__all__ = [
    "SyncBatchNorm",
    "SyncSparseBatchNorm",
    "convert_sync_batchnorm",
    "global_batch",
    "global_mean_normaliser",
    "synchronising_world_size",
]


class _AllReduceSum(torch.autograd.Function):
    """Sum over the processes; the gradient of every input is the sum of the gradients of
    all outputs (the processes' losses all depend on the sum)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone(memory_format=torch.contiguous_format)
        torch_dist.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        torch_dist.all_reduce(grad)
        return grad


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the global batch (all processes).

    Same parameters, buffers and state-dict keys as `nn.BatchNorm1d/2d/3d` (input
    ``[N, C, *]``), so checkpoints move freely between the two. In eval mode, or in training
    outside `global_batch()` / in one process, it is exactly `nn.BatchNorm`. Synchronized, each
    process contributes its element count, the sum and the sum of squared deviations from its
    own mean per channel (one all-reduce, differentiable: its backward is the all-reduce of the
    gradients), combined exactly however unequal the counts, empty inputs included; the
    running statistics get the global mean and unbiased variance, as one process would.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input [N, C, *], got {input.dim()}-D")

    def _synchronised(self) -> bool:
        return self.training and synchronising_world_size() > 1

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self._synchronised():
            return super().forward(input)
        self._check_input_dim(input)
        C = input.shape[1]
        dims = [0, *range(2, input.dim())]
        shape = [1, C] + [1] * (input.dim() - 2)
        x = input.to(torch.promote_types(input.dtype, torch.float32))
        n = x.numel() // C
        local_sum = x.sum(dims)  # [C]
        local_mean = local_sum / max(n, 1)
        local_m2 = (x - local_mean.view(shape)).square().sum(dims)  # [C]
        count = torch.full((1,), float(n), dtype=x.dtype, device=x.device)
        # sum_r n_r m_r^2 - N m^2 is the between-process part of the squared deviations
        stats = torch.cat([count, local_sum, local_m2, local_sum * local_mean])  # [1 + 3C]
        stats = _AllReduceSum.apply(stats)
        total = stats[0]
        mean = stats[1 : 1 + C] / total.clamp_min(1)
        m2 = stats[1 + C : 1 + 2 * C] + stats[1 + 2 * C :] - total * mean.square()
        var = m2.clamp_min(0) / total.clamp_min(1)  # biased, for normalizing

        if self.track_running_stats and self.num_batches_tracked is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                if self.momentum is None:  # cumulative moving average
                    factor: torch.Tensor | float = 1.0 / self.num_batches_tracked.to(var)
                else:
                    factor = self.momentum
                unbiased = m2.clamp_min(0) / (total - 1).clamp_min(1)
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)

        y = (x - mean.view(shape)) * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)


class SyncSparseBatchNorm(SyncBatchNorm):
    """`SyncBatchNorm` over a `SparseTensor`'s features ``[N, C]`` (for
    `perception.ops.sparse.BatchNorm`); synchronized even when this process has no voxels."""

    def forward(self, input: SparseTensor) -> SparseTensor:  # type: ignore[override]
        if len(input) == 0 and not self._synchronised():
            return input
        return input.replace_feats(super().forward(input.feats))


_CONVERTIBLE = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _synced_copy(module: _BatchNorm, cls: type[SyncBatchNorm]) -> SyncBatchNorm:
    synced = cls(
        module.num_features,
        eps=module.eps,
        momentum=module.momentum,
        affine=module.affine,
        track_running_stats=module.track_running_stats,
    )
    # the same Parameter and buffer objects: optimizers and state dicts see no change
    if module.affine:
        synced.weight = module.weight
        synced.bias = module.bias
    synced.running_mean = module.running_mean
    synced.running_var = module.running_var
    synced.num_batches_tracked = module.num_batches_tracked
    synced.train(module.training)
    return synced


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replaces, in place, every `nn.BatchNorm1d/2d/3d` and `perception.ops.sparse.BatchNorm`
    under `module` by a `SyncBatchNorm` / `SyncSparseBatchNorm` sharing its parameters and
    buffers; returns `module` (or the replacement, if `module` itself is one). Other
    BatchNorm subclasses (unknown forward) are left alone with a warning: their statistics
    stay per process."""
    if isinstance(module, SyncBatchNorm):
        return module
    if isinstance(module, SparseBatchNorm):
        return _synced_copy(module, SyncSparseBatchNorm)
    if type(module) in _CONVERTIBLE:
        return _synced_copy(module, SyncBatchNorm)
    if isinstance(module, _BatchNorm):
        warnings.warn(
            f"convert_sync_batchnorm: no synchronized version of {type(module).__name__}; "
            "its batch statistics stay per process",
            stacklevel=2,
        )
        return module
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module
