"""Every ``autoai`` command met as a new user meets it: wrong arguments, missing files, nothing
listening at the URL, a model that does not exist (against a real control plane), a bad store.
Each answer is one line on stderr that says what was wrong and what was expected, nothing on
stdout, exit status 2; library log lines only with ``autoai -v``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from autoai.cli import app
from tests.fixtures import onnx_models

from .conftest import ControlPlane


def _one_line(result: Result | subprocess.CompletedProcess[str], code: int = 2) -> str:
    """The one stderr line of a command that failed with ``code`` and printed nothing else."""
    if isinstance(result, Result):
        status, out, err = result.exit_code, result.stdout, result.stderr
    else:
        status, out, err = result.returncode, result.stdout, result.stderr
    assert status == code, f"exit {status}\n{out}\n{err}"
    assert out == "", out
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    return lines[0]


def _autoai(*args: str, env: Mapping[str, str | None] | None = None) -> Result:
    """``autoai ARGS`` in process, with a wide terminal (nothing may wrap a line anyway)."""
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "80", **(env or {})})


def _process(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    """``autoai ARGS`` as a real process (its own loggers, uvicorn, kazoo's threads)."""
    (done,) = _processes(list(args), home=home)
    return done


def _processes(*commands: Sequence[str], home: Path) -> list[subprocess.CompletedProcess[str]]:
    """``autoai ARGS`` for each of ``commands``, as real processes that run at the same time (so
    their waits overlap); their results in order."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTOAI_")}
    started = [
        subprocess.Popen(
            [sys.executable, "-m", "autoai.cli", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**env, "HOME": str(home)},
        )
        for args in commands
    ]
    done = []
    try:
        for proc in started:
            out, err = proc.communicate(timeout=90)
            done.append(subprocess.CompletedProcess(proc.args, proc.returncode, out, err))
    finally:
        for proc in started:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    return done


@pytest.fixture
def refusing_url() -> Iterator[str]:
    """A loopback port that is bound but not listening: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    path = tmp_path / "notes.onnx"
    path.write_text("hello, not a model\n")
    return path


# ----------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["nosuch"], "error: No such command 'nosuch'; see 'autoai --help'"),
        (
            ["models", "ls", "--frob"],
            "error: No such option: --frob; see 'autoai models ls --help'",
        ),
        (
            ["models", "push", "m.onnx"],
            "error: Missing option '--name'; see 'autoai models push --help'",
        ),
        (
            ["deploy", "m", "--version", "1", "--instances", "abc"],
            "error: Invalid value for '--instances': Input should be a valid integer, unable to "
            "parse string as an integer; see 'autoai deploy --help'",
        ),
        (
            ["deploy", "m", "--version", "1", "--instances", "0"],
            "error: Invalid value for '--instances': Input should be greater than or equal to 1; "
            "see 'autoai deploy --help'",
        ),
        (
            ["blade", "optimize", "missing.onnx"],
            "error: Invalid value for 'model': path 'missing.onnx' does not exist; see "
            "'autoai blade optimize --help'",
        ),
        (["blade", "frob"], "error: No such command 'frob'; see 'autoai blade --help'"),
        (
            ["bench", "m", "--batch", "x"],
            "error: Invalid value for '--batch': Input should be a valid integer, unable to "
            "parse string as an integer; see 'autoai bench --help'",
        ),
        (
            ["status", "-v"],
            "error: No such option: -v; give -v before the command: autoai -v status ...",
        ),
    ],
)
def test_usage_errors_are_one_line(args: list[str], expected: str) -> None:
    assert _one_line(_autoai(*args)) == expected


def test_no_arguments_still_prints_the_help() -> None:
    result = _autoai()
    assert result.exit_code == 2 and "Usage: autoai" in result.stdout


def test_a_usage_error_of_the_real_process(tmp_path: Path) -> None:
    line = _one_line(_process("models", "rm", "m", home=tmp_path))
    assert line == "error: Missing option '--version'; see 'autoai models rm --help'"


# ------------------------------------------------------------- nothing listens at the URL

