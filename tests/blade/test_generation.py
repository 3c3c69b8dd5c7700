"""blade on a generation bundle, on the CPU with the micro Whisper bundle: the derived bundle and
its report, the generation gates refusing a broken decoder with its figures, serving through
eas-server, the CLI, and the refusals. The device cache's own paths are in
test_generation_cache.py; the CUDA paths in test_generation_gpu.py."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from prometheus_client import CollectorRegistry
from typer.testing import CliRunner

from autoai.cli import app as cli
from blade import InvalidModel, InvalidTestData, optimize, render_report
from blade._geneval import Reference, front_end, greedy, synthetic_clips, teacher_force
from blade._genverify import (
    GENERATION_GATES,
    agreement,
    check_generation,
    teacher_forced,
)
from blade._runtime import RuntimeConfig
from blade._seq2seq import BladeSeq2Seq, Seq2SeqConfig
from eas_server import ModelLoadError
from eas_server._build import build_app
from eas_server._settings import ServerSettings
from eas_server.generation._spec import GenerationSpec, read_spec
from eas_server.processors import create_processor

pytestmark = pytest.mark.slow

BATCHES = (1, 2)


def _clips(spec: GenerationSpec) -> dict[str, np.ndarray]:
    """Three short clips: the evaluation set of these tests (the default is 8 clips)."""
    clips = synthetic_clips(spec, 4)
    return {f"clip{i}": clips[i] for i in (0, 1, 2)}


@pytest.fixture(scope="module")
def derived(whisper_micro: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The micro bundle optimized once for the module (level o2: fusion and int8 tried)."""
    work = tmp_path_factory.mktemp("gen")
    seen: list[tuple[str, str]] = []
    result = optimize(
        whisper_micro,
        device="cpu",
        test_data=_clips(read_spec(whisper_micro)),
        output_dir=work / "micro.blade",
        batch_sizes=BATCHES,
        cache_dir=work / "blade",  # the default cache of AUTOAI_CACHE=work (the CLI test)
        progress=lambda name, status: seen.append((name, status)),
    )
    return {"result": result, "seen": seen, "work": work}


def test_optimize_writes_a_derived_bundle_judged_by_generation_gates(
    derived: dict[str, Any], whisper_micro: Path
) -> None:
    result = derived["result"]
    out: Path = result.artifact_dir
    assert {p.name for p in out.iterdir()} >= {
        "generation.json",
        "encoder.onnx",
        "decoder.onnx",
        "blade.json",
        "reference.npz",
        "report.json",
        "report.txt",
    }
    assert (out / "generation.json").read_bytes() == (
        whisper_micro / "generation.json"
    ).read_bytes()
    report = json.loads((out / "report.json").read_text())
    assert report["kind"] == "generation" and report["device"] == "cpu"
    assert report["test_data"] == "user: 3 clips"
    assert set(report["gates"]) == {"lossless", "fp16", "int8"}
    stages = {p["stage"] for p in report["passes"]}
    assert stages == {"encoder", "decoder"}
    names = [p["name"] for p in report["passes"]]
    assert "decoder: transformer-fusion" in names and "decoder: int8-dynamic" in names
    for entry in report["passes"]:
        if entry["stage"] != "decoder" or entry["verdict"] not in ("passed", "rejected"):
            continue
        figures = entry["generation"]
        assert [t["length"] for t in figures["teacher_forced"]] == [8, 16, 32]
        for t in figures["teacher_forced"]:
            assert t["predictions"] > 0 and -1.0 <= t["cosine_min"] <= 1.0 + 1e-9
        assert 0.0 <= figures["agreement"]["share"] <= 1.0
        assert len(figures["agreement"]["prefixes"]) == 3
        assert entry["gate"]["logits_cosine_min"] > 0
        if entry["verdict"] == "passed":
            assert set(entry["latency_ms"]) == {"1", "2"}
        else:  # refused with the figures that refused it
            assert any(word in entry["reason"] for word in ("cosine", "max abs", "agree"))
    plain = report["baseline"]["generation"]
    assert plain["agreement"]["share"] == 1.0  # plain on the CPU is the reference, optimized
    chosen = report["decoder"]["chosen"]
    passed = {p["name"].removeprefix("decoder: ") for p in report["passes"]
              if p["stage"] == "decoder" and p["verdict"] == "passed"}  # fmt: skip
    assert chosen == "plain" or chosen in passed
    doc = json.loads((out / "blade.json").read_text())
    assert doc["kind"] == "generation" and doc["tier"] == report["tier"]
    assert doc["runtime"] == report["runtime"]
    text = (out / "report.txt").read_text()
    assert "generation gates:" in text and "decoder step at a cache of 64 entries" in text
    assert render_report(report)  # blade's own table renders a generation report too
    assert ("decoder: transformer-fusion", "running") in derived["seen"]


