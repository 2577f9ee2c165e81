"""The generators' `train.device` / `train.amp` (HART, the latent diffusion baseline, the GAN):
device resolution and its errors, amp ignored on the CPU, CPU runs unchanged by the fields (bit
for bit), checkpoints that load onto whatever device the model is on, and (CUDA only) a bf16
run on the GPU sampled on the CPU.

The training signals are synthetic (random crops of a few classes): `load_training_signals` is
replaced, so no bank is built and each run takes well under a second."""

from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import torch

from perception.checkpoint import load_checkpoint
from perception.generative.conditions import ObjectConditions
from perception.generative.config import HARTConfig
from perception.generative.gan import train as gan_train
from perception.generative.gan.config import GANConfig
from perception.generative.gan.model import sample_gan
from perception.generative.hart import baseline
from perception.generative.hart import train as hart_train
from perception.generative.hart.baseline import (
    LatentDiffusionConfig,
    load_latent_diffusion,
    sample_latent_diffusion,
    train_latent_diffusion,
)
from perception.generative.hart.model import build_hart, generator_on, sample
from perception.generative.hart.train import (
    SignalSet,
    load_generator,
    resolve_device,
    train_hart,
    training_device,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUIET = {"progress": False, "log": lambda _: None}
TINY_HART = {
    "data": {"bank": "synthetic", "image_size": 16},
    "tokenizer": {"latent_dim": 4, "vocab_size": 16, "scales": [1, 2, 4], "hidden": 16},
    "transformer": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 32},
    "residual_head": {"width": 32, "depth": 1},
}
TINY_HART_TRAIN = {"batch_size": 8, "classifier_steps": 2, "tokenizer_steps": 3,
                   "transformer_steps": 3, "log_every": 3, "checkpoint_every": 3}  # fmt: skip
TINY_GAN = {
    "data": {"bank": "synthetic", "image_size": 16},
    "model": {"z_dim": 8, "g_width": 16, "d_width": 16, "cond_dim": 16},
    "augment": {"ada_target": 0.6, "ada_images": 64},
}
TINY_GAN_TRAIN = {"batch_size": 8, "steps": 3, "log_every": 3, "checkpoint_every": 3,
                  "kid_every": 3, "kid_subset": 8, "classifier_steps": 2}  # fmt: skip


def _signals(n: int = 24) -> SignalSet:
    """n random 16x16 camera crops (RGB + alpha in [-1, 1]) of cars and pedestrians."""
    g = torch.Generator().manual_seed(0)
    conds = ObjectConditions.create(
        label=["car", "pedestrian"] * (n // 2),
        size=torch.rand(n, 3, generator=g) * 3 + 0.5,
        view_angle=torch.rand(n, generator=g) * 6 - 3,
        depth=torch.rand(n, generator=g) * 40 + 5,
        sensor=[0] * n,
    )
    signals = torch.rand(n, 4, 16, 16, generator=g) * 2 - 1  # [n, 4, 16, 16]
    return SignalSet(signals, conds, torch.arange(n))


@pytest.fixture
def synthetic_signals(monkeypatch):
    """Every generator kind trains on `_signals()` instead of a bank's."""
    data = _signals()
    for module in (hart_train, baseline, gan_train):
        monkeypatch.setattr(module, "load_training_signals", lambda *_, **__: data)
    return data


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _hart_config(**train) -> HARTConfig:
    return HARTConfig.model_validate({**TINY_HART, "train": {**TINY_HART_TRAIN, **train}})


def _gan_config(**train) -> GANConfig:
    return GANConfig.model_validate({**TINY_GAN, "train": {**TINY_GAN_TRAIN, **train}})


def _ldm_config(hart_work, **train) -> LatentDiffusionConfig:
    return LatentDiffusionConfig.model_validate(
        {
            "data": {"bank": "synthetic", "image_size": 16},
            "tokenizer_from": str(hart_work),
            "model": {"width": 32, "depth": 1, "heads": 2, "cond_dim": 32},
            "train": {"batch_size": 8, "steps": 3, "log_every": 3, "checkpoint_every": 3, **train},
        }
    )


def _weights(checkpoint) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(checkpoint / "model.safetensors"))


def _assert_same_weights(a, b) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.equal(wa[key], wb[key]), key


# --- resolution ------------------------------------------------------------------------------
def test_auto_is_cuda_when_available_else_cpu(monkeypatch):
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")
    _no_cuda(monkeypatch)
    assert resolve_device("auto") == torch.device("cpu")


