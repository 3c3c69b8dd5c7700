"""Key validation and the store layout: every path of the store is built here and nowhere else.

```
/config/{group}/{data_id}            published content, with revision
/history/{group}/{data_id}/{rev}     revisions, newest kept (bounded)
/services/{service}/instances/{id}   ephemeral registrations (serverset JSON)
/control/...                         control-plane records
```
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata

from ._errors import InvalidKey

__all__ = [
    "CONFIG_ROOT",
    "CONTROL_ROOT",
    "HISTORY_ROOT",
    "MAX_KEY_BYTES",
    "SERVICES_ROOT",
    "config_group_path",
    "config_path",
    "history_node",
    "history_path",
    "instance_id",
    "instances_path",
    "parse_history_node",
    "validate_host",
    "validate_key",
    "validate_port",
]

CONFIG_ROOT = "/config"
HISTORY_ROOT = "/history"
SERVICES_ROOT = "/services"
CONTROL_ROOT = "/control"
MAX_KEY_BYTES = 200

# Letters and digits of any script, and a few punctuation marks that are safe in paths, file names
# and URLs. Anything else (separators, whitespace, control characters, quotes) is refused.
_ALLOWED_PUNCTUATION = set("-_.:@+=,~")
_HISTORY_DIGITS = 10
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


def validate_key(value: object, what: str = "data id") -> str:
    """Check a data id, group or service name and return it as ``str``.

    Raises:
        InvalidKey: not UTF-8, empty, too long, ``.``/``..``, or holding a character outside
            letters, digits and ``-_.:@+=,~``.
    """
    if isinstance(value, bytes | bytearray):
        raw = bytes(value)
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidKey(f"{what} {raw!r} is not valid UTF-8") from exc
    if not isinstance(value, str):
        raise InvalidKey(f"{what} must be a string, got {type(value).__name__}")
    try:
        encoded = value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidKey(f"{what} {value!r} is not valid UTF-8 (lone surrogate)") from exc
    if not value:
        raise InvalidKey(f"{what} must not be empty")
    if len(encoded) > MAX_KEY_BYTES:
        raise InvalidKey(
            f"{what} is {len(encoded)} bytes long; at most {MAX_KEY_BYTES} are allowed"
        )
    if value in (".", ".."):
        raise InvalidKey(f"{what} {value!r} is a relative path component")
    if "/" in value or "\\" in value:
        raise InvalidKey(f"{what} {value!r} contains a path separator")
    for ch in value:
        if ch.isalnum() or ch in _ALLOWED_PUNCTUATION:
            continue
        name = unicodedata.name(ch, f"U+{ord(ch):04X}")
        raise InvalidKey(
            f"{what} {value!r} contains {name}; allowed are letters, digits and '-_.:@+=,~'"
        )
    return value


def validate_host(host: object) -> str:
    """Check a host name or IP address.

    Raises:
        InvalidKey: not a hostname, IPv4 or IPv6 address.
    """
    if not isinstance(host, str) or not host:
        raise InvalidKey(f"host must be a non-empty string, got {host!r}")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise InvalidKey(f"host {host!r} is neither an IP address nor a valid hostname")
    return host


def validate_port(port: object) -> int:
    """Check a TCP port.

    Raises:
        InvalidKey: not an integer in 1..65535.
    """
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise InvalidKey(f"port must be an integer in 1..65535, got {port!r}")
    return port


def instance_id(host: str, port: int) -> str:
    """Deterministic id of an instance: a restarted process finds (and replaces) its old node."""
    return f"{host}:{port}" if ":" not in host else f"[{host}]:{port}"


def config_group_path(group: str) -> str:
    return f"{CONFIG_ROOT}/{group}"


def config_path(group: str, data_id: str) -> str:
    return f"{CONFIG_ROOT}/{group}/{data_id}"


def history_path(group: str, data_id: str) -> str:
    return f"{HISTORY_ROOT}/{group}/{data_id}"


def history_node(revision: int) -> str:
    """Zero-padded so that lexical order is revision order."""
    return f"{revision:0{_HISTORY_DIGITS}d}"


def parse_history_node(name: str) -> int | None:
    return int(name) if name.isdigit() else None


def instances_path(service: str) -> str:
    return f"{SERVICES_ROOT}/{service}/instances"
