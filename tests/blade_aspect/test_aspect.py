"""blade_aspect: deploy plans (with the real optimizer), route entries, client classes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

import blade_aspect
from autoai.schema import BladeMeta, Deployment, PublishRoute, RouteEntry
from blade_aspect import InvalidDeploySpec, InvalidRouteRequest
from blade_client import AsyncBladeClient, BladeClient, BladeProfile
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
    assert plan.blade.engine.startswith("ort-cpu-")
    assert plan.blade.profiles == {"batch": (1, 16), "seq": None}
    assert plan.blade.speedup is not None and plan.blade.speedup > 0
    report = json.loads((plan.model_path / "report.json").read_text())
    assert report["chosen"] == plan.report["chosen"]
    assert plan.blade.report_sha256 is not None and len(plan.blade.report_sha256) == 64


def _route(version: str, weight: int, **extra: str) -> PublishRoute:
    return PublishRoute(version=version, weight=weight, **extra)


def _deployment(service: str, processor: str = "onnx", blade: object = None) -> Deployment:
    """A deployment as ``DeploymentService.get`` describes it (one live instance)."""
    return Deployment.model_validate(
        {
            "name": "m",
            "version": "1",
            "service": service,
            "processor": processor,
            "blade": blade,
            "model_sha256": "0" * 64,
            "created": 0.0,
            "instances": [],
            "endpoints": ["http://127.0.0.1:1"],
        }
    )


def test_publish_entries() -> None:
    plain = blade_aspect.on_publish(_route("2", 10), _deployment("m-2"))
    assert plain == RouteEntry(version="2", weight=10, service="m-2", processor="onnx")
    meta = {
        "engine": "ort-cpu-int8-dynamic",
        "profiles": {"batch": [1, 32], "seq": None},
        "report_sha256": "AB" * 32,
        "speedup": 1.8,
    }
    blade = blade_aspect.on_publish(
        PublishRoute.model_validate({"version": 3, "weight": 90}),  # a JSON integer version
        _deployment("m-3-blade", "blade", meta),
        fallback_version="2",
    )
    assert (blade.version, blade.processor, blade.service) == ("3", "blade", "m-3-blade")
    assert blade.blade == BladeMeta(
        engine="ort-cpu-int8-dynamic",
        profiles={"batch": (1, 32), "seq": None},
        fallback_version="2",
        report_sha256="ab" * 32,
        speedup=1.8,
    )
    own = blade_aspect.on_publish(
        _route("3", 90, fallback_version="1"),
        _deployment("m-3-blade", "blade", {"engine": "e"}),
        fallback_version="2",
    )
    assert own.blade is not None and own.blade.fallback_version == "1"
    assert own.blade.profiles == {"batch": None, "seq": None}


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"version": "", "weight": 1}, "at least 1 character"),
        ({"version": True, "weight": 1}, "valid string"),
        ({"version": "1", "weight": -1}, "greater than or equal to 0"),
        ({"version": "1", "weight": True}, "valid integer"),
        ({"version": "1", "weight": 1, "share": 0.5}, "Extra inputs are not permitted"),
    ],
)
def test_malformed_routes_never_reach_on_publish(route: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PublishRoute.model_validate(route)


@pytest.mark.parametrize(
    ("route", "deployment", "message"),
    [
        (_route("1", 1), _deployment(""), "route 1: the deployment records no service"),
        (_route("1", 1), _deployment("s", "blade"), "a blade deployment without blade metadata"),
        (
            _route("1", 1, fallback_version="1"),
            _deployment("s", "blade", {"engine": "e"}),
            "route 1: a blade route cannot fall back to itself",
        ),
        (_route("1", 1), _deployment("s", ""), "route 1: processor: String should have at least 1"),
    ],
)
def test_bad_deployments_are_refused(
    route: PublishRoute, deployment: Deployment, message: str
) -> None:
    with pytest.raises(InvalidRouteRequest, match=re.escape(message)):
        blade_aspect.on_publish(route, deployment)


def test_on_call_picks_the_client_class() -> None:
    blade = RouteEntry(
        version="3", weight=1, service="s", processor="blade", blade=BladeMeta(engine="e")
    )
    plain = RouteEntry(version="2", weight=1, service="s", processor="onnx")
    assert blade_aspect.on_call(plain) is EasClient
    assert blade_aspect.on_call(blade) is BladeClient
    assert blade_aspect.on_call(plain, asynchronous=True) is AsyncEasClient
    assert blade_aspect.on_call(blade, asynchronous=True) is AsyncBladeClient
    assert blade_aspect.is_blade(_deployment("s", "blade", {"engine": "e"}))
    assert not blade_aspect.is_blade(_deployment("s"))


def test_call_options_resolve_the_fallback_only_for_blade() -> None:
    asked: list[str] = []

    def resolve(version: str) -> str:
        asked.append(version)
        return f"client-{version}"

    plain = RouteEntry(version="2", weight=1, service="s2", processor="onnx")
    assert blade_aspect.call_options(plain, resolve) == {}
    meta = BladeMeta(engine="e", profiles={"batch": [1, 8]}, fallback_version="2")
    route = RouteEntry(version="3", weight=1, service="s3", processor="blade", blade=meta)
    options = blade_aspect.call_options(route, resolve)
    assert options["fallback"] == "client-2"
    assert options["blade"]["fallback_version"] == "2"
    assert options["blade"]["profiles"] == {"batch": [1, 8], "seq": None}
    assert BladeProfile.from_meta(options["blade"]) == BladeProfile(batch=(1, 8), seq=None)
    assert asked == ["2"]
    no_fallback = route.model_copy(update={"blade": BladeMeta(engine="e")})
    assert blade_aspect.call_options(no_fallback, resolve)["fallback"] is None
    assert asked == ["2"]
