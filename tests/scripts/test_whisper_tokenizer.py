"""scripts/whisper_tokenizer.py: Whisper's multilingual vocabulary as a `tokenizer.json`.

The built tokenizer is checked against its sources, not against itself: token texts against the
lines of the `.tiktoken` file (read here with base64, apart from the script's parser), `encode`
against tiktoken's algorithm written out below (lowest-ranked adjacent pair first) on real and
random text, the special tokens against the list that the sdist's own `get_encoding` builds
(its expression evaluated here) and against the ids the generation bundles' `decoder_start`
uses. Then eas-server's seq2seq processor serves the micro bundle with it and answers text.

The sdist comes from PyPI once into the user's cache (session fixtures run before the suite's
per-test HOME); the tests are skipped only when PyPI is unreachable and nothing is cached. The
download paths themselves run against a local port that refuses connections.
"""

from __future__ import annotations

import ast
import asyncio
import base64
import importlib
import os
import random
import shutil
import socket
import tarfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest
from tokenizers import Regex, Tokenizer, pre_tokenizers

from autoai.testing import cache_dir
from tests.fixtures.whisper import WhisperBuildUnavailable, whisper_model_dir

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts"
# <|startoftranscript|> <|en|> <|transcribe|> <|notimestamps|>: the bundles' decoder_start.
PROMPT = [50258, 50259, 50359, 50363]
EOS = 50257
HELLO, WORLD = 15947, 1002  # b"Hello" and b" world" in the file (checked below)


@pytest.fixture(scope="session")
def wt() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(SCRIPTS))
        yield importlib.import_module("whisper_tokenizer")


@pytest.fixture(scope="session")
def sdist(wt: Any) -> Path:
    """The pinned sdist in the user's cache (fetched once), or a skip when PyPI is unreachable."""
    try:
        path: Path = wt.fetch_sdist(cache_dir() / "downloads")
    except wt.PyPIUnreachable as exc:
        pytest.skip(f"PyPI is unreachable and no openai-whisper sdist is cached: {exc}")
    return path


