"""The CUDA-graph buckets of ``BladeRuntime`` share the runtime's one session (issue 18).

On the CPU the buckets are bound through the tests' seam (``_add_buckets("cpu")``: the same IO
binding, padding and cutting back, on the runtime's own session, no graph), so the bucket choice
and the padding arithmetic are checked in CI against plain runs. The tests marked ``gpu`` capture
real graphs (one per ``gpu_graph_id``) and skip where onnxruntime has no CUDA execution provider.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from autoai.testing import wait
from blade._runtime import (
    _CAPTURE,
    BladeRuntime,
    RuntimeConfig,
    _CaptureLock,
    _graph_ids_supported,
    _run_options,
    _with_cuda_graph,
)
from tests.fixtures import onnx_models

PADS = {"input_ids": [1, 0], "attention_mask": [1, 0]}
BUCKETS = [[4, 32], [1, 16], [4, 16]]  # unsorted on purpose: the runtime sorts them


@pytest.fixture(scope="module")
def bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_models.tiny_bert(tmp_path_factory.mktemp("m"), hidden=32, layers=2)


def _feed(
    rows: int, seq: int, real: list[int] | None = None, seed: int = 0
) -> dict[str, np.ndarray]:
    """Right-padded rows: row i has ``real[i]`` real tokens (all ``seq`` when not given)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 100, size=(rows, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    for i, n in enumerate(real or []):
        mask[i, n:] = 0
        ids[i, n:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _bucketed(model: Path, **extra: object) -> BladeRuntime:
    config = RuntimeConfig(
        cuda_graph=True,
        buckets=[list(b) for b in BUCKETS],
        pad_inputs={k: list(v) for k, v in PADS.items()},
        pad_outputs={"last_hidden_state": 1},
        **extra,  # type: ignore[arg-type]
    )
    runtime = BladeRuntime(model, config)
    runtime._add_buckets("cpu")
    return runtime


def _assert_same(got: dict[str, np.ndarray], want: dict[str, np.ndarray], mask: np.ndarray) -> None:
    assert set(got) == set(want)
    for name, value in want.items():
        assert got[name].shape == value.shape, name
    np.testing.assert_allclose(
        got["sentence_embedding"], want["sentence_embedding"], rtol=1e-4, atol=1e-5
    )
    real = mask.astype(bool)
    np.testing.assert_allclose(
        got["last_hidden_state"][real], want["last_hidden_state"][real], rtol=1e-4, atol=1e-5
    )


def test_on_the_cpu_cuda_graph_configs_run_plain_with_no_bucket(bert: Path) -> None:
    config = RuntimeConfig(cuda_graph=True, buckets=[[1, 16]], pad_inputs=dict(PADS))
    runtime = BladeRuntime(bert, config)
    assert runtime._graphs == {} and runtime._plain_options is None
    plain = BladeRuntime(bert, RuntimeConfig())
    feed = _feed(2, 12)
    _assert_same(runtime.run(feed), plain.run(feed), feed["attention_mask"])


def test_every_bucket_binds_the_runtime_session_under_its_own_graph_id(bert: Path) -> None:
    runtime = _bucketed(bert)
    assert list(runtime._graphs) == [(1, 16), (4, 16), (4, 32)]
    assert [g.graph_id for g in runtime._graphs.values()] == [1, 2, 3]
    assert all(g.session is runtime.session for g in runtime._graphs.values())
    assert all(g.run_options is None for g in runtime._graphs.values())  # no graph on the CPU


@pytest.mark.parametrize(
    ("rows", "seq", "real", "bucket"),
    [
        (1, 5, None, (1, 16)),
        (1, 16, None, (1, 16)),
        (3, 10, [10, 7, 3], (4, 16)),
        (2, 20, [20, 11], (4, 32)),
        (4, 32, None, (4, 32)),
        (6, 8, None, None),  # more rows than any bucket: the plain path of the same session
        (2, 40, None, None),  # longer than any bucket
    ],
)
def test_bucketed_runs_match_plain_runs(
    bert: Path, rows: int, seq: int, real: list[int] | None, bucket: tuple[int, int] | None
) -> None:
    runtime = _bucketed(bert)
    plain = BladeRuntime(bert, RuntimeConfig(pad_inputs=dict(PADS)))
    feed = _feed(rows, seq, real)
    chosen = runtime._bucket(feed)
    assert (None if chosen is None else (chosen.batch, chosen.seq)) == bucket
    _assert_same(runtime.run(feed), plain.run(feed), feed["attention_mask"])


def test_buckets_keep_their_own_buffers_when_runs_alternate(bert: Path) -> None:
    runtime = _bucketed(bert)
    plain = BladeRuntime(bert, RuntimeConfig(pad_inputs=dict(PADS)))
    feeds = [_feed(1, 9, seed=1), _feed(3, 14, [14, 5, 2], seed=2), _feed(2, 30, seed=3)]
    want = [plain.run(f) for f in feeds]
    for _ in range(2):
        for feed, expected in zip([*feeds, feeds[0]], [*want, want[0]], strict=True):
            _assert_same(runtime.run(feed), expected, feed["attention_mask"])


def test_only_the_wanted_outputs_come_back_from_buckets_and_plain_runs(bert: Path) -> None:
    runtime = _bucketed(bert)
    wanted = frozenset({"sentence_embedding"})
    for feed in (_feed(2, 10), _feed(8, 10)):  # a bucket, then the plain path
        got = runtime.run(feed, wanted)
        assert set(got) == {"sentence_embedding"} and got["sentence_embedding"].shape == (
            len(feed["input_ids"]),
            32,
        )


def test_trimmed_padding_then_a_bucket_then_padded_back(bert: Path) -> None:
    runtime = _bucketed(bert, trim_mask="attention_mask")
    plain = BladeRuntime(bert, RuntimeConfig(pad_inputs=dict(PADS)))
    feed = _feed(3, 32, [9, 4, 6])  # trimmed to 9 positions: bucket (4, 16)
    got = runtime.run(feed)
    assert got["last_hidden_state"].shape == (3, 32, 32)
    _assert_same(got, plain.run(feed), feed["attention_mask"])


@pytest.mark.parametrize(
    ("version", "supported"),
    [
        ("1.17.3", False),
        ("1.18.0", True),
        ("1.20.0.dev20240501", True),
        ("1.31.1", True),
        ("2.0", True),
        ("nightly", False),
    ],
)
def test_graph_ids_need_onnxruntime_1_18(version: str, supported: bool) -> None:
    assert _graph_ids_supported(version) is supported


def test_only_the_cuda_provider_gets_enable_cuda_graph() -> None:
    providers = [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": "1"}),
        ("CUDAExecutionProvider", {"device_id": 0}),
        "CPUExecutionProvider",
    ]
    assert _with_cuda_graph(providers) == [
        ("TensorrtExecutionProvider", {"trt_fp16_enable": "1"}),
        ("CUDAExecutionProvider", {"device_id": 0, "enable_cuda_graph": "1"}),
        "CPUExecutionProvider",
    ]
    assert providers[1] == ("CUDAExecutionProvider", {"device_id": 0})  # not changed in place


def test_run_options_carry_the_graph_id() -> None:
    assert _run_options(-1).get_run_config_entry("gpu_graph_id") == "-1"
    assert _run_options(3).get_run_config_entry("gpu_graph_id") == "3"


def test_a_capture_never_overlaps_other_gpu_work() -> None:
    """ORT captures in global mode: any synchronizing call of another thread breaks it. Many
    threads take the lock shared or alone at random; each checks, inside, that it is allowed."""
    lock = _CaptureLock()
    broken: list[str] = []
    rng = np.random.default_rng(0)
    plans = [rng.random(200) < 0.1 for _ in range(8)]  # True: a capture

    def work(plan: np.ndarray) -> None:
        for alone in plan:
            with lock.alone() if alone else lock.shared():
                if alone and lock._running:
                    broken.append("a capture beside running work")
                if not alone and lock._capturing:
                    broken.append("work beside a capture")

    threads = [threading.Thread(target=work, args=(p,)) for p in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and not broken, broken


def test_a_waiting_capture_goes_before_new_work() -> None:
    """Writers first: runs that come while a capture waits for the running ones go after it."""
    lock = _CaptureLock()
    order: list[str] = []
    release = threading.Event()

    def holder() -> None:
        with lock.shared():
            release.wait(30)

    def capture() -> None:
        with lock.alone():
            order.append("capture")

    def late_run() -> None:
        with lock.shared():
            order.append("run")

    threads = [threading.Thread(target=holder)]
    threads[0].start()
    wait(lambda: lock._running == 1, 10, "the first run to hold the lock")
    threads.append(threading.Thread(target=capture))
    threads[1].start()
    wait(lambda: lock._waiting == 1, 10, "the capture to wait")
    threads.append(threading.Thread(target=late_run))
    threads[2].start()
    release.set()
    for t in threads:
        t.join(10)
    assert order == ["capture", "run"]


def test_cpu_runtimes_never_take_the_capture_lock(bert: Path) -> None:
    runtime = _bucketed(bert)
    with _CAPTURE.alone():  # held here: a CPU run that took it would wait forever
        runtime.run(_feed(2, 10))
        runtime.run(_feed(8, 10))


# ------------------------------------------------------------------------------------ GPU


def _cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture
def pooling(tmp_path: Path) -> Path:
    """A model whose every node runs on the CUDA EP (ORT captures graphs only for such)."""
    if not _cuda():
        pytest.skip(
            "no CUDA execution provider (pip install 'autoai[gpu]' on a machine with a GPU)"
        )
    return onnx_models.mean_pooling(tmp_path, vocab=100, hidden=16)


def _gpu_feeds() -> list[dict[str, np.ndarray]]:
    return [
        _feed(1, 7, seed=1),
        _feed(3, 16, [16, 9, 2], seed=2),
        _feed(4, 30, seed=3),
        _feed(6, 12, seed=4),  # no bucket: gpu_graph_id -1, numpy feeds, same session
        _feed(1, 7, seed=5),  # bucket (1, 16) again, other values
    ]


@pytest.mark.gpu
def test_gpu_buckets_share_one_session_and_match_plain_cuda(pooling: Path) -> None:
    config = RuntimeConfig(
        provider="cuda", cuda_graph=True, buckets=[list(b) for b in BUCKETS], pad_inputs=dict(PADS)
    )
    runtime = BladeRuntime(pooling, config)
    plain = BladeRuntime(pooling, RuntimeConfig(provider="cuda", pad_inputs=dict(PADS)))
    assert len(runtime._graphs) == 3
    assert all(g.session is runtime.session for g in runtime._graphs.values())
    options = runtime.session.get_provider_options()["CUDAExecutionProvider"]
    assert options["enable_cuda_graph"] == "1"
    feeds = _gpu_feeds()
    for _ in range(3):  # replays, alternating between graphs and the plain path
        for feed in feeds:
            np.testing.assert_allclose(
                runtime.run(feed)["embedding"], plain.run(feed)["embedding"], rtol=1e-5, atol=1e-6
            )


@pytest.mark.gpu
def test_gpu_buckets_run_from_another_thread(pooling: Path) -> None:
    """ORT keeps captured graphs per thread: a serving worker's thread captures its own on its
    first run of each bucket and must get the same answers as the loading thread."""
    config = RuntimeConfig(
        provider="cuda", cuda_graph=True, buckets=[list(b) for b in BUCKETS], pad_inputs=dict(PADS)
    )
    runtime = BladeRuntime(pooling, config)
    feeds = _gpu_feeds()
    here = [runtime.run(f)["embedding"] for f in feeds]
    there: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(2):
                there[:] = [runtime.run(f)["embedding"] for f in feeds]
        except BaseException as exc:  # reported below, on the test's thread
            errors.append(exc)

    worker = threading.Thread(target=work)
    worker.start()
    worker.join(timeout=120)
    assert not worker.is_alive() and not errors, errors
    for a, b in zip(here, there, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
