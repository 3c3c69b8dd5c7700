"""``eas-server``: serve model versions over the Open Inference Protocol.

A start that fails (bad flags, a missing or non-ONNX model file, a busy port, a store that cannot
be opened) ends in one line on stderr, ``eas-server: ...``, and exit status 2; once serving, the
server logs at ``--log-level`` (``-v``: info, ``-vv``: debug).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from pydantic import ValidationError

from ._errors import ModelLoadError
from ._settings import ServerSettings, load_service_json

__all__ = ["main"]

_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (not the 15-line usage block, then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see '{self.prog} --help'\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="eas-server",
        description="Serve ONNX model versions over the Open Inference Protocol (KServe v2, "
        "with Triton's binary tensors, /config, /stats and repository extension) with dynamic "
        "batching: one (--model, --name) or a repository of many (--model-repository). Prints "
        "'listening on http://HOST:PORT' once ready.",
        epilog="Precedence: flags > EAS_* environment > --config service JSON > defaults.",
    )
    a = p.add_argument
    a("--model", help="model path (.onnx file, or a blade artifact directory)")
    a(
        "--model-repository",
        help="serve every model of this directory (DIR/NAME/VERSION/model.onnx or a blade "
        "artifact there; optional DIR/NAME/config.json service JSON) and take Triton's "
        "repository API (load, unload, index) for more; --model may be served beside them",
    )
    a("--name", help="model name clients address")
    a("--version", help="model version (default 1)")
    a(
        "--processor",
        help="runtime: onnx (default), blade, pipeline (a text bundle) or seq2seq (a generation "
        "bundle); picked from the model directory when left out",
    )
    a(
        "--host",
        help="address to bind (default 127.0.0.1; beyond loopback, only with a token or "
        "--insecure)",
    )
    a("--port", type=int, help="port to bind (default 0: a free port)")
    a(
        "--grpc-port",
        type=int,
        help="also serve KServe v2 gRPC on HOST at this port (0: a free port; prints "
        "'grpc listening on HOST:PORT'); default: no gRPC",
    )
    a("--store", help="config store URL to register in once ready (zk://... or sqlite:///...)")
    a("--service", help="service name to register under (default NAME-VERSION)")
    a("--weight", type=int, help="routing weight announced in the registration (default 100)")
    a("--max-batch-size", type=int, help="most rows per runtime call (default 32)")
    a(
        "--max-batch-timeout-ms",
        type=float,
        help="longest wait for a batch, from the oldest request (default 5)",
    )
    a(
        "--max-queue-size",
        type=int,
        help="queued requests beyond which requests get 503 (default 256)",
    )
    a(
        "--no-batching",
        dest="batching",
        action="store_const",
        const=False,
        help="run every request alone",
    )
    a("--workers", type=int, help="runtime sessions running in parallel (default 1)")
    a(
        "--intra-op-threads",
        type=int,
        help="threads per session (default: usable cores / workers; usable = CPU affinity, "
        "capped by a cgroup quota)",
    )
    a(
        "--frontends",
        type=int,
        help="HTTP front end processes sharing the port, feeding one executor that owns the "
        "sessions and the batcher (default 0: one on CPU, one per spare core up to 4 on a GPU; "
        "1: a single process)",
    )
    a(
        "--handoff",
        choices=["auto", "inline", "threads"],
        help="where batches run: inline on the event loop's thread, threads on worker threads, "
        "auto (default) inline when one CPU worker's threads take every usable core",
    )
    a(
        "--padding",
        choices=["auto", "off"],
        help="pad requests of different lengths into one batch: auto (default) as "
        "metadata.padding of --config declares, else when a probe at load finds it safe; "
        "off: never",
    )
    a("--priority-levels", type=int, help="request priority levels (default 2)")
    a("--max-request-rows", type=int, help="hard limit on rows per request (default 1024)")
    a("--max-body-mb", type=float, help="largest request body in MiB (default 64)")
    a("--token", help="token required on model routes (prefer EAS_TOKEN or --token-file)")
    a("--token-file", type=Path, help="read the token from this file")
    a(
        "--insecure",
        action="store_const",
        const=True,
        help="serve beyond loopback without a token (EAS_INSECURE): anyone who can reach HOST "
        "can call the model; without it, a non-loopback --host and no token is refused",
    )
    a("--drain-timeout-s", type=float, help="on SIGTERM, longest time to drain (default 30)")
    a("--log-level", help="logging level (default warning)")
    a(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more: -v is --log-level info, -vv debug",
    )
    a("--config", type=Path, help="EAS service JSON (name, processor, model_path, metadata.rpc.*)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    flags = {k: v for k, v in vars(args).items() if k not in ("config", "token_file", "verbose")}
    if flags.get("padding") == "auto":
        flags["padding"] = None  # the default: keeps a declaration from --config
    if args.verbose and args.log_level is None:
        flags["log_level"] = "info" if args.verbose == 1 else "debug"
    try:
        if args.token_file is not None:
            flags["token"] = _read_token(args.token_file)
        service = load_service_json(args.config) if args.config else None
        settings = ServerSettings.load(flags, service)
        _check_store_url(settings.store)
    except (ValueError, OSError) as exc:
        return _fail(_explain(exc))
    if settings.log_level.lower() not in _LOG_LEVELS:
        return _fail(
            f"--log-level {settings.log_level!r}: expected one of {', '.join(_LOG_LEVELS)}"
        )
    if settings.exposed_without_token and not settings.insecure:
        return _fail(
            f"refusing to listen on {settings.host} without a token: set EAS_TOKEN "
            "or --token-file (or pass --insecure to serve the model to anyone who can reach it)"
        )
    if settings.log_level.lower() not in ("info", "debug", "trace"):
        # gRPC's C core logs to stderr itself (a busy --grpc-port: our one line, and its own).
        os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    from config_store import ConfigStoreError

    from ._server import serve

    try:
        return serve(settings)
    except ModelLoadError as exc:
        return _fail(str(exc))
    except ConfigStoreError as exc:
        return _fail(f"cannot register in the store: {exc}")
    except OSError as exc:
        return _fail(_os_error(settings, exc))


def _fail(message: str) -> int:
    """A start that cannot succeed: one line on stderr, exit status 2."""
    print(f"eas-server: {message}", file=sys.stderr)
    return 2


def _read_token(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise ValueError(f"--token-file {path}: {exc.strerror or exc}") from None


def _check_store_url(url: str | None) -> None:
    """A malformed ``--store`` stops the start before the model is loaded, not after."""
    if url is None:
        return
    from config_store import InvalidUrl
    from config_store._url import parse_url

    try:
        parse_url(url)
    except InvalidUrl as exc:
        raise ValueError(f"--store: {exc}") from None


def _os_error(settings: ServerSettings, exc: OSError) -> str:
    """A file that cannot be read names the file; else it is the address (HTTP or gRPC)."""
    if exc.filename:
        return f"cannot read {exc.filename}: {exc.strerror or exc}"
    if exc.strerror and "gRPC" in exc.strerror:  # start_grpc names the address itself
        return f"{exc.strerror}: {os.strerror(exc.errno)}" if exc.errno else exc.strerror
    return f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"


def _explain(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        parts = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            if not where:  # a rule across several settings: the message names the flags
                parts.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            flag = "--" + where.replace("_", "-")
            parts.append(f"{flag}: {err['msg']}")
        return "; ".join(parts)
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
