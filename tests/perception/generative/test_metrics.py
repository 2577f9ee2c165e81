"""The generative metrics: the classifier hook-up into torchmetrics' FID/KID, k-NN
precision/recall, the crop classifier and its yaw bins, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from perception.generative.metrics import (
    CropClassifier,
    classification_accuracy_score,
    classifier_accuracy,
    condition_fidelity,
    extract_features,
    feature_metrics,
    frechet_distance,
    kernel_inception_distance,
    load_crop_classifier,
    noise_floor,
    precision_recall,
    save_crop_classifier,
    train_crop_classifier,
    yaw_bin,
)

SIZE = 16


def _extractor(seed: int = 0) -> CropClassifier:
    torch.manual_seed(seed)
    return CropClassifier(in_channels=4, num_classes=3, yaw_bins=4, width=8, image_size=SIZE)


def _noise(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 4, SIZE, SIZE, generator=g) * 2 - 1  # [n, 4, S, S] in [-1, 1]


def _flat(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return -0.5 + 0.02 * torch.randn(n, 4, SIZE, SIZE, generator=g)  # near-constant images


def _reference_fid(real: np.ndarray, fake: np.ndarray) -> float:
    """Textbook Frechet distance with scipy's sqrtm (test reference only)."""
    mu_r, mu_f = real.mean(0), fake.mean(0)
    cov_r, cov_f = np.cov(real, rowvar=False), np.cov(fake, rowvar=False)
    root = scipy.linalg.sqrtm(cov_r @ cov_f).real
    return float(((mu_r - mu_f) ** 2).sum() + np.trace(cov_r + cov_f - 2 * root))


