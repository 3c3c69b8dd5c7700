"""Where instances run. ``LocalOrchestrator`` starts ``eas-server`` processes on this host.

Each instance is a detached process (its own session, so it outlives the control plane), started
from a service JSON the orchestrator writes to ``<run_dir>/<service>.json`` (EAS keys: ``name``,
``version``, ``processor``, ``model_path``, ``metadata.rpc.*``; owner-only, as it may hold the
service token) plus ``--service``, with the store URL in ``EAS_STORE`` (not on the command line,
which ``ps`` shows to every user: it may carry the writer's password); it registers itself in
the store when ready. The orchestrator waits for every
instance to register, and on failure stops what it started and reports the instance's last log
lines.

Every process it starts names its service JSON on its command line, so ``processes()`` finds all
of them by listing processes (psutil), with or without a record: that is how reconciliation finds
orphans, and how a recorded PID is told apart from an unrelated process that reused it.

What crosses into the deployment record is typed (``autoai.schema``): ``launch`` and ``resize``
return a ``Placement`` whose instances are ``LocalInstance`` entries (``InstanceRecord`` here),
``health`` describes them as ``LocalInstanceHealth``. The service JSON an instance starts from is
eas-server's own document, handed over as given.

What it owns is scoped by its store (``autoai.ownership``): its files live in
``<run_dir>/<store identity>/``, each service JSON names the store in ``autoai_store``, and a
process counts as its own only when both hold, so control planes of different stores on one host
never adopt, restart or stop each other's instances, nor overwrite each other's files.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import psutil

from config_store import ConfigStore, Instance

from .errors import ControlPlaneError
from .ownership import STORE_FIELD, owner, run_dir_for
from .schema import DeploySpec, InstanceHealth, LocalInstance, LocalInstanceHealth, Placement

__all__ = ["InstanceRecord", "LocalOrchestrator", "Orchestrator", "StartFailed", "process_alive"]

log = logging.getLogger("autoai.orchestrators")


class Orchestrator(Protocol):
    """Where a deployment's instances run; ``DeploymentService`` talks only to this.

    An orchestrator owns the ``Placement`` part of the deployment record (``launch`` returns it:
    one ``instances`` entry per instance, and whatever else it needs to find them again) and reads
    it back in the other calls. Instances always register themselves in the store, so discovery
    and the SDK do not depend on it.
    """

    kind: str
    """``local`` or ``kubernetes`` (recorded in each deployment)."""

    def launch(
        self,
        service: str,
        service_json: Mapping[str, Any],
        spec: DeploySpec,
        instances: int,
        *,
        first_port: int = 0,
        progress: Callable[[str], None] | None = None,
    ) -> Placement:
        """Start ``instances`` instances of ``service`` and wait until every one registered.

        Raises:
            StartFailed: they did not all become ready (whatever was started is removed again;
                ``detail["log"]`` says why).
        """
        ...

    def abandon(self, service: str, placement: Placement) -> None:
        """Remove what ``launch`` started when its record could not be written."""
        ...

    def resize(
        self,
        service: str,
        placement: Placement,
        instances: int,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> tuple[Placement, Callable[[], None]]:
        """Change the number of instances without dropping calls.

        Returns:
            The placement after the change (written by the caller with CAS), and what to run once
            it is written (draining removed instances). New instances are ready before this
            returns; removed ones keep serving until the second part runs.
        """
        ...

    def teardown(self, service: str, placement: Placement) -> None:
        """Stop every instance of the deployment (drained)."""
        ...

    def health(
        self, service: str, placement: Placement, registered: Sequence[Instance]
    ) -> list[InstanceHealth]:
        """The deployment's instances, each with ``alive`` and ``ready``; ``registered`` is the
        service's registrations in the store, read once by the caller."""
        ...

    def pool_repository(self, service: str) -> str:
        """The empty model repository a pool's instances start from (``model_repository`` of
        the pool's service JSON), as their host sees it; made here if it is the host's."""
        ...

    def service_token(self, service: str, placement: Placement) -> str | None:
        """The token the instances of ``service`` require (what the control plane sends to a
        pool's repository API), from where ``launch`` put it; None without one."""
        ...


