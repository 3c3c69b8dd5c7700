"""ModelRepository on a real embedded store and real ONNX files."""

from __future__ import annotations

import subprocess
import threading
from pathlib import Path

import pytest

from autoai.errors import Conflict, InsufficientStorage, InvalidRequest, NotFound, Unavailable
from autoai.repository import ModelRepository, validate_name
from config_store import open_store
from tests.fixtures import disks, onnx_models


@pytest.fixture
def repo(tmp_path: Path) -> ModelRepository:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", snapshot_dir=False)
    return ModelRepository(tmp_path / "repo", store)


def test_versions_are_numbered_and_files_stored_by_content(
    repo: ModelRepository, tmp_path: Path
) -> None:
    model = onnx_models.classifier(tmp_path)
    first = repo.register("intent-cls", model)
    second = repo.register("intent-cls", model.read_bytes(), source="upload.onnx")
    assert (first.version, second.version) == ("1", "2")
    assert first.sha256 == second.sha256 and first.path == second.path
    assert Path(first.path).read_bytes() == model.read_bytes()
    assert first.signature.model_dump(mode="json") == {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 8]}],
        "outputs": [
            {"name": "logits", "datatype": "FP32", "shape": [-1, 3]},
            {"name": "probs", "datatype": "FP32", "shape": [-1, 3]},
        ],
    }
    assert [m.name for m in repo.models()] == ["intent-cls"]
    assert repo.version("intent-cls", "2").source == "upload.onnx"


def test_numbers_are_never_reused_after_a_delete(repo: ModelRepository, tmp_path: Path) -> None:
    model = onnx_models.identity(tmp_path)
    for _ in range(2):
        repo.register("m", model)
    repo.delete("m", "2")
    repo.delete("m", "1")
    assert repo.model("m").versions == ()
    assert repo.register("m", model).version == "3"


def test_concurrent_registrations_get_distinct_versions(
    repo: ModelRepository, tmp_path: Path
) -> None:
    model = onnx_models.identity(tmp_path).read_bytes()
    got: list[str] = []
    threads = [
        threading.Thread(target=lambda: got.append(repo.register("m", model).version))
        for _ in range(6)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got, key=int) == [str(i) for i in range(1, 7)]


def test_deployed_versions_cannot_be_deleted(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", snapshot_dir=False)
    repo = ModelRepository(tmp_path / "repo", store, is_deployed=lambda n, v: v == "1")
    model = onnx_models.identity(tmp_path)
    repo.register("m", model)
    with pytest.raises(Conflict, match="is deployed: undeploy it first"):
        repo.delete("m", "1")
    assert [v.version for v in repo.model("m").versions] == ["1"]


@pytest.mark.parametrize("name", ["", "UPPER", "-x", "x-", "a/b", "a..b", "x" * 64, 7])
def test_bad_names_are_refused(name: object) -> None:
    with pytest.raises(InvalidRequest, match="expected 1-63 characters"):
        validate_name(name)


def test_bad_files_and_uris_are_refused_and_nothing_is_recorded(
    repo: ModelRepository, tmp_path: Path
) -> None:
    with pytest.raises(InvalidRequest, match="empty"):
        repo.register("m", b"")
    with pytest.raises(
        InvalidRequest, match=r"^the uploaded file is not an ONNX model .* it is text"
    ):
        repo.register("m", b"this is not a protobuf")
    with pytest.raises(InvalidRequest, match=r"^notes\.txt is not an ONNX model"):
        repo.register("m", b"this is not a protobuf", source="notes.txt")
    with pytest.raises(InvalidRequest, match="unsupported URI scheme 's3'"):
        repo.read_uri("s3://bucket/model.onnx")
    with pytest.raises(InvalidRequest, match="cannot read"):
        repo.read_uri(f"file://{tmp_path}/missing.onnx")
    with pytest.raises(NotFound, match="'m' is not registered"):
        repo.model("m")


def test_unknown_versions_list_what_exists(repo: ModelRepository, tmp_path: Path) -> None:
    repo.register("m", onnx_models.identity(tmp_path))
    with pytest.raises(NotFound, match=r"has no version '9'; versions: \['1'\]"):
        repo.version("m", "9")


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_a_full_disk_is_insufficient_storage_and_leaves_nothing(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", snapshot_dir=False)
    small = onnx_models.identity(tmp_path)
    big = onnx_models.tiny_bert(tmp_path / "big", hidden=64, layers=2)  # about 460 KB
    with disks.tmpfs(tmp_path / "repo", 4 << 20) as root:
        repo = ModelRepository(root, store)
        assert repo.register("m", small).version == "1"
        filler = disks.fill(root, leave=128 << 10)
        before = _files(root)
        with pytest.raises(InsufficientStorage, match="no room") as caught:
            repo.register("m", big)
        assert caught.value.detail["errno"] == "ENOSPC"
        assert _files(root) == before  # no temporary file, no blob
        assert [v.version for v in repo.model("m").versions] == ["1"]
        filler.unlink()
        assert repo.register("m", big).version == "2"  # the number was not used up


def test_a_repository_that_cannot_be_written_is_unavailable(tmp_path: Path) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'store.db'}", snapshot_dir=False)
    model = onnx_models.identity(tmp_path)
    with disks.tmpfs(tmp_path / "repo", 1 << 20) as root:
        repo = ModelRepository(root, store)
        subprocess.run(["mount", "-o", "remount,ro", str(root)], check=True)
        with pytest.raises(Unavailable, match="cannot store") as caught:
            repo.register("m", model)
        assert caught.value.detail["errno"] == "EROFS"
        with pytest.raises(NotFound):
            repo.model("m")
