"""scripts/whisper_export.py: the Whisper-shaped generation bundle (encoder + decoder step with a
key/value cache) and its checks against torch.

The export tests build the micro size in-process (torch and transformers needed, else skipped),
and show both sides of the checks: the export passes them, and a decoder of other weights fails
them. The contract tests run the cached micro bundle (`tests.fixtures.whisper`) with onnxruntime
only: what the directory holds, an empty cache (S = 0), caches padded with huge finite values
past each row's positions, rows that do not depend on their batch, and inputs (positions,
audio) that move the logits by far more than the checks' tolerance.
"""

from __future__ import annotations

import importlib
import json
import shutil
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from eas_server.generation._spec import cache_names, read_spec

ROOT = Path(__file__).resolve().parents[2]
Array = npt.NDArray[Any]
LAYERS, HEADS, HEAD_DIM, FRAMES, VOCAB = 2, 4, 16, 1500, 51865  # the micro size
SAME = 1e-4  # ORT against ORT: one graph on other shapes and batch neighbours


@pytest.fixture(scope="module")
def wx() -> Any:
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(ROOT / "scripts"))
        module: ModuleType = importlib.import_module("whisper_export")
    return module


# --- pure -------------------------------------------------------------------------------------


def test_a_wrong_size_name_says_which_sizes_exist(wx: Any, tmp_path: Path) -> None:
    expected = "unknown Whisper size 'large': expected one of micro, tiny, base"
    with pytest.raises(ValueError, match=expected):
        wx.export_whisper(tmp_path / "out", "large")
    with pytest.raises(ValueError, match=expected):
        wx.generation_spec("large")
    assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit) as exited:
        wx.main(["--size", "large", "--out", str(tmp_path / "out")])
    assert exited.value.code == 2


def test_generation_spec_is_the_contracts_document(wx: Any) -> None:
    tiny = wx.generation_spec("tiny", 0)
    assert tiny == {
        "kind": "seq2seq",
        "architecture": "whisper",
        "sample_rate": 16000,
        "n_mels": 80,
        "n_fft": 400,
        "hop_length": 160,
        "n_samples": 480000,
        "n_frames": 3000,
        "encoder_frames": 1500,
        "layers": 4,
        "heads": 6,
        "head_dim": 64,
        "vocab_size": 51865,
        "max_target_positions": 448,
        "decoder_start": [50258, 50259, 50359, 50363],
        "eos_token_id": 50257,
        "max_new_tokens": 128,
        "source": tiny["source"],
    }
    assert "WhisperConfig tiny" in tiny["source"]
    assert "manual_seed(0)" in tiny["source"]
    base = wx.generation_spec("base", 7)
    assert (base["layers"], base["heads"], base["head_dim"]) == (6, 8, 64)
    assert "manual_seed(7)" in base["source"]


# --- the export and its checks (torch) --------------------------------------------------------


@pytest.fixture(scope="module")
def exported(wx: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float]]:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    out = tmp_path_factory.mktemp("whisper") / "micro"
    return out, wx.export_whisper(out, "micro", seed=0)


@pytest.mark.slow
def test_the_micro_export_passes_its_checks(
    wx: Any, exported: tuple[Path, dict[str, float]]
) -> None:
    out, figures = exported
    checks = ["encoder", "chunk", "steps", "batch_vs_alone", "batch_vs_torch"]
    for name in checks:
        assert 0.0 <= figures[name] <= wx.MAX_DIFF, (name, figures)
    # What was compared is not tiny: logits of order 1 (a tolerance of 1e-3 means something).
    assert figures["logits_max_abs"] > 1.0
    assert figures["decoder_mib"] > figures["encoder_mib"] > 0
    assert sorted(p.name for p in out.iterdir()) == [
        "decoder.onnx",
        "encoder.onnx",
        "generation.json",
    ]
    assert json.loads((out / "generation.json").read_text()) == wx.generation_spec("micro", 0)


