"""How the ``autoai`` process meets its user, whatever the command: a usage error (an unknown
option, a missing argument, a malformed number) is one line on stderr and exit 2, as our own
``CliError`` is; the libraries' loggers (kazoo, httpx, ``config_store``, ``py.warnings``) stay
quiet unless ``autoai -v``.

Click renders usage errors as a usage line, a hint and a framed message (typer's rich panel);
``OneLineGroup`` is the root command's class and turns them into
``error: Missing option '--name'; see 'autoai models push --help'``.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any, Final, NoReturn

import typer
from typer.core import TyperGroup

__all__ = ["OneLineGroup", "configure_logging", "usage_line"]

_HANDLER: Final = "autoai-cli"
_VERBOSE_FLAGS: Final = ("-v", "--verbose")


def usage_line(exc: typer.TyperException) -> str:
    """``error: <click's message>; see '<command> --help'`` on one line.

    ``exc`` is one of click's exceptions (typer vendors click: they derive from
    ``TyperException``); a usage error carries the context of the command it concerns.
    """
    message = " ".join(exc.format_message().split()).rstrip(".")
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return f"error: {message}"
    if getattr(exc, "option_name", None) in _VERBOSE_FLAGS:  # NoSuchOption
        root = ctx.find_root().command_path
        sub = ctx.command_path.removeprefix(root).strip()
        return f"error: {message}; give -v before the command: {root} -v {sub} ..."
    return f"error: {message}; see '{ctx.command_path} --help'"


def _exit(code: int) -> NoReturn:
    sys.exit(code)


class OneLineGroup(TyperGroup):
    """The root group: click's usage errors as one line (``usage_line``), exit status 2.

    ``autoai`` alone still prints the help (exit 2, as before); Ctrl-C still exits 130.
    """

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )  # fmt: skip
        try:
            # Not standalone: click's errors come here instead of being printed, and a
            # typer.Exit comes back as its code.
            code = super().main(
                args, prog_name, complete_var, False, windows_expand_args, **extra
            )  # fmt: skip
        except typer.TyperException as exc:
            # NoArgsIsHelpError (by name, as typer tells it apart): the help is printed already.
            if type(exc).__name__ != "NoArgsIsHelpError":
                typer.echo(usage_line(exc), err=True)
            _exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            _exit(1)
        _exit(code if isinstance(code, int) else 0)


def configure_logging(verbose: int) -> None:
    """Library log lines on stderr with ``verbose`` (1: INFO, 2: DEBUG), none without.

    Without a handler, Python prints WARNING records of any library (kazoo's "Connection dropped"
    while ZooKeeper is down) through its last-resort handler; a ``NullHandler`` on the root
    logger stops that. ``warnings`` go through logging too (``py.warnings``). Idempotent.
    """
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER]:
        root.removeHandler(old)
    handler: logging.Handler
    if verbose > 0:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
        root.setLevel(logging.INFO if verbose == 1 else logging.DEBUG)
    else:
        handler = logging.NullHandler()
    handler.set_name(_HANDLER)
    root.addHandler(handler)
    logging.captureWarnings(True)
