"""The generated object bank (perception.generative.generated_bank): on the tiny world's bank
with tiny trained generators, generated objects keep the real objects' geometry exactly and
replace their signals (points inside the box, keyframe points on the LiDAR's beams, crops of
the crop box's shape), the bank opens as `source: generated`, GT-paste pastes from it, and a
generator whose range excludes a class skips and counts those objects."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from perception.generative.bank import BankFileError, ObjectBank
from perception.generative.conditions import ConditionRange
from perception.generative.generated_bank import (
    HDL32E_ELEVATIONS_DEG,
    GeneratedObjects,
    PointCountModel,
    SignalGenerator,
    decode_lidar_points,
    generate_objects,
    load_signal_generator,
    signal_to_crop,
    write_generated_bank,
)
from tests.generative_helpers import TINY_GAN, TINY_HART, TINY_HART_LIDAR
from tools.train_generator import main as train_generator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VERSION = "v1.0-mini"
CLASSES = ["car", "pedestrian"]


# -- fixtures: the tiny world's bank and two tiny generators trained on it --------------------
@pytest.fixture(scope="module")
def world(tiny_bank_world):
    return tiny_bank_world  # the bank's world; read-only (tests/conftest.py)


@pytest.fixture(scope="module")
def bank(tiny_train_bank):
    return tiny_train_bank  # read-only (tests/conftest.py)


@pytest.fixture(scope="module")
def generators(bank, tmp_path_factory):
    """Work dirs of a tiny camera generator (16 x 16 crops) and a tiny LiDAR one (16x16x4)."""
    root = tmp_path_factory.mktemp("generated_bank_generators")
    works = {"camera": root / "camera", "lidar": root / "lidar"}
    config = "configs/generative/hart_camera.yaml"
    for modality, work in works.items():
        extra = TINY_HART_LIDAR if modality == "lidar" else []
        args = [config, "--work-dir", str(work), "--no-progress", "--set", f"data.bank={bank}"]
        assert train_generator([*args, *TINY_HART, *extra]) == 0
    return works


@pytest.fixture(scope="module")
def generated(bank, generators, tmp_path_factory):
    """Both sensors generated, two per real object, written and reopened."""
    real = ObjectBank.open(bank)
    objects = generate_objects(
        real, camera_generator=generators["camera"], lidar_generator=generators["lidar"],
        classes=CLASSES, per_object=2, seed=3, batch_size=16, progress=False,
    )  # fmt: skip
    out = tmp_path_factory.mktemp("generated_bank_out") / "generated"
    summary = write_generated_bank(objects, out, source_bank=real)
    return real, objects, summary, ObjectBank.open(out, version=VERSION, training=True)


def _same(a, b):
    return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)


# -- the generated bank ----------------------------------------------------------------------
@pytest.mark.slow
def test_generated_objects_keep_the_real_geometry_and_replace_the_signals(generated):
    real, objects, summary, bank = generated
    selection = real.filter(classes=CLASSES)
    assert bank.source == "generated" and real.source == "bank"
    assert (bank.version, bank.split, bank.training) == (real.version, real.split, True)
    assert bank.dataset == real.dataset and bank.scenes == real.scenes
    # nothing skipped: every real object of the classes, twice, in order
    assert objects.skipped == {} and len(bank) == 2 * len(selection) == summary.objects
    assert objects.requested == {c: 2 * selection.counts()[c] for c in CLASSES}
    assert bank.counts() == {c: objects.requested.get(c, 0) for c in bank.classes}
    meta = bank.generation
    assert meta["signals"] == {"lidar": "generated", "camera": "generated"}
    assert meta["generators"]["lidar"]["path"].endswith("lidar")
    assert meta["generators"]["camera"]["sampling"]["guidance"] == 2.0
    assert meta["seed"] == 3 and meta["generated"] == objects.requested

    beams = np.radians(np.asarray(HDL32E_ELEVATIONS_DEG))
    changed_points = changed_crops = 0
    for i in range(len(bank)):
        g, r = bank[i], selection[i // 2]
        assert (g.class_name, g.attribute, g.ego_distance) == (
            r.class_name, r.attribute, r.ego_distance
        )  # fmt: skip
        assert _same(g.size, r.size) and _same(g.box_lidar, r.box_lidar)
        assert _same(g.velocity, r.velocity)
        assert (g.sample_token, g.instance_token, g.scene_name) == (
            r.sample_token, r.instance_token, r.scene_name
        )  # fmt: skip
        assert g.annotation_token == f"gen-3-{i}" and g.index == i
        # every generated point inside the box; keyframe points on a beam
        w, l, h = (float(v) for v in g.size)
        p = g.points.astype(np.float64)
        assert (np.abs(p[:, 0]) <= l / 2).all() and (np.abs(p[:, 1]) <= w / 2).all()
        assert (np.abs(p[:, 2]) <= h / 2).all()
        key = p[p[:, 4] == 0]
        box = g.box_lidar.astype(np.float64)
        c, s = math.cos(box[6]), math.sin(box[6])
        x = c * key[:, 0] - s * key[:, 1] + box[0]
        y = s * key[:, 0] + c * key[:, 1] + box[1]
        elevation = np.arctan2(key[:, 2] + box[2], np.hypot(x, y))
        assert np.abs(elevation[:, None] - beams[None]).min(1).max(initial=0) < 1e-5
        # lags are the real object's own (its class's pooled ones when it has no point)
        if len(r.points):
            assert set(np.unique(p[:, 4])) <= set(np.unique(r.points[:, 4]))
        changed_points += not _same(g.points, r.points)
        assert len(g.views) == len(r.views)
        for gv, rv in zip(g.views, r.views):
            for name in ("camera", "crop_box", "image_size", "visible_fraction", "depth",
                         "view_angle"):  # fmt: skip
                assert getattr(gv, name) == getattr(rv, name), name
            for name in ("box2d", "intrinsics", "box_to_camera"):
                assert _same(getattr(gv, name), getattr(rv, name)), name
            u0, v0, u1, v1 = gv.crop_box
            assert gv.crop.shape == (v1 - v0, u1 - u0, 3) and gv.crop.dtype == np.uint8
            assert gv.mask.shape == (v1 - v0, u1 - u0) and gv.mask.dtype == bool
            changed_crops += not _same(gv.crop, rv.crop)
    assert changed_points == len(bank)
    assert changed_crops == sum(len(o.views) for o in bank)


def test_the_gan_is_a_camera_generator_of_the_bank_like_any_other(bank, tmp_path):
    """Issue #26's paste source: a GAN work dir generates the cameras of a bank (the LiDAR
    stays real), crops of each view's crop box, its provenance saying `gan`."""
    work = tmp_path / "gan"
    config = "configs/generative/gan_camera.yaml"
    args = [config, "--work-dir", str(work), "--no-progress", "--set", f"data.bank={bank}"]
    assert train_generator([*args, *TINY_GAN]) == 0
    real = ObjectBank.open(bank)
    objects = generate_objects(
        real, camera_generator=work, classes=["car"], per_object=1, seed=0, progress=False
    )
    assert objects.settings["signals"] == {"lidar": "real", "camera": "generated"}
    assert objects.settings["generators"]["camera"]["kind"] == "gan"
    cars = real.filter(classes=["car"])
    assert objects.skipped == {} and len(objects) == len(cars) > 0
    views = changed = 0
    for g, r in zip(objects, cars, strict=True):
        assert _same(g.points, r.points) and _same(g.box_lidar, r.box_lidar)
        for gv, rv in zip(g.views, r.views, strict=True):
            u0, v0, u1, v1 = gv.crop_box
            assert gv.crop_box == rv.crop_box and gv.crop.shape == (v1 - v0, u1 - u0, 3)
            views += 1
            changed += not _same(gv.crop, rv.crop)
    assert views > 0 and changed == views


