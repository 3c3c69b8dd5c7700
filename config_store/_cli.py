"""``autoai-store`` / ``python -m config_store``: get, publish, history, listen, instances, keys.

Exit codes: 0 success, 1 key not found, 2 bad input or an unreachable store, 4 conflict. Every
error is one line on stderr; the libraries' log lines (kazoo's "Connection dropped" while
ZooKeeper is down) only with ``-v``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from collections.abc import Callable, Sequence
from typing import NoReturn

from ._errors import ConfigStoreError, Conflict, InvalidKey, InvalidUrl, NotFound, StoreUnavailable
from ._open import open_store
from ._settings import StoreSettings
from ._store import ConfigStore
from ._types import ConfigItem, Instance

__all__ = ["main"]

_EXIT = {NotFound: 1, InvalidKey: 2, InvalidUrl: 2, StoreUnavailable: 2, Conflict: 4}


def _item_doc(item: ConfigItem) -> dict[str, object]:
    try:
        content: object = item.json()
    except ValueError:
        content = item.content.decode("utf-8", errors="replace")
    return {
        "data_id": item.data_id,
        "group": item.group,
        "revision": item.revision,
        "md5": item.md5,
        "modified": item.modified.isoformat(),
        "source": item.source,
        "content": content,
    }


def _instance_doc(inst: Instance) -> dict[str, object]:
    return {
        "id": inst.id,
        "host": inst.host,
        "port": inst.port,
        "status": inst.status,
        **inst.payload,
    }


def _print(doc: object) -> None:
    print(json.dumps(doc, indent=2, sort_keys=True, default=str), flush=True)


class _Parser(argparse.ArgumentParser):
    """argparse, with a usage error on one line (not the usage block, then the error)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}; see '{self.prog} --help'\n")


