"""Losses of the CenterPoint head: Gaussian focal loss on heatmaps, weighted L1 on regressions,
cross-entropy on attributes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

_PROB_EPS = 1e-4  # CenterPoint clamps sigmoid outputs to [eps, 1 - eps]


def gaussian_focal_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    alpha: float = 2.0,
    gamma: float = 4.0,
    normalizer: torch.Tensor | float = 1.0,
) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, summed and divided by `normalizer`.

    Args:
        logits: `[B, n, X, Y]` heatmap logits.
        target: `[B, n, X, Y]` Gaussian heatmap in [0, 1], exactly 1 at object centres.
        alpha: focusing power on the prediction.
        gamma: power of `(1 - target)` that reduces the penalty near centres.
        normalizer: usually the number of objects (at least 1).

    Returns:
        Scalar.
    """
    p = torch.sigmoid(logits.float()).clamp(_PROB_EPS, 1 - _PROB_EPS)
    pos = target.eq(1).float()
    pos_loss = -torch.log(p) * (1 - p).pow(alpha) * pos
    neg_loss = -torch.log(1 - p) * p.pow(alpha) * (1 - target).pow(gamma) * (1 - pos)
    return (pos_loss.sum() + neg_loss.sum()) / normalizer


def weighted_l1_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    code_weights: torch.Tensor,
    normalizer: torch.Tensor | float,
) -> torch.Tensor:
    """`sum_k,c |pred - target| * code_weights[c]` over real objects, / `normalizer`.

    Args:
        pred, target: `[B, M, C]` regressions.
        mask: `[B, M]` bool, real objects.
        code_weights: `[C]` per-channel weights.
        normalizer: usually the number of objects (+ a small epsilon).

    Returns:
        Scalar.
    """
    diff = (pred - target).abs() * code_weights * mask[..., None].to(pred.dtype)  # [B, M, C]
    return diff.sum() / normalizer


def attribute_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    normalizer: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Cross-entropy summed over objects with an attribute, / `normalizer` (default: their
    number, at least 1: the mean).

    Args:
        logits: `[B, M, A]` attribute logits at the objects' centres.
        target: `[B, M]` int64 index into ATTRIBUTE_NAMES, -1 where there is none (ignored).
        normalizer: what the sum is divided by; None: the number of objects with an
            attribute, clamped to at least 1.

    Returns:
        Scalar (0 when no object has an attribute).
    """
    A = logits.shape[-1]
    ce = F.cross_entropy(
        logits.reshape(-1, A).float(), target.reshape(-1), ignore_index=-1, reduction="sum"
    )
    if normalizer is None:
        normalizer = (target >= 0).sum().clamp_min(1)
    return ce / normalizer
