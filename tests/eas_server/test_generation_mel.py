"""Whisper's log-mel front end (eas_server.generation._mel) against references.

Two references: transformers' WhisperFeatureExtractor on its numpy path (the `models` extra;
skipped without it), and a plain per-frame float64 transcription of Whisper's
``log_mel_spectrogram`` kept here, which always runs and is what the property tests use.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from eas_server.generation._mel import InvalidAudio, LogMel, check_audio, mel_filters

RATE = 16000
N = 480000  # 30 s
TOLERANCE = 1e-4  # measured: 2.4e-7 at most on the signals below

Reference = Callable[[np.ndarray], np.ndarray]


def _signal(name: str) -> np.ndarray:
    rng = np.random.default_rng(sum(map(ord, name)))
    t = np.arange(N) / RATE
    signals = {
        "sweep": 0.5 * np.sin(2 * np.pi * (50 * t + (7950 / 60) * t**2)),  # 50 Hz -> 8 kHz
        "noise": 0.1 * rng.standard_normal(N),
        "silence": np.zeros(N),
        "clip_0.5s": 0.3 * np.sin(2 * np.pi * 440 * t[: RATE // 2]),
        "exactly_30s": rng.uniform(-1, 1, N),
        "clip_2s": rng.uniform(-1, 1, 2 * RATE) * np.hanning(2 * RATE),
        "quiet_noise": 1e-4 * rng.standard_normal(N),
        "impulses": np.where(np.arange(N) % 4000 == 0, 1.0, 0.0),
        "one_sample": np.array([0.7]),
    }
    return signals[name].astype(np.float32)


SIGNALS = [
    "sweep",
    "noise",
    "silence",
    "clip_0.5s",
    "exactly_30s",
    "clip_2s",
    "quiet_noise",
    "impulses",
    "one_sample",
]


def _plain_reference(audio: np.ndarray, n_mels: int = 80) -> np.ndarray:
    """Whisper's log_mel_spectrogram, one frame at a time in float64 (slow and obvious)."""
    x = np.zeros(N)
    x[: min(audio.size, N)] = audio[:N]
    x = np.pad(x, 200, mode="reflect")
    window = np.hanning(401)[:-1]  # periodic Hann
    power = np.stack(
        [np.abs(np.fft.rfft(x[i * 160 : i * 160 + 400] * window)) ** 2 for i in range(3001)]
    )[:-1]  # the last frame is dropped
    mel = mel_filters(n_mels, RATE, 400).astype(np.float64) @ power.T
    log = np.log10(np.maximum(mel, 1e-10))
    log = np.maximum(log, log.max() - 8.0)
    features: np.ndarray = ((log + 4.0) / 4.0).astype(np.float32)
    return features


@pytest.fixture(scope="module")
def transformers_numpy() -> Iterator[Callable[[int], Reference]]:
    """WhisperFeatureExtractor forced onto its numpy path (it prefers torch when present)."""
    module = pytest.importorskip("transformers.models.whisper.feature_extraction_whisper")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(module, "is_torch_available", lambda: False)

        def make(n_mels: int) -> Reference:
            extractor = module.WhisperFeatureExtractor(feature_size=n_mels)

            def run(audio: np.ndarray) -> np.ndarray:
                features = extractor(audio, sampling_rate=RATE, return_tensors="np")
                return np.asarray(features["input_features"][0])

            return run

        yield make


@pytest.fixture(scope="module")
def log_mel() -> LogMel:
    return LogMel()


# --- mel filters -----------------------------------------------------------------------------


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_transformers(n_mels: int) -> None:
    audio_utils = pytest.importorskip("transformers.audio_utils")
    expected = audio_utils.mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=RATE,
        norm="slaney",
        mel_scale="slaney",
    ).T
    got = mel_filters(n_mels, RATE, 400)
    assert got.shape == (n_mels, 201)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-9)


