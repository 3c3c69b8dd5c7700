"""A model's route table as the SDK reads it: the control plane's own models (``autoai.schema``).

The control plane publishes one document per model (``/config/models/{name}``, see
ARCHITECTURE.md "Route table") built with ``autoai.schema.RouteTable``; the SDK parses each new
revision with the same model, once, off the call path, and builds a ``RouteSelector`` from it. So
a table one side accepts the other accepts too, and every rule (listed in ``autoai.schema``'s
``_routes`` module) is written once. A bad publish fails loudly with the field at fault
(``InvalidRouteTable``) instead of misrouting traffic; keys the model does not know are ignored.

What the call path reads is precomputed at parse time: each input's numpy dtype and fixed dims
(``TensorSpec``), each route's client key (``Route.serving_key``) and the version -> route map
behind ``RouteTable.route``.
"""

from __future__ import annotations

import orjson
from pydantic import ValidationError

from autoai.schema import (
    BladeMeta,
    RouteEntry,
    RouteTable as _RouteTable,
    Shadow,
    Signature,
    TensorSpec,
    describe_error,
)

from ._errors import InvalidRouteTable, VersionNotFound

__all__ = [
    "BladeMeta",
    "Route",
    "RouteTable",
    "Shadow",
    "Signature",
    "TensorSpec",
    "parse_route_table",
]

Route = RouteEntry
"""One version of a model and where it is served (``autoai.schema.RouteEntry``)."""


class RouteTable(_RouteTable):
    """A model's validated route table at one revision; build it with ``parse_route_table``.

    ``autoai.schema.RouteTable`` whose ``route`` raises the SDK's ``VersionNotFound``.
    """

    def route(self, version: str) -> Route:
        """The route of a version (pinning a call to it).

        Raises:
            VersionNotFound: the table has no such version; the error lists the ones it has.
        """
        try:
            return self._by_version[version]
        except KeyError:
            raise VersionNotFound(self.model, version, self.versions) from None


def parse_route_table(
    content: bytes, *, revision: int | None = None, model: str | None = None
) -> RouteTable:
    """Parse and validate a published route table document.

    Args:
        content: the document, JSON (UTF-8).
        revision: the store item's revision; when given it wins over the document's ``revision``
            (the store's counter is the one every reader agrees on).
        model: the model the document is published under; when given, the document's ``model``
            must match it.

    Returns:
        The route table.

    Raises:
        InvalidRouteTable: the document cannot be used; the error names the field and why.
    """
    try:
        doc = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        raise InvalidRouteTable(
            "(document)", f"not valid JSON: {exc}", model=model, revision=revision
        ) from exc
    try:
        table = RouteTable.model_validate(doc, context={"revision": revision})
    except ValidationError as exc:
        where, reason = describe_error(exc)
        if isinstance(doc, dict):  # name what is known of the document
            named = doc.get("model")
            if model is None and isinstance(named, str) and named:
                model = named
            number = doc.get("revision")
            if revision is None and type(number) is int and number >= 0:
                revision = number
        raise InvalidRouteTable(where, reason, model=model, revision=revision) from exc
    if model is not None and table.model != model:
        raise InvalidRouteTable(
            "model",
            f"the document is for model {table.model!r}, published as {model!r}",
            model=model,
            revision=table.revision if revision is None else revision,
        )
    if revision is not None and table.revision != revision:
        table = table.model_copy(update={"revision": revision})
    return table
