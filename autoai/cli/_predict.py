"""``autoai predict N --input x=@x.npy``: one Open Inference Protocol call, routed as published.

The version is the one ``--version`` names, or one picked by weight from the current release
(``GET .../releases``); its endpoints come from ``GET .../deployment``; the request is OIP v2
JSON (``POST /v2/models/{name}/versions/{version}/infer``, encoded by ``eas_client``'s codec) to
one endpoint, trying the next when one does not answer. For a debugging call from a shell: the
SDK (``autoai.sdk.ModelClient``) is what applications use.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from eas_client import ProtocolError, datatype_of, decode_response, dtype_of, encode_request

from ._common import (
    DEFAULT_URL,
    AsJson,
    TokenFile,
    Url,
    connect,
    emit_json,
    fail_on_errors,
    quote,
)
from ._errors import BadUsage, CliError, Unreachable
from ._parse import parse_input, pick_version, to_array
from ._publish import routes_text
from ._rest import RestClient

__all__ = ["predict_command"]


def _load(name: str, source: Path | Any, datatype: str) -> np.ndarray[Any, Any]:
    if isinstance(source, Path):
        try:
            array: np.ndarray[Any, Any] = np.load(source, allow_pickle=False)
        except OSError as exc:
            raise BadUsage(f"--input {name}: cannot read {source}: {exc.strerror or exc}") from None
        except ValueError:  # numpy's guess at anything else: "pickled data"
            raise BadUsage(
                f"--input {name}: {source} is not a .npy file (expected one array saved with "
                "numpy.save, of numbers or strings)"
            ) from None
        if not isinstance(array, np.ndarray):
            raise BadUsage(f"--input {name}: {source} holds several arrays; give one .npy")
        return array
    try:
        dtype = dtype_of(datatype)
    except ProtocolError:
        dtype = None
    return to_array(name, source, dtype)


def _jsonable(array: np.ndarray[Any, Any]) -> Any:
    if array.dtype == object:
        as_text = np.vectorize(
            lambda x: x.decode("utf-8", "replace") if isinstance(x, bytes) else x, otypes=[object]
        )
        return as_text(array).tolist()
    return array.tolist()


def _choose_version(api: RestClient, name: str, version: str | None) -> tuple[str, str]:
    """The version to call and why: pinned, or picked by weight from the current release."""
    if version is not None:
        return version, "pinned with --version"
    latest = api.get(f"/api/v1/models/{quote(name)}/releases", limit=1)["releases"]
    if not latest:
        raise CliError(f"model {name!r} has never been published: pass --version to call one")
    routes = {str(v): int(w) for v, w in latest[0]["routes"].items()}
    picked = pick_version(routes, random.random())
    revision = latest[0]["revision"]
    return picked, f"picked by weight from revision {revision}: {routes_text(routes)}"


def _infer(
    endpoints: list[str], path: str, body: bytes, header_length: int | None, token: str | None
) -> tuple[str, Any]:
    """POST to the endpoints in random order until one answers; its URL and decoded response."""
    headers = {"Content-Type": "application/json"}
    if header_length is not None:
        headers["Inference-Header-Content-Length"] = str(header_length)
    failures = []
    for endpoint in random.sample(endpoints, len(endpoints)):
        with RestClient(
            endpoint,
            token=token,
            what=f"instance {endpoint}",
            hint=None,
            auth_hint="the deployment requires a token: pass --service-token-file",
        ) as server:
            try:
                answer = server.request("POST", path, content=body, headers=headers)
            except Unreachable as exc:
                failures.append(str(exc))
                continue
        length = answer.headers.get("inference-header-content-length")
        try:
            return endpoint, decode_response(answer.content, length)
        except ProtocolError as exc:
            raise CliError(f"instance {endpoint} answered a malformed response: {exc}") from None
    raise Unreachable("no instance answered: " + "; ".join(failures), endpoints[0])


def predict_command(
    name: Annotated[str, typer.Argument(help="the model")],
    inputs: Annotated[
        list[str],
        typer.Option("--input", help="NAME=@FILE.npy or NAME=JSON such as x=[[1,2]]; repeated"),
    ],
    version: Annotated[
        str | None, typer.Option("--version", help="call this version, not a routed one")
    ] = None,
    service_token_file: Annotated[
        Path | None,
        typer.Option("--service-token-file", help="file with the deployment's token, if any"),
    ] = None,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Send one inference request to a version chosen as published; print the outputs."""
    with fail_on_errors():
        parsed = dict(parse_input(i) for i in inputs)
        token = None
        if service_token_file is not None:
            try:
                token = service_token_file.read_text().strip() or None
            except OSError as exc:
                raise BadUsage(f"--service-token-file: {exc.strerror}") from None
        with connect(url, token_file) as api:
            chosen, why = _choose_version(api, name, version)
            base = f"/api/v1/models/{quote(name)}/versions/{quote(chosen)}"
            signature = api.get(base)["signature"]
            types = {t["name"]: t["datatype"] for t in signature["inputs"]}
            unknown = sorted(set(parsed) - set(types))
            if unknown:
                raise BadUsage(
                    f"--input: {name} version {chosen} has no input {', '.join(unknown)}; "
                    f"its inputs: {', '.join(types)}"
                )
            arrays = {n: _load(n, source, types[n]) for n, source in parsed.items()}
            endpoints = api.get(f"{base}/deployment")["endpoints"]
        if not endpoints:
            raise CliError(f"{name} version {chosen} has no live instance")
        try:
            body, length = encode_request(arrays, binary_inputs=False, binary_outputs=False)
        except ProtocolError as exc:
            raise BadUsage(f"--input: {exc}") from None
        path = f"/v2/models/{quote(name)}/versions/{quote(chosen)}/infer"
        endpoint, response = _infer(endpoints, path, body, length, token)
    outputs = response.outputs
    if as_json:
        emit_json(
            {
                "model": name,
                "version": chosen,
                "why": why,
                "endpoint": endpoint,
                "outputs": [
                    {
                        "name": n,
                        "datatype": datatype_of(a),
                        "shape": list(a.shape),
                        "data": _jsonable(a),
                    }
                    for n, a in outputs.items()
                ],
            }
        )
        return
    console = Console()
    console.print(f"{name} version {chosen} at {endpoint} ({why})", markup=False, highlight=False)
    table = Table()
    for col in ("output", "datatype", "shape", "values"):
        table.add_column(col)
    for n, a in outputs.items():
        values = np.array2string(a, threshold=24, edgeitems=3, precision=5)
        table.add_row(Text(n), datatype_of(a), str(list(a.shape)), Text(values))
    console.print(table)
