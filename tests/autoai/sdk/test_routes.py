"""Route table parsing with the schema's model: the documented example, the shadow forms, one
refusal per rule (naming the field), and the control plane's table read back by the SDK."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

import blade_aspect
from autoai import schema
from autoai.schema import PublishRoute
from autoai.sdk._errors import (
    InvalidRouteTable,
    ModelClientError,
    ModelNotFound,
    VersionNotFound,
)
from autoai.sdk._routes import BladeMeta, Route, RouteTable, TensorSpec, parse_route_table

SHA = "AB" * 32

EXAMPLE: dict[str, Any] = {
    "schema_version": 1,
    "model": "intent-cls",
    "revision": 7,
    "routes": [
        {
            "version": "3",
            "weight": 90,
            "service": "intent-cls-3-blade",
            "processor": "blade",
            "blade": {
                "engine": "ort-cpu-int8",
                "profiles": {"batch": [1, 32], "seq": [1, 128]},
                "fallback_version": "2",
                "report_sha256": SHA,
            },
        },
        {"version": "2", "weight": 10, "service": "intent-cls-2", "processor": "onnx"},
    ],
    "sticky_key": None,
    "shadow": None,
    "signature": {
        "inputs": [{"name": "input_ids", "datatype": "INT64", "shape": [-1, -1]}],
        "outputs": [{"name": "logits", "datatype": "FP32", "shape": [-1, 2]}],
    },
}


def _doc() -> dict[str, Any]:
    return copy.deepcopy(EXAMPLE)


def _encode(doc: Any) -> bytes:
    return json.dumps(doc).encode()


def _parse(doc: Any, **kwargs: Any) -> RouteTable:
    return parse_route_table(_encode(doc), **kwargs)


def test_the_documented_example_parses_to_every_field():
    table = _parse(_doc())
    assert (table.model, table.revision, table.schema_version) == ("intent-cls", 7, 1)
    assert table.sticky_key is None and table.shadow is None
    blade_route, onnx_route = table.routes
    assert blade_route == Route(
        version="3",
        weight=90,
        service="intent-cls-3-blade",
        processor="blade",
        blade=BladeMeta(
            engine="ort-cpu-int8",
            profiles={"batch": (1, 32), "seq": (1, 128)},
            fallback_version="2",
            report_sha256=SHA.lower(),
        ),
    )
    assert onnx_route == Route(version="2", weight=10, service="intent-cls-2", processor="onnx")
    assert table.signature.inputs == (TensorSpec("input_ids", "INT64", (-1, -1)),)
    assert table.signature.outputs == (TensorSpec("logits", "FP32", (-1, 2)),)
    assert table.versions == ("3", "2")
    assert hash(blade_route) == hash(table.route("3"))  # hashable despite the profiles dict


def test_the_store_revision_wins_over_the_documents():
    assert _parse(_doc(), revision=12).revision == 12
    doc = _doc()
    del doc["revision"]
    assert _parse(doc, revision=3).revision == 3


def test_route_and_version_not_found_listing_the_versions():
    table = _parse(_doc())
    assert table.route("2").service == "intent-cls-2"
    with pytest.raises(VersionNotFound) as info:
        table.route("9")
    err = info.value
    assert isinstance(err, LookupError) and isinstance(err, ModelClientError)
    assert (err.model, err.version, err.available) == ("intent-cls", "9", ["3", "2"])
    assert str(err) == "model 'intent-cls' has no version '9'; versions: '3', '2'"


def test_model_not_found_lists_what_is_published():
    err = ModelNotFound("intent", ["ner", "intent-cls"])
    assert isinstance(err, LookupError) and isinstance(err, ModelClientError)
    assert err.published == ["intent-cls", "ner"]
    assert str(err) == "model 'intent' is not published; published models: 'intent-cls', 'ner'"
    assert "no model is published" in str(ModelNotFound("intent", []))


def test_profiles_default_to_unbounded_and_keep_other_dimensions():
    doc = _doc()
    doc["routes"][0]["blade"]["profiles"] = {"seq": None, "height": [1, 4]}
    meta = _parse(doc).routes[0].blade
    assert meta is not None
    assert dict(meta.profiles) == {"batch": None, "seq": None, "height": (1, 4)}
    del doc["routes"][0]["blade"]["profiles"]
    meta = _parse(doc).routes[0].blade
    assert meta is not None and dict(meta.profiles) == {"batch": None, "seq": None}


def test_shadow_served_by_a_weight_zero_route():
    doc = _doc()
    doc["routes"].append({"version": "4", "weight": 0, "service": "svc-4", "processor": "onnx"})
    doc["shadow"] = {"version": "4", "ratio": 0.05}
    table = _parse(doc)
    assert table.shadow is not None
    assert (table.shadow.version, table.shadow.ratio) == ("4", 0.05)
    assert table.shadow.route is table.route("4")
    assert table.shadow.route.weight == 0


def test_shadow_served_by_its_own_service():
    doc = _doc()
    doc["shadow"] = {"version": "4", "ratio": 1, "service": "svc-4", "processor": "onnx"}
    table = _parse(doc)
    assert table.shadow is not None
    assert table.shadow.route == Route(version="4", weight=0, service="svc-4", processor="onnx")
    assert table.shadow.ratio == 1.0 and isinstance(table.shadow.ratio, float)
    assert table.route("4") == table.shadow.route
    assert table.versions == ("3", "2", "4")


def test_signature_absent_means_no_check_and_unknown_keys_are_ignored():
    doc = _doc()
    del doc["signature"]
    doc["canary"] = {"future": True}
    doc["routes"][1]["region"] = "eu"
    doc["routes"][0]["blade"]["tuned_on"] = "sm_90"
    table = _parse(doc)
    assert table.signature.inputs == () and table.signature.outputs == ()
    assert table.routes[1] == _parse(_doc()).routes[1]
    assert "region" not in table.routes[1].model_dump_json()
    doc["signature"] = None
    assert _parse(doc).signature.inputs == ()


def test_the_error_says_model_and_revision():
    doc = _doc()
    doc["routes"][1]["weight"] = -1
    with pytest.raises(InvalidRouteTable) as info:
        _parse(doc)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, ModelClientError)
    assert (err.model, err.revision, err.field) == ("intent-cls", 7, "routes[1].weight")
    assert str(err) == (
        "route table of model 'intent-cls' (revision 7): routes[1].weight: "
        "Input should be greater than or equal to 0, got -1"
    )


Mutation = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets (or, for ``...``, deletes) the value at a dotted path."""

    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        key: Any = int(last) if isinstance(node, list) else last
        if value is ...:
            del node[key]
        else:
            node[key] = value

    return mutate