@pytest.mark.slow
def test_a_decoder_of_other_weights_fails_the_checks(
    wx: Any, exported: tuple[Path, dict[str, float]], tmp_path: Path
) -> None:
    other = tmp_path / "seed1"
    wx.export_whisper(other, "micro", seed=1, check=False)
    mixed = tmp_path / "mixed"
    shutil.copytree(exported[0], mixed)
    shutil.copy(other / "decoder.onnx", mixed / "decoder.onnx")
    with pytest.raises(wx.ExportCheckFailed, match=r"more than 0\.001") as failed:
        wx.check_whisper(mixed, "micro", seed=0)
    figures = failed.value.figures
    assert figures["encoder"] <= wx.MAX_DIFF  # the encoder is still seed 0's
    assert figures["chunk"] > 100 * wx.MAX_DIFF
    assert figures["steps"] > 100 * wx.MAX_DIFF


# --- the cached micro bundle under onnxruntime ------------------------------------------------


class Bundle:
    def __init__(self, root: Path) -> None:
        import onnxruntime as ort

        opts: dict[str, Any] = {"providers": ["CPUExecutionProvider"]}
        self.encoder = ort.InferenceSession(str(root / "encoder.onnx"), **opts)
        self.decoder = ort.InferenceSession(str(root / "decoder.onnx"), **opts)
        rng = np.random.default_rng(5)
        self.features = (rng.standard_normal((3, 80, 3000)) * 0.5).astype(np.float32)
        self.cross: Array = self.encode(self.features)

    def encode(self, features: Array) -> Array:
        """The per-layer outputs stacked [B, L, 2, H, F, D] (easier to compare)."""
        return stack(self.encoder.run(None, {"input_features": features}))

    def decode(self, tokens: Array, positions: Array, cache: Array, cross: Array) -> list[Array]:
        feed = {"tokens": tokens, "positions": positions}
        feed.update(unstack(cache, cache_names(LAYERS, "self")))
        feed.update(unstack(cross, cache_names(LAYERS, "cross")))
        logits, *new = self.decoder.run(None, feed)
        return [logits, stack(new)]


def stack(per_layer: list[Array]) -> Array:
    pairs = [np.stack(per_layer[i : i + 2], axis=1) for i in range(0, len(per_layer), 2)]
    return np.ascontiguousarray(np.stack(pairs, axis=1))


def unstack(stacked: Array, names: list[str]) -> dict[str, Array]:
    return {
        names[2 * layer + kv]: np.ascontiguousarray(stacked[:, layer, kv])
        for layer in range(stacked.shape[1])
        for kv in (0, 1)
    }


@pytest.fixture(scope="module")
def bundle(whisper_micro: Path) -> Bundle:
    return Bundle(whisper_micro)


def cache(batch: int, length: int) -> Array:
    return np.zeros((batch, LAYERS, 2, HEADS, length, HEAD_DIM), np.float32)


def garbage(batch: int, length: int, seed: int = 0) -> Array:
    rng = np.random.default_rng(seed)
    out = (rng.standard_normal(cache(batch, length).shape) * 1e4).astype(np.float32)
    return out


def sequences(batch: int, length: int, seed: int = 0) -> Array:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 50257, size=(batch, length))
    ids[:, :4] = (50258, 50259, 50359, 50363)
    return ids.astype(np.int64)


def test_the_bundle_has_what_the_contract_lists(whisper_micro: Path) -> None:
    import onnxruntime as ort

    spec = read_spec(whisper_micro)
    assert (spec.layers, spec.heads, spec.head_dim, spec.vocab_size) == (2, 4, 16, VOCAB)
    assert spec.decoder_start == (50258, 50259, 50359, 50363)
    assert (spec.n_frames, spec.encoder_frames, spec.eos_token_id) == (3000, FRAMES, 50257)

    def signature(path: Path) -> tuple[list[Any], list[Any]]:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return (
            [(a.name, a.type, a.shape) for a in sess.get_inputs()],
            [(a.name, a.type, a.shape) for a in sess.get_outputs()],
        )

    def per_layer(kind: str, length: int | str) -> list[tuple[str, str, list[Any]]]:
        shape = ["B", HEADS, length, HEAD_DIM]
        return [(name, "tensor(float)", shape) for name in cache_names(LAYERS, kind)]

    assert cache_names(2, "self") == ["self_k.0", "self_v.0", "self_k.1", "self_v.1"]
    assert signature(whisper_micro / "encoder.onnx") == (
        [("input_features", "tensor(float)", ["B", 80, 3000])],
        per_layer("cross", FRAMES),
    )
    assert signature(whisper_micro / "decoder.onnx") == (
        [
            ("tokens", "tensor(int64)", ["B", "T"]),
            ("positions", "tensor(int64)", ["B"]),
            *per_layer("self", "S"),
            *per_layer("cross", FRAMES),
        ],
        [("logits", "tensor(float)", ["B", "T", VOCAB]), *per_layer("new", "T")],
    )


