"""The device cache's code paths on the CPU EP (the same code that keeps the caches on a GPU):
the in-graph cache update and the copy graphs against numpy, and the whole cache against
``HostCache``, step by step, exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from blade._cachegraph import (
    prefix_graph,
    resize_graph,
    updated,
    with_cache_update,
    zeros_graph,
)
from blade._devcache import DeviceEncoder
from blade._geneval import front_end, synthetic_clips
from blade._genpasses import served_latency
from blade._runtime import RuntimeConfig
from blade._seq2seq import BladeSeq2Seq, Seq2SeqConfig
from eas_server.generation._cache import buckets
from eas_server.generation._scheduler import Request, Scheduler
from eas_server.generation._spec import GenerateParams, cache_names, read_spec

FLOAT = onnx.TensorProto.FLOAT


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed), strict=True))


def test_the_step_writes_its_last_new_entry_into_each_cache(whisper_micro: Path) -> None:
    spec = read_spec(whisper_micro)
    self_names = cache_names(spec.layers, "self")
    model = with_cache_update(
        onnx.load(str(whisper_micro / "decoder.onnx")), self_names, cache_names(spec.layers, "new")
    )
    rng = np.random.default_rng(0)
    rows, length, tokens = 3, 12, 2
    positions = np.array([0, 5, 9], np.int64)
    caches = {n: rng.standard_normal((rows, spec.heads, length, spec.head_dim), np.float32)
              for n in self_names}  # fmt: skip
    feed: dict[str, np.ndarray] = {"tokens": rng.integers(0, 1000, (rows, tokens))}
    feed.update(positions=positions, **caches)
    for name in cache_names(spec.layers, "cross"):
        feed[name] = rng.standard_normal((rows, spec.heads, 1500, spec.head_dim), np.float32)
    out = _run(model, feed)
    for index, name in enumerate(self_names):
        new = out[cache_names(spec.layers, "new")[index]]
        want = caches[name].copy()
        for row, position in enumerate(positions):
            want[row, :, position + tokens - 1] = new[row, :, tokens - 1]
        np.testing.assert_array_equal(out[updated(name)], want)
    with pytest.raises(ValueError, match="one new key/value name per self cache"):
        with_cache_update(onnx.load(str(whisper_micro / "decoder.onnx")), self_names, [])


def test_the_copy_graphs() -> None:
    rng = np.random.default_rng(1)
    x = [rng.standard_normal((3, 2, 6, 4), np.float32) for _ in range(2)]
    for length in (10, 4):
        out = _run(resize_graph(FLOAT, 2), {"x.0": x[0], "x.1": x[1], "length": np.array([length])})
        for i in range(2):
            keep = min(length, 6)
            assert out[f"y.{i}"].shape == (3, 2, length, 4)
            np.testing.assert_array_equal(out[f"y.{i}"][:, :, :keep], x[i][:, :, :keep])
            assert not out[f"y.{i}"][:, :, keep:].any()
    kv = [rng.standard_normal((3, 2, 4, 4), np.float32) for _ in range(2)]
    out = _run(prefix_graph(FLOAT, 2), {"cache.0": x[0], "cache.1": x[1], "kv.0": kv[0],
                                        "kv.1": kv[1]})  # fmt: skip
    for i in range(2):
        np.testing.assert_array_equal(out[f"y.{i}"][:, :, :4], kv[i])
        np.testing.assert_array_equal(out[f"y.{i}"][:, :, 4:], x[i][:, :, 4:])
    zeros = _run(zeros_graph(FLOAT, 2), {"shape": np.array([2, 3, 4, 5])})
    assert zeros["y.1"].shape == (2, 3, 4, 5) and not zeros["y.1"].any()


def _logits_by_step(runtime: BladeSeq2Seq, spec: object, features: np.ndarray) -> list[np.ndarray]:
    """Every step's logits of a scheduler over ``runtime``: requests of different lengths (rows
    leave and move), beams (rows reordered), and answers past the first cache bucket (16)."""
    assert hasattr(spec, "decoder_start")
    clips = list(features)
    scheduler = Scheduler(spec, runtime, lambda _: np.stack(clips[:1] * len(_)), capacity=6)  # type: ignore[arg-type]
    lengths = (20, 5, 12)
    for i, length in enumerate(lengths):
        beams = 2 if i == 2 else 1
        params = GenerateParams(max_new_tokens=length, num_beams=beams).resolve(spec)  # type: ignore[arg-type]
        scheduler.add(Request(np.zeros(1, np.float32), params))
    steps: list[np.ndarray] = []
    cache = scheduler.cache
    step, prefill = cache.step, cache.prefill

    def recorded(n: int, tokens: np.ndarray, positions: np.ndarray) -> np.ndarray:
        steps.append(step(n, tokens, positions))
        return steps[-1]

    def recorded_prefill(start: int, count: int, prompt: np.ndarray) -> np.ndarray:
        steps.append(prefill(start, count, prompt))
        return steps[-1]

    cache.step = recorded  # type: ignore[method-assign]
    cache.prefill = recorded_prefill  # type: ignore[method-assign]
    scheduler.admit()
    while scheduler.running:
        scheduler.decode()
    return steps


def test_the_device_cache_agrees_with_the_host_cache_exactly(whisper_micro: Path) -> None:
    spec = read_spec(whisper_micro)
    features = front_end(spec).batch(synthetic_clips(spec, 1))
    encoder, decoder = whisper_micro / "encoder.onnx", whisper_micro / "decoder.onnx"
    host = BladeSeq2Seq(encoder, decoder, Seq2SeqConfig())
    device = BladeSeq2Seq(encoder, decoder, Seq2SeqConfig(device_cache=True))
    assert type(device.new_cache(2, buckets(448))).__name__ == "DeviceCache"
    expected = _logits_by_step(host, spec, features)
    got = _logits_by_step(device, spec, features)
    assert len(got) == len(expected) >= 20
    for want, have in zip(expected, got, strict=True):
        np.testing.assert_array_equal(have, want)


def test_the_device_encoder_leaves_the_host_encoders_output_on_the_device(
    whisper_micro: Path,
) -> None:
    spec = read_spec(whisper_micro)
    features = front_end(spec).batch(synthetic_clips(spec, 3))
    encoder = whisper_micro / "encoder.onnx"
    host = BladeSeq2Seq(encoder, whisper_micro / "decoder.onnx", Seq2SeqConfig())
    expected = host.encode(features)
    config = RuntimeConfig(provider="cpu")
    encoded = DeviceEncoder(str(encoder), config, "cpu").encode(features)
    assert encoded.rows == 3 and len(encoded.buffers) == len(expected)
    for buffer, want in zip(encoded.buffers, expected, strict=True):
        np.testing.assert_array_equal(buffer.value.numpy()[:3], want)
    timed = served_latency(encoder, config, "cpu", features, (1, 2))
    assert set(timed) == {1, 2} and all(t > 0 for t in timed.values())
