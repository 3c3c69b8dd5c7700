"""``autoai models register | push | ls | show | rm``: register ONNX models and bundles, list and
show their versions (a bundle's task and labels), delete one."""

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
from ._rest import RestClient

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


def _register(
    api: RestClient, name: str, source: str, parts: dict[str, Path | bytes] | None
) -> dict[str, Any]:
    """Register ``source`` (a URI, a file, an archive, a bundle directory), or the bundle by
    ``parts`` with ``source`` as its model; the new version as JSON."""
    try:
        with api.errors():
            if parts is not None:
                version = api.control.register_model(name, parts={"model": Path(source), **parts})
            elif source.startswith(_URI_SCHEMES):
                version = api.control.register_model(name, uri=source)
            else:
                version = api.control.register_model(name, file=Path(source))
    except OSError as exc:
        raise BadUsage(f"cannot read {exc.filename or source}: {exc.strerror}") from None
    except ValueError as exc:  # a bundle directory holding a link, no pipeline.json
        if isinstance(exc, BadUsage):
            raise
        raise BadUsage(str(exc)) from None
    return version.model_dump(mode="json")


def _registered(version: dict[str, Any]) -> str:
    bundle = version.get("bundle")
    what = ""
    if bundle:
        labels = bundle.get("labels") or []
        what = f"; bundle: {bundle['task']}" + (f", {len(labels)} labels" if labels else "")
    return (
        f"registered {version['name']} version {version['version']} "
        f"(sha256 {version['sha256'][:12]}, {version['size']} bytes{what})"
    )


@models_app.command("register")
def register_command(
    name: Annotated[str, typer.Argument(help="the model's name")],
    path: Annotated[
        str,
        typer.Argument(
            help="an .onnx file, a bundle archive (.tar.gz, .tgz, .tar, .zip), a bundle "
            "directory (packed and uploaded), or a file:// or http(s):// URI the control plane "
            "fetches"
        ),
    ],
    tokenizer: Annotated[
        Path | None,
        typer.Option("--tokenizer", help="with an .onnx PATH: the bundle's tokenizer.json"),
    ] = None,
    labels: Annotated[
        Path | None,
        typer.Option("--labels", help="with an .onnx PATH: the label list (classify, slots)"),
    ] = None,
    pipeline: Annotated[
        Path | None,
        typer.Option("--pipeline", help="with an .onnx PATH: the bundle's pipeline.json"),
    ] = None,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Register PATH as the next version of model NAME: an ONNX model, or a bundle (the model
    with its tokenizer, labels and pipeline.json: text in, labels out)."""
    with fail_on_errors():
        given = {"tokenizer": tokenizer, "labels": labels, "pipeline": pipeline}
        parts: dict[str, Path | bytes] | None = None
        if any(v is not None for v in given.values()):
            if tokenizer is None or pipeline is None:
                raise BadUsage(
                    "a bundle by parts needs --tokenizer and --pipeline (and --labels for "
                    "classify and slots) beside the .onnx PATH"
                )
            if path.startswith(_URI_SCHEMES) or Path(path).is_dir():
                raise BadUsage("--tokenizer, --labels and --pipeline go with an .onnx file PATH")
            parts = {k: v for k, v in given.items() if v is not None}
        with connect(url, token_file) as api:
            version = _register(api, name, path, parts)
        if as_json:
            emit_json(version)
        else:
            typer.echo(_registered(version))


@models_app.command("push")
def push_command(
    source: Annotated[
        str,
        typer.Argument(
            help="the ONNX file, bundle archive or bundle directory to upload, or a file:// or "
            "http(s):// URI"
        ),
    ],
    name: Annotated[str, typer.Option("--name", help="the model's name")],
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Register SOURCE as the next version of model NAME (as ``register NAME SOURCE``: a file is
    uploaded; a URI is fetched by the control plane)."""
    with fail_on_errors(), connect(url, token_file) as api:
        version = _register(api, name, source, None)
        if as_json:
            emit_json(version)
            return
        typer.echo(_registered(version))


def _show(version: dict[str, Any]) -> Table:
    table = Table(title=f"{version['name']} version {version['version']}", show_header=False)
    table.add_column("field")
    table.add_column("value")
    bundle = version.get("bundle")
    rows = [
        ("kind", "bundle" if bundle else "onnx"),
        ("sha256", version["sha256"]),
        ("size", f"{version['size'] / 1024:.1f} KiB"),
        ("source", version["source"]),
        ("created", time.strftime("%Y-%m-%d %H:%M", time.localtime(version["created"]))),
        ("inputs", signature_text(version["signature"]["inputs"])),
        ("outputs", signature_text(version["signature"]["outputs"])),
    ]
    if bundle:
        inner = bundle.get("model_signature") or {}
        rows += [
            ("task", bundle["task"]),
            ("text inputs", ", ".join(bundle["inputs"])),
            ("labels", ", ".join(bundle["labels"]) or "(none)"),
            ("files", "\n".join(f"{f} {d[:12]}" for f, d in sorted(bundle["files"].items()))),
            ("model inputs", signature_text(inner.get("inputs", []))),
            ("model outputs", signature_text(inner.get("outputs", []))),
        ]
    for row in rows:
        table.add_row(*row)
    return table


@models_app.command("show")
def show_command(
    name: Annotated[str, typer.Argument(help="the model")],
    version: Annotated[
        str | None, typer.Option("--version", help="one version (default: every version)")
    ] = None,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Show a model's versions: digest, signature and, for bundles, task and labels."""
    with fail_on_errors(), connect(url, token_file) as api:
        if version is None:
            versions = api.get(f"/api/v1/models/{quote(name)}")["versions"]
        else:
            versions = [api.get(f"/api/v1/models/{quote(name)}/versions/{quote(version)}")]
        if as_json:
            emit_json({"versions": versions})
            return
        if not versions:
            typer.echo(f"{name} has no versions")
            return
        console = Console()
        for v in versions:
            console.print(_show(v))


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
