"""What triton's interpreter (CI's way of running the kernels) cannot see: the compiled
launcher's own names. Triton's launcher binds the kernel's arguments inside a generated function
whose locals include `params`, `specialization` and `options`; a kernel argument of one of those
names reaches the compiled kernel as the launcher's dict (seen on an H200 with triton 3.6:
"failed to specialize argument of type: dict"), while the interpreter runs it correctly."""

from __future__ import annotations

import inspect

import pytest

triton = pytest.importorskip("triton", reason="triton is not importable (pip install triton)")

LAUNCHER_LOCALS = {"params", "specialization", "options", "backend", "specialize_impl"}


def _kernels():
    from perception.ops import _triton_kernels

    return {
        name: obj
        for name, obj in vars(_triton_kernels).items()
        if isinstance(obj, triton.runtime.jit.KernelInterface)  # compiled or interpreted
    }


def test_there_are_kernels():
    assert "_voxel_keys_kernel" in _kernels()


@pytest.mark.parametrize("name", sorted(_kernels()))
def test_kernel_arguments_avoid_launcher_names(name):
    args = set(inspect.signature(_kernels()[name].fn).parameters)
    clash = sorted(args & LAUNCHER_LOCALS)
    assert not clash, f"{name}: rename argument(s) {clash} (the launcher shadows them)"
