"""Store URL parsing (pure)."""

from __future__ import annotations

import pytest

from config_store import InvalidUrl, open_store
from config_store._url import parse_url


def test_zookeeper_url_with_hosts_chroot_credentials_and_options() -> None:
    url = parse_url(
        "zk://autoai:s%40cret@127.0.0.1:2181,127.0.0.2:2182,[::1]/autoai/prod?reader=sdk:r"
    )
    assert url.scheme == "zk"
    assert url.hosts == (("127.0.0.1", 2181), ("127.0.0.2", 2182), ("::1", 2181))
    assert url.chroot == "/autoai/prod"
    assert (url.username, url.password) == ("autoai", "s@cret")
    assert url.options == {"reader": "sdk:r"}
    assert url.connect_string == "127.0.0.1:2181,127.0.0.2:2182,[::1]:2181/autoai/prod"
    assert "s@cret" not in url.redacted() and "s@cret" not in repr(url)


def test_sqlite_urls() -> None:
    assert parse_url("sqlite:///var/lib/autoai/store.db").path == "/var/lib/autoai/store.db"
    assert parse_url("sqlite://relative/store.db").path == "relative/store.db"
    url = parse_url("sqlite:///tmp/x.db?mode=ro&lease_ttl=3")
    assert url.options == {"mode": "ro", "lease_ttl": "3"}
    assert url.option_float("lease_ttl", 5.0) == 3.0


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "not a URL"),
        ("127.0.0.1:2181", "not a URL"),
        ("etcd://127.0.0.1:2379", "unsupported scheme 'etcd'"),
        ("zk://", "names no host"),
        ("zk:///chroot", "names no host"),
        ("zk://127.0.0.1:99999/x", "not in 1..65535"),
        ("zk://127.0.0.1:abc/x", "not in 1..65535"),
        ("zk://127.0.0.1:2181,,127.0.0.2/x", "empty host"),
        ("zk://[::1/x", "unterminated IPv6"),
        ("zk://127.0.0.1/a//b", "empty path component"),
        ("zk://127.0.0.1/a/../b", "relative"),
        ("zk://127.0.0.1/a b", "SPACE"),
        ("zk://user@127.0.0.1/x", "user:password@"),
        ("zk://127.0.0.1/x?session_timeout=1&bogus=1", "unknown option 'bogus'"),
        ("zk://127.0.0.1/x?session_timeout=1&session_timeout=2", "given twice"),
        ("sqlite://", "names no database file"),
        ("sqlite:///var/lib/", "names no database file"),
        ("sqlite:///x.db?mode=rw&reader=a:b", "unknown option 'reader'"),
        ("sqlite:///x.db?mode=readwrite", "must be 'rw' or 'ro'"),
        (None, "must be a string"),
    ],
)
def test_malformed_urls_say_what_is_wrong(url: object, message: str) -> None:
    with pytest.raises(InvalidUrl, match=message):
        parse_url(url)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("zk://127.0.0.1/x?session_timeout=abc", "not a number"),
        ("zk://127.0.0.1/x?write_timeout=-1", "must be positive"),
        ("sqlite:///tmp/x.db?history_keep=0", "positive integer"),
    ],
)
def test_bad_option_values_fail_at_open(url: str, message: str) -> None:
    with pytest.raises(InvalidUrl, match=message):
        open_store(url, snapshot_dir=False, failover_dir=False)


def test_invalid_url_is_also_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_url("nope")
