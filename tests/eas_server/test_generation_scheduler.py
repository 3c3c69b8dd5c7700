"""The iteration-level scheduler on the micro Whisper bundle (real ONNX Runtime, real graphs):
batched decoding gives exactly the tokens of one-at-a-time decoding, whatever joins or leaves
between steps; beam search matches a plain reference implementation; cancellation frees rows at
the next step; deadlines end waiting and running requests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from eas_server.generation._mel import LogMel
from eas_server.generation._scheduler import Event, Request, Scheduler, buckets
from eas_server.generation._search import log_softmax
from eas_server.generation._spec import GenerateParams, GenerationSpec, read_spec
from eas_server.processors.seq2seq import OrtSeq2Seq
from tests.fixtures.whisper import whisper_model_dir

SR = 16000


@pytest.fixture(scope="module")
def bundle() -> Path:
    return whisper_model_dir("micro")


@pytest.fixture(scope="module")
def spec(bundle: Path) -> GenerationSpec:
    return read_spec(bundle)


@pytest.fixture(scope="module")
def runtime(bundle: Path, spec: GenerationSpec) -> OrtSeq2Seq:
    return OrtSeq2Seq(bundle, spec, threads=2, spinning=False)


@pytest.fixture(scope="module")
def front_end(spec: GenerationSpec) -> LogMel:
    return LogMel(n_mels=spec.n_mels, n_samples=spec.n_samples)


@pytest.fixture
def make(spec: GenerationSpec, runtime: OrtSeq2Seq, front_end: LogMel) -> Callable[..., Scheduler]:
    def build(capacity: int = 8, **options: object) -> Scheduler:
        return Scheduler(spec, runtime, front_end.batch, capacity=capacity, **options)  # type: ignore[arg-type]

    return build


def clip(seed: int, seconds: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    tone = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed) * t)
    return (tone + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def request(spec: GenerationSpec, audio: np.ndarray, **params: object) -> Request:
    return Request(audio, GenerateParams(**params).resolve(spec))  # type: ignore[arg-type]


def drain(scheduler: Scheduler, limit: int = 1000) -> list[Event]:
    events: list[Event] = []
    for _ in range(limit):
        if scheduler.idle():
            return events
        events += scheduler.admit()
        events += scheduler.decode()
    raise AssertionError(f"the scheduler did not finish in {limit} steps")


def alone(make: Callable[..., Scheduler], spec: GenerationSpec, audio: np.ndarray, **p: object):
    scheduler = make(capacity=4)
    r = request(spec, audio, **p)
    scheduler.add(r)
    events = drain(scheduler)
    final = [e for e in events if e.request is r and e.finish_reason]
    assert len(final) == 1
    return list(r.tokens), final[0].finish_reason


def test_buckets_cover_the_positional_table() -> None:
    assert buckets(448) == (16, 32, 64, 128, 256, 448)
    assert buckets(16) == (16,)


def test_batched_greedy_equals_one_at_a_time_with_joins_and_leaves(
    make: Callable[..., Scheduler], spec: GenerationSpec
) -> None:
    """Six requests of different lengths and budgets; three start together, three join after
    some steps (one while others have already left); each gets exactly its solo tokens."""
    clips = [clip(i, s) for i, s in enumerate([1.0, 2.5, 0.4, 4.0, 1.7, 3.1])]
    budgets = [6, 30, 3, 17, 9, 25]  # 30 + 4 prompt tokens crosses the 16 and 32 buckets
    expected = [alone(make, spec, a, max_new_tokens=b) for a, b in zip(clips, budgets, strict=True)]
    scheduler = make(capacity=4)  # fewer rows than requests: some wait for a free row
    requests = [request(spec, a, max_new_tokens=b) for a, b in zip(clips, budgets, strict=True)]
    for r in requests[:3]:
        scheduler.add(r)
    events: list[Event] = []
    for step in range(200):
        if step == 2:
            scheduler.add(requests[3])
        if step == 5:
            scheduler.add(requests[4])
            scheduler.add(requests[5])
        if step > 5 and scheduler.idle():
            break
        events += scheduler.admit()
        events += scheduler.decode()
    assert scheduler.idle() and scheduler.rows_in_use == 0
    for r, (tokens, reason) in zip(requests, expected, strict=True):
        assert r.tokens == tokens
        streamed = [t for e in events if e.request is r for t in e.tokens]
        assert streamed == tokens, "the events carry the same tokens, in order"
        assert [e.finish_reason for e in events if e.request is r and e.finish_reason] == [reason]


def test_end_of_sequence_stops_the_answer(
    make: Callable[..., Scheduler], spec: GenerationSpec
) -> None:
    """With the eos id set to the token greedy decoding emits third, the answer is the first
    two tokens and the reason ``eos`` (the eos token itself is not returned)."""
    audio = clip(7, 1.2)
    tokens, _ = alone(make, spec, audio, max_new_tokens=8)
    eos = tokens[2]
    if eos in tokens[:2]:
        pytest.skip("the micro model repeats its third token earlier")  # pragma: no cover
    spec_eos = spec.model_copy(update={"eos_token_id": eos})
    scheduler = Scheduler(spec_eos, make().runtime, make().front_end, capacity=2)
    r = request(spec_eos, audio, max_new_tokens=8)
    scheduler.add(r)
    events = drain(scheduler)
    assert r.tokens == tokens[:2]
    assert events[-1].finish_reason == "eos"


def reference_beam(
    runtime: OrtSeq2Seq,
    spec: GenerationSpec,
    features: np.ndarray,
    width: int,
    max_new: int,
) -> list[int]:
    """Beam search by the rules of ``_search``'s docstring, written out plainly: every step
    recomputes every beam's logits from scratch (one chunk, no cache, one row at a time)."""
    cross = runtime.encode(features[None])
    prompt = list(spec.decoder_start)
    empty = [np.zeros((1, spec.heads, 0, spec.head_dim), np.float32) for _ in cross]

    def next_logprobs(tokens: list[int]) -> np.ndarray:
        ids = np.asarray([prompt + tokens], dtype=np.int64)
        logits, _ = runtime.decode(ids, np.zeros(1, np.int64), empty, cross)
        return log_softmax(logits[0, -1])

    live: list[tuple[list[int], float]] = [([], 0.0)]
    finished: list[tuple[list[int], float]] = []
    while True:
        vocab = spec.vocab_size
        scores = np.concatenate([score + next_logprobs(tokens) for tokens, score in live])
        flat = np.arange(scores.size)
        best_first = np.lexsort((flat, -scores))[: 2 * width]  # ties: lower beam, lower token
        nxt: list[tuple[list[int], float]] = []
        for index in best_first.tolist():
            beam, token = divmod(index, vocab)
            score = float(scores[index])
            if token == spec.eos_token_id:
                if len(finished) < width:
                    finished.append((live[beam][0], score))
                continue
            if len(nxt) < width:
                nxt.append((live[beam][0] + [token], score))
        live = nxt
        if len(live[0][0]) >= max_new:
            finished += live
            break
        if len(finished) >= width and max(s for _, s in finished) >= live[0][1]:
            break
    return max(finished, key=lambda f: f[1])[0]


