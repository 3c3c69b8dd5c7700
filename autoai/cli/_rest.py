"""A small synchronous REST client for the control plane (and, for ``predict``, a model server).

```python
with RestClient("http://127.0.0.1:8080", token=token) as api:
    api.get("/api/v1/models")                         # parsed JSON
    api.post("/api/v1/models/m/publish", json={...})  # ApiError on 4xx/5xx, Unreachable: no answer
```
Error bodies (``{"error": ..., "detail": ...}``, the same shape on both servers) become
``ApiError``; httpx's transport errors become ``Unreachable``; both are converted here only.
"""

from __future__ import annotations

from types import TracebackType
from typing import Any, Final

import httpx

from ._errors import ApiError, BadUsage, Unreachable

__all__ = ["DEFAULT_URL", "RestClient"]

DEFAULT_URL: Final = "http://127.0.0.1:8080"
_CONTROL_HINT: Final = "is `autoai up` running?"
_AUTH_HINT: Final = "set AUTOAI_TOKEN or pass --token-file"


def _error(response: httpx.Response, auth_hint: str | None) -> ApiError:
    """The ``ApiError`` of an error answer, whatever its body (JSON of ours, FastAPI's, or text)."""
    message, detail = response.reason_phrase or "error", None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        found = body.get("error", body.get("detail"))
        if isinstance(found, str) and found:
            message = found
        if isinstance(body.get("detail"), dict):
            detail = body["detail"]
    elif response.text.strip():
        message = response.text.strip().splitlines()[0][:200]
    hint = auth_hint if response.status_code in (401, 403) else None
    return ApiError(response.status_code, message, detail, hint=hint)


class RestClient:
    """JSON over HTTP to one base URL, with the admin token on every request when one is given.

    Args:
        base_url: the server's base URL, such as ``http://127.0.0.1:8080``.
        token: sent as ``Authorization: Bearer <token>``; ``None`` sends no header.
        what: how messages name the server (``"the control plane"``, ``"instance ..."``).
        hint: appended to the message when nothing answers.
        auth_hint: appended to the message of a 401 or 403.
        timeout: seconds for each request (connect, read, write, pool).
        transport: an httpx transport (tests may pass ``httpx.ASGITransport``).

    Raises:
        BadUsage: ``base_url`` is not an ``http(s)://`` URL.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        what: str = "the control plane",
        hint: str | None = _CONTROL_HINT,
        auth_hint: str | None = _AUTH_HINT,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        try:
            url = httpx.URL(base_url)
        except httpx.InvalidURL as exc:
            raise BadUsage(f"{base_url!r} is not a URL: {exc}") from exc
        if url.scheme not in ("http", "https") or not url.host:
            raise BadUsage(f"{base_url!r} is not an http:// or https:// URL")
        self.base_url = base_url.rstrip("/")
        self.what = what
        self.hint = hint
        self.auth_hint = auth_hint
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        files: dict[str, Any] | None = None,
        data: dict[str, Any] | None = None,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Send one request; returns the (2xx or 3xx) response.

        Raises:
            Unreachable: no answer (refused, reset, timed out, bad address).
            ApiError: the answer's status is 4xx or 5xx.
        """
        try:
            response = self._http.request(
                method, path, json=json, params=params, files=files, data=data, content=content,
                headers=headers,
            )  # fmt: skip
        except httpx.TimeoutException as exc:
            raise Unreachable(
                f"{self.what} at {self.base_url} did not answer in time ({type(exc).__name__})",
                self.base_url,
            ) from exc
        except httpx.TransportError as exc:
            hint = f" ({self.hint})" if self.hint else ""
            raise Unreachable(
                f"cannot reach {self.what} at {self.base_url}{hint}: {exc}", self.base_url
            ) from exc
        if response.status_code >= 400:
            raise _error(response, self.auth_hint)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise ApiError(
                response.status_code, f"{self.what} answered {path} with something not JSON"
            ) from exc

    def get(self, path: str, **params: Any) -> Any:
        """``GET path?params``; the parsed JSON body (see ``request`` for the errors)."""
        return self._json("GET", path, params=params or None)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> Any:
        """``POST`` a JSON body (or ``files=`` / ``data=`` for multipart); the parsed answer."""
        return self._json("POST", path, json=json, **kwargs)

    def patch(self, path: str, json: Any = None) -> Any:
        """``PATCH`` a JSON body; the parsed answer."""
        return self._json("PATCH", path, json=json)

    def delete(self, path: str, **params: Any) -> Any:
        """``DELETE path?params``; the parsed answer (``None`` for 204)."""
        return self._json("DELETE", path, params=params or None)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