def _shadow_route(weight: int) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["routes"].append({"version": "4", "weight": weight, "service": "s", "processor": "p"})
        doc["shadow"] = {"version": "4", "ratio": 0.1}

    return mutate


def _inline_shadow(**extra: Any) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        doc["shadow"] = {"version": "4", "ratio": 0.1, "service": "s", "processor": "p", **extra}
        doc["shadow"] = {k: v for k, v in doc["shadow"].items() if v is not ...}

    return mutate


def _both(*mutations: Mutation) -> Mutation:
    def mutate(doc: dict[str, Any]) -> None:
        for m in mutations:
            m(doc)

    return mutate


BLADE = "routes.0.blade"
INPUT = "signature.inputs.0"
BAD: list[tuple[str, Mutation, str, str]] = [
    # id, mutation, field named, words of the reason
    ("top-level list", lambda d: [d], "(document)", "valid dictionary"),
    ("schema 2", _set("schema_version", 2), "schema_version", "must be 1, got 2"),
    ("schema missing", _set("schema_version", ...), "schema_version", "missing"),
    ("schema string", _set("schema_version", "1"), "schema_version", "got '1'"),
    ("model missing", _set("model", ...), "model", "missing"),
    ("model empty", _set("model", ""), "model", "at least 1 character"),
    ("revision negative", _set("revision", -1), "revision", "greater than or equal to 0"),
    ("revision missing", _set("revision", ...), "revision", "missing"),
    ("routes missing", _set("routes", ...), "routes", "missing"),
    ("routes empty", _set("routes", []), "routes", "at least 1 item"),
    ("routes object", _set("routes", {"3": {}}), "routes", "valid tuple"),
    ("route not object", _set("routes.1", "2"), "routes[1]", "valid dictionary"),
    ("version int", _set("routes.0.version", 3), "routes[0].version", "got 3"),
    ("version missing", _set("routes.1.version", ...), "routes[1].version", "missing"),
    ("version duplicate", _set("routes.1.version", "3"), "routes[1].version", "duplicate"),
    ("weight negative", _set("routes.1.weight", -1), "routes[1].weight", "got -1"),
    ("weight float", _set("routes.1.weight", 1.5), "routes[1].weight", "got 1.5"),
    ("weight bool", _set("routes.1.weight", True), "routes[1].weight", "got True"),
    ("weight missing", _set("routes.1.weight", ...), "routes[1].weight", "missing"),
    (
        "all weights zero",
        _both(_set("routes.0.weight", 0), _set("routes.1.weight", 0)),
        "routes",
        "no route has a weight > 0",
    ),
    ("service empty", _set("routes.0.service", ""), "routes[0].service", "at least 1"),
    ("service null", _set("routes.1.service", None), "routes[1].service", "got null"),
    ("processor missing", _set("routes.1.processor", ...), "routes[1].processor", "missing"),
    ("blade not object", _set(BLADE, "ort"), "routes[0].blade", "valid dictionary"),
    ("engine missing", _set(f"{BLADE}.engine", ...), "routes[0].blade.engine", "missing"),
    (
        "profile zero",
        _set(f"{BLADE}.profiles.batch", [0, 32]),
        "routes[0].blade.profiles.batch",
        "1 <= lo <= hi",
    ),
    (
        "profile reversed",
        _set(f"{BLADE}.profiles.seq", [128, 1]),
        "routes[0].blade.profiles.seq",
        "got [128, 1]",
    ),
    (
        "profile one bound",
        _set(f"{BLADE}.profiles.seq", [1]),
        "routes[0].blade.profiles.seq[1]",
        "missing",
    ),
    (
        "profiles list",
        _set(f"{BLADE}.profiles", [[1, 2]]),
        "routes[0].blade.profiles",
        "valid dictionary, got [[1,2]]",
    ),
    (
        "fallback unknown",
        _set(f"{BLADE}.fallback_version", "9"),
        "routes[0].blade.fallback_version",
        "'9' is not a version of routes: 3, 2",
    ),
    (
        "fallback to itself",
        _set(f"{BLADE}.fallback_version", "3"),
        "routes[0].blade.fallback_version",
        "fallbacks loop: 3 -> 3",
    ),
    (
        "fallbacks loop",
        _set("routes.1.blade", {"engine": "e", "fallback_version": "3"}),
        "routes[0].blade.fallback_version",
        "fallbacks loop: 3 -> 2 -> 3",
    ),
    (
        "sha not hex",
        _set(f"{BLADE}.report_sha256", "…"),
        "routes[0].blade.report_sha256",
        "64 hex digits",
    ),
    ("sticky empty", _set("sticky_key", ""), "sticky_key", "at least 1 character"),
    ("sticky number", _set("sticky_key", 5), "sticky_key", "got 5"),
    ("shadow list", _set("shadow", ["4"]), "shadow", "valid dictionary"),
    (
        "ratio above 1",
        _inline_shadow(ratio=1.5),
        "shadow.ratio",
        "less than or equal to 1, got 1.5",
    ),
    ("ratio negative", _inline_shadow(ratio=-0.1), "shadow.ratio", "got -0.1"),
    ("ratio string", _inline_shadow(ratio="0.1"), "shadow.ratio", "got '0.1'"),
    ("ratio bool", _inline_shadow(ratio=True), "shadow.ratio", "got True"),
    ("ratio missing", _inline_shadow(ratio=...), "shadow.ratio", "missing"),
    ("shadow version missing", _inline_shadow(version=...), "shadow.version", "missing"),
    (
        "shadow without route",
        _set("shadow", {"version": "4", "ratio": 0.1}),
        "shadow.version",
        "has no route",
    ),
    ("shadow route weighted", _shadow_route(5), "shadow.version", "weight 5"),
    (
        "shadow route and service",
        _both(_shadow_route(0), _inline_shadow()),
        "shadow.service",
        "one or the other",
    ),
    ("shadow of a primary", _inline_shadow(version="2"), "shadow.service", "already has a route"),
    ("shadow weight", _inline_shadow(weight=5), "shadow.weight", "must be 0"),
    ("shadow processor", _inline_shadow(processor=...), "shadow.processor", "missing"),
    (
        "shadow fallback unknown",
        _inline_shadow(blade={"engine": "e", "fallback_version": "4"}),
        "shadow.blade.fallback_version",
        "'4' is not a version of routes",
    ),
    ("signature list", _set("signature", []), "signature", "valid dictionary"),
    ("inputs object", _set("signature.inputs", {}), "signature.inputs", "valid tuple"),
    ("input not object", _set(INPUT, "x"), "signature.inputs[0]", "valid dictionary"),
    ("input name", _set(f"{INPUT}.name", ""), "signature.inputs[0].name", "at least 1"),
    ("BF16", _set(f"{INPUT}.datatype", "BF16"), "signature.inputs[0].datatype", "'BF16'"),
    ("lowercase", _set(f"{INPUT}.datatype", "int64"), "signature.inputs[0].datatype", "INT64"),
    ("datatype missing", _set(f"{INPUT}.datatype", ...), "signature.inputs[0].datatype", "missing"),
    (
        "dim -2",
        _set(f"{INPUT}.shape", [-2]),
        "signature.inputs[0].shape[0]",
        "greater than or equal to -1, got -2",
    ),
    ("dim float", _set(f"{INPUT}.shape", [1.0]), "signature.inputs[0].shape[0]", "valid integer"),
    ("shape string", _set(f"{INPUT}.shape", "-1"), "signature.inputs[0].shape", "got '-1'"),
    ("shape missing", _set(f"{INPUT}.shape", ...), "signature.inputs[0].shape", "missing"),
    (
        "input duplicate",
        lambda d: d["signature"]["inputs"].append(copy.deepcopy(d["signature"]["inputs"][0])),
        "signature.inputs[1].name",
        "duplicate tensor name 'input_ids'",
    ),
    (
        "output datatype",
        _set("signature.outputs.0.datatype", "FLOAT"),
        "signature.outputs[0].datatype",
        "unknown datatype 'FLOAT'",
    ),
]