@pytest.mark.parametrize("width", [2, 4])
def test_beam_search_matches_the_reference(
    make: Callable[..., Scheduler],
    spec: GenerationSpec,
    runtime: OrtSeq2Seq,
    front_end: LogMel,
    width: int,
) -> None:
    """Beams in the running batch, beside greedy requests that finish and move rows around,
    give the reference's answer for each input."""
    clips = [clip(20 + i, 0.8 + i) for i in range(2)]
    scheduler = make(capacity=2 * width + 2)
    beams = [request(spec, a, max_new_tokens=7, num_beams=width) for a in clips]
    greedy = [request(spec, clip(30 + i, 1.0), max_new_tokens=2 + 3 * i) for i in range(2)]
    for r in [greedy[0], beams[0], greedy[1], beams[1]]:
        scheduler.add(r)
    events = drain(scheduler)
    for r, audio in zip(beams, clips, strict=True):
        expected = reference_beam(runtime, spec, front_end(audio), width, 7)
        assert r.tokens == expected
        mine = [e for e in events if e.request is r]
        assert [e.tokens for e in mine[:-1]] == [tuple(expected)], "one event with the answer"
        assert mine[-1].finish_reason in ("eos", "length")


def test_cancelled_request_frees_its_rows_at_the_next_step(
    make: Callable[..., Scheduler], spec: GenerationSpec
) -> None:
    scheduler = make(capacity=8)
    keep = request(spec, clip(1, 1.0), max_new_tokens=12)
    gone = request(spec, clip(2, 1.0), max_new_tokens=40, num_beams=3)
    scheduler.add(keep)
    scheduler.add(gone)
    scheduler.admit()
    scheduler.decode()
    assert scheduler.rows_in_use == 4
    gone.cancelled = True
    events = scheduler.admit() + scheduler.decode()
    assert scheduler.rows_in_use == 1, "the cancelled request's three rows are free"
    assert not [e for e in events if e.request is gone], "nobody listens: no events"
    drain(scheduler)
    tokens, _ = alone(make, spec, clip(1, 1.0), max_new_tokens=12)
    assert keep.tokens == tokens


def test_waiting_request_past_its_deadline_fails(
    make: Callable[..., Scheduler], spec: GenerationSpec
) -> None:
    now = [100.0]
    scheduler = make(capacity=1, clock=lambda: now[0])
    first = request(spec, clip(1, 0.5), max_new_tokens=5)
    late = request(spec, clip(2, 0.5), max_new_tokens=5, timeout_s=0.5)
    first.arrived = late.arrived = 100.0
    scheduler.add(first)
    scheduler.add(late)
    scheduler.admit()  # the one row goes to the first request
    now[0] = 100.6
    events = scheduler.admit()
    failed = [e for e in events if e.request is late]
    assert len(failed) == 1 and failed[0].error_kind == "timeout"
    assert "timeout of 0.5 s" in (failed[0].error or "")
    assert not scheduler.waiting


def test_running_request_past_its_deadline_returns_what_it_has(
    make: Callable[..., Scheduler], spec: GenerationSpec
) -> None:
    now = [0.0]
    scheduler = make(capacity=2, clock=lambda: now[0])
    r = request(spec, clip(3, 0.5), max_new_tokens=50, timeout_s=1.0)
    r.arrived = 0.0
    scheduler.add(r)
    scheduler.admit()
    for _ in range(3):
        scheduler.decode()
    now[0] = 1.5
    events = scheduler.admit()
    assert events[-1].finish_reason == "deadline" and events[-1].index == 4
    assert len(r.tokens) == 4 and scheduler.rows_in_use == 0


def test_a_runtime_failure_ends_its_requests_and_not_the_scheduler(
    make: Callable[..., Scheduler], spec: GenerationSpec
) -> None:
    """Audio the front end cannot take fails its batch with the runtime's message; the next
    request is served."""
    scheduler = make(capacity=2)
    bad = Request(np.zeros((2, 2), np.float32), GenerateParams(max_new_tokens=2).resolve(spec))
    scheduler.add(bad)
    events = scheduler.admit()
    assert events and events[0].error_kind == "runtime"
    good = request(spec, clip(4, 0.5), max_new_tokens=3)
    scheduler.add(good)
    drain(scheduler)
    assert len(good.tokens) == 3