@pytest.mark.slow
def test_deterministic_under_a_seed_and_one_sensor_can_stay_real(bank, generators):
    real = ObjectBank.open(bank)
    lidar = load_signal_generator(generators["lidar"], modality="lidar")

    def run(seed):
        return generate_objects(real, lidar_generator=lidar, classes=["pedestrian"], seed=seed,
                                progress=False)  # fmt: skip

    a, b, c = run(0), run(0), run(1)
    assert all(_same(x.points, y.points) for x, y in zip(a, b))
    assert any(not _same(x.points, y.points) for x, y in zip(a, c))
    assert a.settings["signals"] == {"lidar": "generated", "camera": "real"}
    assert a.settings["generators"]["camera"] is None
    for g, r in zip(a, real.filter(classes=["pedestrian"])):  # the cameras are the real ones
        assert all(_same(gv.crop, rv.crop) and _same(gv.mask, rv.mask)
                   for gv, rv in zip(g.views, r.views))  # fmt: skip


@pytest.mark.slow
def test_a_generator_whose_range_excludes_a_class_skips_and_counts_it(bank, generators):
    real = ObjectBank.open(bank)
    lidar = load_signal_generator(generators["lidar"], modality="lidar")
    ranges = lidar.ranges
    narrow = replace(ranges, counts={k: v for k, v in ranges.counts.items() if k != "pedestrian"})
    out = generate_objects(
        real, lidar_generator=(lidar.sample, narrow), classes=CLASSES, progress=False
    )
    held = real.filter(classes=CLASSES).counts()
    assert out.skipped == {"pedestrian": {"lidar:label": held["pedestrian"]}}
    assert out.generated == {"car": held["car"], "pedestrian": 0}
    # an impossible size is a "lidar:size" skip
    tiny = replace(ranges, size_max={k: (0.01, 0.01, 0.01) for k in ranges.size_max})
    out = generate_objects(real, lidar_generator=(lidar.sample, tiny), classes=["car"],
                           progress=False)  # fmt: skip
    assert len(out) == 0 and out.skipped == {"car": {"lidar:size": held["car"]}}


