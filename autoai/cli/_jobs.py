"""Following a control-plane job (deploy, scale): ``ControlClient.wait_job`` polls it; this module
shows a progress bar with the current step and each new log line, and ends with its result or
the CLI's ``JobFailed``.
``autoai job ID`` shows (or follows) one job, for deploys started with ``--no-wait``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Final

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from .. import control
from ..schema import JobInfo
from ._common import DEFAULT_URL, AsJson, TokenFile, Url, connect, emit_json, fail_on_errors
from ._errors import JobFailed
from ._rest import RestClient

__all__ = ["follow_job", "job_command", "new_log_lines"]

_TAIL: Final = 15


def new_log_lines(seen: Sequence[str], log: Sequence[str]) -> list[str]:
    """The lines of ``log`` (a bounded tail that may have dropped its oldest lines since) that
    come after the lines already ``seen``: ``log`` minus the longest start of it that ends
    ``seen``."""
    for overlap in range(min(len(seen), len(log)), 0, -1):
        if list(seen[len(seen) - overlap :]) == list(log[:overlap]):
            return list(log[overlap:])
    return list(log)


def failure_message(job: JobInfo) -> str:
    """``<title> failed: <error>`` and the tail of the job's and the instance's logs."""
    error = job.error.error if job.error else "?"
    lines = [f"{job.title or job.kind or 'job'} failed: {error}"]
    instance_log = (job.error.detail.get("log") if job.error else None) or []
    if instance_log:
        lines += ["instance log (last lines):", *(f"  {line}" for line in instance_log[-_TAIL:])]
    lines += ["job log (last lines):", *(f"  {line}" for line in job.log[-_TAIL:])]
    return "\n".join(lines)


def follow_job(api: RestClient, job_id: str, *, show: bool, poll_s: float = 0.2) -> dict[str, Any]:
    """Follow the job until it ends (``ControlClient.wait_job``); with ``show``, a progress bar
    and its log lines on stdout.

    Returns:
        The job's final state (``state`` ``succeeded``), as JSON.

    Raises:
        JobFailed: the job failed (its final state is in ``job``).
        Unreachable, ApiError: the control plane went away or forgot the job.
    """
    seen: list[str] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TimeElapsedColumn(),
        console=Console(),
        disable=not show,
    ) as bar:
        task = bar.add_task(f"job {job_id}", total=1.0)

        def progress(job: JobInfo) -> None:
            nonlocal seen
            if show:
                for line in new_log_lines(seen, job.log):
                    bar.console.print(line, markup=False, highlight=False)
            seen = list(job.log)
            bar.update(task, completed=job.progress, description=job.step or job.state)

        with api.errors():
            try:
                done = api.control.wait_job(job_id, poll=poll_s, on_progress=progress)
            except control.JobFailed as exc:
                job: JobInfo = exc.job
                raise JobFailed(failure_message(job), job.model_dump(mode="json")) from None
    return done.model_dump(mode="json")


def job_command(
    job_id: Annotated[str, typer.Argument(help="the job's id (as deploy --no-wait printed it)")],
    wait: Annotated[bool, typer.Option("--wait", help="follow the job until it ends")] = False,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Show a job of the control plane (state, progress, step, log); --wait follows it."""
    with fail_on_errors(), connect(url, token_file) as api:
        if wait:
            try:
                job = follow_job(api, job_id, show=not as_json)
            except JobFailed as exc:
                if as_json:
                    emit_json(exc.job)
                raise
        else:
            with api.errors():
                job = api.control.job(job_id).model_dump(mode="json")
        if as_json:
            emit_json(job)
            return
        progress = float(job.get("progress") or 0.0)
        typer.echo(f"job {job_id}: {job.get('title', '')}: {job['state']} ({progress:.0%})")
        if not wait:
            for line in (job.get("log") or [])[-_TAIL:]:
                typer.echo(f"  {line}")
