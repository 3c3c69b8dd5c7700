"""optimize() end to end on small models, on the CPU: artifact, report, cache, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from blade import InvalidModel, InvalidTestData, load_artifact, optimize
from blade._runtime import BladeRuntime, RuntimeConfig
from tests.fixtures import onnx_models


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("m")
    return {
        "bert": onnx_models.tiny_bert(d, hidden=64, layers=2),
        "identity": onnx_models.identity(d),
        "classifier": onnx_models.classifier(d),
    }


def test_artifact_and_report(models: dict[str, Path], tmp_path: Path) -> None:
    seen: list[tuple[str, str]] = []
    result = optimize(
        models["bert"],
        output_dir=tmp_path / "art",
        batch_sizes=(1, 4),
        seq=16,
        cache_dir=tmp_path / "cache",
        progress=lambda name, status: seen.append((name, status)),
    )
    art = result.artifact_dir
    assert {p.name for p in art.iterdir()} == {
        "model.onnx",
        "blade.json",
        "reference.npz",
        "report.json",
        "report.txt",
    }
    report = json.loads((art / "report.json").read_text())
    assert report == json.loads(json.dumps(result.report, default=float))
    names = [p["name"] for p in report["passes"]]
    assert names[:2] == ["ort-graph", "transformer-fusion"] and "int8-dynamic" in names
    for entry in report["passes"]:
        assert entry["verdict"] in ("passed", "rejected", "failed", "skipped")
        if entry["verdict"] in ("passed", "rejected"):
            assert set(entry["metrics"]) == {"last_hidden_state", "sentence_embedding"}
            assert entry["gate"] and entry["reason"]
        if entry["verdict"] == "passed":
            assert set(entry["latency_ms"]) == {"1", "4"}
    assert report["test_data"].startswith("synthetic")
    assert report["tensorrt"] == "not installed"
    assert report["hardware_key"].startswith("cpu-")
    assert ("ort-graph", "passed") in seen
    chosen = report["chosen"]
    if chosen != "plain":
        entry = next(p for p in report["passes"] if p["name"] == chosen)
        assert entry["verdict"] == "passed" and result.speedup == pytest.approx(
            entry["speedup"]["4"]
        )
    # the artifact runs, and agrees with the reference it carries
    artifact = load_artifact(art)
    inputs, outputs = artifact.reference()
    got = artifact.masked(inputs, BladeRuntime(artifact.model_path, artifact.runtime).run(inputs))
    for name, want in outputs.items():
        np.testing.assert_allclose(got[name], want, rtol=0.1, atol=0.1)
    assert "chosen:" in (art / "report.txt").read_text()


def test_a_second_run_is_a_cache_hit(models: dict[str, Path], tmp_path: Path) -> None:
    kwargs = {"batch_sizes": (1, 2), "seq": 8, "cache_dir": tmp_path / "cache", "progress": False}
    first = optimize(models["classifier"], output_dir=tmp_path / "a", **kwargs)  # type: ignore[arg-type]
    assert first.report["cache"]["hit"] is False
    second = optimize(models["classifier"], output_dir=tmp_path / "b", **kwargs)  # type: ignore[arg-type]
    assert second.report["cache"]["hit"] is True
    assert second.report["chosen"] == first.report["chosen"]
    assert (tmp_path / "b" / "model.onnx").read_bytes() == (
        tmp_path / "a" / "model.onnx"
    ).read_bytes()
    third = optimize(models["classifier"], output_dir=tmp_path / "c", level="o1", **kwargs)  # type: ignore[arg-type]
    assert third.report["cache"]["hit"] is False  # other settings, other key


def test_a_model_without_weights_gets_no_lossy_pass(
    models: dict[str, Path], tmp_path: Path
) -> None:
    result = optimize(
        models["identity"],
        output_dir=tmp_path / "art",
        batch_sizes=(1,),
        cache_dir=tmp_path / "c",
        progress=False,
    )
    passes = {p["name"]: p for p in result.report["passes"]}
    assert passes["transformer-fusion"]["verdict"] == "skipped"
    assert (
        passes["int8-dynamic"]["verdict"] == "skipped"
        and "constant weights" in passes["int8-dynamic"]["reason"]
    )
    assert result.report["chosen"] in ("plain", "ort-graph")


def test_plain_is_kept_unless_a_candidate_beats_it_by_five_percent() -> None:
    from types import SimpleNamespace

    from blade._optimize import _choose
    from blade._passes import Candidate
    from blade._runtime import RuntimeConfig

    def cand(name: str) -> Candidate:
        return Candidate(name, "lossless", Path(name), RuntimeConfig())

    plain = {1: 10.0, 32: 100.0}
    slightly = (cand("slightly"), {1: 9.8, 32: 98.0})
    faster = (cand("faster"), {1: 5.0, 32: 60.0})
    s = SimpleNamespace(plain_latency=plain, passing=[slightly])
    chosen, gain, why = _choose(s)  # type: ignore[arg-type]
    assert chosen is None and gain == 1.0 and "beat plain by 5%" in why
    s.passing = [slightly, faster]
    chosen, gain, _ = _choose(s)  # type: ignore[arg-type]
    assert (
        chosen is not None
        and chosen.name == "faster"
        and gain == pytest.approx((2 * 100 / 60) ** 0.5)
    )
    s.passing = []
    assert "no candidate passed" in _choose(s)[2]  # type: ignore[arg-type]


def _strict(models: dict[str, Path], tmp_path: Path) -> list[dict[str, object]]:
    result = optimize(
        models["bert"],
        output_dir=tmp_path / "art",
        batch_sizes=(1,),
        seq=8,
        tolerance={"cosine": 0.9999999},
        cache_dir=tmp_path / "c",
        progress=False,
    )
    assert result.report["chosen"] != "int8-dynamic"
    return [p for p in result.report["passes"] if str(p["name"]).startswith("int8")]


def test_a_strict_tolerance_rejects_int8(models: dict[str, Path], tmp_path: Path) -> None:
    int8 = _strict(models, tmp_path)
    assert int8[0]["verdict"] == "rejected" and "cosine" in str(int8[0]["reason"])
    assert "latency_ms" in int8[0]  # timed, to decide whether recovery is worth it
    follow = int8[1]
    assert "kept fp32" in str(follow["name"]) or (
        follow["verdict"] == "skipped" and "no speed to recover" in str(follow["reason"])
    )


def test_precision_recovery_keeps_the_worst_nodes_in_fp32(
    models: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import blade._optimize

    monkeypatch.setattr(blade._optimize, "_MIN_GAIN", 1e-9)  # pretend int8 is always faster
    int8 = _strict(models, tmp_path)
    retries = [p for p in int8 if "kept fp32" in str(p["name"])]
    assert 1 <= len(retries) <= 5
    kept = [len(p["notes"]["kept_fp32"]) for p in retries]  # type: ignore[index]
    assert kept == sorted(kept) and kept[0] == 1


def test_bad_input_writes_nothing(models: dict[str, Path], tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.onnx"
    bogus.write_bytes(b"\x00\x01 not onnx")
    with pytest.raises(InvalidModel):
        optimize(bogus, output_dir=tmp_path / "out", progress=False)
    with pytest.raises(InvalidTestData, match="lacks inputs"):
        optimize(
            models["bert"],
            test_data={"input_ids": np.ones((2, 4), np.int64)},
            output_dir=tmp_path / "out",
            progress=False,
        )
    with pytest.raises(ValueError, match="device"):
        optimize(models["bert"], device="tpu", output_dir=tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_bucketed_runs_pad_and_cut_back_like_a_plain_run(models: dict[str, Path]) -> None:
    """The CUDA-graph bucket logic (bind fixed buffers, pad to the bucket, cut outputs back),
    exercised on the CPU with the same code minus the graph capture."""
    from blade._runtime import RuntimeConfig, _GraphSession

    config = RuntimeConfig(
        pad_inputs={"input_ids": [1, 0], "attention_mask": [1, 0]},
        pad_outputs={"last_hidden_state": 1},
    )
    runtime = BladeRuntime(models["bert"], config)
    bucket = _GraphSession(runtime, batch=4, seq=16, device="cpu")
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, size=(3, 10), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    feed = {"input_ids": ids, "attention_mask": mask}
    plain = runtime.run(feed)
    got = bucket.run(feed)
    assert got["last_hidden_state"].shape == (3, 10, 64) and got["sentence_embedding"].shape == (
        3,
        64,
    )
    np.testing.assert_allclose(
        got["sentence_embedding"], plain["sentence_embedding"], rtol=1e-4, atol=1e-5
    )
    real = mask.astype(bool)
    np.testing.assert_allclose(
        got["last_hidden_state"][real], plain["last_hidden_state"][real], rtol=1e-4, atol=1e-5
    )


def test_trimming_trailing_padding_changes_nothing_on_real_positions(
    models: dict[str, Path],
) -> None:
    pads = {
        "pad_inputs": {"input_ids": [1, 0], "attention_mask": [1, 0]},
        "pad_outputs": {"last_hidden_state": 1},
    }
    plain = BladeRuntime(models["bert"], RuntimeConfig(**pads))  # type: ignore[arg-type]
    trimmed = BladeRuntime(models["bert"], RuntimeConfig(trim_mask="attention_mask", **pads))  # type: ignore[arg-type]
    ids = np.random.default_rng(1).integers(1, 100, size=(2, 32), dtype=np.int64)
    mask = np.zeros_like(ids)
    mask[0, :5] = mask[1, :9] = 1
    ids[mask == 0] = 0
    a, b = (
        plain.run({"input_ids": ids, "attention_mask": mask}),
        trimmed.run({"input_ids": ids, "attention_mask": mask}),
    )
    assert b["last_hidden_state"].shape == a["last_hidden_state"].shape == (2, 32, 64)
    np.testing.assert_allclose(
        b["sentence_embedding"], a["sentence_embedding"], rtol=1e-4, atol=1e-5
    )
    real = mask.astype(bool)
    np.testing.assert_allclose(
        b["last_hidden_state"][real], a["last_hidden_state"][real], rtol=1e-4, atol=1e-5
    )
    assert (b["last_hidden_state"][:, 9:] == 0).all()  # past the longest row: cut, padded back
