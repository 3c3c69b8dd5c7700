"""The model repository on disk (Triton's layout) and a load's service JSON, read without a
server: which version and file a name resolves to, which processor serves it, what settings its
JSON gives, and the one-line error for every way a model cannot be found or described."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoai.testing import models
from eas_server.repository import LayoutError, ModelSource, list_models, resolve


def _onnx(root: Path, name: str, version: str, tag: float = 0.0) -> Path:
    """``root/name/version/model.onnx``: a real ONNX file (y = x + tag)."""
    directory = root / name / version
    directory.mkdir(parents=True)
    return models.tagged(directory, tag).rename(directory / "model.onnx")


def _blade(root: Path, name: str, version: str) -> Path:
    """``root/name/version/`` as a blade artifact directory (what the layout looks for): its
    ``blade.json`` beside the ``model.onnx`` that a real artifact holds too."""
    directory = root / name / version
    directory.mkdir(parents=True)
    (directory / "blade.json").write_text("{}")
    models.tagged(directory, 0.0).rename(directory / "model.onnx")
    return directory


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """alpha 1, 2, 10 (numbers sort by value), beta 1 (blade), empty (no version), a file and a
    hidden directory (neither is a model)."""
    root = tmp_path / "repo"
    for version in ("1", "2", "10"):
        _onnx(root, "alpha", version, float(version))
    _blade(root, "beta", "1")
    (root / "empty").mkdir()
    (root / "README.md").write_text("not a model")
    (root / ".cache" / "1").mkdir(parents=True)
    return root


def test_list_models_names_every_model_with_its_versions_oldest_first(repo: Path) -> None:
    (repo / "alpha" / "canary").mkdir()  # a named version sorts before the numbers
    (repo / "alpha" / "notes.txt").write_text("a file is no version")
    assert list_models(repo) == {
        "alpha": ["canary", "1", "2", "10"],
        "beta": ["1"],
        "empty": [],
    }
    assert list_models(repo / "missing") == {}


def test_resolve_takes_the_highest_version_and_its_processor_from_the_files(repo: Path) -> None:
    alpha = resolve(repo, "alpha")
    assert alpha == ModelSource("alpha", "10", repo / "alpha" / "10" / "model.onnx", "onnx", {})
    assert resolve(repo, "alpha", json.dumps({"version": 2})).path == (
        repo / "alpha" / "2" / "model.onnx"
    )
    beta = resolve(repo, "beta")
    assert (beta.version, beta.path, beta.processor) == ("1", repo / "beta" / "1", "blade")


def test_config_json_beside_the_versions_gives_the_settings(repo: Path) -> None:
    (repo / "alpha" / "config.json").write_text(
        json.dumps(
            {
                "version": "2",
                "service": "alpha-canary",
                "weight": 30,
                "metadata": {"rpc": {"max_batch_size": 4, "max_batch_timeout": 7}, "cpu": 2},
            }
        )
    )
    source = resolve(repo, "alpha")
    assert (source.version, source.processor) == ("2", "onnx")
    assert source.fields == {
        "service": "alpha-canary",
        "weight": 30,
        "max_batch_size": 4,
        "max_batch_timeout_ms": 7,
    }
    # a load's own config replaces config.json entirely (no merge)
    given = resolve(repo, "alpha", json.dumps({"metadata": {"rpc": {"max_queue_size": 9}}}))
    assert (given.version, given.fields) == ("10", {"max_queue_size": 9})


def test_model_path_places_a_model_from_anywhere(repo: Path, tmp_path: Path) -> None:
    elsewhere = models.tagged(tmp_path / "elsewhere", 5.0)
    config = {"model_path": str(elsewhere), "processor": "onnx", "metadata": {"workers": 2}}
    for root in (repo, None):  # no repository needed
        source = resolve(root, "placed", json.dumps(config))
        assert source == ModelSource("placed", "1", elsewhere, "onnx", {"workers": 2})
    versioned = resolve(None, "alpha", json.dumps({**config, "version": 7}))
    assert versioned.version == "7" and versioned.path == elsewhere  # not alpha/7 of DIR


@pytest.mark.parametrize(
    ("name", "config", "error"),
    [
        ("../alpha", None, "model name '../alpha' is not valid"),
        ("..", None, "model name '..' is not valid"),
        ("", None, "model name '' is not valid"),
        ("x" * 129, None, "is not valid: letters, digits"),
        ("missing", None, "no model 'missing' in .*, and the config has no model_path"),
        ("empty", None, "model 'empty' has no version directory in"),
        ("alpha", '{"version": "3"}', "model 'alpha' has no version 3 in"),
        ("alpha", '{"version": 2.5}', "version must be a string or an integer, got 2.5"),
        ("alpha", '{"version": "../1"}', "model 'alpha' has no version ../1"),
        ("alpha", "{broken", "the load's config is not valid JSON"),
        ("alpha", "[1, 2]", "the load's config must be a JSON object"),
        ("alpha", '{"metadata": 3}', "the load's config: metadata must be an object"),
        ("alpha", '{"name": "beta"}', "the config names model 'beta', not 'alpha'"),
        ("alpha", '{"model_path": "/nonexistent/m.onnx"}', "model_path /nonexistent/m.onnx does"),
    ],
)
def test_what_cannot_be_resolved_says_why(
    repo: Path, name: str, config: str | None, error: str
) -> None:
    with pytest.raises(LayoutError, match=error):
        resolve(repo, name, config)


def test_a_version_directory_without_a_model_and_a_broken_config_json(repo: Path) -> None:
    (repo / "alpha" / "11").mkdir()  # highest, but holds nothing servable
    with pytest.raises(LayoutError, match=r"alpha/11 holds neither model.onnx nor a blade"):
        resolve(repo, "alpha")
    (repo / "beta" / "config.json").write_text('{"version": ')
    with pytest.raises(LayoutError, match=r"beta/config.json is not valid JSON"):
        resolve(repo, "beta")
    with pytest.raises(LayoutError, match=r"no model 'alpha' \(no --model-repository\)"):
        resolve(None, "alpha")


def test_a_model_path_version_must_be_a_valid_name(tmp_path: Path) -> None:
    model = models.tagged(tmp_path, 1.0)
    with pytest.raises(LayoutError, match=r"version '\.\./x' is not valid"):
        resolve(None, "m", json.dumps({"model_path": str(model), "version": "../x"}))
