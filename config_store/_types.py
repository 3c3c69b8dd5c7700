"""Value types returned by the store: items, instances, and the handles of watches."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

__all__ = [
    "ConfigCallback",
    "ConfigItem",
    "Instance",
    "InstanceCallback",
    "Listener",
    "Registration",
    "Source",
]

Source = Literal["store", "snapshot", "failover"]


@dataclass(frozen=True, slots=True)
class ConfigItem:
    """One published revision of a key.

    Attributes:
        data_id: the key inside its group.
        group: the key's group ("models" holds route tables).
        content: the published bytes.
        revision: strictly increasing per key, starting at 1; never reused, even after a remove.
        md5: hex MD5 of ``content``.
        modified: when this revision was published (UTC).
        source: ``"store"`` (authoritative read or push), ``"snapshot"`` (local copy served
            while the store is unreachable) or ``"failover"`` (operator override file).
    """

    data_id: str
    group: str
    content: bytes
    revision: int
    md5: str
    modified: datetime
    source: Source = "store"

    @property
    def stale(self) -> bool:
        """True when served from the local snapshot because the store was unreachable."""
        return self.source == "snapshot"

    def text(self) -> str:
        """The content decoded as UTF-8."""
        return self.content.decode("utf-8")

    def json(self) -> Any:
        """The content parsed as JSON."""
        return json.loads(self.content)


def utc_from_timestamp(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=UTC)


@dataclass(frozen=True, slots=True)
class Instance:
    """A live registration of a service instance.

    Attributes:
        service: the service name.
        id: ``host:port``, unique within the service.
        host: where the instance listens.
        port: its port.
        status: ``"ALIVE"`` for a registered instance (serverset convention).
        payload: the fields given at registration (model, version, processor, weight, ...).
    """

    service: str
    id: str
    host: str
    port: int
    status: str = "ALIVE"
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def address(self) -> str:
        """``host:port``."""
        return f"{self.host}:{self.port}"


ConfigCallback = Callable[[ConfigItem | None], None]
InstanceCallback = Callable[[list[Instance]], None]


class Listener(Protocol):
    """Handle of a config or instance watch."""

    def cancel(self) -> None:
        """Stop delivering; idempotent."""


class Registration(Protocol):
    """Handle of an instance registration."""

    @property
    def instance(self) -> Instance:
        """What is registered."""

    def close(self) -> None:
        """Remove the registration; idempotent."""
