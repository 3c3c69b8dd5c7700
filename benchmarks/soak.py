"""Soak: the assembled system under steady load, publishes and instance kills, for an hour.

    python -m benchmarks.soak [--duration 3600] [--store zk|sqlite] [--instances 2] [--json PATH]

1. a fresh work directory (``--work-dir``, else a temporary one, removed afterwards): a standalone
   ZooKeeper from Debian's package (``config_store.testing``, ``--store zk``) or the embedded
   sqlite store (``--store sqlite``); ``autoai up`` on 127.0.0.1 in its own session;
2. two versions of a tiny ONNX model (``autoai.testing.models.tagged``, ``y = x + tag``)
   registered and deployed, ``--instances`` eas-server processes each, published 50/50;
3. the maximum QPS measured through the SDK with a short closed-loop ramp (``autoai.bench``,
   concurrency 1, 4, 16, 32); the soak's rate is ``--load`` (70 %) of the best step;
4. open-loop SDK load at that rate (``autoai.bench``, Poisson arrivals, latency from the intended
   send time) for ``--duration`` seconds, in windows of 10 minutes (1 minute when the run is
   shorter than 20 minutes); meanwhile a publish every ``--publish-every`` s alternating the
   weights 90/10 and 10/90, and every ``--restart-every`` s one eas-server SIGKILLed by PID (round
   robin over the instances, none in the last 30 s): the control plane's reconciler restarts it, and
   the time until the deployment shows a new ready process is recorded;
5. the report (printed tables, ``--json``): errors by kind, calls/QPS/p50/p99 per window, publishes
   and restarts, RSS and open file descriptors of every process at the start and the end of the
   load (growth over 10 % flagged), and the store's size (ZooKeeper ``mntr``, or sqlite rows).

ZooKeeper runs with its heap sized and touched up front (``ZK_JVM``), as in production, and the
report adds its live heap after a full collection (``jcmd``, where a JDK is installed): the RSS of
a JVM started without them grows toward ``-Xmx`` as pages are first touched, leak or not.

Every process it starts is stopped by PID at the end, also on Ctrl-C (the first one ends the
current window and reports what was measured) and on SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import math
import os
import secrets
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from autoai.bench import BenchConfig, Step, map_big_blocks, run
from autoai.control import ControlClient, ControlError
from autoai.schema import LocalInstanceHealth
from autoai.testing import ControlPlaneExited, ControlPlaneProcess, pids_naming, terminate
from autoai.testing.models import tagged
from config_store.testing import ZooKeeperServer, four_letter_word

from .soak_report import (
    console,
    print_report,
    process_rows,
    snapshot,
    usage_series,
    window_rows,
)

MODEL = "soak"
RAMP = (1, 4, 16, 32)
RECOVERY_MARGIN_S = 30.0  # no instance is killed this near the end of the load
ZK_JVM = ("-Xms256m", "-Xmx256m", "-XX:+AlwaysPreTouch")
"""The heap sized and touched up front, as a production ZooKeeper is run: the JVM's RSS then
starts at its working size, and what grows is not pages of a heap it already owned."""


# --- processes ---------------------------------------------------------------------------------


def stop_pids(pids: list[int], mark: str, timeout: float) -> None:
    """SIGTERM, then SIGKILL after ``timeout``: only the PIDs whose command line names ``mark``
    (the work directory), so a reused PID is never signalled."""
    terminate(pids, timeout=timeout, mark=mark)


# --- the control plane -----------------------------------------------------------------------


def instances(control: ControlClient) -> dict[str, list[LocalInstanceHealth]]:
    """``{version: [instance, ...]}`` of the soak model's deployments (local processes)."""
    out: dict[str, list[LocalInstanceHealth]] = {}
    for d in control.deployments():
        if d.name == MODEL:
            out[d.version] = [i for i in d.instances if isinstance(i, LocalInstanceHealth)]
    return out


def publish(control: ControlClient, weights: dict[str, int], reason: str) -> int:
    routes = [{"version": v, "weight": w} for v, w in weights.items()]
    return control.publish(MODEL, {"routes": routes, "reason": reason}).revision


