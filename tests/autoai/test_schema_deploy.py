"""The deploy spec, deployment records, jobs and model versions as models (autoai.schema): dotted
keys, the token that never leaves, unknown keys, every refusal with its message, and records that
stay readable."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

import blade_aspect
from autoai.schema import (
    MAX_INSTANCES,
    BladeOptions,
    Deployment,
    DeploymentRecord,
    DeploySpec,
    JobInfo,
    LocalInstance,
    LocalInstanceHealth,
    ModelRecord,
    OperationMarker,
    PodSlot,
    ScaleRequest,
    fold_dotted,
)

TOKEN = "tok-5ecret-never-echoed"


def _refusal(model: type[DeploySpec] | type[ScaleRequest], body: Any) -> tuple[str, str]:
    """The first error's location (dotted) and message."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(body)
    error = caught.value.errors()[0]
    return ".".join(str(p) for p in error["loc"]), error["msg"]


# -- dotted keys ----------------------------------------------------------------------------------


def test_dotted_keys_are_folded_into_the_nested_form() -> None:
    dotted = DeploySpec.model_validate(
        {
            "metadata.instance": 2,
            "metadata.rpc.max_batch_size": 16,
            "metadata.rpc.max_batch_timeout": 5,
            "metadata": {"cpu": 2},  # merged with the dotted keys
            "blade.device": "cpu",
        }
    )
    nested = DeploySpec.model_validate(
        {
            "metadata": {
                "instance": 2,
                "cpu": 2,
                "rpc": {"max_batch_size": 16, "max_batch_timeout": 5},
            },
            "blade": {"device": "cpu"},
        }
    )
    assert dotted == nested
    assert dotted.metadata.rpc is not None and dotted.metadata.rpc.max_batch_size == 16
    inner = DeploySpec.model_validate({"metadata": {"rpc.batching": False, "instance": 3}})
    assert inner.metadata.rpc is not None and inner.metadata.rpc.batching is False


def test_padding_keys_are_input_names_and_never_folded() -> None:
    padding = {"inputs": {"input.1": {"axis": 1, "value": 0}}, "outputs": {"out.0": 1}}
    for body in ({"metadata": {"padding": padding}}, {"metadata.padding": padding}):
        spec = DeploySpec.model_validate(body)
        assert spec.metadata.server()["padding"] == {
            "inputs": {"input.1": {"axis": 1, "value": 0}},
            "outputs": {"out.0": 1},
        }


def test_folding_leaves_its_input_alone() -> None:
    body = {"metadata": {"rpc": {"batching": True}}, "metadata.rpc.max_batch_size": 8}
    before = json.dumps(body, sort_keys=True)
    assert fold_dotted(body) == {"metadata": {"rpc": {"batching": True, "max_batch_size": 8}}}
    assert json.dumps(body, sort_keys=True) == before


_LEAF = st.one_of(st.integers(1, 8), st.booleans())
_NESTED = st.fixed_dictionaries(
    {},
    optional={
        "instance": st.integers(1, MAX_INSTANCES),
        "cpu": st.integers(1, 64),
        "gpu": st.integers(0, 8),
        "intra_op_threads": st.integers(1, 8),
        "rpc": st.fixed_dictionaries(
            {},
            optional={
                "batching": st.booleans(),
                "max_batch_size": st.integers(1, 256),
                "max_batch_timeout": st.floats(0, 100),
                "max_queue_size": st.integers(1, 1000),
                "worker_threads": st.integers(1, 8),
            },
        ),
    },
)


def _flatten(prefix: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict) or not value:
        return {prefix: value}
    out: dict[str, Any] = {}
    for key, sub in value.items():
        out.update(_flatten(f"{prefix}.{key}", sub))
    return out


