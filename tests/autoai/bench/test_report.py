"""The ``--json`` document against its schema, and the package's exports."""

from __future__ import annotations

import json
import types
from typing import Any

import autoai.bench
from autoai.bench import (
    JSON_SCHEMA,
    BenchReport,
    ClientStats,
    LatencySummary,
    ServerSnapshot,
    Step,
    StepResult,
    generator_stats,
    server_stats,
    to_document,
)

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "integer": int,
    "number": (int, float),
}


def validate(doc: Any, schema: dict[str, Any], where: str = "$") -> None:
    """The subset of JSON Schema that ``JSON_SCHEMA`` uses (type, const, enum, properties,
    required, additionalProperties, items)."""
    if "const" in schema:
        assert doc == schema["const"], where
    if "enum" in schema:
        assert doc in schema["enum"], f"{where}: {doc!r} not in {schema['enum']}"
    if "type" in schema:
        types_ = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        ok = any(
            isinstance(doc, _TYPES[t])
            and not (t in ("integer", "number") and isinstance(doc, bool))
            for t in types_
        )
        assert ok, f"{where}: {doc!r} is not {types_}"
    if isinstance(doc, dict):
        props = schema.get("properties", {})
        for key in schema.get("required", []):
            assert key in doc, f"{where}: missing {key}"
        for key, value in doc.items():
            if key in props:
                validate(value, props[key], f"{where}.{key}")
            else:
                extra = schema.get("additionalProperties", True)
                assert extra is not False, f"{where}: unexpected {key}"
                if isinstance(extra, dict):
                    validate(value, extra, f"{where}.{key}")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            validate(item, schema["items"], f"{where}[{i}]")


def _report() -> BenchReport:
    stats = server_stats(
        {"http://a": ServerSnapshot()},
        {"http://a": ServerSnapshot(requests={"success": 10.0, "queue_full": 2.0})},
        2.0,
    )
    lat = LatencySummary.of([0.001, 0.002, 0.004])
    report = BenchReport(
        model="m",
        version=None,
        target="url",
        address="http://a",
        encoding="binary",
        batch=1,
        inputs=[{"name": "x", "datatype": "FP32", "shape": [1, 8], "source": "drawn"}],
        warmup_s=0.5,
        duration_s=2.0,
    )
    report.steps.append(
        StepResult(
            Step(concurrency=4),
            2.0,
            False,
            ClientStats(3, 1.5, lat, {"HTTP 503": 2}),
            stats,
            generator_stats(0.1, 2.0, 5),
        )
    )
    report.steps.append(
        StepResult(
            Step(rate=100.0),
            1.2,
            True,
            ClientStats(0, 0.0, None, {}),
            None,
            generator_stats(0.0, 1.2, 0),
        )
    )
    return report


def test_the_document_follows_its_schema() -> None:
    doc = json.loads(json.dumps(to_document(_report())))
    validate(doc, JSON_SCHEMA)
    closed, opened = doc["steps"]
    assert closed["client"]["rt_ms"]["p99"] == 4.0
    assert closed["server"]["errors"] == {"queue_full": 2}
    assert closed["max_in_flight"] == 4
    assert (
        opened["mode"] == "open" and opened["server"] is None and opened["client"]["rt_ms"] is None
    )


def test_the_validator_catches_a_drifting_document() -> None:
    doc = to_document(_report())
    doc["steps"][0]["client"]["qps"] = "fast"
    try:
        validate(doc, JSON_SCHEMA)
    except AssertionError as exc:
        assert "qps" in str(exc)
    else:
        raise AssertionError("a string qps passed the schema")


def test_all_public_names_are_in_dunder_all() -> None:
    public = {
        n
        for n, v in vars(autoai.bench).items()
        if not n.startswith("_") and not isinstance(v, types.ModuleType)
    }
    assert public == set(autoai.bench.__all__)
