"""``autoai.testing``'s processes by PID (psutil), ports, the models cache and the bounded wait, on
real processes and sockets."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoai.testing import (
    WaitTimeout,
    alive,
    cache_dir,
    cmdline,
    cpu_model,
    cpu_seconds,
    free_port,
    machine_busy_seconds,
    machine_cpu_seconds,
    models_dir,
    pids_naming,
    port_free,
    terminate,
    tree_cpu_seconds,
    tree_pids,
    usage,
    wait,
    wait_gone,
)

# A parent that starts a child burning CPU, then sleeps; both name MARK on their command lines.
_FAMILY = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import time\\nend = time.monotonic() + 60\\nwhile time.monotonic() < end: pass", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.fixture
def family(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], int, str]]:
    mark = str(tmp_path / "family-mark")
    parent = subprocess.Popen(
        [sys.executable, "-c", _FAMILY, mark], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        yield parent, child, mark
    finally:
        terminate([child, parent.pid], timeout=5)
        parent.wait(5)
        parent.stdout.close()


def test_command_lines_trees_and_cpu_of_a_process_family(
    family: tuple[subprocess.Popen[str], int, str],
) -> None:
    parent, child, mark = family
    wait(lambda: mark in cmdline(child), 10, "the child's command line")
    assert "-c" in cmdline(parent.pid)
    assert sorted(pids_naming(mark)) == sorted([parent.pid, child])
    assert tree_pids(parent.pid) == {parent.pid, child}
    before = tree_cpu_seconds(parent.pid)
    wait(lambda: tree_cpu_seconds(parent.pid) > before + 0.2, 30, "the child to burn CPU")
    assert cpu_seconds([child]) > cpu_seconds([parent.pid])  # the parent only sleeps
    busy, total = machine_cpu_seconds()
    assert cpu_model().strip()
    assert 0 < busy <= total and machine_busy_seconds() >= busy
    used = usage(parent.pid)
    assert used is not None and used.pid == parent.pid and used.rss_kib > 1000 and used.fds >= 3


def test_gone_processes_read_as_gone(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    assert wait_gone([proc.pid], 30)  # a zombie until reaped: gone already
    assert not alive(proc.pid)
    proc.wait()
    assert (cmdline(proc.pid), usage(proc.pid), tree_pids(proc.pid)) == ("", None, set())
    assert tree_cpu_seconds(proc.pid) == 0.0


def test_terminate_signals_only_the_marked_pids_and_kills_what_ignores_sigterm(
    tmp_path: Path,
) -> None:
    stubborn = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(60)"
    )
    marked = subprocess.Popen(
        [sys.executable, "-c", stubborn, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert marked.stdout is not None
        assert marked.stdout.readline() == "ignoring\n"  # its handler is in place
        signalled = terminate([marked.pid, other.pid], timeout=1, mark=str(tmp_path))
        assert signalled == [marked.pid]
        assert marked.wait(5) == -signal.SIGKILL  # SIGTERM ignored: killed after the timeout
        assert alive(other.pid)
        assert terminate([other.pid], timeout=5) == [other.pid]
        assert other.wait(5) == -signal.SIGTERM
    finally:
        for proc in (marked, other):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        if marked.stdout is not None:
            marked.stdout.close()


def test_ports() -> None:
    port = free_port()
    assert port_free(port)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        assert not port_free(port)


def test_the_models_cache() -> None:
    assert models_dir({"AUTOAI_CACHE": "/c", "HOME": "/h"}) == Path("/c/models")
    assert models_dir({"HOME": "/h"}) == Path("/h/.cache/autoai/models")
    assert cache_dir({"AUTOAI_CACHE": "", "HOME": "/h"}) == Path("/h/.cache/autoai")


def test_a_bounded_wait() -> None:
    calls = iter([False, False, True])
    assert wait(lambda: next(calls), 5, "the third call", step=0.01) >= 0.0
    with pytest.raises(WaitTimeout, match=r"timed out after 0\.05 s waiting for never") as late:
        wait(lambda: False, 0.05, "never", step=0.01)
    assert isinstance(late.value, AssertionError) and isinstance(late.value, TimeoutError)
