"""Measuring generated objects with the project's own feature extractor (issues #25 and #26).

No downloaded Inception weights exist here, so the features come from a small crop classifier
(`CropClassifier`: object class + viewing-angle bin) trained on real bank crops of the training
split. On top of its frozen `features`:

- Frechet distance and KID: torchmetrics' `FrechetInceptionDistance` / `KernelInceptionDistance`
  with the classifier as their custom `feature` module (the statistics are torchmetrics', not
  ours). KID is the unbiased MMD^2 with the cubic polynomial kernel
  `k(x, y) = (x.y / F + 1)^3`, averaged over random subsets.
- Precision / recall of Kynkaanniemi et al. 2019 (k-NN manifolds), written here, chunked.
- `noise_floor`: the same numbers between two disjoint real sets, to report beside every figure.
- Condition fidelity (the classifier's accuracy on generated crops over its accuracy on real
  ones) and the classification accuracy score (a classifier trained on generated crops, tested
  on real held-out crops).

Images: float `[N, C, S, S]` in [-1, 1] (camera crops: RGB + mask-as-alpha, C = 4). The
classifier is not camera-specific: LiDAR occupancy grids `[N, Z+1, X, Y]` are images with
Z+1 channels, and the horizontal flip (last axis, image u or box-frame y) mirrors the viewing
angle the same way for both.

Viewing angle: the sensor's azimuth seen from the box, box frame (x forward, y left), radians
(`BankObject` views, `ObjectConditions.view_angle`). `yaw_bin` cuts the circle into `yaw_bins`
equal bins, bin 0 centred on 0 (the object seen from its front).

    clf = train_crop_classifier(real.images, real.labels, real.angles, steps=2000)
    save_crop_classifier(clf, "outputs/crop_classifier.safetensors")
    report = feature_metrics(held_out_images, generated_images, clf)
    floor = noise_floor(held_out_a, held_out_b, clf)   # same sizes as the comparison above

Frechet distance and KID depend on the set sizes (FID is biased upward for small sets; with
fewer samples than `num_features` its covariances are singular): compare numbers, and the
noise floor, only at equal set sizes.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import safetensors
import safetensors.torch
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from ..structures.classes import CLASS_NAMES

CLASSIFIER_FORMAT_VERSION = 1
CLASSIFIER_KIND = "perception.crop-classifier"
# Bytes of one float64 distance block in the k-NN search (rows x columns): bounded memory.
_KNN_BLOCK_BYTES = 64 * 2**20

__all__ = [
    "CLASSIFIER_FORMAT_VERSION",
    "CLASSIFIER_KIND",
    "CropClassifier",
    "classification_accuracy_score",
    "classifier_accuracy",
    "condition_fidelity",
    "extract_features",
    "feature_metrics",
    "frechet_distance",
    "kernel_inception_distance",
    "load_crop_classifier",
    "noise_floor",
    "precision_recall",
    "save_crop_classifier",
    "train_crop_classifier",
    "yaw_bin",
]


def yaw_bin(view_angle: Tensor, yaw_bins: int = 8) -> Tensor:
    """The viewing-angle bin of each angle.

    Args:
        view_angle: `[N]` float, radians, any range (wrapped onto the circle).
        yaw_bins: number of equal bins of width `2 pi / yaw_bins`; bin `b` spans
            `[(b - 1/2) w, (b + 1/2) w)`, so bin 0 is centred on 0 and `pi` falls in bin
            `yaw_bins // 2` for even `yaw_bins`.

    Returns:
        `[N]` long in `[0, yaw_bins)`. A horizontal flip maps angle `a` to `-a`, so bin `b` to
        `(-b) mod yaw_bins` (except exactly on a bin edge).
    """
    if not isinstance(yaw_bins, int) or yaw_bins < 1:
        raise ValueError(f"yaw_bins: expected a positive int, got {yaw_bins!r}")
    if not view_angle.is_floating_point():
        raise ValueError(f"view_angle: expected a float tensor, got {view_angle.dtype}")
    if not bool(torch.isfinite(view_angle).all()):
        raise ValueError("view_angle: holds non-finite values")
    width = 2.0 * math.pi / yaw_bins
    # float64 so that bin edges do not move with the input's precision
    shifted = view_angle.double() / width + 0.5  # [N]
    return torch.remainder(torch.floor(shifted).long(), yaw_bins)


def _groups(channels: int) -> int:
    return math.gcd(channels, 8)


def _conv_norm_act(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.GroupNorm(_groups(c_out), c_out),
        nn.SiLU(),
    ]


class CropClassifier(nn.Module):
    """A small CNN that tells an object crop's class and viewing-angle bin; its pooled
    features are the feature space of every distance in this module.

    Layers: a 3x3 stem at full resolution, then stages of (3x3 stride-2 conv, 3x3 conv), each
    conv followed by GroupNorm and SiLU, halving the size until it is 4 (32 -> 16 -> 8 -> 4:
    three stages; 16: two), channels `width`, `2 width`, then `4 width`; a global average
    pool gives the features (`num_features` = `4 width` for `image_size >= 16`), and two
    linear heads give the class and yaw-bin logits.
    """

    def __init__(
        self,
        *,
        in_channels: int = 4,
        num_classes: int = len(CLASS_NAMES),
        yaw_bins: int = 8,
        width: int = 32,
        image_size: int = 32,
    ) -> None:
        super().__init__()
        for name, value, low in (
            ("in_channels", in_channels, 1),
            ("num_classes", num_classes, 2),
            ("yaw_bins", yaw_bins, 2),
            ("width", width, 1),
            ("image_size", image_size, 8),
        ):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.yaw_bins = yaw_bins
        self.width = width
        self.image_size = image_size

        layers = _conv_norm_act(in_channels, width, 1)
        channels, size, stage = width, image_size, 0
        while size > 4:
            out = width * 2 ** min(stage + 1, 2)
            layers += _conv_norm_act(channels, out, 2) + _conv_norm_act(out, out, 1)
            channels, size, stage = out, (size + 1) // 2, stage + 1
        self.body = nn.Sequential(*layers)
        self.num_features = channels
        self.class_head = nn.Linear(channels, num_classes)
        self.yaw_head = nn.Linear(channels, yaw_bins)

    @property
    def config(self) -> dict[str, int]:
        """The constructor's arguments (saved beside the weights)."""
        return {
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "yaw_bins": self.yaw_bins,
            "width": self.width,
            "image_size": self.image_size,
        }

    def check_images(self, x: Tensor, name: str = "x") -> None:
        """Raises ValueError naming `name` unless `x` is float `[N, in_channels, S, S]`,
        `S = image_size`, with N >= 1."""
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
            what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"{name}: expected a float tensor [N, C, S, S], got {what}")
        N, C, H, W = x.shape
        if N == 0:
            raise ValueError(f"{name}: empty (0 images)")
        if C != self.in_channels:
            raise ValueError(
                f"{name}: {C} channels, the classifier takes {self.in_channels} "
                f"(shape {tuple(x.shape)})"
            )
        if H != self.image_size or W != self.image_size:
            raise ValueError(
                f"{name}: images of {H}x{W}, the classifier takes "
                f"{self.image_size}x{self.image_size}"
            )

    def features(self, x: Tensor) -> Tensor:
        """`x` float `[N, C, S, S]` in [-1, 1] -> pooled features `[N, num_features]`."""
        self.check_images(x)
        return self.body(x).mean(dim=(2, 3))  # [N, F]

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """`x` float `[N, C, S, S]` -> (class logits `[N, num_classes]`,
        yaw-bin logits `[N, yaw_bins]`)."""
        f = self.features(x)  # [N, F]
        return self.class_head(f), self.yaw_head(f)

    def yaw_bin(self, view_angle: Tensor) -> Tensor:
        """`view_angle [N]` rad -> `[N]` long in `[0, yaw_bins)` (see `yaw_bin`)."""
        return yaw_bin(view_angle, self.yaw_bins)


