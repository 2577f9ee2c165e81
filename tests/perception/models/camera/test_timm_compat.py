"""Key-for-key, shape-for-shape and output parity with timm's `efficientvit_b*`.

timm is a test-only reference (`pip install --no-deps timm==1.0.31`), never a runtime
dependency. timm's import chain imports torchvision, which may be absent (or not importable
beside this torch build); timm's EfficientViT itself uses none of it, so while this module's
tests run, `sys.modules` holds minimal stand-ins for the few torchvision names timm's imports
touch. The stand-ins and every module imported under them are removed afterwards.
"""

from __future__ import annotations

import enum
import importlib
import importlib.util
import sys
import types
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from perception.models.camera import (
    EfficientViTConfig,
    TemporalShiftConfig,
    build_efficientvit,
    load_timm_checkpoint,
    load_timm_state_dict,
)

TIMM_MISSING = (
    "timm not installed: the timm-compatibility tests need `pip install --no-deps timm==1.0.31`"
)


class _StandInModule(types.ModuleType):
    """A module whose unknown attributes are empty placeholder classes (enough for timm's
    `class X(transforms.ToTensor)` and `from ... import Name` lines to import)."""

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        placeholder = type(name, (), {"__module__": self.__name__})
        setattr(self, name, placeholder)
        return placeholder


class _InterpolationMode(enum.Enum):
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


class _FrozenBatchNorm2d(nn.Module):
    """Stand-in type only: timm's EfficientViT never builds one."""


def _torchvision_stand_ins() -> dict[str, types.ModuleType]:
    names = [
        "torchvision",
        "torchvision.ops",
        "torchvision.ops.misc",
        "torchvision.transforms",
        "torchvision.transforms.functional",
        "torchvision.datasets",
    ]
    modules = {name: _StandInModule(name) for name in names}
    for name, module in modules.items():
        module.__path__ = []  # a package, so `import torchvision.x` looks in sys.modules
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(modules[parent], child, module)
    modules["torchvision.ops.misc"].FrozenBatchNorm2d = _FrozenBatchNorm2d
    modules["torchvision.transforms"].InterpolationMode = _InterpolationMode
    modules["torchvision.transforms.functional"].InterpolationMode = _InterpolationMode
    return modules


def _torchvision_importable() -> bool:
    try:
        importlib.import_module("torchvision")
    except Exception:  # absent, or present but built for another torch
        return False
    return True


@pytest.fixture(scope="module")
def timm() -> Iterator[types.ModuleType]:
    if importlib.util.find_spec("timm") is None:
        pytest.skip(TIMM_MISSING)
    before = set(sys.modules)
    with pytest.MonkeyPatch.context() as mp:
        if not _torchvision_importable():
            for name in [n for n in sys.modules if n.split(".")[0] == "torchvision"]:
                mp.delitem(sys.modules, name)  # leftovers of a failed import
            for name, module in _torchvision_stand_ins().items():
                mp.setitem(sys.modules, name, module)
        timm_module = pytest.importorskip("timm", reason=TIMM_MISSING)
        yield timm_module
        for name in set(sys.modules) - before:  # nothing imported under the stand-ins survives
            if name.split(".")[0] in ("timm", "torchvision"):
                del sys.modules[name]


def _ours(variant: str):
    cfg = EfficientViTConfig(
        variant=variant, out_strides=(4, 8, 16, 32), tsm=TemporalShiftConfig(mode="off")
    )
    return build_efficientvit(cfg)


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3"])
def test_state_dict_keys_and_shapes_match_timm(timm, variant):
    reference = timm.create_model(f"efficientvit_{variant}", pretrained=False)
    theirs = {
        k: tuple(v.shape) for k, v in reference.state_dict().items() if not k.startswith("head.")
    }
    # TSM on everywhere: shifts must not add keys
    tsm = TemporalShiftConfig(mode="bidirectional", frames=2, blocks=("conv", "attention", "ffn"))
    ours_model = build_efficientvit(EfficientViTConfig(variant=variant, tsm=tsm))
    ours = {k: tuple(v.shape) for k, v in ours_model.state_dict().items()}
    assert sorted(set(theirs) - set(ours)) == []
    assert sorted(set(ours) - set(theirs)) == []
    assert list(ours) == list(theirs)  # same order, too
    assert ours == theirs
    n_theirs = sum(p.numel() for k, p in reference.named_parameters() if not k.startswith("head."))
    assert sum(p.numel() for p in ours_model.parameters()) == n_theirs


@pytest.mark.parametrize("variant", ["b0", "b1"])
def test_outputs_match_timm_with_loaded_weights(timm, variant):
    torch.manual_seed(0)
    reference = timm.create_model(f"efficientvit_{variant}", pretrained=False).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for module in reference.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    model = _ours(variant).eval()
    report = load_timm_state_dict(model, reference.state_dict())
    assert report.ok and report.dropped_head_keys
    images = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = reference.forward_intermediates(images, intermediates_only=True)
        features = model(images)
    assert len(features) == len(expected) == 4
    for ours, theirs in zip(features, expected):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_safetensors_checkpoint_from_timm_loads_strict(timm, tmp_path):
    from safetensors.torch import save_file

    reference = timm.create_model("efficientvit_b0", pretrained=False)
    path = tmp_path / "efficientvit_b0.safetensors"
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(path))
    model = _ours("b0")
    report = load_timm_checkpoint(model, path)
    assert report.ok
    assert torch.equal(model.stem.in_conv.conv.weight, reference.stem.in_conv.conv.weight)
