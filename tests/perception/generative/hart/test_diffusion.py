"""Residual diffusion (perception/generative/hart/diffusion.py): the schedule's algebra, the DDIM
rule against the closed-form Gaussian case, the loss, the head's overfit, determinism, bad input.
"""

from __future__ import annotations

import math

import pytest
import torch

from perception.generative.hart.diffusion import (
    DDIMSampler,
    NoiseSchedule,
    ResidualDiffusionHead,
    ddim_sample,
    diffusion_loss,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _random_head(depth: int = 1) -> ResidualDiffusionHead:
    """A small head with every parameter non-zero (seed 0), so the output depends on every path
    (a fresh head's zero-initialised output layer would predict eps = 0 whatever the input)."""
    torch.manual_seed(0)
    head = ResidualDiffusionHead(token_dim=3, cond_dim=5, width=32, depth=depth)
    for p in head.parameters():
        torch.nn.init.normal_(p, std=0.1)
    return head


def _gaussian_eps(schedule: NoiseSchedule, mu: torch.Tensor, sigma: torch.Tensor):
    """The optimal eps for x0 ~ N(mu, diag(sigma^2)): E[eps | x_t] =
    sqrt(1 - ab) (x_t - sqrt(ab) mu) / (ab sigma^2 + 1 - ab). mu, sigma: [D]."""

    def model_fn(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        # the coefficients in float64 (1 - ab in float32 loses 3 digits at t = 0), then cast
        ab = schedule.alphas_cumprod[t][:, None]  # [N, 1] float64
        gain = (1 - ab).sqrt() / (ab * sigma.double() ** 2 + 1 - ab)  # [N, D]
        centre = ab.sqrt() * mu.double()  # [N, D]
        return gain.to(x_t.dtype) * (x_t - centre.to(x_t.dtype))

    return model_fn


def _ddim_affine_map(sampler: DDIMSampler, mu: float, sigma: float) -> tuple[float, float]:
    """For Gaussian data and the exact eps, every deterministic DDIM step is affine in x, so the
    sampler maps the start noise z to A z + B. Composes the steps from the DDIM formulas in
    float64 (independently of DDIMSampler.step) and returns (A, B)."""
    a_coef, b_coef = 1.0, 0.0  # x = A z + B
    ts = sampler.timesteps.tolist()
    for i, t in enumerate(ts):
        ab = float(sampler.schedule.alphas_cumprod[t])
        ab_prev = float(sampler.schedule.alphas_cumprod[ts[i + 1]]) if i + 1 < len(ts) else 1.0
        k = math.sqrt(1 - ab) / (ab * sigma**2 + 1 - ab)
        eps_a, eps_b = k * a_coef, k * (b_coef - math.sqrt(ab) * mu)
        x0_a = (a_coef - math.sqrt(1 - ab) * eps_a) / math.sqrt(ab)
        x0_b = (b_coef - math.sqrt(1 - ab) * eps_b) / math.sqrt(ab)
        a_coef = math.sqrt(ab_prev) * x0_a + math.sqrt(1 - ab_prev) * eps_a
        b_coef = math.sqrt(ab_prev) * x0_b + math.sqrt(1 - ab_prev) * eps_b
    return a_coef, b_coef


# --- the schedule -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_schedule_is_a_decreasing_cumprod_in_0_1(kind):
    s = NoiseSchedule(num_train_timesteps=1000, kind=kind)
    ab = s.alphas_cumprod
    assert ab.shape == (1000,) and ab.dtype == torch.float64
    assert torch.all(ab[1:] < ab[:-1]) and float(ab[-1]) > 0 and float(ab[0]) < 1
    torch.testing.assert_close(ab, torch.cumprod(1 - s.betas, 0), rtol=0, atol=0)


def test_cosine_schedule_matches_its_closed_form():
    T = 1000

    def f(t: float) -> float:
        return math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2

    ab = NoiseSchedule(num_train_timesteps=T, kind="cosine").alphas_cumprod
    # ab_t = f(t + 1) / f(0) wherever the 0.999 beta clip is inactive (all but the last step)
    expected = torch.tensor([f(t + 1) / f(0) for t in range(T - 1)], dtype=torch.float64)
    torch.testing.assert_close(ab[:-1], expected, rtol=1e-10, atol=0)
    assert float(ab[-1]) == pytest.approx(float(ab[-2]) * (1 - 0.999), rel=1e-10)


def test_linear_schedule_betas_are_ddpm_s():
    s = NoiseSchedule(num_train_timesteps=1000, kind="linear")
    assert float(s.betas[0]) == pytest.approx(1e-4) and float(s.betas[-1]) == pytest.approx(0.02)
    # scaled by 1000 / T for other T (improved-diffusion), so ab at the end stays about the same
    s4 = NoiseSchedule(num_train_timesteps=250, kind="linear")
    assert float(s4.betas[0]) == pytest.approx(4e-4) and float(s4.betas[-1]) == pytest.approx(0.08)


def test_add_noise_and_predict_x0_are_inverse():
    s = NoiseSchedule()
    x0 = torch.randn(6, 3, 4, 4, generator=_gen(0), dtype=torch.float64)
    noise = torch.randn(6, 3, 4, 4, generator=_gen(1), dtype=torch.float64)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    x_t = s.add_noise(x0, noise, t)
    ab = s.alphas_cumprod[t][:, None, None, None]
    torch.testing.assert_close(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise)
    # at t = 999, sqrt(ab) ~ 5e-5 magnifies float64 rounding about 2e4 times
    torch.testing.assert_close(s.predict_x0(x_t, noise, t), x0, rtol=0, atol=1e-9)


# --- the DDIM sampler ---------------------------------------------------------------------------


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize(("T", "steps"), [(1000, 1), (1000, 8), (1000, 50), (1000, 1000), (7, 3)])
def test_timesteps_descend_within_range(spacing, T, steps):
    ts = DDIMSampler(NoiseSchedule(num_train_timesteps=T), steps=steps, spacing=spacing).timesteps
    assert ts.dtype == torch.long and ts.shape == (steps,)
    assert torch.all(ts[1:] < ts[:-1])
    assert int(ts.min()) >= 0 and int(ts.max()) <= T - 1
    if steps == T:
        assert ts.tolist() == list(range(T - 1, -1, -1))


def test_timesteps_spacing_values():
    s = NoiseSchedule()
    assert DDIMSampler(s, steps=8).timesteps.tolist() == [875, 750, 625, 500, 375, 250, 125, 0]
    trailing = DDIMSampler(s, steps=8, spacing="trailing").timesteps.tolist()
    assert trailing == [999, 874, 749, 624, 499, 374, 249, 124]


def test_final_step_is_predict_x0():
    s = NoiseSchedule()
    sampler = DDIMSampler(s, steps=8)
    x = torch.randn(5, 4, generator=_gen(0))
    eps = torch.randn(5, 4, generator=_gen(1))
    x0 = sampler.step(eps, 125, -1, x)
    torch.testing.assert_close(x0, s.predict_x0(x, eps, torch.full((5,), 125)))


def test_eta_one_adds_the_ddpm_posterior_variance():
    s = NoiseSchedule()
    t, t_prev = 500, 375
    ab_t, ab_p = float(s.alphas_cumprod[t]), float(s.alphas_cumprod[t_prev])
    sigma = math.sqrt((1 - ab_p) / (1 - ab_t) * (1 - ab_t / ab_p))
    x = torch.randn(64, 3, generator=_gen(0), dtype=torch.float64)
    eps = torch.randn(64, 3, generator=_gen(1), dtype=torch.float64)
    deterministic_part = (
        torch.sqrt(torch.tensor(ab_p / ab_t, dtype=torch.float64)) * (x - math.sqrt(1 - ab_t) * eps)
        + math.sqrt(1 - ab_p - sigma**2) * eps
    )
    x_prev = DDIMSampler(s, eta=1.0).step(eps, t, t_prev, x, generator=_gen(7))
    z = torch.randn(64, 3, generator=_gen(7), dtype=torch.float64)  # the sampler's draw
    torch.testing.assert_close(x_prev, deterministic_part + sigma * z)


# --- the known Gaussian case --------------------------------------------------------------------


MU = torch.tensor([1.5, -0.5, 0.0], dtype=torch.float64)
SIGMA = torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64)
N_DRAWS = 20000


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [200, 8])
def test_ddim_on_gaussian_data_is_the_closed_form_affine_map(steps, spacing):
    s = NoiseSchedule()
    sampler = DDIMSampler(s, steps=steps, spacing=spacing)
    x = ddim_sample(
        _gaussian_eps(s, MU, SIGMA),
        (N_DRAWS, 3),
        sampler,
        generator=_gen(0),
        dtype=torch.float64,
    )
    z = torch.randn(N_DRAWS, 3, generator=_gen(0), dtype=torch.float64)  # the start noise
    maps = [_ddim_affine_map(sampler, float(m), float(sd)) for m, sd in zip(MU, SIGMA)]
    a = torch.tensor([m[0] for m in maps], dtype=torch.float64)
    b = torch.tensor([m[1] for m in maps], dtype=torch.float64)
    # exact: the sampler is this affine map of its start noise (float64 rounding only)
    torch.testing.assert_close(x, a * z + b, rtol=1e-9, atol=1e-9)
    # statistics: within 5 standard errors (sd/sqrt(n) for the mean, sd/sqrt(2n) for the sd)
    se_mean, se_sd = SIGMA / math.sqrt(N_DRAWS), SIGMA / math.sqrt(2 * N_DRAWS)
    assert torch.all((x.mean(0) - b).abs() < 5 * se_mean)
    assert torch.all((x.std(0) - a.abs()).abs() < 5 * se_sd)
    if steps == 200:
        # close to the continuous probability-flow ODE, which maps N(0, 1) onto N(mu, sigma^2)
        # exactly: the map is within 1% of sigma and 0.01 sigma of mu
        assert torch.all((a / SIGMA - 1).abs() < 0.01), a / SIGMA
        assert torch.all((b - MU).abs() < 0.01 * SIGMA), b - MU
        assert torch.all((x.mean(0) - MU).abs() < 0.01 * SIGMA + 5 * se_mean)
        assert torch.all((x.std(0) / SIGMA - 1).abs() < 0.01 + 5 / math.sqrt(2 * N_DRAWS))
    else:
        # 8 steps: DDIM shrinks the spread (a / sigma = 0.82-0.87 here, the 4-step map 0.66-0.79,
        # the 16-step 0.91-0.93). "trailing" starts at ab ~ 2e-9 and keeps the mean; "leading"
        # starts from pure noise at t = 875 (ab = 0.037) and so misses the mean's share of x_875:
        # b - mu = -0.24 sigma for mu = 3 sigma, -0.08 sigma for mu = -sigma / 2
        assert torch.all((a / SIGMA > 0.8) & (a / SIGMA < 0.9)), a / SIGMA
        tolerance = 1e-4 if spacing == "trailing" else 0.25
        assert torch.all((b - MU).abs() <= tolerance * SIGMA), b - MU


