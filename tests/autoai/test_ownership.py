"""What a control plane owns on its host: only the processes and files of its own store.

Unit tests of the ownership check (store identity, the service JSON's ``autoai_store``, processes
whose JSON is ours, another store's, missing or unreadable), then two real control planes
(`autoai up`) with different stores on one host, sharing one run directory or each using its
default: neither adopts, stops or overwrites what the other runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal, TypeVar

import psutil
import pytest

from autoai.orchestrators import InstanceRecord, LocalOrchestrator, StartFailed, process_alive
from autoai.ownership import STORE_FIELD, owner
from autoai.reconciler import Reconciler
from config_store import ConfigStore, StoreUnavailable, open_store
from config_store.testing import free_ports
from eas_client import EasClient
from eas_server._settings import load_service_json
from tests.fixtures import onnx_models
from tests.fixtures.system import ControlPlane, X, kill_recorded_instances, records, wait

T = TypeVar("T")


def _store(url: str) -> ConfigStore:
    return open_store(url, snapshot_dir=False, failover_dir=False)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ConfigStore]:
    with _store(f"sqlite://{tmp_path / 'a.db'}") as s:
        yield s


@pytest.fixture
def dummies() -> Iterator[Callable[[Path], int]]:
    """Starts stand-ins for instances: processes whose command line names ``eas_server
    --config PATH`` as the orchestrator's do; each is killed by its PID at the end."""
    started: list[subprocess.Popen[bytes]] = []

    def start(config: Path) -> int:
        code = "import time; time.sleep(300)"
        args = [sys.executable, "-c", code, "eas_server", "--config", str(config)]
        started.append(subprocess.Popen(args))
        process = psutil.Process(started[-1].pid)
        # Popen may return while the child is still inside exec, its command line not yet set
        wait(lambda: process.cmdline() == args, 10, "the stand-in's command line")
        return started[-1].pid

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait(30)


# -- identity and the service JSON --------------------------------------------------------------


def test_one_store_is_one_identity_whatever_its_url(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path)
    with _store(f"sqlite://{tmp_path / 'a.db'}") as a:
        orchestrator = LocalOrchestrator(a, "unused", tmp_path / "run")
        assert orchestrator.identity == a.identity
    with _store(f"sqlite://{tmp_path / 'link' / 'a.db'}?lease_ttl=3") as same:
        assert LocalOrchestrator(same, "unused", tmp_path / "run").run_dir == orchestrator.run_dir
    with _store(f"sqlite://{tmp_path / 'b.db'}") as other:
        assert LocalOrchestrator(other, "unused", tmp_path / "run").run_dir != orchestrator.run_dir


@pytest.mark.zk
def test_a_zookeeper_chroot_is_a_store_of_its_own(zk_url: str, tmp_path: Path) -> None:
    with _store(zk_url) as store, _store(zk_url + "-other") as other:
        mine = LocalOrchestrator(store, "unused", tmp_path / "run")
        assert mine.identity == store.identity
        assert LocalOrchestrator(other, "unused", tmp_path / "run").run_dir != mine.run_dir


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (json.dumps({"name": "m", STORE_FIELD: "sqlite_1"}), "sqlite_1"),
        (json.dumps({"name": "m"}), None),  # written before stores were told apart
        (json.dumps({STORE_FIELD: 7}), None),
        (json.dumps({STORE_FIELD: ""}), None),
        (json.dumps(["sqlite_1"]), None),
        ('{"name": ', None),
        (b"\xff\xfe{}", None),
        (None, None),  # missing
    ],
)
def test_owner_reads_the_store_a_service_json_names(
    tmp_path: Path, content: str | bytes | None, expected: str | None
) -> None:
    config = tmp_path / "m-1.json"
    if content is not None:
        config.write_bytes(content.encode() if isinstance(content, str) else content)
    assert owner(config) == expected