class StartFailed(ControlPlaneError):
    """An instance did not become ready; ``detail["log"]`` holds its last lines."""


InstanceRecord = LocalInstance
"""A started instance: enough to find, adopt or stop it later (the record's entry)."""


def _tail(path: Path, lines: int = 20) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def _argv(pid: int) -> list[str] | None:
    """A process's command line (None when it is gone or unreadable; empty while it exits)."""
    try:
        return [str(a) for a in psutil.Process(pid).cmdline()]
    except (psutil.NoSuchProcess, psutil.AccessDenied):  # ZombieProcess is a NoSuchProcess
        return None


def process_alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting to be reaped counts as gone)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's: it exists
        return True


# Started through a short-lived launcher, so that instances are not children of the control plane:
# nothing of ours must reap them, and they outlive it (their own session, parent init).
_LAUNCHER = (
    "import subprocess, sys, time\n"
    "import psutil\n"
    "log = open(sys.argv[1], 'ab')\n"
    "p = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=log,"
    " stderr=subprocess.STDOUT, start_new_session=True)\n"
    # Popen may return before the new command line shows; the PID is handed over only once it
    # does, so running() never mistakes a starting instance for a dead one.
    "deadline = time.monotonic() + 10\n"
    "while p.poll() is None and time.monotonic() < deadline:\n"
    "    try:\n"
    "        if psutil.Process(p.pid).cmdline():\n"
    "            break\n"
    "    except psutil.Error:\n"
    "        break\n"
    "    time.sleep(0.002)\n"
    "print(p.pid)\n"
)


def _launch(args: Sequence[str], log: Path, env: Mapping[str, str] | None = None) -> int:
    done = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, str(log), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, **env} if env else None,
    )
    if done.returncode != 0 or not done.stdout.strip().isdigit():
        raise StartFailed(
            f"could not launch {args[:4]}: {done.stderr.strip()[-500:]}", {"log": _tail(log)}
        )
    return int(done.stdout.strip())


def _local(placement: Placement) -> list[InstanceRecord]:
    """The placement's local instances (a record of another orchestrator has none)."""
    return [i for i in placement.instances if isinstance(i, LocalInstance)]


