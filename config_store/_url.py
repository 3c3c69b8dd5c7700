"""Parsing of store URLs. Pure.

```
zk://[user:password@]host[:port][,host[:port]...][/chroot][?option=value&...]
sqlite://PATH[?option=value&...]          PATH absolute (sqlite:///var/lib/x.db) or relative (sqlite://x.db)
```
"""

from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import parse_qsl, unquote

from ._errors import InvalidUrl
from ._keys import validate_key

__all__ = ["COMMON_OPTIONS", "SQLITE_OPTIONS", "ZK_OPTIONS", "StoreUrl", "parse_url"]

COMMON_OPTIONS = frozenset({"snapshot_dir", "failover_dir", "history_keep", "snapshot"})
ZK_OPTIONS = COMMON_OPTIONS | {"reader", "session_timeout", "connect_timeout", "write_timeout"}
SQLITE_OPTIONS = COMMON_OPTIONS | {"mode", "lease_ttl", "poll_interval_ms"}
_DEFAULT_ZK_PORT = 2181


@dataclass(frozen=True)
class StoreUrl:
    """A parsed store URL.

    Attributes:
        scheme: ``"zk"`` or ``"sqlite"``.
        hosts: ZooKeeper ``(host, port)`` pairs.
        chroot: ZooKeeper chroot (``""`` for none), always starting with ``/`` when set.
        path: the SQLite database file.
        username, password: the client's own digest credential (ZooKeeper).
        options: the query options, validated against the scheme's known names.
    """

    scheme: str
    hosts: tuple[tuple[str, int], ...] = ()
    chroot: str = ""
    path: str = ""
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    options: dict[str, str] = field(default_factory=dict)

    @property
    def connect_string(self) -> str:
        """kazoo's ``hosts`` argument: ``h1:p1,h2:p2/chroot``."""
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        return hosts + self.chroot

    def redacted(self) -> str:
        """The URL without its password, for messages and logs."""
        if self.scheme == "sqlite":
            return f"sqlite://{self.path}"
        user = f"{self.username}:***@" if self.username else ""
        return f"zk://{user}{self.connect_string}"

    def option_float(self, name: str, default: float) -> float:
        raw = self.options.get(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise InvalidUrl(f"option {name}={raw!r} is not a number") from None
        if value <= 0:
            raise InvalidUrl(f"option {name}={raw!r} must be positive")
        return value

    def option_int(self, name: str, default: int) -> int:
        raw = self.options.get(name)
        if raw is None:
            return default
        if not raw.isdigit() or int(raw) <= 0:
            raise InvalidUrl(f"option {name}={raw!r} must be a positive integer")
        return int(raw)


def _parse_options(query: str, known: frozenset[str] | set[str]) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError as exc:
        raise InvalidUrl(f"malformed query string {query!r}: {exc}") from exc
    options: dict[str, str] = {}
    for key, value in pairs:
        if key not in known:
            raise InvalidUrl(
                f"unknown option {key!r}; known options are {', '.join(sorted(known))}"
            )
        if key in options:
            raise InvalidUrl(f"option {key!r} given twice")
        options[key] = value
    return options


def _parse_host(part: str) -> tuple[str, int]:
    if not part:
        raise InvalidUrl("empty host in host list")
    if part.startswith("["):
        end = part.find("]")
        if end < 0:
            raise InvalidUrl(f"unterminated IPv6 address in {part!r}")
        host, rest = part[1:end], part[end + 1 :]
        if rest and not rest.startswith(":"):
            raise InvalidUrl(f"unexpected {rest!r} after IPv6 address")
        port_text = rest[1:] if rest else ""
    else:
        host, _, port_text = part.partition(":")
    if not host:
        raise InvalidUrl(f"missing host in {part!r}")
    if port_text == "":
        return host, _DEFAULT_ZK_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InvalidUrl(f"port {port_text!r} in {part!r} is not in 1..65535")
    return host, int(port_text)


def _parse_zk(rest: str) -> StoreUrl:
    rest, _, query = rest.partition("?")
    netloc, slash, chroot = rest.partition("/")
    username = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        user, sep, pw = userinfo.partition(":")
        if not user or not sep:
            raise InvalidUrl("credentials must be given as user:password@")
        username, password = unquote(user), unquote(pw)
    if not netloc:
        raise InvalidUrl("zk:// URL names no host")
    hosts = tuple(_parse_host(p) for p in netloc.split(","))
    chroot_path = ""
    if slash and chroot:
        parts = chroot.split("/")
        if any(not p for p in parts):
            raise InvalidUrl(f"chroot /{chroot} has an empty path component")
        for p in parts:
            try:
                validate_key(unquote(p), "chroot component")
            except ValueError as exc:
                raise InvalidUrl(str(exc)) from exc
        chroot_path = "/" + "/".join(unquote(p) for p in parts)
    return StoreUrl(
        "zk",
        hosts=hosts,
        chroot=chroot_path,
        username=username,
        password=password,
        options=_parse_options(query, ZK_OPTIONS),
    )


def _parse_sqlite(rest: str) -> StoreUrl:
    path, _, query = rest.partition("?")
    path = unquote(path)
    if not path or path.endswith("/"):
        raise InvalidUrl(
            "sqlite:// URL names no database file (e.g. sqlite:///var/lib/autoai/store.db)"
        )
    if "\0" in path:
        raise InvalidUrl("database path contains a NUL byte")
    options = _parse_options(query, SQLITE_OPTIONS)
    if options.get("mode", "rw") not in ("rw", "ro"):
        raise InvalidUrl(f"option mode={options['mode']!r} must be 'rw' or 'ro'")
    return StoreUrl("sqlite", path=path, options=options)


def parse_url(url: str) -> StoreUrl:
    """Parse and validate a store URL.

    Raises:
        InvalidUrl: unknown scheme, malformed host list or port, bad chroot, unknown option.
    """
    if not isinstance(url, str):
        raise InvalidUrl(f"store URL must be a string, got {type(url).__name__}")
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise InvalidUrl(f"{url!r} is not a URL; expected zk://host:port/chroot or sqlite:///path")
    if scheme == "zk":
        return _parse_zk(rest)
    if scheme == "sqlite":
        return _parse_sqlite(rest)
    raise InvalidUrl(f"unsupported scheme {scheme!r}; expected 'zk' or 'sqlite'")
