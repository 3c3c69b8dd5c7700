"""Bundles in the model repository and through the models API: registered from a directory, an
archive (tar.gz, tar, zip; files at the top level or in one folder), several uploaded parts or a
URI; stored once by content; refused with a clear 400 when eas-server could not load them or when
an archive could reach outside the bundle; deleted with their last version."""

from __future__ import annotations

import io
import tarfile
import zipfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest

from autoai.api import ControlSettings
from autoai.errors import InvalidRequest, PayloadTooLarge
from autoai.repository import BundleLimits, ModelRepository
from config_store import open_store
from tests.eas_server.bundles import CLASSIFY_LABELS, SLOT_LABELS, make_bundle
from tests.fixtures import onnx_models
from tests.fixtures.system import control_api

TOKEN = "bundle-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FILES = ("labels.txt", "model.onnx", "pipeline.json", "tokenizer.json")


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[ModelRepository]:
    with open_store(f"sqlite:///{tmp_path / 'store.db'}", snapshot_dir=False) as store:
        yield ModelRepository(tmp_path / "repo", store)


def _tar(
    bundle: Path, path: Path, folder: str | None = "bundle", mode: Literal["w:gz", "w"] = "w:gz"
) -> Path:
    with tarfile.open(path, mode) as tar:
        for file in sorted(bundle.iterdir()):
            tar.add(file, arcname=f"{folder}/{file.name}" if folder else file.name)
    return path


def _dot_tar(bundle: Path, path: Path) -> Path:
    """As ``tar -C BUNDLE -czf PATH .`` writes it: a ``.`` entry, then ``./name`` entries."""
    with tarfile.open(path, "w:gz") as tar:
        tar.add(bundle, arcname=".")
    with tarfile.open(path) as tar:
        assert tar.getnames()[:2] == [".", "./labels.txt"]
    return path


def _zip(bundle: Path, path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for file in sorted(bundle.iterdir()):
            archive.write(file, file.name)
    return path


def _stored(repo: ModelRepository) -> list[Path]:
    return sorted((repo.root / "bundles" / "sha256").glob("*/*"))


def _staging_is_empty(repo: ModelRepository) -> bool:
    staging = repo.root / "bundles" / "staging"
    return not staging.exists() or not any(staging.iterdir())


def test_a_bundle_directory_is_registered_with_its_external_signature(
    repo: ModelRepository, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, "classify")
    version = repo.register("intent", bundle)
    assert version.bundle is not None
    assert (version.bundle.task, version.bundle.inputs) == ("classify", ("text",))
    assert version.bundle.labels == CLASSIFY_LABELS
    assert sorted(version.bundle.files) == list(FILES)
    assert version.signature.model_dump(mode="json") == {
        "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
        ],
    }
    inner = version.bundle.model_signature
    assert [(t.name, t.datatype, t.shape) for t in inner.outputs] == [("logits", "FP32", (-1, 3))]
    stored = Path(version.path)
    assert stored == repo.root / "bundles" / "sha256" / version.sha256[:2] / version.sha256
    assert sorted(p.name for p in stored.iterdir()) == list(FILES)
    assert version.size == sum(p.stat().st_size for p in bundle.iterdir())
    assert repo.version("intent", "1") == version  # the record round-trips through the store
    assert _staging_is_empty(repo)


def test_archives_parts_and_directories_of_one_bundle_are_stored_once(
    repo: ModelRepository, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, "slots")
    parts = {
        "model": ("m.onnx", (bundle / "model.onnx").read_bytes()),
        "tokenizer": ("tok.json", (bundle / "tokenizer.json").read_bytes()),
        "labels": ("tags.txt", (bundle / "labels.txt").read_bytes()),
        "pipeline": ("spec.json", (bundle / "pipeline.json").read_bytes()),
    }
    versions = [
        repo.register("slots", bundle),
        repo.register("slots", _tar(bundle, tmp_path / "in-folder.tar.gz")),
        repo.register("slots", _tar(bundle, tmp_path / "flat.tgz", folder=None)),
        repo.register("slots", _tar(bundle, tmp_path / "plain.tar", mode="w")),
        repo.register("slots", _dot_tar(bundle, tmp_path / "dot.tgz")),
        repo.register("slots", _zip(bundle, tmp_path / "b.zip").read_bytes(), source="b.zip"),
        repo.register_parts("slots", parts),
    ]
    assert [v.version for v in versions] == ["1", "2", "3", "4", "5", "6", "7"]
    assert {v.sha256 for v in versions} == {versions[0].sha256}
    assert {v.path for v in versions} == {versions[0].path}
    assert _stored(repo) == [Path(versions[0].path)]
    assert versions[-1].bundle is not None and versions[-1].bundle.labels == SLOT_LABELS
    assert versions[-1].source == "upload: m.onnx, tok.json, tags.txt, spec.json"
    assert _staging_is_empty(repo)