class LocalOrchestrator:
    """Starts and stops ``eas-server`` processes on this host.

    Args:
        store: where instances register (the control plane's store).
        store_url: the URL the instances open (the same store).
        run_dir: service JSONs and logs go to ``<run_dir>/<store identity>/`` (``self.run_dir``),
            so control planes of different stores may share it.
    """

    def __init__(self, store: ConfigStore, store_url: str, run_dir: str | Path):
        self.store = store
        self.store_url = store_url
        self.identity = store.identity
        """The store's identity, written into every service JSON and required of every process
        this orchestrator adopts, restarts or stops as its own."""
        self.run_dir = run_dir_for(run_dir, self.identity)
        # both owner-only when new (mkdir's parents would get the umask's mode)
        self.run_dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.run_dir.mkdir(mode=0o700, exist_ok=True)
        self._foreign: set[int] = set()  # processes in run_dir left alone, already logged

    kind = "local"

    # -- the Orchestrator interface --------------------------------------------------------

    def launch(
        self,
        service: str,
        service_json: Mapping[str, Any],
        spec: DeploySpec,
        instances: int,
        *,
        first_port: int = 0,
        progress: Callable[[str], None] | None = None,
    ) -> Placement:
        started = self.start(
            service, service_json, instances, progress=progress, first_port=first_port
        )
        return Placement(instances=started)

    def abandon(self, service: str, placement: Placement) -> None:
        self.stop(_local(placement))

    def resize(
        self,
        service: str,
        placement: Placement,
        instances: int,
        *,
        progress: Callable[[str], None] | None = None,
    ) -> tuple[Placement, Callable[[], None]]:
        current = _local(placement)
        if instances > len(current):
            added = self.spawn(service, instances - len(current), progress=progress)
            return Placement(instances=[*current, *added]), lambda: None
        kept, removed = current[:instances], current[instances:]
        return Placement(instances=kept), lambda: self.stop(removed)

    def teardown(self, service: str, placement: Placement) -> None:
        self.stop(_local(placement))

    def health(
        self, service: str, placement: Placement, registered: Sequence[Instance]
    ) -> list[InstanceHealth]:
        pids = {i.payload.get("pid") for i in registered}
        ours = self.processes()
        return [
            LocalInstanceHealth(**r.model_dump(), alive=r.pid in ours, ready=r.pid in pids)
            for r in _local(placement)
        ]

    def pool_repository(self, service: str) -> str:
        path = self.run_dir / f"{service}.repository"
        path.mkdir(mode=0o700, exist_ok=True)
        return str(path)

    def service_token(self, service: str, placement: Placement) -> str | None:
        """From the service JSON ``start`` wrote (owner-only, in this store's run directory)."""
        try:
            doc = json.loads(self.config_path(service).read_bytes())
        except (OSError, ValueError, RecursionError):
            return None
        token = doc.get("token") if isinstance(doc, dict) else None
        return token if isinstance(token, str) and token else None

    # -- processes -------------------------------------------------------------------------

    def config_path(self, service: str) -> Path:
        return self.run_dir / f"{service}.json"

    def start(
        self,
        service: str,
        service_json: Mapping[str, Any],
        instances: int,
        *,
        timeout: float = 120.0,
        progress: Callable[[str], None] | None = None,
        first_port: int = 0,
        restarts: int = 0,
    ) -> list[InstanceRecord]:
        """Write the service JSON, start ``instances`` processes and wait until all registered.

        The JSON names this orchestrator's store (``autoai_store``); one that names another store
        is not overwritten.

        Raises:
            StartFailed: a process exited or did not register in time (all started ones are
                stopped again; the detail has the log tail); the service JSON there names
                another store.
        """
        config = self.config_path(service)
        found = owner(config)
        if found not in (None, self.identity):
            raise StartFailed(
                f"{service}: its service JSON {config} belongs to the control plane of another "
                f"store ({found}); not overwriting it",
                {"service": service, "store": found},
            )
        # owner-only: the service JSON carries the service token
        fd = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.fchmod(fd, 0o600)  # an older file keeps its mode through O_TRUNC
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps({**service_json, STORE_FIELD: self.identity}, indent=2))
        return self.spawn(
            service, instances, timeout=timeout, progress=progress, first_port=first_port,
            restarts=restarts,
        )  # fmt: skip

    def spawn(
        self,
        service: str,
        instances: int,
        *,
        timeout: float = 120.0,
        progress: Callable[[str], None] | None = None,
        first_port: int = 0,
        restarts: int = 0,
    ) -> list[InstanceRecord]:
        """Start more processes of a service whose JSON was written by ``start``.

        Raises:
            StartFailed: as ``start``; also when the service JSON is missing or does not name
                this orchestrator's store (a process started from it would not be its own).
        """
        config = self.config_path(service)
        if not config.is_file():
            raise StartFailed(f"{service}: its service JSON {config} is missing", {})
        if owner(config) != self.identity:
            raise StartFailed(
                f"{service}: its service JSON {config} does not name this control plane's store "
                f"({STORE_FIELD}: {self.identity})",
                {"service": service},
            )
        started: list[InstanceRecord] = []
        host = socket.gethostname()
        try:
            for i in range(instances):
                log = self.run_dir / f"{service}.{int(time.time() * 1000)}.{i}.log"
                port = first_port + i if first_port else 0
                # the store URL may carry the writer's password: environment, not argv (ps)
                args = [
                    sys.executable, "-m", "eas_server", "--config", str(config),
                    "--service", service, "--port", str(port),
                ]  # fmt: skip
                pid = _launch(args, log, {"EAS_STORE": self.store_url})
                started.append(
                    InstanceRecord(
                        pid=pid,
                        args=args,
                        log=str(log),
                        started=time.time(),
                        host=host,
                        port=port,
                        restarts=restarts,
                    )
                )
                if progress:
                    progress(f"started instance {i + 1}/{instances} (pid {pid})")
            ports = self._wait_registered(service, started, timeout)
        except BaseException:
            self.stop(started)
            raise
        return [r.model_copy(update={"port": ports[r.pid]}) for r in started]

    def _wait_registered(
        self, service: str, started: Sequence[InstanceRecord], timeout: float
    ) -> dict[int, int]:
        deadline = time.monotonic() + timeout
        while True:
            live = {i.payload.get("pid"): i.port for i in self.store.instances(service)}
            if all(r.pid in live for r in started):
                return {r.pid: live[r.pid] for r in started}
            for record in started:
                if not self.running(record):
                    raise StartFailed(
                        f"instance pid {record.pid} of {service} exited before it was ready",
                        {"service": service, "log": _tail(Path(record.log))},
                    )
            if time.monotonic() > deadline:
                raise StartFailed(
                    f"{service}: instances did not register within {timeout:g} s",
                    {"service": service, "log": _tail(Path(started[-1].log))},
                )
            time.sleep(0.1)

    def stop(self, records: Sequence[InstanceRecord], timeout: float = 30.0) -> None:
        """SIGTERM (drain), then SIGKILL after ``timeout``; only the PIDs given, and of a record
        with a command line only while that PID runs it (not a process that reused it)."""

        def ours(record: InstanceRecord) -> bool:
            return process_alive(record.pid) and (
                not record.args or _argv(record.pid) == record.args
            )

        def going(record: InstanceRecord) -> bool:
            if not process_alive(record.pid):
                return False
            argv = _argv(record.pid)  # empty while it exits (its memory is gone, not its sockets)
            return not record.args or not argv or argv == record.args

        for record in records:
            if ours(record):
                try:
                    os.kill(record.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        for record in records:
            while going(record) and time.monotonic() < deadline:
                time.sleep(0.05)
            if ours(record):
                try:
                    os.kill(record.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            while going(record) and time.monotonic() < deadline + 5:
                time.sleep(0.05)

    @staticmethod
    def running(record: InstanceRecord) -> bool:
        """Whether the recorded process runs, as recorded: same PID, same command line (a
        reused PID running something else does not)."""
        return process_alive(record.pid) and _argv(record.pid) == record.args

    def processes(self) -> dict[int, str]:
        """Every live ``eas-server`` this orchestrator started, recorded or not: pid -> service.

        Found by their command lines naming a service JSON in ``run_dir`` that names this
        orchestrator's store; a process whose JSON is missing, unreadable or names another store
        is left out (logged once at info)."""
        prefix = str(self.run_dir) + os.sep
        found: dict[int, str] = {}
        foreign: set[int] = set()
        owners: dict[str, str | None] = {}  # service JSON -> the store it names, read once
        for process in psutil.process_iter(["cmdline"]):
            args = process.info["cmdline"]  # None: not readable (another user's), or gone
            if not args or "eas_server" not in args or "--config" not in args:
                continue
            at = args.index("--config") + 1
            config = args[at] if at < len(args) else ""
            if not (config.startswith(prefix) and config.endswith(".json")):
                continue
            pid = process.pid
            if config not in owners:
                owners[config] = owner(Path(config))
            if owners[config] != self.identity:
                foreign.add(pid)
                if pid not in self._foreign:
                    log.info(
                        "leaving eas-server pid %d alone: its service JSON %s names %s, not this "
                        "control plane's store %s",
                        pid,
                        config,
                        owners[config] or "no store",
                        self.identity,
                    )
                continue
            if process_alive(pid):
                found[pid] = Path(config).name[: -len(".json")]
        self._foreign = foreign
        return found
