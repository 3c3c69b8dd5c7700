"""The ``autoai`` command line."""

from __future__ import annotations

import typer

from ._blade import blade_app
from ._up import up_command

__all__ = ["app", "main"]

app = typer.Typer(
    name="autoai",
    help="AutoAI: deploy, optimize and publish ONNX models.",
    no_args_is_help=True,
    add_completion=False,
)
app.add_typer(blade_app, name="blade")
app.command("up")(up_command)


def main() -> None:
    app()
