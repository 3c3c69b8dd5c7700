"""The control plane's client of a pool instance's repository API (eas-server, over HTTP only).

Three calls: ``resources`` (``GET /v2/resources``, what placement reads), ``load``
(``POST /v2/repository/models/{name}/load`` with a service JSON, which blocks until the version
serves) and ``unload`` (``.../unload`` of one version: deregistered, drained, freed). Every call
sends the pool's token. httpx errors and refusals are converted here, once:

```
ControlPlaneError
  ├── InvalidRequest
  │     └── LoadRefused     the instance could not load the version (its reason in the message)
  └── Unavailable
        └── MemberUnreachable  no answer, or an answer that is not the API's
```
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Final
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from .errors import InvalidRequest, Unavailable
from .schema import MemberResources

__all__ = ["LoadRefused", "MemberClient", "MemberUnreachable"]

_READ_TIMEOUT_S: Final = 5.0
_LOAD_TIMEOUT_S: Final = 600.0  # a blade artifact's CUDA graphs take a while to capture
_UNLOAD_TIMEOUT_S: Final = 120.0  # the drain (30 s by default) and the free


class MemberUnreachable(Unavailable):
    """A pool instance did not answer, or not as the repository API does;
    ``detail["address"]`` names it."""


class LoadRefused(InvalidRequest):
    """A pool instance could not load a version (bad model, bad config, out of memory)."""


def _error_text(answer: httpx.Response) -> str:
    try:
        doc = answer.json()
    except ValueError:
        return answer.text[:300]
    if isinstance(doc, dict) and isinstance(doc.get("error"), str):
        return str(doc["error"])
    return answer.text[:300]


class MemberClient:
    """Calls the repository API of pool instances (one client for every instance and pool).

    Args:
        transport: an httpx transport (tests); default: httpx's own.
    """

    def __init__(self, transport: httpx.BaseTransport | None = None):
        self._http = httpx.Client(transport=transport, trust_env=False)

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        address: str,
        path: str,
        token: str | None,
        timeout: float,
        body: Mapping[str, Any] | None = None,
    ) -> httpx.Response:
        headers = {} if token is None else {"Authorization": f"Bearer {token}"}
        try:
            return self._http.request(
                method, f"http://{address}{path}", json=body, headers=headers, timeout=timeout
            )
        except httpx.HTTPError as exc:
            raise MemberUnreachable(
                f"pool instance {address}: {method} {path}: {type(exc).__name__}: {exc}",
                {"address": address},
            ) from exc

    def resources(self, address: str, token: str | None) -> MemberResources:
        """What the instance has and hosts.

        Raises:
            MemberUnreachable: no answer, or not a resources document.
        """
        answer = self._call("GET", address, "/v2/resources", token, _READ_TIMEOUT_S)
        if answer.status_code != 200:
            raise MemberUnreachable(
                f"pool instance {address}: GET /v2/resources: {answer.status_code} "
                f"{_error_text(answer)}",
                {"address": address, "status": answer.status_code},
            )
        try:
            return MemberResources.model_validate_json(answer.content)
        except ValidationError as exc:
            raise MemberUnreachable(
                f"pool instance {address}: GET /v2/resources is not a resources document: {exc}",
                {"address": address},
            ) from exc

    def load(self, address: str, token: str | None, name: str, config: Mapping[str, Any]) -> None:
        """Load (or reload) the version ``config`` describes; returns once it serves.

        Raises:
            LoadRefused: the instance could not load it (it keeps serving the others).
            MemberUnreachable: no answer.
        """
        path = f"/v2/repository/models/{quote(name, safe='')}/load"
        body = {"parameters": {"config": json.dumps(dict(config))}}
        answer = self._call("POST", address, path, token, _LOAD_TIMEOUT_S, body)
        if answer.status_code == 200:
            return
        problem = f"pool instance {address}: {_error_text(answer)}"
        if answer.status_code in (400, 404):
            raise LoadRefused(problem, {"address": address, "status": answer.status_code})
        raise MemberUnreachable(problem, {"address": address, "status": answer.status_code})

    def unload(self, address: str, token: str | None, name: str, version: str) -> bool:
        """Unload one version (deregistered, drained, freed); False when it was not loaded.

        Raises:
            MemberUnreachable: no answer, or a refusal.
        """
        path = f"/v2/repository/models/{quote(name, safe='')}/unload"
        body = {"parameters": {"version": version}}
        answer = self._call("POST", address, path, token, _UNLOAD_TIMEOUT_S, body)
        if answer.status_code == 200:
            return True
        if answer.status_code == 404:
            return False
        raise MemberUnreachable(
            f"pool instance {address}: unload {name} {version}: {answer.status_code} "
            f"{_error_text(answer)}",
            {"address": address, "status": answer.status_code},
        )
