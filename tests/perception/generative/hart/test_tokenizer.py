"""The hybrid tokenizer (perception.generative.hart.tokenizer): exact invariants of the
multi-scale residual quantizer (scales plus residual rebuild the latent; teacher forcing equals
step-by-step sampling inputs), dead-code revival, a short overfit where the hybrid latent decodes
better than the discrete one, errors that name the field, and determinism under a generator.

Not tested: that the residual shrinks with every added scale. It is not an exact property (the
bicubic upsampling and `phi` can move a code's contribution away from what is left), so there is
no invariant to assert."""

from __future__ import annotations

import pytest
import torch

from perception.generative.hart.tokenizer import HybridTokenizer, MultiScaleResidualQuantizer

SCALES = (1, 2, 3, 4, 6, 8)


def make_quantizer(seed: int = 0, **kw) -> MultiScaleResidualQuantizer:
    torch.manual_seed(seed)
    q = MultiScaleResidualQuantizer(dim=8, vocab_size=32, scales=SCALES, **kw)
    # Spread the codes out so every scale uses many of them (the default init is near zero).
    with torch.no_grad():
        q.codebook.weight.normal_()
    return q


def latent(batch: int = 3, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 8, 8, 8, generator=g)  # [B, D, G, G]


def test_attributes_of_the_default_scales():
    q = make_quantizer()
    assert (q.scales, q.dim, q.vocab_size, q.grid, q.seq_len) == (SCALES, 8, 32, 8, 130)


def test_scales_plus_residual_rebuild_the_latent_exactly():
    q = make_quantizer()
    z = latent()
    indices = q.encode_indices(z)
    assert [tuple(i.shape) for i in indices] == [(3, s * s) for s in SCALES]
    assert all(i.dtype == torch.long for i in indices)
    out = q.quantize(z)
    f_hat = q.indices_to_latent(indices)
    assert all(torch.equal(a, b) for a, b in zip(out.indices, indices))
    assert torch.equal(out.f_hat, f_hat)  # the same float operations, bit for bit
    assert torch.equal(out.residual, z - f_hat)
    torch.testing.assert_close(f_hat + out.residual, z, rtol=0, atol=1e-6)
    assert (out.residual.abs() > 0).any()  # the residual is not trivially zero


def test_the_sum_of_scale_contributions_is_the_latent():
    q = make_quantizer()
    indices = q.encode_indices(latent())
    total = torch.zeros(3, 8, 8, 8)
    for k, idx in enumerate(indices):
        total = total + q.embed_scale(k, idx)
    assert torch.equal(total, q.indices_to_latent(indices))


def test_teacher_forcing_equals_step_by_step_sampling_inputs():
    q = make_quantizer()
    indices = q.encode_indices(latent())
    inputs = q.teacher_forcing_inputs(indices)
    assert inputs.shape == (3, 130 - 1, 8)
    f_hat = torch.zeros(3, 8, 8, 8)
    steps = []
    for k in range(len(SCALES) - 1):
        f_hat = f_hat + q.embed_scale(k, indices[k])
        step = q.next_scale_input(f_hat, k)
        assert step.shape == (3, SCALES[k + 1] ** 2, 8)
        steps.append(step)
    assert torch.equal(inputs, torch.cat(steps, dim=1))


def test_next_scale_input_is_row_major_area_resize():
    q = make_quantizer()
    f_hat = torch.arange(8 * 8 * 8, dtype=torch.float32).reshape(1, 8, 8, 8)
    tokens = q.next_scale_input(f_hat, 0)  # scale 1 has side 2: 4x4 blocks averaged
    expected = f_hat.reshape(1, 8, 2, 4, 2, 4).mean((3, 5))  # [1, D, 2, 2]
    assert torch.equal(tokens[0, 1], expected[0, :, 0, 1])  # token 1 = row 0, column 1
    assert torch.equal(tokens[0, 2], expected[0, :, 1, 0])
    assert torch.equal(q.next_scale_input(f_hat, len(SCALES) - 2)[0], f_hat[0].flatten(1).T)


