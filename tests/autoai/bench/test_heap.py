"""trim_heap hands freed C heap pages back to the OS (glibc), in a fresh interpreter so that
the test process's own heap plays no part."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from autoai.bench._heap import _malloc_trim

# 1,200 blocks of 64 KiB (under glibc's mmap threshold: they come from the heap), then one
# more that stays in use above them, so freeing the first ones cannot shrink the heap's top.
PROBE = """
import json
from autoai.bench._heap import trim_heap

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

blocks = [bytes(64 * 1024) for _ in range(1200)]
pin = bytes(64 * 1024)
filled = rss_kib()
del blocks
freed = rss_kib()
released = trim_heap()
print(json.dumps({"filled": filled, "freed": freed, "trimmed": rss_kib(), "released": released}))
"""


@pytest.mark.skipif(_malloc_trim() is None, reason="the C library has no malloc_trim (not glibc)")
def test_freed_heap_below_memory_in_use_goes_back_to_the_os() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    kib = json.loads(out)
    assert kib["released"] is True
    # free() kept the pages (a block in use sits above them); malloc_trim gave most of 75 MiB back
    assert kib["freed"] - kib["trimmed"] >= 48 * 1024, kib
