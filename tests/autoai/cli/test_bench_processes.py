"""``autoai bench --processes N`` against a live eas-server: every call the processes made is one
the server counted, the figures merge, the CPU of each process is reported, a concurrency the
processes cannot share is refused, and Ctrl-C or a lost parent leaves no generator behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoai.bench import JSON_SCHEMA
from tests.autoai.bench.test_pool import gone, inferences
from tests.autoai.bench.test_report import validate
from tests.autoai.cli.test_bench import (
    SHORT,
    Served,
    _both_sides_agree,
    _doc,
    _error,
    bench,
    serve_tagger,
)
from tests.fixtures.system import served_requests, wait

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    with serve_tagger(tmp_path_factory.mktemp("bench-processes")) as found:
        yield found


def _processes_agree(step: dict[str, object], n: int) -> None:
    generator = step["generator"]
    assert isinstance(generator, dict)
    each = generator["per_process_cpu_percent"]
    assert len(each) == n and all(p > 0 for p in each)
    assert generator["cpu_cores"] == pytest.approx(sum(each) / 100, abs=0.01)


def test_two_processes_make_exactly_the_calls_the_server_counted(served: Served) -> None:
    before = inferences(served.url, "tagger")
    doc = _doc(bench(f"tagger --url {served.url} --concurrency 2,8 --processes 2 {SHORT} --json"))
    after = inferences(served.url, "tagger")
    assert doc["processes"] == 2
    made = sum(s["client"]["total"]["ok"] for s in doc["steps"])
    assert sum(s["client"]["total"]["failed"] for s in doc["steps"]) == 0
    assert after - before == made + 1  # and the probe, made once by the parent
    assert [s["concurrency"] for s in doc["steps"]] == [2, 8]
    for step in doc["steps"]:
        _both_sides_agree(step)  # the window's counts, p50 <= p90 <= p99
        assert step["client"]["rt_ms"]["p99"] <= step["client"]["rt_ms"]["max"]
        _processes_agree(step, 2)


def test_through_the_sdk_at_a_rate_with_a_plot(served: Served, tmp_path: Path) -> None:
    png = tmp_path / "bench.png"
    doc = _doc(
        bench(f"tagger --store {served.store} --rate 200 --processes 2 {SHORT} --json --plot {png}")
    )
    (step,) = doc["steps"]
    assert (step["mode"], step["rate"], step["max_in_flight"]) == ("open", 200.0, 256)
    assert step["server"]["instances"] == [served.url]
    assert step["client"]["qps"] == pytest.approx(200, rel=0.25)  # two Poisson streams of 100/s
    _both_sides_agree(step)
    _processes_agree(step, 2)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_table_shows_the_cores_of_every_process(served: Served) -> None:
    result = bench(f"tagger --url {served.url} --concurrency 4 --processes 2 {SHORT}")
    assert result.exit_code == 0, result.stderr
    assert "2 generator processes" in result.stdout
    assert "the 2 generator processes together, in cores" in result.stdout


def test_a_load_the_processes_cannot_share_is_refused(served: Served) -> None:
    url = served.url
    line = _error(bench(f"tagger --url {url} --concurrency 1,8 --processes 2"))
    assert "--concurrency 1 is less than --processes 2" in line
    assert "at least one call in flight" in line
    line = _error(bench(f"tagger --url {url} --rate 100 --concurrency 3 --processes 4"))
    assert "--concurrency 3 (the most calls in flight with --rate) is less than --processes 4" in (
        line
    )
    assert "--processes 0: must be >= 1" in _error(bench(f"tagger --url {url} --processes 0"))


def _children(pid: int) -> list[int]:
    """The PIDs whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _start(served: Served, tmp_path: Path, args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "autoai.cli", "bench", "tagger", "--url", served.url, *args.split()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HOME": str(tmp_path)},
    )


def _loaded(served: Served, proc: subprocess.Popen[str], n: int) -> list[int]:
    """Wait until ``proc`` has its ``n`` generator processes and the server sees their load."""
    before = served_requests(served.url)
    wait(
        lambda: (
            proc.poll() is not None
            or (len(_children(proc.pid)) == n and served_requests(served.url) > before + 10)
        ),
        60,
        "the generator processes' load",
    )
    assert proc.poll() is None, proc.communicate()
    return _children(proc.pid)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_stops_the_step_and_every_process(served: Served, tmp_path: Path) -> None:
    proc = _start(
        served, tmp_path, "--concurrency 4,8 --processes 2 --duration 30s --warmup 0.2s --json"
    )
    children = _loaded(served, proc, 2)
    # the step began before its load reached the server: past its 0.2 s warmup the window is
    # open (a sleep can only be longer), and a Ctrl-C then keeps the step's figures
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)  # a terminal's Ctrl-C reaches the CLI's group only
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    doc = json.loads(out)
    validate(doc, JSON_SCHEMA)
    assert doc["interrupted"] is True and doc["processes"] == 2
    (step,) = doc["steps"]
    assert step["interrupted"] and step["client"]["requests"] > 0
    assert all(gone(pid) for pid in children)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_the_generators_end_when_their_parent_is_killed(served: Served, tmp_path: Path) -> None:
    proc = _start(served, tmp_path, "--concurrency 4 --processes 2 --duration 60s --warmup 0.2s")
    children = _loaded(served, proc, 2)
    proc.kill()  # no clean-up at all: the children see their command pipe close
    proc.communicate(timeout=30)
    wait(lambda: all(gone(pid) for pid in children), 20, "the orphaned generators to exit")
