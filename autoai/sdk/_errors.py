"""The one exception hierarchy of ``autoai.sdk``; callers need a single ``except ModelClientError``.

```
ModelClientError
  ├── ModelNotFound        no route table is published for the model (also a LookupError)
  ├── VersionNotFound      the model's route table has no such version (also a LookupError)
  ├── InvalidInput         the inputs do not match the model's signature (also a ValueError)
  └── InvalidRouteTable    the published route table cannot be used (also a ValueError)
```

Errors of the transport are not wrapped: ``eas_client.NoInstanceAvailable`` (no live instance of
the routed service) and the other ``eas_client.EasClientError`` subclasses reach the caller as the
transport raised them, so that one ``except eas_client.EasClientError`` covers the serving side
whichever client made the call. ``autoai.sdk`` errors describe the routing side: what is published
and what the caller asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

__all__ = [
    "InvalidInput",
    "InvalidRouteTable",
    "ModelClientError",
    "ModelNotFound",
    "VersionNotFound",
]


def _listing(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


class ModelClientError(Exception):
    """Base class of every error raised by ``autoai.sdk``."""


class ModelNotFound(ModelClientError, LookupError):
    """No route table is published for the model.

    Attributes:
        model: the model that was asked for.
        published: the models that are published, sorted.
    """

    def __init__(self, model: str, published: Iterable[str]):
        self.model = model
        self.published: list[str] = sorted(published)
        if self.published:
            tail = f"published models: {_listing(self.published)}"
        else:
            tail = "no model is published"
        super().__init__(f"model {model!r} is not published; {tail}")


class VersionNotFound(ModelClientError, LookupError):
    """The model's route table has no route for the version.

    Attributes:
        model: the model.
        version: the version that was asked for.
        available: the versions the route table has, in table order.
    """

    def __init__(self, model: str, version: str, available: Sequence[str]):
        self.model = model
        self.version = version
        self.available: list[str] = list(available)
        super().__init__(
            f"model {model!r} has no version {version!r}; versions: {_listing(self.available)}"
        )


class InvalidInput(ModelClientError, ValueError):
    """The inputs of a call do not match the model's signature; nothing was sent.

    Attributes:
        problems: one line per problem, each naming the input, what it was and what was expected,
            for example ``input 'input_ids': datatype FP32, expected INT64``.
        model: the model that was called, when known.
    """

    def __init__(self, problems: Sequence[str], *, model: str | None = None):
        self.problems: tuple[str, ...] = tuple(problems)
        self.model = model
        head = f"invalid inputs for model {model!r}" if model is not None else "invalid inputs"
        super().__init__(f"{head}: {'; '.join(self.problems)}")


class InvalidRouteTable(ModelClientError, ValueError):
    """A published route table cannot be used: which field, and why.

    Attributes:
        field: where in the document, as a path such as ``routes[1].weight`` or
            ``shadow.ratio``; ``(document)`` for the document as a whole.
        reason: what is wrong with it, and what was expected.
        model: the model, when known (from the caller or from the document).
        revision: the revision of the document, when known.
    """

    def __init__(
        self,
        field: str,
        reason: str,
        *,
        model: str | None = None,
        revision: int | None = None,
    ):
        self.field = field
        self.reason = reason
        self.model = model
        self.revision = revision
        where = "route table"
        if model is not None:
            where += f" of model {model!r}"
        if revision is not None:
            where += f" (revision {revision})"
        super().__init__(f"{where}: {field}: {reason}")