def _reference_mmd(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic kernel (x.y / F + 1)^3 (test reference only)."""
    m, dim = x.shape
    kxx, kyy, kxy = ((a @ b.T / dim + 1) ** 3 for a, b in ((x, x), (y, y), (x, y)))
    off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(off - 2 * kxy.mean())


# --- 1. the extractor hook-up -------------------------------------------------------------


def test_fid_of_a_set_against_itself_is_zero_and_against_another_set_large():
    clf = _extractor()
    noise, flat = _noise(64, 1), _flat(64, 2)
    feats = extract_features(noise, clf)  # [64, F] float64
    scale = float(torch.cov(feats.T).trace())  # the features' total variance
    same = frechet_distance(noise, noise, clf)
    different = frechet_distance(noise, flat, clf)
    assert abs(same) < 1e-6 * scale
    assert different > 1.0 * scale
    # torchmetrics saw exactly the classifier's features: equal to the textbook formula
    expected = _reference_fid(feats.numpy(), extract_features(flat, clf).numpy())
    assert different == pytest.approx(expected, rel=1e-6)


def test_kid_of_identical_sets_is_the_unbiased_estimators_value_and_small():
    clf = _extractor()
    noise, flat = _noise(48, 3), _flat(48, 4)
    # subset_size == set size: every subset is the whole set, so the std is 0 and the mean is
    # the unbiased MMD^2 of the features
    same, same_std = kernel_inception_distance(noise, noise, clf, subsets=3, subset_size=48)
    diff, diff_std = kernel_inception_distance(noise, flat, clf, subsets=3, subset_size=48)
    feats_noise = extract_features(noise, clf).numpy()
    feats_flat = extract_features(flat, clf).numpy()
    assert same == pytest.approx(_reference_mmd(feats_noise, feats_noise), rel=1e-9, abs=1e-12)
    assert diff == pytest.approx(_reference_mmd(feats_noise, feats_flat), rel=1e-9)
    assert same_std < 1e-12 and diff_std < 1e-12
    # a set against itself: -2 (mean k(x,x) - mean off-diagonal k) / m, small and negative
    assert -0.05 * diff < same < 0
    assert diff > 0


def test_kid_subsets_are_deterministic_under_the_seed_and_leave_the_global_rng_alone():
    clf = _extractor()
    a, b = _noise(40, 5), _noise(40, 6)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = kernel_inception_distance(a, b, clf, subsets=4, subset_size=20, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert kernel_inception_distance(a, b, clf, subsets=4, subset_size=20, seed=7) == first
    assert kernel_inception_distance(a, b, clf, subsets=4, subset_size=20, seed=8) != first


def test_feature_metrics_equal_the_single_metrics_and_the_noise_floor_is_below_them():
    clf = _extractor()
    real_a, real_b, fake = _noise(40, 7), _noise(40, 8), _flat(40, 9)
    report = feature_metrics(real_a, fake, clf, kid_subsets=5, kid_subset_size=20, seed=1)
    assert report["fid"] == pytest.approx(frechet_distance(real_a, fake, clf), rel=1e-9)
    kid = kernel_inception_distance(real_a, fake, clf, subsets=5, subset_size=20, seed=1)
    assert (report["kid_mean"], report["kid_std"]) == pytest.approx(kid, rel=1e-9)
    pr = precision_recall(extract_features(real_a, clf), extract_features(fake, clf))
    assert (report["precision"], report["recall"]) == pr
    assert (report["num_real"], report["num_fake"]) == (40.0, 40.0)
    floor = noise_floor(real_a, real_b, clf, kid_subsets=5, kid_subset_size=20, seed=1)
    assert floor["fid"] < 0.2 * report["fid"]
    assert floor["kid_mean"] < 0.2 * report["kid_mean"]
    # the near-constant set is a collapsed generator: inside the real manifold (the untrained
    # extractor maps it near the real features' centre) but covering none of it
    assert report["recall"] == 0.0 and floor["recall"] > 0.5


def test_metrics_leave_the_classifiers_training_mode_as_it_was():
    clf = _extractor().train()
    frechet_distance(_noise(8, 1), _noise(8, 2), clf)
    assert clf.training


# --- 2. precision / recall ----------------------------------------------------------------


def _clusters(n: int, centres: list[tuple[float, float]], seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    parts = [torch.tensor(c) + 0.5 * torch.randn(n, 2, generator=g) for c in centres]
    return torch.cat(parts)  # [n * len(centres), 2]


def test_identical_sets_have_precision_and_recall_one():
    real = _clusters(60, [(0.0, 0.0), (10.0, 0.0)], seed=0)
    assert precision_recall(real, real.clone()) == (1.0, 1.0)


def test_a_fake_set_far_from_the_real_manifold_has_precision_and_recall_zero():
    real = _clusters(60, [(0.0, 0.0)], seed=0)
    fake = _clusters(60, [(100.0, 100.0)], seed=1)
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_a_fake_set_covering_one_of_two_real_clusters_has_recall_one_half():
    real = _clusters(100, [(0.0, 0.0), (10.0, 0.0)], seed=0)  # 100 per cluster
    fake = _clusters(200, [(0.0, 0.0)], seed=1)
    precision, recall = precision_recall(real, fake, k=3)
    assert precision >= 0.95
    # the far cluster's 100 reals are outside every fake ball; nearly all near ones inside
    assert 0.45 <= recall <= 0.5
    assert precision_recall(real[100:], fake)[1] == 0.0


def test_precision_recall_do_not_depend_on_the_chunk_size():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(97, 5, generator=g), 0.8 * torch.randn(83, 5, generator=g) + 0.3
    whole = precision_recall(real, fake, k=4)
    assert precision_recall(real, fake, k=4, chunk_size=7) == whole
    assert precision_recall(real, fake, k=4, chunk_size=1) == whole


# --- 3. the classifier learns -------------------------------------------------------------

# yaw bins (4 of pi/2) -> where a bright square sits, placed so that a left-right flip moves
# it as the flip moves the bin (b -> -b mod 4): front and back centred, 1 and 3 mirrored.
_SQUARE_AT = {0: (1, 6), 1: (6, 1), 2: (11, 6), 3: (6, 11)}  # bin -> (row, column) of a 4x4


def _toy(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Class = which colour channel is lit; yaw bin = where a bright square sits."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    bins = torch.randint(0, 4, (n,), generator=g)
    angles = bins * (math.pi / 2) + (torch.rand(n, generator=g) - 0.5) * 0.8 * (math.pi / 2)
    images = -0.8 + 0.1 * torch.randn(n, 4, SIZE, SIZE, generator=g)
    for i in range(n):
        images[i, labels[i]] += 0.8
        r, c = _SQUARE_AT[int(bins[i])]
        images[i, 3, r : r + 4, c : c + 4] = 1.0
    return images, labels, angles


def test_train_crop_classifier_learns_a_separable_toy_with_flips():
    images, labels, angles = _toy(96, seed=0)
    test_images, test_labels, test_angles = _toy(64, seed=1)
    clf = train_crop_classifier(
        images,
        labels,
        angles,
        steps=150,
        batch_size=32,
        width=8,
        yaw_bins=4,
        num_classes=3,
        generator=torch.Generator().manual_seed(0),
        progress=False,
    )
    acc = classifier_accuracy(clf, test_images, test_labels, test_angles)
    assert acc["class_acc"] == 1.0
    assert acc["yaw_acc"] >= 0.95
    assert set(acc) == {"class_acc", "yaw_acc", "class_acc/0", "class_acc/1", "class_acc/2"}
    # mirrored test crops with negated angles are classified as well (flip consistency)
    mirrored = classifier_accuracy(clf, test_images.flip(-1), test_labels, -test_angles)
    assert mirrored["yaw_acc"] >= 0.95
    fidelity = condition_fidelity(
        clf, test_images, test_labels, test_angles, test_images, test_labels, test_angles
    )
    assert fidelity["class"] == 1.0 and fidelity["yaw"] == 1.0


def test_training_is_deterministic_under_a_generator():
    images, labels, angles = _toy(16, seed=0)

    def train() -> CropClassifier:
        return train_crop_classifier(
            images,
            labels,
            angles,
            steps=3,
            batch_size=8,
            width=8,
            yaw_bins=4,
            num_classes=3,
            generator=torch.Generator().manual_seed(5),
            progress=False,
        )

    a, b = train().state_dict(), train().state_dict()
    assert all(torch.equal(a[name], b[name]) for name in a)


def test_classification_accuracy_score_trains_on_one_set_and_tests_on_another():
    images, labels, angles = _toy(16, seed=0)
    test_images, test_labels, test_angles = _toy(8, seed=1)
    kwargs = {"steps": 2, "batch_size": 4, "width": 8, "yaw_bins": 4, "num_classes": 3}
    score = classification_accuracy_score(
        images, labels, angles, test_images, test_labels, test_angles, progress=False, **kwargs
    )
    assert (score["num_train"], score["num_test"]) == (16.0, 8.0)
    assert 0.0 <= score["class_acc"] <= 1.0


def test_save_and_load_give_the_same_features(tmp_path):
    clf = _extractor()
    path = save_crop_classifier(clf, tmp_path / "clf.safetensors")
    loaded = load_crop_classifier(path)
    assert loaded.config == clf.config
    x = _noise(4, 0)
    assert torch.equal(extract_features(x, loaded), extract_features(x, clf))


def test_load_refuses_another_kind(tmp_path):
    import safetensors.torch

    path = tmp_path / "other.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(1)}, str(path), metadata={"kind": "gan"})
    with pytest.raises(ValueError, match="kind 'gan'"):
        load_crop_classifier(path)


def test_classifier_shapes():
    clf = CropClassifier(in_channels=9, num_classes=10, yaw_bins=8, width=8, image_size=32)
    class_logits, yaw_logits = clf(torch.zeros(2, 9, 32, 32))
    assert class_logits.shape == (2, 10) and yaw_logits.shape == (2, 8)
    assert clf.features(torch.zeros(2, 9, 32, 32)).shape == (2, clf.num_features) == (2, 32)


# --- 4. yaw bins --------------------------------------------------------------------------


def test_yaw_bin_edges_and_wrap_around():
    w = 2 * math.pi / 8
    eps = 1e-9
    angles = torch.tensor(
        [0.0, w / 2 - eps, w / 2, -w / 2, -w / 2 - eps, math.pi, -math.pi, 2 * math.pi - eps,
         w, -w, 3 * w, 2 * math.pi, 4 * math.pi + w, -3 * math.pi],
        dtype=torch.float64,
    )  # fmt: skip
    expected = [0, 0, 1, 0, 7, 4, 4, 0, 1, 7, 3, 0, 1, 4]
    assert yaw_bin(angles, 8).tolist() == expected
    assert yaw_bin(angles, 8).dtype == torch.long


def test_a_flip_mirrors_the_yaw_bin():
    g = torch.Generator().manual_seed(0)
    angles = (torch.rand(1000, generator=g) * 2 - 1) * 3 * math.pi  # [1000]
    for bins in (2, 4, 8, 12):
        assert torch.equal(yaw_bin(-angles, bins), torch.remainder(-yaw_bin(angles, bins), bins))


# --- 5. bad input -------------------------------------------------------------------------


def test_mismatched_channels_or_empty_sets_are_refused_by_name():
    clf = _extractor()
    good = _noise(8, 0)
    with pytest.raises(ValueError, match="real_images: 3 channels"):
        frechet_distance(good[:, :3], good, clf)
    with pytest.raises(ValueError, match="fake_images: empty"):
        frechet_distance(good, good[:0], clf)
    with pytest.raises(ValueError, match="fake_images: images of 8x8"):
        kernel_inception_distance(good, good[..., :8, :8], clf)
    with pytest.raises(ValueError, match="subset_size"):
        kernel_inception_distance(good, good, clf, subset_size=9)
    with pytest.raises(ValueError, match="real_b"):
        noise_floor(good, good[:, :2], clf)
    with pytest.raises(ValueError, match="fake_feats: 3 features"):
        precision_recall(torch.zeros(10, 2), torch.zeros(10, 3))
    with pytest.raises(ValueError, match="real_feats: 3 samples"):
        precision_recall(torch.zeros(3, 2), torch.zeros(10, 2), k=3)
    with pytest.raises(ValueError, match="x: 3 channels"):
        clf.features(torch.zeros(1, 3, SIZE, SIZE))


def test_bad_training_input_is_refused_by_name():
    images, labels, angles = _toy(8, seed=0)
    with pytest.raises(ValueError, match="labels"):
        train_crop_classifier(images, labels + 3, angles, num_classes=3, progress=False)
    with pytest.raises(ValueError, match="view_angles"):
        train_crop_classifier(images, labels, angles[:4], num_classes=3, progress=False)
    with pytest.raises(ValueError, match="images: empty"):
        train_crop_classifier(images[:0], labels[:0], angles[:0], progress=False)
    with pytest.raises(ValueError, match="yaw_bins"):
        yaw_bin(angles, 0)
    with pytest.raises(ValueError, match="view_angle: holds non-finite"):
        yaw_bin(torch.tensor([math.nan]))
