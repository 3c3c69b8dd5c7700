"""``autoai models push | ls | rm``: register ONNX models, list their versions, delete one."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ._common import (
    DEFAULT_URL,
    AsJson,
    TokenFile,
    Url,
    connect,
    emit_json,
    fail_on_errors,
    quote,
)
from ._errors import BadUsage

__all__ = ["models_app", "signature_text"]

models_app = typer.Typer(help="Register, list and delete model versions.", no_args_is_help=True)

_URI_SCHEMES = ("file://", "http://", "https://")


def signature_text(tensors: list[dict[str, Any]]) -> str:
    """``x FP32 [-1, 4]`` per tensor, one a line."""
    return "\n".join(f"{t['name']} {t['datatype']} {t['shape']}" for t in tensors)


def _table(models: list[dict[str, Any]], deployed: set[tuple[str, str]]) -> Table:
    table = Table(title="models")
    for col in ("model", "version", "size", "sha256", "inputs", "outputs", "deployed", "created"):
        table.add_column(col, justify="right" if col in ("version", "size") else "left")
    for model in models:
        for v in model["versions"]:
            table.add_row(
                v["name"],
                v["version"],
                f"{v['size'] / 1024:.1f} KiB",
                v["sha256"][:12],
                signature_text(v["signature"]["inputs"]),
                signature_text(v["signature"]["outputs"]),
                "yes" if (v["name"], v["version"]) in deployed else "",
                time.strftime("%Y-%m-%d %H:%M", time.localtime(v["created"])),
            )
    return table


@models_app.command("push")
def push_command(
    source: Annotated[
        str, typer.Argument(help="the ONNX file to upload, or a file:// or http(s):// URI")
    ],
    name: Annotated[str, typer.Option("--name", help="the model's name")],
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Register SOURCE as the next version of model NAME (a file is uploaded; a URI is fetched by
    the control plane)."""
    with fail_on_errors(), connect(url, token_file) as api:
        if source.startswith(_URI_SCHEMES):
            version = api.post("/api/v1/models", json={"name": name, "uri": source})
        else:
            path = Path(source)
            try:
                with path.open("rb") as fh:
                    version = api.post(
                        "/api/v1/models",
                        files={"file": (path.name, fh, "application/octet-stream")},
                        data={"name": name},
                    )
            except OSError as exc:
                raise BadUsage(f"cannot read {source}: {exc.strerror}") from None
        if as_json:
            emit_json(version)
            return
        typer.echo(
            f"registered {version['name']} version {version['version']} "
            f"(sha256 {version['sha256'][:12]}, {version['size']} bytes)"
        )


@models_app.command("ls")
def ls_command(
    name: Annotated[str | None, typer.Argument(help="only this model")] = None,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """List models and their versions (signature, digest, whether deployed)."""
    with fail_on_errors(), connect(url, token_file) as api:
        if name is None:
            models = api.get("/api/v1/models")["models"]
        else:
            models = [api.get(f"/api/v1/models/{quote(name)}")]
        if as_json:
            emit_json({"models": models})
            return
        if not any(m["versions"] for m in models):
            typer.echo("no models registered" if name is None else f"{name} has no versions")
            return
        deployments = api.get("/api/v1/deployments")["deployments"]
        deployed = {(d["name"], d["version"]) for d in deployments}
        Console().print(_table(models, deployed))


@models_app.command("rm")
def rm_command(
    name: Annotated[str, typer.Argument(help="the model")],
    version: Annotated[str, typer.Option("--version", help="the version to delete")],
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Delete one version (refused while it is deployed: undeploy it first)."""
    with fail_on_errors(), connect(url, token_file) as api:
        api.delete(f"/api/v1/models/{quote(name)}/versions/{quote(version)}")
        if as_json:
            emit_json({"deleted": {"name": name, "version": version}})
        else:
            typer.echo(f"deleted {name} version {version}")
