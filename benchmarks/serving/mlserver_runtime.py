"""An ONNX Runtime model for MLServer: the batching peer of the serving benchmark.

MLServer ships no ONNX runtime, so this is the small custom runtime its docs describe
(`MLModel.load` / `predict` with `NumpyCodec`). It runs inside `.venv-mlserver`, where
`mlserver_peer.py` copies it next to a `model-settings.json` that names it as
`mlserver_runtime.OnnxRuntimeModel` and turns adaptive batching on. Nothing here imports the
rest of the benchmark.
"""

from __future__ import annotations

import os
from typing import Any

import onnxruntime as ort
from mlserver import MLModel  # type: ignore[import-not-found]
from mlserver.codecs import NumpyCodec  # type: ignore[import-not-found]
from mlserver.types import InferenceRequest, InferenceResponse  # type: ignore[import-not-found]


class OnnxRuntimeModel(MLModel):  # type: ignore[misc]
    """Serves the ONNX file at `parameters.uri`; `ORT_INTRA_OP_THREADS` sets ORT's threads."""

    async def load(self) -> bool:
        options = ort.SessionOptions()
        threads = os.environ.get("ORT_INTRA_OP_THREADS")
        if threads:
            options.intra_op_num_threads = int(threads)
        uri = self.settings.parameters.uri
        self._session = ort.InferenceSession(uri, options, providers=["CPUExecutionProvider"])
        self._output_names = [o.name for o in self._session.get_outputs()]
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds: dict[str, Any] = {
            tensor.name: NumpyCodec.decode_input(tensor) for tensor in payload.inputs
        }
        names = [o.name for o in payload.outputs] if payload.outputs else self._output_names
        results = self._session.run(names, feeds)
        outputs = [
            NumpyCodec.encode_output(name, array)
            for name, array in zip(names, results, strict=True)
        ]
        return InferenceResponse(model_name=self.name, outputs=outputs)
