"""``ModelClient``: blocking calls routed by the published route tables."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from config_store import ConfigStore

from ._base import Inputs, Outputs, _BaseModelClient, _Routing
from ._routes import Route

__all__ = ["ModelClient"]

log = logging.getLogger("autoai.sdk")


class ModelClient(_BaseModelClient):
    """Call models by name; the route table decides version, service and client.

    ```python
    with ModelClient("zk://127.0.0.1:2181/autoai") as client:
        out = client.predict("intent-cls", {"input_ids": ids, "attention_mask": mask})
        out = client.predict("intent", {"text": ["turn on the lights", "play jazz"]})
        out["label"].tolist()                                        # ['lights_on', 'music']
        out = client.predict("intent-cls", inputs, key=user_id)     # sticky when the table says so
        out = client.predict("intent-cls", inputs, version="3")     # pinned
    ```
    Thread-safe: share one client between threads. Shadow calls run on a small pool of threads,
    off the caller's latency; when they fall behind, extra shadow calls are dropped (counted).

    Args: see ``_BaseModelClient.__init__`` (``store``, ``token``, ``timeout``, ``registry``,
    ``subscribe_timeout``, ``snapshot_dir``, ``decode_bytes``, and ``EasClient`` options);
    ``shadow_threads`` sizes the shadow pool.
    """

    _asynchronous = False

    def __init__(
        self,
        store: str | ConfigStore,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        shadow_threads: int = 2,
        **options: Any,
    ) -> None:
        super().__init__(store, token=token, timeout=timeout, **options)
        self._shadow_pool = concurrent.futures.ThreadPoolExecutor(
            shadow_threads, thread_name_prefix="autoai-shadow"
        )
        # Calls waiting for or running on the pool; beyond this, shadow calls are dropped.
        self._shadow_slots = threading.BoundedSemaphore(4 * shadow_threads)

    def predict(
        self,
        model: str,
        inputs: Inputs,
        *,
        key: str | bytes | None = None,
        version: str | None = None,
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Outputs:
        """Run ``model`` on ``inputs`` through the route the table gives.

        Args:
            model: the published model name.
            inputs: input name -> array (batch first), checked against the table's signature.
                A BYTES input also takes Python text: a list of ``str`` (one per row), a single
                ``str`` (a batch of one), ``bytes`` alike, or a numpy ``str_``/``bytes_``/
                ``object`` array; ``str`` is sent as UTF-8. No tokenizer runs here: a pipeline
                model tokenizes on the server.
            key: the caller's sticky key (user id, session); used when the table sets
                ``sticky_key``, so the same key always reaches the same version.
            version: pin a version (bypasses weights and shadow).
            outputs: output names to return (default: all).
            timeout: seconds for this call, retries included.

        Returns:
            Output name -> array. A BYTES output is a numpy ``object`` array of ``str`` when every
            element is UTF-8 (labels, JSON slot spans); one with any element that is not UTF-8
            stays an ``object`` array of ``bytes``, as does every BYTES output when the client
            was made with ``decode_bytes=False``.

        Raises:
            ModelNotFound: the model is not published (the message lists what is).
            VersionNotFound: ``version`` is not in the route table.
            InvalidInput: the inputs do not match the signature, or a BYTES input holds
                something other than text (nothing was sent).
            eas_client.NoInstanceAvailable: no live instance answered within the retry budget.
            eas_client.EasClientError: the other transport and server errors.
        """
        if self._retired:
            for stale in self._due():
                stale.close()
        routing, route, arrays = self._route(model, inputs, key, version)
        result = self._finish(self._client(routing.table, route).infer(arrays, outputs, timeout))
        shadow = self._shadow_route(routing, version)
        if shadow is not None:
            self._mirror(routing, shadow, arrays, outputs, result)
        return result

    def _mirror(
        self,
        routing: _Routing,
        route: Route,
        inputs: Mapping[str, Any],
        outputs: Sequence[str] | None,
        primary: Outputs,
    ) -> None:
        table = routing.table
        if not self._shadow_slots.acquire(blocking=False):
            self._count_shadow(table, route, "dropped")
            return
        client = self._client(table, route)

        def run() -> None:
            try:
                try:
                    shadow: Outputs | None = client.infer(inputs, outputs, None)
                except Exception as exc:
                    log.warning("shadow call to %s %s failed: %s", table.model, route.version, exc)
                    shadow = None
                self._compare(table, route, primary, shadow)
            finally:
                self._shadow_slots.release()

        try:
            self._shadow_pool.submit(run)
        except RuntimeError:  # closed meanwhile
            self._shadow_slots.release()

    def close(self) -> None:
        """Stop watching, wait for running shadow calls, close the clients (and an owned store)."""
        clients = self._cancel()
        self._shadow_pool.shutdown(wait=True, cancel_futures=True)
        for client in clients:
            client.close()
        self._close_store()

    def __enter__(self) -> ModelClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