def start_control_plane(work: Path, store_url: str, token: str) -> ControlPlaneProcess:
    """``autoai up`` on a free loopback port, in its own session; waits for ``/healthz``.

    Raises:
        SystemExit: it exited or did not answer within 60 s.
    """
    plane = ControlPlaneProcess(
        work, store_url=store_url, token=token, run_dir=work / "instances", detach=True
    )
    try:
        return plane.start(timeout=60)
    except ControlPlaneExited as exc:
        raise SystemExit(str(exc)) from None


def deploy_model(control: ControlClient, work: Path, instances: int) -> None:
    """Two versions of ``tagged`` (``y = x + 1`` and ``x + 2``), deployed, published 50/50."""
    for tag in (1.0, 2.0):
        path = tagged(work / "models", tag)
        version = control.register_model(MODEL, file=path).version
        spec = {"processor": "onnx", "metadata": {"instance": instances, "cpu": 1}}
        control.wait_job(control.deploy(MODEL, version, spec), timeout=180)
    publish(control, {"1": 50, "2": 50}, "soak: start")


# --- the store -------------------------------------------------------------------------------


def store_size(kind: str, zk: ZooKeeperServer | None, db: Path) -> dict[str, int]:
    """ZooKeeper's ``mntr`` node count, watches and data size, and its JVM's live heap after a
    full collection (where ``jcmd`` is installed); or the sqlite store's rows."""
    if kind == "zk":
        assert zk is not None
        wanted = ("zk_znode_count", "zk_watch_count", "zk_approximate_data_size")
        out: dict[str, int] = {}
        for line in four_letter_word(zk.port, "mntr").splitlines():
            key, _, value = line.partition("\t")
            if key in wanted:
                out[key] = int(value)
        if (live := zk.live_heap_kib()) is not None:
            out["zk_live_heap_kib"] = live
        return out
    uri = f"file:{db}?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5)) as conn:
        out = {
            f"{table}_rows": int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
            for table in ("config", "history", "changes", "instances")
        }
    wal = db.with_name(db.name + "-wal")
    out["file_bytes"] = db.stat().st_size + (wal.stat().st_size if wal.exists() else 0)
    return out


# --- the faults ------------------------------------------------------------------------------


def sample_windows(
    stop: threading.Event, every: float, take: Callable[[], dict[str, Any]]
) -> list[dict[str, Any]]:
    """``take()`` at the end of every window until ``stop`` (the last may come just before the
    end snapshot); each with ``at_s``, seconds since the load began. The list fills as it runs."""
    out: list[dict[str, Any]] = []
    began = time.monotonic()

    def loop() -> None:
        k = 1
        while not stop.wait(max(0.0, began + k * every - time.monotonic())):
            with contextlib.suppress(ControlError, OSError):
                out.append({"at_s": round(time.monotonic() - began), **take()})
            k += 1

    threading.Thread(target=loop, name="soak-usage", daemon=True).start()
    return out


@dataclass
class Restart:
    at_s: float
    version: str
    pid: int
    new_pid: int | None = None
    recovery_s: float | None = None


