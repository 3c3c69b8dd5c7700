"""Route tables (``_table``) and the bodies that publish, list and roll them back.

The control plane's publish route takes a ``PublishRequest`` (unknown fields refused: a 422 that
names them), turns each route into a ``RouteEntry`` with ``blade_aspect.on_publish``, builds a
``RouteTable`` (which checks every rule at construction) and answers a ``PublishResult``; the SDK
parses each stored revision with the same ``RouteTable``.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)

from ._base import Document, Request
from ._checks import Text, describe_error, refuse
from ._table import (
    SCHEMA_VERSION,
    BladeMeta,
    RouteEntry,
    RouteTable,
    Shadow,
    Signature,
    TensorSpec,
)

__all__ = [
    "SCHEMA_VERSION",
    "BladeMeta",
    "PublishRequest",
    "PublishResult",
    "PublishRoute",
    "PublishShadow",
    "Release",
    "ReleaseList",
    "RollbackRequest",
    "RollbackResult",
    "RouteEntry",
    "RouteTable",
    "Shadow",
    "Signature",
    "TensorSpec",
    "describe_error",
]


def _version(value: Any) -> Any:
    """Versions are strings; a JSON integer is taken as its decimal form (never a boolean)."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


class PublishRoute(Request):
    """One route of a publish request."""

    version: Text = Field(description="A deployed version (an integer is taken as its digits).")
    weight: StrictInt = Field(ge=0, description="Its share of traffic, relative to the others'.")
    fallback_version: Text | None = Field(
        default=None,
        description="For a blade route: the version to fall back to (default: the plain route of "
        "the highest weight).",
    )

    @field_validator("version", "fallback_version", mode="before")
    @classmethod
    def _digits(cls, value: Any) -> Any:
        return _version(value)


class PublishShadow(Request):
    """The shadow of a publish request."""

    version: Text = Field(description="A deployed version to mirror calls to.")
    ratio: StrictFloat = Field(
        ge=0, le=1, allow_inf_nan=False, description="The fraction of calls mirrored, in [0, 1]."
    )

    @field_validator("version", mode="before")
    @classmethod
    def _digits(cls, value: Any) -> Any:
        return _version(value)


class PublishRequest(Request):
    """``POST /api/v1/models/{name}/publish``: the routes to publish as the next revision."""

    routes: list[PublishRoute] = Field(
        min_length=1, description="The routes: unique versions, at least one weight > 0."
    )
    sticky_key: Text | None = Field(
        default=None, description="Route calls with the same key to the same version."
    )
    shadow: PublishShadow | None = Field(default=None, description="Mirror calls to a version.")
    expected_revision: StrictInt | None = Field(
        default=None,
        description="Publish only if this is the current revision (compare-and-swap); "
        "null: whatever it is.",
    )
    reason: StrictStr | None = Field(default=None, description="Why, kept in the history.")
    allow_label_change: StrictBool = Field(
        default=False,
        description="Publish versions whose label sets differ from each other or from the "
        "published table's (otherwise refused); recorded in the table as label_change.",
    )

    @model_validator(mode="after")
    def _routes(self) -> PublishRequest:
        versions = [r.version for r in self.routes]
        if len(set(versions)) != len(versions):
            raise refuse(f"each version may appear once in routes, got {versions}", "routes")
        if not any(r.weight > 0 for r in self.routes):
            raise refuse("no route has a weight > 0: no version could take traffic", "routes")
        return self


class RollbackRequest(Request):
    """``POST /api/v1/models/{name}/rollback``."""

    revision: StrictInt | None = Field(
        default=None, description="The revision to republish; null: the one before the current."
    )


class PublishResult(Document):
    """What a publish answers."""

    revision: StrictInt = Field(description="The revision the table was published as.")
    table: RouteTable = Field(description="The table as published.")


class RollbackResult(Document):
    """What a rollback answers."""

    revision: StrictInt = Field(description="The new revision (a copy of the earlier table).")


class Release(Document):
    """One published revision of a model's route table, as the releases list shows it."""

    revision: StrictInt = Field(description="The store revision.")
    modified: float = Field(description="When it was written, in seconds since the epoch.")
    routes: dict[str, int] = Field(description="Version -> weight.")
    sticky_key: str | None = Field(default=None, description="The table's sticky key.")
    shadow: Shadow | None = Field(default=None, description="The table's shadow.")
    published_by: str | None = Field(default=None, description="Who published it.")
    reason: str | None = Field(default=None, description="Why.")
    labels: tuple[str, ...] | None = Field(
        default=None, description="The table's label set (null: its versions have none)."
    )
    label_change: bool = Field(
        default=False, description="Whether the publish said a change of labels was intended."
    )


class ReleaseList(Document):
    """``GET /api/v1/models/{name}/releases``: newest first."""

    releases: list[Release] = Field(description="The revisions, newest first.")
