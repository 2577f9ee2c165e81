"""Turning a trained object generator into the figures of issues #25 and #26: sample quality
against real held-out signals, the tokenizer's reconstruction, throughput, and the
classification accuracy score. Every function takes already-built objects and returns a plain
JSON-able dict; `tools/eval_generator.py` composes them and `write_generator_report` saves them
with the commit, machine, command and date.

A generator is any object plus a sampling callable

    sample_fn(conditions: ObjectConditions [B], generator: torch.Generator) -> GeneratedSignal

(anything with a `signals [B, C, S, S]` float tensor in [-1, 1], or that tensor itself), so the
HART generator, the latent-diffusion baseline and the GAN are measured by the same code:

    sample_fn = lambda conds, g: hart.sample(model, conds, generator=g, **settings)

Features: one frozen crop classifier (`metrics.CropClassifier`) scores every generator that is
compared (the numbers of two classifiers are not comparable).

Sample quality (`generation_metrics`): one generated signal per real held-out condition (the
same classes, sizes, view angles, depths and sensors as the real crops). Beside the full
comparison it reports the real-vs-real noise floor at equal set sizes, from a split of the
held-out set by object into halves A and B:

    generated      real held-out (all N)  vs  generated for the same N conditions
    generated_half real half A            vs  generated for half B's conditions
    noise_floor    real half A            vs  real half B

`generated_half` and `noise_floor` differ only in B being generated or real, at identical set
sizes (FID and KID depend on set sizes), so they are the pair to read together.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from ..structures.classes import CLASS_NAMES
from .conditions import ObjectConditions
from .config import GeneratorDataConfig
from .crops import SignalSet, bank_signals
from .metrics import (
    CropClassifier,
    classification_accuracy_score,
    condition_fidelity,
    feature_metrics,
)

REPORT_KIND = "perception.generator-eval"
REPORT_FORMAT_VERSION = 1

NOISE_FLOOR_METHOD = (
    "held-out set split by object (seeded) into halves A and B; noise_floor = real A vs real B, "
    "generated_half = real A vs generated for B's conditions (same set sizes)"
)
RESIDUAL_SHARE_METHOD = (
    "share = time inside residual_head.sample (instrumented, in the same calls) / time of the "
    "whole sample(use_residual=True) call; share_by_difference = 1 - "
    "time(use_residual=False) / time(use_residual=True), separate calls"
)

__all__ = [
    "NOISE_FLOOR_METHOD",
    "REPORT_FORMAT_VERSION",
    "REPORT_KIND",
    "RESIDUAL_SHARE_METHOD",
    "RealSignals",
    "cas_metrics",
    "generate_signals",
    "generation_metrics",
    "held_out_signals",
    "reconstruction_metrics",
    "residual_head_share",
    "split_by_object",
    "throughput",
    "write_generator_report",
]


class _HasSignals(Protocol):
    signals: Tensor


SampleFn = Callable[[ObjectConditions, torch.Generator], "_HasSignals | Tensor"]


RealSignals = SignalSet  # the real held-out set has the shape of a training set


def _check_real(real: Any, name: str = "real") -> None:
    for attr in ("signals", "conditions", "object_index"):
        if not hasattr(real, attr):
            raise TypeError(f"{name}: expected signals + conditions + object_index, lacks {attr}")
    x = real.signals
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
        raise ValueError(
            f"{name}.signals: expected float [N, C, S, S], got {getattr(x, 'shape', x)}"
        )
    if len(real.conditions) != x.shape[0] or real.object_index.shape != (x.shape[0],):
        raise ValueError(
            f"{name}: {x.shape[0]} signals, {len(real.conditions)} conditions, "
            f"object_index {tuple(real.object_index.shape)}"
        )


def _kid_subset_size(n_real: int, n_fake: int) -> int:
    """KID's subset size for sets of these sizes: half the smaller set, at most 1000 (a subset
    as large as the set would draw the same subset every time, and its std would read 0)."""
    return max(2, min(1000, min(n_real, n_fake) // 2))


def _features(real: Tensor, fake: Tensor, classifier: CropClassifier, **kwargs) -> dict:
    """`metrics.feature_metrics` with `_kid_subset_size`, which it adds as `kid_subset_size`."""
    size = _kid_subset_size(real.shape[0], fake.shape[0])
    out = feature_metrics(real, fake, classifier, kid_subset_size=size, **kwargs)
    return {**out, "kid_subset_size": size}


def _subset(real: Any, rows: Tensor) -> RealSignals:
    return RealSignals(real.signals[rows], real.conditions.index(rows), real.object_index[rows])


# ---------------------------------------------------------------------------------------------
# Real held-out signals
# ---------------------------------------------------------------------------------------------
def held_out_signals(
    bank_path: str | Path,
    data_config: GeneratorDataConfig,
    *,
    version: str | None = None,
    progress: bool = True,
) -> RealSignals:
    """The real signals of a bank that may be an evaluation bank (e.g. the held-out world's
    val split, built with `tools/create_data.py objects --allow-eval-split`), cut as the
    generator's training data was: `data_config`'s modality, image size or LiDAR grid,
    min_visibility / min_points and classes.

    Args:
        bank_path: the bank folder.
        data_config: the generator config's `data` section (its `bank` is not read).
        version: the dataset version the bank must come from (default `data_config.version`;
            None: any).

    Raises:
        BankFileError: a missing, corrupt or other-version bank (naming its bank.json).
        ValueError: no signal of the modality passes the filters (naming the bank).
    """
    from .bank import ObjectBank

    version = version if version is not None else data_config.version
    bank = ObjectBank.open(bank_path, version=version, training=None)
    return bank_signals(bank, data_config, progress=progress)


def split_by_object(object_index: Tensor, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Splits rows into two halves with no object in both (camera crops of one object from
    different cameras stay together): objects in a seeded random order, rows of the first
    objects until half the rows are reached go to A.

    Args:
        object_index: `[N]` int64, N >= 2, at least two distinct objects.

    Returns:
        (rows_a, rows_b): int64 row indices, ascending, disjoint, together all N rows.
    """
    if object_index.dim() != 1 or object_index.shape[0] < 2:
        raise ValueError(f"object_index: need [N] with N >= 2, got {tuple(object_index.shape)}")
    objects, inverse, counts = torch.unique(object_index, return_inverse=True, return_counts=True)
    if objects.shape[0] < 2:
        raise ValueError("object_index: every row is one object; cannot split by object")
    order = torch.randperm(objects.shape[0], generator=torch.Generator().manual_seed(seed))
    filled = torch.cumsum(counts[order], 0)  # [K] rows covered by the first objects
    half = object_index.shape[0] / 2
    n_a = int((filled < half).sum()) + 1  # objects in A: the first to reach half the rows
    n_a = min(n_a, objects.shape[0] - 1)  # B keeps at least one object
    in_a = torch.zeros(objects.shape[0], dtype=torch.bool)
    in_a[order[:n_a]] = True
    row_in_a = in_a[inverse]  # [N]
    return row_in_a.nonzero().squeeze(1), (~row_in_a).nonzero().squeeze(1)


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------
def _signals_of(out: Any) -> Tensor:
    signals = out if isinstance(out, Tensor) else getattr(out, "signals", None)
    if not isinstance(signals, Tensor):
        raise TypeError(
            f"sample_fn: returned {type(out).__name__}, expected a GeneratedSignal or a tensor"
        )
    return signals


