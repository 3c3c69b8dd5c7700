"""eas-server --processor blade: same signature as the plain model, same answers, and an artifact
that disagrees with its reference never becomes ready."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tritonclient.http as httpclient

from blade import optimize
from tests.fixtures import onnx_models
from tests.fixtures.servers import StartServer


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("blade")
    model = onnx_models.tiny_bert(d, hidden=64, layers=2)
    result = optimize(
        model,
        output_dir=d / "art",
        batch_sizes=(1, 4),
        seq=16,
        cache_dir=d / "cache",
        progress=False,
    )
    return model, result.artifact_dir


def test_blade_and_onnx_processors_serve_the_same_model(
    start_server: StartServer, artifact: tuple[Path, Path]
) -> None:
    model, art = artifact
    plain = start_server(model, name="m")
    blade = start_server(art, "--processor", "blade", name="m")
    clients = [httpclient.InferenceServerClient(s.address) for s in (plain, blade)]
    try:
        meta = [c.get_model_metadata("m") for c in clients]
        assert meta[0]["inputs"] == meta[1]["inputs"] and meta[0]["outputs"] == meta[1]["outputs"]
        configs = [c.get_model_config("m") for c in clients]
        assert configs[1]["backend"] == "blade" and configs[0]["input"] == configs[1]["input"]
        ids = np.random.default_rng(0).integers(1, 100, size=(3, 12), dtype=np.int64)
        mask = np.ones_like(ids)
        outs = []
        for client in clients:
            inputs = [
                httpclient.InferInput("input_ids", [3, 12], "INT64"),
                httpclient.InferInput("attention_mask", [3, 12], "INT64"),
            ]
            inputs[0].set_data_from_numpy(ids)
            inputs[1].set_data_from_numpy(mask)
            outs.append(client.infer("m", inputs).as_numpy("sentence_embedding"))
        cos = (
            (outs[0] * outs[1]).sum(1)
            / np.linalg.norm(outs[0], axis=1)
            / np.linalg.norm(outs[1], axis=1)
        )
        assert cos.min() > 0.99
    finally:
        for c in clients:
            c.close()


def test_an_artifact_that_disagrees_with_its_reference_does_not_start(
    artifact: tuple[Path, Path], tmp_path: Path
) -> None:
    _, art = artifact
    broken = tmp_path / "broken"
    subprocess.run(["cp", "-r", str(art), str(broken)], check=True)
    with np.load(broken / "reference.npz") as npz:
        ref = {k: npz[k] for k in npz.files}
    for key in ref:
        if key.startswith("out:"):
            ref[key] = ref[key] + 1.0  # the reference no longer matches what the model computes
    np.savez(broken / "reference.npz", **ref)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "eas_server",
            "--model",
            str(broken),
            "--name",
            "m",
            "--processor",
            "blade",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "failed its start-up verification" in done.stderr
    (broken / "blade.json").write_text("{")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "eas_server",
            "--model",
            str(broken),
            "--name",
            "m",
            "--processor",
            "blade",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "not a blade artifact" in done.stderr
