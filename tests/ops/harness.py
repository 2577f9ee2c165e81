"""One harness that compares an op's fast path with its plain-PyTorch reference.

Usage in a test (one pytest case per parameter point)::

    @pytest.mark.parametrize("device", DEVICES)
    @pytest.mark.parametrize("n", [0, 1, 1000])
    def test_bev_pool_parity(device, n):
        inputs = make_inputs(n, device)
        assert_parity(bev_pool_fast, bev_pool_reference, inputs, grad_inputs=["feats"])

`DEVICES` holds "cpu" and a "cuda" case marked `cuda`, which conftest.py skips with a reason
where there is no GPU.

Which path ran: with ``impl=`` the harness calls ``fast(..., impl=impl, trace=trace)`` (an
:class:`~perception.ops._impl.ImplTrace`) and asserts that every op call it made took the path
``ran`` (``impl`` itself unless it is "auto"). Ops never fall back from an explicit ``impl``
(they raise), so a parity test of ``impl="triton"`` is a test of the triton path.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest
import torch

from perception.ops._impl import ImplTrace

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def needs_triton(device: str) -> None:
    """Skips (with the reason) where the ops' triton kernels cannot run on ``device``."""
    from perception.ops import _triton

    if not _triton.importable():
        pytest.skip("triton is not importable (pip install triton)")
    if not _triton.available(torch.empty(0, device=device)):
        pytest.skip("triton kernels run on CUDA, or on CPU under TRITON_INTERPRET=1")


def assert_ran(trace: ImplTrace, ran: str, op: str | None = None) -> None:
    """Asserts that ``trace`` holds op calls (of ``op``, when given) and that each took the path
    ``ran``."""
    taken = trace.impls(op)
    assert taken == {ran}, f"expected {op or 'every op call'} to run {ran!r}; ran {trace.calls}"


def _as_tuple(out: Any) -> tuple[torch.Tensor, ...]:
    if isinstance(out, torch.Tensor):
        return (out,)
    if isinstance(out, Mapping):
        return tuple(v for v in out.values() if isinstance(v, torch.Tensor))
    return tuple(v for v in out if isinstance(v, torch.Tensor))


def _clone_inputs(inputs: Mapping[str, Any], grad_inputs: list[str]) -> dict[str, Any]:
    cloned = {}
    for name, value in inputs.items():
        if isinstance(value, torch.Tensor):
            value = value.detach().clone()
            if name in grad_inputs:
                value.requires_grad_(True)
        cloned[name] = value
    return cloned


def assert_parity(
    fast: Callable[..., Any],
    reference: Callable[..., Any],
    inputs: Mapping[str, Any],
    *,
    grad_inputs: list[str] | tuple[str, ...] = (),
    impl: str | None = None,
    ran: str | None = None,
    atol: float = 1e-5,
    rtol: float = 1e-4,
    seed: int = 0,
) -> None:
    """Runs `fast(**inputs)` and `reference(**inputs)` and compares outputs and gradients.

    Outputs may be a tensor, a tuple/list or a mapping of tensors (non-tensors are ignored).
    Gradients of the named `grad_inputs` are compared for the same random upstream gradient
    on every floating-point output. With `impl`, `fast` also gets `impl=impl, trace=...` and
    every op call it makes must have run `ran` (default: `impl`; required for "auto").
    """
    grad_inputs = list(grad_inputs)
    fast_in = _clone_inputs(inputs, grad_inputs)
    ref_in = _clone_inputs(inputs, grad_inputs)
    trace = ImplTrace()
    if impl is not None:
        if ran is None and impl == "auto":
            raise TypeError('assert_parity(impl="auto") needs ran=, the path auto must take')
        fast_in.update(impl=impl, trace=trace)
    fast_out = _as_tuple(fast(**fast_in))
    ref_out = _as_tuple(reference(**ref_in))
    assert len(fast_out) == len(ref_out), f"{len(fast_out)} outputs vs {len(ref_out)}"
    if impl is not None:
        assert_ran(trace, ran or impl)
    for i, (a, b) in enumerate(zip(fast_out, ref_out)):
        assert a.shape == b.shape, f"output {i}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
        assert a.dtype == b.dtype, f"output {i}: dtype {a.dtype} vs {b.dtype}"
        torch.testing.assert_close(
            a, b, atol=atol, rtol=rtol, msg=lambda m, i=i: f"output {i}: {m}"
        )
    if not grad_inputs:
        return
    generator = torch.Generator().manual_seed(seed)
    fast_loss = 0.0
    ref_loss = 0.0
    for a, b in zip(fast_out, ref_out):
        if a.is_floating_point() and a.requires_grad and a.numel():
            upstream = torch.randn(a.shape, generator=generator, dtype=a.dtype).to(a.device)
            fast_loss = fast_loss + (a * upstream).sum()
            ref_loss = ref_loss + (b * upstream).sum()
    assert isinstance(fast_loss, torch.Tensor), "no differentiable output to compare gradients on"
    fast_grads = torch.autograd.grad(
        fast_loss, [fast_in[n] for n in grad_inputs], allow_unused=True
    )
    ref_grads = torch.autograd.grad(ref_loss, [ref_in[n] for n in grad_inputs], allow_unused=True)
    for name, ga, gb in zip(grad_inputs, fast_grads, ref_grads):
        assert (ga is None) == (gb is None), f"grad of {name}: one path gives none"
        if ga is not None:
            torch.testing.assert_close(
                ga, gb, atol=atol, rtol=rtol, msg=lambda m, n=name: f"grad {n}: {m}"
            )
