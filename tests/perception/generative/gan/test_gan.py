"""The DiffAugment GAN (perception.generative.gan): network shapes and sizes, the projection
head reading the condition, spectral norm on D, the losses on constructed values (hinge,
non-saturating, R1 against a hand-computed gradient), EMA, where the augmentation applies in
each mode (spied), sampling, and training on a tiny-world bank: the log's keys, a resumed run
equal to an uninterrupted one bit for bit, bad input named; a short toy run lowers KID."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.nn.utils import parametrize

from perception.generative.conditions import ObjectConditions
from perception.generative.gan.config import GANConfig
from perception.generative.gan.diffaugment import DiffAugment
from perception.generative.gan.model import (
    build_gan,
    discriminator_adversarial_loss,
    ema_update,
    generator_adversarial_loss,
    r1_penalty,
    sample_gan,
)
from perception.generative.gan.train import (
    build_augment,
    build_optimizer,
    discriminator_losses,
    gan_kid,
    generator_losses,
    load_gan,
    select_signals,
    train_gan,
    train_step,
)
from perception.generative.hart.train import SignalSet
from perception.generative.metrics import train_crop_classifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_MODEL = {"z_dim": 8, "g_width": 16, "d_width": 16, "cond_dim": 16}


def _config(bank="unused", **sections) -> GANConfig:
    data = {"bank": str(bank), "image_size": 16, **sections.pop("data", {})}
    return GANConfig(data=data, model={**TINY_MODEL, **sections.pop("model", {})}, **sections)


def _conds(labels, seed=0) -> ObjectConditions:
    g = torch.Generator().manual_seed(seed)
    n = len(labels)
    return ObjectConditions.create(
        label=labels,
        size=torch.rand(n, 3, generator=g) * 3 + 0.5,
        view_angle=torch.rand(n, generator=g) * 6 - 3,
        depth=torch.rand(n, generator=g) * 40 + 5,
        sensor=[0] * n,
    )


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_default_sizes_at_32x32_and_shapes():
    torch.manual_seed(0)
    gan = build_gan(GANConfig(data={"bank": "unused"}))
    assert 1.0e6 < _count(gan.generator) < 1.1e6  # 1,044,904
    assert 0.9e6 < _count(gan.discriminator) < 1.0e6  # 967,881
    assert gan.generator.channels == [144, 144, 72, 36]
    conds = _conds(["car", "bicycle"])
    with torch.no_grad():
        out = gan.generator(torch.randn(2, 64), conds)
    assert out.shape == (2, 4, 32, 32) and float(out.abs().max()) <= 1.0
    assert gan.discriminator(out, conds).shape == (2,)
    lidar = build_gan(GANConfig(data={"bank": "unused", "modality": "lidar"}))
    assert lidar.generator(torch.randn(2, 64), conds).shape == (2, 9, 32, 32)
    assert GANConfig(data={"bank": "u", "modality": "lidar"}).policy == "translation,cutout"


def test_projection_head_reads_the_condition_and_layers_are_spectrally_normed():
    torch.manual_seed(0)
    D = build_gan(_config()).discriminator
    x = torch.rand(3, 4, 16, 16) * 2 - 1
    conds = _conds(["car", "car", "car"])
    other = ObjectConditions.create(
        label=["bicycle"] * 3,
        size=conds.size,
        view_angle=conds.view_angle,
        depth=conds.depth,
        sensor=[0] * 3,
    )
    with torch.no_grad():
        D.eval()  # no power iteration: the same weights for both calls
        a, b = D(x, conds), D(x, other)
        h = D.features(x)
        expected = D.linear(h)[:, 0] + (D.projection(D.condition(other)) * h).sum(1)
    assert (a - b).abs().min() > 1e-6  # only the label changed
    assert torch.allclose(b, expected)
    layers = [
        m
        for name, m in D.named_modules()
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear) and not name.startswith("condition")
    ]
    assert len(layers) == 3 * 3 + 2  # 3 blocks of 3 convs at 16x16, linear, projection
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert all(type(m.parametrizations.weight[0]).__name__ == "_SpectralNorm" for m in layers)


def test_hinge_and_non_saturating_losses_on_constructed_logits():
    d_real = torch.tensor([2.0, 0.5, -1.0])
    d_fake = torch.tensor([-2.0, 0.0, 1.0])
    # hinge: relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1, 2]
    assert discriminator_adversarial_loss(d_real, d_fake).item() == pytest.approx(2.5 / 3 + 1.0)
    assert generator_adversarial_loss(d_fake).item() == pytest.approx(1 / 3)
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    ns = (sum(sp(-v) for v in (2.0, 0.5, -1.0)) + sum(sp(v) for v in (-2.0, 0.0, 1.0))) / 3
    assert discriminator_adversarial_loss(d_real, d_fake, "non_saturating").item() == pytest.approx(ns)  # fmt: skip
    g_ns = sum(sp(-v) for v in (-2.0, 0.0, 1.0)) / 3
    assert generator_adversarial_loss(d_fake, "non_saturating").item() == pytest.approx(g_ns)
    with pytest.raises(ValueError, match="'wgan'"):
        generator_adversarial_loss(d_fake, "wgan")


def test_r1_equals_the_hand_computed_gradient_norm():
    # D(x) = sum(w x^2): dD/dx = 2 w x, so R1 = mean_b sum (2 w x_b)^2
    w = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    x = torch.randn(4, 2, 3, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    d = (w * x**2).flatten(1).sum(1)  # [4]
    expected = (2 * w * x.detach()).pow(2).flatten(1).sum(1).mean()
    r1 = r1_penalty(d, x)
    assert torch.allclose(r1, expected)
    r1.backward()  # create_graph: the penalty trains D
    assert torch.allclose(x.grad, (8 * w**2 * x.detach()) / 4, atol=1e-6)


def test_ema_update_is_the_moving_average():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = a.weight.detach().clone()
    ema_update(a, b, 0.9)
    assert torch.allclose(a.weight, 0.9 * before + 0.1 * b.weight)
    ema_update(a, b, 0.0)
    assert torch.equal(a.weight, b.weight)


class _Spy(torch.nn.Module):
    """DiffAugment recording what it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = DiffAugment("color,translation,cutout")
        self.seen: list[torch.Tensor] = []

    def forward(self, x, *, probability=1.0, generator=None):
        self.seen.append(x)
        return self.inner(x, probability=probability, generator=generator)


