"""BatchNorm folded into the convolution before it, for inference (the node's model).

In eval mode a BatchNorm is a fixed per-channel affine map, ``y = s * x + t`` with ``s = gamma /
sqrt(running_var + eps)`` and ``t = beta - running_mean * s``. When it directly follows a
convolution or a linear layer, ``s`` scales that layer's output channels and ``t`` joins its
bias, so the BatchNorm pass over the whole feature map disappears: one elementwise pass fewer
per layer, the same outputs up to float rounding. What pairs up:

- consecutive children of an ``nn.Sequential``: a dense ``nn.Conv1d/2d/3d`` (any groups), an
  ``nn.Linear`` or a sparse :class:`~perception.ops.sparse.Conv3d`, then a BatchNorm of its
  output width (``nn.BatchNorm1d/2d/3d`` or the sparse one);
- the pairs a module lists in its ``bn_pairs`` attribute, ``(("conv", "norm"), ...)``: names of
  a layer and of the BatchNorm its ``forward`` applies right after it
  (:class:`~perception.models.camera.efficientvit.ConvNormAct`,
  :class:`~perception.models.lidar.spvconv.SparseResidualBlock`).

Transposed convolutions (their output channels sit in weight dim 1) are left as they are. The
folded BatchNorm becomes ``nn.Identity``; the model must be in eval mode (a training step
would need the statistics the fold consumed).
"""

from __future__ import annotations

import torch
from torch import nn

from perception.ops.sparse import Conv3d as SparseConv3d

_DENSE_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _foldable(layer: nn.Module, norm: nn.Module) -> bool:
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or not norm.track_running_stats:
        return False
    if isinstance(layer, SparseConv3d):
        return layer.out_channels == norm.num_features
    if isinstance(layer, _DENSE_CONVS):
        return layer.out_channels == norm.num_features
    if isinstance(layer, nn.Linear):
        return layer.out_features == norm.num_features
    return False


@torch.no_grad()
def _fold_pair(layer: nn.Module, norm: nn.modules.batchnorm._BatchNorm) -> None:
    """``layer`` then ``norm`` -> ``layer'`` alone (in place)."""
    var = norm.running_var.to(torch.float64)
    scale = torch.rsqrt(var + norm.eps)  # [C]
    if norm.affine:
        scale = scale * norm.weight.to(torch.float64)
    shift = -norm.running_mean.to(torch.float64) * scale
    if norm.affine:
        shift = shift + norm.bias.to(torch.float64)
    weight = layer.weight
    if isinstance(layer, SparseConv3d):  # [K, in, out]: output channels last
        factor = scale.view(1, 1, -1)
    else:  # dense conv [out, in / groups, ...] and linear [out, in]: output channels first
        factor = scale.view(-1, *([1] * (weight.dim() - 1)))
    weight.copy_((weight.to(torch.float64) * factor).to(weight.dtype))
    bias = layer.bias.to(torch.float64) if layer.bias is not None else torch.zeros_like(scale)
    new_bias = (bias * scale + shift).to(weight.dtype)
    if layer.bias is not None:
        layer.bias.copy_(new_bias)
    else:
        layer.bias = nn.Parameter(new_bias, requires_grad=False)


def fold_batchnorm(model: nn.Module) -> int:
    """Folds every BatchNorm that directly follows a convolution or linear layer of ``model``
    into it (see the module docstring), in place; returns how many were folded.

    Raises:
        ValueError: a BatchNorm of ``model`` is in training mode.
    """
    training = [
        name or "the model"
        for name, m in model.named_modules()
        if m.training and isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    if training:
        raise ValueError(
            f"fold_batchnorm needs a model in eval mode (call .eval()); {training[0]} is training"
        )
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for first, second in zip(names, names[1:]):
                layer, norm = module._modules[first], module._modules[second]
                if layer is not None and norm is not None and _foldable(layer, norm):
                    _fold_pair(layer, norm)
                    module._modules[second] = nn.Identity().eval()
                    folded += 1
        for layer_name, norm_name in getattr(module, "bn_pairs", ()):
            layer, norm = getattr(module, layer_name), getattr(module, norm_name)
            if _foldable(layer, norm):
                _fold_pair(layer, norm)
                setattr(module, norm_name, nn.Identity().eval())
                folded += 1
    return folded
