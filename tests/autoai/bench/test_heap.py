"""The generator's memory goes back to the OS: big blocks in their own mappings, freed heap
trimmed (glibc), each probe in a fresh interpreter so that the test process's heap plays no part."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from autoai.bench._heap import _libc
from tests.fixtures import onnx_models
from tests.fixtures.servers import StartServer

pytestmark = pytest.mark.skipif(_libc() is None, reason="the C library is not glibc")

RSS = """
import json, sys
from autoai.bench._heap import map_big_blocks, trim_heap

def rss_kib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
"""

# 1,200 blocks of 64 KiB (under the mmap threshold: they come from the heap), then one more
# that stays in use above them, so freeing the first ones cannot shrink the heap's top.
TRIM = (
    RSS
    + """
blocks = [bytearray(64 * 1024) for _ in range(1200)]
pin = bytearray(64 * 1024)
filled = rss_kib()
del blocks
freed = rss_kib()
released = trim_heap()
print(json.dumps({"filled": filled, "freed": freed, "trimmed": rss_kib(), "released": released}))
"""
)

# A 30 MiB block freed raises glibc's mmap threshold to 30 MiB (unless map_big_blocks fixed it);
# a 24 MiB block then comes from the heap, below a small block that stays: freeing it cannot
# shrink the heap. Mapped instead, it goes back to the OS when freed.
MAP = (
    RSS
    + """
mapped = map_big_blocks() if sys.argv[1] == "map" else None
first = bytearray(30 << 20)
del first
second = bytearray(24 << 20)
pin = bytearray(1024)
held = rss_kib()
del second
print(json.dumps({"mapped": mapped, "held": held, "freed": rss_kib()}))
"""
)


def probe(code: str, *args: str) -> dict[str, int]:
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def test_freed_heap_below_memory_in_use_goes_back_to_the_os() -> None:
    kib = probe(TRIM)
    assert kib["released"] is True
    # free() kept the pages (a block in use sits above them); malloc_trim gave most of 75 MiB back
    assert kib["freed"] - kib["trimmed"] >= 48 * 1024, kib


def test_big_blocks_stay_mapped_after_a_bigger_one_was_freed() -> None:
    control = probe(MAP, "heap")
    assert control["held"] - control["freed"] < 4 * 1024, control  # glibc's default keeps it
    kib = probe(MAP, "map")
    assert kib["mapped"] is True
    assert kib["held"] - kib["freed"] >= 20 * 1024, kib


# ``autoai.bench.run`` as a library call, against a live server, then MAP's probe without
# map_big_blocks: the caller's allocator must behave as glibc's default still (the setting is
# the entry points' to make, not the library's).
LIBRARY = (
    RSS
    + """
from autoai.bench import BenchConfig, Step, run

url = sys.argv[1]
report = run(BenchConfig("m", [Step(concurrency=1)], url=url, warmup=0.0, duration=0.3))
assert report.steps and report.steps[0].client.total_ok > 0, report
first = bytearray(30 << 20)
del first
second = bytearray(24 << 20)
pin = bytearray(1024)
held = rss_kib()
del second
print(json.dumps({"held": held, "freed": rss_kib()}))
"""
)


@pytest.mark.slow
def test_a_library_run_leaves_the_callers_allocator_alone(
    start_server: StartServer, tmp_path: Path
) -> None:
    server = start_server(onnx_models.identity(tmp_path))
    kib = probe(LIBRARY, server.url)
    # glibc's default kept the 24 MiB block in the heap (map_big_blocks would have unmapped it)
    assert kib["held"] - kib["freed"] < 4 * 1024, kib
