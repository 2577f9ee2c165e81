"""EfficientViT backbone: shapes per variant, parameter counts, configs, timm-format loading."""

from __future__ import annotations

import pytest
import torch

from perception.models.camera import (
    EFFICIENTVIT_VARIANTS,
    EfficientViT,
    EfficientViTConfig,
    TemporalShiftConfig,
    build_efficientvit,
    load_timm_state_dict,
)

# Backbone parameters (timm's model without `head.*`), measured against timm 1.0.31; timm's
# published totals with the ImageNet head are 3.4M / 9.1M / 24.3M / 48.6M.
BACKBONE_PARAMS = {"b0": 682_608, "b1": 4_643_936, "b2": 14_977_008, "b3": 38_997_440}
TIMM_TOTAL_PARAMS_M = {"b0": 3.4, "b1": 9.1, "b2": 24.3, "b3": 48.6}
TIMM_HEAD_WIDTHS = {"b0": (1024, 1280), "b1": (1536, 1600), "b2": (2304, 2560), "b3": (2304, 2560)}

VARIANTS = ["b0", "b1", "b2", "b3"]


def _timm_head_params(variant: str) -> int:
    """Parameters of timm's ClassifierHead: conv1x1+BN, Linear, LayerNorm, Linear(1000)."""
    c = EFFICIENTVIT_VARIANTS[variant].widths[-1]
    w0, w1 = TIMM_HEAD_WIDTHS[variant]
    return c * w0 + 2 * w0 + w0 * w1 + 2 * w1 + w1 * 1000 + 1000


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_at_strides_8_16_32(variant):
    model = build_efficientvit(EfficientViTConfig(variant=variant)).eval()
    widths = EFFICIENTVIT_VARIANTS[variant].widths
    with torch.no_grad():
        features = model(torch.randn(1, 3, 64, 128))
    assert model.out_channels == widths[2:]
    assert [tuple(f.shape) for f in features] == [
        (1, widths[2], 8, 16),
        (1, widths[3], 4, 8),
        (1, widths[4], 2, 4),
    ]


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count(variant):
    model = build_efficientvit(EfficientViTConfig(variant=variant))
    n = sum(p.numel() for p in model.parameters())
    assert n == BACKBONE_PARAMS[variant]
    total_m = (n + _timm_head_params(variant)) / 1e6
    assert round(total_m, 1) == TIMM_TOTAL_PARAMS_M[variant]


def test_stride_4_output_and_odd_sizes():
    cfg = EfficientViTConfig(variant="b0", out_strides=(4, 8, 16, 32))
    model = build_efficientvit(cfg).eval()
    with torch.no_grad():
        features = model(torch.randn(2, 3, 36, 50))
    # every stride-2 conv rounds up: 36 -> 18 -> 9 -> 5 -> 3 -> 2; 50 -> 25 -> 13 -> 7 -> 4 -> 2
    assert [tuple(f.shape) for f in features] == [
        (2, 16, 9, 13),
        (2, 32, 5, 7),
        (2, 64, 3, 4),
        (2, 128, 2, 2),
    ]


def test_coarse_stages_skipped_when_not_requested():
    cfg = EfficientViTConfig(variant="b0", out_strides=(8,))
    model = build_efficientvit(cfg).eval()
    with torch.no_grad():
        features, state = model.forward_stream(torch.randn(1, 3, 32, 32), None)
    assert [tuple(f.shape) for f in features] == [(1, 32, 4, 4)]
    assert model.num_shift_locations == 2  # only stages 0 and 1 run, so only they shift
    assert len(state.caches) == 2
    assert len(model.state_dict()) == len(build_efficientvit(EfficientViTConfig()).state_dict())


@pytest.mark.parametrize(
    "kwargs",
    [
        {"variant": "b4"},
        {"out_strides": (16, 8)},
        {"out_strides": (2, 8)},
        {"out_strides": ()},
    ],
)
def test_bad_backbone_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        EfficientViTConfig(**kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "forward"},
        {"frames": 0},
        {"stages": (4,)},
        {"blocks": ("mlp",)},
        {"fold_div": 1},
    ],
)
def test_bad_tsm_config_is_rejected(kwargs):
    with pytest.raises(ValueError):
        TemporalShiftConfig(**kwargs)


def test_clip_batch_must_hold_whole_clips():
    model = build_efficientvit(EfficientViTConfig(tsm=TemporalShiftConfig(frames=2)))
    with pytest.raises(ValueError, match="whole number"):
        model(torch.randn(3, 3, 32, 32))


def test_constructor_is_keyword_only():
    v = EFFICIENTVIT_VARIANTS["b0"]
    with pytest.raises(TypeError):
        EfficientViT(v.widths, v.depths, v.head_dim)  # type: ignore[misc]


def _timm_like_state_dict(model: EfficientViT) -> dict[str, torch.Tensor]:
    """The model's own weights (randomized) plus timm-style classifier head keys."""
    torch.manual_seed(0)
    sd = {
        k: torch.randn_like(v) if v.is_floating_point() else v
        for k, v in model.state_dict().items()
    }
    sd["head.in_conv.conv.weight"] = torch.randn(1024, 128, 1, 1)
    sd["head.classifier.4.weight"] = torch.randn(1000, 1280)
    return sd


def test_load_timm_state_dict_drops_head_and_loads_everything():
    model = build_efficientvit(EfficientViTConfig(variant="b0"))
    sd = _timm_like_state_dict(model)
    report = load_timm_state_dict(model, sd)
    assert report.ok
    assert set(report.dropped_head_keys) == {"head.in_conv.conv.weight", "head.classifier.4.weight"}
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd[k]), k


def test_load_timm_state_dict_reports_missing_unexpected_and_shapes():
    model = build_efficientvit(EfficientViTConfig(variant="b0"))
    sd = _timm_like_state_dict(model)
    del sd["stages.3.blocks.1.local_module.main.point_conv.norm.weight"]
    sd["stages.4.blocks.0.main.conv.weight"] = torch.zeros(1)
    sd["stem.in_conv.conv.weight"] = torch.zeros(8, 3, 5, 5)
    with pytest.raises(ValueError) as err:
        load_timm_state_dict(model, sd)
    message = str(err.value)
    assert "stages.3.blocks.1.local_module.main.point_conv.norm.weight" in message
    assert "stages.4.blocks.0.main.conv.weight" in message
    assert "stem.in_conv.conv.weight" in message
    report = load_timm_state_dict(model, sd, strict=False)
    assert not report.ok
    assert report.missing_keys == ("stages.3.blocks.1.local_module.main.point_conv.norm.weight",)
    assert report.unexpected_keys == ("stages.4.blocks.0.main.conv.weight",)
    assert len(report.shape_mismatches) == 1
    assert torch.equal(model.stages[0].blocks[0].main.point_conv.conv.weight,
                       sd["stages.0.blocks.0.main.point_conv.conv.weight"])  # fmt: skip


def test_variant_from_config_matches_table():
    for name, v in EFFICIENTVIT_VARIANTS.items():
        cfg = EfficientViTConfig(variant=name)
        assert cfg.variant == name
        assert len(v.widths) == len(v.depths) == 5
    assert EFFICIENTVIT_VARIANTS["b0"].head_dim == EFFICIENTVIT_VARIANTS["b1"].head_dim == 16
    assert EFFICIENTVIT_VARIANTS["b2"].head_dim == EFFICIENTVIT_VARIANTS["b3"].head_dim == 32