@pytest.mark.parametrize(
    ("mutate", "field", "words"), [b[1:] for b in BAD], ids=[b[0] for b in BAD]
)
def test_bad_document_names_the_field(mutate: Mutation, field: str, words: str) -> None:
    doc = _doc()
    replaced = mutate(doc)
    with pytest.raises(InvalidRouteTable) as info:
        _parse(doc if replaced is None else replaced)
    err = info.value
    assert err.field == field, str(err)
    assert f": {field}: " in str(err)
    assert words in err.reason, str(err)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b'{"schema_version": NaN}',
        b"\xff\xfe",
        '{"model": "\ud800"}'.encode("utf-8", "surrogatepass"),
    ],
    ids=["empty", "truncated", "NaN", "not utf-8", "lone surrogate"],
)
def test_not_json(content: bytes) -> None:
    with pytest.raises(InvalidRouteTable) as info:
        parse_route_table(content, revision=4, model="intent-cls")
    assert info.value.field == "(document)"
    assert str(info.value).startswith(
        "route table of model 'intent-cls' (revision 4): (document): not valid JSON"
    )


def test_document_for_another_model():
    with pytest.raises(InvalidRouteTable) as info:
        _parse(_doc(), model="ner")
    assert info.value.field == "model"
    assert "the document is for model 'intent-cls', published as 'ner'" in str(info.value)
    assert _parse(_doc(), model="intent-cls").model == "intent-cls"


