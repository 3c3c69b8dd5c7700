"""``autoai status [N]``: deployments with their instances' health, and each model's current
route table."""

from __future__ import annotations

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
from ._publish import release_table

__all__ = ["deployment_table", "status_command"]


def deployment_table(deployments: list[dict[str, Any]]) -> Table:
    """One row per deployment: processor, instances (total, alive, ready), endpoints."""
    table = Table(title="deployments")
    for col in ("model", "version", "processor", "instances", "alive", "ready", "endpoints"):
        numeric = col in ("version", "instances", "alive", "ready")
        table.add_column(col, justify="right" if numeric else "left")
    for d in deployments:
        instances = d.get("instances") or []
        processor = d.get("processor", "?")
        speedup = (d.get("blade") or {}).get("speedup")
        table.add_row(
            d["name"],
            d["version"],
            processor if speedup is None else f"{processor} ({speedup:.2f}x)",
            str(len(instances)),
            str(sum(1 for i in instances if i.get("alive"))),
            str(sum(1 for i in instances if i.get("ready"))),
            "\n".join(d.get("endpoints") or []) or "-",
        )
    return table


def status_command(
    name: Annotated[str | None, typer.Argument(help="only this model")] = None,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Deployments (processor, instances alive and ready, endpoints) and current route tables."""
    with fail_on_errors(), connect(url, token_file) as api:
        if name is None:
            models = [m["name"] for m in api.get("/api/v1/models")["models"]]
        else:
            models = [api.get(f"/api/v1/models/{quote(name)}")["name"]]
        deployments = [
            d for d in api.get("/api/v1/deployments")["deployments"] if d["name"] in models
        ]
        routes: dict[str, Any] = {}
        for model in models:
            latest = api.get(f"/api/v1/models/{quote(model)}/releases", limit=1)["releases"]
            routes[model] = latest[0] if latest else None
    if as_json:
        emit_json({"deployments": deployments, "routes": routes})
        return
    console = Console()
    if deployments:
        console.print(deployment_table(deployments))
    else:
        console.print("no deployments" + ("" if name is None else f" of {name}"))
    published = [{"model": m, **r} for m, r in routes.items() if r is not None]
    if published:
        console.print(release_table("routes (current revision)", published, model=True))
    unpublished = [m for m, r in routes.items() if r is None]
    if unpublished:
        console.print(f"not published: {', '.join(unpublished)}", markup=False, highlight=False)
