"""Read the instances' ``/metrics`` (the only I/O of the server side; parsing is ``_prom``)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

from ._prom import ServerSnapshot, parse_metrics

__all__ = ["Scraper"]


class Scraper:
    """Scrapes ``/metrics`` of instance base URLs concurrently.

    Args:
        timeout: seconds per scrape; an instance that does not answer in time is left out.
        transport: an httpx transport (tests).
    """

    def __init__(self, *, timeout: float = 2.0, transport: httpx.AsyncBaseTransport | None = None):
        self._http = httpx.AsyncClient(timeout=timeout, transport=transport, trust_env=False)

    async def _one(self, url: str) -> ServerSnapshot | None:
        try:
            answer = await self._http.get(f"{url}/metrics")
            if answer.status_code != 200:
                return None
            return parse_metrics(answer.text)
        except (httpx.HTTPError, ValueError):
            return None

    async def scrape(self, urls: Sequence[str]) -> tuple[dict[str, ServerSnapshot], list[str]]:
        """The snapshot of every instance that answered, and the URLs of those that did not."""
        found = await asyncio.gather(*(self._one(u) for u in urls))
        snapshots = {u: s for u, s in zip(urls, found, strict=True) if s is not None}
        return snapshots, [u for u, s in zip(urls, found, strict=True) if s is None]

    async def aclose(self) -> None:
        await self._http.aclose()
