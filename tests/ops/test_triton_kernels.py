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


def test_scatter_add_rows_drops_zero_weights(monkeypatch):
    """Zero-weight entries (devoxelization's missing neighbours, all sent to one padding row)
    never reach the CSR product, where that row would be one serial loop; the sums are
    `index_add_`'s."""
    import torch

    from perception.ops import _triton
    from tests.ops.harness import needs_triton

    needs_triton("cpu")
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 5, (40, 8), generator=g)
    weights = torch.rand(40, 8, generator=g, dtype=torch.float64)
    weights[rows == 4] = 0.0  # row 4 plays the padding row
    rows[weights == 0] = 4
    src = torch.randn(40, 3, generator=g, dtype=torch.float64)
    seen = []
    spmm = _triton.csr_spmm
    monkeypatch.setattr(
        _triton, "csr_spmm", lambda o, s, *a: seen.append(s.numel()) or spmm(o, s, *a)
    )
    out = _triton.scatter_add_rows(torch.zeros(5, 3, dtype=torch.float64), rows, src, weights)
    want = torch.zeros(5, 3, dtype=torch.float64)
    for k in range(8):
        want.index_add_(0, rows[:, k], src * weights[:, k : k + 1])
    torch.testing.assert_close(out, want)
    assert seen == [int((weights != 0).sum())]