def test_a_newer_schema_is_refused_as_such_whatever_else_changed():
    doc = {"schema_version": 2, "model": "intent-cls", "routes": {"3": {"share": 0.9}}}
    with pytest.raises(InvalidRouteTable) as info:
        _parse(doc, revision=8)
    assert info.value.field == "schema_version"
    assert info.value.reason == "must be 1, got 2: a newer schema needs a newer reader"
    assert (info.value.model, info.value.revision) == ("intent-cls", 8)


def test_what_the_call_path_reads_is_computed_at_parse_time():
    table = _parse(_doc(), revision=9)  # the store's revision: a copy keeps the derived values
    spec = table.signature.inputs[0]
    assert {"dtype", "fixed_dims"} <= set(vars(spec))  # cached on the instance already
    assert spec.dtype is np.dtype(np.int64) and spec.fixed_dims == ()
    assert table.signature.outputs[0].fixed_dims == ((1, 2),)
    blade_route, onnx_route = table.routes
    assert onnx_route.serving_key == ("2", "intent-cls-2", "onnx", "")
    assert blade_route.serving_key[:3] == ("3", "intent-cls-3-blade", "blade")
    assert json.loads(blade_route.serving_key[3])["profiles"] == {"batch": [1, 32], "seq": [1, 128]}
    assert table.route("3") is blade_route and table.revision == 9


