"""The composed HART generator: the training loss reaches every trainable part, `sample` (KV
cache, guidance) equals an uncached reference loop that re-runs the whole prefix, the head's
residual is added only when asked, and a config builds what it says."""

from __future__ import annotations

import pytest
import torch

from perception.generative.conditions import ObjectConditions, guided
from perception.generative.config import HARTConfig
from perception.generative.hart.model import build_hart, sample, sample_logits
from perception.generative.hart.transformer import scale_slices

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(**tokenizer) -> HARTConfig:
    return HARTConfig.model_validate(
        {
            "data": {"bank": "unused", "modality": "camera", "image_size": 16},
            "tokenizer": {"latent_dim": 4, "vocab_size": 16, "scales": [1, 2, 4], "hidden": 16,
                          **tokenizer},
            "transformer": {"width": 32, "depth": 2, "heads": 2, "cond_dim": 32},
            "residual_head": {"width": 32, "depth": 1},
        }
    )  # fmt: skip


def _conditions(n: int) -> ObjectConditions:
    return ObjectConditions.create(
        label=["car", "bicycle"] * (n // 2),
        size=[[1.9, 4.5, 1.6], [0.6, 1.7, 1.2]] * (n // 2),
        view_angle=torch.linspace(-3, 3, n),
        depth=torch.linspace(5, 40, n),
        sensor=["CAM_FRONT", "CAM_BACK"] * (n // 2),
    )


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_hart(_config())


def test_training_loss_reaches_every_trainable_part(model):
    signals = torch.rand(4, 4, 16, 16) * 2 - 1
    model.tokenizer.requires_grad_(False)
    losses = model.transformer_loss(
        signals, _conditions(4), generator=torch.Generator().manual_seed(0)
    )
    assert set(losses) >= {"ce", "diffusion", "total", "accuracy"}
    losses["total"].backward()
    for name, p in model.named_parameters():
        if name.startswith("tokenizer."):
            assert p.grad is None, name
        elif not name.startswith("condition.null"):  # the null row: only dropped rows reach it
            assert p.grad is not None, name


def _uncached_indices(model, conds, *, guidance, generator):
    """Reference: at each scale, run the whole (uncached) forward on the prefix sampled so far
    (later scales' inputs zero: the block-causal mask hides them) and sample that scale.
    `sample` first draws the residual head's seed (one int64), so the reference does too."""
    torch.randint(0, 2**62, (), generator=generator)
    q = model.quantizer
    scales = q.scales
    B = len(conds)
    cond = model.condition(conds)
    null = model.condition(conds, torch.ones(B, dtype=torch.bool))
    both = torch.cat([cond, null])
    assert torch.equal(both, model.condition.with_null(conds))
    slices = scale_slices(scales)
    indices = []
    f_hat = torch.zeros(B, q.dim, q.grid, q.grid)
    inputs = torch.zeros(2 * B, q.seq_len - scales[0] ** 2, q.dim)
    for k in range(len(scales)):
        if k > 0:
            nxt = q.next_scale_input(f_hat, k - 1).repeat(2, 1, 1)
            sl = slices[k]
            inputs[:, sl.start - scales[0] ** 2 : sl.stop - scales[0] ** 2] = nxt
        logits, _ = model.transformer(both, inputs)
        logits = logits[:, slices[k]]
        w = guidance * k / (len(scales) - 1)
        idx = sample_logits(guided(logits[:B], logits[B:], w), generator=generator)
        indices.append(idx)
        f_hat = f_hat + q.embed_scale(k, idx)
    return indices


@pytest.mark.parametrize("guidance", [0.0, 3.0])
def test_cached_sampling_equals_the_uncached_reference(model, guidance):
    conds = _conditions(4)
    model.eval()
    with torch.no_grad():
        expected = _uncached_indices(
            model, conds, guidance=guidance, generator=torch.Generator().manual_seed(5)
        )
    got = sample(model, conds, guidance=guidance, use_residual=False,
                 generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert len(got.indices) == len(expected)
    for a, b in zip(got.indices, expected, strict=True):
        assert torch.equal(a, b)
    assert got.residual is None
    assert torch.allclose(got.signals, model.tokenizer.detokenize(expected), atol=1e-5)


def test_the_residual_head_adds_a_continuous_latent_only_when_asked(model):
    conds = _conditions(2)
    plain = sample(model, conds, use_residual=False, generator=torch.Generator().manual_seed(1))
    hybrid = sample(model, conds, use_residual=True, generator=torch.Generator().manual_seed(1))
    assert hybrid.residual is not None and hybrid.residual.shape == (2, 4, 4, 4)
    for a, b in zip(plain.indices, hybrid.indices, strict=True):
        assert torch.equal(a, b)  # the head draws after the discrete tokens
    assert plain.signals.shape == hybrid.signals.shape == (2, 4, 16, 16)


def test_arms_with_and_without_the_head_share_their_tokens_over_batches(model):
    """One generator through several batches (as an evaluation samples): the head's noise comes
    from a stream of its own, so each batch's tokens are the same with the head on, off, or at
    another temperature: the arms' comparison is paired."""
    conds = _conditions(2)
    runs = {}
    for name, kw in {"off": {"use_residual": False}, "on": {"use_residual": True},
                     "cold": {"use_residual": True, "residual_temperature": 0.0}}.items():  # fmt: skip
        generator = torch.Generator().manual_seed(3)
        runs[name] = [sample(model, conds, generator=generator, **kw) for _ in range(3)]
    for batch in range(3):
        for other in ("on", "cold"):
            for a, b in zip(runs["off"][batch].indices, runs[other][batch].indices, strict=True):
                assert torch.equal(a, b), (batch, other)
    assert not torch.equal(runs["on"][0].residual, runs["cold"][0].residual)
    assert not torch.equal(runs["off"][0].indices[-1], runs["off"][1].indices[-1])  # streams move


def test_sample_logits_truncation_keeps_only_allowed_tokens():
    logits = torch.tensor([[[5.0, 4.0, 3.0, -1.0]]]).repeat(1, 200, 1)
    top2 = sample_logits(logits, top_k=2, generator=torch.Generator().manual_seed(0))
    assert set(top2.unique().tolist()) == {0, 1}
    nucleus = sample_logits(logits, top_p=0.5, generator=torch.Generator().manual_seed(0))
    assert set(nucleus.unique().tolist()) == {0}  # p(0) = 0.71 > 0.5: the nucleus is token 0


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="signal side 24"):
        HARTConfig.model_validate({"data": {"bank": "b", "image_size": 24}})
    with pytest.raises(ValueError, match="strictly increasing"):
        _config(scales=[1, 4, 2])
    with pytest.raises(ValueError, match="kind"):
        HARTConfig.model_validate({"kind": "gan", "data": {"bank": "b"}})
    no_head = _config().model_copy(
        update={"residual_head": _config().residual_head.model_copy(update={"enabled": False})}
    )
    assert build_hart(no_head).residual_head is None


def test_guidance_convention():
    c, u = torch.randn(3, 5), torch.randn(3, 5)
    assert torch.equal(guided(c, u, 0.0), c)
    torch.testing.assert_close(guided(c, u, 2.0), 3 * c - 2 * u)
