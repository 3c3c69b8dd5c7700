"""The generate mode of the bench: its figures from recorded streams (pure), its clip and
config, and short runs against a real eas-server serving the micro Whisper bundle, straight to
the instance and through the SDK."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from autoai.bench import (
    BadInput,
    GenerateConfig,
    GenerateReport,
    GenerateSamples,
    GenerateStep,
    bench_generate,
    summarize_generate,
    synth_audio,
    to_generate_document,
)
from config_store import open_store
from tests.fixtures.servers import ServerProcess
from tests.fixtures.waiting import wait
from tests.fixtures.whisper import WhisperBuildUnavailable, whisper_model_dir

# -------------------------------------------------------------------------------------- pure


def test_the_window_counts_streams_that_ended_in_it() -> None:
    samples = GenerateSamples()
    samples.ok(0.0, 0.5, 1.0, 9)  # ended before the window: not counted
    samples.ok(9.0, 9.5, 11.0, 4)  # sent before, ended inside: counted
    samples.ok(12.0, 12.2, 13.0, 6)
    samples.ok(14.0, None, 14.5, 0)  # no token: an RT, no TTFT
    samples.ok(19.0, 19.1, 21.0, 8)  # ended after the window
    samples.error(15.0, "HTTP 503")
    samples.error(16.0, "HTTP 503")
    samples.error(25.0, "timeout")
    stats = summarize_generate(samples, 10.0, 20.0)
    assert stats.requests == 3 and stats.qps == pytest.approx(0.3)
    assert stats.tokens == 10 and stats.tokens_per_s == pytest.approx(1.0)
    assert stats.rt is not None and stats.rt.count == 3
    assert (stats.rt.p50, stats.rt.max) == pytest.approx((1.0, 2.0))
    assert stats.ttft is not None and stats.ttft.count == 2
    assert (stats.ttft.p50, stats.ttft.p99) == pytest.approx((0.2, 0.5))
    assert stats.errors == {"HTTP 503": 2}
    with pytest.raises(ValueError, match="must end after it starts"):
        summarize_generate(samples, 5.0, 5.0)


def test_an_empty_window_has_no_latencies() -> None:
    stats = summarize_generate(GenerateSamples(), 0.0, 1.0)
    assert stats.requests == 0 and stats.rt is None and stats.ttft is None
    assert stats.tokens_per_s == 0.0 and stats.errors == {}


def test_the_json_document_is_in_milliseconds() -> None:
    samples = GenerateSamples()
    samples.ok(0.0, 0.25, 1.0, 32)
    report = GenerateReport("w", None, "url", "http://h:1", 5.0, 32, 1, 0.0, 2.0)
    report.steps.append(GenerateStep(4, 2.0, False, summarize_generate(samples, 0.0, 2.0)))
    document = json.loads(json.dumps(to_generate_document(report)))
    step = document["steps"][0]
    assert document["mode"] == "generate" and document["target"]["kind"] == "url"
    assert step["rt_ms"] == {"mean": 1000.0, "p50": 1000.0, "p99": 1000.0}
    assert step["ttft_ms"]["p99"] == 250.0 and step["tokens_per_s"] == 16.0
    assert step["qps"] == 0.5 and step["concurrency"] == 4


def test_the_clip_is_float32_speech_range_and_repeatable() -> None:
    clip = synth_audio(1.5)
    assert clip.dtype == np.float32 and clip.shape == (24000,)
    assert 0.4 < float(np.abs(clip).max()) <= 0.5
    np.testing.assert_array_equal(clip, synth_audio(1.5))
    assert not np.array_equal(clip, synth_audio(1.5, seed=1))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "give either a store URL"),
        ({"url": "http://h:1", "store": "sqlite:///x"}, "give either a store URL"),
        ({"url": "http://h:1", "concurrency": []}, "concurrency must be"),
        ({"url": "http://h:1", "audio_seconds": 31}, r"audio_seconds must be in \(0, 30\]"),
        ({"url": "http://h:1", "max_new_tokens": 0}, "max_new_tokens must be >= 1"),
        ({"url": "http://h:1", "duration": 0}, "the duration and the timeout > 0 s"),
    ],
)
def test_configs_out_of_range_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(BadInput, match=message):
        GenerateConfig("w", **options)  # type: ignore[arg-type]


# ----------------------------------------------------------------------- against eas-server


@dataclass
class Served:
    url: str
    store: str


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """The micro Whisper bundle as version 1 of ``w``, registered and published in a store."""
    try:
        bundle = whisper_model_dir("micro")
    except WhisperBuildUnavailable as exc:
        pytest.skip(str(exc))
    tmp: Path = tmp_path_factory.mktemp("bench-generate")
    store_url = f"sqlite:///{tmp / 'store.db'}"
    args = ["--model", str(bundle), "--name", "w", "--version", "1", "--port", "0"]
    server = ServerProcess([*args, "--store", store_url], env={"HOME": str(tmp)})
    store = open_store(store_url, snapshot_dir=tmp / "snapshot")
    try:
        wait(lambda: len(store.instances("w-1")) == 1, 20.0, "w-1 registered", step=0.02)
        route = {"version": "1", "weight": 100, "service": "w-1", "processor": "seq2seq"}
        table = {"schema_version": 1, "model": "w", "revision": 0, "routes": [route]}
        store.publish("w", json.dumps(table).encode(), group="models")
        yield Served(server.url, store_url)
    finally:
        store.close()
        server.stop()


def _check(report: GenerateReport, concurrency: list[int], tokens: int) -> None:
    assert [s.concurrency for s in report.steps] == concurrency and not report.interrupted
    for step in report.steps:
        stats = step.stats
        assert stats.requests > 0 and stats.errors == {}
        assert stats.qps == pytest.approx(stats.requests / step.window_s)
        assert 0 < stats.tokens <= tokens * stats.requests
        assert stats.tokens_per_s == pytest.approx(stats.tokens / step.window_s)
        assert stats.rt is not None and stats.ttft is not None
        assert 0 < stats.ttft.p50 <= stats.rt.p50 and stats.rt.p99 < 20
        assert math.isfinite(stats.ttft.p99)


def test_a_short_run_straight_to_the_instance(served: Served) -> None:
    config = GenerateConfig(
        "w",
        url=served.url,
        concurrency=[1, 3],
        audio_seconds=1.0,
        max_new_tokens=4,
        warmup=0.2,
        duration=1.0,
        timeout=20,
    )
    report = asyncio.run(bench_generate(config))
    assert report.target == "url" and report.address == served.url
    _check(report, [1, 3], 4)


def test_a_short_run_through_the_sdk(served: Served) -> None:
    config = GenerateConfig(
        "w",
        store=served.store,
        version="1",
        concurrency=[2],
        audio_seconds=0.5,
        max_new_tokens=3,
        warmup=0.0,
        duration=1.0,
        timeout=20,
    )
    report = asyncio.run(bench_generate(config))
    assert report.target == "sdk"
    _check(report, [2], 3)


def test_an_unknown_model_or_version_is_bad_input(served: Served) -> None:
    options: dict[str, object] = {"concurrency": [1], "warmup": 0.0, "duration": 0.1}
    with pytest.raises(BadInput, match="refuses the generate request"):
        asyncio.run(bench_generate(GenerateConfig("nope", url=served.url, **options)))  # type: ignore[arg-type]
    with pytest.raises(BadInput, match="has no version '7'"):
        asyncio.run(
            bench_generate(GenerateConfig("w", store=served.store, version="7", **options))  # type: ignore[arg-type]
        )
