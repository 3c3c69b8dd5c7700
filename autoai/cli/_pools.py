"""``autoai pools list | show | scale | delete``: the pools of shared multi-model instances that
pooled deploys (``metadata.pool``) are loaded onto. A pool is created by the first deploy that
names it, so there is no ``create``; ``scale`` is refused (409) below the largest instance count
of a deployment on it; ``delete`` is refused (409) while deployments are on it."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from ..schema import LocalInstanceHealth, Pool
from ._common import DEFAULT_URL, AsJson, TokenFile, Url, connect, emit_json, fail_on_errors
from ._errors import JobFailed
from ._jobs import follow_job

__all__ = ["pool_table", "pools_app"]

pools_app = typer.Typer(
    help="List, show, resize and delete pools of shared multi-model instances (metadata.pool).",
    no_args_is_help=True,
)

PoolName = Annotated[str, typer.Argument(help="the pool (metadata.pool of its deploys)")]


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(seconds))


def pool_table(pools: list[Pool]) -> Table:
    """One row per pool: size, instances alive and ready, the deployments on it, its origin."""
    table = Table(title="pools")
    for col in ("pool", "orchestrator", "size", "alive", "ready", "deployments", "created by"):
        table.add_column(col, justify="right" if col in ("size", "alive", "ready") else "left")
    for p in pools:
        table.add_row(
            p.name,
            p.orchestrator,
            str(p.size),
            str(sum(1 for i in p.instances if i.alive)),
            str(sum(1 for i in p.instances if i.ready)),
            "\n".join(p.deployments) or "-",
            f"{p.created_by or '?'}, {_when(p.created)}",
        )
    return table


def _instance_table(pool: Pool) -> Table:
    """One row per instance of the pool: its process (or pod), where it listens, its health."""
    table = Table(title=f"instances of pool {pool.name} (service {pool.service})")
    for col in ("instance", "port", "alive", "ready", "restarts"):
        table.add_column(col, justify="left" if col == "instance" else "right")
    for i in pool.instances:
        if isinstance(i, LocalInstanceHealth):
            instance, port = f"pid {i.pid}", str(i.port or "-")
        else:
            instance, port = f"pod {i.pod or '-'} {i.ip or ''}".rstrip(), str(i.port or "-")
        yes = {True: "yes", False: "no"}
        table.add_row(instance, port, yes[i.alive], yes[i.ready], str(i.restarts))
    return table


@pools_app.command("list")
def list_command(
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """List every pool: its size, instances alive and ready, the deployments on it."""
    with fail_on_errors(), connect(url, token_file) as api, api.errors():
        pools = api.control.pools()
    if as_json:
        emit_json({"pools": [p.model_dump(mode="json") for p in pools]})
    elif not pools:
        typer.echo("no pools (a deploy with metadata.pool creates one)")
    else:
        Console().print(pool_table(pools))


@pools_app.command("show")
def show_command(
    name: PoolName,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Show one pool: each instance (pid or pod, port, alive, ready) and the deployments on it."""
    with fail_on_errors(), connect(url, token_file) as api, api.errors():
        pool = api.control.pool(name)
    if as_json:
        emit_json(pool.model_dump(mode="json"))
        return
    console = Console()
    console.print(
        f"pool {pool.name}: {pool.size} instance(s) on {pool.orchestrator}, created by "
        f"{pool.created_by or '?'} at {_when(pool.created)}",
        markup=False,
        highlight=False,
    )
    console.print(_instance_table(pool))
    console.print(
        f"deployments: {', '.join(pool.deployments) or 'none'}", markup=False, highlight=False
    )


@pools_app.command("scale")
def scale_command(
    name: PoolName,
    instances: Annotated[int, typer.Argument(help="the pool's new number of instances", min=1)],
    no_wait: Annotated[
        bool, typer.Option("--no-wait", help="print the job id and return (see `autoai job`)")
    ] = False,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Resize a pool: new instances start empty; removed ones are drained and stopped after
    the versions they host are loaded onto the others (refused below the largest instance
    count of a deployment on the pool)."""
    with fail_on_errors(), connect(url, token_file) as api, api.errors():
        job_id = api.control.scale_pool(name, instances)
        if no_wait:
            if as_json:
                emit_json({"job": job_id})
            else:
                typer.echo(f"job {job_id} started; follow it with: autoai job {job_id} --wait")
            return
        try:
            job = follow_job(api, job_id, show=not as_json)
        except JobFailed as exc:
            if as_json:
                emit_json(exc.job)
            raise
    if as_json:
        emit_json(job)
    else:
        typer.echo(f"pool {name} scaled to {instances} instance(s)")


@pools_app.command("delete")
def delete_command(
    name: PoolName,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Drain and stop a pool's instances and forget it (refused while versions are on it)."""
    with fail_on_errors(), connect(url, token_file) as api, api.errors():
        api.control.delete_pool(name)
    if as_json:
        emit_json({"deleted": {"pool": name}})
    else:
        typer.echo(f"deleted pool {name}: its instances are stopped")