def _positive(kind: type[int] | type[float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="autoai-store",
        description="Read and write the AutoAI configuration store (ZooKeeper or embedded SQLite).",
        epilog="The store URL comes from --url, else AUTOAI_STORE_URL, else sqlite://~/.autoai/store.db.",
    )
    p.add_argument("--url", help="zk://host:port[,host:port]/chroot or sqlite:///path/to/store.db")
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="show the libraries' log lines on stderr (kazoo...): -v info, -vv debug",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def key_cmd(name: str, help: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help, description=help)
        c.add_argument("data_id")
        c.add_argument("--group", default="models", help="the key's group (default: models)")
        return c

    g = key_cmd("get", "print the current revision of a key (content only with --raw)")
    g.add_argument(
        "--raw", action="store_true", help="write the content bytes to stdout as they are"
    )
    pub = key_cmd("publish", "publish a new revision from a file or stdin; prints the revision")
    pub.add_argument("file", nargs="?", default="-", help="file with the content, or - for stdin")
    pub.add_argument(
        "--expected-revision", type=int, help="compare-and-swap; 0 means must not exist"
    )
    h = key_cmd("history", "list earlier revisions, newest first")
    h.add_argument("--limit", type=int, default=20)
    h.add_argument("--content", action="store_true", help="include each revision's content")
    lst = key_cmd("listen", "print every change of a key as one JSON line")
    lst.add_argument("--count", type=_positive(int), help="exit after this many changes")
    lst.add_argument("--timeout", type=_positive(float), help="exit after this many seconds")
    rm = key_cmd("remove", "delete a key (its history stays)")
    rm.add_argument("--expected-revision", type=int)
    ls = sub.add_parser("keys", help="list the data ids of a group")
    ls.add_argument("--group", default="models")
    inst = sub.add_parser("instances", help="list the live instances of a service")
    inst.add_argument("service")
    inst.add_argument("--watch", action="store_true", help="keep printing the list on every change")
    inst.add_argument(
        "--timeout", type=_positive(float), help="with --watch: exit after this many seconds"
    )
    return p


def _listen(store: ConfigStore, args: argparse.Namespace) -> int:
    done = threading.Event()
    seen = 0

    def on_change(item: ConfigItem | None) -> None:
        nonlocal seen
        doc = None if item is None else {k: v for k, v in _item_doc(item).items() if k != "content"}
        print(json.dumps(doc, sort_keys=True), flush=True)
        seen += 1
        if args.count is not None and seen >= args.count:
            done.set()

    listener = store.add_listener(args.data_id, on_change, group=args.group)
    try:
        done.wait(args.timeout)
    except KeyboardInterrupt:
        pass
    listener.cancel()
    return 0


def _read_content(args: argparse.Namespace) -> bytes | None:
    """``publish``'s content, read before the store is opened (a missing file fails at once).

    Raises:
        OSError: the file cannot be read.
    """
    if args.command != "publish":
        return None
    if args.file == "-":
        return sys.stdin.buffer.read()
    with open(args.file, "rb") as f:
        return f.read()


def _configure_logging(verbose: int) -> None:
    """Library log lines on stderr with ``-v`` (INFO) or ``-vv`` (DEBUG), none without: a
    ``NullHandler`` on the root logger keeps Python's last-resort handler from printing them."""
    if verbose:
        logging.basicConfig(
            level=logging.INFO if verbose == 1 else logging.DEBUG,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
    else:
        logging.getLogger().addHandler(logging.NullHandler())
    logging.captureWarnings(True)


def _unavailable_hint(url: str) -> str:
    if url.startswith("zk://"):
        return " (is ZooKeeper running at that address? --url or AUTOAI_STORE_URL names it)"
    return ""


def _fail(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr)
    return code


def _run(store: ConfigStore, args: argparse.Namespace, content: bytes | None) -> int:
    cmd = args.command
    if cmd == "get":
        item = store.get(args.data_id, group=args.group)
        if item is None:
            print(f"{args.group}/{args.data_id} does not exist", file=sys.stderr)
            return 1
        if args.raw:
            sys.stdout.buffer.write(item.content)
        else:
            _print(_item_doc(item))
    elif cmd == "publish":
        assert content is not None
        print(
            store.publish(
                args.data_id, content, group=args.group, expected_revision=args.expected_revision
            )
        )
    elif cmd == "history":
        docs = [
            _item_doc(i) for i in store.history(args.data_id, group=args.group, limit=args.limit)
        ]
        _print(
            docs if args.content else [{k: v for k, v in d.items() if k != "content"} for d in docs]
        )
    elif cmd == "listen":
        return _listen(store, args)
    elif cmd == "remove":
        store.remove(args.data_id, group=args.group, expected_revision=args.expected_revision)
    elif cmd == "keys":
        _print(store.keys(args.group))
    elif cmd == "instances":
        if not args.watch:
            _print([_instance_doc(i) for i in store.instances(args.service)])
        else:
            watch = store.watch_instances(
                args.service,
                lambda insts: print(json.dumps([_instance_doc(i) for i in insts]), flush=True),
            )
            try:
                threading.Event().wait(args.timeout)
            except KeyboardInterrupt:
                pass
            watch.cancel()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        settings = StoreSettings()
    except ValueError as exc:
        return _fail(f"AUTOAI_STORE_*: {exc}".splitlines()[0], 2)
    url = args.url or settings.url
    try:
        content = _read_content(args)
    except OSError as exc:
        return _fail(f"cannot read {args.file}: {exc.strerror or exc}", 2)
    try:
        store = open_store(
            url, snapshot_dir=settings.snapshot_dir, failover_dir=settings.failover_dir
        )
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        return _fail(f"cannot open the store {url}: {exc.strerror or exc}{where}", 2)
    except ConfigStoreError as exc:
        hint = _unavailable_hint(url) if isinstance(exc, StoreUnavailable) else ""
        return _fail(f"{exc}{hint}", _exit_code(exc))
    try:
        with store:
            return _run(store, args, content)
    except ConfigStoreError as exc:
        hint = _unavailable_hint(url) if isinstance(exc, StoreUnavailable) else ""
        return _fail(f"{exc}{hint}", _exit_code(exc))
    except OSError as exc:  # stdout closed early (``| head``), a full disk
        return _fail(exc.strerror or str(exc), 2)


def _exit_code(exc: ConfigStoreError) -> int:
    return next((code for cls, code in _EXIT.items() if isinstance(exc, cls)), 3)


if __name__ == "__main__":
    sys.exit(main())