def test_steps_over_a_garbage_padded_cache_give_the_chunk_with_an_empty_cache(
    bundle: Bundle,
) -> None:
    n = 12
    ids = sequences(2, n)
    cross = bundle.cross[:2]
    whole, whole_kv = bundle.decode(ids, np.zeros(2, np.int64), cache(2, 0), cross)
    assert whole.shape == (2, n, VOCAB) and whole_kv.shape == (2, LAYERS, 2, HEADS, n, HEAD_DIM)
    assert np.isfinite(whole).all()

    buffer = garbage(2, n + 5)  # longer than needed: garbage past every position
    logits, kv = bundle.decode(ids[:, :4], np.zeros(2, np.int64), cache(2, 0), cross)
    buffer[..., :4, :] = kv
    steps = [logits]
    for t in range(4, n):
        logits, kv = bundle.decode(ids[:, t : t + 1], np.full(2, t, np.int64), buffer, cross)
        buffer[..., t : t + 1, :] = kv
        steps.append(logits)
    np.testing.assert_allclose(np.concatenate(steps, axis=1), whole, atol=SAME, rtol=0)
    np.testing.assert_allclose(buffer[..., :n, :], whole_kv, atol=SAME, rtol=0)


def test_each_row_answers_as_it_would_alone(bundle: Bundle) -> None:
    starts, new = (4, 9, 13), 3
    ids = sequences(3, 20, seed=1)
    batch_cache = garbage(3, max(starts) + 2, seed=2)
    alone = []
    for row, p in enumerate(starts):
        one = slice(row, row + 1)
        _, kv = bundle.decode(ids[one, :p], np.zeros(1, np.int64), cache(1, 0), bundle.cross[one])
        batch_cache[row, ..., :p, :] = kv[0]
        at = np.array([p], np.int64)
        alone.append(bundle.decode(ids[one, p : p + new], at, kv, bundle.cross[one]))
    tokens = np.stack([ids[row, p : p + new] for row, p in enumerate(starts)])
    logits, kv = bundle.decode(tokens, np.array(starts, np.int64), batch_cache, bundle.cross)
    for row, (solo_logits, solo_kv) in enumerate(alone):
        np.testing.assert_allclose(logits[row], solo_logits[0], atol=SAME, rtol=0)
        np.testing.assert_allclose(kv[row], solo_kv[0], atol=SAME, rtol=0)


def test_positions_and_audio_move_the_logits_far_beyond_the_tolerance(bundle: Bundle) -> None:
    """What the checks' 1e-3 rests on: errors in positions or in the audio path show."""
    ids = sequences(1, 8, seed=3)
    zero, one = np.zeros(1, np.int64), np.ones(1, np.int64)
    base, _ = bundle.decode(ids, zero, cache(1, 0), bundle.cross[:1])
    shifted, _ = bundle.decode(ids, one, cache(1, 0), bundle.cross[:1])
    assert np.abs(shifted - base).max() > 0.1
    other_audio, _ = bundle.decode(ids, zero, cache(1, 0), bundle.cross[1:2])
    assert np.abs(other_audio - base).max() > 0.1
    reversed_frames = bundle.encode(np.ascontiguousarray(bundle.features[:1, :, ::-1]))
    reordered, _ = bundle.decode(ids, zero, cache(1, 0), reversed_frames)
    assert np.abs(reordered - base).max() > 0.1
    # A cache entry counted or not: positions decide, not the buffer's length.
    _, kv = bundle.decode(ids[:, :7], zero, cache(1, 0), bundle.cross[:1])
    full, _ = bundle.decode(ids[:, 7:], np.array([7]), kv, bundle.cross[:1])
    short, _ = bundle.decode(ids[:, 7:], np.array([6]), kv, bundle.cross[:1])
    np.testing.assert_allclose(full[0, 0], base[0, 7], atol=SAME, rtol=0)
    assert np.abs(short - full).max() > 0.1