@pytest.mark.slow
def test_gt_paste_pastes_from_the_generated_bank(world, generated):
    """GT-paste (perception.generative.paste) built on the generated bank pastes its objects,
    points and camera crops, into a sample of the tiny world."""
    from perception.datasets.nuscenes import NuScenesDataset
    from perception.generative.paste import ClassPlan, GTPaste, camera_compositor

    _, _, _, bank = generated
    plans = [
        ClassPlan.from_bank(c, 2, 1, bank.filter(classes=[c], min_points=1, min_visibility=1e-6))
        for c in CLASSES
    ]
    paste = GTPaste(plans=plans, point_range=(-54.0, -54.0, -5.0, 54.0, 54.0, 3.0),
                    compositor=camera_compositor())  # fmt: skip
    dataset = NuScenesDataset(world, VERSION, "mini_train")
    pasted, drawn = [], 0
    for i in range(len(dataset)):
        sample = dataset.load_raw(dataset.records[i])
        out = paste(sample, np.random.default_rng(i))
        pasted += out.pasted
        drawn += int((out.images != sample.images).any(2).sum())  # pixels composited
    assert pasted and all(r["class"] in CLASSES for r in pasted)
    assert {bank[r["bank_index"]].annotation_token[:6] for r in pasted} == {"gen-3-"}
    assert any(r["camera"]["cameras"] for r in pasted) and drawn > 0
    assert paste.stats()["pasted"] == len(pasted)


@pytest.mark.slow
def test_a_bank_of_real_and_generated_objects(generated, tmp_path):
    real, objects, _, _ = generated
    selection = real.filter(classes=CLASSES)
    write_generated_bank(objects, tmp_path / "both", source_bank=real, include_real=True)
    both = ObjectBank.open(tmp_path / "both")
    assert both.source == "generated" and len(both) == len(selection) + len(objects)
    assert both.generation["real_objects"] == {c: selection.counts()[c] for c in CLASSES}
    assert both[0].annotation_token == selection[0].annotation_token
    assert _same(both[0].points, selection[0].points)
    assert both[len(selection)].annotation_token == "gen-3-0"


# -- the pieces ------------------------------------------------------------------------------
class _Meta:
    """What PointCountModel.fit reads of a bank."""

    def __init__(self, labels, boxes, counts):
        self.labels = np.asarray(labels, np.int32)
        self.boxes_lidar = np.asarray(boxes, np.float32)
        self.num_points = np.asarray(counts, np.int64)
        self.classes = ("car", "bicycle")
        self.index_path = "memory/bank.json"