@dataclass
class Chaos:
    """Publishes and instance kills on their own thread while the load runs."""

    control: ControlClient
    publish_every: float
    restart_every: float
    duration: float
    stop: threading.Event = field(default_factory=threading.Event)
    began: float = 0.0
    publishes: list[float] = field(default_factory=list)
    publish_errors: Counter[str] = field(default_factory=Counter)
    restarts: list[Restart] = field(default_factory=list)
    seen_pids: set[int] = field(default_factory=set)
    killers: list[threading.Thread] = field(default_factory=list)

    def run(self) -> None:
        self.began = time.monotonic()
        weights = itertools.cycle(({"1": 90, "2": 10}, {"1": 10, "2": 90}))
        victims = itertools.count()
        next_publish = self.began + self.publish_every
        next_restart = self.began + self.restart_every
        while not self.stop.wait(max(0.0, min(next_publish, next_restart) - time.monotonic())):
            now = time.monotonic()
            if now >= next_publish:
                next_publish += self.publish_every
                try:
                    publish(self.control, next(weights), "soak: alternate")
                    self.publishes.append(now - self.began)
                except ControlError as exc:
                    self.publish_errors[type(exc).__name__ + ": " + str(exc)[:80]] += 1
            if now >= next_restart:
                next_restart += self.restart_every
                if now - self.began > self.duration - RECOVERY_MARGIN_S:
                    continue  # too near the end for the replacement to be seen
                # its own thread: waiting for the replacement must not hold the publishes back
                killer = threading.Thread(target=self._kill_one, args=(next(victims),), daemon=True)
                killer.start()
                self.killers.append(killer)

    def _kill_one(self, k: int) -> None:
        """SIGKILL instance ``k`` (round robin), then wait for the reconciler's replacement."""
        try:
            found = instances(self.control)
        except ControlError as exc:
            self.publish_errors["instances list: " + str(exc)[:80]] += 1
            return
        flat = [(v, i) for v in sorted(found) for i in found[v]]
        if not flat:
            return
        version, victim = flat[k % len(flat)]
        pid = victim.pid
        before = {i.pid for i in found[version]}
        t0 = time.monotonic()
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        event = Restart(t0 - self.began, version, pid)
        self.restarts.append(event)
        deadline = t0 + 120
        while not self.stop.is_set() and time.monotonic() < deadline:
            with contextlib.suppress(ControlError):
                now = instances(self.control).get(version, [])
                self.seen_pids.update(i.pid for i in now)
                fresh = [i.pid for i in now if i.pid not in before]
                # recovered: as many instances as before, the killed one replaced, all ready
                if fresh and len(now) == len(before) and all(i.ready for i in now):
                    event.new_pid = fresh[0]
                    event.recovery_s = time.monotonic() - t0
                    return
            time.sleep(0.2)


# --- the report ------------------------------------------------------------------------------


def processes(control: ControlClient, cp_pid: int, zk: ZooKeeperServer | None) -> dict[str, int]:
    """Role -> PID of every process of the system, the load generator (this process) included."""
    out = {"control plane": cp_pid, "load generator (soak.py)": os.getpid()}
    if zk is not None and zk.pid is not None:
        out["zookeeper"] = zk.pid
    for version, found in sorted(instances(control).items()):
        for n, instance in enumerate(found):
            out[f"eas-server v{version}#{n}"] = instance.pid
    return out