def test_mel_filters_shape_and_area() -> None:
    filters = mel_filters(80, RATE, 400)
    assert (filters >= 0).all()
    assert (filters.max(axis=1) > 0).all()
    assert filters[:, -1].max() == 0.0  # the top filter ends at 8 kHz, the Nyquist bin
    # Slaney norm: each triangle's area in Hz is 1 (2 / width x width / 2), sampled at 40 Hz.
    area = filters.sum(axis=1) * (RATE / 400)
    np.testing.assert_allclose(area, 1.0, rtol=0.1)


def test_mel_filters_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError, match="covers no FFT bin"):
        mel_filters(200, RATE, 64)
    with pytest.raises(ValueError, match="n_mels >= 1"):
        mel_filters(0, RATE, 400)


# --- features against the references ----------------------------------------------------------


@pytest.mark.parametrize("name", SIGNALS)
def test_matches_transformers_numpy(
    name: str, log_mel: LogMel, transformers_numpy: Callable[[int], Reference]
) -> None:
    audio = _signal(name)
    got = log_mel(audio)
    expected = transformers_numpy(80)(audio)
    assert got.shape == expected.shape == (80, 3000)
    assert got.dtype == np.float32
    assert got.flags.c_contiguous
    assert np.abs(got - expected).max() < TOLERANCE


def test_longer_than_30_s_is_cut_as_transformers_does(
    log_mel: LogMel, transformers_numpy: Callable[[int], Reference]
) -> None:
    audio = np.concatenate([_signal("noise"), np.ones(5000, np.float32)])
    assert np.abs(log_mel(audio) - transformers_numpy(80)(audio)).max() < TOLERANCE
    np.testing.assert_array_equal(log_mel(audio), log_mel(audio[:N]))


def test_128_mels_match_transformers(transformers_numpy: Callable[[int], Reference]) -> None:
    audio = _signal("clip_2s")
    got = LogMel(n_mels=128)(audio)
    assert got.shape == (128, 3000)
    assert np.abs(got - transformers_numpy(128)(audio)).max() < TOLERANCE


@pytest.mark.parametrize("name", ["sweep", "clip_0.5s", "silence"])
def test_matches_plain_reference(name: str, log_mel: LogMel) -> None:
    audio = _signal(name)
    assert np.abs(log_mel(audio) - _plain_reference(audio)).max() < TOLERANCE


def test_empty_audio_is_silence(log_mel: LogMel) -> None:
    # Refused at the edge by check_audio, but LogMel itself treats it as 30 s of zeros.
    np.testing.assert_array_equal(log_mel(np.zeros(0, np.float32)), log_mel(_signal("silence")))
    np.testing.assert_array_equal(log_mel(_signal("silence")), np.float32(-1.5))


# Lengths around the places where the fast path changes regime: the left reflection (200
# samples), frame boundaries (hop 160), the last frame that reaches the right reflection
# (479641 samples and up), and the full 30 s.
_LENGTHS = st.one_of(
    st.integers(1, 600),
    st.integers(N - 800, N + 200),
    st.integers(1, N),
)


@settings(max_examples=25, deadline=None)
@given(length=_LENGTHS, seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1.0, 1e-3]))
def test_any_length_matches_plain_reference(
    length: int, seed: int, scale: float, log_mel: LogMel
) -> None:
    audio = (scale * np.random.default_rng(seed).uniform(-1, 1, length)).astype(np.float32)
    assert np.abs(log_mel(audio) - _plain_reference(audio)).max() < TOLERANCE


# --- batch -------------------------------------------------------------------------------------


def test_batch_equals_one_at_a_time(log_mel: LogMel) -> None:
    audios = [_signal(name) for name in ["clip_2s", "silence", "sweep", "clip_0.5s", "one_sample"]]
    batch = log_mel.batch(audios)
    assert batch.shape == (5, 80, 3000)
    assert batch.dtype == np.float32
    for row, audio in enumerate(audios):
        np.testing.assert_array_equal(batch[row], log_mel(audio))
    # A row does not depend on its neighbours (each has its own max - 8 clamp).
    np.testing.assert_array_equal(log_mel.batch(audios[::-1])[::-1], batch)


