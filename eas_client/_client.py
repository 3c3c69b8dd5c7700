"""``EasClient``: the blocking client. I/O only; every decision is made in ``_base``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from ._balancer import RetryBudget
from ._base import Outputs, _BaseEasClient
from ._errors import EasClientError
from ._httpx import HttpxTransport
from ._instances import Instances
from ._metrics import ClientMetrics
from ._transport import Transport

if TYPE_CHECKING:
    import httpx

    from config_store import ConfigStore

__all__ = ["EasClient"]


class EasClient(_BaseEasClient):
    """Calls one model service over the Open Inference Protocol, with client-side balancing.

    Instances come from the config store (``store=`` + ``service=``: the set follows
    registrations and deregistrations as they happen) or from a fixed ``urls=`` list. Each call
    goes to one instance chosen by weighted least-outstanding-requests (power of two choices);
    connect errors, dropped connections, timeouts with time left and 503s are retried on another
    instance; instances that keep failing are ejected for a while. Thread-safe: share one client
    between threads.

    ```python
    with EasClient(store="zk://zk1:2181/autoai", service="intent-cls-3") as client:
        out = client.infer({"input_ids": ids, "attention_mask": mask})
        out["logits"]
    ```

    Args:
        store: a ``ConfigStore`` (shared: not closed by the client) or a store URL (opened here,
            closed by :meth:`close`).
        service: the service to discover (with ``store``; ``NAME-VERSION`` by default on
            eas-server). Also names the service in errors.
        urls: fixed instance base URLs (``http://host:port``), instead of ``store``.
        model: model name in the OIP path; default: each instance's registered ``model``, else
            ``service``. Needed with ``urls`` unless ``service`` is given.
        version: model version in the path; default: each instance's registered ``version``;
            ``None`` with ``urls``: the unversioned path ``/v2/models/{model}/infer``.
        token: sent as ``Authorization: Bearer <token>``.
        timeout: seconds for a whole call, retries included (per call: ``infer(timeout=)``).
        binary: send and ask for tensors with the binary extension (fast); JSON when False.
        max_attempts: most instances tried per call (1 = no retry).
        retry_budget: bounds retries to a share of calls (default ``RetryBudget()``: 20% plus
            10 per second); share one between clients to bound them together.
        transport: an ``httpx.BaseTransport`` to use instead of real connections (tests:
            ``httpx.MockTransport``); ``max_connections_per_instance`` then does not apply.
        max_connections_per_instance: connections kept per instance; more concurrent calls to
            one instance wait for a free connection (within their deadline).
        metrics: where to count calls (duration, outcome, retries); none by default.
        labels: ``model``, ``version``, ``processor`` label values of those metrics; default the
            ``model`` (else ``service``), the ``version`` (else ``""``) and ``"onnx"``.
        eject_after: consecutive failures (transport errors, 503) that eject an instance.
        eject_for: first ejection's length, seconds; doubles on every repeat (up to 60 s).
        attempt_timeout: seconds one attempt may wait for its answer before the call moves to
            another instance (default: the whole remaining deadline). Set it below ``timeout`` so
            that a hung instance (it accepts connections but never answers) costs one attempt,
            not the call.

    Raises:
        ValueError: an argument is missing, conflicting or out of range.
        config_store.ConfigStoreError: ``store`` is a URL that cannot be opened.
    """

    _kind = "EasClient"

    def __init__(
        self,
        *,
        store: ConfigStore | str | None = None,
        service: str | None = None,
        urls: Sequence[str] | None = None,
        model: str | None = None,
        version: str | None = None,
        token: str | None = None,
        timeout: float = 5.0,
        binary: bool = True,
        max_attempts: int = 3,
        retry_budget: RetryBudget | None = None,
        transport: httpx.BaseTransport | None = None,
        max_connections_per_instance: int = 64,
        metrics: ClientMetrics | None = None,
        labels: Mapping[str, str] | None = None,
        eject_after: int = 3,
        eject_for: float = 5.0,
        attempt_timeout: float | None = None,
    ):
        super().__init__(
            store=store,
            service=service,
            urls=urls,
            model=model,
            version=version,
            token=token,
            timeout=timeout,
            binary=binary,
            max_attempts=max_attempts,
            retry_budget=retry_budget,
            max_connections_per_instance=max_connections_per_instance,
            metrics=metrics,
            labels=labels,
            eject_after=eject_after,
            eject_for=eject_for,
            attempt_timeout=attempt_timeout,
        )
        self._transport: Transport = (
            Instances(self._max_connections)
            if transport is None
            else HttpxTransport.over(transport)
        )
        try:
            self._start_discovery()
        except BaseException:
            self._transport.close()
            raise

    def infer(
        self,
        inputs: Mapping[str, np.ndarray[Any, Any]],
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run the model on ``inputs``.

        Args:
            inputs: input name -> numpy array (the datatype comes from the dtype).
            outputs: output names to fetch; ``None`` for all.
            timeout: seconds for this call, retries included (default: the client's).

        Returns:
            Output name -> array. Binary outputs are read-only views of the answer's body.

        Raises:
            InvalidRequest: 400, the server refused the inputs (never retried).
            Unauthorized: 401/403, missing or wrong token.
            ModelNotFound: 404, the instance does not serve this model or version.
            ServiceUnavailable: 503 from the last instance tried (``retry_after`` set).
            TimeoutException: from the last instance tried.
            NoInstanceAvailable: discovery knows no instance to call, or the last one tried
                refused the connection (chained to its ``ConnectError``).
            ServerError: another status (500).
            ProtocolError: an input OIP cannot carry, or a malformed answer.

            When retries ran out, the error's notes name the instances tried and why it stopped.
        """
        transport = self._transport
        if self._retired:
            for origin in self._reapable():
                transport.discard(origin)
        call = self._call(inputs, outputs, timeout)
        try:
            request = next(call)
            while True:
                try:
                    reply = transport.send(request)
                except EasClientError as exc:  # the transport's, for the call loop to judge
                    request = call.throw(exc)
                else:
                    request = call.send(reply)
        except StopIteration as done:
            return cast(Outputs, done.value)
        finally:
            call.close()

    def close(self) -> None:
        """Stop discovery, close the store if the client opened it, close connections.

        Idempotent; calls after it raise ``RuntimeError``.
        """
        if self._closed:
            return
        self._closed = True
        try:
            self._stop_discovery()
        finally:
            self._transport.close()

    def __enter__(self) -> EasClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