# --- main ------------------------------------------------------------------------------------


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends the run as Ctrl-C does, so the cleanup runs."""

    def raise_interrupt(_sig: int, _frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def measure_max(store_url: str) -> float:
    report = run(
        BenchConfig(MODEL, store=store_url, steps=[Step(concurrency=c) for c in RAMP], warmup=1,
                    duration=4)
    )  # fmt: skip
    for step in report.steps:
        console.print(f"  ramp: concurrency {step.step.concurrency}: {step.client.qps:.0f} QPS")
    return max((s.client.qps for s in report.steps), default=0.0)


def soak(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    token = secrets.token_urlsafe(24)
    zk: ZooKeeperServer | None = None
    cp: ControlPlaneProcess | None = None
    control: ControlClient | None = None
    chaos: Chaos | None = None
    pids: set[int] = set()
    try:
        if args.store == "zk":
            zk = ZooKeeperServer.standalone(work / "zk", jvm_options=ZK_JVM)
            zk.start()
            store_url = f"zk://{zk.address}/autoai-soak"
        else:
            store_url = f"sqlite://{work / 'store.db'}"
        cp = start_control_plane(work, store_url, token)
        console.print(f"store {store_url}; autoai up {cp.url} (pid {cp.pid}); work dir {work}")
        control = cp.client(trust_env=False)
        deploy_model(control, work, args.instances)
        roles = processes(control, cp.pid, zk)
        pids.update(roles.values())
        console.print(f"deployed: {roles}")
        max_qps = measure_max(store_url)
        if max_qps <= 0:
            raise SystemExit("the ramp measured no successful call")
        rate = args.load * max_qps
        window = 600.0 if args.duration >= 1200 else 60.0
        n = max(1, math.ceil(args.duration / window - 1e-9))
        window = args.duration / n
        chaos = Chaos(control, args.publish_every, args.restart_every, args.duration)
        loadavg_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
        store_start = store_size(args.store, zk, work / "store.db")
        start = snapshot(roles)
        console.print(
            f"soak: {rate:.0f} QPS for {args.duration:.0f} s in {n} windows of {window:.0f} s"
        )
        thread = threading.Thread(target=chaos.run, name="soak-chaos", daemon=True)
        thread.start()
        store_db = work / "store.db"
        series = sample_windows(
            chaos.stop,
            window,
            lambda: {
                "usage": snapshot(processes(control, cp.pid, zk)),
                "store": store_size(args.store, zk, store_db),
            },
        )
        report = run(
            BenchConfig(MODEL, store=store_url, steps=[Step(rate=rate)] * n, warmup=0,
                        duration=window),
            on_interrupt=chaos.stop.set,
        )  # fmt: skip
        chaos.stop.set()
        thread.join(timeout=30)
        for killer in chaos.killers:
            killer.join(timeout=5)
        end_roles = processes(control, cp.pid, zk)
        pids.update(end_roles.values())
        end = snapshot(end_roles)
        store_end = store_size(args.store, zk, store_db)
        restarted_at = [r.at_s for r in chaos.restarts]
        errors: Counter[str] = Counter()
        for step in report.steps:
            errors.update(step.client.errors)
        return {
            "config": {
                "store": args.store, "instances": args.instances, "duration_s": args.duration,
                "load": args.load, "rate": rate, "publish_every_s": args.publish_every,
                "restart_every_s": args.restart_every, "window_s": window,
                "restart_kind": "SIGKILL; the control plane's reconciler restarts it",
            },
            "interrupted": report.interrupted,
            "max_qps": max_qps,
            "loadavg_start": loadavg_start,
            "loadavg_end": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "cpus": os.cpu_count(),
            "calls": sum(s.client.requests + s.client.error_count for s in report.steps),
            "errors": dict(errors),
            "windows": window_rows(report, chaos.publishes, restarted_at, window),
            "publishes_s": [round(t, 1) for t in chaos.publishes],
            "publish_errors": dict(chaos.publish_errors),
            "restarts": [asdict(r) for r in chaos.restarts],
            "processes": process_rows(start, end),
            "usage_windows": usage_series(
                [("start", start, store_start), *((f"{x['at_s']} s", x["usage"], x["store"])
                 for x in series), ("end", end, store_end)]
            ),
            "store_start": store_start,
            "store_end": store_end,
        }  # fmt: skip
    finally:
        if chaos is not None:
            chaos.stop.set()
            pids.update(chaos.seen_pids, (r.new_pid for r in chaos.restarts if r.new_pid))
        if control is not None:
            with contextlib.suppress(ControlError):
                for found in instances(control).values():
                    pids.update(i.pid for i in found)
            control.close()
        if cp is not None:  # first, so that its reconciler restarts nothing we stop
            cp.stop(timeout=15)
        # and any instance the reconciler started after the last listing: its command line
        # names the work directory, which only this run's processes do
        pids.update(p for p in pids_naming(str(work)) if p != os.getpid())
        stop_pids(sorted(p for p in pids if p != os.getpid()), str(work), timeout=20)
        if zk is not None:
            zk.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds of load")
    parser.add_argument("--store", choices=["zk", "sqlite"], default="zk")
    parser.add_argument("--instances", type=int, default=2, help="eas-servers per version")
    parser.add_argument("--load", type=float, default=0.7, help="fraction of the measured max")
    parser.add_argument("--publish-every", type=float, default=10.0, help="seconds")
    parser.add_argument("--restart-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--json", type=Path, help="write the report here too")
    parser.add_argument("--work-dir", type=Path, help="keep everything here (default: a temp dir)")
    args = parser.parse_args(argv)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="autoai-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    map_big_blocks()  # the generator's heap as `autoai bench` runs it (docs/reliability.md)
    try:
        with sigterm_as_interrupt():
            doc = soak(args, work)
    except KeyboardInterrupt:
        console.print("interrupted before the load finished: everything started was stopped")
        return 130
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print_report(doc, RAMP)
    if args.json is not None:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