@settings(max_examples=200, deadline=None)
@given(metadata=_NESTED, dotted=st.data())
def test_any_mix_of_dotted_and_nested_keys_means_the_nested_spec(
    metadata: dict[str, Any], dotted: st.DataObject
) -> None:
    flat = _flatten("metadata", metadata)
    chosen = dotted.draw(st.sets(st.sampled_from(sorted(flat))) if flat else st.just(set()))
    body: dict[str, Any] = {k: v for k, v in flat.items() if k in chosen}
    for key, value in flat.items():  # the rest nested
        if key not in chosen:
            node = body
            *path, last = key.split(".")
            for part in path:
                node = node.setdefault(part, {})
            node[last] = value
    assert DeploySpec.model_validate(body) == DeploySpec.model_validate({"metadata": metadata})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"metadata": {"instance": 1}, "metadata.instance": 2}, "metadata.instance is given twice"),
        (
            {"metadata": {"rpc": {"batching": True}}, "metadata.rpc": {"batching": False}},
            "metadata.rpc.batching is given twice",
        ),
        ({"metadata": "big", "metadata.instance": 2}, "metadata must be an object, got 'big'"),
        ({"metadata.rpc": 3, "metadata.rpc.batching": True}, "metadata.rpc must be an object"),
    ],
)
def test_a_key_given_both_ways_is_refused(body: dict[str, Any], message: str) -> None:
    assert message in _refusal(DeploySpec, body)[1]


# -- the token --------------------------------------------------------------------------------


def test_the_token_is_never_dumped_shown_or_stored() -> None:
    spec = DeploySpec.model_validate({"token": TOKEN, "metadata.instance": 2})
    assert spec.token is not None and spec.token.get_secret_value() == TOKEN
    shown = [repr(spec), str(spec), spec.model_dump_json(), json.dumps(spec.aspect())]
    assert all(TOKEN not in text for text in shown)
    assert "token" not in spec.model_dump() and spec.stored().token is None
    record = DeploymentRecord(
        name="m",
        version="1",
        service="m-1",
        processor="onnx",
        model_sha256="0" * 64,
        instances=[LocalInstance(pid=1)],
        spec=spec,
        created=0.0,
    )
    assert TOKEN not in record.model_dump_json()
    answer = Deployment.describe(record, [LocalInstanceHealth(pid=1, alive=True, ready=True)], [])
    assert TOKEN not in answer.model_dump_json()
    assert DeploySpec.model_json_schema()["properties"]["token"]["anyOf"][0]["writeOnly"]


def test_an_empty_token_is_no_token() -> None:
    assert DeploySpec.model_validate({"token": ""}).token is None


# -- unknown keys ------------------------------------------------------------------------------


def test_eas_name_and_model_path_are_accepted_and_dropped() -> None:
    spec = DeploySpec.model_validate({"name": "other", "model_path": "oss://b/m.onnx"})
    assert spec == DeploySpec()
    assert "name" not in spec.model_dump() and "model_path" not in spec.model_dump()


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"metdata": {"instance": 2}}, "metdata"),
        ({"metadata": {"instances": 2}}, "metadata.instances"),  # not silently one instance
        ({"metadata": {"rpc": {"max_batch": 8}}}, "metadata.rpc.max_batch"),
        ({"max_batch_size": 8}, "max_batch_size"),
    ],
)
def test_unknown_keys_are_refused_by_name(body: dict[str, Any], where: str) -> None:
    assert _refusal(DeploySpec, body) == (where, "Extra inputs are not permitted")


# -- every refusal ------------------------------------------------------------------------------

