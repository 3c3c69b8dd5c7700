"""What ``ModelClient`` and ``AsyncModelClient`` share: the watched route tables, route choice,
text inputs and outputs, the input check, the per-route clients, the shadow comparison and the
client-side metrics; for generation (``generate``, ``generate_stream``) the fallback decision
and the shadow comparison of token sequences.

The call path is a dict lookup (model -> state), one ``RouteSelector.pick`` and one dict lookup
(route -> client); the store is only touched the first time a model is called (to subscribe) and
on the error path (to list what is published). Route tables arrive through a store listener on the
store's thread and replace the model's state in one assignment, so a call sees either the old
revision or the new one, never a mix; the next call after the listener fired uses the new one.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

import blade_aspect
from config_store import ConfigItem, ConfigStore, ConfigStoreError, open_store
from eas_client import (
    ClientMetrics,
    EasClientError,
    GenerateResult,
    NoInstanceAvailable,
    ServerError,
    TransportError,
)

from ._compare import compare_outputs
from ._errors import InvalidRouteTable, ModelNotFound
from ._routes import Route, RouteTable, Signature, parse_route_table
from ._selector import RouteSelector
from ._signature import check_inputs
from ._strings import StringInputs, decode_outputs, string_inputs, to_arrays

__all__ = ["GROUP", "InputValue", "Inputs", "Outputs"]

log = logging.getLogger("autoai.sdk")

GROUP = "models"
"""The store group of route tables (one document per model)."""

InputValue = np.ndarray[Any, Any] | str | bytes | Sequence[Any]
"""An input's value: a numpy array; for a BYTES input also a ``str`` or ``bytes`` (one row) or a
list or tuple of them (nested for a higher rank)."""
Inputs = Mapping[str, InputValue]
Outputs = dict[str, np.ndarray]

# Shadow calls whose rows agree at least this much (and whose numeric outputs have at least this
# cosine) count as agreeing calls in autoai_client_shadow_requests_total.
_AGREE = 0.99


@dataclass(frozen=True, slots=True)
class _Routing:
    """One revision of a model's route table, ready for calls (replaced as a whole)."""

    table: RouteTable
    selector: RouteSelector
    signature: Signature  # table.signature, one slot read away on the call path
    strings: StringInputs  # its BYTES inputs, for turning text into arrays


