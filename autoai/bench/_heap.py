"""Keeping the generator's RSS to its live memory: big buffers in their own mappings, and freed
heap given back to the OS between steps.

A step keeps every call's times (``Samples``: 16 bytes a call, 18 MB for ten minutes at 1,900
QPS) and summarizing them makes numpy copies of the same size. glibc serves a big block from its
own mapping, but after the first such block is freed it raises that threshold to the block's size,
so the next window's buffers grow by ``realloc`` inside the heap, between the small blocks the
calls allocate meanwhile. Freed, they leave holes that the heap keeps: the process's RSS then holds
the high-water mark of the bookkeeping, which in a soak reads as the SDK's memory growing.

``map_big_blocks`` changes the allocator of the whole process: only entry points call it (the
``autoai bench`` command and its generator processes), never ``run`` or ``run_steps``, so that
an application calling the bench as a library keeps its own allocator settings. ``trim_heap``
changes no setting (it gives free pages back), so the runner calls it after every step.
"""

from __future__ import annotations

import ctypes
import functools
from typing import Any

__all__ = ["map_big_blocks", "trim_heap"]

_M_MMAP_THRESHOLD = -3  # mallopt parameter number (malloc.h)
BIG_BLOCK_BYTES = 128 * 1024
"""From this size a block gets its own mapping (glibc's default threshold, here kept fixed)."""


@functools.cache
def _libc() -> Any:
    try:
        libc = ctypes.CDLL(None)
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
        libc.malloc_trim.restype = ctypes.c_int
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):  # not glibc: musl and macOS have neither
        return None
    return libc


def map_big_blocks() -> bool:
    """Serve every block of ``BIG_BLOCK_BYTES`` or more from its own mapping from now on, for
    the whole process (glibc ``mallopt(M_MMAP_THRESHOLD)``, which also stops the threshold from
    rising): such a block goes back to the OS when freed, and grows by ``mremap``.

    Returns:
        Whether the setting took; ``False`` where the C library is not glibc.
    """
    libc = _libc()
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, BIG_BLOCK_BYTES)) if libc is not None else False


def trim_heap() -> bool:
    """Return the free pages of the C heap to the OS (glibc ``malloc_trim(0)``).

    Returns:
        Whether any memory was released; ``False`` also where the C library is not glibc.
    """
    libc = _libc()
    return bool(libc.malloc_trim(0)) if libc is not None else False
