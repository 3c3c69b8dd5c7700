"""Byte-level fuzzing of the parsers that read what other parties wrote: the EAS service JSON, the
store's envelope and URL, the SDK's route table, deploy specs, names and data ids.

Each parser documents the errors it raises; whatever the bytes, nothing else may escape (anything
else would be a 500 in an app, or a crash of an SDK watcher thread).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, given, strategies as st
from pydantic import ValidationError

import blade_aspect
from autoai.errors import InvalidRequest
from autoai.repository import validate_name
from autoai.schema import DeploySpec
from autoai.sdk._errors import InvalidRouteTable
from autoai.sdk._routes import parse_route_table
from config_store import InvalidKey, InvalidUrl
from config_store._envelope import MAGIC, decode, encode
from config_store._keys import validate_key
from config_store._url import parse_url
from eas_server._settings import load_service_json
from tests.fixtures.fuzzing import examples

FUZZ = hypothesis.settings(
    max_examples=examples(300),
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=8)
    | st.sampled_from(["1e400", "-1e400", "NaN", "Infinity", "9" * 5000])
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)
# Hand-made JSON texts the encoders above never produce: deep nesting, huge and non-finite numbers.
HOSTILE_JSON = st.sampled_from(
    [
        b"[" * 3000 + b"]" * 3000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
        b"1e400",
        b'{"revision": 1e400, "md5": "x", "modified": 1}',
        b'{"revision": -1e400, "md5": "x", "modified": 1}',
        b'{"revision": NaN, "md5": "x", "modified": 1}',
        b'{"revision": ' + b"9" * 5000 + b', "md5": "x", "modified": 1}',
        b"\xff\xfe\x00",
        b"",
    ]
)


def _dumps(value: Any) -> bytes:
    # the stdlib encoder: it writes integers past 64 bits and NaN / Infinity, which orjson refuses
    return json.dumps(value).encode()


def _documents(keys: list[str]) -> st.SearchStrategy[bytes]:
    known = st.dictionaries(st.sampled_from(keys), VALUES, max_size=len(keys))
    return st.one_of(
        known.map(_dumps),
        VALUES.map(_dumps),
        st.binary(max_size=64),
        HOSTILE_JSON,
    )


# ------------------------------------------------------------------------------ service JSON

SERVICE_KEYS = ["name", "processor", "model_path", "token", "version", "metadata"]
METADATA = st.dictionaries(
    st.sampled_from(
        ["rpc", "rpc.batching", "rpc.max_batch_size", "instance", "workers", "x", "batching"]
    ),
    VALUES,
)


@FUZZ
@given(
    body=_documents(SERVICE_KEYS)
    | st.dictionaries(st.sampled_from(SERVICE_KEYS), VALUES).map(_dumps)
    | METADATA.map(lambda m: _dumps({"metadata": m}))
)
def test_service_json_raises_only_value_error(body: bytes, tmp_path_factory: Any) -> None:
    path = Path(tmp_path_factory.mktemp("svc")) / "service.json"
    path.write_bytes(body)
    try:
        values = load_service_json(path)
    except ValueError:
        return
    assert isinstance(values, dict)


# --------------------------------------------------------------------------- store envelope


@FUZZ
@given(
    header=_documents(["revision", "md5", "modified", "ref"]),
    content=st.binary(max_size=32),
    magic=st.booleans(),
)
def test_envelope_decode_raises_only_value_error(
    header: bytes, content: bytes, magic: bool
) -> None:
    data = (MAGIC if magic else b"") + header.replace(b"\n", b" ") + b"\n" + content
    try:
        decode(data)
    except ValueError:
        pass


@FUZZ
@given(data=st.binary(max_size=200), at=st.integers(0, 200), byte=st.integers(0, 255))
def test_envelope_flipped_byte_is_detected_or_harmless(data: bytes, at: int, byte: int) -> None:
    good = encode(3, "x", 1.0, data)
    torn = bytearray(good)
    torn[at % len(torn)] = byte
    try:
        envelope = decode(bytes(torn))
    except ValueError:
        return
    assert envelope.content == data or envelope.ref  # a changed content never passes the md5


# ---------------------------------------------------------------------------- route tables

ROUTE_KEYS = ["model", "revision", "routes", "shadow", "signature", "schema_version", "blade"]
ROUTES = st.lists(
    st.dictionaries(
        st.sampled_from(
            ["version", "service", "weight", "processor", "fallback_version", "blade", "batch"]
        ),
        VALUES,
    ),
    max_size=3,
)


@FUZZ
@given(
    content=_documents(ROUTE_KEYS)
    | st.fixed_dictionaries(
        {"model": st.just("m") | VALUES, "routes": ROUTES},
        optional={"revision": VALUES, "shadow": VALUES, "signature": VALUES},
    ).map(_dumps),
    model=st.none() | st.just("m"),
    revision=st.none() | st.integers(1, 9),
)
def test_route_table_raises_only_invalid_route_table(
    content: bytes, model: str | None, revision: int | None
) -> None:
    try:
        parse_route_table(content, revision=revision, model=model)
    except InvalidRouteTable:
        pass


# ------------------------------------------------------------------ URLs, names, deploy specs


@FUZZ
@given(
    url=st.text(max_size=60)
    | st.tuples(
        st.sampled_from(["zk://", "sqlite://", "zk://u:p@", "zk://[::1", "sqlite:///"]),
        st.text(max_size=40),
    ).map("".join)
)
def test_store_url_raises_only_invalid_url(url: str) -> None:
    try:
        parse_url(url)
    except InvalidUrl:
        pass


TRAVERSALS = [
    "..",
    ".",
    "../x",
    "%2e%2e",
    "%2e%2e%2fx",
    "/etc/passwd",
    "a/b",
    "a\\b",
    "a\x00b",
    "\x00",
    "x" * 10_000,
    "",
    "\udcff",
    " ",
    "a\nb",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_model_names_refuse_traversal(name: str) -> None:
    with pytest.raises(InvalidRequest):
        validate_name(name)


@pytest.mark.parametrize("key", [k for k in TRAVERSALS if k not in ("%2e%2e", "%2e%2e%2fx", " ")])
def test_data_ids_refuse_traversal(key: str) -> None:
    with pytest.raises(InvalidKey):
        validate_key(key)


@FUZZ
@given(value=st.text(max_size=80) | st.binary(max_size=40) | SCALARS)
def test_names_and_keys_raise_only_their_errors(value: object) -> None:
    try:
        name = validate_name(value)
    except InvalidRequest:
        pass
    else:
        assert "/" not in name and ".." not in name
    try:
        key = validate_key(value)
    except InvalidKey:
        pass
    else:
        assert "/" not in key and key not in (".", "..") and "\x00" not in key


SPEC_KEYS = ["processor", "blade", "metadata", "token", "rpc"]


@FUZZ
@given(
    spec=st.dictionaries(st.sampled_from(SPEC_KEYS), VALUES)
    | st.fixed_dictionaries(
        {
            "metadata": st.dictionaries(
                st.sampled_from(["instance", "port", "cpu", "gpu", "rpc.max_batch_size"]), VALUES
            )
        },
        optional={"processor": VALUES, "blade": VALUES},
    )
)
def test_deploy_spec_checks_raise_only_their_errors(spec: dict[str, Any]) -> None:
    try:
        blade_aspect.wants_blade(spec)
    except blade_aspect.InvalidDeploySpec:
        pass
    try:
        DeploySpec.model_validate(spec)
    except ValidationError:
        pass  # refused with the field at fault, never another exception