def test_gradients_straight_through_to_the_latent_and_commitment_to_the_codebook():
    q = make_quantizer()
    z = latent().requires_grad_()
    out = q.quantize(z)
    (out.f_hat.sum()).backward(retain_graph=True)
    assert torch.equal(z.grad, torch.ones_like(z))  # straight-through: identity
    assert q.codebook.weight.grad is None  # the decoder path does not move the codes
    z.grad = None
    out.commit_loss.backward()
    assert q.codebook.weight.grad.abs().sum() > 0
    assert q.phi.weight.grad.abs().sum() > 0
    assert z.grad.abs().sum() > 0  # the commitment term pulls the encoder


def test_dead_codes_are_revived_from_the_worst_fitted_vectors():
    q = make_quantizer(dead_code_steps=2)
    with torch.no_grad():
        q.codebook.weight[16:] = 1e3  # far away: never chosen
    z = latent().requires_grad_()
    q.train()
    q.quantize(z)
    assert torch.equal(q.codebook.weight[16:], torch.full((16, 8), 1e3))
    assert torch.equal(q.steps_since_used[16:], torch.ones(16, dtype=torch.long))
    assert q.codebook_usage == 1.0  # unused for one call only: still inside the window
    out = q.quantize(z)  # second call without use: codes 16.. are dead and revived
    out.commit_loss.backward()  # the call's graph survives the revival
    revived = q.codebook.weight[16:].detach()
    assert (revived.abs() < 1e2).all()
    assert torch.equal(q.steps_since_used[16:], torch.zeros(16, dtype=torch.long))
    # Deterministic: the same quantizer and latent revive the same codes.
    q2 = make_quantizer(dead_code_steps=2)
    with torch.no_grad():
        q2.codebook.weight[16:] = 1e3
    q2.train()
    q2.quantize(latent())
    q2.quantize(latent())
    assert torch.equal(q2.codebook.weight[16:], revived)
    # In eval mode nothing changes.
    q2.eval()
    before = q2.codebook.weight.detach().clone()
    for _ in range(3):
        q2.quantize(latent())
    assert torch.equal(q2.codebook.weight, before)


def test_usage_and_perplexity_of_one_call():
    q = make_quantizer()
    out = q.quantize(latent())
    flat = torch.cat([i.flatten() for i in out.indices])
    assert out.usage.item() == pytest.approx(flat.unique().numel() / 32)
    assert 1.0 <= out.perplexity.item() <= flat.unique().numel() + 1e-4


def make_tokenizer(seed: int = 0, **kw) -> HybridTokenizer:
    torch.manual_seed(seed)
    args = dict(in_channels=4, image_size=16, latent_dim=8, vocab_size=64, hidden=32)
    return HybridTokenizer(**{**args, **kw})