def test_point_counts_recover_an_exact_power_law():
    ranges = np.geomspace(4, 50, 30)
    car = np.round(np.exp(14.0) * ranges**-2.5)  # 30 objects: own fit
    bike = np.round(np.exp(11.0) * ranges[:5] ** -2.5)  # 5 objects: the shared slope
    boxes = np.zeros((35, 9))
    boxes[:30, 0], boxes[30:, 1] = ranges, ranges[:5]
    model = PointCountModel.fit(_Meta([0] * 30 + [1] * 5, boxes, np.r_[car, bike]))
    assert model.slope["car"] == pytest.approx(-2.5, abs=2e-3)
    assert model.intercept["car"] == pytest.approx(14.0, abs=1e-2)
    assert model.slope["bicycle"] == pytest.approx(-2.5, abs=2e-3)  # shared
    assert model.intercept["bicycle"] == pytest.approx(11.0, abs=1e-2)
    assert model.spread["car"] < 1e-2 and model.fitted == {"car": 30, "bicycle": 5}
    assert max(map(abs, model.residuals["car"])) < 2e-2 and len(model.residuals["car"]) == 101
    json.dumps(model.to_dict())  # JSON-safe, for bank.json
    rng = np.random.default_rng(0)
    assert model.draw("car", 10.0, rng) == pytest.approx(np.exp(14.0) * 10**-2.5, rel=0.03)
    assert model.draw("car", 0.1, rng) == model.maximum["car"]  # capped at the real largest
    with pytest.raises(ValueError, match="class 'bus'"):
        model.draw("bus", 10.0, rng)
    # skewed residuals are drawn as they are: a class with a long tail of few points
    y = 14.0 - 2.0 * np.log(ranges) + np.where(np.arange(30) % 3 == 1, -3.0, 0.0)
    skewed = PointCountModel.fit(_Meta([0] * 30, np.c_[ranges, np.zeros((30, 8))], np.exp(y)))
    draws = np.array([skewed.draw("car", 10.0, rng) for _ in range(3000)])
    typical = np.exp(14.0 - 2.0 * np.log(10.0))  # the fit is 1 lower: the majority at +1
    assert np.mean(np.abs(draws / typical - 1) < 0.1) == pytest.approx(2 / 3, abs=0.05)


def _grid(occupied):
    """A [Z + 1, X, Y] = [5, 8, 8] grid with the first `occupied` cells of z-bin 1 set."""
    grid = -torch.ones(5, 8, 8)
    grid[1].view(-1)[:occupied] = 1.0
    grid[4] = 0.0  # intensity 127.5
    return grid


@pytest.mark.parametrize(("occupied", "count"), [(40, 10), (40, 40), (5, 23)])
def test_decoded_points_have_the_count_and_stay_in_the_box(occupied, count):
    size = np.array([0.8, 2.0, 1.6], np.float32)
    box = np.array([10.0, 0.0, -1.0, *size, 0.4, 0, 0], np.float32)
    pts = decode_lidar_points(
        _grid(occupied), size, box, count=count, lags=np.array([0.05]),
        generator=torch.Generator().manual_seed(0), rng=np.random.default_rng(0), beams_deg=None,
    )  # fmt: skip
    assert pts.shape == (count, 5) and pts.dtype == np.float32
    assert (np.abs(pts[:, :3]) <= size[[1, 0, 2]] / 2).all()
    assert (pts[:, 4] == np.float32(0.05)).all() and np.allclose(pts[:, 3], 127.5)
    # every occupied cell shows up when the count allows (thinning only below it)
    assert len(np.unique(np.floor((pts[:, :2] / size[[1, 0]] + 0.5) * 8), axis=0)) == min(
        occupied, count
    )