class _Subscription:
    """A model's listener and its current routing (None: not published)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.routing: _Routing | None = None
        self.first = threading.Event()
        self.error: InvalidRouteTable | None = None
        self.handle: Any = None


class _BaseModelClient:
    """Routing state and policy; subclasses only call clients (blocking or awaiting)."""

    _asynchronous = False

    def __init__(
        self,
        store: str | ConfigStore,
        *,
        token: str | None = None,
        timeout: float = 5.0,
        registry: Any = None,
        subscribe_timeout: float = 10.0,
        snapshot_dir: str | None = None,
        retire_after: float = 30.0,
        decode_bytes: bool = True,
        **client_options: Any,
    ) -> None:
        """Args:
        store: the store URL (``zk://...`` or ``sqlite:///...``; opened and owned) or an open
            ``ConfigStore`` (shared, not closed).
        token: the services' token, sent with every call.
        timeout: seconds per call, retries included (``predict(timeout=)`` overrides).
        registry: the prometheus_client registry of the client-side metrics (default: the
            global one).
        subscribe_timeout: how long the first call of a model waits for its route table.
        snapshot_dir: the store's local snapshot directory, when opening by URL.
        retire_after: seconds a route's client lives on after a revision dropped the route (calls
            still in flight finish), before it is closed.
        decode_bytes: give BYTES outputs back as ``str`` (each output whose elements are all
            UTF-8; one that is not stays ``bytes``). False: always ``bytes``, as sent (binary
            payloads such as images that might happen to be valid UTF-8).
        **client_options: passed to every ``EasClient`` (``max_attempts``, ``binary``,
            ``transport``, ``retry_budget``, ...).
        """
        if isinstance(store, str):
            options: dict[str, Any] = {}
            if snapshot_dir is not None:
                options["snapshot_dir"] = snapshot_dir
            self._store = open_store(store, **options)
            self._owns_store = True
        else:
            self._store = store
            self._owns_store = False
        self._token = token
        self._timeout = timeout
        self._subscribe_timeout = subscribe_timeout
        self._client_options = client_options
        self._metrics = ClientMetrics(registry)
        self._subscriptions: dict[str, _Subscription] = {}
        self._clients: dict[tuple[str, ...], Any] = {}
        # Keys of the clients each client was built with (a blade client's fallback): retiring
        # one retires its dependents too, so that none keeps calling through a closed client.
        self._depends: dict[tuple[str, ...], set[tuple[str, ...]]] = {}
        self._retire_after = retire_after
        self._decode_bytes = decode_bytes
        self._retired: list[tuple[float, Any]] = []  # (close at, client), oldest first
        self._lock = threading.RLock()
        self._closed = False

    # -- route tables ---------------------------------------------------------------------

    def _subscribe(self, model: str) -> _Subscription:
        """Start watching a model's route table (first call of the model), and wait for it."""
        with self._lock:
            sub = self._subscriptions.get(model)
            if sub is None:
                sub = _Subscription(model)
                self._subscriptions[model] = sub
                sub.handle = self._store.add_listener(
                    model, functools.partial(self._on_table, sub), group=GROUP
                )
        sub.first.wait(self._subscribe_timeout)
        return sub

    def _on_table(self, sub: _Subscription, item: ConfigItem | None) -> None:
        """Listener: parse a new revision once and swap it in (runs on the store's thread)."""
        try:
            if item is None:
                sub.routing = None
                sub.error = None
                return
            try:
                table = parse_route_table(item.content, revision=item.revision)
            except InvalidRouteTable as exc:
                # Keep serving the last good revision; a call on a never-valid model says why.
                log.error(
                    "route table of %s revision %s refused: %s", sub.model, item.revision, exc
                )
                sub.error = exc
                return
            old = sub.routing
            sub.routing = _Routing(
                table, RouteSelector(table), table.signature, string_inputs(table.signature)
            )
            sub.error = None
            self._export_revision(old.table if old else None, table)
            self._retire_stale(table)
        finally:
            sub.first.set()

    def _export_revision(self, old: RouteTable | None, new: RouteTable) -> None:
        """``autoai_client_route_revision``: one series per route of the table in use."""
        gauge = self._metrics.route_revision
        current = {(new.model, r.version, r.processor) for r in new.routes}
        for route in old.routes if old else ():
            labels = (new.model, route.version, route.processor)
            if labels not in current:
                try:
                    gauge.remove(*labels)
                except KeyError:
                    pass
        for labels in current:
            gauge.labels(*labels).set(new.revision)

    def _routing(self, model: str) -> _Routing:
        sub = self._subscriptions.get(model)
        if sub is None or not sub.first.is_set():
            sub = self._subscribe(model)  # first call of the model, or racing it: wait
        routing = sub.routing
        if routing is None:
            if sub.error is not None:
                raise sub.error
            raise ModelNotFound(model, self._published())
        return routing

    def _published(self) -> list[str]:
        try:
            return self._store.keys(GROUP)
        except ConfigStoreError:
            return [m for m, s in self._subscriptions.items() if s.routing is not None]

    def _route(
        self, model: str, inputs: Inputs, key: str | bytes | None, version: str | None
    ) -> tuple[_Routing, Route, Mapping[str, Any]]:
        """The routing, the route, and the inputs as arrays (text turned into BYTES arrays),
        checked against the signature."""
        routing = self._routing(model)
        route = routing.table.route(version) if version is not None else routing.selector.pick(key)
        arrays = to_arrays(inputs, routing.strings)
        check_inputs(routing.signature, arrays)
        return routing, route, arrays

    def _generate_route(
        self,
        model: str,
        key: str | bytes | None,
        version: str | None,
        max_new_tokens: int | None,
        num_beams: int,
        timeout_s: float | None,
        request_id: str | None,
    ) -> tuple[_Routing, Route, dict[str, Any]]:
        """The routing, the route and the version client's keyword arguments of a generate
        call: routed as ``predict`` (split, sticky key, pinned version); the audio is checked by
        ``eas_client``, not against the signature."""
        routing = self._routing(model)
        route = routing.table.route(version) if version is not None else routing.selector.pick(key)
        options: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "num_beams": num_beams,
            "timeout_s": timeout_s,
            "request_id": request_id,
        }
        return routing, route, options

    def _fallback(self, table: RouteTable, route: Route, error: EasClientError) -> Route | None:
        """The route to send a failed generate call to instead, counted (or ``None``).

        Only a blade route names one (its ``fallback_version``), and only when the blade
        service could not answer: no live instance, a transport error or a 5xx after the
        retries (4xx are about the request and would fail there as well). Streams ask only
        while no chunk has been handed to the caller.
        """
        version = route.blade.fallback_version if route.blade is not None else None
        if not version or not blade_aspect.is_blade(route):
            return None
        unavailable = isinstance(error, NoInstanceAvailable | TransportError) or (
            isinstance(error, ServerError) and error.status_code >= 500
        )
        if not unavailable:
            return None
        labels = (table.model, route.version, route.processor, "blade_unavailable")
        self._metrics.fallbacks.labels(*labels).inc()
        log.info(
            "generate on %s %s failed (%s); falling back to version %s",
            *(table.model, route.version, error, version),
        )
        return table.route(version)

    def _compare_generated(
        self,
        table: RouteTable,
        route: Route,
        primary: GenerateResult,
        shadow: GenerateResult | None,
    ) -> None:
        """Record one shadow comparison of a generate call: agree when the shadow produced the
        same tokens, disagree otherwise (``shadow`` None: the shadow call failed)."""
        if shadow is None:
            outcome = "error"
        else:
            outcome = "agree" if shadow.tokens == primary.tokens else "disagree"
        self._count_shadow(table, route, outcome)

    def _finish(self, outputs: Outputs) -> Outputs:
        """What ``predict`` returns: BYTES outputs decoded to ``str`` unless told not to."""
        return decode_outputs(outputs) if self._decode_bytes else outputs

    # -- clients --------------------------------------------------------------------------

    @staticmethod
    def _key(model: str, route: Route) -> tuple[str, ...]:
        # serving_key (version, service, processor, blade JSON) is computed at parse time.
        return (model, *route.serving_key)

    def _client(self, table: RouteTable, route: Route) -> Any:
        """The client of a route, made once per (model, version, service, processor, blade)."""
        key = self._key(table.model, route)
        client = self._clients.get(key)
        if client is not None:
            return client
        with self._lock:
            client = self._clients.get(key)
            if client is None:
                client = self._make_client(table, route, key)
                self._clients[key] = client
        return client

    def _make_client(self, table: RouteTable, route: Route, key: tuple[str, ...]) -> Any:
        cls = blade_aspect.on_call(route, asynchronous=self._asynchronous)

        def resolve(version: str) -> Any:
            other = table.route(version)
            self._depends.setdefault(self._key(table.model, other), set()).add(key)
            return self._client(table, other)

        extra = blade_aspect.call_options(route, resolve)
        return cls(
            store=self._store,
            service=route.service,
            token=self._token,
            timeout=self._timeout,
            metrics=self._metrics,
            labels={"model": table.model, "version": route.version, "processor": route.processor},
            **self._client_options,
            **extra,
        )

    def _retire_stale(self, table: RouteTable) -> None:
        """Set aside the clients of ``table.model`` that the new revision no longer routes to
        (and the clients built on them); they are closed ``retire_after`` seconds later."""
        live = {self._key(table.model, r) for r in table.routes}
        if table.shadow is not None:
            live.add(self._key(table.model, table.shadow.route))
        with self._lock:
            stale = [k for k in self._clients if k[0] == table.model and k not in live]
            seen: set[tuple[str, ...]] = set()
            while stale:
                key = stale.pop()
                if key in seen:
                    continue
                seen.add(key)
                stale.extend(self._depends.pop(key, ()))
                client = self._clients.pop(key, None)
                if client is not None:
                    self._retired.append((time.monotonic() + self._retire_after, client))

    def _due(self) -> list[Any]:
        """Retired clients whose grace period is over (taken out of the list)."""
        if not self._retired:
            return []
        now = time.monotonic()
        with self._lock:
            due = [c for t, c in self._retired if t <= now]
            self._retired = [(t, c) for t, c in self._retired if t > now]
        return due

    # -- shadow ---------------------------------------------------------------------------

    def _shadow_route(self, routing: _Routing, version: str | None) -> Route | None:
        """The shadow route when this call should be mirrored (never for pinned calls)."""
        shadow = routing.table.shadow
        if shadow is None or version is not None or not routing.selector.shadow_due():
            return None
        return shadow.route

    def _compare(
        self, table: RouteTable, route: Route, primary: Outputs, shadow: Outputs | None
    ) -> None:
        """Record one shadow comparison (``shadow`` None: the shadow call failed): the cosine of
        the numeric outputs, the agreeing and disagreeing rows of each BYTES output, and the call's
        outcome (agree when cosine, top-1 and label agreement all reach ``_AGREE``)."""
        if shadow is None:
            self._count_shadow(table, route, "error")
            return
        result = compare_outputs(primary, shadow)
        labels = (table.model, route.version, route.processor)
        if result.cosine is not None:
            self._metrics.shadow_agreement.labels(*labels).observe(result.cosine)
        rows = self._metrics.shadow_label_agreement
        for output in result.labels:
            rows.labels(*labels, output.output, "agree").inc(output.agreeing)
            rows.labels(*labels, output.output, "disagree").inc(output.rows - output.agreeing)
        agree = all(
            value is None or value >= _AGREE
            for value in (result.cosine, result.top1_agreement, result.label_agreement)
        )
        self._count_shadow(table, route, "agree" if agree else "disagree")

    def _count_shadow(self, table: RouteTable, route: Route, outcome: str) -> None:
        """``autoai_client_shadow_requests_total``: agree, disagree, error or dropped."""
        labels = (table.model, route.version, route.processor, outcome)
        self._metrics.shadow_requests.labels(*labels).inc()

    # -- lifecycle ------------------------------------------------------------------------

    def routes(self, model: str) -> RouteTable:
        """The route table a call of ``model`` uses now (subscribing on first use).

        Raises:
            ModelNotFound: nothing is published for the model.
        """
        return self._routing(model).table

    def _cancel(self) -> list[Any]:
        """Stop the listeners; return the clients to close."""
        with self._lock:
            self._closed = True
            for sub in self._subscriptions.values():
                if sub.handle is not None:
                    sub.handle.cancel()
            clients = list(self._clients.values()) + [c for _, c in self._retired]
            self._clients.clear()
            self._retired.clear()
        return clients

    def _close_store(self) -> None:
        if self._owns_store:
            self._store.close()
