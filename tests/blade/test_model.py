"""Reading models and test data: what is detected, and every bad input's error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from blade import InvalidModel, InvalidTestData
from blade._inputs import load_test_data, synthesize
from blade._model import inspect_model
from tests.fixtures import onnx_models


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return onnx_models.tiny_bert(tmp_path_factory.mktemp("m"))


def test_bert_like_models_are_recognised(tiny_bert: Path) -> None:
    info = inspect_model(tiny_bert)
    assert info.bert_like and info.batchable
    assert (info.token_input, info.mask_input) == ("input_ids", "attention_mask")
    assert info.vocab_size == 100 and info.hidden_size == 16
    assert len(info.sha256) == 64 and info.opset == 17
    assert [t.name for t in info.outputs] == ["last_hidden_state", "sentence_embedding"]


def test_other_models_are_not_bert_like(tmp_path: Path) -> None:
    info = inspect_model(onnx_models.classifier(tmp_path))
    assert not info.bert_like and info.batchable and info.num_heads == 0
    assert not inspect_model(onnx_models.no_batch(tmp_path)).batchable


def test_bad_model_files(tmp_path: Path, tiny_bert: Path) -> None:
    cases = {
        "empty.onnx": b"",
        "random.onnx": np.random.default_rng(0).bytes(4096),
        "truncated.onnx": tiny_bert.read_bytes()[: tiny_bert.stat().st_size // 2],
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(InvalidModel):
            inspect_model(tmp_path / name)
    with pytest.raises(InvalidModel, match="cannot read"):
        inspect_model(tmp_path / "missing.onnx")
    old = onnx.load(str(tiny_bert))
    old.opset_import[0].version = 9
    onnx.save(old, str(tmp_path / "old.onnx"))
    with pytest.raises(InvalidModel, match="opset 9"):
        inspect_model(tmp_path / "old.onnx")


def test_test_data_is_checked_against_the_signature(tmp_path: Path, tiny_bert: Path) -> None:
    info = inspect_model(tiny_bert)
    ids = np.ones((4, 8), np.int64)
    good = load_test_data({"input_ids": ids, "attention_mask": ids}, info)
    assert set(good) == {"input_ids", "attention_mask"}
    np.savez(tmp_path / "x.npz", input_ids=ids, attention_mask=ids.astype(np.int32))
    assert load_test_data(tmp_path / "x.npz", info)["attention_mask"].dtype == np.int64
    bad: list[tuple[dict[str, np.ndarray], str]] = [
        ({"input_ids": ids}, "lacks inputs \\['attention_mask'\\]"),
        ({"input_ids": ids, "attention_mask": ids, "extra": ids}, "unknown inputs \\['extra'\\]"),
        ({"input_ids": ids.astype(np.float32), "attention_mask": ids}, "expects int64"),
        ({"input_ids": ids[0], "attention_mask": ids}, "has shape \\[8\\]"),
        ({"input_ids": ids, "attention_mask": ids[:2]}, "disagree on the batch size"),
        ({"input_ids": ids * 500, "attention_mask": ids}, "vocabulary has 100 rows"),
    ]
    for data, message in bad:
        with pytest.raises(InvalidTestData, match=message):
            load_test_data(data, info)
    (tmp_path / "bad.npz").write_bytes(b"not npz")
    with pytest.raises(InvalidTestData, match="cannot read"):
        load_test_data(tmp_path / "bad.npz", info)


def test_drawn_inputs_use_the_vocabulary_and_realistic_masks(tiny_bert: Path) -> None:
    info = inspect_model(tiny_bert)
    data = synthesize(info, rows=30, seq=24)
    ids, mask = data["input_ids"], data["attention_mask"]
    assert ids.shape == mask.shape == (30, 24) and ids.dtype == np.int64
    assert 0 <= ids.min() and ids.max() < info.vocab_size
    assert set(np.unique(mask)) <= {0, 1} and mask[:, 0].all()
    assert (mask.sum(axis=1) < 24).any() and (mask.sum(axis=1) == 24).any()
    assert (ids[mask == 0] == 0).all()
