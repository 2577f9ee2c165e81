"""One vocabulary for choosing how an op runs, and a record of how it ran.

Every op takes ``impl: Impl = "auto"``:

* ``"auto"``: the op picks by device, dtype and what is importable (its docstring says how);
  the only value that falls back from one path to another.
* ``"torch"``: vectorized PyTorch (any device).
* ``"numba"``: numba kernels on CPU tensors.
* ``"triton"``: triton kernels on CUDA tensors (on CPU tensors under ``TRITON_INTERPRET=1``,
  which is how CI runs them).
* ``"reference"``: the plain reference in the op's folder, the test oracle (slow; small inputs).

An op accepts the values it implements; any other value is a ``ValueError`` naming the op and
its values. An explicit value whose path cannot run on the inputs at hand (``"triton"`` on a
CPU tensor, ``"numba"`` on a float16 one) raises :class:`ImplUnavailable`, never falls back.

Which path ran: pass an :class:`ImplTrace` as ``trace=``; each op call appends ``(op, impl)``
with the path it resolved to (in the vocabulary above). The trace is the caller's object, so
nothing is kept between calls or shared between callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, get_args

__all__ = ["IMPLS", "Impl", "ImplTrace", "ImplUnavailable", "check_impl", "record", "unavailable"]

Impl = Literal["auto", "torch", "numba", "triton", "reference"]
IMPLS: tuple[str, ...] = get_args(Impl)


class ImplUnavailable(ValueError):
    """An explicitly requested ``impl`` cannot run on these inputs here."""


@dataclass
class ImplTrace:
    """The paths op calls took, in call order: ``calls`` holds ``(op, impl)`` pairs."""

    calls: list[tuple[str, str]] = field(default_factory=list)

    def record(self, op: str, impl: str) -> None:
        self.calls.append((op, impl))

    def impls(self, op: str | None = None) -> set[str]:
        """The paths taken (by calls of ``op`` only, when given)."""
        return {i for o, i in self.calls if op is None or o == op}


def check_impl(op: str, impl: object, allowed: Sequence[str]) -> None:
    """Raises ``ValueError`` naming ``op`` and its ``allowed`` values unless ``impl`` is one."""
    if impl not in allowed:
        raise ValueError(f"{op}: impl must be one of {tuple(allowed)}, got {impl!r}")


def unavailable(op: str, impl: str, why: str) -> ImplUnavailable:
    """The error for an explicit ``impl`` of ``op`` that cannot run: ``why`` says what it needs."""
    return ImplUnavailable(f"{op}: impl={impl!r} cannot run here: {why}")


def record(trace: ImplTrace | None, op: str, impl: str) -> str:
    """Appends ``(op, impl)`` to ``trace`` (when one is given); returns ``impl``."""
    if trace is not None:
        trace.record(op, impl)
    return impl