@pytest.mark.parametrize(
    ("mode", "d_calls", "g_calls"), [("both", 2, 1), ("reals_only", 1, 0), ("none", 0, 0)]
)
def test_augmentation_applies_where_the_mode_says(mode, d_calls, g_calls):
    torch.manual_seed(0)
    gan = build_gan(_config())
    reals = torch.rand(4, 4, 16, 16) * 2 - 1
    conds = _conds(["car", "car", "bus", "car"])
    spy = _Spy()
    g = torch.Generator().manual_seed(0)
    out = discriminator_losses(gan, reals, conds, augment=spy, mode=mode, generator=g)
    assert len(spy.seen) == d_calls and {"loss_d", "d_real", "d_fake", "r_t"} <= set(out)
    if d_calls:
        assert torch.equal(spy.seen[0], reals)  # the real branch first
    if d_calls == 2:
        assert not torch.equal(spy.seen[1], reals)  # then the fakes
    spy.seen.clear()
    out = generator_losses(gan, conds, augment=spy, mode=mode, generator=g)
    assert len(spy.seen) == g_calls
    out["loss_g"].backward()  # gradients reach G through the augmentation
    assert gan.generator.out_conv.weight.grad.abs().sum() > 0


def test_a_step_updates_only_what_it_should_and_sampling_is_deterministic():
    torch.manual_seed(0)
    config = _config(loss={"r1_every": 1})
    gan = build_gan(config)
    optimizer = build_optimizer(gan, config)
    ema_before = [p.clone() for p in gan.generator_ema.parameters()]
    reals = torch.rand(4, 4, 16, 16) * 2 - 1
    conds = _conds(["car", "car", "bus", "car"])
    values = train_step(
        gan,
        optimizer,
        reals,
        conds,
        augment=build_augment(config),
        config=config,
        step=0,
        generator=torch.Generator().manual_seed(0),
    )
    assert set(values) == {"loss_d", "d_real", "d_fake", "r_t", "r1", "loss_g"}
    assert [g["name"] for g in optimizer.param_groups] == ["generator", "discriminator"]
    moved = [not torch.equal(a, b) for a, b in zip(ema_before, gan.generator_ema.parameters())]
    assert any(moved)
    out = sample_gan(gan, conds, generator=torch.Generator().manual_seed(7))
    again = sample_gan(gan, conds, generator=torch.Generator().manual_seed(7))
    other = sample_gan(gan, conds, generator=torch.Generator().manual_seed(8))
    assert torch.equal(out.signals, again.signals) and not torch.equal(out.signals, other.signals)
    assert out.signals.shape == (4, 4, 16, 16) and float(out.signals.abs().max()) <= 1.0
    assert out.indices == [] and out.residual is None


def test_config_errors_name_the_value():
    with pytest.raises(ValueError, match="unknown op 'blur'"):
        _config(augment={"policy": "color,blur"})
    with pytest.raises(ValueError, match="colour"):
        _config(data={"modality": "lidar", "lidar_grid": [16, 16, 4]}, augment={"policy": "color"})
    with pytest.raises(ValueError, match="ada_target"):
        _config(augment={"mode": "none", "ada_target": 0.6})
    with pytest.raises(ValueError, match="power of two"):
        _config(data={"image_size": 24})


