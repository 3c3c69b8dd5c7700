"""blade's generation runtime on CUDA (marker ``gpu``; skipped without the CUDA execution
provider): caches on the device against caches in numpy, CUDA graphs against none, and
optimize with ``device="cuda"`` on the micro bundle. Timings: benchmarks/generation/gpu_blade.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from blade import optimize
from blade._geneval import front_end, greedy, synthetic_clips, teacher_force
from blade._runtime import RuntimeConfig
from blade._seq2seq import BladeSeq2Seq, Seq2SeqConfig, row_buckets
from eas_server.generation._cache import buckets
from eas_server.generation._spec import read_spec

pytestmark = pytest.mark.gpu


@pytest.fixture
def bundle(whisper_micro: Path) -> Path:
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        pytest.skip(
            "no CUDA execution provider (pip install 'autoai[gpu]' on a machine with a GPU)"
        )
    return whisper_micro


def test_device_caches_and_graphs_agree_with_host_caches(bundle: Path) -> None:
    spec = read_spec(bundle)
    features = front_end(spec).batch(synthetic_clips(spec, 4))
    encoder, decoder = bundle / "encoder.onnx", bundle / "decoder.onnx"
    cuda = RuntimeConfig(provider="cuda")
    rows = row_buckets(4)
    graphs = (
        RuntimeConfig(provider="cuda", cuda_graph=True, buckets=[[r, 0] for r in rows]),
        RuntimeConfig(
            provider="cuda",
            cuda_graph=True,
            buckets=[[r, s] for r in rows for s in buckets(spec.max_target_positions)],
        ),
    )
    configs = {
        "host": Seq2SeqConfig(cuda, cuda),
        "device": Seq2SeqConfig(cuda, cuda, device_cache=True),
        "graphs": Seq2SeqConfig(*graphs, device_cache=True),
    }
    cpu = BladeSeq2Seq(encoder, decoder, Seq2SeqConfig())
    answers = greedy(cpu, spec, features, 24)
    targets = np.full((4, len(spec.decoder_start) + 24), spec.eos_token_id, np.int64)
    targets[:, : len(spec.decoder_start)] = spec.decoder_start
    for row, answer in enumerate(answers):
        targets[row, len(spec.decoder_start) : len(spec.decoder_start) + len(answer)] = answer
    logits = {}
    for name, config in configs.items():
        runtime = BladeSeq2Seq(encoder, decoder, config)
        logits[name] = teacher_force(runtime, spec, features, targets, 24)
        assert greedy(runtime, spec, features, 24)[0][:8] == answers[0][:8], name
    scale = float(np.abs(logits["host"]).max())
    for name in ("device", "graphs"):  # TF32 and other kernels: close, not equal
        assert float(np.abs(logits[name] - logits["host"]).max()) < 0.01 * scale, name


def test_optimize_on_cuda_tries_device_caches_fp16_and_graphs(bundle: Path, tmp_path: Path) -> None:
    spec = read_spec(bundle)
    clips = synthetic_clips(spec, 4)
    result = optimize(
        bundle,
        device="cuda",
        test_data={f"c{i}": c for i, c in enumerate(clips)},
        output_dir=tmp_path / "out",
        batch_sizes=(1, 4),
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    names = {p["name"]: p for p in result.report["passes"]}
    assert names["decoder: device-cache"]["verdict"] == "passed"
    assert "decoder: fp16" in names
    graphed = [n for n in names if n.endswith("+cuda-graph")]
    assert graphed and names[graphed[0]]["verdict"] in ("passed", "rejected", "failed")
    assert result.report["device"] == "cuda"
