#!/usr/bin/env python3
"""Whisper's multilingual vocabulary as a Hugging Face `tokenizer.json`, built offline from the
`openai-whisper` sdist on PyPI, for the Whisper-shaped generation bundles.

    python scripts/whisper_tokenizer.py --out DIR [--cache DIR]

Why: the bundles' weights are seeded, not trained, but their vocabulary is Whisper's (51865 ids),
so with this file eas-server's id -> text path is the real one (the text is gibberish of real
tokens). The sdist carries the vocabulary but no weights: `whisper/assets/multilingual.tiktoken`
(one line per token, "base64(token bytes) rank": byte-level BPE, ranks 0..50256) and
`whisper/tokenizer.py` (the language codes, the special tokens that follow the ranks, the
pre-tokenizer pattern). It is fetched once with `pip download` into the cache (`$AUTOAI_CACHE/
downloads`, else `~/.cache/autoai/downloads`), checked against its pinned SHA-256 and read from
the tar without installing anything (the package would pull in torch and tiktoken).

The tokenizer, as tiktoken runs Whisper's encoding:
- pre-tokenizer: `whisper/tokenizer.py`'s pattern (GPT-2's), then byte-level: each byte maps to
  GPT-2's printable byte-to-unicode alphabet, in which the vocabulary is written;
- model: BPE whose merges are recovered from the ranks as transformers' `TikTokenConverter` does
  (every split of a token into two tokens, ordered by the rank of the token they make), with
  `ignore_merges` (a piece that is a whole token is that token, as tiktoken looks it up first),
  so `encode` gives tiktoken's ids, not only `decode` its text;
- special tokens, added after the ranks in `get_encoding`'s order: `<|endoftext|>` 50257,
  `<|startoftranscript|>` 50258, 99 languages (`<|en|>` 50259 ...), `<|translate|>` 50358,
  `<|transcribe|>` 50359, `<|startoflm|>` 50360, `<|startofprev|>` 50361, `<|nospeech|>` 50362,
  `<|notimestamps|>` 50363, timestamps `<|0.00|>` 50364 ... `<|30.00|>` 51864. All are special
  (timestamps too), so `decode(..., skip_special_tokens=True)`, the server's, leaves them out.
- no post-processor: `encode` adds no tokens (the server only decodes; the decoder prompt is
  `generation.json`'s `decoder_start`).

Errors (one `except TokenizerBuildError` catches all):

    TokenizerBuildError        pip failed, or the sdist is not what is pinned / lacks a file
     └── PyPIUnreachable       pip could not reach the package index and nothing is cached
"""

from __future__ import annotations

import argparse
import ast
import base64
import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

__all__ = [
    "NUM_LANGUAGES",
    "SDIST",
    "SDIST_SHA256",
    "VERSION",
    "VOCAB_SIZE",
    "PyPIUnreachable",
    "TokenizerBuildError",
    "WhisperSource",
    "build_tokenizer",
    "bytes_to_unicode",
    "fetch_sdist",
    "merges_from_ranks",
    "parse_ranks",
    "parse_tokenizer_py",
    "read_sdist",
    "special_tokens",
    "tokenizer_from",
]

VERSION = "20250625"
SDIST = f"openai_whisper-{VERSION}.tar.gz"
SDIST_SHA256 = "37a91a3921809d9f44748ffc73c0a55c9f366c85a3ef5c2ae0cc09540432eb96"
RANKS_FILE = "whisper/assets/multilingual.tiktoken"
SOURCE_FILE = "whisper/tokenizer.py"
NUM_LANGUAGES = 99  # the multilingual models before large-v3 (which adds <|yue|>: 51866 ids)
VOCAB_SIZE = 51865
PIP_TIMEOUT_S = 600.0
# What pip prints when it cannot reach the index (and so finds no version at all).
_UNREACHABLE = (
    "(from versions: none)",
    "NewConnectionError",
    "Failed to establish a new connection",
    "Temporary failure in name resolution",
    "ProxyError",
    "ConnectTimeout",
)


class TokenizerBuildError(RuntimeError):
    """The tokenizer could not be built: pip failed, or the sdist is not the pinned one."""


class PyPIUnreachable(TokenizerBuildError):
    """pip could not reach the package index, and the cache holds no sdist."""


# --- pure ---------------------------------------------------------------------------------------


class WhisperSource:
    """What `whisper/tokenizer.py` defines that the vocabulary needs, read without running it."""

    def __init__(self, languages: Sequence[str], pattern: str):
        self.languages = tuple(languages)
        """Language codes in `LANGUAGES`' order (the order of the language tokens)."""
        self.pattern = pattern
        """The pre-tokenizer regex (`pat_str` of `get_encoding`)."""


