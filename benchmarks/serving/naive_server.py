"""The naive baseline: FastAPI + onnxruntime, one `session.run` per request.

Written plainly, the way a typical user writes a first model server from the FastAPI and ONNX
Runtime tutorials: an `async def` route that reads the body, builds numpy arrays, calls
`session.run` on the event loop and returns a dict for FastAPI to serialise. No batching, no
executor, no error mapping. It speaks enough of the Open Inference Protocol for the benchmark:
JSON tensors and the binary tensor extension (`Inference-Header-Content-Length`) both ways, and
the `outputs` selection.

    python benchmarks/serving/naive_server.py --model PATH --name NAME [--host H] [--port 0]

Prints `listening on http://HOST:PORT` once the model is loaded and the socket listens.
"""

from __future__ import annotations

import argparse
import json
import socket
from typing import Any

import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request, Response

DTYPES: dict[str, Any] = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "INT32": np.int32,
    "INT64": np.int64,
    "FP16": np.float16,
    "FP32": np.float32,
    "FP64": np.float64,
}
ORT_TO_OIP = {
    "tensor(bool)": "BOOL",
    "tensor(uint8)": "UINT8",
    "tensor(int8)": "INT8",
    "tensor(int32)": "INT32",
    "tensor(int64)": "INT64",
    "tensor(float16)": "FP16",
    "tensor(float)": "FP32",
    "tensor(double)": "FP64",
}


def create_app(model_path: str, name: str) -> FastAPI:
    session = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    output_types = {o.name: ORT_TO_OIP[o.type] for o in session.get_outputs()}
    app = FastAPI()

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.get("/v2/models/{model}/ready")
    async def model_ready(model: str) -> dict[str, Any]:
        return {"name": model, "ready": model == name}

    @app.post("/v2/models/{model}/infer")
    async def infer(model: str, request: Request) -> Any:
        body = await request.body()
        header_length = request.headers.get("inference-header-content-length")
        if header_length is not None:
            payload = json.loads(body[: int(header_length)])
            binary = body[int(header_length) :]
        else:
            payload = json.loads(body)
            binary = b""

        feeds = {}
        offset = 0
        for tensor in payload["inputs"]:
            dtype = DTYPES[tensor["datatype"]]
            size = tensor.get("parameters", {}).get("binary_data_size")
            if size is not None:
                array = np.frombuffer(binary[offset : offset + size], dtype=dtype)
                offset += size
            else:
                array = np.array(tensor["data"], dtype=dtype)
            feeds[tensor["name"]] = array.reshape(tensor["shape"])

        requested = payload.get("outputs") or [{"name": n} for n in output_types]
        results = session.run([o["name"] for o in requested], feeds)

        binary_default = payload.get("parameters", {}).get("binary_data_output", False)
        outputs = []
        chunks = []
        for spec, array in zip(requested, results, strict=True):
            out: dict[str, Any] = {
                "name": spec["name"],
                "datatype": output_types[spec["name"]],
                "shape": list(array.shape),
            }
            if spec.get("parameters", {}).get("binary_data", binary_default):
                raw = np.ascontiguousarray(array).tobytes()
                out["parameters"] = {"binary_data_size": len(raw)}
                chunks.append(raw)
            else:
                out["data"] = array.flatten().tolist()
            outputs.append(out)

        response = {"model_name": model, "outputs": outputs}
        if not chunks:
            return response
        header = json.dumps(response).encode()
        return Response(
            header + b"".join(chunks),
            media_type="application/octet-stream",
            headers={"Inference-Header-Content-Length": str(len(header))},
        )

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="naive FastAPI + onnxruntime OIP server")
    parser.add_argument("--model", required=True)
    parser.add_argument("--name", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()

    app = create_app(args.model, args.name)
    # Bind first so that --port 0 works and the printed port is the real one.
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(2048)
    host, port = sock.getsockname()[:2]
    print(f"listening on http://{host}:{port}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
