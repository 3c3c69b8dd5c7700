"""``BladeClient`` and ``AsyncBladeClient``: an ``EasClient`` that knows its route's blade profile.

Everything about transport (discovery, balancing, retries, timeouts, token, metrics) is the
``eas_client`` base class's; this layer only decides, per request, whether the blade engine can
take it (``BladeProfile.plan``), and falls back to the plain route when it cannot or when every
blade instance failed. The two classes share the decisions and differ only in how they wait.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eas_client import (
    AsyncEasClient,
    ClientMetrics,
    EasClient,
    EasClientError,
    NoInstanceAvailable,
    ServerError,
    TransportError,
)

from ._errors import OutsideProfile
from ._profile import BladeProfile, Plan, merge_outputs

__all__ = ["AsyncBladeClient", "BladeClient"]

Outputs = dict[str, np.ndarray]


def _blade_failed(exc: EasClientError) -> bool:
    """Whether an error means the blade service could not answer (so the plain route may).

    Transport errors, no live instance and 5xx answers do; 4xx answers are about the request
    and would fail on the plain route as well.
    """
    if isinstance(exc, NoInstanceAvailable | TransportError):
        return True
    return isinstance(exc, ServerError) and exc.status_code >= 500


class _BladeMixin:
    """What both blade clients hold: the profile, the fallback client and the fallback metric."""

    _profile: BladeProfile
    _fallback_counter: Any
    _fallback_labels: dict[str, str]

    def _setup(
        self,
        blade: Mapping[str, Any] | BladeProfile | None,
        labels: Mapping[str, str] | None,
        metrics: ClientMetrics | None,
    ) -> None:
        self._profile = blade if isinstance(blade, BladeProfile) else BladeProfile.from_meta(blade)
        self._fallback_counter = None
        if metrics is not None:
            values = {"model": "", "version": "", "processor": "blade", **dict(labels or {})}
            self._fallback_labels = values
            self._fallback_counter = metrics.fallbacks

    def _plan(self, inputs: Mapping[str, np.ndarray], has_fallback: bool) -> Plan:
        plan = self._profile.plan(inputs)
        if plan.fallback is not None and not has_fallback:
            raise OutsideProfile(f"{plan.fallback}, and the route has no fallback version")
        return plan

    def _count(self, reason: str) -> None:
        if self._fallback_counter is not None:
            self._fallback_counter.labels(**self._fallback_labels, reason=reason).inc()


class BladeClient(_BladeMixin, EasClient):
    """An ``EasClient`` for a blade service, with the route's profile and a plain fallback.

    ```python
    plain = EasClient(store=store, service="intent-cls-2")
    client = BladeClient(store=store, service="intent-cls-3-blade",
                         blade={"profiles": {"batch": [1, 32], "seq": [1, 128]}}, fallback=plain)
    client.infer({"input_ids": ids, "attention_mask": mask})
    ```

    A batch above the profile's maximum is sent in chunks (one after the other) and the outputs
    concatenated; a request outside the profile goes to ``fallback`` (reason ``profile``); when
    the blade service cannot answer (no live instance, transport errors, 5xx after the retries),
    the request goes to ``fallback`` too (reason ``blade_unavailable``). Both are counted in
    ``autoai_client_fallbacks_total``. The fallback client belongs to the caller (not closed here).

    Args:
        blade: the route's ``blade`` metadata (its ``profiles`` are read) or a profile.
        fallback: the client of the fallback (plain) route, or None for no fallback.
        **options: everything ``EasClient`` takes (``store``, ``service``, ``urls``, ...).
    """

    def __init__(
        self,
        *,
        blade: Mapping[str, Any] | BladeProfile | None = None,
        fallback: EasClient | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._fallback = fallback
        self._setup(blade, options.get("labels"), options.get("metrics"))

    def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Outputs:
        plan = self._plan(inputs, self._fallback is not None)
        if plan.fallback is not None:
            assert self._fallback is not None
            self._count("profile")
            return self._fallback.infer(inputs, outputs, timeout)
        try:
            parts = [super(BladeClient, self).infer(p, outputs, timeout) for p in plan.parts]
        except EasClientError as exc:
            if self._fallback is None or not _blade_failed(exc):
                raise
            self._count("blade_unavailable")
            return self._fallback.infer(inputs, outputs, timeout)
        return merge_outputs(parts)


class AsyncBladeClient(_BladeMixin, AsyncEasClient):
    """The asyncio twin of ``BladeClient``; the chunks of a split batch are sent concurrently."""

    def __init__(
        self,
        *,
        blade: Mapping[str, Any] | BladeProfile | None = None,
        fallback: AsyncEasClient | None = None,
        **options: Any,
    ) -> None:
        super().__init__(**options)
        self._fallback = fallback
        self._setup(blade, options.get("labels"), options.get("metrics"))

    async def infer(
        self,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        timeout: float | None = None,
    ) -> Outputs:
        plan = self._plan(inputs, self._fallback is not None)
        if plan.fallback is not None:
            assert self._fallback is not None
            self._count("profile")
            return await self._fallback.infer(inputs, outputs, timeout)
        send = super().infer
        try:
            if len(plan.parts) == 1:
                return await send(plan.parts[0], outputs, timeout)
            parts = await asyncio.gather(*(send(p, outputs, timeout) for p in plan.parts))
        except EasClientError as exc:
            if self._fallback is None or not _blade_failed(exc):
                raise
            self._count("blade_unavailable")
            return await self._fallback.infer(inputs, outputs, timeout)
        return merge_outputs(parts)