_UNREACHABLE = [
    "models ls",
    "models rm m --version 1",
    "deploy m --version 1",
    "undeploy m --version 1",
    "scale m --version 1 --instances 2",
    "job 0123abcd",
    "publish m --route 1=100",
    "rollback m",
    "releases m",
    "status",
    "predict m --input x=[[1]]",
]


@pytest.mark.parametrize("command", _UNREACHABLE)
def test_nothing_listening_is_one_line(command: str, refusing_url: str) -> None:
    line = _one_line(_autoai(*command.split(), env={"AUTOAI_URL": refusing_url}))
    assert line.startswith(f"error: cannot reach the control plane at {refusing_url}"), line
    assert "autoai up" in line  # what was expected there


def test_push_of_a_file_to_nowhere(refusing_url: str, text_file: Path) -> None:
    line = _one_line(
        _autoai("models", "push", str(text_file), "--name", "m", "--url", refusing_url)
    )
    assert line.startswith(f"error: cannot reach the control plane at {refusing_url}"), line


# ------------------------------------------------------------------ bad files and values


def test_missing_and_malformed_files(tmp_path: Path, text_file: Path, refusing_url: str) -> None:
    missing = tmp_path / "missing"
    url = {"AUTOAI_URL": refusing_url}
    assert _one_line(_autoai("models", "push", str(missing), "--name", "m", env=url)) == (
        f"error: cannot read {missing}: No such file or directory"
    )
    assert _one_line(_autoai("deploy", "m", "--version", "1", "--spec", str(missing))) == (
        f"error: --spec {missing}: No such file or directory"
    )
    assert _one_line(_autoai("deploy", "m", "--version", "1", "--spec", str(text_file))) == (
        f"error: --spec {text_file}: not valid JSON: Expecting value: line 1 column 1 (char 0)"
    )
    assert _one_line(_autoai("status", "--token-file", str(missing))) == (
        f"error: --token-file {missing}: No such file or directory"
    )
    assert _one_line(_autoai("status", "--url", "ftp://example")) == (
        "error: 'ftp://example' is not an http:// or https:// URL"
    )
    assert _one_line(_autoai("publish", "m", "--route", "1=ninety")) == (
        "error: --route '1=ninety': the weight must be an integer, such as 2=90"
    )
    assert _one_line(_autoai("predict", "m", "--input", "x")) == (
        "error: --input 'x': expected NAME=@FILE.npy or NAME=JSON"
    )
    assert _one_line(_autoai("bench", "m", "--url", refusing_url, "--duration", "abc")) == (
        "error: --duration 'abc': expected a duration such as 30s, 500ms or 2m"
    )


def test_blade_optimize_of_a_text_file(text_file: Path) -> None:
    assert _one_line(_autoai("blade", "optimize", str(text_file))) == (
        f"error: {text_file} is not an ONNX model (expected an ONNX ModelProto file, e.g. "
        "exported with torch.onnx.export): it is text, starting 'hello, not a model'"
    )


# ---------------------------------------------------------------------------- autoai up


def _up(root: Path, *more: str) -> list[str]:
    return [
        "up", "--repo", str(root / "repo"), "--run-dir", str(root / "run"), *more,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("more", "expected"),
    [
        (["--port", "70000"], "error: --port: Input should be less than or equal to 65535"),
        (
            ["--orchestrator", "nope"],
            "error: --orchestrator: Input should be 'local' or 'kubernetes'",
        ),
        (
            ["--store", "etcd://x"],
            "error: --store etcd://x: unsupported scheme 'etcd'; expected 'zk' or 'sqlite'",
        ),
        (
            ["--log-level", "loud"],
            "error: --log-level 'loud': expected one of critical, error, warning, info, debug, "
            "trace",
        ),
    ],
)
def test_up_refuses_bad_settings_in_one_line(
    more: list[str], expected: str, tmp_path: Path
) -> None:
    store = ["--store", f"sqlite:///{tmp_path / 'store.db'}"]
    assert _one_line(_autoai(*_up(tmp_path, *store, *more))) == expected
    assert not (tmp_path / "store.db").exists()


