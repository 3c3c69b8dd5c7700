"""Real ZooKeeper processes on loopback for tests and benchmarks (Debian's ``zookeeper`` package).

Each server gets a data dir, free ports, the admin server off, every four-letter word allowed, and a
log file; servers are stopped by the PID we started, never by name.

What a server knows about its clients comes from two four-letter words, parsed by pure functions
(``parse_cons``, ``parse_ephemerals``) apart from the socket call: ``cons`` lists each client
connection with its session and the moment the server accepted it, ``dump`` lists each session's
ephemeral nodes.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ClientConnection",
    "ZooKeeperEnsemble",
    "ZooKeeperNotInstalled",
    "ZooKeeperServer",
    "four_letter_word",
    "free_ports",
    "parse_cons",
    "parse_ephemerals",
    "zookeeper_classpath",
]

_JARS = (
    "zookeeper.jar",
    "zookeeper-jute.jar",
    "netty-codec.jar",  # missing from the Class-Path of Debian's zookeeper.jar
    "slf4j-api.jar",
    "slf4j-log4j12.jar",
    "log4j-1.2.jar",
)
_JAVA_DIR = Path("/usr/share/java")
_CONF_DIR = Path("/etc/zookeeper/conf")
_HEAP_USED = re.compile(r"(?:generation|heap)\s+total \d+K, used (\d+)K")
# " /127.0.0.1:40312[1](queued=0,recved=11,sent=11,sid=0x1000006e5000000,...,est=1796631273302,...)"
_CONS_LINE = re.compile(r"^\s*/(?P<remote>[^\[\s]+)\[\d+\]\((?P<stats>[^)]*)\)\s*$")
_SESSION_LINE = re.compile(r"^(0x[0-9a-fA-F]+):$")


class ZooKeeperNotInstalled(RuntimeError):
    """Debian's ``zookeeper`` package (or java) is missing: ``apt-get install -y zookeeper``."""


def zookeeper_classpath() -> str:
    missing = [j for j in _JARS if not (_JAVA_DIR / j).exists()]
    if missing:
        raise ZooKeeperNotInstalled(
            f"ZooKeeper jars missing from {_JAVA_DIR}: {', '.join(missing)}; "
            "run: apt-get install -y zookeeper"
        )
    parts = [str(_CONF_DIR)] if _CONF_DIR.exists() else []
    return ":".join(parts + [str(_JAVA_DIR / j) for j in _JARS])


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (ZooKeeper needs numbers in its
    config file, so a pre-bound socket cannot be handed over; callers retry on a clash)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def four_letter_word(port: int, word: str, timeout: float = 2.0) -> str:
    """Send a four-letter command (``srvr``, ``ruok``, ``mntr``, ``wchs``) and return the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(word.encode())
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode(errors="replace")


@dataclass(frozen=True)
class ClientConnection:
    """One client connection as a server lists it in ``cons``."""

    remote: str
    """The client's address as the server sees it (``127.0.0.1:40312``)."""
    session_id: int
    """The session the connection serves (``sid``)."""
    established: float
    """When the server accepted this TCP connection, seconds since the epoch (``est``, in ms; the
    server's clock, which on loopback is this host's ``time.time()``). The client sends its
    session handshake right after connecting, so this is when that client got through."""


def parse_cons(text: str) -> list[ClientConnection]:
    """The connections of a ``cons`` answer that carry a session.

    A connection with no session yet (the ``cons`` query itself, a client between accept and
    handshake) is left out. ZooKeeper 3.8 writes one line per connection::

        /127.0.0.1:40312[1](queued=0,recved=11,sent=11,sid=0x1000006e5000000,lop=EXIS,
        est=1796631273302,to=4000,lcxid=0xa,lzxid=0x6,lresp=451930,llat=1,minlat=0,...)
    """
    found = []
    for line in text.splitlines():
        match = _CONS_LINE.match(line)
        if match is None:
            continue
        stats = {k: v for k, _, v in (f.partition("=") for f in match["stats"].split(","))}
        if "sid" not in stats or "est" not in stats:
            continue
        found.append(
            ClientConnection(match["remote"], int(stats["sid"], 16), int(stats["est"]) / 1000)
        )
    return found


