"""The latent diffusion baseline: its default size is within 10% of the default HART
generator's, a short overfit drives the eps-MSE down, sampling is deterministic under a
generator and equals a reference DDIM loop with guidance combined by hand, the frozen tokenizer
gets no gradient, a HART checkpoint is refused naming `kind`, and train + resume + time budget
+ load round-trip on a tiny-world bank."""

from __future__ import annotations

import json

import pytest
import torch

from perception.checkpoint import load_checkpoint, save_checkpoint
from perception.config import load_config
from perception.generative.conditions import ObjectConditions
from perception.generative.config import HARTConfig
from perception.generative.hart.baseline import (
    LatentDiffusionConfig,
    build_latent_diffusion,
    generator_parameter_count,
    load_latent_diffusion,
    sample_latent_diffusion,
    train_latent_diffusion,
)
from perception.generative.hart.diffusion import DDIMSampler
from perception.generative.hart.model import build_hart
from perception.generative.hart.train import train_hart
from perception.generative.registry import generator_kind_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_TOKENIZER = {"latent_dim": 4, "vocab_size": 16, "scales": [1, 2, 4], "hidden": 16}


def _config(**model) -> LatentDiffusionConfig:
    return LatentDiffusionConfig.model_validate(
        {
            "data": {"bank": "unused", "modality": "camera", "image_size": 16},
            "tokenizer_from": "unused",
            "tokenizer": TINY_TOKENIZER,
            "model": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 32, **model},
        }
    )