def parse_tokenizer_py(source: str) -> WhisperSource:
    """`LANGUAGES`' keys and `get_encoding`'s `pat_str` from the text of `whisper/tokenizer.py`.

    Raises:
        TokenizerBuildError: either is missing or not a literal.
    """
    tree = ast.parse(source)
    languages: list[str] | None = None
    pattern: str | None = None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "LANGUAGES" for t in node.targets
        ):
            value = ast.literal_eval(node.value)
            if isinstance(value, dict):
                languages = [str(k) for k in value]
        if isinstance(node, ast.FunctionDef) and node.name == "get_encoding":
            for sub in ast.walk(node):
                if isinstance(sub, ast.keyword) and sub.arg == "pat_str":
                    literal = ast.literal_eval(sub.value)
                    if isinstance(literal, str):
                        pattern = literal
    missing = [
        what
        for what, got in (("a LANGUAGES dict", languages), ("get_encoding's pat_str", pattern))
        if got is None
    ]
    if languages is None or pattern is None:
        raise TokenizerBuildError(
            f"{SOURCE_FILE} has no literal {' and no '.join(missing)}; expected openai-whisper "
            f"{VERSION}'s file"
        )
    return WhisperSource(languages, pattern)


def parse_ranks(text: str) -> dict[bytes, int]:
    """The `.tiktoken` format: one "base64(token bytes) rank" per line -> {token bytes: rank}.

    Raises:
        TokenizerBuildError: a malformed line, a repeated token, or ranks that are not 0..n-1.
    """
    ranks: dict[bytes, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError(f"{len(parts)} fields")
            # Not validated: the file's last line, rank 50256, is "=" (the empty token), which
            # whisper's own loader decodes leniently to b"".
            token, rank = base64.b64decode(parts[0]), int(parts[1])
        except ValueError as exc:
            raise TokenizerBuildError(
                f"{RANKS_FILE} line {number} is {line[:60]!r} ({exc}); expected 'base64 rank'"
            ) from None
        if token in ranks:
            raise TokenizerBuildError(f"{RANKS_FILE} line {number}: {token!r} appears twice")
        ranks[token] = rank
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise TokenizerBuildError(f"{RANKS_FILE}: the ranks are not 0..{len(ranks) - 1}")
    return ranks


def special_tokens(languages: Sequence[str], num_languages: int = NUM_LANGUAGES) -> list[str]:
    """The special tokens in id order after the ranks, as `whisper/tokenizer.py`'s
    `get_encoding` lists them."""
    return [
        "<|endoftext|>",
        "<|startoftranscript|>",
        *[f"<|{lang}|>" for lang in list(languages)[:num_languages]],
        "<|translate|>",
        "<|transcribe|>",
        "<|startoflm|>",
        "<|startofprev|>",
        "<|nospeech|>",
        "<|notimestamps|>",
        *[f"<|{i * 0.02:.2f}|>" for i in range(1501)],
    ]


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, the alphabet of byte-level BPE vocabularies:
    printable Latin-1 bytes map to themselves, the other 68 to U+0100 onwards."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    keep += range(ord("®"), ord("ÿ") + 1)
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def merges_from_ranks(ranks: Mapping[bytes, int]) -> list[tuple[bytes, bytes]]:
    """BPE merges that reproduce tiktoken's choices: every split of each token into two tokens,
    ordered by the rank of the token they make (then by the ranks of the parts).

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank;
    with every such pair in the list at the position of its result, a merge-list BPE picks the
    same pair (transformers' `TikTokenConverter` recovers merges this way).
    """
    merges: list[tuple[int, int, int, bytes, bytes]] = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return [(left, right) for _, _, _, left, right in merges]


def tokenizer_from(ranks: Mapping[bytes, int], source: WhisperSource) -> str:
    """The `tokenizer.json` text for `ranks` and the specials of `source`.

    Raises:
        TokenizerBuildError: the result does not have `VOCAB_SIZE` ids.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    alphabet = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(alphabet[b] for b in token)

    vocab = {text(token): rank for token, rank in ranks.items()}
    merges = [(text(left), text(right)) for left, right in merges_from_ranks(ranks)]
    tokenizer = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(source.pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    specials = special_tokens(source.languages)
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False, single_word=False) for t in specials]
    )
    size = tokenizer.get_vocab_size(with_added_tokens=True)
    if size != VOCAB_SIZE or tokenizer.token_to_id(specials[0]) != len(ranks):
        raise TokenizerBuildError(
            f"the tokenizer has {size} ids, <|endoftext|> = {tokenizer.token_to_id(specials[0])}; "
            f"expected {VOCAB_SIZE} ids with the specials from {len(ranks)} on"
        )
    return str(tokenizer.to_str(pretty=False))


# --- I/O ----------------------------------------------------------------------------------------


def _default_cache() -> Path:
    from autoai.testing import cache_dir  # the one rule for $AUTOAI_CACHE / ~/.cache/autoai

    return cache_dir() / "downloads"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checked(path: Path) -> Path:
    got = _sha256(path)
    if got != SDIST_SHA256:
        raise TokenizerBuildError(
            f"{path} has SHA-256 {got}; expected {SDIST_SHA256} (openai-whisper {VERSION} as "
            "PyPI serves it): delete the file to download it again"
        )
    return path


def fetch_sdist(cache: Path | None = None) -> Path:
    """The pinned `openai-whisper` sdist in `cache`, downloaded with pip if it is not there.

    pip downloads into a temporary directory in `cache` and the file is renamed into place, so
    a file under the final name is whole.

    Raises:
        PyPIUnreachable: pip could not reach the package index (and nothing was cached).
        TokenizerBuildError: pip failed otherwise, or the file is not the pinned sdist.
    """
    cache = _default_cache() if cache is None else cache
    final = cache / SDIST
    if final.is_file():
        return _checked(final)
    cache.mkdir(parents=True, exist_ok=True)
    command = [
        *(sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"),
        *("--timeout", "30", "--retries", "2", "--disable-pip-version-check"),
        f"openai-whisper=={VERSION}",
    ]
    with tempfile.TemporaryDirectory(prefix=".openai-whisper-", dir=cache) as tmp:
        try:
            proc = subprocess.run(
                [*command, "-d", tmp],
                capture_output=True,
                text=True,
                timeout=PIP_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise PyPIUnreachable(
                f"pip download of openai-whisper=={VERSION} took more than {PIP_TIMEOUT_S:.0f} s"
                f"; is the package index reachable? (or put {SDIST} into {cache})"
            ) from exc
        got = Path(tmp) / SDIST
        if proc.returncode != 0 or not got.is_file():
            output = proc.stdout + proc.stderr
            tail = output[-2000:]
            what = f"`{' '.join(command)} -d {cache}` failed (exit {proc.returncode})"
            if any(mark in output for mark in _UNREACHABLE):
                raise PyPIUnreachable(
                    f"{what}: the package index cannot be reached and {cache} holds no {SDIST} "
                    f"(download it elsewhere and copy it there):\n{tail}"
                )
            raise TokenizerBuildError(f"{what}; expected {SDIST} in the directory:\n{tail}")
        _checked(got)
        os.replace(got, final)
    return final


def read_sdist(sdist: Path) -> tuple[dict[bytes, int], WhisperSource]:
    """The ranks and `whisper/tokenizer.py`'s facts, read from the tar without extracting it.

    Raises:
        TokenizerBuildError: the tar lacks a file or a file is malformed.
    """
    root = f"openai_whisper-{VERSION}"
    texts: dict[str, str] = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for name in (RANKS_FILE, SOURCE_FILE):
            try:
                member = tar.extractfile(f"{root}/{name}")
            except KeyError:
                member = None
            if member is None:
                raise TokenizerBuildError(f"{sdist} has no {root}/{name}; expected the sdist's")
            texts[name] = member.read().decode("utf-8")
    return parse_ranks(texts[RANKS_FILE]), parse_tokenizer_py(texts[SOURCE_FILE])


def build_tokenizer(out: Path, cache: Path | None = None) -> Path:
    """Write Whisper's multilingual `tokenizer.json` into the directory `out`; return its path.

    Args:
        out: the directory (a generation bundle's), created if missing.
        cache: where the sdist is kept (default `$AUTOAI_CACHE/downloads`, else
            `~/.cache/autoai/downloads`); reused when it is there, so only the first build
            needs the package index.

    Raises:
        PyPIUnreachable: the sdist is not cached and the package index cannot be reached.
        TokenizerBuildError: any other failure to get or read the sdist.
    """
    ranks, source = read_sdist(fetch_sdist(cache))
    text = tokenizer_from(ranks, source)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "tokenizer.json"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory for tokenizer.json")
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="where the sdist is kept (default $AUTOAI_CACHE/downloads or ~/.cache/autoai/...)",
    )
    args = parser.parse_args(None if argv is None else list(argv))
    try:
        path = build_tokenizer(args.out, args.cache)
    except TokenizerBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"built    {path} (Whisper multilingual, {VOCAB_SIZE} ids, openai-whisper {VERSION})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
