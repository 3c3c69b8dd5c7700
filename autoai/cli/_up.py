"""``autoai up``: run the control plane (embedded SQLite store, local orchestrator by default).

A start that cannot succeed ends in one line and exit 2, before anything listens where it can be
told in advance (settings, store URL, a busy port: the socket is bound before the app starts, so
a second control plane on a busy port never opens the store nor reconciles); a failure of the
app's own start-up (the store cannot be opened) is one line too, in place of uvicorn's traceback.
"""

from __future__ import annotations

import errno
import importlib.util
import logging
import re
import socket
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Final, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console

if TYPE_CHECKING:  # imported when `up` runs: the other commands start without the app
    from autoai.api import ControlSettings

_err = Console(stderr=True)
log = logging.getLogger("autoai.cli")
_LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug", "trace")
_FLAGS: Final = {"store_url": "--store", "repo_dir": "--repo", "run_dir": "--run-dir"}
_UP_FLAGS: Final = ("host", "port", "orchestrator", "insecure")

_BIND_HINTS: Final = {
    errno.EADDRINUSE: " (another `autoai up` there? pick a free port with --port)",
    errno.EADDRNOTAVAIL: " (--host must be an address of this machine, or 0.0.0.0)",
    errno.EACCES: " (ports below 1024 need privileges: pick another with --port)",
}

Message = MutableMapping[str, Any]
_PASSWORD = re.compile(r"(://[^/@?]*?:)[^/@?]*@")
_READER_PASSWORD = re.compile(r"([?&]reader=[^:&]*:)[^&]*")


def _redacted(url: str) -> str:
    """The store URL with its passwords (``zk://user:password@...?reader=user:password``)
    replaced by ``***``."""
    return _READER_PASSWORD.sub(r"\1***", _PASSWORD.sub(r"\1***@", url))


def _fail(message: str) -> NoReturn:
    """``error: MESSAGE`` on stderr as it is (no markup: ``[kubernetes]`` stays; no wrapping),
    exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _settings_error(exc: ValueError) -> str:
    """A settings error on one line, each problem named by its flag (or its variable)."""
    if not isinstance(exc, ValidationError):
        return str(exc)
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "settings"
        name = _FLAGS.get(field) or (
            f"--{field}" if field in _UP_FLAGS else f"AUTOAI_{field.upper().replace('.', '__')}"
        )
        parts.append(f"{name}: {err['msg']}")
    return "; ".join(parts)


def _settings(overrides: dict[str, object]) -> ControlSettings:
    """The control plane's settings, or one line and exit 2 for any that cannot work: a bad
    value, a malformed store URL, a missing extra, a host beyond loopback without a token."""
    from autoai.api import ControlSettings
    from config_store import InvalidUrl
    from config_store._url import parse_url

    try:
        settings = ControlSettings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        _fail(_settings_error(exc))
    try:
        parse_url(settings.store_url)
    except InvalidUrl as exc:
        _fail(f"--store {_redacted(settings.store_url)}: {exc}")
    if settings.orchestrator == "kubernetes" and importlib.util.find_spec("kubernetes") is None:
        _fail("the kubernetes orchestrator needs: pip install 'autoai[kubernetes]'")
    if settings.exposed_without_token and not settings.insecure:
        _fail(
            f"refusing to listen on {settings.host} without an admin token: set "
            "AUTOAI_ADMIN_TOKEN (or pass --insecure to accept unauthenticated deploys and "
            "publishes from the network)"
        )
    return settings


def _listen(host: str, port: int) -> socket.socket:
    """A socket listening on HOST:PORT, bound before the app starts (see the module's doc)."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        hint = _BIND_HINTS.get(exc.errno or 0, "")
        _fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}")
    return sock


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.filename}: {exc.strerror}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


