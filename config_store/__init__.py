"""A Diamond-like configuration store: publish with compare-and-swap and history, watch with push
and a local snapshot, register instances; on ZooKeeper (``zk://``) or embedded SQLite (``sqlite://``).

```python
store = config_store.open_store("zk://127.0.0.1:2181/autoai")
rev = store.publish("intent-cls", b"{...}", group="models")
lst = store.add_listener("intent-cls", on_change, group="models")
```
"""

from ._backend import StoreState
from ._election import LeaderElection
from ._envelope import MAX_CONTENT_BYTES
from ._errors import (
    ConfigStoreError,
    Conflict,
    ContentTooLarge,
    InvalidKey,
    InvalidUrl,
    NotFound,
    PermissionDenied,
    StoreClosed,
    StoreUnavailable,
)
from ._open import open_store
from ._settings import default_store_url
from ._store import ConfigStore
from ._types import ConfigCallback, ConfigItem, Instance, InstanceCallback, Listener, Registration

__all__ = [
    "MAX_CONTENT_BYTES",
    "ConfigCallback",
    "ConfigItem",
    "ConfigStore",
    "ConfigStoreError",
    "Conflict",
    "ContentTooLarge",
    "Instance",
    "InstanceCallback",
    "InvalidKey",
    "InvalidUrl",
    "LeaderElection",
    "Listener",
    "NotFound",
    "PermissionDenied",
    "Registration",
    "StoreClosed",
    "StoreState",
    "StoreUnavailable",
    "default_store_url",
    "open_store",
]