def test_a_version_s_bundle_goes_with_the_last_version_that_shares_it(
    repo: ModelRepository, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, "score", inputs=("query", "answer"), token_type_ids=True)
    first, second = repo.register("qa", bundle), repo.register("qa", bundle)
    repo.delete("qa", first.version)
    assert Path(second.path).is_dir()
    repo.delete("qa", second.version)
    assert not Path(second.path).exists() and _stored(repo) == []


def _bad(tmp_path: Path, name: str, **kwargs: Any) -> Path:
    return make_bundle(tmp_path, name=name, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"omit": ("tokenizer.json",)}, "the bundle has no tokenizer: tokenizer.json does not"),
        ({"head_width": 4}, "labels.txt lists 3 labels but the head 'logits' has 4"),
        ({"omit": ("labels.txt",)}, "task 'classify' needs a label list: labels.txt does not"),
        ({"omit": ("model.onnx",)}, "the bundle has no model: model.onnx does not exist"),
        ({"spec": {"task": "translate"}}, "pipeline.json is not a valid pipeline spec: task"),
        ({"spec": {"task": "classify", "top_k": 0}}, "pipeline.json is not a valid pipeline"),
    ],
)
def test_bundles_eas_server_could_not_load_are_refused(
    repo: ModelRepository, tmp_path: Path, kwargs: dict[str, Any], message: str
) -> None:
    bundle = _bad(tmp_path, "bad", **kwargs)
    archive = _tar(bundle, tmp_path / "bad.tar.gz")
    for given in (bundle, archive):
        with pytest.raises(InvalidRequest, match="is not a valid bundle") as refused:
            repo.register("intent", given)
        assert message in str(refused.value)
        assert str(repo.root) not in str(refused.value)  # the user's names, not the staging's
    assert repo.models() == [] and _stored(repo) == [] and _staging_is_empty(repo)


def _member(tar: tarfile.TarFile, name: str, data: bytes = b"x", kind: bytes = b"0") -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.SYMTYPE:
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def _hostile(tmp_path: Path, name: str, kind: bytes = tarfile.REGTYPE) -> bytes:
    bundle = make_bundle(tmp_path, name="ok-" + name.replace("/", "_").strip("._"))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for file in sorted(bundle.iterdir()):
            tar.add(file, arcname=file.name)
        _member(tar, name, kind=kind)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("name", "kind", "message"),
    [
        ("/etc/cron.d/evil", tarfile.REGTYPE, "entries must be relative paths without '..'"),
        ("../evil", tarfile.REGTYPE, "entries must be relative paths without '..'"),
        ("a/../../evil", tarfile.REGTYPE, "entries must be relative paths without '..'"),
        ("link.txt", tarfile.SYMTYPE, "'link.txt', a link: bundles take regular files only"),
        ("fifo", tarfile.FIFOTYPE, "'fifo', not a regular file"),
    ],
)
def test_archives_that_reach_outside_the_bundle_are_refused(
    repo: ModelRepository, tmp_path: Path, name: str, kind: bytes, message: str
) -> None:
    data = _hostile(tmp_path, name, kind)
    with pytest.raises(InvalidRequest, match="holds") as refused:
        repo.register("intent", data, source="evil.tar.gz")
    assert message in str(refused.value)
    assert not (tmp_path / "evil").exists() and repo.models() == [] and _staging_is_empty(repo)


def test_links_in_a_bundle_directory_are_refused(repo: ModelRepository, tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "classify")
    (bundle / "secret").symlink_to("/etc/passwd")
    with pytest.raises(InvalidRequest, match="secret is a link: bundles take regular files"):
        repo.register("intent", bundle)
    assert repo.models() == [] and _staging_is_empty(repo)


def test_bundles_over_the_limits_are_refused(tmp_path: Path) -> None:
    bundle = make_bundle(tmp_path, "classify")
    size = sum(p.stat().st_size for p in bundle.iterdir())
    largest = max(p.stat().st_size for p in bundle.iterdir())
    archive = _tar(bundle, tmp_path / "b.tar.gz")
    with open_store(f"sqlite:///{tmp_path / 'store.db'}", snapshot_dir=False) as store:
        for limits, message in (
            (BundleLimits(max_bytes=size - 1), f"larger than {size - 1} bytes (all files"),
            (BundleLimits(max_files=3), "holds more than 3 files"),
            (BundleLimits(max_file_bytes=largest - 1), f"larger than {largest - 1} bytes"),
        ):
            repo = ModelRepository(tmp_path / "repo", store, bundle_limits=limits)
            for given in (bundle, archive):
                with pytest.raises(PayloadTooLarge, match=r"larger|more than") as refused:
                    repo.register("intent", given)
                assert message in str(refused.value)
            assert repo.models() == [] and _staging_is_empty(repo)


def test_what_is_not_a_bundle_says_what_a_bundle_holds(
    repo: ModelRepository, tmp_path: Path
) -> None:
    two = tmp_path / "two"
    for name in ("a", "b"):
        make_bundle(two, name=name)
    with pytest.raises(InvalidRequest, match=r"no pipeline\.json at its top level"):
        repo.register("intent", _tar(two, tmp_path / "two.tar.gz", folder=None))
    with pytest.raises(InvalidRequest, match="not a readable zip archive"):
        repo.register("intent", b"not a zip at all", source="bundle.zip")
    with pytest.raises(InvalidRequest, match="not a readable tar archive"):
        repo.register("intent", b"\x1f\x8b\x08garbage", source="upload")
    assert repo.models() == [] and _staging_is_empty(repo)