def test_eas_server_ignores_the_store_field(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = tmp_path / "m-1.json"
    config.write_text(json.dumps({"name": "m", "model_path": "/m.onnx", STORE_FIELD: "sqlite_1"}))
    with caplog.at_level(logging.DEBUG, logger="eas_server"):
        assert load_service_json(config) == {"name": "m", "model": "/m.onnx"}
    assert not caplog.records


def test_each_store_gets_its_own_owner_only_directory_under_one_run_dir(
    tmp_path: Path, store: ConfigStore
) -> None:
    with _store(f"sqlite://{tmp_path / 'b.db'}") as other:
        a = LocalOrchestrator(store, "unused", tmp_path / "run")
        b = LocalOrchestrator(other, "unused", tmp_path / "run")
    assert a.run_dir == (tmp_path / "run" / a.identity).resolve()
    assert b.run_dir == (tmp_path / "run" / b.identity).resolve()
    assert a.config_path("m-1") != b.config_path("m-1")
    for directory in (tmp_path / "run", a.run_dir, b.run_dir):
        assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0


# -- what the orchestrator and the reconciler act on -------------------------------------------


def test_only_processes_whose_service_json_names_this_store_are_its_own(
    tmp_path: Path,
    store: ConfigStore,
    dummies: Callable[[Path], int],
    caplog: pytest.LogCaptureFixture,
) -> None:
    orchestrator = LocalOrchestrator(store, "unused", tmp_path / "run")
    configs = {
        "ours": {"name": "m", STORE_FIELD: orchestrator.identity},
        "theirs": {"name": "m", STORE_FIELD: "sqlite_0123456789abcdef"},
        "unnamed": {"name": "m"},
        "unreadable": None,
        "missing": None,
    }
    pids: dict[str, int] = {}
    for service, doc in configs.items():
        config = orchestrator.config_path(service)
        if service == "unreadable":
            config.write_text("{not json")
        elif doc is not None:
            config.write_text(json.dumps(doc))
        pids[service] = dummies(config)
    # and one of ours outside this store's directory (another store's, with our name in it)
    elsewhere = tmp_path / "run" / "sqlite_0123456789abcdef" / "ours.json"
    elsewhere.parent.mkdir()
    elsewhere.write_text(json.dumps(configs["ours"]))
    pids["elsewhere"] = dummies(elsewhere)

    with caplog.at_level(logging.INFO, logger="autoai.orchestrators"):
        assert orchestrator.processes() == {pids["ours"]: "ours"}
        assert orchestrator.processes() == {pids["ours"]: "ours"}
    logged = [r.getMessage() for r in caplog.records]
    for service in ("theirs", "unnamed", "unreadable", "missing"):
        assert sum(f"pid {pids[service]} alone" in m for m in logged) == 1, logged  # once

    # The reconciler stops our orphan, and only it.
    reconciler = Reconciler(
        store, orchestrator, is_leader=lambda: True, live_replicas=set, interval=60
    )
    assert reconciler.pass_once().orphans == [pids["ours"]]
    assert [s for s, pid in pids.items() if not process_alive(pid)] == ["ours"]
    assert reconciler.pass_once().orphans == []


def test_a_service_json_of_another_store_is_neither_overwritten_nor_started(
    tmp_path: Path, store: ConfigStore
) -> None:
    orchestrator = LocalOrchestrator(store, "unused", tmp_path / "run")
    config = orchestrator.config_path("m-1")
    theirs = json.dumps({"name": "m", STORE_FIELD: "sqlite_0123456789abcdef"})
    config.write_text(theirs)
    with pytest.raises(StartFailed, match="another store"):
        orchestrator.start("m-1", {"name": "m", "version": "1"}, 1)
    assert config.read_text() == theirs
    with pytest.raises(StartFailed, match="does not name this control plane's store"):
        orchestrator.spawn("m-1", 1)
    config.write_text(json.dumps({"name": "m"}))  # nobody's: spawning it would make no owner's
    with pytest.raises(StartFailed, match="does not name this control plane's store"):
        orchestrator.spawn("m-1", 1)


def test_stop_leaves_a_process_that_reused_a_recorded_pid_alone(
    tmp_path: Path, store: ConfigStore, dummies: Callable[[Path], int]
) -> None:
    orchestrator = LocalOrchestrator(store, "unused", tmp_path / "run")
    pid = dummies(tmp_path / "elsewhere.json")
    recorded = InstanceRecord(pid=pid, args=[sys.executable, "-m", "eas_server", "--config", "x"])
    orchestrator.stop([recorded], timeout=5)
    assert process_alive(pid)


# -- two real control planes on one host --------------------------------------------------------


def _retry(read: Callable[[], T], timeout: float = 30.0) -> T:
    """``read()``, tried again while the store is briefly unavailable (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return read()
        except StoreUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def _passes(plane: ControlPlane) -> int:
    return int((plane.health() or {}).get("reconcile_passes", 0))


def _more_passes(plane: ControlPlane, n: int = 5) -> None:
    """Wait until ``plane`` reconciled ``n`` more times."""
    target = _passes(plane) + n
    plane.wait(lambda: _passes(plane) >= target, 60, f"{n} more reconciliation passes")


def _answer(record: InstanceRecord) -> float:
    """What the instance answers (its model adds its tag), straight from its own port."""
    with EasClient(urls=[f"http://127.0.0.1:{record.port}"], model="m") as client:
        return float(client.infer(X)["y"][0, 0])


def _deploy(plane: ControlPlane, root: Path, tag: float) -> None:
    uri = f"file://{onnx_models.tagged(root, tag)}"
    plane.call("POST", "/api/v1/models", 201, json={"name": "m", "uri": uri})
    plane.deploy("1", {})


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", ["shared-run-dir", "default-run-dir"])
def test_two_control_planes_on_one_host_leave_each_other_alone(
    tmp_path: Path, layout: Literal["shared-run-dir", "default-run-dir"]
) -> None:
    home = tmp_path / "home"  # the default run dir is under $HOME: a fresh one
    home.mkdir()
    env = {"HOME": str(home)}
    run_dir: Path | Literal["default"] = tmp_path / "run"
    base = tmp_path / "run"
    if layout == "default-run-dir":
        run_dir, base = "default", home / ".autoai" / "run"
    roots = {name: tmp_path / name for name in ("a", "b")}
    urls = {name: f"sqlite://{root / 'store.db'}?lease_ttl=2" for name, root in roots.items()}
    for root in roots.values():
        root.mkdir()
    stores = {name: _store(url) for name, url in urls.items()}
    local = {n: LocalOrchestrator(stores[n], urls[n], base) for n in stores}
    planes: list[ControlPlane] = []
    try:
        # A serves version 1 of its model m (tag 1) as service m-1.
        a = ControlPlane(urls["a"], roots["a"], free_ports(1)[0], env, run_dir)
        planes.append(a)
        a.wait(a.leads, 30, "A to lead")
        _deploy(a, roots["a"], 1.0)
        (ours,) = _retry(lambda: records(stores["a"], "1"))
        config_a = local["a"].config_path("m-1")
        assert Path(ours.args[ours.args.index("--config") + 1]) == config_a
        written = config_a.read_bytes()
        assert json.loads(written)[STORE_FIELD] == local["a"].identity

        # B, another store on the same host, starts and reconciles while A's instance runs.
        b = ControlPlane(urls["b"], roots["b"], free_ports(1)[0], env, run_dir)
        planes.append(b)
        b.wait(b.leads, 30, "B to lead")
        _more_passes(b)
        assert LocalOrchestrator.running(ours)
        assert _answer(ours) == 1.0

        # B deploys a model of the same name and version: the same service name, m-1.
        _deploy(b, roots["b"], 2.0)
        (theirs,) = _retry(lambda: records(stores["b"], "1"))
        config_b = local["b"].config_path("m-1")
        assert config_b != config_a and owner(config_b) == local["b"].identity
        _more_passes(a)
        _more_passes(b)

        for record, tag in ((ours, 1.0), (theirs, 2.0)):
            assert LocalOrchestrator.running(record)
            assert _answer(record) == tag
        assert _retry(lambda: records(stores["a"], "1")) == [ours]  # adopted, never restarted
        assert config_a.read_bytes() == written
        assert local["a"].processes() == {ours.pid: "m-1"}
        assert local["b"].processes() == {theirs.pid: "m-1"}
        for plane in planes:
            log = plane.log.read_text()
            assert "orphan" not in log and "restarting" not in log, log
    finally:
        for plane in planes:
            if plane.proc.poll() is None:
                plane.kill()
        for name, url in urls.items():
            kill_recorded_instances(url)
            for pid in local[name].processes():  # started by a deploy that did not finish
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            stores[name].close()