REFUSALS: list[tuple[dict[str, Any], str]] = [
    ({"processor": "tensorflow"}, "processor is 'tensorflow', expected 'onnx' or 'blade'"),
    ({"processor": 1}, "processor is 1, expected 'onnx' or 'blade' (or blade: true)"),
    ({"blade": "yes"}, "blade is 'yes', expected true, false or an options object"),
    ({"blade": None}, "blade is None, expected true, false or an options object"),
    ({"processor": "onnx", "blade": True}, "processor 'onnx' contradicts blade: pick one"),
    ({"processor": "onnx", "blade": {}}, "processor 'onnx' contradicts blade: pick one"),
    ({"blade": {"turbo": True}}, "unknown blade option(s) ['turbo'], expected some of"),
    ({"blade": {"required": "yes"}}, "blade.required is 'yes', expected true or false"),
    ({"blade": {"batch_sizes": [8, 0]}}, "blade.batch_sizes[*] is 0, expected an integer >= 1"),
    ({"blade": {"seq": True}}, "blade.seq is True, expected an integer >= 1"),
    ({"metadata": "big"}, "metadata must be an object, got 'big'"),
    ({"metadata": {"instance": 0}}, "metadata.instance is 0, expected an integer from 1 to 16"),
    ({"metadata": {"instance": 17}}, "metadata.instance is 17, expected an integer from 1 to 16"),
    ({"metadata": {"instance": True}}, "metadata.instance is True, expected an integer from 1"),
    ({"metadata": {"instance": "2"}}, "metadata.instance is '2', expected an integer from 1"),
    ({"metadata": {"port": 80}}, "metadata.port is 80, expected 0 (any free port) or a port"),
    ({"metadata": {"port": 65535, "instance": 2}}, "metadata.port is 65535, expected 0"),
    ({"metadata": {"port": "8080"}}, "metadata.port is '8080', expected 0"),
    ({"metadata": {"cpu": 0}}, "metadata.cpu is 0, expected an integer >= 1"),
    ({"metadata": {"gpu": "all"}}, "metadata.gpu is 'all', expected an integer >= 0"),
    ({"metadata": {"gpu": -1}}, "metadata.gpu is -1, expected an integer >= 0"),
    ({"metadata": {"memory": "lots"}}, "metadata.memory is 'lots', expected MB (an integer > 0)"),
    ({"metadata": {"memory": 0}}, "metadata.memory is 0, expected MB"),
    ({"metadata": {"workers": 0}}, "metadata.workers is 0, expected an integer >= 1"),
    ({"metadata": {"intra_op_threads": 0}}, "metadata.intra_op_threads is 0, expected"),
    ({"metadata": {"rpc": {"max_batch_size": 0}}}, "metadata.rpc.max_batch_size is 0, expected"),
    (
        {"metadata": {"rpc": {"max_batch_timeout": -1}}},
        "metadata.rpc.max_batch_timeout is -1, expected a number of milliseconds >= 0",
    ),
    ({"metadata": {"rpc": {"batching": "on"}}}, "metadata.rpc.batching is 'on', expected true"),
    ({"metadata": {"rpc": {"max_queue_size": 0}}}, "metadata.rpc.max_queue_size is 0, expected"),
    ({"metadata": {"rpc": {"grpc_port": 70000}}}, "metadata.rpc.grpc_port is 70000, expected"),
]


@pytest.mark.parametrize(("body", "message"), REFUSALS)
def test_each_refusal_says_what_and_why(body: dict[str, Any], message: str) -> None:
    assert message in _refusal(DeploySpec, body)[1]


@pytest.mark.parametrize(
    "body",
    [
        {"processor": "tensorflow"},
        {"blade": "yes"},
        {"processor": "onnx", "blade": True},
        {"blade": {"turbo": True}},
        {"blade": {"required": "yes"}},
    ],
)
def test_processor_and_blade_refusals_are_blade_aspects_own(body: dict[str, Any]) -> None:
    with pytest.raises(blade_aspect.InvalidDeploySpec) as caught:
        blade_aspect.wants_blade(body)
    assert _refusal(DeploySpec, body)[1] == str(caught.value)


@pytest.mark.parametrize(
    ("body", "blade"),
    [
        ({}, False),
        ({"processor": "onnx"}, False),
        ({"processor": "blade"}, True),
        ({"blade": True}, True),
        ({"blade": {}}, True),
        ({"blade": {"device": "cpu", "level": "o1", "batch_sizes": [1, 8]}}, True),
        ({"processor": "blade", "blade": {"required": True, "tolerance": 0.99}}, True),
    ],
)
def test_what_blade_aspect_reads_is_what_was_asked(body: dict[str, Any], blade: bool) -> None:
    spec = DeploySpec.model_validate(body)
    assert blade_aspect.wants_blade(spec.aspect()) is blade
    if isinstance(spec.blade, BladeOptions):  # only the options given go to the optimizer
        assert set(spec.aspect()["blade"]) == set(body["blade"])


