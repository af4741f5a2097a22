"""Optional Triton import and a lazy ``jit`` that honours ``TRITON_INTERPRET`` at launch time.

Triton decides between the compiler and the CPU interpreter when a function is *decorated*, reading
``TRITON_INTERPRET`` at that moment. Kernels here are plain functions decorated on first launch (and
re-decorated if the variable changes), so importing ``zoo.kernels`` never fixes the mode and never
needs triton or a GPU.
"""

from __future__ import annotations

import os
from typing import Any, Callable

try:  # triton is optional: plain torch is always available
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # ImportError, or a broken install without a driver
    triton = None
    tl = None
    HAS_TRITON = False

_CACHE: dict[tuple[Callable, bool], Any] = {}


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def jit(fn: Callable) -> Any:
    """``triton.jit(fn)``, cached per interpreter mode."""
    if not HAS_TRITON:
        raise RuntimeError("triton is not importable; set ZOO_KERNELS=torch or install triton")
    key = (fn, interpreting())
    if key not in _CACHE:
        _CACHE[key] = triton.jit(fn)
    return _CACHE[key]


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