def test_keyframe_points_move_onto_the_beams_and_leave_when_no_beam_crosses():
    size = np.array([0.8, 2.0, 1.6], np.float32)
    box = np.array([20.0, 5.0, -1.0, *size, 0.4, 0, 0], np.float32)
    kw = dict(count=60, lags=np.array([0.0, 0.1]), generator=torch.Generator().manual_seed(0),
              rng=np.random.default_rng(0))  # fmt: skip
    grid = -torch.ones(5, 8, 8)
    grid[:4] = 1.0  # every cell
    pts = decode_lidar_points(grid, size, box, **kw)
    key = pts[pts[:, 4] == 0].astype(np.float64)
    assert len(key) and (pts[:, 4] == np.float32(0.1)).sum() > 0
    c, s = math.cos(box[6]), math.sin(box[6])
    ground = np.hypot(c * key[:, 0] - s * key[:, 1] + box[0], s * key[:, 0] + c * key[:, 1] + 5)
    elevation = np.degrees(np.arctan2(key[:, 2] + box[2], ground))
    beams = np.asarray(HDL32E_ELEVATIONS_DEG)
    assert np.abs(elevation[:, None] - beams[None]).min(1).max() < 1e-4
    # no beam crosses a box whose elevations lie between two beams: its keyframe points go
    box[2] = 20.6 * math.tan(math.radians(-2.0)) + 0.0  # centred 2 deg down, 0.2 deg tall
    thin = np.array([0.8, 2.0, 0.07], np.float32)
    box[3:6] = thin
    pts = decode_lidar_points(grid, thin, box, **{**kw, "rng": np.random.default_rng(1)})
    assert len(pts) and (pts[:, 4] != 0).all()


def test_signal_to_crop_resizes_to_the_crop_box():
    signal = torch.full((4, 16, 16), -1.0)
    signal[0] = 1.0  # red
    signal[3, :, 8:] = 1.0  # right half is the object
    crop, mask = signal_to_crop(signal, (10, 20, 47, 45))
    assert crop.shape == (25, 37, 3) and crop.dtype == np.uint8
    assert mask.shape == (25, 37) and mask.dtype == bool
    assert (crop[..., 0] == 255).all() and (crop[..., 1:] == 0).all()
    assert mask[:, -1].all() and not mask[:, 0].any()
    with pytest.raises(ValueError, match=r"signal: must be \[4, S, S\]"):
        signal_to_crop(torch.zeros(5, 16, 16), (0, 0, 4, 4))


# -- bad input -------------------------------------------------------------------------------
@pytest.mark.slow
def test_bad_input_names_the_argument(bank, generated, tmp_path):
    real, objects, _, gen_bank = generated
    with pytest.raises(ValueError, match="give at least one"):
        generate_objects(real, classes=["car"], progress=False)
    with pytest.raises(ValueError, match="is a generated bank"):
        generate_objects(gen_bank, lidar_generator=(None, None), classes=["car"])
    nothing = SignalGenerator(sample=lambda c, g: None, ranges=ConditionRange({}, {}, {}, 0, 1, ()))
    with pytest.raises(ValueError, match=r"unknown class\(es\) \['bike'\]"):
        generate_objects(real, lidar_generator=nothing, classes=["bike"])
    with pytest.raises(ValueError, match="nowhere: no such generator"):
        generate_objects(real, lidar_generator=tmp_path / "nowhere", classes=["car"])
    with pytest.raises(ValueError, match="is a generated bank"):
        write_generated_bank(objects, tmp_path / "x", source_bank=gen_bank)
    with pytest.raises(FileExistsError, match="exists"):
        write_generated_bank(objects, gen_bank.path, source_bank=real)
    with pytest.raises(BankFileError, match="a bank of source 'generated', not 'bank'"):
        ObjectBank.open(gen_bank.path, source="bank")
    with pytest.raises(BankFileError, match="source 'bank', not 'generated'.*create_data.py gen"):
        ObjectBank.open(real.path, source="generated")
    assert ObjectBank.open(real.path, source="bank").source == "bank"
    # an index without the key is a real bank; an unknown source is refused
    index = json.loads((gen_bank.path / "bank.json").read_text())
    assert index["source"] == "generated" and "source" not in json.loads(
        (real.path / "bank.json").read_text()
    )
    assert isinstance(objects, GeneratedObjects) and isinstance(objects, list)