def test_server_metadata_is_what_eas_server_reads() -> None:
    spec = DeploySpec.model_validate(
        {
            "metadata": {
                "instance": 2,
                "cpu": 3,
                "gpu": 0,
                "memory": "4Gi",
                "rpc": {"batching": True},
            }
        }
    )
    assert spec.metadata.server() == {"rpc": {"batching": True}, "intra_op_threads": 3}
    given = DeploySpec.model_validate({"metadata": {"cpu": 3, "intra_op_threads": 1}})
    assert given.metadata.server() == {"intra_op_threads": 1}


# -- scale ----------------------------------------------------------------------------------------


def test_scale_takes_metadata_instance_only() -> None:
    assert ScaleRequest.model_validate({"metadata.instance": 3}).metadata.instance == 3
    assert _refusal(ScaleRequest, {"metadata": {"instance": 2, "cpu": 1}})[1] == (
        "only metadata.instance can change on a running deployment, got ['cpu', 'instance']"
    )
    assert "metadata.instance is 0" in _refusal(ScaleRequest, {"metadata": {"instance": 0}})[1]
    assert _refusal(ScaleRequest, {"metadata": {"instance": 2}, "x": 1})[0] == "x"


# -- records ----------------------------------------------------------------------------------


def _record(**changes: Any) -> dict[str, Any]:
    return {
        "schema_version": 1,
        "name": "m",
        "version": "2",
        "service": "m-2",
        "processor": "onnx",
        "model_sha256": "ab" * 32,
        "orchestrator": "local",
        "instances": [
            {"pid": 10, "args": ["python", "-m", "eas_server"], "log": "l", "started": 1.0},
        ],
        "spec": {"metadata": {"instance": 1}},
        "created": 2.0,
        **changes,
    }


def test_a_record_round_trips_and_tells_local_from_pod_instances() -> None:
    record = DeploymentRecord.model_validate(_record())
    assert DeploymentRecord.model_validate_json(record.model_dump_json()) == record
    assert json.loads(record.model_dump_json())["spec"] == {"metadata": {"instance": 1}}  # as given
    assert isinstance(record.instances[0], LocalInstance) and record.instances[0].pid == 10
    pods = DeploymentRecord.model_validate(
        _record(orchestrator="kubernetes", instances=[{"pod": None, "ip": None, "port": None}])
    )
    assert pods.instances == [PodSlot(pod=None, ip=None, port=None)]


def test_a_newer_writers_fields_survive_a_rewrite() -> None:
    record = DeploymentRecord.model_validate(_record(placement_group="gpu-a"))
    moved = record.placed(record.placement.model_copy(update={"instances": []}))
    assert json.loads(moved.model_dump_json())["placement_group"] == "gpu-a"
    model = ModelRecord.model_validate({"name": "m", "next": 3, "owner": "team-a"})
    assert json.loads(model.model_dump_json())["owner"] == "team-a"


def test_a_stored_spec_the_current_model_refuses_does_not_lose_the_record() -> None:
    old = _record(spec={"metadata": {"instance": 2, "port": 9000, "rpc": {"max_batch": 8}}, "x": 1})
    record = DeploymentRecord.model_validate_json(json.dumps(old))
    assert record.spec.metadata.instance == 2 and record.spec.metadata.port == 9000
    assert record.spec.metadata.rpc is not None and record.spec.metadata.rpc.max_batch_size is None
    garbage = DeploymentRecord.model_validate(_record(spec="not a spec"))
    assert garbage.spec == DeploySpec()


def test_the_job_and_marker_documents() -> None:
    marker = OperationMarker.model_validate({"replica": "r1", "operation": "deploy"})
    assert marker.started == 0.0  # a marker without a start time is still read
    with pytest.raises(ValidationError):
        JobInfo.model_validate(
            {
                "id": "j",
                "kind": "deploy",
                "title": "t",
                "state": "lost",
                "progress": 0.5,
                "step": "",
                "log": [],
                "result": None,
                "error": None,
                "created": 0.0,
                "finished": None,
            }
        )
