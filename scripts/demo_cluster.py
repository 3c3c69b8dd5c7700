"""`make demo-cluster`: the control plane and two eas-server instances against a 3-node ZooKeeper
ensemble on loopback; one ZooKeeper node killed during SDK traffic, and no call fails.

1. deploy/local-ensemble.sh starts the ensemble (Debian's zookeeper package, no Docker) in the
   demo's own directory, ~/.autoai/demo-cluster/ensemble: a fresh one each run;
2. `autoai up --store zk://<all three nodes>/autoai` runs detached (own session, log and PID in
   ~/.autoai/demo-cluster, as `make demo` keeps its own);
3. the example model (scripts/build_models.py's, generated when there is none) is registered,
   deployed with two instances (EAS `metadata.instance: 2`) and published at 100 %;
4. SDK traffic (`autoai.sdk.ModelClient` worker threads, scripts/demo_traffic.py's Fleet) in four
   phases: all nodes up; the leader (or `--kill follower`) SIGKILLed by its PID a second into the
   phase; two nodes; the node started again (local-ensemble.sh start is idempotent: it starts only
   what is down). A table per phase: calls sent, failed, SDK retries, QPS, p50/p99;
5. everything it started is stopped again (undeploy through REST, the control plane by PID, the
   ensemble by its PID files), unless `--keep`, which leaves it running and prints how to stop it.

    python scripts/demo_cluster.py [--port 8080] [--seconds 4] [--concurrency 4] [--kill leader]
    python scripts/demo_cluster.py --stop      # stop what a --keep run left running
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from demo import connect as connect_api, console, deploy, example_model, pids_of, publish
from demo_controlplane import ControlPlane, admin_token, save_state, start, stop_previous
from demo_traffic import Fleet, Load, percentile_ms
from rich.table import Table

from autoai.control import ControlClient, ControlError
from autoai.testing import alive, free_port, port_free
from config_store import open_store
from config_store.testing import four_letter_word

REPO = Path(__file__).resolve().parents[1]
ENSEMBLE_SH = REPO / "deploy" / "local-ensemble.sh"
HOME = Path(os.environ.get("AUTOAI_DEMO_CLUSTER_HOME", Path.home() / ".autoai" / "demo-cluster"))
ENSEMBLE_DIR = HOME / "ensemble"
CHROOT = "/autoai"  # the chroot deploy/prometheus/prometheus.yml's serverset job reads
RPC = {"batching": True, "max_batch_size": 32, "max_batch_timeout": 5}


@dataclass(frozen=True)
class Node:
    """One ZooKeeper server of the ensemble, as local-ensemble.sh laid it out."""

    id: int
    port: int
    dir: Path

    @property
    def pid(self) -> int | None:
        try:
            pid = int((self.dir / "pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None

    def mode(self) -> str:
        """leader, follower, or down."""
        try:
            answer = four_letter_word(self.port, "srvr", timeout=1.0)
        except OSError:
            return "down"
        modes = [
            ln.split(":", 1)[1].strip() for ln in answer.splitlines() if ln.startswith("Mode:")
        ]
        return modes[0] if modes else "down"


def ensemble(command: str, *, show: bool = False, check: bool = True) -> str:
    """Run ``deploy/local-ensemble.sh COMMAND`` on the demo's directory; its stdout.

    Raises:
        SystemExit: it failed and ``check`` (with what it said).
    """
    done = subprocess.run(
        [str(ENSEMBLE_SH), command, str(ENSEMBLE_DIR)], capture_output=True, text=True, check=False
    )
    if show or (check and done.returncode != 0):
        console.print(done.stderr.rstrip(), markup=False)
    if check and done.returncode != 0:
        raise SystemExit(f"local-ensemble.sh {command} failed ({done.returncode})")
    return done.stdout


def nodes() -> list[Node]:
    out = []
    for cfg in sorted(ENSEMBLE_DIR.glob("zk*/zoo.cfg")):
        port = next(ln for ln in cfg.read_text().splitlines() if ln.startswith("clientPort="))
        out.append(Node(int(cfg.parent.name[2:]), int(port.split("=")[1]), cfg.parent))
    return out


def describe(ns: list[Node]) -> str:
    modes = {n.id: n.mode() for n in ns}
    up = sum(m != "down" for m in modes.values())
    leader = [f"zk{i}" for i, m in modes.items() if m == "leader"]
    return f"{up}/{len(ns)} up, {leader[0] if leader else 'no'} leads"


def start_control_plane(port: int, token: str, store_url: str) -> ControlPlane:
    """``autoai up`` on the ensemble, detached, in demo_controlplane's state layout, so that its
    ``stop_previous`` stops this one too.

    Raises:
        SystemExit: it exited or did not answer ``/healthz`` within 60 s.
    """
    return start(HOME, port, token, store_url)


def retries(fleet: Fleet) -> float:
    """The SDK's retries so far (each worker's own registry)."""
    total = 0.0
    for _, registry in fleet.workers:
        for family in registry.collect():
            for s in family.samples:
                if s.name == "autoai_client_retries_total":
                    total += s.value
    return total


class _Drops(logging.Handler):
    """Counts kazoo's "Connection dropped" warnings (the SDK's store reconnecting) instead of
    letting them interleave with the tables."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Connection dropped"):
            self.count += 1


