"""DiffAugment (perception.generative.gan.diffaugment): each op's exact effect on constructed
images (brightness adds one offset to the RGB and leaves alpha, saturation and contrast scale
around their means, translation moves pixels and zero-pads, cutout zeroes exactly a rectangle
of the stated side in every channel), identity at zero strength and probability 0, gradcheck,
determinism under a generator, one draw for a batch when asked, policy errors."""

from __future__ import annotations

import pytest
import torch

from perception.generative.gan.diffaugment import (
    DiffAugment,
    brightness,
    contrast,
    cutout,
    diff_augment,
    draw_parameters,
    parse_policy,
    saturation,
    translate,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(B=3, C=4, S=16, seed=0) -> torch.Tensor:
    return torch.rand(B, C, S, S, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def test_policy_parsing_expands_groups_and_names_unknown_ops():
    assert parse_policy("color,translation,cutout") == (
        "brightness", "saturation", "contrast", "translation", "cutout"
    )  # fmt: skip
    assert parse_policy("") == () and parse_policy(" cutout , cutout") == ("cutout",)
    with pytest.raises(ValueError, match="unknown op 'colour'"):
        parse_policy("colour,translation")
    with pytest.raises(ValueError, match="unknown op 'blur'"):
        DiffAugment("translation,blur")


def test_brightness_adds_one_offset_to_rgb_and_keeps_alpha():
    x = _images()
    offset = torch.tensor([0.25, -0.5, 0.0])
    out = brightness(x, offset)
    assert torch.equal(out[:, 3], x[:, 3])
    assert torch.allclose(out[:, :3] - x[:, :3], offset[:, None, None, None].expand(3, 3, 16, 16))
    # color_channels=None: every channel
    assert torch.allclose(brightness(x, offset, color_channels=None)[:, 3] - x[:, 3], offset[:, None, None].expand(3, 16, 16))  # fmt: skip


def test_saturation_and_contrast_scale_around_their_means():
    x = _images()
    rgb = x[:, :3]
    factor = torch.tensor([0.0, 1.0, 2.0])
    out = saturation(x, factor)
    pixel_mean = rgb.mean(1, keepdim=True)
    assert torch.allclose(out[0, :3], pixel_mean[0].expand(3, -1, -1))  # 0: grey
    assert torch.allclose(out[1], x[1]) and torch.equal(out[:, 3], x[:, 3])
    assert torch.allclose(out[2, :3], 2 * rgb[2] - pixel_mean[2], atol=1e-6)
    out = contrast(x, torch.tensor([0.5, 1.0, 1.5]))
    image_mean = rgb.mean(dim=(1, 2, 3), keepdim=True)  # [B, 1, 1, 1]
    assert torch.allclose(out[0, :3], 0.5 * (rgb[0] - image_mean[0]) + image_mean[0], atol=1e-6)
    assert torch.allclose(out[1], x[1]) and torch.equal(out[:, 3], x[:, 3])
    assert torch.allclose(out[:, :3].mean(dim=(1, 2, 3)), image_mean.flatten(), atol=1e-6)


def test_translation_moves_every_channel_and_zero_pads():
    x = _images(B=2)
    out = translate(x, torch.tensor([[2, -3], [0, 0]]))  # image 0: 2 down, 3 left
    assert torch.equal(out[1], x[1])
    assert torch.equal(out[0, :, 2:, :13], x[0, :, :14, 3:])  # all 4 channels moved alike
    assert not out[0, :, :2].any() and not out[0, :, :, 13:].any()  # zero padded
    # a single lit pixel lands where the shift says
    one = torch.zeros(1, 1, 16, 16)
    one[0, 0, 5, 7] = 1
    moved = translate(one, torch.tensor([[-2, 3]]))
    assert moved.nonzero().tolist() == [[0, 0, 3, 10]]


def test_cutout_zeroes_exactly_a_square_of_half_the_side():
    x = torch.ones(2, 4, 16, 16)
    out = cutout(x, torch.tensor([[3, 5], [8, 0]]), (8, 8))
    zero = out == 0
    assert torch.equal(zero[0, :, 3:11, 5:13], torch.ones(4, 8, 8, dtype=torch.bool))
    assert int(zero[0].sum()) == 4 * 64 and int(zero[1].sum()) == 4 * 64
    assert torch.equal(zero[1, :, 8:, :8], torch.ones(4, 8, 8, dtype=torch.bool))
    # drawn cutouts always lie inside: exactly (S/2)^2 pixels per channel, for every draw
    drawn = diff_augment(torch.ones(64, 4, 16, 16), "cutout", generator=torch.Generator().manual_seed(1))  # fmt: skip
    assert torch.equal((drawn == 0).flatten(1).sum(1), torch.full((64,), 4 * 64))


def test_drawn_parameters_stay_in_the_papers_ranges():
    params = draw_parameters(
        ("brightness", "saturation", "contrast", "translation"),
        4096,
        (16, 16),
        generator=torch.Generator().manual_seed(0),
    )
    for value, (low, high) in (
        (params.brightness, (-0.5, 0.5)),
        (params.saturation, (0.0, 2.0)),
        (params.contrast, (0.5, 1.5)),
    ):
        assert low <= float(value.min()) < low + 0.01 and high - 0.01 < float(value.max()) <= high
    assert set(params.translation.flatten().tolist()) == set(range(-2, 3))  # 1/8 of 16


def test_identity_at_zero_strength_and_probability_zero():
    x = _images()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(diff_augment(x, "", generator=g), x)
    assert torch.equal(diff_augment(x, "translation,cutout", translation_ratio=0.0, cutout_ratio=0.0, generator=g), x)  # fmt: skip
    assert torch.equal(diff_augment(x, "translation,cutout", probability=0.0, generator=g), x)
    # colour ops at their identity values: x up to round-off ((x - m) 1 + m)
    out = diff_augment(x, "color,translation,cutout", probability=0.0, generator=g)
    assert torch.allclose(out, x, atol=1e-6, rtol=0)


def test_deterministic_under_a_generator_and_one_draw_per_batch_when_asked():
    x = _images(B=8)
    a = diff_augment(x, generator=torch.Generator().manual_seed(3))
    b = diff_augment(x, generator=torch.Generator().manual_seed(3))
    c = diff_augment(x, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    same = torch.stack([x[0]] * 8)
    out = DiffAugment(same_for_batch=True)(same, generator=torch.Generator().manual_seed(3))
    assert torch.equal(out, torch.stack([out[0]] * 8)) and not torch.equal(out[0], same[0])
    out = DiffAugment()(same, generator=torch.Generator().manual_seed(3))
    assert not torch.equal(out[0], out[1])  # independent draws by default


def test_gradients_flow_and_gradcheck():
    x = _images(B=1, C=4, S=8).double().requires_grad_(True)

    def augmented(inp):
        return diff_augment(inp, generator=torch.Generator().manual_seed(5))

    assert torch.autograd.gradcheck(augmented, (x,))
    y = _images(B=2).requires_grad_(True)
    diff_augment(y, generator=torch.Generator().manual_seed(0)).sum().backward()
    assert y.grad is not None and y.grad.abs().sum() > 0


def test_color_ops_need_the_colour_channels():
    grid = _images(C=2)
    with pytest.raises(ValueError, match="translation,cutout"):
        diff_augment(grid, "color")
    assert diff_augment(grid, "translation,cutout").shape == grid.shape