def _check_labels(
    images: Tensor, labels: Tensor, view_angles: Tensor, num_classes: int, prefix: str = ""
) -> None:
    N = images.shape[0]
    if labels.dtype != torch.long or labels.shape != (N,):
        raise ValueError(
            f"{prefix}labels: expected long [{N}], got {labels.dtype} {tuple(labels.shape)}"
        )
    if N and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"{prefix}labels: values in [{int(labels.min())}, {int(labels.max())}], "
            f"expected class indices in [0, {num_classes})"
        )
    if not view_angles.is_floating_point() or view_angles.shape != (N,):
        raise ValueError(
            f"{prefix}view_angles: expected float [{N}], got "
            f"{view_angles.dtype} {tuple(view_angles.shape)}"
        )
    if not bool(torch.isfinite(view_angles).all()):
        raise ValueError(f"{prefix}view_angles: holds non-finite values")


def _seed_from(generator: torch.Generator | None) -> int:
    return int(torch.randint(0, 2**62, (1,), generator=generator))


def _flip(images: Tensor, angles: Tensor, flip: Tensor) -> tuple[Tensor, Tensor]:
    """Mirrors the images whose `flip [B]` is True left-right and negates their view angle:
    the mirror image of an object seen from azimuth `a` is an object seen from `-a`."""
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)  # [B, C, S, S]
    return images, torch.where(flip, -angles, angles)