# ---------------------------------------------------------------------------------------------
# Training on a tiny-world bank
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bank(tiny_train_bank):
    return tiny_train_bank  # read-only (tests/conftest.py)


def _train_config(bank, steps, **train) -> GANConfig:
    return _config(
        bank,
        augment={"ada_target": 0.6, "ada_images": 64},
        train={
            "batch_size": 8,
            "steps": steps,
            "log_every": 2,
            "checkpoint_every": 2,
            "kid_every": 2,
            "kid_subset": 16,
            "classifier_steps": 3,
            **train,
        },
    )


def test_trains_logs_and_resumes_bit_for_bit(bank, tmp_path):
    quiet = dict(progress=False, log=lambda *_: None)
    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    train_gan(_train_config(bank, 4), resumed, **quiet)
    final = train_gan(_train_config(bank, 6), resumed, resume=True, **quiet)
    train_gan(_train_config(bank, 6), straight, **quiet)
    log = [json.loads(line) for line in (resumed / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [2, 4, 6] and {r["stage"] for r in log} == {"gan"}
    keys = {"d_real", "d_fake", "r_t", "loss_d", "loss_g", "r1", "kid", "augment_probability"}
    assert keys <= set(log[0])
    assert all(-1 <= r["r_t"] <= 1 for r in log)
    assert log[1]["augment_probability"] in (0.0, 0.5)  # ADA: +-8*4/64 once, clamped at 0
    a, config, ranges = load_gan(resumed)
    b, _, _ = load_gan(straight)
    assert final.name == "step_6" and config.kind == "gan" and ranges.counts
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)  # bit for bit
    assert (resumed / "best" / "checkpoints" / "latest").is_file()
    straight_log = [json.loads(x) for x in (straight / "log.jsonl").read_text().splitlines()]
    assert straight_log[-1]["kid"] == log[-1]["kid"]


def test_bad_training_input_names_the_value(bank, tmp_path):
    with pytest.raises(ValueError, match=r"train.num_real: 100000 is more than the \d+ camera"):
        train_gan(_train_config(bank, 2, num_real=100_000), tmp_path / "w", progress=False)
    data = SignalSet(torch.zeros(5, 4, 16, 16), _conds(["car"] * 5), torch.arange(5))
    config = _config(data={"classes": ["car", "bus"]})
    with pytest.raises(ValueError, match="data.classes: 'bus' has no camera signal"):
        select_signals(data, config)
    subset = select_signals(data, _config(train={"num_real": 3}))
    assert len(subset) == 3 and len(set(subset.object_index.tolist())) == 3


# ---------------------------------------------------------------------------------------------
# A short run on a toy dataset lowers KID
# ---------------------------------------------------------------------------------------------
def _toy_crops(n: int, seed: int) -> tuple[torch.Tensor, ObjectConditions]:
    """Class 0 ("car"): a red square; class 1 ("pedestrian"): a blue bar; jittered positions;
    the alpha is the shape's mask. [n, 4, 16, 16] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = -torch.ones(n, 4, 16, 16)
    for i in range(n):
        dy, dx = torch.randint(-2, 3, (2,), generator=g).tolist()
        h, w = (6, 6) if labels[i] == 0 else (10, 3)
        top, left = 8 - h // 2 + dy, 8 - w // 2 + dx
        colour = torch.tensor([0.9, -0.8, -0.8]) if labels[i] == 0 else torch.tensor([-0.8, -0.6, 0.9])  # fmt: skip
        images[i, :3, top : top + h, left : left + w] = colour[:, None, None]
        images[i, 3, top : top + h, left : left + w] = 1.0
    names = ["car" if label == 0 else "pedestrian" for label in labels.tolist()]
    return images, _conds(names, seed)


@pytest.mark.slow
def test_a_short_toy_run_lowers_kid():
    reals, conds = _toy_crops(128, seed=0)
    classifier = train_crop_classifier(
        reals,
        conds.label,
        conds.view_angle,
        steps=60,
        batch_size=32,
        width=8,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    torch.manual_seed(0)
    config = _config(train={"g_lr": 1e-3, "d_lr": 1e-3, "ema_decay": 0.9}, loss={"r1_gamma": 0.01})
    gan = build_gan(config)
    optimizer = build_optimizer(gan, config)
    augment = build_augment(config)
    before, _ = gan_kid(gan, reals, conds, classifier)
    for step in range(150):
        g = torch.Generator().manual_seed(step)
        rows = torch.randint(len(reals), (16,), generator=g)
        train_step(
            gan, optimizer, reals[rows], conds.index(rows), augment=augment, config=config,
            step=step, generator=g,
        )  # fmt: skip
    after, _ = gan_kid(gan, reals, conds, classifier)
    print(f"toy KID before {before:.4g} after {after:.4g}")
    assert after < 0.2 * before, (before, after)