def images(n: int = 8, size: int = 16, seed: int = 2) -> torch.Tensor:
    """Smooth random patterns in [-1, 1]: [n, 4, size, size]."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 4, size // 2, size // 2, generator=g) * 2 - 1
    return torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear")


def test_tokenize_detokenize_shapes_and_rebuild():
    tok = make_tokenizer()
    x = images(2)
    indices, residual = tok.tokenize(x)
    assert [tuple(i.shape) for i in indices] == [(2, s * s) for s in SCALES]
    assert residual.shape == (2, 8, 8, 8)
    z = tok.encode(x)
    torch.testing.assert_close(
        tok.quantizer.indices_to_latent(indices) + residual, z, rtol=0, atol=1e-6
    )
    assert tok.detokenize(indices).shape == x.shape
    torch.testing.assert_close(tok.detokenize(indices, residual), tok.decode(z), rtol=0, atol=1e-5)


def test_overfit_drives_reconstruction_down_and_hybrid_decodes_better():
    tok = make_tokenizer()
    x = images(8)
    g = torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    tok.train()
    with torch.no_grad():
        initial = torch.nn.functional.mse_loss(tok.decode(tok.encode(x)), x).item()
    for _ in range(100):
        losses = tok.loss(x, generator=g)
        opt.zero_grad()
        losses["total"].backward()
        opt.step()
    tok.eval()
    with torch.no_grad():
        indices, residual = tok.tokenize(x)
        hybrid = torch.nn.functional.mse_loss(tok.detokenize(indices, residual), x).item()
        discrete = torch.nn.functional.mse_loss(tok.detokenize(indices), x).item()
    assert hybrid < 0.1 * initial, (hybrid, initial)  # measured: ~0.03x initial
    assert hybrid < discrete, (hybrid, discrete)


def test_discrete_only_tokenizer_always_decodes_f_hat():
    tok = make_tokenizer(hybrid=False)
    g = torch.Generator().manual_seed(0)
    assert all(tok.loss(images(2), generator=g)["discrete"].item() == 1.0 for _ in range(6))
    tok = make_tokenizer(hybrid=True)
    branches = {tok.loss(images(2), generator=g)["discrete"].item() for _ in range(12)}
    assert branches == {0.0, 1.0}


def test_feature_loss_enters_the_total():
    tok = make_tokenizer(feature_weight=2.0)
    x = images(2)

    def feature_fn(im: torch.Tensor) -> torch.Tensor:
        return im.mean((2, 3))  # [B, C]

    losses = tok.loss(x, feature_fn=feature_fn, generator=torch.Generator().manual_seed(0))
    assert losses["feature"].item() > 0
    expected = losses["recon"] + losses["commit"] + 2.0 * losses["feature"]
    assert torch.equal(losses["total"], expected)
    plain = tok.loss(x, generator=torch.Generator().manual_seed(0))
    assert plain["feature"].item() == 0.0
    assert not plain["usage"].requires_grad


def test_same_generator_same_loss():
    results = []
    for _ in range(2):
        tok = make_tokenizer(seed=5)
        g = torch.Generator().manual_seed(7)
        results.append([tok.loss(images(4), generator=g) for _ in range(3)])
    for a, b in zip(*results):
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(image_size=24), "image_size"),  # 24 / 8 = 3: not a power of two
        (dict(image_size=20), "image_size"),  # not a multiple of the grid
        (dict(image_size=4), "image_size"),  # smaller than the grid
        (dict(scales=(1, 3, 2, 8)), "scales"),  # not increasing
        (dict(scales=(1, 2, 2, 8)), "scales"),
        (dict(scales=()), "scales"),
        (dict(scales=(0, 8)), "scales"),
        (dict(image_size=16, scales=(1, 2, 3)), "image_size"),  # 16 / 3
        (dict(vocab_size=1), "vocab_size"),
        (dict(latent_dim=0), "latent_dim"),
    ],
)
def test_bad_construction_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        make_tokenizer(**kwargs)


def test_bad_inputs_name_the_field():
    tok = make_tokenizer()
    with pytest.raises(ValueError, match="in_channels"):
        tok.encode(torch.zeros(2, 3, 16, 16))  # 3 channels, 4 expected
    with pytest.raises(ValueError, match="image_size"):
        tok.encode(torch.zeros(2, 4, 32, 32))
    with pytest.raises(ValueError, match="latent"):
        tok.decode(torch.zeros(2, 8, 4, 4))
    q = tok.quantizer
    with pytest.raises(ValueError, match="z"):
        q.encode_indices(torch.zeros(2, 8, 6, 6))  # grid 6 is not the last scale 8
    indices = q.encode_indices(torch.zeros(2, 8, 8, 8))
    with pytest.raises(ValueError, match="indices"):
        q.indices_to_latent(indices[:-1])
    with pytest.raises(ValueError, match=r"indices\[2\]"):
        q.indices_to_latent([*indices[:2], indices[2][:, :4], *indices[3:]])
    with pytest.raises(ValueError, match="k"):
        q.next_scale_input(torch.zeros(2, 8, 8, 8), len(SCALES) - 1)  # no scale after the last
    with pytest.raises(ValueError, match="idx"):
        q.embed_scale(1, indices[1].float())