def test_up_on_a_busy_port_never_opens_the_store(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        store = f"sqlite:///{tmp_path / 'store.db'}"
        line = _one_line(
            _process(*_up(tmp_path, "--store", store, "--port", str(port)), home=tmp_path)
        )
    assert line == (
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use (another `autoai up` "
        "there? pick a free port with --port)"
    )
    assert not (tmp_path / "store.db").exists()


def test_up_with_a_store_it_cannot_open_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as free:  # a port for the attempt; the start fails before listening
        free.bind(("127.0.0.1", 0))
        port = str(free.getsockname()[1])
    # A directory where the database file should be: the app's start-up fails, not uvicorn's.
    store = f"sqlite:///{tmp_path}"
    line = _one_line(_process(*_up(tmp_path, "--store", store, "--port", port), home=tmp_path))
    assert line.startswith("error: the control plane did not start: "), line
    assert str(tmp_path) in line


# ------------------------------------------------------------- library loggers stay quiet


@pytest.mark.slow  # the SDK waits for the store about 10 s (both runs at once)
def test_kazoo_stays_quiet_unless_verbose(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound, not listening: ZooKeeper is down
        sock.bind(("127.0.0.1", 0))
        store = f"zk://127.0.0.1:{sock.getsockname()[1]}/autoai?connect_timeout=0.5"
        bench = ["bench", "m", "--store", store, "--duration", "1s", "--warmup", "0s"]
        # Side by side: each spends its time waiting for the route table (the SDK's 10 s
        # subscribe_timeout, which `autoai bench` does not let a user shorten).
        quiet, verbose = _processes(bench, ["-v", *bench], home=tmp_path)
    line = _one_line(quiet)
    assert "kazoo" not in quiet.stderr and "Connection dropped" not in quiet.stderr
    assert line.startswith("error: model 'm' is not published"), line
    assert verbose.returncode == 2
    assert "kazoo.client" in verbose.stderr  # -v shows the libraries' lines, ours last
    assert verbose.stderr.splitlines()[-1] == line


# ----------------------------------------------------- a real control plane, wrong names


@pytest.mark.slow
@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("models ls nosuch", "error: model 'nosuch' is not registered (HTTP 404)"),
        ("models rm nosuch --version 1", "error: model 'nosuch' is not registered (HTTP 404)"),
        ("deploy nosuch --version 1", "error: model 'nosuch' is not registered (HTTP 404)"),
        ("undeploy nosuch --version 1", "error: model 'nosuch' is not registered (HTTP 404)"),
        (
            "scale nosuch --version 1 --instances 2",
            "error: model 'nosuch' is not registered (HTTP 404)",
        ),
        ("publish nosuch --route 1=100", "error: model 'nosuch' is not registered (HTTP 404)"),
        ("rollback nosuch", "error: model 'nosuch' is not registered (HTTP 404)"),
        ("releases nosuch", "error: model 'nosuch' is not registered (HTTP 404)"),
        ("status nosuch", "error: model 'nosuch' is not registered (HTTP 404)"),
        ("predict nosuch --input x=[[1]]", "error: model 'nosuch' is not registered (HTTP 404)"),
        ("job 0123abcd", "error: no job '0123abcd' (HTTP 404)"),
    ],
)
def test_names_that_do_not_exist(control_plane: ControlPlane, command: str, expected: str) -> None:
    assert _one_line(control_plane.cli(command)) == expected


@pytest.mark.slow
def test_push_of_a_text_file_says_it_is_not_onnx(
    control_plane: ControlPlane, text_file: Path, tmp_path: Path
) -> None:
    line = _one_line(control_plane.cli(f"models push {text_file} --name notes"))
    assert "is not an ONNX model (expected an ONNX ModelProto file" in line, line
    assert line.endswith("it is text, starting 'hello, not a model' (HTTP 400)"), line
    model = onnx_models.identity(tmp_path)
    pushed = control_plane.cli(f"models push {model} --name notes")
    assert pushed.exit_code == 0, pushed.stderr
    assert _one_line(control_plane.cli("deploy notes --version 9")) == (
        "error: model 'notes' has no version '9'; versions: ['1'] (HTTP 404)"
    )
    bad_npy = _one_line(control_plane.cli(f"predict notes --version 1 --input x=@{text_file}"))
    assert bad_npy == (
        f"error: --input x: {text_file} is not a .npy file (expected one array saved with "
        "numpy.save, of numbers or strings)"
    )
