"""Giving the generator's freed C heap back to the OS between steps.

A step keeps every call's times (``Samples``: 16 bytes a call, 18 MB for ten minutes at
1,900 QPS) and summarizing them makes numpy copies of the same size. Once the step is
summarized they are freed, but glibc keeps freed heap pages that lie below memory still in
use (and raises its mmap threshold after the first big free, so later buffers come from that
heap): the process's RSS then keeps the high-water mark of the bookkeeping, which in a soak
reads as the SDK's memory growing. ``malloc_trim(0)`` hands those pages back.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable

__all__ = ["trim_heap"]


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc; musl and macOS have none
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def trim_heap() -> bool:
    """Return the free pages of the C heap to the OS (glibc ``malloc_trim(0)``).

    Returns:
        Whether any memory was released; ``False`` also where the C library has no
        ``malloc_trim``.
    """
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
