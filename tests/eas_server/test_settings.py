"""``ServerSettings``: frozen once built, and the token never printed or dumped in clear."""

from __future__ import annotations

import json
from pathlib import Path

import pydantic
import pytest
from pydantic import SecretStr

from eas_server._settings import ServerSettings

TOKEN = "s3cret-model-token"


@pytest.fixture
def model(tmp_path: Path) -> str:
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")  # only its existence is checked here
    return str(path)


def test_settings_are_frozen(model: str) -> None:
    settings = ServerSettings(model=model, name="m")
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        settings.port = 9000  # type: ignore[misc]
    assert settings.model_copy(update={"port": 9000}).port == 9000 and settings.port == 0


@pytest.mark.parametrize("source", ["flag", "environment", "service json"])
def test_the_token_is_kept_out_of_repr_and_dumps(
    model: str, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flags: dict[str, object] = {"model": model, "name": "m"}
    service: dict[str, object] = {}
    if source == "flag":
        flags["token"] = TOKEN
    elif source == "environment":
        monkeypatch.setenv("EAS_TOKEN", TOKEN)
    else:
        service["token"] = TOKEN
    settings = ServerSettings.load(flags, service)
    assert isinstance(settings.token, SecretStr)
    assert settings.token.get_secret_value() == TOKEN
    for shown in (repr(settings), str(settings), settings.model_dump_json()):
        assert TOKEN not in shown
    assert json.loads(settings.model_dump_json())["token"] == "**********"


def test_a_generation_bundle_picks_its_processor_and_gets_its_rows(tmp_path: Path) -> None:
    """``--model DIR`` of a generation bundle serves it with ``seq2seq``, or ``blade`` for
    blade's derived bundle (``blade.json`` beside ``generation.json``); both get the running
    batch and the queue from the settings; the layout of a repository picks the same."""
    from eas_server.repository._layout import default_processor

    plain, derived = tmp_path / "plain", tmp_path / "derived"
    for folder in (plain, derived):
        folder.mkdir()
        (folder / "generation.json").write_text("{}")
    (derived / "blade.json").write_text("{}")
    for folder, processor in ((plain, "seq2seq"), (derived, "blade")):
        settings = ServerSettings(model=str(folder), name="m", max_batch_size=4)
        assert settings.processor == processor == default_processor(folder)
        assert settings.processor_options() == {"max_batch_size": 4, "max_queue_size": 256}