@pytest.mark.parametrize("scale", [0.0, 0.5])
def test_noise_scale_is_the_start_noise_std_on_the_closed_form(scale):
    """A temperature scales the start noise: on Gaussian data the sampler's affine map A z + B
    then gives A * scale * z + B (scale 0: B for every row, whatever the generator)."""
    s = NoiseSchedule()
    sampler = DDIMSampler(s, steps=8)
    x = ddim_sample(_gaussian_eps(s, MU, SIGMA), (64, 3), sampler, generator=_gen(0),
                    dtype=torch.float64, noise_scale=scale)  # fmt: skip
    z = torch.randn(64, 3, generator=_gen(0), dtype=torch.float64)
    maps = [_ddim_affine_map(sampler, float(m), float(sd)) for m, sd in zip(MU, SIGMA)]
    a = torch.tensor([m[0] for m in maps], dtype=torch.float64)
    b = torch.tensor([m[1] for m in maps], dtype=torch.float64)
    torch.testing.assert_close(x, a * scale * z + b, rtol=1e-9, atol=1e-9)
    with pytest.raises(ValueError, match="noise_scale"):
        ddim_sample(_gaussian_eps(s, MU, SIGMA), (2, 3), sampler, noise_scale=-1.0)


def test_head_temperature_zero_is_deterministic():
    head = _random_head()
    cond = torch.randn(8, 5, generator=_gen(0))
    cold = [head.sample(cond, temperature=0.0, generator=_gen(g)) for g in (1, 2)]
    torch.testing.assert_close(cold[0], cold[1], rtol=0, atol=0)
    warm = [head.sample(cond, temperature=1.0, generator=_gen(g)) for g in (1, 2)]
    assert not torch.allclose(warm[0], warm[1])


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize(("steps", "eta"), [(1, 0.0), (8, 0.0), (8, 1.0), (200, 0.0)])
def test_point_mass_is_recovered_from_any_noise(steps, eta, spacing):
    # sigma -> 0: the exact eps makes every x0 estimate mu, whatever x is. float64 because the
    # step from t = 999 (sqrt(ab) ~ 5e-5) cancels terms 2e4 times the result
    s = NoiseSchedule()
    mu = torch.tensor([2.0, -3.0, 0.25], dtype=torch.float64)
    sampler = DDIMSampler(s, steps=steps, eta=eta, spacing=spacing)
    model_fn = _gaussian_eps(s, mu, torch.zeros(3))
    for seed in range(3):
        x = ddim_sample(model_fn, (256, 3), sampler, generator=_gen(seed), dtype=torch.float64)
        torch.testing.assert_close(x, mu.expand(256, 3), rtol=0, atol=1e-9)
    # float32 is fine away from the degenerate last timestep
    x = ddim_sample(model_fn, (256, 3), DDIMSampler(s, steps=steps, eta=eta), generator=_gen(0))
    torch.testing.assert_close(x, mu.float().expand(256, 3), rtol=0, atol=1e-5)


