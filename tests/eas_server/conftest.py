"""Models for the eas_server tests; server processes come from tests/fixtures/servers.py."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.fixtures import onnx_models
from tests.fixtures.servers import ServerProcess, StartServer
from tests.fixtures.waiting import wait

__all__ = ["ServerProcess", "StartServer", "wait_until"]


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "tiny_bert": onnx_models.tiny_bert(d),
        "identity": onnx_models.identity(d),
        "multi_dtype": onnx_models.multi_dtype(d),
        "string_identity": onnx_models.string_identity(d),
        "no_batch": onnx_models.no_batch(d),
        "failing": onnx_models.failing(d),
        "classifier": onnx_models.classifier(d),
    }


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    """``tests.fixtures.waiting.wait`` with this package's defaults."""
    wait(predicate, timeout, "the condition", step=0.02)
