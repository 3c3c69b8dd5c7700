"""The two kinds of document the control plane exchanges.

- ``Request``: a body a caller sends (publish, rollback, deploy, scale). Unknown fields are
  refused, so a misspelt field is a 422 that names it, never silently ignored.
- ``Document``: what the control plane writes for others to read (route tables, deployment
  records, jobs, model versions). Unknown fields are ignored, so that a reader built before a field
  was added still reads the newer document.

Both are frozen: a parsed document is a value.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

__all__ = ["Document", "Request"]


class Request(BaseModel):
    """A request body: frozen, unknown fields refused."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Document(BaseModel):
    """A stored or returned document: frozen, unknown fields ignored."""

    model_config = ConfigDict(frozen=True, extra="ignore")
