"""Backend fixtures: every contract test runs once on SQLite and once on ZooKeeper."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from config_store import ConfigItem, ConfigStore, Instance, open_store


class StoreFactory(Protocol):
    """Opens another client of the same store (a new session / connection)."""

    url: str
    backend: str

    def __call__(self, **kwargs: Any) -> ConfigStore: ...


@pytest.fixture(params=["sqlite", "zk"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def factory(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreFactory]:
    if backend == "zk":
        url = request.getfixturevalue("zk_url") + "?session_timeout=4"
    else:
        url = f"sqlite://{tmp_path / 'store.db'}?lease_ttl=2"
    opened: list[ConfigStore] = []
    counter = iter(range(1000))

    def make(**kwargs: Any) -> ConfigStore:
        kwargs.setdefault("snapshot_dir", tmp_path / f"snap{next(counter)}")
        kwargs.setdefault("failover_dir", False)
        store = open_store(kwargs.pop("url", url), **kwargs)
        opened.append(store)
        return store

    make.url = url  # type: ignore[attr-defined]
    make.backend = backend  # type: ignore[attr-defined]
    yield make  # type: ignore[misc]
    for store in opened:
        store.close()


@pytest.fixture
def store(factory: StoreFactory) -> ConfigStore:
    return factory()


class Recorder:
    """Collects callback values and waits for a condition on them."""

    def __init__(self) -> None:
        self.values: list[Any] = []
        self._cond = threading.Condition()

    def __call__(self, value: Any) -> None:
        with self._cond:
            self.values.append(value)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self.values):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"condition not met in {timeout}s; got {self.values!r}")
                self._cond.wait(left)
            return list(self.values)

    def revisions(self) -> list[int | None]:
        return [None if v is None else v.revision for v in self.values]

    def last(self) -> Any:
        return self.values[-1] if self.values else None


def at_revision(revision: int) -> Callable[[list[Any]], bool]:
    return lambda vs: bool(vs) and isinstance(vs[-1], ConfigItem) and vs[-1].revision == revision


def ids(instances: list[Instance]) -> list[str]:
    return [i.id for i in instances]


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()