def test_empty_batch(log_mel: LogMel) -> None:
    assert log_mel.batch([]).shape == (0, 80, 3000)


def test_other_float_types_are_cast(log_mel: LogMel) -> None:
    audio = _signal("clip_0.5s")
    np.testing.assert_array_equal(log_mel(audio.astype(np.float64)), log_mel(audio))
    np.testing.assert_array_equal(log_mel(audio[:100].tolist()), log_mel(audio[:100]))


def test_log_mel_refuses_2d(log_mel: LogMel) -> None:
    with pytest.raises(InvalidAudio, match=r"utterance 1 has shape \(2, 10\)"):
        log_mel.batch([np.zeros(10, np.float32), np.zeros((2, 10), np.float32)])


def test_log_mel_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError, match="n_samples > n_fft"):
        LogMel(n_samples=400)
    with pytest.raises(ValueError, match="hop_length >= 1"):
        LogMel(hop_length=0)


def test_log_mel_exposes_its_sizes(log_mel: LogMel) -> None:
    assert (log_mel.n_frames, log_mel.n_mels, log_mel.n_samples) == (3000, 80, N)
    np.testing.assert_array_equal(log_mel.filters, mel_filters(80, RATE, 400))


# --- check_audio --------------------------------------------------------------------------------


def test_check_audio_passes_good_audio_through() -> None:
    audio = _signal("clip_2s")
    assert check_audio(audio, N) is audio
    strided = check_audio(audio[::2], N)
    assert strided.flags.c_contiguous
    np.testing.assert_array_equal(strided, audio[::2])
    swapped = check_audio(audio.astype(">f4"), N)
    assert swapped.dtype == np.float32
    assert swapped.dtype.isnative
    np.testing.assert_array_equal(swapped, audio)
    assert check_audio(np.full(N, 1.5, np.float32), N).size == N  # exactly 30 s; loud is fine


@pytest.mark.parametrize(
    ("audio", "words"),
    [
        ([0.0, 0.1], ["numpy array", "list", "FP32 samples at 16 kHz in [-1, 1]"]),
        (np.zeros(10), ["dtype float64", "FP32 samples at 16 kHz in [-1, 1]"]),
        (np.zeros(10, np.int16), ["dtype int16", "FP32"]),
        (np.zeros(10, np.float16), ["dtype float16", "FP32"]),
        (np.zeros((2, 10), np.float32), ["shape (2, 10)", "2-D", "1-D"]),
        (np.array(0.5, np.float32), ["shape ()", "0-D", "1-D"]),
        (np.zeros(0, np.float32), ["empty", "1 to 480000"]),
        (np.zeros(N + 1, np.float32), ["30.000 s", "480001 samples", "at most 30 s"]),
        (np.zeros(2 * N, np.float32), ["60.000 s", "at most 30 s (480000 samples)"]),
    ],
)
def test_check_audio_refusals(audio: object, words: list[str]) -> None:
    with pytest.raises(InvalidAudio) as refused:
        check_audio(audio, N)
    for word in words:
        assert word in str(refused.value)
    assert isinstance(refused.value, ValueError)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("index", [0, 7, 31998])
def test_check_audio_names_the_first_non_finite_sample(value: float, index: int) -> None:
    audio = np.zeros(32000, np.float32)
    audio[index] = value
    audio[-1] = np.nan  # a later one is not the one named
    with pytest.raises(InvalidAudio, match=rf"audio sample {index} is {value}; expected finite"):
        check_audio(audio, N)


def test_check_audio_says_seconds_at_other_rates() -> None:
    with pytest.raises(InvalidAudio, match=r"2\.500 s long .* at 8000 Hz\); at most 2 s"):
        check_audio(np.zeros(20000, np.float32), 16000, sample_rate=8000)
