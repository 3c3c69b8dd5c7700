"""The local snapshot (what this host last saw of each key, served when the store is unreachable)
and the failover directory (operator-written files that override the store). Small file I/O only;
``SnapshotWriter`` moves it off the threads that learn of changes."""

from __future__ import annotations

import functools
import json
import logging
import os
import tempfile
import threading
from pathlib import Path

from . import _envelope
from ._dispatch import Mailbox
from ._types import ConfigItem, Instance, utc_from_timestamp

__all__ = [
    "FailoverDir",
    "SnapshotDir",
    "SnapshotWriter",
    "default_failover_dir",
    "default_snapshot_dir",
]

log = logging.getLogger("config_store.snapshot")
_INSTANCES_DIR = "_instances"


def default_snapshot_dir() -> Path:
    return Path.home() / ".autoai" / "snapshot"


def default_failover_dir() -> Path:
    return Path.home() / ".autoai" / "failover"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class SnapshotDir:
    """Snapshot files under ``root/identity/group/data_id`` (enveloped, MD5-checked) and
    ``root/identity/_instances/service.json``."""

    def __init__(self, root: Path, identity: str):
        self.root = root / identity

    def _item_path(self, group: str, data_id: str) -> Path:
        return self.root / group / data_id

    def write(self, item: ConfigItem) -> None:
        data = _envelope.encode(item.revision, item.md5, item.modified.timestamp(), item.content)
        try:
            _atomic_write(self._item_path(item.group, item.data_id), data)
        except OSError as exc:
            log.warning("cannot write snapshot of %s/%s: %s", item.group, item.data_id, exc)

    def delete(self, group: str, data_id: str) -> None:
        try:
            self._item_path(group, data_id).unlink(missing_ok=True)
        except OSError as exc:
            log.warning("cannot delete snapshot of %s/%s: %s", group, data_id, exc)

    def read(self, group: str, data_id: str) -> ConfigItem | None:
        path = self._item_path(group, data_id)
        try:
            env = _envelope.decode(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable snapshot %s: %s", path, exc)
            return None
        return ConfigItem(
            data_id,
            group,
            env.content,
            env.revision,
            env.md5,
            utc_from_timestamp(env.modified),
            "snapshot",
        )

    def write_instances(self, service: str, instances: list[Instance]) -> None:
        doc = [
            {
                "id": i.id,
                "host": i.host,
                "port": i.port,
                "status": i.status,
                "payload": dict(i.payload),
            }
            for i in instances
        ]
        try:
            _atomic_write(self.root / _INSTANCES_DIR / f"{service}.json", json.dumps(doc).encode())
        except (OSError, TypeError) as exc:
            log.warning("cannot write instance snapshot of %s: %s", service, exc)

    def read_instances(self, service: str) -> list[Instance] | None:
        path = self.root / _INSTANCES_DIR / f"{service}.json"
        try:
            doc = json.loads(path.read_bytes())
            return [
                Instance(service, d["id"], d["host"], int(d["port"]), d["status"], d["payload"])
                for d in doc
            ]
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable instance snapshot %s: %s", path, exc)
            return None


class SnapshotWriter:
    """Writes a key's snapshot file on the callback pool, latest value first: a backend thread
    or a reader posts and goes on; a key's writes happen one at a time, and a value already on
    disk is not written again."""

    def __init__(self, snapshot: SnapshotDir):
        self._snapshot = snapshot
        self._lock = threading.Lock()
        self._boxes: dict[tuple[str, str], Mailbox[ConfigItem | None]] = {}
        self._written: dict[tuple[str, str], int] = {}

    def post(self, group: str, data_id: str, item: ConfigItem | None) -> None:
        """Record what the store said of a key (``None``: it does not exist). Values served
        from a copy (snapshot, failover) are not written back."""
        if item is not None and item.source != "store":
            return
        key = (group, data_id)
        with self._lock:
            box = self._boxes.get(key)
            if box is None:
                box = self._boxes[key] = Mailbox(functools.partial(self._apply, key))
        box.post(item)

    def _apply(self, key: tuple[str, str], item: ConfigItem | None) -> None:
        revision = 0 if item is None else item.revision
        if self._written.get(key) == revision:
            return
        if item is None:
            self._snapshot.delete(*key)
        else:
            self._snapshot.write(item)
        self._written[key] = revision


class FailoverDir:
    """Operator override: a file ``root/group/data_id`` holding raw content wins over the store."""

    def __init__(self, root: Path):
        self.root = root

    def read(self, group: str, data_id: str) -> ConfigItem | None:
        path = self.root / group / data_id
        try:
            st = path.stat()
            content = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("ignoring unreadable failover file %s: %s", path, exc)
            return None
        return ConfigItem(
            data_id,
            group,
            content,
            0,
            _envelope.content_md5(content),
            utc_from_timestamp(st.st_mtime),
            "failover",
        )
