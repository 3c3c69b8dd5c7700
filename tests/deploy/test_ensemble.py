"""deploy/local-ensemble.sh, and the control plane with two instances on the ensemble it starts:
the ZooKeeper leader is killed by its PID during SDK traffic and no call fails.

Everything is real: three ZooKeeper JVMs (Debian's package) started by the script into a temporary
directory, the control plane (this process, on a pre-bound socket), two eas-server processes
started by its local orchestrator, and ``ModelClient`` calls from two threads. The leader is found
with the ``srvr`` four-letter word. Every process is stopped by its PID: the instances by the
PIDs the control plane recorded, the ensemble by the script's PID files.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from autoai.api import ControlSettings
from autoai.control import ControlClient, ControlError
from autoai.sdk import ModelClient
from autoai.testing import alive, cmdline
from config_store import open_store
from config_store.testing import ZooKeeperNotInstalled, four_letter_word, zookeeper_classpath
from tests.fixtures import onnx_models
from tests.fixtures.system import control_plane_in_thread, kill_recorded_instances, wait

pytestmark = [pytest.mark.slow, pytest.mark.zk]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "deploy" / "local-ensemble.sh"
TOKEN = "ensemble-token"


def _require_zookeeper() -> None:
    try:
        zookeeper_classpath()
        if shutil.which("java") is None:
            raise ZooKeeperNotInstalled("java is not on PATH; apt-get install -y zookeeper")
    except ZooKeeperNotInstalled as exc:
        if os.environ.get("AUTOAI_REQUIRE_ZK") == "1":
            pytest.fail(str(exc), pytrace=False)
        pytest.skip(str(exc))


def _wait(done: Callable[[], bool], what: str, timeout: float = 30) -> None:
    # the shared wait: a StoreUnavailable from ``done`` is "not yet", named on timeout
    wait(done, timeout, what, step=0.05)


@dataclass(frozen=True)
class Node:
    id: int
    port: int
    pid_file: Path

    @property
    def pid(self) -> int | None:
        """The PID the script recorded, when that process is alive and is this node's JVM."""
        try:
            pid = int(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        ours = str(self.pid_file.parent / "zoo.cfg") in cmdline(pid).split(" ")
        return pid if ours and alive(pid) else None

    def mode(self) -> str | None:
        try:
            answer = four_letter_word(self.port, "srvr", timeout=1.0)
        except OSError:
            return None
        modes = [
            ln.split(":", 1)[1].strip() for ln in answer.splitlines() if ln.startswith("Mode:")
        ]
        return modes[0] if modes else None


class Ensemble:
    """The script's ensemble in ``dir``; ``run`` calls the script on it."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.started_pids: set[int] = set()

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [str(SCRIPT), command, str(self.dir)],
            capture_output=True,
            text=True,
            timeout=150,
            check=False,
        )
        self.started_pids |= {p for n in self.nodes() if (p := n.pid) is not None}
        return done

    def nodes(self) -> list[Node]:
        out = []
        for cfg in sorted(self.dir.glob("zk*/zoo.cfg")):
            port = next(ln for ln in cfg.read_text().splitlines() if ln.startswith("clientPort="))
            out.append(Node(int(cfg.parent.name[2:]), int(port.split("=")[1]), cfg.parent / "pid"))
        return out

    def leader(self) -> Node:
        leaders = [n for n in self.nodes() if n.mode() == "leader"]
        assert len(leaders) == 1, [(n.id, n.mode()) for n in self.nodes()]
        return leaders[0]

    def logs(self) -> str:
        return "\n".join(
            f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            for log in sorted(self.dir.glob("zk*/zookeeper.log"))
        )


@pytest.fixture
def ensemble(tmp_path: Path) -> Iterator[Ensemble]:
    _require_zookeeper()
    ens = Ensemble(tmp_path / "ensemble")
    started = ens.run("start")
    assert started.returncode == 0, started.stderr + ens.logs()
    try:
        yield ens
    finally:
        stopped = ens.run("stop")
        assert stopped.returncode == 0, stopped.stderr
        left = set(ens.started_pids)  # the script stopped all it started

        def all_gone() -> bool:
            left.difference_update([p for p in left if not alive(p)])
            return not left

        _wait(all_gone, f"ZooKeeper PIDs {sorted(left)} to exit", 15)


def test_script_is_idempotent_and_signals_only_its_own(ensemble: Ensemble) -> None:
    nodes = ensemble.nodes()
    assert len(nodes) == 3 and len({n.port for n in nodes}) == 3
    connect = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
    pids = [n.pid for n in nodes]
    assert all(pids)
    assert sorted(str(n.mode()) for n in nodes) == ["follower", "follower", "leader"]

    again = ensemble.run("start")  # nothing to do: the same ensemble, the same processes
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().splitlines()[-1] == connect
    assert [n.pid for n in ensemble.nodes()] == pids
    assert ensemble.run("connect-string").stdout.strip() == connect
    status = ensemble.run("status")
    assert status.returncode == 0 and status.stdout.count("follower") == 2

    follower = next(n for n in nodes if n.mode() == "follower")
    assert follower.pid is not None
    os.kill(follower.pid, signal.SIGKILL)
    _wait(lambda: follower.pid is None, "the follower to die")
    partial = ensemble.run("status")
    assert partial.returncode == 1
    assert f"zk{follower.id}" in partial.stdout and "down" in partial.stdout
    revived = ensemble.run("start")  # starts only the node that is down, on its old port
    assert revived.returncode == 0, revived.stderr
    assert revived.stdout.strip().splitlines()[-1] == connect
    assert [n.pid for n in ensemble.nodes() if n.id != follower.id] == [
        p for n, p in zip(nodes, pids, strict=True) if n.id != follower.id
    ]
    assert follower.mode() == "follower"

    assert ensemble.run("stop").returncode == 0
    assert ensemble.run("status").returncode == 3
    assert ensemble.run("stop").returncode == 0  # stopping a stopped ensemble is fine

    # a PID file that names someone else's process (a reused PID): never signalled
    other = subprocess.Popen(["sleep", "60"])
    try:
        nodes[0].pid_file.write_text(f"{other.pid}\n")
        assert ensemble.run("stop").returncode == 0
        assert other.poll() is None, "stop signalled a process that is not its ZooKeeper"
    finally:
        other.kill()
        other.wait()
    restarted = ensemble.run("start")  # the data and ports were kept
    assert restarted.returncode == 0, restarted.stderr
    assert restarted.stdout.strip().splitlines()[-1] == connect


# ------------------------------------------------------------------------------ a node failure


@dataclass
class Calls:
    ok: list[float]
    """When each successful call ended (monotonic)."""
    failed: list[str]
    sessions: tuple[int | None, int | None] | None = None
    """The SDK store's ZooKeeper session id before and after the traffic."""


def _traffic(store_url: str, stop: threading.Event, calls: Calls, threads: int = 2) -> None:
    lock = threading.Lock()
    x = {"x": np.arange(8, dtype=np.float32).reshape(2, 4)}
    expected = x["x"] + 1.0

    def work(client: ModelClient) -> None:
        while not stop.is_set():
            try:
                out = client.predict("tagger", x)
                assert np.array_equal(out["y"], expected), out
            except Exception as exc:  # every failure is kept, and fails the test
                with lock:
                    calls.failed.append(repr(exc))
                continue
            with lock:
                calls.ok.append(time.monotonic())

    with (
        open_store(store_url, snapshot_dir=False) as store,
        ModelClient(store, registry=CollectorRegistry()) as client,
    ):
        try:
            client.predict("tagger", x)  # subscribed before the clock starts
        except Exception as exc:
            calls.failed.append(f"the first call: {exc!r}")
            return
        session = store.session_id
        workers = [threading.Thread(target=work, args=(client,)) for _ in range(threads)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        # the SDK reconnected to a surviving node within its session timeout: same session
        calls.sessions = (session, store.session_id)


@contextlib.contextmanager
def _control_plane(store_url: str, root: Path) -> Iterator[ControlClient]:
    settings = ControlSettings(
        store_url=store_url, repo_dir=root / "repo", run_dir=root / "run", admin_token=TOKEN
    )
    try:
        with (
            control_plane_in_thread(settings) as url,
            ControlClient(url, token=TOKEN, timeout=60) as control,
        ):
            try:
                yield control
            finally:
                with contextlib.suppress(ControlError):
                    control.undeploy("tagger", "1", force=True)
    finally:
        kill_recorded_instances(store_url)


@pytest.mark.timeout(120)
def test_leader_killed_during_sdk_traffic_fails_no_call(ensemble: Ensemble, tmp_path: Path) -> None:
    began = time.monotonic()
    connect = ",".join(f"127.0.0.1:{n.port}" for n in ensemble.nodes())
    store_url = f"zk://{connect}/autoai"
    with _control_plane(store_url, tmp_path / "control") as control:
        model = onnx_models.tagged(tmp_path, 1.0)
        control.register_model("tagger", uri=f"file://{model}")
        spec = {"processor": "onnx", "metadata": {"instance": 2, "cpu": 1}}
        control.wait_job(control.deploy("tagger", "1", spec), timeout=60)
        control.publish("tagger", {"routes": [{"version": "1", "weight": 100}]})
        deployment = control.deployment("tagger", "1")
        assert len(deployment.endpoints) == 2

        calls = Calls([], [])
        stop = threading.Event()
        sender = threading.Thread(target=_traffic, args=(store_url, stop, calls))
        sender.start()
        try:
            _wait(lambda: len(calls.ok) >= 20 or bool(calls.failed), "traffic to flow")
            leader = ensemble.leader()
            assert leader.pid is not None
            os.kill(leader.pid, signal.SIGKILL)
            killed_at = time.monotonic()
            survivors = [n for n in ensemble.nodes() if n.id != leader.id]
            _wait(lambda: any(n.mode() == "leader" for n in survivors), "a new leader", timeout=30)
            elected_at = time.monotonic()
            # traffic goes on through, and well after, the election: 20 calls, then 20 more
            # that ended at least 2 s later (counted, so a slow machine cannot shorten the check)
            _wait(lambda: sum(t > elected_at for t in calls.ok) >= 20, "calls after the election")
            later = time.monotonic() + 2.0
            _wait(lambda: sum(t > later for t in calls.ok) >= 20, "calls well after the election")
        finally:
            stop.set()
            sender.join(30)
        assert calls.failed == [], calls.failed[:5]
        assert calls.sessions is not None and calls.sessions[0] == calls.sessions[1]
        after_kill = sum(t > killed_at for t in calls.ok)
        assert after_kill >= 20 and len(calls.ok) >= 40, (len(calls.ok), after_kill)

        # the instances kept their registrations (their sessions moved to surviving nodes) and
        # the control plane still answers and sees both ready
        assert control.healthz().status == "ok"
        deployment = control.deployment("tagger", "1")
        assert len(deployment.endpoints) == 2
        assert [i.ready for i in deployment.instances] == [True, True]
        assert ensemble.run("status").returncode == 1  # the killed node is down
    assert time.monotonic() - began < 90