@pytest.fixture(scope="session")
def built(wt: Any, sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path: Path = wt.build_tokenizer(tmp_path_factory.mktemp("tokenizer"), sdist.parent)
    return path


@pytest.fixture(scope="session")
def tok(built: Path) -> Tokenizer:
    return Tokenizer.from_file(str(built))


@pytest.fixture(scope="session")
def members(sdist: Path) -> dict[str, str]:
    """The two files the build reads, straight from the tar, by their base names."""
    with tarfile.open(sdist) as tar:
        files = {
            Path(name).name: tar.extractfile(f"openai_whisper-20250625/{name}")
            for name in ("whisper/assets/multilingual.tiktoken", "whisper/tokenizer.py")
        }
        return {name: f.read().decode() for name, f in files.items() if f is not None}


@pytest.fixture(scope="session")
def file_ranks(members: dict[str, str]) -> dict[int, bytes]:
    """rank -> token bytes, from the file's lines (whisper's own loading: lenient base64)."""
    lines = (line.split() for line in members["multilingual.tiktoken"].splitlines() if line)
    return {int(rank): base64.b64decode(token) for token, rank in lines}


@pytest.fixture
def unreachable_index(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """pip's configuration replaced by an index on a local port that refuses connections (bound,
    never listening), and no other place to look."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{closed.getsockname()[1]}/simple")
        monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "")
        monkeypatch.setenv("PIP_FIND_LINKS", "")
        monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
        yield


# --- pure ---------------------------------------------------------------------------------------


def test_merges_are_every_split_ordered_by_the_token_they_make(wt: Any) -> None:
    ranks = {b"a": 0, b"b": 1, b"c": 2, b"ab": 3, b"bc": 4, b"abc": 5, b"x": 6}
    assert wt.merges_from_ranks(ranks) == [
        (b"a", b"b"),
        (b"b", b"c"),
        (b"a", b"bc"),  # parts' ranks (0, 4) before (3, 2)
        (b"ab", b"c"),
    ]


def test_the_byte_alphabet_is_gpt2s(wt: Any) -> None:
    table = wt.bytes_to_unicode()
    assert len(set(table.values())) == 256 == len(table)
    assert table[ord("A")] == "A" and table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ"
    assert all(ch.isprintable() and not ch.isspace() for ch in table.values())


def test_malformed_rank_files_are_refused(wt: Any) -> None:
    assert wt.parse_ranks("IQ== 0\nIg== 1\n= 2\n") == {b"!": 0, b'"': 1, b"": 2}
    with pytest.raises(wt.TokenizerBuildError, match=r"line 2 is 'Ig==' \(1 fields\)"):
        wt.parse_ranks("IQ== 0\nIg==\n")
    with pytest.raises(wt.TokenizerBuildError, match=r"ranks are not 0\.\.1"):
        wt.parse_ranks("IQ== 0\nIg== 2\n")
    with pytest.raises(wt.TokenizerBuildError, match="appears twice"):
        wt.parse_ranks("IQ== 0\nIQ== 1\n")


def test_a_tokenizer_py_without_its_literals_is_refused(wt: Any) -> None:
    with pytest.raises(wt.TokenizerBuildError, match="no literal a LANGUAGES dict and no get_enc"):
        wt.parse_tokenizer_py("X = 1\n")
    source = wt.parse_tokenizer_py(
        'LANGUAGES = {"en": "english", "zh": "chinese"}\n'
        "def get_encoding():\n    return Encoding(pat_str=r'\\s+')\n"
    )
    assert source.languages == ("en", "zh") and source.pattern == r"\s+"


# --- the built tokenizer ------------------------------------------------------------------------


def test_hello_world_round_trips_through_tiktokens_ids(
    tok: Tokenizer, file_ranks: dict[int, bytes]
) -> None:
    assert (file_ranks[HELLO], file_ranks[WORLD]) == (b"Hello", b" world")
    encoding = tok.encode("Hello world")
    assert encoding.ids == [HELLO, WORLD]
    assert tok.decode(encoding.ids) == "Hello world"


def test_ids_decode_to_the_bytes_of_the_tiktoken_file(
    wt: Any, tok: Tokenizer, file_ranks: dict[int, bytes]
) -> None:
    assert len(file_ranks) == 50257 and file_ranks[0] == b"!" and file_ranks[50256] == b""
    alphabet = wt.bytes_to_unicode()
    picked = [0, 1, 220, 256, 1000, HELLO, 50255, 50256]
    picked += random.Random(0).sample(range(50257), 200)
    for rank in picked:
        token = file_ranks[rank]
        assert tok.id_to_token(rank) == "".join(alphabet[b] for b in token), rank
        try:
            expected = token.decode("utf-8")
        except UnicodeDecodeError:
            continue  # part of a character: its text is the replacement character
        assert tok.decode([rank]) == expected, rank
    assert tok.decode([50255]) == "场"  # rank 50255 is "5Zy6" = e5 9c ba


def _tiktoken_bpe(piece: bytes, ranks: dict[bytes, int]) -> list[int]:
    """tiktoken's byte pair encoding: a whole token is itself; else merge, again and again, the
    adjacent pair whose concatenation has the lowest rank (the leftmost on ties)."""
    if piece in ranks:
        return [ranks[piece]]
    parts = [piece[i : i + 1] for i in range(len(piece))]
    while True:
        pairs = [
            (ranks[parts[i] + parts[i + 1]], i)
            for i in range(len(parts) - 1)
            if parts[i] + parts[i + 1] in ranks
        ]
        if not pairs:
            return [ranks[p] for p in parts]
        _, i = min(pairs)
        parts[i : i + 2] = [parts[i] + parts[i + 1]]


def test_encode_gives_tiktokens_ids(
    wt: Any, tok: Tokenizer, file_ranks: dict[int, bytes], members: dict[str, str]
) -> None:
    ranks = {token: rank for rank, token in file_ranks.items()}
    pattern = wt.parse_tokenizer_py(members["tokenizer.py"]).pattern
    assert (
        pattern == r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    )
    split = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    rng = random.Random(1)
    pool = [t for t in ranks if t]
    texts = [
        "다람쥐 헌 쳇바퀴에 타고파",  # whisper's own tokenizer test sentence
        "C'est l'été, n'est-ce pas? 12345 67 — I'll we've they're",
        "  leading   spaces\n\nnewlines\ttabs ",
        "Ünïcödé 😀🎉 日本語のテキスト аааааааааааааааа http://example.com/a_b?d=1&e=2",
        *(
            b"".join(rng.choice(pool) for _ in range(rng.randint(1, 30))).decode("utf-8", "replace")
            for _ in range(200)
        ),
    ]
    for text in texts:
        expected = [
            i
            for piece, _ in split.pre_tokenize_str(text)
            for i in _tiktoken_bpe(piece.encode(), ranks)
        ]
        ids = tok.encode(text).ids
        assert ids == expected, text
        assert tok.decode(ids) == text


def test_special_tokens_are_whispers(wt: Any, tok: Tokenizer, members: dict[str, str]) -> None:
    # The list the sdist's get_encoding builds, its own expression evaluated on its LANGUAGES.
    tree = ast.parse(members["tokenizer.py"])
    (function,) = (
        n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_encoding"
    )
    (assign,) = (
        n for n in ast.walk(function)
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", None) == "specials"
    )  # fmt: skip
    languages = wt.parse_tokenizer_py(members["tokenizer.py"])
    # The pinned sdist's list expression, with no names but these.
    theirs = eval(
        compile(ast.Expression(assign.value), "tokenizer.py", "eval"),
        {"__builtins__": {"list": list, "range": range}},
        {"LANGUAGES": dict.fromkeys(languages.languages), "num_languages": 99},
    )
    assert theirs == wt.special_tokens(languages.languages)
    assert [tok.token_to_id(t) for t in theirs] == list(range(50257, 51865))
    known = {
        "<|endoftext|>": 50257, "<|startoftranscript|>": 50258, "<|en|>": 50259, "<|zh|>": 50260,
        "<|su|>": 50357, "<|translate|>": 50358, "<|transcribe|>": 50359, "<|startoflm|>": 50360,
        "<|startofprev|>": 50361, "<|nospeech|>": 50362, "<|notimestamps|>": 50363,
        "<|0.00|>": 50364, "<|0.02|>": 50365, "<|30.00|>": 51864,
    }  # fmt: skip
    assert {t: tok.token_to_id(t) for t in known} == known
    assert tok.token_to_id("<|yue|>") is None  # the 100th language is large-v3's only
    assert tok.get_vocab_size(with_added_tokens=True) == 51865 == wt.VOCAB_SIZE
    # In text, a special token is that token, not its characters' BPE.
    assert tok.encode("<|en|>Hello").ids == [50259, HELLO]


def test_decode_skips_special_tokens(tok: Tokenizer) -> None:
    ids = [*PROMPT, HELLO, WORLD, 50364, EOS]
    assert tok.decode(ids, skip_special_tokens=True) == "Hello world"
    kept = tok.decode(ids, skip_special_tokens=False)
    for token in ("<|startoftranscript|>", "<|en|>", "<|notimestamps|>", "<|0.00|>"):
        assert token in kept
    assert "Hello world" in kept


# --- fetching the sdist ---------------------------------------------------------------------------


@pytest.mark.usefixtures("unreachable_index")
def test_an_unreachable_index_without_a_cached_sdist_says_so(wt: Any, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(wt.PyPIUnreachable, match="the package index cannot be reached"):
        wt.build_tokenizer(tmp_path / "out", cache)
    assert not (tmp_path / "out").exists()
    assert list(cache.iterdir()) == []  # pip's temporary directory is gone
    assert wt.main(["--out", str(tmp_path / "out"), "--cache", str(cache)]) == 1


@pytest.mark.usefixtures("unreachable_index")
def test_a_cached_sdist_is_used_without_the_index(
    wt: Any, sdist: Path, built: Path, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(sdist, cache / sdist.name)
    path = wt.build_tokenizer(tmp_path / "out", cache)
    assert path == tmp_path / "out" / "tokenizer.json"
    assert path.read_bytes() == built.read_bytes()  # the same file, byte for byte


def test_a_cached_file_that_is_not_the_pinned_sdist_is_refused(wt: Any, tmp_path: Path) -> None:
    (tmp_path / wt.SDIST).write_bytes(b"not the sdist")
    with pytest.raises(wt.TokenizerBuildError, match=f"expected {wt.SDIST_SHA256}.*delete the"):
        wt.build_tokenizer(tmp_path / "out", tmp_path)


def test_build_models_adds_the_tokenizer_or_says_why_not(
    sdist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.syspath_prepend(str(SCRIPTS))
    build_models = importlib.import_module("build_models")
    bundle = tmp_path / "whisper-tiny"
    bundle.mkdir()
    monkeypatch.setenv("AUTOAI_CACHE", str(tmp_path / "empty-cache"))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        with monkeypatch.context() as offline:
            offline.setenv("PIP_CONFIG_FILE", os.devnull)
            offline.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{closed.getsockname()[1]}/simple")
            offline.setenv("PIP_EXTRA_INDEX_URL", "")
            offline.setenv("PIP_FIND_LINKS", "")
            build_models.add_whisper_tokenizer(bundle, force=False)
    assert "note: whisper-tiny has no tokenizer.json" in capsys.readouterr().out
    assert not (bundle / "tokenizer.json").exists()
    monkeypatch.setenv("AUTOAI_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache" / "downloads").mkdir(parents=True)
    shutil.copy(sdist, tmp_path / "cache" / "downloads" / sdist.name)
    build_models.add_whisper_tokenizer(bundle, force=False)
    assert Tokenizer.from_file(str(bundle / "tokenizer.json")).decode([HELLO]) == "Hello"
    build_models.add_whisper_tokenizer(bundle, force=False)
    out = capsys.readouterr().out
    assert "built    " in out and f"exists   {bundle / 'tokenizer.json'}" in out


# --- served -------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def worded_micro(wt: Any) -> Path:
    """The micro bundle with this tokenizer (tests.fixtures.whisper)."""
    try:
        return whisper_model_dir("micro", tokenizer=True)
    except WhisperBuildUnavailable as exc:
        pytest.skip(str(exc))
    except wt.PyPIUnreachable as exc:
        pytest.skip(f"PyPI is unreachable and no openai-whisper sdist is cached: {exc}")


def test_the_seq2seq_processor_answers_text(worded_micro: Path) -> None:
    from eas_server.generation._spec import GenerateParams
    from eas_server.processors.seq2seq import Seq2SeqProcessor

    assert sorted(p.name for p in worded_micro.iterdir()) == [
        "decoder.onnx", "encoder.onnx", "generation.json", "tokenizer.json",
    ]  # fmt: skip
    processor = Seq2SeqProcessor(str(worded_micro), intra_op_threads=1)
    processor.load()
    try:
        engine = processor.engine
        assert engine is not None and engine.detokenize is not None
        assert [(o.name, o.datatype) for o in processor.outputs] == [
            ("tokens", "INT64"), ("text", "BYTES"),
        ]  # fmt: skip
        assert engine.detokenize([*PROMPT, HELLO, WORLD, EOS]) == "Hello world"
        tone = (0.1 * np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000)).astype(np.float32)
        result = asyncio.run(engine.generate(tone, GenerateParams(max_new_tokens=6)))
        reference = Tokenizer.from_file(str(worded_micro / "tokenizer.json"))
        assert result.tokens and result.text == reference.decode(list(result.tokens))
    finally:
        processor.close()
