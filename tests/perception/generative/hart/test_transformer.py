"""ScaleTransformer: the block-causal mask, causality of the network, KV-cached stepping equal to
the full forward, gradients, a short overfit, determinism and the errors."""

import pytest
import torch
import torch.nn.functional as F

from perception.generative.hart.transformer import (
    KVCache,
    ScaleTransformer,
    block_causal_mask,
    scale_slices,
)

SCALES = (1, 2, 3, 4, 6, 8)
L = sum(s * s for s in SCALES)  # 130
D, V, C = 4, 16, 8  # token_dim, vocab_size, cond_dim


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(seed: int = 0, **kwargs) -> ScaleTransformer:
    torch.manual_seed(seed)
    args = dict(token_dim=D, vocab_size=V, scales=SCALES, cond_dim=C, width=32, depth=2, heads=4)
    args.update(kwargs)
    return ScaleTransformer(**args).eval()


def _data(batch: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cond = torch.randn(batch, C, generator=g)
    inputs = torch.randn(batch, L - SCALES[0] ** 2, D, generator=g)
    return cond, inputs


def _step_all(model, cond, inputs):
    """Step k = 0..K-1 with the inputs forward reads; concatenated logits and hidden."""
    cache = model.new_cache()
    first = SCALES[0] ** 2
    logits, hidden = [], []
    for k, sl in enumerate(scale_slices(SCALES)):
        inputs_k = None if k == 0 else inputs[:, sl.start - first : sl.stop - first]
        lo, hi = model.step(k, cond, inputs_k, cache)
        assert lo.shape == (cond.shape[0], SCALES[k] ** 2, V)
        assert hi.shape == (cond.shape[0], SCALES[k] ** 2, model.width)
        logits.append(lo)
        hidden.append(hi)
    assert cache.next_scale == len(SCALES)
    return torch.cat(logits, dim=1), torch.cat(hidden, dim=1)


# ------------------------------------------------------------------------------------------
# 1. The mask
# ------------------------------------------------------------------------------------------
def test_scale_slices_cover_the_sequence():
    slices = scale_slices(SCALES)
    assert [(s.start, s.stop) for s in slices] == [
        (0, 1), (1, 5), (5, 14), (14, 30), (30, 66), (66, 130)
    ]  # fmt: skip


def test_block_causal_mask_structure():
    mask = block_causal_mask(SCALES)
    assert mask.dtype == torch.bool and mask.shape == (L, L)
    slices = scale_slices(SCALES)
    expected = torch.zeros(L, L, dtype=torch.bool)
    for a, sa in enumerate(slices):
        for b, sb in enumerate(slices):
            if b <= a:
                expected[sa, sb] = True
    assert torch.equal(mask, expected)
    for sa in slices:
        # Every token sees all of its own scale and of earlier ones ...
        assert mask[sa, : sa.stop].all()
        # ... and nothing of a later scale.
        assert not mask[sa, sa.stop :].any()
    # Block lower-triangular: contains the causal lower triangle, is itself within the
    # lower triangle of blocks.
    assert mask[torch.tril(torch.ones(L, L, dtype=torch.bool))].all()
    assert mask.sum().item() == sum(
        (s.stop - s.start) * s.stop for s in slices
    )  # row count x tokens up to the scale's end


def test_mask_errors():
    with pytest.raises(ValueError, match="scales"):
        block_causal_mask(())
    with pytest.raises(ValueError, match="scales"):
        block_causal_mask((1, 3, 2))
    with pytest.raises(ValueError, match="scales"):
        block_causal_mask((0, 1))


# ------------------------------------------------------------------------------------------
# 2. Causality in the network
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def test_changing_scale_k_leaves_earlier_scales_unchanged():
    model = _model()
    cond, inputs = _data(2)
    logits, hidden = model(cond, inputs)
    assert logits.shape == (2, L, V) and hidden.shape == (2, L, 32)
    first = SCALES[0] ** 2
    slices = scale_slices(SCALES)
    g = torch.Generator().manual_seed(5)
    for k in range(1, len(SCALES)):
        sl = slices[k]
        changed = inputs.clone()
        changed[:, sl.start - first : sl.stop - first] = torch.randn(
            2, sl.stop - sl.start, D, generator=g
        )
        logits2, hidden2 = model(cond, changed)
        torch.testing.assert_close(logits2[:, : sl.start], logits[:, : sl.start], atol=1e-6, rtol=0)
        torch.testing.assert_close(hidden2[:, : sl.start], hidden[:, : sl.start], atol=1e-6, rtol=0)
        assert (logits2[:, sl] - logits[:, sl]).abs().max() > 1e-4


@torch.no_grad()
def test_rows_are_independent():
    model = _model()
    cond, inputs = _data(3)
    logits, _ = model(cond, inputs)
    logits1, _ = model(cond[1:2], inputs[1:2])
    torch.testing.assert_close(logits1, logits[1:2], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------
# 3. KV-cached stepping equals the full forward
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def test_cached_stepping_equals_forward():
    model = _model()
    cond, inputs = _data(3)
    logits, hidden = model(cond, inputs)
    step_logits, step_hidden = _step_all(model, cond, inputs)
    torch.testing.assert_close(step_logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(step_hidden, hidden, atol=1e-5, rtol=0)


@torch.no_grad()
def test_cached_stepping_with_guidance_batch():
    # Classifier-free guidance stacks conditional and unconditional rows: [2B].
    model = _model()
    cond, inputs = _data(2)
    null = torch.zeros_like(cond)
    cond2 = torch.cat([cond, null])  # [2B, C]
    inputs2 = torch.cat([inputs, inputs])  # [2B, L - 1, D]
    logits, hidden = model(cond2, inputs2)
    step_logits, step_hidden = _step_all(model, cond2, inputs2)
    torch.testing.assert_close(step_logits, logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(step_hidden, hidden, atol=1e-5, rtol=0)
    # The conditional rows of the [2B] run equal a [B] run.
    cond_logits, _ = _step_all(model, cond, inputs)
    torch.testing.assert_close(step_logits[:2], cond_logits, atol=1e-5, rtol=0)
    assert (step_logits[:2] - step_logits[2:]).abs().max() > 1e-4


@torch.no_grad()
def test_cached_stepping_other_scales_and_one_scale():
    for scales in ((2, 3, 5), (4,)):
        torch.manual_seed(0)
        model = ScaleTransformer(
            token_dim=D, vocab_size=V, scales=scales, cond_dim=C, width=32, depth=2, heads=2
        ).eval()
        n = sum(s * s for s in scales)
        g = torch.Generator().manual_seed(3)
        cond = torch.randn(2, C, generator=g)
        inputs = torch.randn(2, n - scales[0] ** 2, D, generator=g)
        logits, hidden = model(cond, inputs)
        cache = model.new_cache()
        outs = []
        for k, sl in enumerate(scale_slices(scales)):
            first = scales[0] ** 2
            x = None if k == 0 else inputs[:, sl.start - first : sl.stop - first]
            outs.append(model.step(k, cond, x, cache)[0])
        torch.testing.assert_close(torch.cat(outs, 1), logits, atol=1e-5, rtol=0)
        # The s0^2 start tokens share the condition but differ by position.
        assert (logits[:, 0] - logits[:, 1]).abs().max() > 1e-6


# ------------------------------------------------------------------------------------------
# 4. Gradients and 5. a short overfit
# ------------------------------------------------------------------------------------------
def test_gradient_reaches_every_parameter():
    model = _model().train()
    cond, inputs = _data(2)
    targets = torch.randint(0, V, (2, L), generator=torch.Generator().manual_seed(2))
    logits, hidden = model(cond, inputs)
    loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name


def test_short_overfit_drives_cross_entropy_down():
    model = _model().train()
    cond, inputs = _data(4)
    targets = torch.randint(0, V, (4, L), generator=torch.Generator().manual_seed(2))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        logits, _ = model(cond, inputs)
        loss = F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(torch.log(torch.tensor(float(V))).item(), rel=0.05)
    assert losses[-1] < 0.05 * losses[0], losses[::10]  # measured: 2.78 -> 0.0085


# ------------------------------------------------------------------------------------------
# 6. Determinism and errors
# ------------------------------------------------------------------------------------------
@torch.no_grad()
def test_determinism_under_a_seed():
    cond, inputs = _data(2)
    a = _model(seed=7)(cond, inputs)
    b = _model(seed=7)(cond, inputs)
    c = _model(seed=8)(cond, inputs)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_constructor_errors():
    base = dict(token_dim=D, vocab_size=V, scales=SCALES, cond_dim=C, width=32, depth=2, heads=4)
    with pytest.raises(ValueError, match="width"):
        ScaleTransformer(**{**base, "heads": 5})
    with pytest.raises(ValueError, match="scales"):
        ScaleTransformer(**{**base, "scales": (2, 2)})
    with pytest.raises(ValueError, match="vocab_size"):
        ScaleTransformer(**{**base, "vocab_size": 0})


@torch.no_grad()
def test_forward_shape_errors():
    model = _model()
    cond, inputs = _data(2)
    with pytest.raises(ValueError, match=r"inputs: expected \[B, L - s0\^2, token_dim\]"):
        model(cond, inputs[:, :-1])
    with pytest.raises(ValueError, match=r"inputs: .*\[2, 129, 4\]"):
        model(cond, inputs[..., :3])
    with pytest.raises(ValueError, match="inputs"):
        model(cond, inputs[:1])  # batch differs from cond's
    with pytest.raises(ValueError, match=r"cond: expected \[B, cond_dim=8\]"):
        model(cond[:, :5], inputs)
    with pytest.raises(ValueError, match="cond"):
        model(cond[0], inputs)


@torch.no_grad()
def test_step_order_and_shape_errors():
    model = _model()
    cond, inputs = _data(2)
    cache = model.new_cache()
    assert isinstance(cache, KVCache)
    with pytest.raises(ValueError, match="in order"):
        model.step(1, cond, inputs[:, :4], cache)
    with pytest.raises(ValueError, match="inputs_k: must be None"):
        model.step(0, cond, inputs[:, :1], cache)
    model.step(0, cond, None, cache)
    with pytest.raises(ValueError, match="in order"):
        model.step(0, cond, None, cache)  # repeated
    with pytest.raises(ValueError, match="in order"):
        model.step(2, cond, inputs[:, 4:13], cache)  # skipped scale 1
    with pytest.raises(ValueError, match="inputs_k: required"):
        model.step(1, cond, None, cache)
    with pytest.raises(ValueError, match=r"inputs_k: expected \[B, s_1\^2=4, token_dim\]"):
        model.step(1, cond, inputs[:, :5], cache)
    with pytest.raises(ValueError, match="batch"):
        model.step(1, torch.cat([cond, cond]), inputs[:, :4].repeat(2, 1, 1), cache)
    with pytest.raises(ValueError, match=r"k: must be an int scale index"):
        model.step(len(SCALES), cond, None, cache)
    # The failed calls left the cache usable.
    assert cache.next_scale == 1
    model.step(1, cond, inputs[:, :4], cache)
    assert cache.next_scale == 2 and cache.keys[0].shape == (2, 4, 5, 8)
