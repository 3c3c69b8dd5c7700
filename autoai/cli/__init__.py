"""The ``autoai`` command line."""

from __future__ import annotations

from typing import Annotated

import typer

from ._bench import bench_command
from ._blade import blade_app
from ._deploy import deploy_command, scale_command, undeploy_command
from ._jobs import job_command
from ._models import models_app
from ._pools import pools_app
from ._predict import predict_command
from ._publish import publish_command, releases_command, rollback_command
from ._shell import OneLineGroup, configure_logging
from ._status import status_command
from ._up import up_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="autoai",
    help="AutoAI: deploy, optimize and publish ONNX models.",
    no_args_is_help=True,
    add_completion=False,
    cls=OneLineGroup,
)
app.add_typer(blade_app, name="blade")
app.command("up")(up_command)
app.add_typer(models_app, name="models")
app.command("deploy")(deploy_command)
app.command("undeploy")(undeploy_command)
app.command("scale")(scale_command)
app.command("job")(job_command)
app.command("publish")(publish_command)
app.command("rollback")(rollback_command)
app.command("releases")(releases_command)
app.command("status")(status_command)
app.add_typer(pools_app, name="pools")
app.command("predict")(predict_command)
app.command("bench")(bench_command)


@app.callback()
def _options(
    ctx: typer.Context,
    verbose: Annotated[
        int,
        typer.Option(
            "--verbose",
            "-v",
            count=True,
            help="show the libraries' log lines on stderr (kazoo, httpx, the SDK, blade's "
            "passes): -v info, -vv debug; give it before the command",
        ),
    ] = 0,
) -> None:
    # `up` is a server: it logs as uvicorn and --log-level say.
    if ctx.invoked_subcommand != "up":
        configure_logging(verbose)


def main() -> None:
    app(prog_name="autoai")  # also under `python -m autoai.cli`: messages name the command
