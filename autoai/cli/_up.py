"""``autoai up``: run the control plane (embedded SQLite store, local orchestrator by default)."""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

_err = Console(stderr=True)
log = logging.getLogger("autoai.cli")
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

    from autoai.api import ControlSettings, create_app

    overrides: dict[str, object] = {"host": host, "port": port}
    if store is not None:
        overrides["store_url"] = store
    if repo is not None:
        overrides["repo_dir"] = repo
    if run_dir is not None:
        overrides["run_dir"] = run_dir
    if orchestrator is not None:
        overrides["orchestrator"] = orchestrator
    if insecure:  # else AUTOAI_INSECURE, read by the settings
        overrides["insecure"] = True
    try:
        settings = ControlSettings(**overrides)  # type: ignore[arg-type]
    except ValueError as exc:
        _fail(str(exc))
    if settings.orchestrator == "kubernetes" and importlib.util.find_spec("kubernetes") is None:
        _fail("the kubernetes orchestrator needs: pip install 'autoai[kubernetes]'")
    if settings.exposed_without_token and not settings.insecure:
        _fail(
            f"refusing to listen on {host} without an admin token: set AUTOAI_ADMIN_TOKEN (or "
            "pass --insecure to accept unauthenticated deploys and publishes from the network)"
        )
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
    _err.print(
        f"autoai control plane on http://{host}:{port} (store {shown}, "
        f"{settings.orchestrator} orchestrator)"
    )
    uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