@dataclass
class Phase:
    name: str
    zookeeper: str
    load: Load
    retries: float
    drops: int

    @property
    def calls(self) -> list[float]:
        return [x for lat in self.load.latencies.values() for x in lat]


def phase_table(phases: list[Phase], concurrency: int) -> Table:
    table = Table(
        title=f"SDK traffic through a ZooKeeper node failure ({concurrency} worker threads)",
        title_justify="left",
        caption="ZK drops: connections of the SDK's store to a ZooKeeper node lost "
        "(it reconnects to another node); calls = sent (succeeded + failed); "
        "retries: the SDK moved a call to the other instance; p50/p99 client-side",
    )
    columns = ("phase", "ZooKeeper", "ZK drops", "calls", "failed", "retries", "QPS")
    for col in (*columns, "p50 ms", "p99 ms"):
        table.add_column(col, justify="left" if col in ("phase", "ZooKeeper") else "right")
    for p in phases:
        ok = p.calls
        table.add_row(
            p.name, p.zookeeper, str(p.drops), str(len(ok) + p.load.errors), str(p.load.errors),
            f"{p.retries:.0f}", f"{len(ok) / p.load.seconds:.1f}",
            f"{percentile_ms(ok, 0.5):.1f}" if ok else "-",
            f"{percentile_ms(ok, 0.99):.1f}" if ok else "-",
        )  # fmt: skip
    sent = sum(len(p.calls) + p.load.errors for p in phases)
    failed = sum(p.load.errors for p in phases)
    drops = sum(p.drops for p in phases)
    table.add_row("total", "", str(drops), str(sent), str(failed), "", "", "", "", style="bold")
    return table


def traffic(
    api: ControlClient,
    cp: ControlPlane,
    rows: list[dict[str, np.ndarray]],
    args: argparse.Namespace,
) -> list[Phase]:
    """The four phases; the kill happens a second into the second one.

    Raises:
        SystemExit: no node of the wanted kind to kill, or the killed one did not come back.
    """
    store = open_store(cp.store_url, snapshot_dir=cp.run_dir / "sdk-snapshot", failover_dir=False)
    fleet = Fleet(store, "minilm", rows, args.concurrency)
    phases: list[Phase] = []
    ns = nodes()
    drops = _Drops()
    kazoo_log = logging.getLogger("kazoo.client")
    kazoo_log.addHandler(drops)
    kazoo_log.propagate = False

    def window(name: str, seconds: float, during: threading.Thread | None = None) -> None:
        before_state, before_retries, before_drops = describe(ns), retries(fleet), drops.count
        if during is not None:
            during.start()
        load = fleet.run(seconds)
        if during is not None:
            during.join()
        state = before_state if during is None else f"{before_state} -> {describe(ns)}"
        moved = retries(fleet) - before_retries
        phases.append(Phase(name, state, load, moved, drops.count - before_drops))

    killed: list[Node] = []

    def kill() -> None:
        time.sleep(1.0)
        victims = [n for n in ns if n.mode() == args.kill and n.pid is not None]
        if not victims:
            console.print(f"  no {args.kill} with a live PID to kill")
            return
        victim, pid = victims[0], victims[0].pid
        assert pid is not None
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        console.print(f"  SIGKILL zk{victim.id} ({args.kill}, 127.0.0.1:{victim.port}, pid {pid})")
        while True:
            leaders = [n for n in ns if n is not victim and n.mode() == "leader"]
            if leaders or time.monotonic() - t0 > 30:
                break
            time.sleep(0.05)
        took = time.monotonic() - t0
        who = f"zk{leaders[0].id}" if leaders else "none"
        why = "elected" if args.kill == "leader" else "unchanged: a follower's loss needs no vote"
        console.print(f"  leader after the kill: {who} ({why}; serving {took:.2f} s after SIGKILL)")
        killed.append(victim)

    session = getattr(store, "session_id", None)
    try:
        revision = publish(api, {"1": 100}, "demo-cluster: all traffic to v1")
        fleet.wait_revision(revision)
        fleet.run(1.0)  # warm-up: connections, first batches
        window("1. all nodes up", args.seconds)
        window(f"2. {args.kill} killed", args.seconds * 1.5, threading.Thread(target=kill))
        if not killed:
            raise SystemExit(f"no ZooKeeper {args.kill} was killed")
        window("3. two nodes", args.seconds)
        victim = killed[0]
        ensemble("start")  # idempotent: starts only the node that is down, on its old port
        console.print(f"  zk{victim.id} started again (pid {victim.pid}): {victim.mode()}")
        window(f"4. zk{victim.id} back", args.seconds)
        now = getattr(store, "session_id", None)
        kept = "kept" if now == session else f"LOST (now {now:#x})" if now else "LOST"
        console.print(f"the SDK's ZooKeeper session {session:#x}: {kept}")
    finally:
        fleet.close()
        store.close()
        kazoo_log.removeHandler(drops)
        kazoo_log.propagate = True
    return phases


