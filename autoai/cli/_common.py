"""What every REST command shares: the ``--url`` / ``--token-file`` / ``--json`` options, the
client they make, and how a ``CliError`` ends a command (one line on stderr, its exit code).

The admin token comes from ``--token-file`` or ``AUTOAI_TOKEN``, never from a flag's value, so
that it does not show in ``ps``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote as url_quote

import typer

from ._errors import BadUsage, CliError
from ._rest import DEFAULT_URL, RestClient

__all__ = [
    "DEFAULT_URL",
    "AsJson",
    "TokenFile",
    "Url",
    "connect",
    "emit_json",
    "fail_on_errors",
    "quote",
    "read_token",
]

Url = Annotated[
    str,
    typer.Option(
        "--url", envvar="AUTOAI_URL", show_envvar=True, help="URL of the control plane's REST API"
    ),
]
TokenFile = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="file holding the admin token (default: the AUTOAI_TOKEN environment variable)",
        dir_okay=False,
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="print machine-readable JSON on stdout")]


def read_token(token_file: Path | None) -> str | None:
    """The admin token: the file's first line, else ``AUTOAI_TOKEN``, else ``None``.

    Raises:
        BadUsage: the file cannot be read or is empty.
    """
    if token_file is None:
        return os.environ.get("AUTOAI_TOKEN") or None
    try:
        text = token_file.read_text()
    except OSError as exc:
        raise BadUsage(f"--token-file {token_file}: {exc.strerror}") from None
    token = text.strip().splitlines()[0].strip() if text.strip() else ""
    if not token:
        raise BadUsage(f"--token-file {token_file}: the file is empty")
    return token


def connect(url: str, token_file: Path | None) -> RestClient:
    """A client of the control plane at ``url`` with the admin token, if any.

    Raises:
        BadUsage: a bad URL or token file.
    """
    return RestClient(url, token=read_token(token_file))


@contextmanager
def fail_on_errors() -> Iterator[None]:
    """End the command on a ``CliError``: ``error: ...`` on stderr and the error's exit code."""
    try:
        yield
    except CliError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(exc.exit_code) from None


def emit_json(document: Any) -> None:
    """Print ``document`` as indented JSON on stdout (numpy scalars as floats)."""
    typer.echo(json.dumps(document, indent=2, default=float))


def quote(segment: str) -> str:
    """A model name or version as one URL path segment."""
    return url_quote(segment, safe="")
