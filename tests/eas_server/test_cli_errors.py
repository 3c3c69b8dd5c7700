"""``eas-server`` started wrong, as a new user would: every start that cannot succeed (flags,
a missing or non-ONNX model file, a busy HTTP or gRPC port, a bad store URL) is one line on
stderr, ``eas-server: ...``, nothing on stdout, exit status 2. And the pure message that names a
file that is not ONNX (shared with blade)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from eas_server.processors.onnx import not_onnx

_EXPECTED = (
    "is not an ONNX model (expected an ONNX ModelProto file, e.g. exported with torch.onnx.export)"
)


_CAFE = "caf\u00e9 "


def _start(*args: str) -> str:
    """``eas-server ARGS`` as a process that must fail to start; its one stderr line."""
    done = subprocess.run(
        [sys.executable, "-m", "eas_server", *args], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout == "", done.stdout  # never "listening on ..."
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("eas-server: "), done.stderr
    return lines[0]


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


def test_files_that_are_not_onnx_models(tmp_path: Path) -> None:
    text = tmp_path / "notes.onnx"
    text.write_text("hello, not a model\n")
    assert _start("--model", str(text), "--name", "m") == (
        f"eas-server: {text} {_EXPECTED}: it is text, starting 'hello, not a model'"
    )
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    assert _start("--model", str(empty), "--name", "m") == (
        f"eas-server: {empty} {_EXPECTED}: the file is empty"
    )
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07\xff\xfe\x00garbage")
    assert _start("--model", str(corrupt), "--name", "m") == (
        f"eas-server: {corrupt} {_EXPECTED}: its bytes do not parse as ONNX protobuf"
    )


def test_flags_and_files(models: dict[str, Path], tmp_path: Path) -> None:
    model = str(models["identity"])
    missing = tmp_path / "missing.onnx"
    assert _start("--model", str(missing), "--name", "m") == (
        f"eas-server: --model: Value error, model path {missing} does not exist"
    )
    assert _start("--model", model, "--name", "m", "--port", "abc") == (
        "eas-server: argument --port: invalid int value: 'abc'; see 'eas-server --help'"
    )
    assert _start("--model", model, "--name", "m", "--frob") == (
        "eas-server: unrecognized arguments: --frob; see 'eas-server --help'"
    )
    assert _start("--model", model, "--name", "m", "--max-batch-size", "0") == (
        "eas-server: --max-batch-size: Input should be greater than or equal to 1"
    )
    assert _start("--model", model, "--name", "m", "--token-file", str(missing)) == (
        f"eas-server: --token-file {missing}: No such file or directory"
    )
    assert _start("--model", model, "--name", "m", "--log-level", "loud") == (
        "eas-server: --log-level 'loud': expected one of critical, error, warning, info, debug, "
        "trace"
    )
    assert _start("--model", model, "--name", "m", "--processor", "tensorflow") == (
        "eas-server: unknown processor 'tensorflow'; available: blade, onnx, pipeline, seq2seq"
    )
    assert _start("--model", model, "--name", "m", "--store", "etcd://x") == (
        "eas-server: --store: unsupported scheme 'etcd'; expected 'zk' or 'sqlite'"
    )


def test_busy_ports(models: dict[str, Path], busy_port: int) -> None:
    model = str(models["identity"])
    assert _start("--model", model, "--name", "m", "--port", str(busy_port)) == (
        f"eas-server: cannot listen on 127.0.0.1:{busy_port}: Address already in use"
    )
    # gRPC's C core would log its own line too: quiet unless --log-level info or -v.
    grpc = ["--port", "0", "--grpc-port", str(busy_port)]
    assert _start("--model", model, "--name", "m", *grpc) == (
        f"eas-server: cannot bind gRPC to 127.0.0.1:{busy_port}: Address already in use"
    )


@pytest.mark.parametrize(
    ("head", "looks_like"),
    [
        (b"", "the file is empty"),
        (b"PK\x03\x04rest", "it is a zip archive (a PyTorch checkpoint?)"),
        (b"\x80\x02}q\x00", "it is a Python pickle (a PyTorch or scikit-learn checkpoint?)"),
        (b"\x89HDF\r\n\x1a\n", "it is an HDF5 file (a Keras model?)"),
        (b"name,score\n1,2\n", "it is text, starting 'name,score'"),
        # 512 bytes cut a character in two: still text; the first 40 characters shown
        (_CAFE.encode() * 200, "it is text, starting " + repr(_CAFE * 8)),
        (b"\x08\x07\xff\x00", "the parser's reason"),
    ],
)
def test_not_onnx_says_what_the_file_looks_like(head: bytes, looks_like: str) -> None:
    assert not_onnx("m.onnx", head, "the parser's reason") == f"m.onnx {_EXPECTED}: {looks_like}"
