"""``autoai publish | rollback | releases``: a model's route table (gray release), its history."""

from __future__ import annotations

import time
from collections.abc import Mapping
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
from ._parse import parse_routes, parse_shadow

__all__ = [
    "labels_text",
    "publish_command",
    "release_table",
    "releases_command",
    "rollback_command",
    "routes_text",
    "shadow_text",
]


def routes_text(routes: Mapping[str, Any]) -> str:
    """``{"1": 90, "2": 10}`` -> ``1=90 2=10``."""
    return " ".join(f"{version}={weight}" for version, weight in routes.items())


def shadow_text(shadow: Mapping[str, Any] | None) -> str:
    """``{"version": "3", "ratio": 0.05}`` -> ``3:0.05``; ``None`` -> ``""``."""
    return "" if not shadow else f"{shadow.get('version')}:{shadow.get('ratio'):g}"


def labels_text(release: Mapping[str, Any]) -> str:
    """A release's label set, marked ``(changed)`` when that revision changed it."""
    labels = ", ".join(release.get("labels") or [])
    return f"{labels} (changed)" if release.get("label_change") else labels


def release_table(title: str, releases: list[dict[str, Any]], *, model: bool = False) -> Table:
    """Releases (``GET .../releases`` entries) as a table; ``model`` adds a model column."""
    table = Table(title=title)
    columns = ["model"] if model else []
    columns += ["revision", "published", "routes", "sticky key", "shadow", "labels", "by"]
    columns += ["reason"]
    for col in columns:
        table.add_column(col, justify="right" if col == "revision" else "left")
    for r in releases:
        cells = [r["model"]] if model else []
        cells += [
            str(r["revision"]),
            time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["modified"])),
            routes_text(r["routes"]),
            r.get("sticky_key") or "",
            shadow_text(r.get("shadow")),
            labels_text(r),
            r.get("published_by") or "",
            r.get("reason") or "",
        ]
        table.add_row(*cells)
    return table


def publish_command(
    name: Annotated[str, typer.Argument(help="the model")],
    route: Annotated[
        list[str],
        typer.Option("--route", help="VERSION=WEIGHT, repeated: --route 2=90 --route 3=10"),
    ],
    sticky_key: Annotated[
        str | None,
        typer.Option("--sticky-key", help="send each value of this call key to one version"),
    ] = None,
    shadow: Annotated[
        str | None,
        typer.Option("--shadow", help="VERSION:FRACTION of calls mirrored, such as 3:0.05"),
    ] = None,
    expected_revision: Annotated[
        int | None,
        typer.Option("--expected-revision", help="refuse unless this is the current revision"),
    ] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="why, for the history")] = None,
    allow_label_change: Annotated[
        bool,
        typer.Option(
            "--allow-label-change",
            help="publish versions whose label sets differ (from each other or from the "
            "published table's); recorded in the release",
        ),
    ] = False,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Publish the model's route table: weights per version, sticky key, shadow traffic. A
    change of the label set (bundles) is refused unless --allow-label-change says it is
    intended."""
    with fail_on_errors():
        mirror = None if shadow is None else parse_shadow(shadow)
        body = {
            "routes": parse_routes(route),
            "sticky_key": sticky_key,
            "shadow": mirror,
            "expected_revision": expected_revision,
            "reason": reason,
        }
        if allow_label_change:  # sent only when set: an older control plane refuses the field
            body["allow_label_change"] = True
        with connect(url, token_file) as api:
            answer = api.post(f"/api/v1/models/{quote(name)}/publish", json=body)
        if as_json:
            emit_json(answer)
            return
        weights = {str(r["version"]): r["weight"] for r in answer["table"]["routes"]}
        extra = f", shadow {shadow_text(mirror)}" if mirror else ""
        sticky = f", sticky key {sticky_key}" if sticky_key else ""
        labels = answer["table"].get("labels")
        if answer["table"].get("label_change"):
            extra += f", labels changed to {', '.join(labels or []) or '(none)'}"
        typer.echo(
            f"published {name} revision {answer['revision']}: {routes_text(weights)}{sticky}{extra}"
        )


def rollback_command(
    name: Annotated[str, typer.Argument(help="the model")],
    revision: Annotated[
        int | None,
        typer.Option("--revision", help="the revision to republish (default: the previous)"),
    ] = None,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Republish an earlier route table (the previous one by default)."""
    with fail_on_errors(), connect(url, token_file) as api:
        model = quote(name)
        answer = api.post(f"/api/v1/models/{model}/rollback", json={"revision": revision})
        current = api.get(f"/api/v1/models/{model}/releases", limit=1)["releases"]
        if as_json:
            emit_json({**answer, "release": current[0] if current else None})
            return
        what = (
            f": {routes_text(current[0]['routes'])} ({current[0].get('reason') or ''})"
            if current
            else ""
        )
        typer.echo(f"rolled back {name}, now at revision {answer['revision']}{what}")


def releases_command(
    name: Annotated[str, typer.Argument(help="the model")],
    limit: Annotated[int, typer.Option("--limit", help="most revisions shown", min=1)] = 20,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """The model's published revisions, newest first: routes, who, when, why."""
    with fail_on_errors(), connect(url, token_file) as api:
        releases = api.get(f"/api/v1/models/{quote(name)}/releases", limit=limit)["releases"]
        if as_json:
            emit_json({"releases": releases})
        elif not releases:
            typer.echo(f"{name} has never been published")
        else:
            Console().print(release_table(f"releases of {name}", releases))
