"""perception.generative.evaluate on tiny objects built in the test (no bank): the metrics are
hooked up exactly (a generator that returns the real signals reads as the real set itself),
the split by object is a partition, the hybrid reconstruction is the autoencoder's, timing
restores the thread count and the head's method, and the report is strict JSON."""

from __future__ import annotations

import json
import math

import pytest
import torch

from perception.generative.conditions import ObjectConditions
from perception.generative.config import (
    GeneratorDataConfig,
    HARTConfig,
    ResidualHeadConfig,
    TokenizerConfig,
    TransformerConfig,
)
from perception.generative.evaluate import (
    RealSignals,
    cas_metrics,
    generate_signals,
    generation_metrics,
    reconstruction_metrics,
    residual_head_share,
    split_by_object,
    throughput,
    write_generator_report,
)
from perception.generative.hart.model import build_hart, sample
from perception.generative.hart.tokenizer import HybridTokenizer
from perception.generative.metrics import CropClassifier

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 16
FEATURE_KEYS = {"fid", "kid_mean", "kid_std", "precision", "recall", "num_real", "num_fake",
                "kid_subset_size"}  # fmt: skip


def _real(n: int = 24, *, seed: int = 0, views: int = 2) -> RealSignals:
    """n random 4-channel 16x16 signals; every `views` consecutive rows are one object."""
    g = torch.Generator().manual_seed(seed)
    signals = torch.rand(n, 4, SIZE, SIZE, generator=g) * 2 - 1  # [n, 4, S, S]
    conds = ObjectConditions.create(
        label=[i % 2 for i in range(n)],  # car, truck
        size=[[1.8, 4.5, 1.6]] * n,
        view_angle=(torch.rand(n, generator=g) * 2 - 1) * math.pi,
        depth=[10.0] * n,
        sensor=[0] * n,
    )
    return RealSignals(signals, conds, torch.arange(n) // views)


def _classifier() -> CropClassifier:
    torch.manual_seed(0)
    return CropClassifier(in_channels=4, image_size=SIZE, width=8).eval()


def _config(**head) -> HARTConfig:
    return HARTConfig(
        data=GeneratorDataConfig(bank="unused", image_size=SIZE),
        tokenizer=TokenizerConfig(scales=(1, 2, 4), latent_dim=4, vocab_size=16, hidden=16),
        transformer=TransformerConfig(width=32, depth=1, heads=2, cond_dim=32),
        residual_head=ResidualHeadConfig(width=32, depth=1, **head),
    )


@pytest.fixture(scope="module")
def hart():
    torch.manual_seed(0)
    return build_hart(_config()).eval()


def _replay(real: RealSignals):
    """A sample_fn that returns the real signals, in order (generate_signals calls in order)."""
    state = {"next": 0}

    def sample_fn(conds, generator):
        start = state["next"]
        state["next"] += len(conds)
        assert torch.equal(conds.label, real.conditions.label[start : start + len(conds)])
        return real.signals[start : start + len(conds)]

    return sample_fn


def test_split_by_object_is_a_partition_keeping_objects_together():
    index = torch.tensor([3, 3, 3, 7, 1, 1, 9, 9, 2, 5])
    a, b = split_by_object(index, seed=4)
    assert torch.equal(torch.cat([a, b]).sort().values, torch.arange(10))
    assert not set(index[a].tolist()) & set(index[b].tolist())
    assert len(a) >= 5 - 2 and len(b) >= 1  # A stops at the first object reaching half
    again = split_by_object(index, seed=4)
    assert torch.equal(again[0], a) and torch.equal(again[1], b)
    with pytest.raises(ValueError, match="object_index: every row is one object"):
        split_by_object(torch.zeros(4, dtype=torch.long))


def test_generated_equal_to_real_reads_as_the_real_set():
    real, clf = _real(24), _classifier()
    out = generation_metrics(_replay(real), real, clf, seed=1, batch_size=5, kid_subsets=10)
    gen = out["generated"]
    assert set(gen) == FEATURE_KEYS and out["num_samples"] == 24
    assert abs(gen["fid"]) < 1e-6 and gen["precision"] == 1.0 and gen["recall"] == 1.0
    # the half comparison and the noise floor differ only in B being generated: here it is not
    assert out["generated_half"] == out["noise_floor"]
    assert out["num_half_a"] + out["num_half_b"] == 24
    fidelity = out["condition_fidelity"]
    assert fidelity["fake_class_acc"] == fidelity["real_class_acc"]
    assert fidelity["fake_yaw_acc"] == fidelity["real_yaw_acc"]


def test_a_different_generator_reads_farther_than_the_floor():
    real, clf = _real(24), _classifier()

    def blank(conds, generator):  # one constant grey image for every condition
        return torch.full((len(conds), 4, SIZE, SIZE), 0.5)

    out = generation_metrics(blank, real, clf, kid_subsets=10)
    assert out["generated"]["fid"] > 1e-3 and out["generated"]["precision"] < 1.0
    assert out["generated_half"]["fid"] > out["noise_floor"]["fid"]


def test_generation_subset_is_seeded_and_bad_batches_are_named(hart):
    real, clf = _real(24), _classifier()

    def fn(conds, g):
        return sample(hart, conds, generator=g, residual_steps=2)

    first = generation_metrics(fn, real, clf, n=16, seed=3, kid_subsets=5)
    again = generation_metrics(fn, real, clf, n=16, seed=3, kid_subsets=5)
    assert first["num_samples"] == 16
    assert first["generated"] == again["generated"]  # deterministic under a seed
    with pytest.raises(ValueError, match="sample_fn: returned signals"):
        generate_signals(lambda c, g: torch.zeros(1, 4, SIZE, SIZE), real.conditions)
    with pytest.raises(ValueError, match="sample_fn: non-finite"):
        generate_signals(
            lambda c, g: torch.full((len(c), 4, SIZE, SIZE), math.nan), real.conditions
        )


@pytest.fixture(scope="module")
def trained_tokenizer():
    """A tiny hybrid tokenizer overfit for 25 steps on 16 smooth crops."""
    g = torch.Generator().manual_seed(0)
    coarse = torch.rand(16, 4, 4, 4, generator=g) * 2 - 1
    x = torch.nn.functional.interpolate(coarse, size=SIZE, mode="bilinear")  # [16, 4, S, S]
    torch.manual_seed(0)
    tok = HybridTokenizer(
        in_channels=4, image_size=SIZE, latent_dim=4, vocab_size=16, scales=(1, 2, 4), hidden=16
    )
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    for _ in range(25):
        loss = tok.loss(x, generator=g)["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return tok.eval(), x


def test_hybrid_reconstruction_is_the_autoencoders_and_beats_discrete(trained_tokenizer):
    tok, x = trained_tokenizer
    torch.manual_seed(1)
    other = HybridTokenizer(
        in_channels=4, image_size=SIZE, latent_dim=4, vocab_size=16, scales=(1, 2, 4), hidden=16,
        hybrid=False,
    )  # fmt: skip
    real = RealSignals(x, _real(16).conditions, torch.arange(16))
    out = reconstruction_metrics(tok, real, _classifier(), discrete_tokenizer=other, kid_subsets=5)
    with torch.no_grad():
        decoded = tok.decode(tok.encode(x))
    exact = float((decoded.double() - x.double()).pow(2).mean())
    # f_hat + residual == z up to float rounding: the hybrid decode is decode(z)
    assert out["hybrid"]["mse"] == pytest.approx(exact, rel=1e-4, abs=1e-7)
    assert out["autoencoder_mse"] == pytest.approx(exact, rel=1e-9)
    assert out["hybrid"]["mse"] <= out["discrete"]["mse"]
    assert out["mse_ratio_vs_discrete"] == pytest.approx(
        out["hybrid"]["mse"] / out["discrete"]["mse"]
    )
    assert set(out["discrete_tokenizer"]) == FEATURE_KEYS | {"mse", "tokenizer_hybrid"}
    assert out["discrete_tokenizer"]["tokenizer_hybrid"] is False
    assert "kid_reduction_vs_discrete_tokenizer" in out and tok.training is False


def test_throughput_counts_images_and_restores_threads(hart):
    conds = _real(6).conditions

    def fn(c, g):
        return sample(hart, c, generator=g, residual_steps=2)

    torch.set_num_threads(2)  # restored to 1 by the fixture; one thread while timing
    out = throughput(fn, conds, batch_sizes=(1, 8), repeats=2, threads=1, warmup=0)
    assert torch.get_num_threads() == 2 and out["threads"] == 1
    assert set(out["batch_sizes"]) == {"1", "8"}
    for b, row in out["batch_sizes"].items():
        assert len(row["seconds"]) == 2 and row["images_per_second"] > 0
        assert row["images_per_second"] == pytest.approx(int(b) / row["seconds_median"])

    def broken(c, g):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        throughput(broken, conds, threads=1)
    assert torch.get_num_threads() == 2


def test_residual_head_share_is_a_fraction_and_unwraps_the_head(hart):
    out = residual_head_share(
        hart, _real(4).conditions, batch_size=4, repeats=2, warmup=0, threads=1,
        sample_kwargs={"residual_steps": 2, "use_residual": False},
    )  # fmt: skip
    assert 0.0 < out["share"] < 1.0 and out["head_seconds_median"] > 0
    assert out["share_by_difference"] < 1.0 and out["batch_size"] == 4
    assert "sample" not in vars(hart.residual_head)  # the instrumented method is gone
    torch.manual_seed(0)
    no_head = build_hart(_config(enabled=False)).eval()
    with pytest.raises(ValueError, match="model.residual_head: None"):
        residual_head_share(no_head, _real(4).conditions)


def test_cas_trains_every_arm_and_lists_the_rare_classes():
    generated, test, few = _real(12, seed=1), _real(12, seed=2), _real(8, seed=3)
    out = cas_metrics(
        generated, test, real_train_few=few, rare_classes=["truck"], steps=3, batch_size=8
    )
    assert out["real_few_plus_generated"]["num_train"] == 20.0
    assert out["generated_only"]["num_test"] == 12.0
    assert set(out["rare"]["truck"]) == {"generated_only", "real_few", "real_few_plus_generated"}
    assert out["rare"]["truck"]["real_few"] == out["real_few"]["class_acc/truck"]
    with pytest.raises(ValueError, match="rare_classes: unknown classes"):
        cas_metrics(generated, test, rare_classes=["dragon"], steps=1)


def test_report_is_strict_json_with_its_provenance(tmp_path):
    path = write_generator_report(
        {"arms": {"a": {"fid": math.nan, "kid": torch.tensor([0.5])}}},
        tmp_path / "r.json",
        command="python tools/eval_generator.py W",
        commit="abc123",
    )
    record = json.loads(path.read_text())
    assert record["commit"] == "abc123" and record["kind"] == "perception.generator-eval"
    assert record["arms"]["a"] == {"fid": None, "kid": [0.5]}
    assert {"platform", "cpu_count", "torch"} <= set(record["machine"])
    assert record["command"].startswith("python tools/eval_generator.py") and record["date"]