# -- the API ------------------------------------------------------------------------------------


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = ControlSettings(
        store_url=f"sqlite:///{tmp_path / 'store.db'}",
        repo_dir=tmp_path / "repo",
        run_dir=tmp_path / "run",
        admin_token=TOKEN,
    )
    async with control_api(settings) as c:
        yield c


async def _post(client: httpx.AsyncClient, code: int = 201, **kwargs: Any) -> dict[str, Any]:
    answer = await client.post("/api/v1/models", headers=AUTH, **kwargs)
    assert answer.status_code == code, answer.text
    body: dict[str, Any] = answer.json()
    return body


@pytest.mark.anyio
async def test_the_api_registers_bundles_every_way(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    bundle = make_bundle(tmp_path, "classify", top_k=2)
    archive = _tar(bundle, tmp_path / "intent.tar.gz")
    name = {"name": "intent"}
    parts = {p: (f, (bundle / f).read_bytes()) for p, f in zip(
        ("labels", "model", "pipeline", "tokenizer"), FILES, strict=True
    )}  # fmt: skip
    answers = [
        await _post(client, data=name, files={"file": ("intent.tar.gz", archive.read_bytes())}),
        await _post(client, data=name, files=parts),
        await _post(client, json={**name, "uri": f"file://{bundle}"}),
        await _post(client, json={**name, "uri": f"file://{archive}"}),
    ]
    assert {a["sha256"] for a in answers} == {answers[0]["sha256"]}
    assert [a["source"] for a in answers] == [
        "intent.tar.gz",
        "upload: model.onnx, tokenizer.json, labels.txt, pipeline.json",  # the parts' order
        f"file://{bundle}",
        f"file://{archive}",
    ]
    shown = (await client.get("/api/v1/models/intent/versions/2")).json()
    assert shown["bundle"]["task"] == "classify"
    assert shown["bundle"]["labels"] == list(CLASSIFY_LABELS)
    assert [t["name"] for t in shown["signature"]["outputs"]] == [
        "label",
        "score",
        "labels",
        "scores",
    ]
    assert shown["signature"]["outputs"][2] == {
        "name": "labels",
        "datatype": "BYTES",
        "shape": [-1, 2],
    }
    plain = onnx_models.identity(tmp_path)  # a plain ONNX model is registered as before
    one = await _post(client, json={"name": "plain", "uri": f"file://{plain}"})
    assert one["bundle"] is None and one["path"].endswith(".onnx")


@pytest.mark.anyio
async def test_the_api_answers_bad_bundles_with_a_clear_400(
    client: httpx.AsyncClient, tmp_path: Path
) -> None:
    no_tokenizer = make_bundle(tmp_path, name="nt", omit=("tokenizer.json",))
    wide = make_bundle(tmp_path, name="wide", head_width=5)
    spec = make_bundle(tmp_path, name="spec", spec={"task": "classify", "max_length": "long"})
    good = make_bundle(tmp_path, name="good")
    name = {"name": "intent"}
    model = {"model": ("model.onnx", (good / "model.onnx").read_bytes())}
    upload = {**model, "tokenizer": ("t.json", (good / "tokenizer.json").read_bytes())}
    cases: list[tuple[dict[str, Any], int, str]] = [
        (
            {"json": {**name, "uri": f"file://{no_tokenizer}"}},
            400,
            f"file://{no_tokenizer} is not a valid bundle: the bundle has no tokenizer",
        ),
        (
            {
                "data": name,
                "files": {"file": ("w.zip", _zip(wide, tmp_path / "w.zip").read_bytes())},
            },
            400,
            "w.zip is not a valid bundle: the label list does not match the model: labels.txt "
            "lists 3 labels but the head 'logits' has 5",
        ),
        (
            {
                "data": name,
                "files": {"file": ("s.tgz", _tar(spec, tmp_path / "s.tgz").read_bytes())},
            },
            400,
            "pipeline.json is not a valid pipeline spec: max_length",
        ),
        (
            {"data": name, "files": {**upload, "pipeline": ("p.json", b'{"task": "x"}')}},
            400,
            "the pipeline part (p.json) is not a valid pipeline.json: task",
        ),
        (
            {"data": name, "files": {**model, "pipeline": ("p.json", b'{"task": "classify"}')}},
            400,
            "missing: ['tokenizer']",
        ),
        (
            {"data": name, "files": {**upload, "file": ("m.onnx", b"x")}},
            400,
            "give 'file' or the bundle's parts, not both",
        ),
    ]
    for request, code, message in cases:
        answer = await _post(client, code, **request)
        assert message in answer["error"], (message, answer)
    assert (await client.get("/api/v1/models")).json()["models"] == []