def test_cuda_without_a_gpu_is_an_error_naming_the_field(monkeypatch):
    _no_cuda(monkeypatch)
    with pytest.raises(ValueError, match=r"^train\.device: 'cuda', but torch .* sees no CUDA"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match=r"^--device: 'cuda'"):
        resolve_device("cuda", field="--device")
    with pytest.raises(ValueError, match=r"^train\.device: unknown device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.parametrize("schema", [HARTConfig, GANConfig])
def test_config_fields_default_and_validate(schema):
    config = schema.model_validate({"data": {"bank": "b"}})
    assert (config.train.device, config.train.amp) == ("cpu", False)
    with pytest.raises(ValueError, match="device"):
        schema.model_validate({"data": {"bank": "b"}, "train": {"device": "gpu"}})
    ldm = LatentDiffusionConfig.model_validate({"data": {"bank": "b"}, "tokenizer_from": "w"})
    assert (ldm.train.device, ldm.train.amp) == ("cpu", False)


def test_train_cuda_without_a_gpu_fails_before_any_work(monkeypatch, tmp_path, synthetic_signals):
    _no_cuda(monkeypatch)
    with pytest.raises(ValueError, match=r"^train\.device: 'cuda'"):
        train_hart(_hart_config(device="cuda"), tmp_path / "hart", **QUIET)
    assert not (tmp_path / "hart" / "config.yaml").exists()
    with pytest.raises(ValueError, match=r"^train\.device: 'cuda'"):
        gan_train.train_gan(_gan_config(device="cuda"), tmp_path / "gan", **QUIET)
    with pytest.raises(ValueError, match=r"^device: 'cuda'"):
        gan_train.train_gan(_gan_config(), tmp_path / "gan", device="cuda", **QUIET)


def test_amp_on_the_cpu_is_ignored_with_a_note():
    lines: list[str] = []
    train = _hart_config(device="cpu", amp=True).train
    assert training_device(train, lines.append) == (torch.device("cpu"), False)
    assert lines == ["note: train.amp is ignored on cpu (bfloat16 autocast is CUDA only)"]
    lines.clear()
    assert training_device(_hart_config(device="cpu").train, lines.append) == (
        torch.device("cpu"),
        False,
    )
    assert lines == []  # nothing to say about a plain CPU run


def test_generator_on_keeps_a_generator_of_the_model_device():
    g = torch.Generator().manual_seed(3)
    assert generator_on(g, torch.device("cpu")) is g
    assert generator_on(None, torch.device("cpu")) is None


# --- CPU runs: the fields change nothing -----------------------------------------------------
def test_hart_and_ldm_cpu_runs_equal_the_default_bit_for_bit(tmp_path, synthetic_signals):
    default = train_hart(_hart_config(), tmp_path / "default", **QUIET)
    cpu = train_hart(_hart_config(device="cpu"), tmp_path / "cpu", **QUIET)
    amp = train_hart(_hart_config(device="cpu", amp=True), tmp_path / "amp", **QUIET)
    _assert_same_weights(default, cpu)
    _assert_same_weights(default, amp)  # amp is ignored on the CPU
    for name in ("default", "cpu"):
        train_latent_diffusion(_ldm_config(tmp_path / "default"), tmp_path / f"ldm_{name}", **QUIET)
    ldm_cpu = train_latent_diffusion(
        _ldm_config(tmp_path / "default", device="cpu", amp=True), tmp_path / "ldm_cpu", **QUIET
    )
    _assert_same_weights(tmp_path / "ldm_default" / "ldm" / "checkpoints" / "step_3", ldm_cpu)


def test_gan_cpu_runs_equal_the_default_bit_for_bit(tmp_path, synthetic_signals):
    default = gan_train.train_gan(_gan_config(), tmp_path / "default", **QUIET)
    by_config = gan_train.train_gan(_gan_config(device="cpu", amp=True), tmp_path / "c", **QUIET)
    by_argument = gan_train.train_gan(_gan_config(), tmp_path / "a", device="cpu", **QUIET)
    _assert_same_weights(default, by_config)
    _assert_same_weights(default, by_argument)


def test_the_bf16_autocast_path_trains_every_kind(monkeypatch, tmp_path, synthetic_signals):
    """train.amp's code path (autocast around the losses, backward outside it), run with the
    CPU's bfloat16 autocast standing in for CUDA's: every kind trains to finite losses."""

    def amp_device(train, log=None):
        return torch.device("cpu"), True

    def cpu_autocast(device, amp):
        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp)

    for module in (hart_train, gan_train):
        monkeypatch.setattr(module, "training_device", amp_device)
        monkeypatch.setattr(module, "autocast", cpu_autocast)
    train_hart(_hart_config(), tmp_path / "hart", **QUIET)
    train_latent_diffusion(_ldm_config(tmp_path / "hart"), tmp_path / "ldm", **QUIET)
    gan_train.train_gan(_gan_config(), tmp_path / "gan", **QUIET)
    for run, keys in (("hart", ("total",)), ("ldm", ("mse",)), ("gan", ("loss_d", "loss_g"))):
        lines = (tmp_path / run / "log.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert records and all(math.isfinite(r[k]) for r in records for k in keys), run
    model, _, _ = load_generator(tmp_path / "hart")
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32


# --- checkpoints: device-independent -----------------------------------------------------------
def test_checkpoint_loads_onto_the_models_device_and_samples_the_same(tmp_path, synthetic_signals):
    """The device-mapping path (model placed on `resolve_device`, CPU safetensors loaded into
    it) with device="cpu": the loaded generator is the trained one, its samples equal."""
    config = _hart_config(device="cpu")
    latest = train_hart(config, tmp_path / "hart", **QUIET)
    assert all(t.device.type == "cpu" for t in _weights(latest).values())
    placed = build_hart(config).to(resolve_device(config.train.device))
    load_checkpoint(latest, model=placed, restore_rng=False, schema=HARTConfig)
    loaded, _, ranges = load_generator(tmp_path / "hart")
    for (name, a), b in zip(placed.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    conds = synthetic_signals.conditions.index(torch.arange(4))
    one = sample(placed, conds, generator=torch.Generator().manual_seed(0))
    two = sample(loaded, conds, generator=torch.Generator().manual_seed(0))
    assert one.signals.shape == (4, 4, 16, 16) and torch.equal(one.signals, two.signals)


def test_tools_device_flag(monkeypatch, tmp_path, synthetic_signals, capsys):
    from tools.eval_generator import main as eval_generator
    from tools.sample_generator import main as sample_generator

    train_hart(_hart_config(), tmp_path / "hart", **QUIET)
    out = tmp_path / "grid.png"
    args = [str(tmp_path / "hart"), "--class", "car", "--n", "2", "--out", str(out)]
    assert sample_generator([*args, "--device", "cpu"]) == 0
    assert json.loads(out.with_suffix(".json").read_text())["device"] == "cpu"
    _no_cuda(monkeypatch)
    assert sample_generator([*args, "--device", "cuda"]) == 2
    assert "--device: 'cuda', but torch" in capsys.readouterr().err
    (tmp_path / "bank").mkdir()
    (tmp_path / "bank" / "bank.json").write_text("{}")  # the device is checked before it is read
    held_out = ["--held-out-bank", str(tmp_path / "bank")]
    assert eval_generator([str(tmp_path / "hart"), *held_out, "--device", "cuda"]) == 2
    assert "--device: 'cuda', but torch" in capsys.readouterr().err


# --- CUDA --------------------------------------------------------------------------------------
@pytest.mark.cuda
def test_cuda_amp_training_samples_on_the_cpu(tmp_path, synthetic_signals):
    """HART, the baseline and the GAN train a few bf16 steps on CUDA; their checkpoints load on
    the CPU (and back on CUDA) and sample finite signals on both; a CUDA-trained stage resumes
    on the CPU (its optimizer state mapped there)."""
    conds = synthetic_signals.conditions.index(torch.arange(4))
    lines: list[str] = []
    hart = train_hart(
        _hart_config(device="cuda", amp=True), tmp_path / "hart", progress=False, log=lines.append
    )
    assert "device: cuda with bfloat16 autocast" in lines
    ldm = train_latent_diffusion(
        _ldm_config(tmp_path / "hart", device="cuda", amp=True), tmp_path / "ldm", **QUIET
    )
    gan = gan_train.train_gan(_gan_config(device="auto", amp=True), tmp_path / "gan", **QUIET)
    resumed = train_hart(_hart_config(device="cpu", transformer_steps=6), tmp_path / "hart",
                         resume=True, progress=False, log=lines.append)  # fmt: skip
    assert resumed.name == "step_6" and "transformer: resumed at step 3" in " ".join(lines)

    model, _, _ = load_generator(hart)
    out = sample(model, conds, generator=torch.Generator().manual_seed(0))
    assert out.signals.device.type == "cpu" and torch.isfinite(out.signals).all()
    out = sample(model.cuda(), conds, generator=torch.Generator().manual_seed(0))
    assert out.signals.device.type == "cuda" and torch.isfinite(out.signals).all()

    model, _, _ = load_latent_diffusion(ldm)
    out = sample_latent_diffusion(model, conds, steps=4, generator=torch.Generator().manual_seed(0))
    assert out.signals.device.type == "cpu" and torch.isfinite(out.signals).all()
    out = sample_latent_diffusion(
        model.cuda(), conds, steps=4, generator=torch.Generator().manual_seed(0)
    )
    assert out.signals.device.type == "cuda" and torch.isfinite(out.signals).all()

    model, _, _ = gan_train.load_gan(gan)
    cpu = sample_gan(model, conds, generator=torch.Generator().manual_seed(0)).signals
    cuda = sample_gan(model.cuda(), conds, generator=torch.Generator().manual_seed(0)).signals
    assert torch.isfinite(cpu).all() and cuda.device.type == "cuda"
    # the same z (drawn on the CPU): equal up to TF32 convolutions
    torch.testing.assert_close(cuda.cpu(), cpu, atol=5e-2, rtol=0)
