"""Chaos scenarios on the assembled system (issue 9), each under steady SDK load at concurrency 32
on two models (``a`` 90/10 with a blade route, ``b`` plain), each asserting on counts.

The figures of each run are printed (``CHAOS {...}``) and kept in
``<basetemp>/chaos-figures.jsonl``; docs/reliability.md tabulates them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from prometheus_client import CollectorRegistry

from autoai.api.dependencies import CONTROL_SERVICE
from autoai.control import ControlClient, ControlError, Unavailable, Unreachable
from autoai.schema import PublishResult
from autoai.sdk import ModelClient
from autoai.testing import alive
from config_store import ConfigStore
from config_store._keys import instances_path
from tests.fixtures import disks, onnx_models
from tests.fixtures.system import served_requests, wait

from .conftest import ATTEMPT_TIMEOUT, CALLS, INSTANCES, SESSION_TIMEOUT, Chaos, System

pytestmark = [pytest.mark.chaos, pytest.mark.zk]


def _settle(chaos: Chaos, calls: int = 300) -> None:
    """Let ``calls`` more calls through after recovery, so the load sees the healed system."""
    mark = chaos.load.sent
    wait(lambda: chaos.load.sent > mark + calls, 30, f"{calls} calls after recovery")


def _finish(chaos: Chaos) -> tuple[int, dict[str, int]]:
    outcomes = chaos.load.stop()
    failed = {k: n for k, n in outcomes.items() if k != "ok"}
    return sum(outcomes.values()), failed


def test_1_kill_one_of_two_instances(chaos: Chaos, figures: Any) -> None:
    system = chaos.system
    victim = system.records("b", "1")[0]
    dead_id = f"127.0.0.1:{victim.port}"
    assert dead_id in system.discovered("b", "1")
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    left = wait(
        lambda: dead_id not in system.discovered("b", "1"),
        SESSION_TIMEOUT + 5,
        "the dead instance to leave discovery",
        step=0.05,
    )
    recovered = wait(system.healthy, 30, "the instance to be restarted", step=0.2)
    recovery = time.monotonic() - killed
    _settle(chaos)
    sent, failed = _finish(chaos)
    figures(
        "1 kill -9 one of two instances",
        calls_sent=sent,
        calls_failed=sum(failed.values()),
        left_discovery_s=round(left, 2),
        recovery_s=round(recovery, 2),
        restarted_after_s=round(recovered, 2),
    )
    assert not failed, failed
    assert left <= SESSION_TIMEOUT + 1


def test_3_kill_the_control_plane_and_restart_it(chaos: Chaos, figures: Any) -> None:
    system = chaos.system
    before = {(m, v): [r.pid for r in system.records(m, v)] for m, v in system.services}
    system.plane.kill()
    killed = time.monotonic()
    time.sleep(2)  # the load runs on with no control plane at all
    plane = system.start_plane()
    plane.wait(plane.leads, 30, "the restarted control plane to lead")
    wait(system.healthy, 30, "reconciliation", step=0.2)
    recovery = time.monotonic() - killed
    after = {(m, v): [r.pid for r in system.records(m, v)] for m, v in system.services}
    _settle(chaos)
    sent, failed = _finish(chaos)
    running = system.orchestrator.processes()
    figures(
        "3 kill -9 the control plane, restart it",
        calls_sent=sent,
        calls_failed=sum(failed.values()),
        recovery_s=round(recovery, 2),
        instances=len(running),
    )
    assert not failed, failed
    assert after == before  # every instance adopted, none restarted
    assert sorted(running) == sorted(p for pids in after.values() for p in pids)  # no orphan


def _refusal(call: Callable[[], object]) -> ControlError:
    """The error status the control plane answered ``call`` with (no answer: raised)."""
    try:
        answer = call()
    except ControlError as exc:
        if exc.status is None:
            raise
        return exc
    raise AssertionError(f"expected an error status, got {answer!r}")


def _status(call: Callable[[], object]) -> int:
    """200 when ``call`` succeeds, else the error status it was answered."""
    try:
        call()
    except ControlError as exc:
        if exc.status is None:
            raise
        return exc.status
    return 200


def _published(
    control: ControlClient, model: str, body: dict[str, Any]
) -> tuple[int, PublishResult | None]:
    """(200, the answer), or (the error status, None), or (0, None) when the publish timed out."""
    try:
        return 200, control.publish(model, body)
    except Unreachable as exc:
        if not exc.timed_out:
            raise
        return 0, None
    except ControlError as exc:
        return exc.status or 0, None


def _publish_code(chaos: Chaos, model: str, reason: str) -> tuple[int, Any]:
    body = {"routes": [{"version": "1", "weight": 100}], "reason": reason}
    try:
        return 200, chaos.system.plane.control.publish(model, body).model_dump(mode="json")
    except ControlError as exc:
        if exc.status is None:
            raise
        return exc.status, {"error": exc.error, "detail": exc.detail}


OUTAGE_S = 60.0


def _session(store: ConfigStore) -> int | None:
    session: int | None = store.session_id
    return session


def _sessions_by_kind(system: System, sdks: Sequence[ModelClient]) -> dict[str, set[int | None]]:
    """The ZooKeeper session of every client, by kind: the bare store's and the SDKs' from their
    clients, the eas-servers' and the control plane's as the owners of their ephemeral nodes
    (instance registrations; the control plane's leader-election candidate), from the leader."""
    chroot = urlsplit(system.url).path
    owners = system.ensemble.ephemerals()

    def owning(service: str) -> set[int | None]:
        prefix = f"{chroot}{instances_path(service)}/"
        return {s for s, paths in owners.items() if any(p.startswith(prefix) for p in paths)}

    return {
        "bare store": {_session(system.store)},
        "sdk": {_session(sdk._store) for sdk in sdks},
        "eas-server": set().union(*(owning(service) for service in system.services.values())),
        "control plane": owning(CONTROL_SERVICE),
    }


def _reconnect_s(
    system: System, sdks: Sequence[ModelClient], back: float
) -> dict[str, list[float]]:
    """Seconds from ``back`` (wall clock) to the moment each client's connection was accepted
    (``est`` of ``cons`` on the member it is connected to), by kind. A session that expired and
    was replaced counts as its new one. Waits (bounded) until every client of every kind is
    connected: the measurement fails rather than silently leaving a kind out."""
    expected = {
        "bare store": 1,
        "sdk": len(sdks),
        "eas-server": sum(INSTANCES.values()),
        "control plane": 1,
    }
    found: dict[str, list[float]] = {}

    def connected() -> bool:
        est = {c.session_id: c.established for c in system.ensemble.connections()}
        sessions = _sessions_by_kind(system, sdks)
        found.clear()
        for kind, ids in sessions.items():
            found[kind] = sorted(est[s] - back for s in ids if s in est)
        return all(len(found[kind]) == n for kind, n in expected.items())

    try:
        wait(connected, 15, "every client to be connected", step=0.2)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: connected {found}, expected {expected}") from None
    return found


@pytest.mark.timeout(OUTAGE_S + 90)
def test_4_the_whole_ensemble_down(chaos: Chaos, figures: Any) -> None:
    system = chaos.system
    plane = system.plane
    history = {m: plane.call("GET", f"/api/v1/models/{m}/releases")["releases"] for m in "ab"}
    tables = {m: system.store.get(m, group="models") for m in "ab"}
    spare = onnx_models.tagged(system.root / f"b-spare-{time.monotonic_ns()}", 2.0)
    body = {"name": "b", "uri": f"file://{spare}"}
    undeployed = plane.call("POST", "/api/v1/models", 201, json=body)["version"]
    seen = _status(lambda: plane.control.get_version("b", undeployed))
    wait(
        lambda: _status(lambda: plane.control.get_version("b", undeployed)) == 200,
        10,
        "the control plane to read its own registration back",
    )
    second = system.sdk(CollectorRegistry())  # a second SDK, idle through the outage
    try:
        for model, inputs in CALLS:
            second.predict(model, inputs)
        during = chaos.load.sent
        system.ensemble.stop(kill=True)
        down = time.monotonic()
        # Writes fail cleanly while the store is away, and change nothing.
        code, doc = _publish_code(chaos, "b", "during the outage")
        deploy = _refusal(lambda: plane.control.deploy("b", undeployed, {}))
        assert (code, deploy.status) == (503, 503), (doc, deploy)
        assert isinstance(deploy, Unavailable) and deploy.retry_after
        wait(lambda: time.monotonic() - down > OUTAGE_S, OUTAGE_S + 5, "the outage", step=1)
        served = chaos.load.sent - during
        for server in system.ensemble:
            server.start(wait=False)
        for server in system.ensemble:
            server.wait_ready()
        back = time.monotonic()
        back_wall = time.time()  # the same moment, on the clock of ZooKeeper's ``est``
        # The control plane takes writes again once its session is back.
        wait(lambda: _publish_code(chaos, "b", "probe")[0] == 200, 30, "publishes to work")
        code, doc = _publish_code(chaos, "b", "after the outage")
        published = time.monotonic()
        revision = doc["revision"]
        reached = wait(
            lambda: all(s.routes("b").revision == revision for s in (chaos.sdk, second)),
            5,
            "the publish to reach every SDK",
            step=0.01,
        )
        wait(system.healthy, 30, "every instance to be registered again", step=0.2)
        recovery = time.monotonic() - back
        reconnect = _reconnect_s(system, (chaos.sdk, second), back_wall)
        _settle(chaos)
        sent, failed = _finish(chaos)
        after = {m: plane.call("GET", f"/api/v1/models/{m}/releases")["releases"] for m in "ab"}
    finally:
        second.close()
    lost = [
        r["revision"]
        for m in "ab"
        for r in history[m]
        if r["revision"] not in {a["revision"] for a in after[m]}
    ]
    figures(
        f"4 the whole ensemble down {OUTAGE_S:g} s",
        calls_sent=sent,
        calls_failed=sum(failed.values()),
        calls_during_outage=served,
        publish_reached_sdks_s=round(reached, 3),
        publish_after_return_s=round(published - back, 2),
        recovery_s=round(recovery, 2),
        revisions_lost=len(lost),
        registered_version_read_back_at_once=seen == 200,
        # min and max over the clients of each kind; not asserted (docs/reliability.md)
        reconnect_s={k: [round(min(v), 3), round(max(v), 3)] for k, v in reconnect.items()},
    )
    assert not failed, failed
    assert served > 1000, "calls stalled while the store was down"
    assert reached <= 1.0
    assert not lost
    assert system.store.get("a", group="models") == tables["a"]
    assert tables["b"] is not None


def test_8_a_failing_blade_instance_falls_back_to_plain(chaos: Chaos, figures: Any) -> None:
    system = chaos.system
    (victim,) = system.records("a", "2")
    before = chaos.fallbacks()
    os.kill(victim.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait(lambda: chaos.fallbacks() > before, 10, "a counted fallback", step=0.05)
    wait(system.healthy, 30, "the blade instance to be restarted", step=0.2)
    recovery = time.monotonic() - killed
    _settle(chaos)
    sent, failed = _finish(chaos)
    fallbacks = chaos.fallbacks() - before
    figures(
        "8 a blade instance fails (kill -9)",
        calls_sent=sent,
        calls_failed=sum(failed.values()),
        fallbacks_counted=int(fallbacks),
        recovery_s=round(recovery, 2),
    )
    assert not failed, failed
    assert fallbacks > 0


def _retries(chaos: Chaos, model: str) -> float:
    return sum(
        sample.value
        for metric in chaos.registry.collect()
        for sample in metric.samples
        if sample.name == "autoai_client_retries_total" and sample.labels.get("model") == model
    )


def test_7_a_hung_instance(chaos: Chaos, figures: Any) -> None:
    """SIGSTOP one of two instances: it accepts connections and never answers. Calls that land
    on it move to the other after ``attempt_timeout``, the breaker ejects it, and after SIGCONT
    it serves again."""
    system = chaos.system
    victim = system.records("b", "1")[0]
    url = f"http://127.0.0.1:{victim.port}"
    mark, retries_before = len(chaos.load.durations), _retries(chaos, "b")
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        time.sleep(4.0)
        during = chaos.load.durations[mark:]
        retried = _retries(chaos, "b") - retries_before
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    resumed = time.monotonic()
    served = served_requests(url)
    back = wait(
        lambda: served_requests(url) > served + 20, 30, "the resumed instance to serve again"
    )
    _settle(chaos)
    sent, failed = _finish(chaos)
    figures(
        "7 SIGSTOP one of two instances",
        calls_sent=sent,
        calls_failed=sum(failed.values()),
        slowest_call_s=round(max(during), 3),
        retried_calls=int(retried),
        calls_while_stopped=len(during),
        back_after_sigcont_s=round(back, 2),
    )
    assert not failed, failed
    assert max(during) < ATTEMPT_TIMEOUT + 1.5  # one attempt on the hung instance at most
    assert 1 <= retried <= 100 and len(during) > 200  # ejected: few calls paid the attempt
    assert time.monotonic() - resumed < 30


def test_2_rolling_sigterm_restart_of_every_instance(chaos: Chaos, figures: Any) -> None:
    """Every instance in turn gets SIGTERM (it deregisters, drains, exits 0); the reconciler
    starts its replacement; the next one goes once the system is whole again."""
    system = chaos.system
    started = time.monotonic()
    replaced = 0
    for model, version in sorted(system.services):
        for victim in system.records(model, version):
            os.kill(victim.pid, signal.SIGTERM)
            wait(partial(_gone, victim.pid), 30, f"pid {victim.pid} to drain and exit")
            wait(
                partial(_replaced, system, model, version, victim.pid),
                30,
                "its replacement to be ready and discovered",
                step=0.2,
            )
            replaced += 1
    took = time.monotonic() - started
    _settle(chaos)
    sent, failed = _finish(chaos)
    figures(
        "2 SIGTERM rolling restart of every instance",
        calls_sent=sent,
        calls_failed=sum(failed.values()),
        instances_restarted=replaced,
        rolling_restart_s=round(took, 2),
        fallbacks_counted=int(chaos.fallbacks()),
    )
    assert not failed, failed
    assert replaced == 5


def _gone(pid: int) -> bool:
    return not alive(pid)  # a zombie (exited, not yet reaped) is gone


def _replaced(system: System, model: str, version: str, pid: int) -> bool:
    return pid not in {r.pid for r in system.records(model, version)} and system.healthy()


_COLD_SDK = """
import sys
import numpy as np
from prometheus_client import CollectorRegistry
from autoai.sdk import ModelClient

url, snapshot, calls = sys.argv[1], sys.argv[2], int(sys.argv[3])
bert = {"input_ids": np.arange(1, 9, dtype=np.int64).reshape(1, 8),
        "attention_mask": np.ones((1, 8), np.int64)}
plus_one = {"x": np.zeros((1, 4), np.float32)}
ok = 0
with ModelClient(url, registry=CollectorRegistry(), snapshot_dir=snapshot) as sdk:
    for i in range(calls):
        sdk.predict("a", bert)
        sdk.predict("b", plus_one)
        ok += 2
print("ok", ok, flush=True)
"""


@pytest.mark.timeout(120)
def test_6_a_new_sdk_process_starts_while_the_store_is_down(chaos: Chaos, figures: Any) -> None:
    """The ensemble is down; a new SDK process on this host starts from the snapshot that the
    running SDK keeps, and routes calls to the instances it lists."""
    system = chaos.system
    snapshot = system.root / "sdk-snapshot"
    assert snapshot.is_dir(), "the running SDK keeps a snapshot here"
    system.ensemble.stop(kill=True)
    try:
        t0 = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", _COLD_SDK, system.url, str(snapshot), "50"],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
        took = time.monotonic() - t0
    finally:
        for server in system.ensemble:
            server.start(wait=False)
        for server in system.ensemble:
            server.wait_ready()
    _settle(chaos)
    sent, failed = _finish(chaos)
    figures(
        "6 a new SDK process while the store is down",
        calls_sent=sent,
        calls_failed=sum(failed.values()),
        cold_sdk_calls_ok=int(done.stdout.split()[-1]) if done.returncode == 0 else 0,
        cold_sdk_process_s=round(took, 2),
    )
    assert done.returncode == 0 and done.stdout.split() == ["ok", "100"], done.stderr[-2000:]
    assert not failed, failed


STREAM_PUBLISHES = 60
"""Publishes of scenario 5, below the 100 revisions the store keeps, so all stay in history."""


def _weights(table: Any) -> tuple[tuple[str, int], ...]:
    return tuple((r.version, r.weight) for r in table.routes)


@pytest.mark.timeout(150)
def test_5_zookeeper_leader_killed_during_a_stream_of_publishes(chaos: Chaos, figures: Any) -> None:
    """Model ``a`` is republished every 50 ms with new weights through the REST API while the
    ensemble's leader is SIGKILLed and restarted. Two SDKs sample their route table all along:
    every table they used must be a published revision, whole (its weights are that revision's
    in the history), and their revisions never go back."""
    system = chaos.system
    second = system.sdk(CollectorRegistry())
    sdks = (chaos.sdk, second)
    seen: list[set[tuple[int, tuple[tuple[str, int], ...]]]] = [set(), set()]
    backwards: list[tuple[int, int]] = []
    acked: dict[int, dict[str, int]] = {}
    refused: Counter[int] = Counter()
    took: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        last = [0, 0]
        while not stop.is_set():
            for n, sdk in enumerate(sdks):
                table = sdk.routes("a")
                seen[n].add((table.revision, _weights(table)))
                if table.revision < last[n]:
                    backwards.append((last[n], table.revision))
                last[n] = table.revision
            time.sleep(0.002)

    def publish(weights: dict[str, int], control: ControlClient) -> None:
        body = {"routes": [{"version": v, "weight": w} for v, w in weights.items()]}
        started = time.monotonic()
        status, answer = _published(control, "a", body)
        if status:  # 0: timed out, outcome unknown: neither acknowledged nor assumed lost
            took.append(time.monotonic() - started)
        if answer is not None:
            acked[answer.revision] = weights
        else:
            refused[status] += 1

    http = system.plane.process.client(timeout=20)
    sampler = threading.Thread(target=sample, daemon=True)
    killed_at = restarted_at = 0.0
    try:
        for sdk in sdks:
            sdk.predict(*CALLS[0])
        sampler.start()
        leader = system.ensemble.leader()
        for i in range(STREAM_PUBLISHES):
            share = 10 + (i * 7) % 31  # 10..40 % to the blade version, different each time
            publish({"1": 100 - share, "2": share}, http)
            if i == 15:
                leader.stop(kill=True)
                killed_at = time.monotonic()
            if i > 15 and not restarted_at and time.monotonic() - killed_at > 3:
                leader.start(wait=False)
                restarted_at = time.monotonic()
            time.sleep(0.05)
        if not restarted_at:
            leader.start(wait=False)
        leader.wait_ready()

        # the last publish restores the fixture's 90/10, retried until acknowledged
        def restored() -> bool:
            count = len(acked)
            publish({"1": 90, "2": 10}, http)
            return len(acked) > count

        wait(restored, 30, "the final publish to be acknowledged", step=0.5)
        last = max(acked)
        reached = wait(
            lambda: all(s.routes("a").revision == last for s in sdks),
            10,
            "every SDK to reach the last revision",
            step=0.01,
        )
        stop.set()
        sampler.join(10)
        history = {
            r["revision"]: r["routes"]
            for r in system.plane.call("GET", "/api/v1/models/a/releases?limit=100")["releases"]
        }
        _settle(chaos)
        sent, failed = _finish(chaos)
    finally:
        stop.set()
        http.close()
        second.close()
    lost = sorted(r for r in acked if r not in history)
    changed = sorted(r for r, w in acked.items() if history.get(r) != w)
    used = set().union(*seen)
    # whole: every table an SDK used is a revision in the history, with that revision's weights
    torn = sorted((rev, w) for rev, w in used if history.get(rev) != dict(w))
    figures(
        "5 ZooKeeper leader killed during a stream of publishes",
        calls_sent=sent,
        calls_failed=sum(failed.values()),
        publishes_acknowledged=len(acked),
        publishes_refused=dict(refused),
        acknowledged_lost=len(lost),
        revisions_seen_by_sdks=len({rev for rev, _ in used}),
        torn_tables=len(torn),
        slowest_publish_s=round(max(took), 3),
        last_revision_reached_all_sdks_s=round(reached, 3),
    )
    assert not failed, failed
    assert len(acked) >= STREAM_PUBLISHES // 2
    assert not lost, f"acknowledged publishes missing from history: {lost}"
    assert not changed, f"history holds other weights for acknowledged revisions: {changed}"
    assert not torn, torn
    assert not backwards, backwards
    assert set(refused) <= {503, 0}, refused


def _repo_files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.timeout(120)
def test_9_disk_full_during_register(chaos: Chaos, figures: Any) -> None:
    """The repository's filesystem is filled to within 128 KiB; registering a 460 KB model (an
    upload, then a file:// URI) is 507 and leaves no file and no version; the published models
    keep serving; once room is back the same registration succeeds, with the next number."""
    system = chaos.system
    if system.small_disk_refused is not None:
        pytest.skip(f"the repository is not on a small tmpfs: {system.small_disk_refused}")
    plane = system.plane
    repo = system.root / "repo"
    seed = time.monotonic_ns() % 10**6 + 2  # new bytes: a copy of a stored file needs no room
    model = onnx_models.tiny_bert(system.root / f"c-{seed}", hidden=64, layers=2, seed=seed)
    versions = [v["version"] for v in plane.call("GET", "/api/v1/models/b")["versions"]]
    filler = disks.fill(repo, leave=128 << 10)
    try:
        files = _repo_files(repo)
        upload = _refusal(lambda: plane.control.register_model("b", file=model, filename="c.onnx"))
        by_uri = _refusal(lambda: plane.control.register_model("b", uri=f"file://{model}"))
        after = _repo_files(repo)
        kept = [v["version"] for v in plane.call("GET", "/api/v1/models/b")["versions"]]
    finally:
        filler.unlink()
    registered = plane.call(
        "POST", "/api/v1/models", 201, json={"name": "b", "uri": f"file://{model}"}
    )
    plane.call("DELETE", f"/api/v1/models/b/versions/{registered['version']}", 204)
    _settle(chaos)
    sent, failed = _finish(chaos)
    figures(
        "9 disk full during register",
        calls_sent=sent,
        calls_failed=sum(failed.values()),
        upload_status=upload.status,
        uri_status=by_uri.status,
        files_left_behind=len(set(after) - set(files)),
        versions_added=len(kept) - len(versions),
    )
    assert (upload.status, by_uri.status) == (507, 507), (upload, by_uri)
    assert "no room" in upload.error
    assert upload.detail["errno"] == "ENOSPC"
    assert after == files  # no temporary file, no blob
    assert kept == versions  # no partial version
    assert int(registered["version"]) > max(int(v) for v in versions)
    assert not failed, failed