# --- the loss -----------------------------------------------------------------------------------


def test_loss_of_the_oracle_is_zero_and_the_optimum_beats_zero():
    s = NoiseSchedule()
    x0 = MU + SIGMA * torch.randn(4096, 3, generator=_gen(0), dtype=torch.float64)

    def oracle(x_t, t):  # knows x0, so recovers the noise exactly
        ab = s.alphas_cumprod[t][:, None]
        return (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()

    assert float(diffusion_loss(oracle, x0, s, generator=_gen(1))) < 1e-12
    optimal = float(diffusion_loss(_gaussian_eps(s, MU, SIGMA), x0, s, generator=_gen(1)))
    zero = float(diffusion_loss(lambda x_t, t: torch.zeros_like(x_t), x0, s, generator=_gen(1)))
    # zero predicts E[eps] = 0: its loss is mean(noise^2) ~ 1; the posterior mean's is well below
    assert zero == pytest.approx(1.0, abs=0.05)
    assert optimal < 0.5 * zero, (optimal, zero)


def test_loss_works_on_image_shaped_latents():
    s = NoiseSchedule(kind="linear")
    x0 = torch.randn(3, 4, 8, 8, generator=_gen(0))
    loss = diffusion_loss(lambda x_t, t: torch.zeros_like(x_t), x0, s, generator=_gen(1))
    assert loss.shape == () and 0.5 < float(loss) < 1.5


def test_gradient_reaches_every_head_parameter():
    torch.manual_seed(0)
    head = ResidualDiffusionHead(token_dim=4, cond_dim=6, width=32, depth=2)
    x0 = torch.randn(32, 4, generator=_gen(0))
    cond = torch.randn(32, 6, generator=_gen(1))
    head.loss(x0, cond, generator=_gen(2)).backward()
    assert all(p.grad is not None for p in head.parameters())
    # zero-initialised gates and output block most paths at first; a few steps open them all
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for i in range(3):
        opt.zero_grad()
        head.loss(x0, cond, repeats=2, generator=_gen(10 + i)).backward()
        opt.step()
    opt.zero_grad()
    head.loss(x0, cond, generator=_gen(20)).backward()
    dead = [n for n, p in head.named_parameters() if float(p.grad.abs().max()) == 0]
    assert not dead, dead


# --- the head -----------------------------------------------------------------------------------


def _toy_batch(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    label = torch.randint(0, 2, (n,), generator=generator)  # [n]
    cond = torch.nn.functional.one_hot(label, 2).float()  # [n, 2]
    centre = torch.tensor([[2.0, 2.0], [-2.0, -2.0]])[label]  # [n, 2]
    return centre + 0.1 * torch.randn(n, 2, generator=generator), cond


def test_head_overfits_a_two_class_toy():
    torch.manual_seed(0)
    head = ResidualDiffusionHead(token_dim=2, cond_dim=2, width=64, depth=2)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    g = _gen(0)
    for _ in range(300):
        x0, cond = _toy_batch(64, g)
        loss = head.loss(x0, cond, repeats=4, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    centres = torch.tensor([[2.0, 2.0], [-2.0, -2.0]])
    for label in (0, 1):
        cond = torch.nn.functional.one_hot(torch.full((500,), label), 2).float()
        x = head.sample(cond, steps=8, generator=_gen(1))
        assert x.shape == (500, 2)
        mean_error = float((x.mean(0) - centres[label]).norm())
        assert mean_error < 0.3, (label, mean_error)
        near = ((x - centres[label]).norm(dim=1) < 1.0).float().mean()
        assert float(near) > 0.95, (label, float(near))


def test_head_sampling_is_deterministic_under_a_generator():
    head = _random_head()
    cond = torch.randn(16, 5, generator=_gen(0))
    for eta in (0.0, 1.0):
        a = head.sample(cond, steps=4, eta=eta, generator=_gen(3))
        b = head.sample(cond, steps=4, eta=eta, generator=_gen(3))
        c = head.sample(cond, steps=4, eta=eta, generator=_gen(4))
        assert torch.equal(a, b) and not torch.allclose(a, c)
    la = head.loss(torch.randn(16, 3, generator=_gen(5)), cond, repeats=3, generator=_gen(6))
    lb = head.loss(torch.randn(16, 3, generator=_gen(5)), cond, repeats=3, generator=_gen(6))
    assert torch.equal(la, lb)


def test_head_sample_equals_ddim_over_forward():
    """sample() embeds the condition once and the timestep once per step: the same numbers as
    the plain DDIM loop over forward(x_t, t, cond) with per-row embeddings."""
    head = _random_head(depth=2)
    cond = torch.randn(16, 5, generator=_gen(0))
    for eta in (0.0, 1.0):
        sampler = DDIMSampler(head.schedule, steps=5, eta=eta)
        ref = ddim_sample(lambda x, t: head(x, t, cond), (16, 3), sampler, generator=_gen(7))
        got = head.sample(cond, steps=5, eta=eta, generator=_gen(7))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    # forward with mixed timesteps per row (training) == row by row
    x_t = torch.randn(6, 3, generator=_gen(1))
    t = torch.tensor([5, 900, 5, 0, 999, 300])
    rows = torch.cat([head(x_t[i : i + 1], t[i : i + 1], cond[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(head(x_t, t, cond[:6]), rows, rtol=1e-5, atol=1e-6)


def test_head_guidance_one_is_conditional_and_zero_is_unconditional():
    head = _random_head()
    cond = torch.randn(8, 5, generator=_gen(0))
    null = torch.randn(1, 5, generator=_gen(1)).expand(8, 5)
    plain = head.sample(cond, generator=_gen(2))
    guided_1 = head.sample(cond, uncond=null, guidance=1.0, generator=_gen(2))
    guided_0 = head.sample(cond, uncond=null, guidance=0.0, generator=_gen(2))
    torch.testing.assert_close(guided_1, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(guided_0, head.sample(null, generator=_gen(2)), rtol=1e-5, atol=1e-5)


# --- bad input ----------------------------------------------------------------------------------


def test_bad_arguments_name_the_field():
    s = NoiseSchedule(num_train_timesteps=100)
    with pytest.raises(ValueError, match="^kind:"):
        NoiseSchedule(kind="sigmoid")
    with pytest.raises(ValueError, match="^num_train_timesteps:"):
        NoiseSchedule(num_train_timesteps=1)
    for steps in (0, 101, 2.0):
        with pytest.raises(ValueError, match="^steps:"):
            DDIMSampler(s, steps=steps)
    for eta in (-0.1, float("nan")):
        with pytest.raises(ValueError, match="^eta:"):
            DDIMSampler(s, eta=eta)
    with pytest.raises(ValueError, match="^spacing:"):
        DDIMSampler(s, spacing="linspace")
    sampler = DDIMSampler(s)
    x = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="^t_prev:"):
        sampler.step(x, 10, 10, x)
    with pytest.raises(ValueError, match="^t:"):
        sampler.step(x, 100, 50, x)
    with pytest.raises(ValueError, match="^eps:"):
        sampler.step(torch.zeros(2, 4), 10, 5, x)
    with pytest.raises(ValueError, match="^t:"):
        s.add_noise(x, x, torch.tensor([0, 100]))
    with pytest.raises(ValueError, match="^noise:"):
        s.add_noise(x, torch.zeros(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="^model_fn:"):
        diffusion_loss(lambda x_t, t: x_t[:, :1], x, s)


def test_bad_head_arguments_name_the_field():
    with pytest.raises(ValueError, match="^token_dim:"):
        ResidualDiffusionHead(token_dim=0, cond_dim=4)
    with pytest.raises(ValueError, match="^kind:"):
        ResidualDiffusionHead(token_dim=2, cond_dim=4, schedule_kind="sqrt")
    head = ResidualDiffusionHead(token_dim=2, cond_dim=4, width=16, depth=1)
    x, t, cond = torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), torch.zeros(3, 4)
    with pytest.raises(ValueError, match="^x_t:"):
        head(torch.zeros(3, 5), t, cond)
    with pytest.raises(ValueError, match="^cond:"):
        head(x, t, torch.zeros(3, 5))
    with pytest.raises(ValueError, match="^t:"):
        head(x, t[:2], cond)
    with pytest.raises(ValueError, match="^repeats:"):
        head.loss(x, cond, repeats=0)
    with pytest.raises(ValueError, match="^cond:"):
        head.loss(x, cond[:2])
    with pytest.raises(ValueError, match="^steps:"):
        head.sample(cond, steps=0)
    with pytest.raises(ValueError, match="^uncond:"):
        head.sample(cond, uncond=cond[:2])