class _StartUp(logging.Filter):
    """The app, seen from uvicorn, with its start-up told in one line whatever the outcome.

    As an ASGI app it passes everything to ``app``, keeping a start-up failure's exception (and
    leaving uvicorn an empty message, so no traceback is logged). As a filter of
    ``uvicorn.error`` it holds uvicorn's lines back until the start-up succeeded (then replays
    them after ``on_started``); after a failure they are dropped, and ``error`` is the one line.
    """

    def __init__(self, app: Any, on_started: Callable[[], None]):
        super().__init__()
        self.app = app
        self.on_started = on_started
        self.started = False
        self.error: BaseException | None = None
        self._held: list[logging.LogRecord] = []

    async def __call__(
        self,
        scope: Message,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def told(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                self._started()
            elif message["type"] == "lifespan.startup.failed":
                message = {"type": message["type"], "message": ""}
            await send(message)

        try:
            await self.app(scope, receive, told)
        except BaseException as exc:
            if not self.started:
                self.error = exc
            raise

    def _started(self) -> None:
        self.started = True
        self.on_started()
        uvicorn_log = logging.getLogger("uvicorn.error")
        for record in self._held:
            uvicorn_log.handle(record)
        self._held.clear()

    def filter(self, record: logging.LogRecord) -> bool:
        if self.started:
            return True
        if self.error is None:
            self._held.append(record)
        return False


def up_command(
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            envvar="AUTOAI_STORE_URL",
            help="config store URL: zk://host:port/chroot or sqlite:///path (default: "
            "~/.autoai/store.db)",
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="port of the REST API")] = 8080,
    host: Annotated[
        str,
        typer.Option(
            help="address to bind (loopback unless you mean otherwise; beyond loopback, only "
            "with AUTOAI_ADMIN_TOKEN or --insecure)"
        ),
    ] = "127.0.0.1",
    repo: Annotated[
        Path | None,
        typer.Option("--repo", envvar="AUTOAI_REPO_DIR", help="model repository directory"),
    ] = None,
    run_dir: Annotated[
        Path | None,
        typer.Option(
            "--run-dir",
            envvar="AUTOAI_RUN_DIR",
            help="instances' configs and logs, one directory per store below it",
        ),
    ] = None,
    orchestrator: Annotated[
        str | None,
        typer.Option(
            "--orchestrator",
            envvar="AUTOAI_ORCHESTRATOR",
            help="where instances run: local (processes on this host, the default) or kubernetes "
            "(Deployments; settings from AUTOAI_KUBERNETES__*, see docs/kubernetes.md)",
        ),
    ] = None,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="listen beyond loopback without an admin token (also AUTOAI_INSECURE=true): "
            "anyone who can reach HOST can deploy and publish; without it, such a start is "
            "refused",
        ),
    ] = False,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
) -> None:
    """Start the control plane: REST API on HOST:PORT (OpenAPI at /docs), reconciling the
    instances recorded in the store. The admin token comes from AUTOAI_ADMIN_TOKEN (never a flag,
    so that it does not show in `ps`); without one, a HOST beyond loopback is refused unless
    --insecure is given."""
    import uvicorn

    from autoai.api import create_app

    if log_level.lower() not in _LOG_LEVELS:
        _fail(f"--log-level {log_level!r}: expected one of {', '.join(_LOG_LEVELS)}")
    overrides: dict[str, object] = {"host": host, "port": port}
    given = {"store_url": store, "repo_dir": repo, "run_dir": run_dir, "orchestrator": orchestrator}
    overrides.update({k: v for k, v in given.items() if v is not None})
    if insecure:  # else AUTOAI_INSECURE, read by the settings
        overrides["insecure"] = True
    settings = _settings(overrides)
    sock = _listen(host, port)
    # Our loggers' warnings with their time, source and level (uvicorn configures its own); the
    # threshold stays logging's default, WARNING.
    logging.basicConfig(format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if settings.open_on_purpose:
        log.warning(
            "--insecure: listening on %s without an admin token: anyone who can reach it can "
            "deploy and publish",
            host,
        )
    shown = _redacted(settings.store_url)  # never print the store's password
    where = f"[{host}]" if ":" in host else host

    def banner() -> None:
        _err.print(
            f"autoai control plane on http://{where}:{port} (store {shown}, "
            f"{settings.orchestrator} orchestrator)",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )

    start_up = _StartUp(create_app(settings), banner)
    server = uvicorn.Server(uvicorn.Config(start_up, log_level=log_level.lower()))
    uvicorn_log = logging.getLogger("uvicorn.error")
    uvicorn_log.addFilter(start_up)  # after the Config above set uvicorn's loggers up
    try:
        server.run(sockets=[sock])
    except SystemExit:  # uvicorn's exit on a failed start-up
        if start_up.error is None:
            raise
    finally:
        uvicorn_log.removeFilter(start_up)
        sock.close()
    if start_up.error is not None:
        _fail(f"the control plane did not start: {_reason(start_up.error)}")
