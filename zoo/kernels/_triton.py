"""Optional Triton import and a lazy ``jit`` that honours ``TRITON_INTERPRET`` at launch time.

Triton decides between the compiler and the CPU interpreter when a function is *decorated*, reading
``TRITON_INTERPRET`` at that moment. Kernels here are plain functions decorated on first launch (and
re-decorated if the variable changes), so importing ``zoo.kernels`` never fixes the mode and never
needs triton or a GPU; interpreted launches also route calls to triton's own ``@jit`` helpers
(tl.max, tl.sum, ...) through the interpreter, which triton only does by itself when the variable
was set before triton was imported.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

try:  # triton is optional: plain torch is always available
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # ImportError, or a broken install without a driver
    triton = None
    tl = None
    HAS_TRITON = False

_CACHE: dict[tuple[Callable, bool], Any] = {}
_DEVICE_FNS: dict[int, Any] = {}


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


@contextlib.contextmanager
def _stdlib_interpretable():
    """Let interpreted kernels call triton's own ``@jit`` helpers (tl.max, tl.sum, tl.zeros, ...).

    Those were decorated when triton was imported; if TRITON_INTERPRET was unset then, they are
    compiled-mode ``JITFunction``s whose ``__call__`` refuses to run outside a compiled kernel. For
    the duration of one interpreted launch, calls to any JITFunction are routed to an
    ``InterpretedFunction`` of the same Python function (what triton itself builds when the variable
    is set before import); the original ``__call__`` is restored afterwards.
    """
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    original = JITFunction.__call__

    def call(self, *args, **kwargs):
        f = _DEVICE_FNS.get(id(self))
        if f is None:
            f = _DEVICE_FNS[id(self)] = InterpretedFunction(self.fn)
        return f(*args, **kwargs)

    JITFunction.__call__ = call
    try:
        yield
    finally:
        JITFunction.__call__ = original


class _Kernel:
    """``kernel[grid](*args)`` launcher that decorates ``fn`` for the current interpreter mode."""

    def __init__(self, fn: Callable):
        self.fn = fn

    def __getitem__(self, grid):
        interp = interpreting()
        key = (self.fn, interp)
        if key not in _CACHE:
            _CACHE[key] = triton.jit(self.fn)
        launch = _CACHE[key][grid]
        if not interp:
            return launch

        def run(*args, **kwargs):
            with _stdlib_interpretable():
                return launch(*args, **kwargs)

        return run


def jit(fn: Callable) -> _Kernel:
    """A launcher for ``fn``: ``jit(fn)[grid](*args, **constexprs)``; decorated with ``triton.jit`` on
    first launch per interpreter mode, so the mode follows TRITON_INTERPRET at launch time."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not importable; set ZOO_KERNELS=torch or install triton")
    return _Kernel(fn)


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def dot_flags(dtype) -> tuple[bool, bool]:
    """(DOT_FP32, ALLOW_TF32) constexprs for a GEMM kernel on inputs of ``dtype``.

    DOT_FP32 upcasts both operands to fp32 before ``tl.dot``: always for fp32 inputs, and for
    bf16/fp16 under the interpreter, whose ``tl.dot`` on 16-bit floats returns garbage (triton 3.8,
    checked: errors of 1e10 on a 37x19 @ 19x13 bf16 product). ALLOW_TF32 follows torch's own
    ``torch.get_float32_matmul_precision()`` so fp32 results match ``torch.bmm`` on the same device.
    """
    import torch

    dot_fp32 = dtype == torch.float32 or interpreting()
    allow_tf32 = torch.get_float32_matmul_precision() != "highest"
    return dot_fp32, allow_tf32


def gemm_blocks(m: int, n: int, k: int) -> tuple[int, int, int]:
    """Tile sizes: 16 under the interpreter (cheap, and odd test sizes span several tiles), else
    64x64x32 shrunk to the problem (tl.dot needs every tile dimension >= 16)."""
    if interpreting():
        return 16, 16, 16

    def fit(x: int, cap: int) -> int:
        return max(16, min(cap, 1 << max(0, (x - 1).bit_length())))

    return fit(m, 64), fit(n, 64), fit(k, 32)
