"""``autoai-store`` end to end against an embedded store shared with a subprocess; its errors
(one line on stderr, the documented exit code; kazoo quiet unless ``-v``)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from config_store import open_store
from config_store._cli import main


def _cli(
    *args: str, stdin: bytes | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "config_store", *args],
        input=None if stdin is None else stdin.decode(),
        capture_output=True,
        text=True,
        timeout=60,
        env=None if env is None else {**os.environ, **env},
    )


def test_publish_get_history_keys_and_remove(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    doc = tmp_path / "routes.json"
    doc.write_text('{"routes": [{"version": "1", "weight": 100}]}')
    assert main(["--url", url, "publish", "intent-cls", str(doc)]) == 0
    assert capsys.readouterr().out.strip() == "1"
    assert main(["--url", url, "publish", "intent-cls", str(doc), "--expected-revision", "7"]) == 4
    assert "expected revision 7" in capsys.readouterr().err
    assert main(["--url", url, "get", "intent-cls"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["revision"] == 1 and out["content"]["routes"][0]["weight"] == 100
    assert main(["--url", url, "history", "intent-cls"]) == 0
    assert [h["revision"] for h in json.loads(capsys.readouterr().out)] == [1]
    assert main(["--url", url, "keys"]) == 0
    assert json.loads(capsys.readouterr().out) == ["intent-cls"]
    assert main(["--url", url, "remove", "intent-cls"]) == 0
    assert main(["--url", url, "get", "intent-cls"]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_stdin_publish_and_bad_input_exit_codes(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    done = _cli("--url", url, "publish", "m", "-", stdin=b"from stdin")
    assert done.returncode == 0 and done.stdout.strip() == "1"
    raw = _cli("--url", url, "get", "m", "--raw")
    assert raw.stdout == "from stdin"
    bad = _cli("--url", url, "publish", "../escape", "-", stdin=b"x")
    assert bad.returncode == 2 and "separator" in bad.stderr
    bad_url = _cli("--url", "etcd://x", "get", "m")
    assert bad_url.returncode == 2 and "unsupported scheme" in bad_url.stderr


def test_listen_prints_changes_made_by_another_process(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    with open_store(url, snapshot_dir=False, failover_dir=False) as store:
        store.publish("m", b"v1")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "config_store",
                "--url",
                url,
                "listen",
                "m",
                "--count",
                "3",
                "--timeout",
                "30",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        first = json.loads(proc.stdout.readline())
        assert first["revision"] == 1
        store.publish("m", b"v2")
        assert json.loads(proc.stdout.readline())["revision"] == 2
        store.publish("m", b"v3")
        assert json.loads(proc.stdout.readline())["revision"] == 3
        assert proc.wait(30) == 0
        proc.stdout.close()


def test_instances_lists_registrations(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    with open_store(url, snapshot_dir=False, failover_dir=False) as store:
        store.register("svc", "127.0.0.1", 9000, {"model": "m"})
        deadline = time.monotonic() + 5
        while True:
            out = _cli("--url", url, "instances", "svc")
            docs = json.loads(out.stdout)
            if docs or time.monotonic() > deadline:
                break
        assert docs == [
            {
                "id": "127.0.0.1:9000",
                "host": "127.0.0.1",
                "port": 9000,
                "status": "ALIVE",
                "model": "m",
            }
        ]


def test_help_describes_every_command() -> None:
    out = _cli("--help").stdout
    for command in ("get", "publish", "history", "listen", "remove", "keys", "instances"):
        assert command in out


def _one_line(done: subprocess.CompletedProcess[str], code: int) -> str:
    assert done.returncode == code, done.stderr
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    return lines[0]


def test_usage_errors_are_one_line(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    assert _one_line(_cli("--url", url, "history", "m", "--limit", "x"), 2) == (
        "autoai-store history: error: argument --limit: invalid int value: 'x'; see "
        "'autoai-store history --help'"
    )
    assert _one_line(_cli("--url", url, "get"), 2) == (
        "autoai-store get: error: the following arguments are required: data_id; see "
        "'autoai-store get --help'"
    )
    assert _one_line(_cli("--url", url, "frob"), 2).startswith(
        "autoai-store: error: argument command: invalid choice: 'frob' (choose from 'get', "
    )
    assert _one_line(_cli("--url", url, "listen", "m", "--timeout", "-1"), 2) == (
        "autoai-store listen: error: argument --timeout: expected a number > 0, got '-1'; see "
        "'autoai-store listen --help'"
    )
    assert _one_line(_cli("--url", url, "listen", "m", "--count", "0"), 2) == (
        "autoai-store listen: error: argument --count: expected a number > 0, got '0'; see "
        "'autoai-store listen --help'"
    )
    assert not (tmp_path / "store.db").exists()


def test_files_and_stores_that_cannot_be_opened(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'store.db'}"
    missing = tmp_path / "missing.json"
    assert _one_line(_cli("--url", url, "publish", "m", str(missing)), 2) == (
        f"error: cannot read {missing}: No such file or directory"
    )
    assert not (tmp_path / "store.db").exists()  # read before the store was opened
    assert _one_line(_cli("--url", "sqlite:///proc/nope/store.db", "get", "m"), 2) == (
        "error: cannot open the store sqlite:///proc/nope/store.db: No such file or directory "
        "(/proc/nope)"
    )
    assert _one_line(_cli("--url", "zk://host:notaport/x", "get", "m"), 2) == (
        "error: port 'notaport' in 'host:notaport' is not in 1..65535"
    )


def test_zookeeper_down_is_one_line_and_kazoo_stays_quiet_unless_verbose(tmp_path: Path) -> None:
    with socket.socket() as sock:  # bound, not listening: nothing answers there
        sock.bind(("127.0.0.1", 0))
        url = f"zk://127.0.0.1:{sock.getsockname()[1]}/autoai?connect_timeout=0.5"
        env = {"HOME": str(tmp_path)}  # its snapshot directory, not the user's
        quiet = _cli("--url", url, "get", "m", env=env)
        verbose = _cli("-v", "--url", url, "get", "m", env=env)
    line = _one_line(quiet, 2)
    assert line.startswith(f"error: ZooKeeper {url.partition('?')[0]} "), line
    assert line.endswith(
        "(is ZooKeeper running at that address? --url or AUTOAI_STORE_URL names it)"
    ), line
    assert verbose.returncode == 2
    assert "kazoo.client" in verbose.stderr and verbose.stderr.splitlines()[-1] == line
