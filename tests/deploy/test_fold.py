"""perception.deploy.fold: BatchNorm folded into the layer before it gives the same maps as
the model it came from (every stage of the micro fused detector, and each kind of pair)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from perception.deploy.fold import fold_batchnorm
from perception.models.builder import build_model
from perception.ops.sparse import BatchNorm, Conv3d, SparseTensor
from tests.perception.models.helpers import micro_config, synthetic_batch


def _randomize_statistics(model: nn.Module, seed: int) -> None:
    """Running statistics and affine parameters far from the identity, so a wrong fold shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(c, generator=g))
                m.bias.copy_(torch.randn(c, generator=g))


def _batchnorms(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def test_the_folded_detector_makes_the_same_maps():
    torch.manual_seed(0)
    config = micro_config()
    model = build_model(config)
    _randomize_statistics(model, seed=1)
    model.eval()
    folded = build_model(config)
    folded.load_state_dict(model.state_dict())
    folded.eval()
    count = fold_batchnorm(folded)
    # every BatchNorm but those after the decoder's transposed convolutions
    left = _batchnorms(folded)
    assert count == len(_batchnorms(model)) - len(left) and count > 20
    assert left and all(type(folded.get_submodule(n.rsplit(".", 1)[0])[0]).__name__
                        == "ConvTranspose2d" for n in left)  # fmt: skip
    batch = synthetic_batch(config, seed=3)
    with torch.no_grad():
        want, got = model.stage_features(batch), folded.stage_features(batch)
    for name in ("camera_bev", "lidar_bev", "fused", "decoded"):
        a, b = getattr(want, name), getattr(got, name)
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()), msg=name)
    for task_want, task_got in zip(want.outputs, got.outputs):
        for field in dataclasses.fields(task_want):
            a, b = getattr(task_want, field.name), getattr(task_got, field.name)
            if isinstance(a, torch.Tensor):
                torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()) + 1e-6)
    assert fold_batchnorm(folded) == 0  # nothing left to fold


@pytest.mark.parametrize("kind", ["conv1d", "conv2d_grouped", "linear", "sparse", "no_affine"])
def test_each_pair_folds_exactly(kind):
    torch.manual_seed(0)
    if kind == "sparse":
        layer, norm = Conv3d(3, 5, 3), BatchNorm(5)
        coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 1, 1, 0], [1, 2, 2, 2]])
        x = SparseTensor(torch.randn(4, 3, dtype=torch.float64), coords.int(), 1)
    elif kind == "linear":
        layer, norm = nn.Linear(4, 6, bias=True), nn.BatchNorm1d(6)
        x = torch.randn(7, 4, dtype=torch.float64)
    elif kind == "conv1d":
        layer, norm = nn.Conv1d(3, 4, 3, bias=False), nn.BatchNorm1d(4)
        x = torch.randn(2, 3, 9, dtype=torch.float64)
    elif kind == "conv2d_grouped":
        layer, norm = nn.Conv2d(4, 8, 3, groups=4, bias=False), nn.BatchNorm2d(8)
        x = torch.randn(2, 4, 6, 6, dtype=torch.float64)
    else:
        layer, norm = nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3, affine=False)
        x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    seq = nn.Sequential(layer, norm).double()
    _randomize_statistics(seq, seed=2) if norm.affine else None
    with torch.no_grad():
        norm.running_mean.normal_()
        norm.running_var.uniform_(0.1, 3.0)
    seq.eval()
    with torch.no_grad():
        want = seq(x)
        assert fold_batchnorm(seq) == 1 and isinstance(seq[1], nn.Identity)
        got = seq(x)
    if kind == "sparse":
        want, got = want.feats, got.feats
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_training_mode_and_unfoldable_pairs():
    seq = nn.Sequential(nn.Conv2d(2, 3, 1), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(seq)
    transposed = nn.Sequential(nn.ConvTranspose2d(2, 3, 2), nn.BatchNorm2d(3)).eval()
    other_width = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.BatchNorm1d(3)).eval()
    assert fold_batchnorm(transposed) == 0 and fold_batchnorm(other_width) == 0
    assert isinstance(transposed[1], nn.BatchNorm2d)