def test_models_are_frozen_values():
    table = _parse(_doc())
    with pytest.raises(ValidationError, match="frozen"):
        table.routes[0].weight = 5  # type: ignore[misc]
    assert _parse(_doc()) == table


def test_traffic_versions_follow_weights_fallback_chains_and_the_shadow():
    doc = _doc()
    doc["routes"][1]["weight"] = 0  # still reached: 3 falls back to it
    doc["routes"].append({"version": "5", "weight": 0, "service": "s5", "processor": "onnx"})
    doc["shadow"] = {"version": "4", "ratio": 0.1, "service": "s4", "processor": "onnx"}
    assert _parse(doc).traffic_versions == {"3", "2", "4"}


def _deployment(version: str, service: str, processor: str, blade: Any = None) -> Any:
    return schema.Deployment.model_validate(
        {
            "name": "intent-cls",
            "version": version,
            "service": service,
            "processor": processor,
            "blade": blade,
            "model_sha256": "0" * 64,
            "created": 0.0,
            "instances": [],
            "endpoints": ["http://127.0.0.1:1"],
        }
    )


def _publish(**shadow: Any) -> schema.RouteTable:
    """What the control plane writes: entries from blade_aspect.on_publish, the schema's table."""
    meta = {
        "engine": "ort-cpu-int8",
        "profiles": {"batch": [1, 32], "seq": None},
        "report_sha256": SHA,
        "speedup": 2.5,
    }
    entries = (
        blade_aspect.on_publish(
            PublishRoute(version="3", weight=90),
            _deployment("3", "m-3-blade", "blade", meta),
            fallback_version="2",
        ),
        blade_aspect.on_publish(
            PublishRoute(version="2", weight=10), _deployment("2", "m-2", "onnx")
        ),
    )
    return schema.RouteTable(
        schema_version=schema.SCHEMA_VERSION,
        model="intent-cls",
        revision=0,
        routes=entries,
        shadow=schema.Shadow(**shadow) if shadow else None,
        signature=schema.Signature(inputs=(TensorSpec("input_ids", "INT64", (-1, -1)),)),
        published_by="test",
        published_at=1.5,
    )


def test_what_the_control_plane_publishes_the_sdk_reads_back():
    published = _publish(version="4", ratio=0.25, service="m-4", processor="onnx")
    table = parse_route_table(published.to_content(), revision=3, model="intent-cls")
    assert isinstance(table, RouteTable) and isinstance(table, schema.RouteTable)
    assert table.model_dump(exclude={"revision"}) == published.model_dump(exclude={"revision"})
    assert table.revision == 3
    blade = table.route("3").blade
    assert blade is not None
    assert (blade.fallback_version, blade.speedup, blade.report_sha256) == ("2", 2.5, SHA.lower())
    assert table.shadow is not None and table.shadow.route.service == "m-4"


def test_the_control_plane_cannot_build_what_the_sdk_would_refuse():
    with pytest.raises(ValidationError) as info:
        _publish(version="2", ratio=0.1)  # a shadow of a route with traffic
    assert schema.describe_error(info.value) == (
        "shadow.version",
        "route '2' has weight 10; a shadow version takes no primary traffic (weight 0)",
    )


def test_the_stored_form_leaves_out_nulls():
    """Readers take an absent field for null; the SDK before this model refused a listed shadow
    that said ``"service": null``, so the stored JSON never says it."""
    published = _publish()
    doc = json.loads(published.to_content())
    assert "blade" not in doc["routes"][1] and "shadow" not in doc and "reason" not in doc
    assert doc["routes"][0]["blade"]["profiles"] == {"batch": [1, 32], "seq": None}  # a value
    with_shadow = published.model_copy(update={"shadow": schema.Shadow(version="2", ratio=0.5)})
    assert json.loads(with_shadow.to_content())["shadow"] == {"version": "2", "ratio": 0.5}
    read = parse_route_table(published.to_content(), revision=1)
    assert read.model_dump() == published.model_copy(update={"revision": 1}).model_dump()