def parse_ephemerals(text: str) -> dict[int, list[str]]:
    """Session id -> its ephemeral nodes (full paths, chroot included), from a ``dump`` answer.

    The section reads as below, each path indented by a tab; the next section ends it::

        Sessions with Ephemerals (2):
        0x30000072cf10000:
            /probe/services/svc/instances/127.0.0.1:1234
        Connections dump:
    """
    owners: dict[int, list[str]] = {}
    lines = iter(text.splitlines())
    for line in lines:
        if line.startswith("Sessions with Ephemerals"):
            break
    session: int | None = None
    for line in lines:
        if match := _SESSION_LINE.match(line.strip()):
            session = int(match[1], 16)
            owners[session] = []
        elif line.strip().startswith("/") and session is not None:
            owners[session].append(line.strip())
        else:
            break
    return owners


@dataclass
class _Peer:
    server_id: int
    client_port: int
    quorum_port: int
    election_port: int


class ZooKeeperServer:
    """One ZooKeeper server process (standalone, or a member of a ``ZooKeeperEnsemble``)."""

    def __init__(
        self,
        base_dir: Path,
        peer: _Peer,
        ensemble: Sequence[_Peer] = (),
        *,
        tick_ms: int = 1000,
        force_sync: bool = False,
        jvm_options: Sequence[str] = (),
    ):
        """``jvm_options`` go on the java command line after the defaults (``-Xmx256m``, serial
        GC), so they can override them: the soak sizes the heap up front with ``-Xms256m
        -XX:+AlwaysPreTouch`` as a production server would, so that its RSS is the heap's size from
        the start rather than growing while the JVM first touches pages it already owns."""
        self.peer = peer
        self.dir = base_dir / f"zk{peer.server_id}"
        self.data_dir = self.dir / "data"
        self.log_file = self.dir / "zookeeper.log"
        self._ensemble = list(ensemble)
        self._tick_ms = tick_ms
        self._force_sync = force_sync
        self._jvm_options = list(jvm_options)
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        return self.peer.client_port

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running and self._proc else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def _write_config(self) -> Path:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lines = [
            f"tickTime={self._tick_ms}",
            "initLimit=10",
            "syncLimit=5",
            f"dataDir={self.data_dir}",
            "clientPortAddress=127.0.0.1",
            f"clientPort={self.port}",
            "admin.enableServer=false",
            "4lw.commands.whitelist=*",
            "maxClientCnxns=0",
            f"minSessionTimeout={2 * self._tick_ms}",
            f"maxSessionTimeout={40 * self._tick_ms}",
            f"forceSync={'yes' if self._force_sync else 'no'}",
            "autopurge.snapRetainCount=3",
            "autopurge.purgeInterval=1",
        ]
        if self._ensemble:
            (self.data_dir / "myid").write_text(f"{self.peer.server_id}\n")
            lines += [
                f"server.{p.server_id}=127.0.0.1:{p.quorum_port}:{p.election_port}"
                for p in self._ensemble
            ]
        cfg = self.dir / "zoo.cfg"
        cfg.write_text("\n".join(lines) + "\n")
        return cfg

    def start(self, wait: bool = True, timeout: float = 60.0) -> None:
        """Start the JVM (no-op when running); with ``wait``, until ``srvr`` reports a mode."""
        if self.running:
            return
        cfg = self._write_config()
        cmd = [
            "java",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            "-Xshare:auto",
            "-Djava.net.preferIPv4Stack=true",
            "-Dzookeeper.log.dir=" + str(self.dir),
            "-Dzookeeper.root.logger=INFO,CONSOLE",
            "-Dlog4j.configuration=file:" + str(_CONF_DIR / "log4j.properties"),
            "-Dfile.encoding=UTF-8",
            *self._jvm_options,
            "-cp",
            zookeeper_classpath(),
            "org.apache.zookeeper.server.quorum.QuorumPeerMain",
            str(cfg),
        ]
        log = self.log_file.open("ab")
        try:
            self._proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            log.close()
        if wait:
            self.wait_ready(timeout)

    def mode(self) -> str | None:
        """``standalone``, ``leader``, ``follower``, or None when not serving."""
        try:
            answer = four_letter_word(self.port, "srvr", timeout=1.0)
        except OSError:
            return None
        for line in answer.splitlines():
            if line.startswith("Mode:"):
                return line.split(":", 1)[1].strip()
        return None

    def connections(self) -> list[ClientConnection]:
        """The client connections this server holds now, with their sessions (``cons``).

        Raises:
            OSError: the server does not answer.
        """
        return parse_cons(four_letter_word(self.port, "cons"))

    def ephemerals(self) -> dict[int, list[str]]:
        """Session id -> its ephemeral nodes (``dump``). Every serving member holds the whole
        tree; the leader's view is the one that is never behind.

        Raises:
            OSError: the server does not answer.
        """
        return parse_ephemerals(four_letter_word(self.port, "dump"))

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"ZooKeeper {self.address} exited; log: {self.log_tail()}")
            if self.mode() is not None:
                return
            time.sleep(0.1)
        raise TimeoutError(
            f"ZooKeeper {self.address} not serving after {timeout}s; log: {self.log_tail()}"
        )

    def stop(self, kill: bool = False) -> None:
        """Stop the process we started: SIGKILL when ``kill``, else SIGTERM (SIGKILL after 10 s)."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def live_heap_kib(self, timeout: float = 30.0) -> int | None:
        """The JVM's heap in use right after a full collection (``jcmd GC.run``, then
        ``GC.heap_info``): the live data, which a leak makes grow, unlike the RSS, which also
        counts heap pages the JVM touched once and keeps. ``None`` when not running, or when
        ``jcmd`` (a JDK tool, not in every JRE) is missing or fails."""
        pid = self.pid
        if pid is None or shutil.which("jcmd") is None:
            return None
        try:
            subprocess.run(
                ["jcmd", str(pid), "GC.run"], capture_output=True, timeout=timeout, check=True
            )
            info = subprocess.run(
                ["jcmd", str(pid), "GC.heap_info"],
                capture_output=True,
                text=True,
                timeout=timeout,
                check=True,
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        used = [int(m) for m in _HEAP_USED.findall(info)]
        return sum(used) if used else None

    def restart(self, wait: bool = True) -> None:
        self.stop()
        self.start(wait=wait)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> ZooKeeperServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @classmethod
    def standalone(cls, base_dir: Path, **kwargs: object) -> ZooKeeperServer:
        (port,) = free_ports(1)
        return cls(base_dir, _Peer(1, port, 0, 0), **kwargs)  # type: ignore[arg-type]


class ZooKeeperEnsemble:
    """``size`` servers forming one ensemble on loopback."""

    def __init__(self, base_dir: Path, size: int = 3, **kwargs: object):
        ports = free_ports(3 * size)
        peers = [
            _Peer(i + 1, ports[3 * i], ports[3 * i + 1], ports[3 * i + 2]) for i in range(size)
        ]
        self.servers = [ZooKeeperServer(base_dir, p, peers, **kwargs) for p in peers]  # type: ignore[arg-type]

    @property
    def connect_string(self) -> str:
        return ",".join(s.address for s in self.servers)

    def start(self, timeout: float = 90.0) -> None:
        for s in self.servers:
            s.start(wait=False)
        deadline = time.monotonic() + timeout
        for s in self.servers:
            s.wait_ready(max(1.0, deadline - time.monotonic()))

    def stop(self, kill: bool = False) -> None:
        for s in self.servers:
            s.stop(kill=kill)

    def leader(self, timeout: float = 30.0) -> ZooKeeperServer:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s in self.servers:
                if s.running and s.mode() == "leader":
                    return s
            time.sleep(0.1)
        raise TimeoutError("no leader elected")

    def connections(self) -> list[ClientConnection]:
        """The client connections of every running member that answers ``cons`` (one that does
        not is skipped: call again to see it)."""
        found = []
        for server in self.servers:
            if server.running:
                with contextlib.suppress(OSError):
                    found += server.connections()
        return found

    def ephemerals(self, timeout: float = 30.0) -> dict[int, list[str]]:
        """Session id -> its ephemeral nodes, from the leader's ``dump``.

        Raises:
            TimeoutError: no leader within ``timeout``.
            OSError: the leader does not answer.
        """
        return self.leader(timeout).ephemerals()

    def __iter__(self) -> Iterator[ZooKeeperServer]:
        return iter(self.servers)

    def __enter__(self) -> ZooKeeperEnsemble:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.stop()


def java_available() -> bool:
    return any(
        os.access(os.path.join(p, "java"), os.X_OK)
        for p in os.environ.get("PATH", "").split(os.pathsep)
    )
