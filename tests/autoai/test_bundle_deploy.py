"""Bundles end to end on both store backends: registered through a real control plane
(``autoai up``), deployed plain (the ``pipeline`` processor, chosen because the version is a
bundle) and with blade (still ``pipeline``, serving the derived bundle, the optimizer's record in
the route), asked in text over OIP JSON and through the SDK (the plain client), answered with
labels and embeddings; and the deploy plans ``blade_aspect`` makes for bundles.

The two blade tests optimize the same bundle with the same options, so they share one blade
artifact cache (``blade_cache``): the first one runs the optimizer, the second one's deploy finds
its artifact there, as a repeated deploy does, rather than timing the same candidates again."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner, Result

import blade_aspect
from autoai.cli import app
from autoai.orchestrators import LocalOrchestrator
from autoai.sdk import ModelClient
from autoai.testing.models import tiny_bert
from config_store import open_store
from config_store.testing import free_ports
from eas_client import EasClient
from tests.eas_server.bundles import (
    CLASSIFY_EXAMPLES,
    CLASSIFY_LABELS,
    SLOT_LABELS,
    VOCAB,
    make_bundle,
)
from tests.fixtures import onnx_models
from tests.fixtures.system import TOKEN, ControlPlane

TEXTS = [text for text, _ in CLASSIFY_EXAMPLES]
LABELS = [label for _, label in CLASSIFY_EXAMPLES]
HIDDEN = 384


@pytest.fixture(params=["sqlite", "zk"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "zk":
        return str(request.getfixturevalue("zk_url")) + "?session_timeout=4"
    return f"sqlite://{tmp_path / 'store.db'}?lease_ttl=2"


@pytest.fixture(scope="module")
def blade_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``AUTOAI_CACHE`` of this module's control planes; the optimizer's cache is its ``blade``."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def plane(store_url: str, tmp_path: Path, blade_cache: Path) -> Iterator[ControlPlane]:
    env = {"AUTOAI_CACHE": str(blade_cache)}
    plane = ControlPlane(store_url, tmp_path, free_ports(1)[0], env=env)
    try:
        yield plane
    finally:
        if plane.proc.poll() is None:
            plane.kill()
        with open_store(store_url, snapshot_dir=False) as store:
            orchestrator = LocalOrchestrator(store, store_url, tmp_path / "run")
            for pid in orchestrator.processes():
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_bundle_is_registered_deployed_and_answers_text_with_labels(
    plane: ControlPlane, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, "classify")
    version = plane.control.register_model("intent", file=bundle)  # packed, uploaded
    assert version.bundle is not None and version.bundle.labels == CLASSIFY_LABELS
    plane.deploy(version.version, {"metadata": {"rpc": {"max_batch_size": 8}}}, model="intent")
    deployment = plane.control.deployment("intent", version.version)
    assert (deployment.processor, deployment.blade) == ("pipeline", None)
    (endpoint,) = deployment.endpoints
    base = f"{endpoint}/v2/models/intent/versions/{version.version}"
    metadata = httpx.get(base, timeout=10).json()
    assert [(t["name"], t["datatype"]) for t in metadata["inputs"]] == [("text", "BYTES")]
    body = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [4], "data": TEXTS}]}
    answer = httpx.post(f"{base}/infer", json=body, timeout=30)
    assert answer.status_code == 200, answer.text
    outputs = {o["name"]: o for o in answer.json()["outputs"]}
    assert outputs["label"]["data"] == LABELS
    assert all(0.5 < score <= 1.0 for score in outputs["score"]["data"])

    routes = {"routes": [{"version": version.version, "weight": 100}]}
    published = plane.control.publish("intent", routes)
    assert published.table.labels == tuple(sorted(CLASSIFY_LABELS))
    assert published.table.routes[0].processor == "pipeline"
    with (
        open_store(plane.process.store_url, snapshot_dir=False) as store,
        ModelClient(store, registry=CollectorRegistry()) as sdk,
    ):
        result = sdk.predict("intent", {"text": TEXTS})
        assert list(result["label"]) == LABELS
    plane.control.undeploy("intent", version.version, force=True)
    assert plane.control.deployments() == []


def test_a_plain_deploy_of_a_bundle_is_a_pipeline(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "classify")
    for spec in ({}, {"processor": "pipeline"}):
        plan = blade_aspect.on_deploy(bundle, spec)
        assert (plan.processor, plan.model_path, plan.blade) == ("pipeline", bundle, None)
    with pytest.raises(blade_aspect.InvalidDeploySpec, match=r"is a bundle .* 'pipeline'"):
        blade_aspect.on_deploy(bundle, {"processor": "onnx"})
    with pytest.raises(blade_aspect.InvalidDeploySpec, match="'pipeline' serves bundles"):
        blade_aspect.on_deploy(onnx_models.identity(tmp_path), {"processor": "pipeline"})


def _bert_bundle(tmp_path: Path) -> Path:
    """An embed bundle around a BERT-shaped encoder large enough for int8 to pay on a CPU."""
    bundle = make_bundle(tmp_path, "embed", name="bert", output="sentence_embedding")
    model = tiny_bert(tmp_path / "bert-model", vocab=len(VOCAB), hidden=HIDDEN, layers=2)
    shutil.copyfile(model, bundle / "model.onnx")
    return bundle


BLADE_SPEC = {
    "blade": {"batch_sizes": [4, 8], "seq": 64},
    "metadata": {"rpc": {"max_batch_size": 8}},
}


@pytest.mark.slow
def test_a_blade_deploy_of_a_bundle_serves_the_derived_bundle_as_a_pipeline(
    tmp_path: Path, blade_cache: Path
) -> None:
    bundle = _bert_bundle(tmp_path)
    plan = blade_aspect.on_deploy(
        bundle, BLADE_SPEC, output_dir=tmp_path / "derived", cache_dir=blade_cache / "blade"
    )
    assert plan.processor == "pipeline" and plan.report is not None
    if plan.blade is None:  # no candidate beat the plain model on this machine: said so
        assert plan.model_path == bundle and plan.reason.startswith("served plain")
        return
    assert plan.model_path == tmp_path / "derived"
    spec_doc = json.loads((plan.model_path / "pipeline.json").read_text())
    assert spec_doc["model"] == "blade" and (plan.model_path / "blade" / "blade.json").is_file()
    assert plan.blade.engine.startswith("ort-cpu-") and plan.blade.profiles["batch"] == (1, 8)
    report = (plan.model_path / "blade" / "report.json").read_bytes()
    assert plan.blade.report_sha256 == hashlib.sha256(report).hexdigest()


@pytest.mark.slow
# One backend: the optimizer's run dominates, and the stores' part of a deploy is the same as in
# the plain test above, which runs on both.
@pytest.mark.parametrize("store_url", ["sqlite"], indirect=True)
def test_a_blade_deployed_bundle_answers_text_through_the_plain_client(
    plane: ControlPlane, tmp_path: Path
) -> None:
    version = plane.control.register_model("bert", file=_bert_bundle(tmp_path)).version
    plane.deploy(version, BLADE_SPEC, model="bert")
    deployment = plane.control.deployment("bert", version)
    assert deployment.processor == "pipeline"  # blade-optimized or served plain: a pipeline
    published = plane.control.publish("bert", {"routes": [{"version": version, "weight": 1}]})
    (route,) = published.table.routes
    assert route.processor == "pipeline" and blade_aspect.on_call(route) is EasClient
    if deployment.blade is not None:
        assert route.blade is not None and route.blade.fallback_version is None
        assert route.blade.engine == deployment.blade.engine
    with (
        open_store(plane.process.store_url, snapshot_dir=False) as store,
        ModelClient(store, registry=CollectorRegistry()) as sdk,
    ):
        embedding = sdk.predict("bert", {"text": TEXTS})["embedding"]
    assert embedding.shape == (len(TEXTS), HIDDEN)
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, rtol=1e-4)


def _cli(plane: ControlPlane, command: str) -> Result:
    env = {"AUTOAI_URL": plane.url, "AUTOAI_TOKEN": TOKEN, "COLUMNS": "200"}
    return CliRunner().invoke(app, shlex.split(command), env=env, catch_exceptions=False)


@pytest.mark.slow
def test_the_cli_registers_bundles_and_shows_their_task_and_labels(
    plane: ControlPlane, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, "slots")
    registered = _cli(plane, f"models register slots {bundle}")
    assert registered.exit_code == 0, registered.output
    assert "registered slots version 1 " in registered.output
    assert "bundle: slots, 4 labels" in registered.output
    by_parts = _cli(
        plane,
        f"models register slots {bundle / 'model.onnx'} --tokenizer {bundle / 'tokenizer.json'} "
        f"--labels {bundle / 'labels.txt'} --pipeline {bundle / 'pipeline.json'} --json",
    )
    assert by_parts.exit_code == 0, by_parts.output
    assert json.loads(by_parts.output)["bundle"]["labels"] == list(SLOT_LABELS)
    shown = _cli(plane, "models show slots --version 2")
    assert shown.exit_code == 0, shown.output
    lines = {line.split("│")[1].strip(): line.split("│")[2].strip() for line in
             shown.output.splitlines() if line.count("│") == 3}  # fmt: skip
    assert (lines["kind"], lines["task"], lines["text inputs"]) == ("bundle", "slots", "text")
    assert lines["labels"] == ", ".join(SLOT_LABELS)
    half = _cli(plane, f"models register slots {bundle / 'model.onnx'} --labels x.txt")
    assert half.exit_code == 2
    assert "a bundle by parts needs --tokenizer and --pipeline" in half.output
    broken = make_bundle(tmp_path, "classify", name="wide", head_width=4)
    refused = _cli(plane, f"models register intent {broken}")
    assert refused.exit_code != 0
    assert "the label list does not match the model" in refused.output
