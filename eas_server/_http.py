"""The one uvicorn configuration of eas-server's HTTP servers (the single process and each front
end process): httptools, no proxy headers, no access log, no lifespan, a long keep-alive, and a
graceful shutdown as long as the drain."""

from __future__ import annotations

from typing import Any

import uvicorn

__all__ = ["uvicorn_config"]


def uvicorn_config(app: Any, *, log_level: str, drain_timeout_s: float) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        http="httptools",
        proxy_headers=False,
        server_header=False,
        lifespan="off",
        access_log=False,
        log_level=log_level,
        timeout_keep_alive=60,
        timeout_graceful_shutdown=int(max(1, drain_timeout_s)),
        backlog=2048,
    )
