"""`--precision bf16`: the decoder and head are the model's own modules under bfloat16 autocast
(`perception.deploy.quantize.Bfloat16DecoderHead`), set by the one rule every tool calls
(`use_precision`). Its maps are float32, close to the float model's (bf16 keeps 8 bits of
mantissa: a relative error of about 1e-2) but not equal to them (bf16 did run); a device
without bfloat16 kernels is refused by name, leaving the model as it was."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from perception.deploy import quantize
from perception.deploy.quantize import (
    Bfloat16DecoderHead,
    QuantizationError,
    bfloat16_unsupported,
    use_precision,
)
from perception.models.builder import build_model
from tests.perception.models.helpers import micro_config, synthetic_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")

UNSUPPORTED = bfloat16_unsupported(torch.device("cpu"))
needs_bf16 = pytest.mark.skipif(
    UNSUPPORTED is not None, reason=f"no bfloat16 on this CPU: {UNSUPPORTED}"
)


@pytest.fixture(scope="module")
def micro():
    torch.manual_seed(0)
    config = micro_config()
    model = build_model(config).eval()
    batch = synthetic_batch(config, batch_size=1, seed=3)
    with torch.no_grad():
        fused, _ = model.fused_features(batch)
    return config, model, batch, fused


@needs_bf16
def test_bf16_maps_are_float32_and_close_to_the_float_models(micro):
    config, model, batch, fused = micro
    with torch.no_grad():
        expected = model.decode(fused)
        backend = use_precision(model, config, "bf16", checkpoint=None)
        try:
            assert isinstance(backend, Bfloat16DecoderHead) and model.precision == "bf16"
            assert backend.decoder is model.decoder and backend.head is model.head  # no copy
            got = model.decode(fused)
            detections = model(batch)
        finally:
            model.decode_backend = None
    assert len(detections) == 1
    for a, b in zip(expected, got):
        for field in dataclasses.fields(a):
            x, y = getattr(a, field.name), getattr(b, field.name)
            if x is None:
                assert y is None
                continue
            assert y.dtype == torch.float32 and y.shape == x.shape
            error = ((x - y).abs().max() / x.abs().max().clamp_min(1e-6)).item()
            assert error < 0.05, f"{field.name}: relative error {error:.3g}"
        heatmap_error = (a.heatmap - b.heatmap).abs().max() / a.heatmap.abs().max()
        assert heatmap_error > 0  # bf16 ran: not the float model under another name


@needs_bf16
def test_training_with_the_bf16_backend_is_refused(micro):
    config, model, batch, _ = micro
    use_precision(model, config, "bf16", checkpoint=None)
    model.train()
    try:
        with pytest.raises(RuntimeError, match="bf16 decode backend is set"):
            model(batch)
    finally:
        model.eval()
        model.decode_backend = None


def test_a_device_without_bfloat16_is_refused_by_name(micro, monkeypatch):
    config, model, _, _ = micro
    monkeypatch.setattr(quantize, "bfloat16_unsupported", lambda device: "no kernels here")
    with pytest.raises(QuantizationError, match="--precision bf16: no kernels here; run "):
        use_precision(model, config, "bf16", checkpoint=None)
    assert model.decode_backend is None and model.precision == "float32"


def test_bfloat16_support_names_the_device():
    assert "not on meta" in bfloat16_unsupported(torch.device("meta"))
