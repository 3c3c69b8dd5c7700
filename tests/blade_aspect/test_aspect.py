"""blade_aspect: deploy plans (with the real optimizer), route entries, client classes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import blade_aspect
from blade_aspect import InvalidDeploySpec, InvalidRouteRequest
from blade_client import AsyncBladeClient, BladeClient
from eas_client import AsyncEasClient, EasClient
from tests.fixtures import onnx_models


@pytest.mark.parametrize(
    ("spec", "blade"),
    [
        ({}, False),
        ({"processor": "onnx"}, False),
        ({"processor": "blade"}, True),
        ({"blade": True}, True),
        ({"blade": {"level": "o1"}}, True),
        ({"blade": False, "processor": "onnx"}, False),
    ],
)
def test_wants_blade(spec: dict[str, object], blade: bool) -> None:
    assert blade_aspect.wants_blade(spec) is blade


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"processor": "tensorflow"}, "expected 'onnx' or 'blade'"),
        ({"processor": "onnx", "blade": True}, "contradicts"),
        ({"blade": "yes"}, "expected true, false or an options object"),
    ],
)
def test_bad_specs_are_refused(spec: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidDeploySpec, match=message):
        blade_aspect.wants_blade(spec)


def test_plain_deploy_serves_the_model_as_is(tmp_path: Path) -> None:
    model = onnx_models.identity(tmp_path)
    plan = blade_aspect.on_deploy(model, {"processor": "onnx"})
    assert plan.processor == "onnx"
    assert plan.model_path == model
    assert plan.blade is None and plan.report is None


def test_unknown_blade_options_are_refused_before_optimizing(tmp_path: Path) -> None:
    model = onnx_models.identity(tmp_path)
    with pytest.raises(InvalidDeploySpec, match="unknown blade option"):
        blade_aspect.on_deploy(model, {"blade": {"turbo": True}})


@pytest.mark.slow
def test_blade_deploy_optimizes_and_describes_the_engine(tmp_path: Path) -> None:
    model = onnx_models.tiny_bert(tmp_path, hidden=64, layers=2)
    spec = {
        "blade": {"batch_sizes": [1, 4], "seq": 16},
        "metadata": {"rpc": {"max_batch_size": 16}},
    }
    plan = blade_aspect.on_deploy(
        model, spec, output_dir=tmp_path / "art", cache_dir=tmp_path / "cache"
    )
    assert plan.report is not None
    if plan.processor == "onnx":  # no candidate beat plain on this machine: said so
        assert plan.reason.startswith("served plain")
        assert plan.model_path == model
        return
    assert plan.processor == "blade"
    assert plan.model_path == tmp_path / "art"
    assert plan.blade is not None
    assert plan.blade["engine"].startswith("ort-cpu-")
    assert plan.blade["profiles"] == {"batch": [1, 16], "seq": None}
    report = json.loads((plan.model_path / "report.json").read_text())
    assert report["chosen"] == plan.report["chosen"]
    assert len(plan.blade["report_sha256"]) == 64


def test_publish_entries() -> None:
    plain = blade_aspect.on_publish(
        {"version": "2", "weight": 10}, {"service": "m-2", "processor": "onnx"}
    )
    assert plain == {"version": "2", "weight": 10, "service": "m-2", "processor": "onnx"}
    meta = {"engine": "ort-cpu-int8-dynamic", "profiles": {"batch": [1, 32], "seq": None}}
    blade = blade_aspect.on_publish(
        {"version": 3, "weight": 90},
        {"service": "m-3-blade", "processor": "blade", "blade": meta},
        fallback_version="2",
    )
    assert blade["version"] == "3"
    assert blade["blade"] == {
        "engine": "ort-cpu-int8-dynamic",
        "profiles": {"batch": [1, 32], "seq": None},
        "fallback_version": "2",
        "report_sha256": None,
    }


@pytest.mark.parametrize(
    ("route", "deployment", "message"),
    [
        ({"version": "", "weight": 1}, {"service": "s"}, "expected a version"),
        ({"version": "1", "weight": -1}, {"service": "s"}, "expected an integer >= 0"),
        ({"version": "1", "weight": True}, {"service": "s"}, "expected an integer >= 0"),
        ({"version": "1", "weight": 1}, {}, "records no service"),
        ({"version": "1", "weight": 1}, {"service": "s", "processor": "blade"}, "metadata"),
        (
            {"version": "1", "weight": 1, "fallback_version": "1"},
            {"service": "s", "processor": "blade", "blade": {}},
            "fall back to itself",
        ),
    ],
)
def test_bad_routes_are_refused(
    route: dict[str, object], deployment: dict[str, object], message: str
) -> None:
    with pytest.raises(InvalidRouteRequest, match=message):
        blade_aspect.on_publish(route, deployment)


def test_on_call_picks_the_client_class() -> None:
    assert blade_aspect.on_call({"processor": "onnx"}) is EasClient
    assert blade_aspect.on_call({"processor": "blade"}) is BladeClient
    assert blade_aspect.on_call({"processor": "onnx"}, asynchronous=True) is AsyncEasClient
    assert blade_aspect.on_call({"processor": "blade"}, asynchronous=True) is AsyncBladeClient


def test_call_options_resolve_the_fallback_only_for_blade() -> None:
    asked: list[str] = []

    def resolve(version: str) -> str:
        asked.append(version)
        return f"client-{version}"

    assert blade_aspect.call_options({"processor": "onnx"}, resolve) == {}
    route = {"processor": "blade", "blade": {"fallback_version": "2", "profiles": {}}}
    options = blade_aspect.call_options(route, resolve)
    assert options["fallback"] == "client-2"
    assert options["blade"]["fallback_version"] == "2"
    assert asked == ["2"]
