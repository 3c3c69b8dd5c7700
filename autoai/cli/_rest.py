"""The CLI's REST client: ``autoai.control.ControlClient`` with the CLI's messages and errors
(and, for ``predict``, the same transport to a model server).

```python
with RestClient("http://127.0.0.1:8080", token=token) as api:
    api.control.deployments()                         # the typed client, errors converted below
    api.post("/api/v1/models/m/publish", json={...})  # ApiError on 4xx/5xx, Unreachable: no answer
```
``ControlClient``'s errors become the CLI's here only: ``Unreachable`` (nothing answered) names
``what`` and a hint, an error status becomes ``ApiError`` with the server's ``{"error", "detail"}``
(and, for 401/403, how to pass the token).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Final

import httpx

from .. import control
from ..control import ControlClient, ControlError
from ._errors import ApiError, BadUsage, CliError, Unreachable

__all__ = ["DEFAULT_URL", "RestClient"]

DEFAULT_URL: Final = control.DEFAULT_URL
_CONTROL_HINT: Final = "is `autoai up` running?"
_AUTH_HINT: Final = "set AUTOAI_TOKEN or pass --token-file"


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

    Attributes:
        control: the ``ControlClient`` underneath; call it inside ``errors()``.

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
            self.control = ControlClient(
                base_url, token=token, timeout=timeout, transport=transport
            )
        except ValueError as exc:
            raise BadUsage(str(exc)) from None
        self.base_url = self.control.base_url
        self.what = what
        self.hint = hint
        self.auth_hint = auth_hint

    def converted(self, exc: ControlError) -> CliError:
        """The CLI's error for a ``ControlError`` of this client."""
        if isinstance(exc, control.Unreachable):
            if exc.timed_out:
                kind = type(exc.__cause__).__name__ if exc.__cause__ else "timeout"
                message = f"{self.what} at {self.base_url} did not answer in time ({kind})"
                return Unreachable(message, self.base_url)
            why = f" ({self.hint})" if self.hint else ""
            return Unreachable(
                f"cannot reach {self.what} at {self.base_url}{why}: {exc.reason}", self.base_url
            )
        if exc.status is None:
            return Unreachable(f"{self.what} at {self.base_url}: {exc}", self.base_url)
        auth = self.auth_hint if exc.status in (401, 403) else None
        return ApiError(exc.status, exc.error, exc.detail, hint=auth)

    @contextmanager
    def errors(self) -> Iterator[None]:
        """Convert the ``ControlError`` raised inside to the CLI's (``converted``), chained."""
        try:
            yield
        except ControlError as exc:
            raise self.converted(exc) from exc

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
            return self.control.request(
                method, path, json=json, params=params, files=files, data=data, content=content,
                headers=headers,
            )  # fmt: skip
        except ControlError as exc:
            raise self.converted(exc) from exc

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
        self.control.close()

    def __enter__(self) -> RestClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
