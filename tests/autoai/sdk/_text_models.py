"""A text model without a tokenizer, for the SDK's string tests: real eas-server processes serve it
(ONNX Runtime runs string tensors), registered in a real store, with route tables published for it.

``intent_model`` maps each known sentence to a label, a slots document and a score with
``ai.onnx.ml.LabelEncoder`` (string -> string, string -> float), and echoes the text back:

    text BYTES [-1] -> echo  BYTES [-1]  (Identity: the exact text, any Unicode)
                    -> label BYTES [-1]  (the sentence's intent; "other" when unknown)
                    -> slots BYTES [-1]  (JSON [{slot, value, start, end}]; "[]" when unknown)
                    -> score FP32  [-1]  (0.0 when unknown)

Two versions with different tables are a primary and a shadow that disagree on known rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
from onnx import TensorProto, helper

from autoai.testing.models import IR_VERSION, OPSET
from config_store import ConfigStore, open_store
from tests.fixtures.servers import ServerProcess
from tests.fixtures.waiting import wait

MODEL = "intent"
SIGNATURE = {
    "inputs": [{"name": "text", "datatype": "BYTES", "shape": [-1]}],
    "outputs": [
        {"name": "echo", "datatype": "BYTES", "shape": [-1]},
        {"name": "label", "datatype": "BYTES", "shape": [-1]},
        {"name": "slots", "datatype": "BYTES", "shape": [-1]},
        {"name": "score", "datatype": "FP32", "shape": [-1]},
    ],
}

_TEXT_IN = [{"name": "text", "datatype": "BYTES", "shape": [-1]}]
PIPELINE_SIGNATURES: dict[str, dict[str, Any]] = {
    "classify": {
        "inputs": _TEXT_IN,
        "outputs": [
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
            {"name": "score", "datatype": "FP32", "shape": [-1]},
        ],
    },
    "slots": {
        "inputs": _TEXT_IN,
        "outputs": [{"name": "slots", "datatype": "BYTES", "shape": [-1]}],
    },
}
"""The external signatures of ``pipeline`` bundles of one text input, by task (top_k 1)."""


def slots(*spans: tuple[str, str, int, int]) -> str:
    """A slots document as a pipeline writes it: ``[{"slot", "value", "start", "end"}, ...]``."""
    return json.dumps([{"slot": s, "value": v, "start": b, "end": e} for s, v, b, e in spans])


@dataclass(frozen=True)
class Answers:
    """What one version answers for each known sentence."""

    labels: Mapping[str, str]
    slots: Mapping[str, str] = field(default_factory=dict)
    scores: Mapping[str, float] = field(default_factory=dict)


def intent_model(directory: Path, answers: Answers, name: str) -> Path:
    """Save ``<name>.onnx`` answering ``answers`` (see the module docstring); return its path."""
    keys = sorted(answers.labels)
    nodes = [
        helper.make_node("Identity", ["text"], ["echo"]),
        helper.make_node(
            "LabelEncoder",
            ["text"],
            ["label"],
            domain="ai.onnx.ml",
            keys_strings=keys,
            values_strings=[answers.labels[k] for k in keys],
            default_string="other",
        ),
        helper.make_node(
            "LabelEncoder",
            ["text"],
            ["slots"],
            domain="ai.onnx.ml",
            keys_strings=keys,
            values_strings=[answers.slots.get(k, "[]") for k in keys],
            default_string="[]",
        ),
        helper.make_node(
            "LabelEncoder",
            ["text"],
            ["score"],
            domain="ai.onnx.ml",
            keys_strings=keys,
            values_floats=[answers.scores.get(k, 0.5) for k in keys],
            default_float=0.0,
        ),
    ]
    batch = ["batch"]
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("text", TensorProto.STRING, batch)],
        [
            helper.make_tensor_value_info("echo", TensorProto.STRING, batch),
            helper.make_tensor_value_info("label", TensorProto.STRING, batch),
            helper.make_tensor_value_info("slots", TensorProto.STRING, batch),
            helper.make_tensor_value_info("score", TensorProto.FLOAT, batch),
        ],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.ml", 2)],
        producer_name="autoai-tests",
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    path = directory / f"{name}.onnx"
    directory.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def route_table(
    routes: Sequence[Mapping[str, Any]],
    *,
    model: str = MODEL,
    signature: Mapping[str, Any] = SIGNATURE,
    shadow: Mapping[str, Any] | None = None,
) -> bytes:
    """A route table of ``model`` for ``routes`` (each ``{version, weight}``; served by
    ``{model}-{version}`` with the onnx processor unless the route says otherwise)."""
    entries = [{"service": f"{model}-{r['version']}", "processor": "onnx", **r} for r in routes]
    doc = {
        "schema_version": 1,
        "model": model,
        "revision": 0,
        "routes": entries,
        "shadow": dict(shadow) if shadow else None,
        "signature": dict(signature),
    }
    return json.dumps(doc).encode()


@dataclass
class TextFleet:
    """eas-server processes serving versions of text models, registered in one embedded store."""

    url: str
    root: Path
    store: ConfigStore
    servers: list[ServerProcess] = field(default_factory=list)

    def serve(self, version: str, model: Path, *, name: str = MODEL) -> None:
        """Serve ``model`` (an ONNX file or a bundle directory) as ``name`` version ``version``,
        and wait until it is registered as ``{name}-{version}``."""
        self.servers.append(
            ServerProcess(
                [
                    *("--model", str(model), "--name", name, "--version", version),
                    *("--port", "0", "--store", self.url, "--max-batch-timeout-ms", "1"),
                ],
                env={"HOME": str(self.root)},
            )
        )
        service = f"{name}-{version}"
        wait(lambda: len(self.store.instances(service)) >= 1, 20, f"{service} registered")

    def serve_answers(self, version: str, answers: Answers) -> None:
        """Serve an ``intent_model`` answering ``answers`` as ``intent`` version ``version``."""
        self.serve(version, intent_model(self.root / "models", answers, f"intent_{version}"))

    def publish(self, content: bytes, *, model: str = MODEL) -> int:
        return self.store.publish(model, content, group="models")


@contextmanager
def text_fleet(root: Path) -> Iterator[TextFleet]:
    """An empty fleet on ``sqlite:///<root>/store.db``; its servers are stopped at the end."""
    url = f"sqlite:///{root / 'store.db'}"
    store = open_store(url, snapshot_dir=root / "fleet-snapshot")
    fleet = TextFleet(url, root, store)
    try:
        yield fleet
    finally:
        for server in fleet.servers:
            server.stop()
        store.close()