def stop_all(token: str) -> None:
    """The control plane and its instances (demo_controlplane.stop_previous), then the ensemble:
    only the PIDs they recorded."""
    for line in stop_previous(HOME, token):
        console.print(line)
    if ENSEMBLE_DIR.exists():
        ensemble("clean", show=True)


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except ControlError as exc:  # what the control plane said (everything was stopped), no trace
        raise SystemExit(f"the control plane at {exc.url}: {exc}") from None


def run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=int(os.environ.get("AUTOAI_DEMO_PORT", 8080)))
    parser.add_argument("--seconds", type=float, default=4.0, help="traffic per phase")
    parser.add_argument("--concurrency", type=int, default=4, help="SDK worker threads")
    parser.add_argument("--kill", choices=["leader", "follower"], default="leader")
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--stop", action="store_true", help="stop what a --keep run left")
    args = parser.parse_args(argv)
    began = time.monotonic()
    token, token_from = admin_token(HOME)
    stop_all(token)  # a previous run's leftovers, if any
    if args.stop:
        console.print("nothing of demo-cluster is running now")
        return 0

    try:
        path, data, label = example_model()
    except SystemExit:
        import build_models  # generated stand-in (no torch needed)

        build_models.build_tiny_bert(build_models.default_out(), force=False)
        path, data, label = example_model()
    console.print(f"example model: {label}\n  {path}")

    connect = ensemble("start", show=True).strip().splitlines()[-1]
    store_url = f"zk://{connect}{CHROOT}"
    port = args.port if port_free(args.port) else free_port()
    cp: ControlPlane | None = None
    try:
        cp = start_control_plane(port, token, store_url)
        console.print(f"autoai up: {cp.url} (pid {cp.pid}, store {store_url})\n")
        api = connect_api(cp.url, token)
        v = api.register_model("minilm", file=path)
        console.print(f"registered minilm version {v.version} (sha256 {v.sha256[:12]})")
        metadata = {"instance": 2, "cpu": 1, "rpc": RPC}
        d = deploy(api, "1", {"processor": "onnx", "metadata": metadata}, "deploy v1, 2 instances")
        save_state(HOME, cp, pids_of(d))

        rows = [{k: a[i : i + 1] for k, a in data.items()} for i in range(len(data["input_ids"]))]
        phases = traffic(api, cp, rows, args)
        console.print(phase_table(phases, args.concurrency))
        after = api.deployment("minilm", "1")
        ready = sum(i.ready for i in after.instances)
        console.print(
            f"instances ready after the kill: {ready} of {len(after.instances)} "
            "(registered in ZooKeeper, as the control plane reads it now)"
        )
        sent = sum(len(p.calls) + p.load.errors for p in phases)
        failed = sum(p.load.errors for p in phases)
        console.print(f"[bold]calls sent {sent}, failed {failed}[/]")
        console.print(ensemble("status", check=False).rstrip(), markup=False)
    except BaseException:
        if not args.keep:
            stop_all(token)
        raise
    console.print(f"demo-cluster took {time.monotonic() - began:.0f} s\n")
    if args.keep:
        console.rule("left running")
        console.print(f"control plane {cp.url} (pid {cp.pid}, log {cp.log}), store {store_url}")
        token_ref = (
            "$AUTOAI_ADMIN_TOKEN" if token_from == "AUTOAI_ADMIN_TOKEN" else f"$(cat {token_from})"
        )
        console.print(f"  export AUTOAI_URL={cp.url} AUTOAI_TOKEN={token_ref}")
        console.print(f"  deploy/local-ensemble.sh status {ENSEMBLE_DIR}")
        console.print("stop everything: python scripts/demo_cluster.py --stop")
    else:
        console.rule("stopping what the demo started")
        stop_all(token)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