def generate_signals(
    sample_fn: SampleFn,
    conditions: ObjectConditions,
    *,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = False,
) -> Tensor:
    """One generated signal per row of `conditions`, in batches of `batch_size` drawn in order
    from one `torch.Generator` seeded with `seed` (deterministic for a deterministic
    generator).

    Returns:
        `[N, C, S, S]` float32 on the CPU. Raises ValueError when a batch has the wrong row
        count or non-finite values.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive int, got {batch_size!r}")
    from tqdm import tqdm

    generator = torch.Generator().manual_seed(seed)
    chunks = []
    starts = range(0, len(conditions), batch_size)
    for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
        batch = conditions.index(slice(start, start + batch_size))
        signals = _signals_of(sample_fn(batch, generator))  # [B, C, S, S]
        if signals.dim() != 4 or signals.shape[0] != len(batch):
            raise ValueError(
                f"sample_fn: returned signals {tuple(signals.shape)} for {len(batch)} conditions"
            )
        if not bool(torch.isfinite(signals).all()):
            raise ValueError(f"sample_fn: non-finite values in the batch at row {start}")
        chunks.append(signals.detach().float().cpu())
    return torch.cat(chunks)


def _choose_rows(n_total: int, n: int | None, seed: int) -> Tensor:
    if n is None or n >= n_total:
        return torch.arange(n_total)
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n: expected a positive int, got {n!r}")
    perm = torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))
    return perm[:n].sort().values


def generation_metrics(
    sample_fn: SampleFn,
    real: RealSignals,
    classifier: CropClassifier,
    *,
    n: int | None = None,
    seed: int = 0,
    batch_size: int = 64,
    kid_subsets: int = 100,
    k: int = 3,
    progress: bool = False,
) -> dict[str, Any]:
    """Generated vs real held-out signals, with the noise floor beside them.

    Args:
        sample_fn: `(conditions, generator) -> GeneratedSignal` (see the module docstring).
        real: real held-out signals (`held_out_signals`), N of them.
        classifier: the frozen crop classifier whose features every distance uses.
        n: use a seeded random subset of n real signals (default all).
        seed: seeds the subset, the split by object, the sampling and the KID subsets.
        batch_size: conditions per `sample_fn` call.

    Returns:
        `num_samples`, `num_half_a`, `num_half_b`, `sample_seconds`, `noise_floor_method`, and
        the `feature_metrics` dicts (`fid`, `kid_mean`, `kid_std`, `precision`, `recall`,
        `num_real`, `num_fake`, and `kid_subset_size`: half the smaller set, at most 1000)
        `generated`, `generated_half` and `noise_floor` (module
        docstring), and `condition_fidelity` (`metrics.condition_fidelity` of the generated
        signals against the requested conditions, relative to the real ones).
    """
    _check_real(real)
    rows = _choose_rows(len(real), n, seed)
    real = _subset(real, rows)
    if len(real) < 2 * (k + 1):
        raise ValueError(f"real: {len(real)} signals, need at least {2 * (k + 1)} for the halves")
    classifier.check_images(real.signals, "real.signals")
    tic = time.perf_counter()
    fake = generate_signals(
        sample_fn, real.conditions, seed=seed, batch_size=batch_size, progress=progress
    )  # [N, C, S, S]
    seconds = time.perf_counter() - tic
    if fake.shape[1:] != real.signals.shape[1:]:
        raise ValueError(
            f"sample_fn: signals {tuple(fake.shape[1:])}, the real ones are "
            f"{tuple(real.signals.shape[1:])}"
        )
    rows_a, rows_b = split_by_object(real.object_index, seed=seed)
    if min(len(rows_a), len(rows_b)) < k + 1:
        raise ValueError(
            f"real: the split by object left halves of {len(rows_a)} and {len(rows_b)} "
            f"signals, need at least {k + 1} each"
        )
    common = {"kid_subsets": kid_subsets, "seed": seed, "k": k}
    real_a, real_b = real.signals[rows_a], real.signals[rows_b]
    conds = real.conditions
    return {
        "num_samples": len(real),
        "num_half_a": len(rows_a),
        "num_half_b": len(rows_b),
        "sample_seconds": seconds,
        "noise_floor_method": NOISE_FLOOR_METHOD,
        "generated": _features(real.signals, fake, classifier, **common),
        "generated_half": _features(real_a, fake[rows_b], classifier, **common),
        "noise_floor": _features(real_a, real_b, classifier, **common),
        "condition_fidelity": condition_fidelity(
            classifier,
            real.signals,
            conds.label,
            conds.view_angle,
            fake,
            conds.label,
            conds.view_angle,
        ),
    }


# ---------------------------------------------------------------------------------------------
# Reconstruction (the tokenizer ablation)
# ---------------------------------------------------------------------------------------------
@contextmanager
def _eval_mode(module: nn.Module):
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)


@torch.no_grad()
def _reconstruct(tokenizer: nn.Module, x: Tensor, batch_size: int) -> dict[str, Tensor]:
    """x [N, C, S, S] -> {"hybrid", "discrete", "autoencoder"} reconstructions [N, C, S, S]:
    detokenize(indices, residual), detokenize(indices), decode(encode(x))."""
    out: dict[str, list[Tensor]] = {"hybrid": [], "discrete": [], "autoencoder": []}
    device = next(tokenizer.parameters()).device
    with _eval_mode(tokenizer):
        for start in range(0, x.shape[0], batch_size):
            batch = x[start : start + batch_size].to(device)  # [B, C, S, S]
            indices, residual = tokenizer.tokenize(batch)  # per scale [B, s*s]; [B, D, G, G]
            out["hybrid"].append(tokenizer.detokenize(indices, residual).float().cpu())
            out["discrete"].append(tokenizer.detokenize(indices, None).float().cpu())
            out["autoencoder"].append(tokenizer.decode(tokenizer.encode(batch)).float().cpu())
    return {name: torch.cat(parts) for name, parts in out.items()}


def _mse(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).pow(2).mean())


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 else math.nan


def reconstruction_metrics(
    tokenizer: nn.Module,
    real: RealSignals | Tensor,
    classifier: CropClassifier,
    *,
    discrete_tokenizer: nn.Module | None = None,
    batch_size: int = 256,
    kid_subsets: int = 100,
    seed: int = 0,
) -> dict[str, Any]:
    """The tokenizer's reconstruction of real signals, hybrid vs discrete-only.

    Args:
        tokenizer: a `hart.tokenizer.HybridTokenizer` (tokenize / detokenize / encode / decode).
        real: real held-out signals, or their `[N, C, S, S]` tensor in [-1, 1].
        classifier: the frozen crop classifier (features of FID / KID / precision / recall).
        discrete_tokenizer: optional second tokenizer trained with `hybrid=False` (the VAR
            tokenizer: the issue's "hybrid vs discrete-only tokenizer" ablation); its
            discrete-only decode is measured the same way.

    Returns:
        `num_signals`, `tokenizer_hybrid` (the tokenizer's `hybrid` flag), and per
        reconstruction a dict of `mse` (mean over every element) plus `feature_metrics`
        (real vs reconstructed):
        `hybrid`: `detokenize(indices, residual)` (equals `decode(z)` up to float rounding,
        since f_hat + residual = z); `discrete`: `detokenize(indices)` of the same tokenizer;
        `discrete_tokenizer`: the second tokenizer's `detokenize(indices)` (when given).
        `autoencoder_mse`: MSE of `decode(encode(x))` (the exactness check of the hybrid path).
        Ratios for the targets: `mse_ratio_vs_discrete` = hybrid / discrete MSE,
        `kid_reduction_vs_discrete` = 1 - hybrid KID / discrete KID, and the same
        `..._vs_discrete_tokenizer` when the second tokenizer is given.
    """
    x = real if isinstance(real, Tensor) else real.signals  # [N, C, S, S]
    classifier.check_images(x, "real")
    common = {"kid_subsets": kid_subsets, "seed": seed}
    recon = _reconstruct(tokenizer, x, batch_size)
    result: dict[str, Any] = {
        "num_signals": x.shape[0],
        "tokenizer_hybrid": bool(getattr(tokenizer, "hybrid", True)),
        "autoencoder_mse": _mse(recon["autoencoder"], x),
    }
    for name in ("hybrid", "discrete"):
        result[name] = {
            "mse": _mse(recon[name], x),
            **_features(x, recon[name], classifier, **common),
        }
    arms = ["discrete"]
    if discrete_tokenizer is not None:
        other = _reconstruct(discrete_tokenizer, x, batch_size)["discrete"]
        result["discrete_tokenizer"] = {
            "tokenizer_hybrid": bool(getattr(discrete_tokenizer, "hybrid", False)),
            "mse": _mse(other, x),
            **_features(x, other, classifier, **common),
        }
        arms.append("discrete_tokenizer")
    hybrid = result["hybrid"]
    for arm in arms:
        result[f"mse_ratio_vs_{arm}"] = _ratio(hybrid["mse"], result[arm]["mse"])
        result[f"kid_reduction_vs_{arm}"] = 1.0 - _ratio(
            hybrid["kid_mean"], result[arm]["kid_mean"]
        )
    return result


# ---------------------------------------------------------------------------------------------
# Throughput
# ---------------------------------------------------------------------------------------------
@contextmanager
def _torch_threads(threads: int | None):
    before = torch.get_num_threads()
    if threads is not None:
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads: expected a positive int, got {threads!r}")
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _rows(conditions: ObjectConditions, batch_size: int) -> ObjectConditions:
    """`batch_size` rows of `conditions`, cycling when it has fewer."""
    if len(conditions) == 0:
        raise ValueError("conditions: empty")
    return conditions.index(torch.arange(batch_size) % len(conditions))


def _check_timing_args(repeats: int, warmup: int) -> None:
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats: expected a positive int, got {repeats!r}")
    if not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup: expected an int >= 0, got {warmup!r}")


def _sync(device: torch.device | None) -> None:
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def throughput(
    sample_fn: SampleFn,
    conditions: ObjectConditions,
    *,
    batch_sizes: Sequence[int] = (1, 64),
    repeats: int = 3,
    threads: int | None = 2,
    warmup: int = 1,
    seed: int = 0,
) -> dict[str, Any]:
    """Images per second of `sample_fn` at each batch size, at `threads` torch threads (the
    previous count is restored, also on error; None: leave it).

    Each batch size takes the first `b` rows of `conditions` (cycled when fewer), calls
    `sample_fn` `warmup` times untimed, then `repeats` times timed (wall clock; CUDA
    synchronized when the signals are on a GPU), each call with a fresh generator seeded with
    `seed`.

    Returns:
        `threads`, `repeats`, `warmup`, and `batch_sizes`: {str(b): {`images_per_second`
        (b / median seconds), `seconds_median`, `seconds` (every repeat)}}.
    """
    _check_timing_args(repeats, warmup)
    per_size: dict[str, Any] = {}
    with _torch_threads(threads):
        for b in batch_sizes:
            if not isinstance(b, int) or b < 1:
                raise ValueError(f"batch_sizes: expected positive ints, got {b!r}")
            batch = _rows(conditions, b)
            device = None
            times = []
            for i in range(warmup + repeats):
                tic = time.perf_counter()
                signals = _signals_of(sample_fn(batch, torch.Generator().manual_seed(seed)))
                device = signals.device
                _sync(device)
                if i >= warmup:
                    times.append(time.perf_counter() - tic)
            median = statistics.median(times)
            per_size[str(b)] = {
                "images_per_second": b / median,
                "seconds_median": median,
                "seconds": times,
            }
        used = torch.get_num_threads()
    return {"threads": used, "repeats": repeats, "warmup": warmup, "batch_sizes": per_size}


def residual_head_share(
    model: nn.Module,
    conditions: ObjectConditions,
    *,
    batch_size: int = 64,
    repeats: int = 3,
    threads: int | None = 2,
    warmup: int = 1,
    seed: int = 0,
    sample_kwargs: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The residual diffusion head's share of a HART sample call's time.

    Measured two ways (`RESIDUAL_SHARE_METHOD`): the head's `sample` is wrapped with a timer
    for the duration of this call (an instance attribute, removed afterwards), so each timed
    `hart.model.sample(..., use_residual=True)` call also gives the time spent inside the head;
    and `sample(..., use_residual=False)` is timed on its own as a cross-check.

    Args:
        model: a `HARTGenerator` with a residual head.
        conditions: the first `batch_size` rows (cycled when fewer) are sampled.
        sample_kwargs: further `hart.model.sample` arguments (guidance, residual_steps, ...).

    Returns:
        `share` (median over repeats of head seconds / call seconds), `head_seconds_median`,
        `total_seconds_median`, `total_seconds_without_residual_median`,
        `share_by_difference`, `batch_size`, `threads`, `repeats`, `method`.
    """
    from .hart.model import sample

    head = getattr(model, "residual_head", None)
    if head is None:
        raise ValueError("model.residual_head: None (a generator without a residual head)")
    _check_timing_args(repeats, warmup)
    kwargs = dict(sample_kwargs or {})
    kwargs.pop("use_residual", None)
    batch = _rows(conditions, batch_size)
    head_seconds: list[float] = []
    original = head.sample

    def timed_sample(*args, **kw):
        device = args[0].device if args and isinstance(args[0], Tensor) else None
        _sync(device)
        tic = time.perf_counter()
        out = original(*args, **kw)
        _sync(device)
        head_seconds.append(time.perf_counter() - tic)
        return out

    def run(use_residual: bool) -> float:
        tic = time.perf_counter()
        out = sample(
            model,
            batch,
            use_residual=use_residual,
            generator=torch.Generator().manual_seed(seed),
            **kwargs,
        )
        _sync(out.signals.device)
        return time.perf_counter() - tic

    with_head, head_times, without_head = [], [], []
    with _torch_threads(threads):
        head.sample = timed_sample
        try:
            for i in range(warmup + repeats):
                head_seconds.clear()
                total = run(True)
                if i >= warmup:
                    with_head.append(total)
                    head_times.append(sum(head_seconds))
        finally:
            del head.sample  # back to the class's method
        for i in range(warmup + repeats):
            total = run(False)
            if i >= warmup:
                without_head.append(total)
        used = torch.get_num_threads()
    total_median = statistics.median(with_head)
    without_median = statistics.median(without_head)
    return {
        "share": statistics.median([h / t for h, t in zip(head_times, with_head, strict=True)]),
        "head_seconds_median": statistics.median(head_times),
        "total_seconds_median": total_median,
        "total_seconds_without_residual_median": without_median,
        "share_by_difference": 1.0 - without_median / total_median,
        "batch_size": batch_size,
        "threads": used,
        "repeats": repeats,
        "method": RESIDUAL_SHARE_METHOD,
    }


# ---------------------------------------------------------------------------------------------
# Classification accuracy score
# ---------------------------------------------------------------------------------------------
def _class_names(names: Sequence[str] | None) -> list[str]:
    names = list(names or [])
    unknown = [c for c in names if c not in CLASS_NAMES]
    if unknown:
        raise ValueError(f"rare_classes: unknown classes {unknown} (known: {list(CLASS_NAMES)})")
    return names


def cas_metrics(
    generated: RealSignals,
    real_test: RealSignals,
    *,
    real_train_few: RealSignals | None = None,
    rare_classes: Sequence[str] | None = None,
    steps: int = 500,
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Classification accuracy score (a fresh crop classifier trained on the given signals,
    tested on real held-out ones; `metrics.classification_accuracy_score`).

    Args:
        generated: generated signals with the conditions they were asked for (the labels and
            view angles the classifier learns).
        real_test: real held-out signals.
        real_train_few: real training signals with the rare classes cut to a few each (the
            caller chooses how few); when given, two more arms are trained: on these alone and
            on these plus `generated`.
        rare_classes: class names whose accuracy is listed per arm under `rare`.
        steps, batch_size, seed: of each classifier's training (the same for every arm).

    Returns:
        `generated_only` (and `real_few`, `real_few_plus_generated` when `real_train_few` is
        given): `classifier_accuracy` dicts on `real_test` (`class_acc`, `yaw_acc`,
        `class_acc/<name>`, `num_train`, `num_test`); `rare`: {class: {arm: class accuracy
        (NaN when the test set has none of the class)}}; `steps`, `seed`.
    """
    _check_real(generated, "generated")
    _check_real(real_test, "real_test")
    rare = _class_names(rare_classes)
    arms: dict[str, RealSignals] = {"generated_only": generated}
    if real_train_few is not None:
        _check_real(real_train_few, "real_train_few")
        arms["real_few"] = real_train_few
        arms["real_few_plus_generated"] = RealSignals(
            torch.cat([real_train_few.signals, generated.signals]),
            ObjectConditions.cat([real_train_few.conditions, generated.conditions]),
            torch.cat([real_train_few.object_index, generated.object_index]),
        )
    result: dict[str, Any] = {"steps": steps, "seed": seed}
    test = real_test.conditions
    for name, train in arms.items():
        result[name] = classification_accuracy_score(
            train.signals,
            train.conditions.label,
            train.conditions.view_angle,
            real_test.signals,
            test.label,
            test.view_angle,
            steps=steps,
            batch_size=batch_size,
            generator=torch.Generator().manual_seed(seed),
            progress=progress,
        )
    result["rare"] = {
        c: {arm: result[arm].get(f"class_acc/{c}", math.nan) for arm in arms} for c in rare
    }
    return result


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def _json_safe(value: Any) -> Any:
    """NaN / inf floats -> None (strict JSON), tensors -> lists, tuples -> lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Tensor):
        return _json_safe(value.tolist())
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def write_generator_report(
    results: Mapping[str, Any],
    path: str | Path,
    *,
    command: str,
    commit: str | None = None,
) -> Path:
    """Writes `results` as JSON beside `kind`, `format_version`, `commit` (default: the
    checkout's, `git rev-parse --short HEAD` with `+dirty`), `machine` (description, platform,
    CPU count, torch version and threads), `command` and `date` (UTC, ISO 8601). Non-finite
    floats become null. Returns the path."""
    from ..provenance import git_commit, machine_description

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "kind": REPORT_KIND,
        "format_version": REPORT_FORMAT_VERSION,
        "commit": commit if commit is not None else git_commit(),
        "machine": {
            "description": machine_description(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
        },
        "command": command,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    path.write_text(json.dumps(_json_safe({**meta, **results}), indent=1, allow_nan=False))
    return path
