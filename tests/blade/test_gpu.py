"""GPU paths of the optimizer: run where onnxruntime-gpu finds a CUDA device (marker ``gpu``), and
the TensorRT pass where the TensorRT 10 libraries import. Skipped here (no GPU, no TensorRT); the
H100 figures in docs/benchmarks.md come from benchmarks/blade/gpu.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blade import BladeRuntime, load_artifact, optimize
from blade._hardware import tensorrt_version
from tests.fixtures import onnx_models

pytestmark = pytest.mark.gpu


def _cuda() -> bool:
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.fixture
def bert(tmp_path: Path) -> Path:
    if not _cuda():
        pytest.skip(
            "no CUDA execution provider (pip install 'autoai[gpu]' on a machine with a GPU)"
        )
    return onnx_models.tiny_bert(tmp_path, hidden=64, layers=2)


def test_gpu_optimize_verifies_fp16_and_cuda_graphs(bert: Path, tmp_path: Path) -> None:
    result = optimize(
        bert,
        device="cuda",
        output_dir=tmp_path / "art",
        batch_sizes=(1, 4),
        seq=16,
        cache_dir=tmp_path / "c",
        progress=False,
    )
    names = {p["name"]: p for p in result.report["passes"]}
    assert names["fp16"]["verdict"] == "passed"
    graph = next(p for n, p in names.items() if n.endswith("+cuda-graph"))
    # either captured and verified, or refused by ORT (nodes left on the CPU) and recorded
    assert graph["verdict"] in ("passed", "rejected") or "CUDAExecutionProvider" in graph["reason"]
    art = load_artifact(result.artifact_dir)
    inputs, expected = art.reference()
    got = art.masked(inputs, BladeRuntime(art.model_path, art.runtime).run(inputs))
    for name, want in expected.items():
        a, b = got[name].ravel(), want.ravel()
        assert float(np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999


def test_tensorrt_pass_runs_where_tensorrt_is_installed(bert: Path, tmp_path: Path) -> None:
    if tensorrt_version() is None:
        pytest.skip("tensorrt: not installed (the TensorRT 10 libraries are not importable)")
    result = optimize(
        bert,
        device="cuda",
        output_dir=tmp_path / "art",
        batch_sizes=(1, 4),
        seq=16,
        cache_dir=tmp_path / "c",
        progress=False,
    )
    trt = next(p for p in result.report["passes"] if p["name"].startswith("tensorrt"))
    assert trt["verdict"] in ("passed", "rejected") and trt.get("metrics")
    assert result.report["tensorrt"] == tensorrt_version()


def test_without_a_gpu_the_cuda_device_is_refused_clearly(tmp_path: Path) -> None:
    if _cuda():
        pytest.skip("this machine has a GPU")
    from blade import RuntimeNotAvailable

    model = onnx_models.tiny_bert(tmp_path)
    with pytest.raises(RuntimeNotAvailable, match="onnxruntime-gpu"):
        optimize(model, device="cuda", output_dir=tmp_path / "art", progress=False)
    assert not (tmp_path / "art").exists()