def _conditions(n: int) -> ObjectConditions:
    return ObjectConditions.create(
        label=["car", "bicycle"] * (n // 2),
        size=[[1.9, 4.5, 1.6], [0.6, 1.7, 1.2]] * (n // 2),
        view_angle=torch.linspace(-3, 3, n),
        depth=torch.linspace(5, 40, n),
        sensor=["CAM_FRONT", "CAM_BACK"] * (n // 2),
    )


def _randomized(model):
    """Every trainable weight random (the zero-initialised AdaLN-zero DiT predicts eps = 0 for
    every condition, which would make the guidance checks vacuous)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("tokenizer."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return model


def test_default_size_is_within_10_percent_of_hart():
    hart_config = load_config("configs/generative/hart_camera.yaml", schema=HARTConfig)
    hart = build_hart(hart_config)
    config = LatentDiffusionConfig(
        data=hart_config.data, tokenizer_from="unused", tokenizer=hart_config.tokenizer
    )
    ldm = build_latent_diffusion(config)
    n_hart, n_ldm = generator_parameter_count(hart), generator_parameter_count(ldm)
    # the helper counts everything but the (shared, frozen) tokenizer
    parts = [ldm.condition, ldm.network]
    assert n_ldm == sum(p.numel() for m in parts for p in m.parameters())
    tok = sum(p.numel() for p in ldm.tokenizer.parameters())
    assert n_ldm == sum(p.numel() for p in ldm.parameters()) - tok
    assert abs(n_ldm / n_hart - 1) < 0.10


def test_frozen_tokenizer_gets_no_gradient():
    torch.manual_seed(0)
    model = build_latent_diffusion(_config(cond_dropout=0.5))
    model.train()
    assert not model.tokenizer.training and model.network.training
    signals = torch.rand(6, 4, 16, 16) * 2 - 1
    losses = model.loss(signals, _conditions(6), generator=torch.Generator().manual_seed(0))
    assert set(losses) == {"total", "mse"}
    losses["total"].backward()
    for name, p in model.named_parameters():
        if name.startswith("tokenizer."):
            assert not p.requires_grad and p.grad is None, name
        else:
            assert p.grad is not None, name


def test_short_overfit_drives_the_eps_mse_down():
    torch.manual_seed(0)
    model = build_latent_diffusion(_config(width=64, cond_dim=64, cond_dropout=0.0))
    signals = torch.rand(4, 4, 16, 16) * 2 - 1
    conds = _conditions(4)
    model.fit_latent_scale(signals)
    assert float(model.encode(signals).pow(2).mean()) == pytest.approx(1.0, rel=1e-4)

    def eval_mse() -> float:
        # the same t and noise draws every time: 32 copies of the 4 latents
        with torch.no_grad():
            big = signals.repeat(32, 1, 1, 1)
            rows = torch.arange(4).repeat(32)
            loss = model.loss(big, conds.index(rows), generator=torch.Generator().manual_seed(9))
        return float(loss["mse"])

    before = eval_mse()
    assert before == pytest.approx(1.0, abs=0.1)  # an untrained DiT predicts eps = 0
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=3e-3)
    model.train()
    for step in range(150):
        gen = torch.Generator().manual_seed(100 + step)
        loss = model.loss(signals.repeat(8, 1, 1, 1), conds.index(torch.arange(4).repeat(8)),
                          generator=gen)["total"]  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = eval_mse()
    assert after < 0.25 * before, (before, after)  # measured: 0.98 -> 0.10


def test_sampling_is_deterministic_under_a_generator():
    torch.manual_seed(0)
    model = _randomized(build_latent_diffusion(_config()))
    conds = _conditions(4)

    def run(seed, **kw):
        gen = torch.Generator().manual_seed(seed)
        return sample_latent_diffusion(model, conds, steps=4, generator=gen, **kw)

    a, b, c = run(0), run(0), run(1)
    assert a.signals.shape == (4, 4, 16, 16) and a.indices == [] and a.residual is None
    assert torch.equal(a.signals, b.signals) and not torch.equal(a.signals, c.signals)
    # eta > 0 draws DDIM's noise from the same generator: still reproducible
    assert torch.equal(run(3, eta=1.0).signals, run(3, eta=1.0).signals)


def _reference(model, conds, *, steps, guidance, seed):
    """DDIM by hand: conditional and null predictions in separate calls, combined as
    eps_c + w (eps_c - eps_u), decoded with the tokenizer at the fitted scale."""
    B = len(conds)
    net = model.network
    cond = model.condition(conds)
    null = model.condition(conds, torch.ones(B, dtype=torch.bool))
    sampler = DDIMSampler(model.schedule, steps=steps, spacing="leading")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, net.latent_dim, net.grid, net.grid, generator=gen)
    ts = sampler.timesteps.tolist()
    for i, t in enumerate(ts):
        tt = torch.full((B,), t, dtype=torch.long)
        eps_c, eps_u = net(x, tt, cond), net(x, tt, null)
        eps = eps_c + guidance * (eps_c - eps_u)
        x = sampler.step(eps, t, ts[i + 1] if i + 1 < len(ts) else -1, x)
    return model.tokenizer.decode(x * model.latent_scale)


@pytest.mark.parametrize("guidance", [0.0, 1.0, 2.5])
@torch.no_grad()
def test_guided_sampling_equals_a_reference_loop(guidance):
    torch.manual_seed(0)
    model = _randomized(build_latent_diffusion(_config()))
    model.latent_scale.fill_(1.7)
    conds = _conditions(4)
    gen = torch.Generator().manual_seed(5)
    out = sample_latent_diffusion(model, conds, steps=5, guidance=guidance, generator=gen)
    ref = _reference(model, conds, steps=5, guidance=guidance, seed=5)
    torch.testing.assert_close(out.signals, ref, rtol=1e-4, atol=1e-5)
    if guidance:  # the guidance matters (so this check can fail)
        plain = _reference(model, conds, steps=5, guidance=0.0, seed=5)
        assert (out.signals - plain).abs().max() > 1e-3


def test_a_hart_checkpoint_is_refused_naming_kind(tmp_path):
    hart_config = HARTConfig.model_validate(
        {
            "data": {"bank": "unused", "modality": "camera", "image_size": 16},
            "tokenizer": TINY_TOKENIZER,
            "transformer": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 32},
            "residual_head": {"width": 32, "depth": 1},
        }
    )
    work = tmp_path / "hart"
    ckpt = save_checkpoint(
        work / "transformer", step=1, model=build_hart(hart_config), config=hart_config
    )
    (work / "config.yaml").write_text((ckpt / "config.yaml").read_text())
    for path in (ckpt, work / "transformer", work):
        assert generator_kind_of(path) == "hart"
        with pytest.raises(ValueError, match="kind is 'hart', not 'ldm'"):
            load_latent_diffusion(path)
    with pytest.raises(FileNotFoundError):
        load_latent_diffusion(tmp_path / "empty")


# --- train + resume + load on a tiny-world bank -----------------------------------------------
@pytest.fixture(scope="module")
def bank(tiny_train_bank):
    return tiny_train_bank  # read-only (tests/conftest.py)


def test_train_resume_budget_and_load_round_trip(bank, tmp_path):
    hart_config = HARTConfig.model_validate(
        {
            "data": {"bank": str(bank), "image_size": 16},
            "tokenizer": TINY_TOKENIZER,
            "transformer": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 32},
            "residual_head": {"width": 32, "depth": 1},
            "train": {"batch_size": 8, "classifier_steps": 0, "tokenizer_steps": 4,
                      "transformer_steps": 2, "log_every": 2, "checkpoint_every": 2},
        }
    )  # fmt: skip
    hart_ckpt = train_hart(hart_config, tmp_path / "hart", progress=False, log=lambda _: None)

    def config(**train):
        return LatentDiffusionConfig.model_validate(
            {
                "data": {"bank": str(bank), "image_size": 16},
                "tokenizer_from": str(tmp_path / "hart"),
                "model": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 32},
                "train": {"batch_size": 8, "steps": 4, "log_every": 2, "checkpoint_every": 2,
                          **train},
            }
        )  # fmt: skip

    work = tmp_path / "ldm"
    lines: list[str] = []
    latest = train_latent_diffusion(config(), work, progress=False, log=lines.append)
    assert latest == work / "ldm" / "checkpoints" / "step_4"
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()]
    assert [(r["stage"], r["step"]) for r in log] == [("ldm", 2), ("ldm", 4)]
    assert {"mse", "total", "elapsed_s"} <= set(log[0])

    # resume: a longer run continues at step 4
    latest = train_latent_diffusion(config(steps=6), work, resume=True, progress=False,
                                    log=lines.append)  # fmt: skip
    assert latest.name == "step_6" and any("resumed at step 4" in line for line in lines)

    assert generator_kind_of(work) == generator_kind_of(latest) == "ldm"
    model, loaded_config, ranges = load_latent_diffusion(work)
    assert loaded_config.tokenizer is not None and loaded_config.tokenizer.latent_dim == 4
    state = json.loads((latest / "training_state.json").read_text())["extra"]
    assert state["tokenizer_checkpoint"] == str(hart_ckpt.resolve())
    # the baseline's tokenizer is HART's, frozen: same weights after training
    hart = build_hart(hart_config)
    load_checkpoint(hart_ckpt, model=hart, restore_rng=False, schema=HARTConfig)
    for name, value in hart.tokenizer.state_dict().items():
        assert torch.equal(model.tokenizer.state_dict()[name], value), name
    assert float(model.latent_scale) != 1.0
    conds = _conditions(2)
    ranges.check(conds.index([0]))
    out = sample_latent_diffusion(model, conds, steps=3, generator=torch.Generator().manual_seed(0))
    assert out.signals.shape == (2, 4, 16, 16) and torch.isfinite(out.signals).all()

    # a time budget stops at the first checkpoint after it, far before `steps`
    budget = train_latent_diffusion(config(steps=100, time_budget_s=1e-6), tmp_path / "budget",
                                    progress=False, log=lines.append)  # fmt: skip
    assert budget.name == "step_2" and any("time budget" in line for line in lines)
    # resuming a spent budget trains nothing more
    again = train_latent_diffusion(config(steps=100, time_budget_s=1e-6), tmp_path / "budget",
                                   resume=True, progress=False, log=lines.append)  # fmt: skip
    assert again == budget