def test_the_cache_returns_the_same_bundle(derived: dict[str, Any], whisper_micro: Path) -> None:
    work: Path = derived["work"]
    again = optimize(
        whisper_micro,
        device="cpu",
        test_data=_clips(read_spec(whisper_micro)),
        output_dir=work / "again.blade",
        batch_sizes=BATCHES,
        cache_dir=work / "blade",
        progress=False,
    )
    assert again.report["cache"]["hit"] is True
    first = derived["result"].artifact_dir
    assert (again.artifact_dir / "decoder.onnx").read_bytes() == (
        first / "decoder.onnx"
    ).read_bytes()


def _perturbed(bundle: Path, into: Path, scale: float) -> Path:
    """A copy of ``bundle`` whose decoder's first feed-forward weights are scaled."""
    into.mkdir()
    for item in bundle.iterdir():
        if item.is_file():
            shutil.copy(item, into / item.name)
    model = onnx.load(str(bundle / "decoder.onnx"))
    weights = [i for i in model.graph.initializer if len(i.dims) == 2 and i.dims[0] == 64]
    target = weights[len(weights) // 2]
    array = onnx.numpy_helper.to_array(target) * scale
    target.CopyFrom(onnx.numpy_helper.from_array(array.astype(np.float32), target.name))
    onnx.save(model, str(into / "decoder.onnx"))
    return into


def test_a_broken_decoder_fails_the_gates_with_its_figures(
    whisper_micro: Path, tmp_path: Path
) -> None:
    spec = read_spec(whisper_micro)
    features = front_end(spec).batch(list(_clips(spec).values()))
    cpu = RuntimeConfig(provider="cpu", graph_level="disabled")
    config = Seq2SeqConfig(cpu, cpu)
    enc = whisper_micro / "encoder.onnx"
    reference = Reference.build(
        BladeSeq2Seq(enc, whisper_micro / "decoder.onnx", config), spec, features, 32
    )
    broken = _perturbed(whisper_micro, tmp_path / "broken", 1.3)
    candidate = BladeSeq2Seq(enc, broken / "decoder.onnx", config)
    logits = teacher_force(candidate, spec, features, reference.targets, 32)
    answers = greedy(candidate, spec, features, 32)
    figures = teacher_forced(reference.logits, logits, reference.lengths)
    agree = agreement(reference.answers, answers, 8)
    passed, reason = check_generation(figures, agree, GENERATION_GATES["int8"])
    assert not passed
    assert "teacher-forced logits@8" in reason and "cosine" in reason and "max abs" in reason
    # the same runtime on the unbroken decoder passes the strictest gate
    same = BladeSeq2Seq(enc, whisper_micro / "decoder.onnx", config)
    logits = teacher_force(same, spec, features, reference.targets, 32)
    again = teacher_forced(reference.logits, logits, reference.lengths)
    exact = agreement(reference.answers, greedy(same, spec, features, 32), 8)
    assert check_generation(again, exact, GENERATION_GATES["lossless"]) == (True, "passed")


def test_a_failing_candidate_is_refused_and_the_plain_decoder_kept(
    whisper_micro: Path, tmp_path: Path
) -> None:
    result = optimize(
        whisper_micro,
        device="cpu",
        test_data=_clips(read_spec(whisper_micro)),
        output_dir=tmp_path / "out",
        level="o1",
        tolerance={"agree_share": 1.01},  # no answer can agree more than always
        batch_sizes=(1,),
        cache_dir=tmp_path / "cache",
        progress=False,
    )
    report = result.report
    decoder = [p for p in report["passes"] if p["stage"] == "decoder"]
    assert all(p["verdict"] in ("rejected", "failed", "skipped") for p in decoder)
    assert any(p["verdict"] == "rejected" for p in decoder)
    assert any("greedy agreement: 100% of clips" in p["reason"] for p in decoder)
    assert (
        report["decoder"]["chosen"] == "plain" and "no decoder candidate passed" in report["reason"]
    )
    out = result.artifact_dir
    assert (out / "decoder.onnx").read_bytes() == (whisper_micro / "decoder.onnx").read_bytes()
    assert json.loads((out / "blade.json").read_text())["runtime"]["device_cache"] is False


def _serve(bundle: Path, processor: str, clips: list[np.ndarray]) -> list[list[int]]:
    """Greedy answers of ``bundle`` through eas-server's HTTP app, in process."""
    settings = ServerSettings(model=str(bundle), name="w", processor=processor, intra_op_threads=1)
    served = create_processor(processor, str(bundle), intra_op_threads=1)
    served.load()
    app = build_app(settings, served, CollectorRegistry())
    app.ready = True

    async def main() -> list[list[int]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://w") as client:
            answers = []
            for clip in clips:
                body = {"audio": clip.tolist(), "parameters": {"max_new_tokens": 16}}
                response = await client.post("/v2/models/w/generate", json=body)
                assert response.status_code == 200, response.text
                answers.append(response.json()["tokens"])
            return answers

    try:
        return asyncio.run(main())
    finally:
        served.close()


def test_the_derived_bundle_serves_through_eas_server(
    derived: dict[str, Any], whisper_micro: Path
) -> None:
    out: Path = derived["result"].artifact_dir
    clips = list(_clips(read_spec(whisper_micro)).values())
    plain = _serve(whisper_micro, "seq2seq", clips)
    blade = _serve(out, "blade", clips)
    report = derived["result"].report
    if report["tier"] == "lossless":
        assert blade == plain  # a lossless bundle answers as the plain one does
    else:  # int8 may flip near-tied tokens: held to the agreement its gate allowed
        gate = report["gates"][report["tier"]]
        agree = agreement([[*a, -1] for a in plain], [[*a, -1] for a in blade], 8)
        assert agree.share >= gate["agree_share_min"]
    processor = create_processor("blade", str(out))
    assert type(processor).__name__ == "BladeSeq2SeqProcessor" and processor.kind == "blade"


def test_a_tampered_derived_bundle_does_not_load(
    derived: dict[str, Any], whisper_micro: Path, tmp_path: Path
) -> None:
    out: Path = derived["result"].artifact_dir
    tampered = tmp_path / "tampered"
    shutil.copytree(out, tampered)
    broken = _perturbed(whisper_micro, tmp_path / "broken", 1.3)
    shutil.copy(broken / "decoder.onnx", tampered / "decoder.onnx")
    processor = create_processor("blade", str(tampered), intra_op_threads=1)
    with pytest.raises(ModelLoadError, match="failed its start-up verification"):
        processor.load()


def test_the_cli_optimizes_a_generation_bundle(
    derived: dict[str, Any], whisper_micro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clips = tmp_path / "clips.npz"
    np.savez(clips, **_clips(read_spec(whisper_micro)))  # type: ignore[arg-type]
    monkeypatch.setenv("AUTOAI_CACHE", str(derived["work"]))  # the fixture's run: a cache hit
    args = ["blade", "optimize", str(whisper_micro), "--test-data", str(clips),
            "--batch-sizes", "1,2", "--out", str(tmp_path / "cli.blade")]  # fmt: skip
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["kind"] == "generation" and report["cache"]["hit"] is True
    table = CliRunner().invoke(cli, args)  # the table: one row per pass of both stages
    assert table.exit_code == 0, table.output
    assert "blade report" in table.output and "cache: hit" in table.output


def test_refusals(derived: dict[str, Any], whisper_micro: Path, tmp_path: Path) -> None:
    out: Path = derived["result"].artifact_dir
    with pytest.raises(InvalidModel, match="already optimized"):
        optimize(out, progress=False, cache_dir=tmp_path)
    with pytest.raises(InvalidTestData, match="audio clips"):
        optimize(whisper_micro, eval_set=tmp_path / "x.jsonl", progress=False)
    with pytest.raises(InvalidTestData, match=r"clip 'pcm'.*dtype int16"):
        optimize(whisper_micro, test_data={"pcm": np.zeros(100, np.int16)}, progress=False)
    with pytest.raises(ValueError, match="'rel_l2' does not apply to a generation bundle"):
        optimize(whisper_micro, tolerance={"rel_l2": 0.1}, progress=False)
    with pytest.raises(ValueError, match="write inside it"):
        optimize(whisper_micro, output_dir=whisper_micro / "x", progress=False)