def train_crop_classifier(
    images: Tensor,
    labels: Tensor,
    view_angles: Tensor,
    *,
    steps: int = 2000,
    batch_size: int = 64,
    lr: float = 2e-3,
    weight_decay: float = 1e-4,
    width: int = 32,
    yaw_bins: int = 8,
    num_classes: int = len(CLASS_NAMES),
    augment: bool = True,
    balanced: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = True,
) -> CropClassifier:
    """Trains a `CropClassifier` (class + yaw bin, summed cross-entropies) on real crops.

    Args:
        images: `[N, C, S, S]` float in [-1, 1]; the classifier takes `C` channels at `S`.
        labels: `[N]` long, class indices in `[0, num_classes)` (`CLASS_NAMES` order).
        view_angles: `[N]` float, rad (see `yaw_bin`).
        steps, batch_size, lr, weight_decay: AdamW, linear warm-up over 5% of the steps then
            cosine decay to 0; batches drawn with replacement.
        augment: mirror half of each batch left-right, negating those view angles (the yaw
            bin follows: `b -> -b mod yaw_bins`). Assumes objects are left-right symmetric,
            which vehicles, riders and pedestrians are up to small details.
        balanced: draw examples with probability inversely proportional to their class's
            count (rare classes seen as often as common ones).
        generator: draws the initial weights, batches and flips (deterministic under a seed).

    Returns:
        The trained classifier, in eval mode, on the images' device.
    """
    if not isinstance(images, Tensor) or not images.is_floating_point() or images.dim() != 4:
        raise ValueError("images: expected a float tensor [N, C, S, S]")
    N, C, S, _ = images.shape
    if N == 0:
        raise ValueError("images: empty (0 images)")
    if images.shape[2] != images.shape[3]:
        raise ValueError(f"images: expected square images, got {tuple(images.shape)}")
    _check_labels(images, labels, view_angles, num_classes)
    for name, value in (("steps", steps), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr: expected > 0, got {lr!r}")

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(_seed_from(generator))
        model = CropClassifier(
            in_channels=C, num_classes=num_classes, yaw_bins=yaw_bins, width=width, image_size=S
        )
    model.to(images.device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, steps // 20)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    weights = None
    if balanced:
        counts = torch.bincount(labels.cpu(), minlength=num_classes).double()  # [K]
        weights = 1.0 / counts[labels.cpu()]  # [N]

    from tqdm import tqdm

    bar = tqdm(range(steps), desc="crop classifier", unit="step", disable=not progress)
    for step in bar:
        if weights is None:
            index = torch.randint(0, N, (batch_size,), generator=generator)  # [B]
        else:
            index = torch.multinomial(weights, batch_size, replacement=True, generator=generator)
        index = index.to(images.device)
        x, angle = images[index], view_angles[index]  # [B, C, S, S], [B]
        if augment:
            flip = (torch.rand(batch_size, generator=generator) < 0.5).to(images.device)
            x, angle = _flip(x, angle, flip)
        class_logits, yaw_logits = model(x)
        class_loss = F.cross_entropy(class_logits, labels[index])
        yaw_loss = F.cross_entropy(yaw_logits, yaw_bin(angle, yaw_bins))
        loss = class_loss + yaw_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(cls=f"{class_loss.item():.3f}", yaw=f"{yaw_loss.item():.3f}")
    return model.eval()


class _EvalMode:
    """Puts a module in eval mode for a `with` block and restores its mode after."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __enter__(self) -> nn.Module:
        self.was_training = self.module.training
        return self.module.eval()

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)


def _batches(images: Tensor, batch_size: int, device: torch.device) -> Iterator[Tensor]:
    for start in range(0, images.shape[0], batch_size):
        yield images[start : start + batch_size].to(device)


def _device(model: nn.Module, default: torch.device | None = None) -> torch.device:
    """The device of the module's first parameter (`default` for a module without any)."""
    first = next(model.parameters(), None)
    if first is None:
        if default is None:
            raise ValueError(f"{type(model).__name__}: has no parameters to tell its device")
        return default
    return first.device


@torch.no_grad()
def classifier_accuracy(
    model: CropClassifier,
    images: Tensor,
    labels: Tensor,
    view_angles: Tensor,
    *,
    batch_size: int = 256,
) -> dict[str, float]:
    """The classifier's accuracy on a labelled set.

    Args:
        images: `[N, C, S, S]` float in [-1, 1]. labels: `[N]` long. view_angles: `[N]` float rad.

    Returns:
        `class_acc` and `yaw_acc` (fractions of the N crops whose class / yaw bin is the
        arg-max), and `class_acc/<name>` for each class present in `labels` (`CLASS_NAMES`
        names when the classifier has that many classes, else the index).
    """
    model.check_images(images, "images")
    _check_labels(images, labels, view_angles, model.num_classes)
    class_pred, yaw_pred = [], []
    with _EvalMode(model):
        for x in _batches(images, batch_size, _device(model)):
            class_logits, yaw_logits = model(x)
            class_pred.append(class_logits.argmax(1).cpu())
            yaw_pred.append(yaw_logits.argmax(1).cpu())
    labels = labels.cpu()
    class_ok = torch.cat(class_pred) == labels  # [N]
    yaw_ok = torch.cat(yaw_pred) == model.yaw_bin(view_angles.cpu())  # [N]
    result = {
        "class_acc": class_ok.double().mean().item(),
        "yaw_acc": yaw_ok.double().mean().item(),
    }
    names = CLASS_NAMES if model.num_classes == len(CLASS_NAMES) else None
    for c in torch.unique(labels).tolist():
        name = names[c] if names else str(c)
        result[f"class_acc/{name}"] = class_ok[labels == c].double().mean().item()
    return result


def condition_fidelity(
    model: CropClassifier,
    real_images: Tensor,
    real_labels: Tensor,
    real_angles: Tensor,
    fake_images: Tensor,
    fake_labels: Tensor,
    fake_angles: Tensor,
    *,
    batch_size: int = 256,
) -> dict[str, float]:
    """How well generated crops show the conditions they were asked for: the classifier's
    accuracy on them (against the requested class and view angle) as a fraction of its
    accuracy on real held-out crops.

    Returns:
        `class` and `yaw` (fake accuracy / real accuracy), and the four accuracies
        `real_class_acc`, `real_yaw_acc`, `fake_class_acc`, `fake_yaw_acc`.
    """
    real = classifier_accuracy(model, real_images, real_labels, real_angles, batch_size=batch_size)
    fake = classifier_accuracy(model, fake_images, fake_labels, fake_angles, batch_size=batch_size)
    return {
        "class": fake["class_acc"] / real["class_acc"] if real["class_acc"] > 0 else math.nan,
        "yaw": fake["yaw_acc"] / real["yaw_acc"] if real["yaw_acc"] > 0 else math.nan,
        "real_class_acc": real["class_acc"],
        "real_yaw_acc": real["yaw_acc"],
        "fake_class_acc": fake["class_acc"],
        "fake_yaw_acc": fake["yaw_acc"],
    }


def classification_accuracy_score(
    train_images: Tensor,
    train_labels: Tensor,
    train_angles: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    test_angles: Tensor,
    **train_kwargs: object,
) -> dict[str, float]:
    """Classification accuracy score (CAS, Ravuri & Vinyals 2019): a classifier trained on
    the given crops only (e.g. generated ones, or real-few + generated), tested on real
    held-out crops.

    Args:
        train_*: `[N, C, S, S]` float, `[N]` long, `[N]` float rad (as `train_crop_classifier`).
        test_*: `[M, C, S, S]`, `[M]`, `[M]`: real held-out crops.
        train_kwargs: passed to `train_crop_classifier` (steps, generator, ...).

    Returns:
        `classifier_accuracy` on the test set, plus `num_train` and `num_test`.
    """
    if not isinstance(test_images, Tensor) or test_images.shape[1:] != train_images.shape[1:]:
        what = tuple(test_images.shape) if isinstance(test_images, Tensor) else test_images
        raise ValueError(
            f"test_images: shape {what} does not match train_images "
            f"{tuple(train_images.shape)} beyond the batch axis"
        )
    if test_images.shape[0] == 0:
        raise ValueError("test_images: empty (0 images)")
    model = train_crop_classifier(train_images, train_labels, train_angles, **train_kwargs)
    result = classifier_accuracy(model, test_images, test_labels, test_angles)
    result["num_train"] = float(train_images.shape[0])
    result["num_test"] = float(test_images.shape[0])
    return result


class _ClassifierFeatures(nn.Module):
    """The classifier's `features` as torchmetrics' custom `feature` module.

    torchmetrics (1.9, `image/fid.py` and `image/kid.py`) passes the images of `update` to a
    custom module untouched: its `normalize` flag and the uint8 conversion apply only to its
    own Inception, and a module with an int `num_features` is not probed with a dummy
    299x299 RGB image. So the module takes our float [-1, 1] C-channel images as they are.
    It returns float64 features (FID casts to float64 anyway; KID's kernel sums then run in
    float64 too), without gradients.
    """

    def __init__(self, classifier: CropClassifier) -> None:
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.num_features

    def forward(self, images: Tensor) -> Tensor:
        with torch.no_grad():
            return self.classifier.features(images).double()  # [N, F]


def _check_pair(real: Tensor, fake: Tensor, extractor: CropClassifier, names: tuple[str, str]):
    extractor.check_images(real, names[0])
    extractor.check_images(fake, names[1])


@torch.no_grad()
def extract_features(images: Tensor, extractor: CropClassifier, *, batch_size: int = 256) -> Tensor:
    """`images [N, C, S, S]` float in [-1, 1] -> the classifier's features `[N, F]` float64, on
    the CPU (eval mode, batches of `batch_size` on the classifier's device)."""
    extractor.check_images(images, "images")
    wrapped = _ClassifierFeatures(extractor)
    with _EvalMode(extractor):
        return torch.cat(
            [wrapped(x).cpu() for x in _batches(images, batch_size, _device(extractor))]
        )


class _GivenFeatures(nn.Module):
    """Identity feature module: torchmetrics' statistics on features extracted beforehand
    (`feature_metrics` extracts each set once for FID, KID and precision/recall)."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, features: Tensor) -> Tensor:
        return features.double()  # [N, F]


def _fid(module: nn.Module, real: Tensor, fake: Tensor, batch_size: int) -> float:
    """torchmetrics' FID of `real` vs `fake` (images or features, whatever `module` takes)."""
    for name, x in (("real_images", real), ("fake_images", fake)):
        if x.shape[0] < 2:
            raise ValueError(f"{name}: need at least 2 images for a covariance, got {x.shape[0]}")
    device = _device(module, real.device)
    metric = FrechetInceptionDistance(feature=module, reset_real_features=True, normalize=False).to(
        device
    )
    for x in _batches(real, batch_size, device):
        metric.update(x, real=True)
    for x in _batches(fake, batch_size, device):
        metric.update(x, real=False)
    return float(metric.compute())


def _kid_subset_size(subsets: int, subset_size: int | None, n: int) -> int:
    """Checks KID's subset arguments for sets of at least `n` samples; None -> min(1000, n)."""
    if not isinstance(subsets, int) or subsets < 1:
        raise ValueError(f"subsets: expected a positive int, got {subsets!r}")
    if subset_size is None:
        subset_size = min(1000, n)
    if not isinstance(subset_size, int) or not 2 <= subset_size <= n:
        raise ValueError(
            f"subset_size: expected an int in [2, {n}] (the smaller set's size), "
            f"got {subset_size!r}"
        )
    return subset_size


def _kid(
    module: nn.Module,
    real: Tensor,
    fake: Tensor,
    batch_size: int,
    *,
    subsets: int,
    subset_size: int | None,
    seed: int,
) -> tuple[float, float]:
    """torchmetrics' KID (mean, std) of `real` vs `fake` (images or features, as `module`)."""
    subset_size = _kid_subset_size(subsets, subset_size, min(real.shape[0], fake.shape[0]))
    device = _device(module, real.device)
    with warnings.catch_warnings():
        # torchmetrics warns that KID keeps every feature in memory: intended here
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        metric = KernelInceptionDistance(
            feature=module,
            subsets=subsets,
            subset_size=subset_size,
            reset_real_features=True,
            normalize=False,
        ).to(device)
    for x in _batches(real, batch_size, device):
        metric.update(x, real=True)
    for x in _batches(fake, batch_size, device):
        metric.update(x, real=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mean, std = metric.compute()
    return float(mean), float(std)


def frechet_distance(
    real_images: Tensor,
    fake_images: Tensor,
    extractor: CropClassifier,
    *,
    batch_size: int = 256,
) -> float:
    """Frechet distance between the Gaussians fitted to the two sets' classifier features:
    `|mu_r - mu_f|^2 + tr(S_r + S_f - 2 (S_r S_f)^(1/2))`, by torchmetrics'
    `FrechetInceptionDistance` with the classifier as its feature module.

    Args:
        real_images: `[N, C, S, S]` float in [-1, 1], N >= 2.
        fake_images: `[M, C, S, S]` float in [-1, 1], M >= 2.
        extractor: the (trained, frozen) crop classifier.

    Returns:
        The distance (squared feature units; 0 for identical sets up to round-off).
    """
    _check_pair(real_images, fake_images, extractor, ("real_images", "fake_images"))
    with _EvalMode(extractor):
        return _fid(_ClassifierFeatures(extractor), real_images, fake_images, batch_size)


def kernel_inception_distance(
    real_images: Tensor,
    fake_images: Tensor,
    extractor: CropClassifier,
    *,
    subsets: int = 100,
    subset_size: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[float, float]:
    """KID: the unbiased MMD^2 between the two sets' classifier features with the cubic
    polynomial kernel `(x.y / F + 1)^3`, averaged over `subsets` random subsets of
    `subset_size` from each set (torchmetrics' `KernelInceptionDistance` with the classifier
    as its feature module).

    Args:
        real_images: `[N, C, S, S]` float in [-1, 1].
        fake_images: `[M, C, S, S]` float in [-1, 1].
        subset_size: `2 <= subset_size <= min(N, M)`; None: `min(1000, N, M)`.
        seed: seeds the subset draws (torchmetrics draws them from the global RNG; it is
            forked here, so the caller's RNG state is left as it was).

    Returns:
        (mean, std) over the subsets. Unbiased: two independent samples of one distribution
        give 0 in expectation (and a set against itself gives a small negative number,
        `-2 (mean k(x, x) - mean_{i != j} k(x_i, x_j)) / m`).
    """
    _check_pair(real_images, fake_images, extractor, ("real_images", "fake_images"))
    with _EvalMode(extractor):
        return _kid(
            _ClassifierFeatures(extractor),
            real_images,
            fake_images,
            batch_size,
            subsets=subsets,
            subset_size=subset_size,
            seed=seed,
        )


def _check_feats(x: Tensor, name: str, k: int) -> None:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 2:
        what = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected float features [N, F], got {what}")
    if x.shape[0] <= k:
        raise ValueError(f"{name}: {x.shape[0]} samples, need more than k = {k}")


def _row_chunks(rows: int, columns: int, chunk_size: int | None) -> int:
    if chunk_size is not None:
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size: expected a positive int, got {chunk_size!r}")
        return chunk_size
    return max(1, min(rows, _KNN_BLOCK_BYTES // (8 * columns)))


def _knn_radii(x: Tensor, k: int, chunk: int) -> Tensor:
    """`x [N, F]` float64 -> `[N]` distance of each sample to its k-th nearest other sample."""
    radii = []
    for start in range(0, x.shape[0], chunk):
        d = torch.cdist(x[start : start + chunk], x)  # [c, N], the sample itself at ~0
        radii.append(d.kthvalue(k + 1, dim=1).values)
    return torch.cat(radii)


def _fraction_inside(queries: Tensor, support: Tensor, radii: Tensor, chunk: int) -> float:
    """Fraction of `queries [M, F]` within `radii [N]` of at least one of `support [N, F]`."""
    inside = 0
    for start in range(0, queries.shape[0], chunk):
        d = torch.cdist(queries[start : start + chunk], support)  # [c, N]
        inside += int((d <= radii[None, :]).any(dim=1).sum())
    return inside / queries.shape[0]


def precision_recall(
    real_feats: Tensor,
    fake_feats: Tensor,
    *,
    k: int = 3,
    chunk_size: int | None = None,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019) from k-NN manifolds.

    Each sample of a set spans a ball reaching its k-th nearest neighbour in that set; a
    set's manifold is the union of its balls. Precision: the fraction of fake samples inside
    the real manifold; recall: the fraction of real samples inside the fake manifold.
    Euclidean distances in float64 (`torch.cdist`), computed in row chunks of at most
    64 MiB, so 10k x 10k runs in bounded memory.

    Args:
        real_feats: `[N, F]` float, N > k. fake_feats: `[M, F]` float, M > k.
        k: the neighbourhood size (3 in the paper).
        chunk_size: rows per distance block (None: as many as fit 64 MiB).

    Returns:
        (precision, recall), each in [0, 1].
    """
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k: expected a positive int, got {k!r}")
    _check_feats(real_feats, "real_feats", k)
    _check_feats(fake_feats, "fake_feats", k)
    if fake_feats.shape[1] != real_feats.shape[1]:
        raise ValueError(
            f"fake_feats: {fake_feats.shape[1]} features, real_feats has {real_feats.shape[1]}"
        )
    real, fake = real_feats.double(), fake_feats.double()  # [N, F], [M, F]
    N, M = real.shape[0], fake.shape[0]
    real_radii = _knn_radii(real, k, _row_chunks(N, N, chunk_size))  # [N]
    fake_radii = _knn_radii(fake, k, _row_chunks(M, M, chunk_size))  # [M]
    precision = _fraction_inside(fake, real, real_radii, _row_chunks(M, N, chunk_size))
    recall = _fraction_inside(real, fake, fake_radii, _row_chunks(N, M, chunk_size))
    return precision, recall


def feature_metrics(
    real_images: Tensor,
    fake_images: Tensor,
    extractor: CropClassifier,
    *,
    k: int = 3,
    kid_subsets: int = 100,
    kid_subset_size: int | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> dict[str, float]:
    """All feature-space distances between a real and a fake set: `fid`, `kid_mean`,
    `kid_std`, `precision`, `recall` (and the set sizes `num_real`, `num_fake`).

    Args as `frechet_distance`, `kernel_inception_distance` and `precision_recall`.
    """
    _check_pair(real_images, fake_images, extractor, ("real_images", "fake_images"))
    for name, x in (("real_images", real_images), ("fake_images", fake_images)):
        if x.shape[0] < max(2, k + 1):
            raise ValueError(f"{name}: {x.shape[0]} images, need at least {max(2, k + 1)}")
    n = min(real_images.shape[0], fake_images.shape[0])
    kid_subset_size = _kid_subset_size(kid_subsets, kid_subset_size, n)
    real = extract_features(real_images, extractor, batch_size=batch_size)  # [N, F]
    fake = extract_features(fake_images, extractor, batch_size=batch_size)  # [M, F]
    given = _GivenFeatures(extractor.num_features)
    fid = _fid(given, real, fake, batch_size)
    kid_mean, kid_std = _kid(
        given, real, fake, batch_size, subsets=kid_subsets, subset_size=kid_subset_size, seed=seed
    )
    precision, recall = precision_recall(real, fake, k=k)
    return {
        "fid": fid,
        "kid_mean": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
        "num_real": float(real_images.shape[0]),
        "num_fake": float(fake_images.shape[0]),
    }


def noise_floor(
    real_a: Tensor, real_b: Tensor, extractor: CropClassifier, **kwargs: object
) -> dict[str, float]:
    """`feature_metrics` between two disjoint sets of real crops: what the metrics read when
    nothing is generated, to report beside every generated-vs-real figure. Use `real_b` of the
    size of the generated set it stands beside (the distances depend on set sizes).

    Args:
        real_a: `[N, C, S, S]`, real_b: `[M, C, S, S]`, float in [-1, 1], no crop in both.
        kwargs: as `feature_metrics`.
    """
    extractor.check_images(real_a, "real_a")
    extractor.check_images(real_b, "real_b")
    return feature_metrics(real_a, real_b, extractor, **kwargs)  # type: ignore[arg-type]


def save_crop_classifier(model: CropClassifier, path: str | Path) -> Path:
    """Writes the classifier's weights and config to one safetensors file (kind and format
    version in its metadata), atomically. Returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {
        "kind": CLASSIFIER_KIND,
        "format_version": str(CLASSIFIER_FORMAT_VERSION),
        "config": json.dumps(model.config, sort_keys=True),
    }
    state = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    tmp = path.with_name(f".tmp-{path.name}-{uuid.uuid4().hex[:8]}")
    safetensors.torch.save_file(state, str(tmp), metadata=metadata)
    os.replace(tmp, path)
    return path


def load_crop_classifier(path: str | Path, *, map_location: str = "cpu") -> CropClassifier:
    """Reads a file of `save_crop_classifier`; the classifier comes back in eval mode.
    Raises ValueError naming the field on another kind or format version."""
    path = Path(path)
    with safetensors.safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
    kind = metadata.get("kind")
    if kind != CLASSIFIER_KIND:
        raise ValueError(f"{path}: kind {kind!r}, expected {CLASSIFIER_KIND!r}")
    version = metadata.get("format_version")
    if version != str(CLASSIFIER_FORMAT_VERSION):
        raise ValueError(
            f"{path}: format_version {version!r}, this code reads {CLASSIFIER_FORMAT_VERSION}"
        )
    model = CropClassifier(**json.loads(metadata["config"]))
    model.load_state_dict(safetensors.torch.load_file(str(path), device=map_location))
    return model.to(map_location).eval()
