"""Publishing route tables: check the request, build entries with ``blade_aspect.on_publish``,
one CAS write.

A publish (``autoai.schema.PublishRequest``, already well-formed) names routes
``[{version, weight}]``, an optional ``sticky_key`` and ``shadow``; every version must be deployed
with at least one live instance and all versions must take the same inputs. The table is an
``autoai.schema.RouteTable``, the model the SDK parses with, so it is validated by construction:
no SDK can refuse what the control plane wrote. A rejected publish writes nothing; a stale
``expected_revision`` is a conflict. Rollback republishes an earlier revision's table (the store
keeps history).
"""

from __future__ import annotations

import time

from pydantic import ValidationError

import blade_aspect
from config_store import ConfigItem, ConfigStore, Conflict as StoreConflict

from .deployments import DeploymentService
from .errors import Conflict, InvalidRequest, NotFound
from .repository import ModelRepository, validate_name
from .schema import (
    SCHEMA_VERSION,
    Deployment,
    PublishRequest,
    PublishResult,
    PublishRoute,
    Release,
    ReleaseList,
    RouteEntry,
    RouteTable,
    Shadow,
    Signature,
    describe_error,
)

__all__ = ["ReleaseService"]

GROUP = "models"


def _inputs(signature: Signature) -> list[tuple[str, str, int]]:
    return sorted((t.name, t.datatype, len(t.shape)) for t in signature.inputs)


def _table(item: ConfigItem) -> RouteTable:
    """A stored revision's table (every one was validated when it was written)."""
    try:
        return RouteTable.model_validate_json(item.content, context={"revision": item.revision})
    except ValidationError as exc:
        where, reason = describe_error(exc)
        raise InvalidRequest(
            f"revision {item.revision} is not a valid route table: {where}: {reason}"
        ) from exc


class ReleaseService:
    """Publish, list and roll back a model's route tables."""

    def __init__(
        self, store: ConfigStore, repository: ModelRepository, deployments: DeploymentService
    ):
        self.store = store
        self.repository = repository
        self.deployments = deployments

    def _ready_deployment(self, name: str, version: str) -> Deployment:
        try:
            deployment = self.deployments.get(name, version)
        except NotFound as exc:
            raise InvalidRequest(
                f"version {version!r} of {name!r} is not deployed: deploy it before publishing",
                {"version": version},
            ) from exc
        if not deployment.endpoints:
            raise InvalidRequest(
                f"version {version!r} of {name!r} has no live instance: nothing would answer",
                {"version": version},
            )
        return deployment

    def publish(self, name: str, request: PublishRequest, *, who: str = "api") -> PublishResult:
        """Check and publish a route table as the next revision.

        Raises:
            InvalidRequest: undeployed or dead versions, incompatible inputs, or a table the
                route-table rules refuse (a shadow version with traffic, a fallback loop...).
            NotFound: no such model.
            Conflict: ``expected_revision`` is not the current revision.
        """
        model = self.repository.model(validate_name(name))
        requested = list(request.routes)
        shadow = request.shadow
        if shadow is not None and all(r.version != shadow.version for r in requested):
            requested.append(PublishRoute(version=shadow.version, weight=0))
        versions = [r.version for r in requested]
        deployments = {v: self._ready_deployment(name, v) for v in versions}
        signatures = {
            v: Signature.model_validate(self.repository.version(name, v).signature)
            for v in versions
        }
        first = _inputs(signatures[versions[0]])
        for v in versions[1:]:
            if _inputs(signatures[v]) != first:
                raise InvalidRequest(
                    f"version {v!r} takes other inputs than {versions[0]!r}: "
                    f"{_inputs(signatures[v])} against {first}",
                    {"version": v},
                )
        plain = [
            r.version
            for r in sorted(request.routes, key=lambda r: -r.weight)
            if not blade_aspect.is_blade(deployments[r.version])
        ]
        entries: list[RouteEntry] = []
        for route in requested:
            fallback = next((p for p in plain if p != route.version), None)
            try:
                entries.append(
                    blade_aspect.on_publish(
                        route, deployments[route.version], fallback_version=fallback
                    )
                )
            except blade_aspect.AspectError as exc:
                raise InvalidRequest(str(exc)) from exc
        try:
            table = RouteTable(
                schema_version=SCHEMA_VERSION,
                model=model.name,
                revision=0,  # the store's counter is the revision readers see
                routes=tuple(entries),
                sticky_key=request.sticky_key,
                shadow=None
                if shadow is None
                else Shadow(version=shadow.version, ratio=shadow.ratio),
                signature=signatures[versions[0]],
                published_by=who,
                reason=request.reason,
                published_at=time.time(),
            )
        except ValidationError as exc:
            where, reason = describe_error(exc)
            raise InvalidRequest(f"the route table is invalid: {where}: {reason}") from exc
        revision = self._write(name, table.to_content(), request.expected_revision)
        return PublishResult(revision=revision, table=table)

    def _write(self, name: str, content: bytes, expected: int | None) -> int:
        try:
            return self.store.publish(name, content, group=GROUP, expected_revision=expected)
        except StoreConflict as exc:
            raise Conflict(str(exc), {"expected_revision": expected}) from exc

    def releases(self, name: str, limit: int = 20) -> ReleaseList:
        """Published revisions, newest first, with who, when, why and the weights."""
        self.repository.model(validate_name(name))
        out = []
        for item in self.store.history(name, group=GROUP, limit=limit):
            table = _table(item)
            out.append(
                Release(
                    revision=item.revision,
                    modified=item.modified.timestamp(),
                    routes={r.version: r.weight for r in table.routes},
                    sticky_key=table.sticky_key,
                    shadow=table.shadow,
                    published_by=table.published_by,
                    reason=table.reason,
                )
            )
        return ReleaseList(releases=out)

    def rollback(self, name: str, revision: int | None = None, *, who: str = "api") -> int:
        """Republish an earlier revision's table (default: the one before the current).

        Raises:
            NotFound: no such model, or no such (or no earlier) revision.
            InvalidRequest: that revision routes to a version no longer deployed.
        """
        self.repository.model(validate_name(name))
        history = self.store.history(name, group=GROUP, limit=100)
        if not history:
            raise NotFound(f"model {name!r} has never been published")
        current = history[0]
        if revision is None:
            if len(history) < 2:
                raise NotFound(f"model {name!r} has no earlier revision to roll back to")
            target = history[1]
        else:
            found = [h for h in history if h.revision == revision]
            if not found:
                raise NotFound(
                    f"model {name!r} has no revision {revision} in its history",
                    {"revisions": [h.revision for h in history]},
                )
            target = found[0]
        table = _table(target)
        for version in sorted(table.traffic_versions):
            self._ready_deployment(name, version)  # it would send calls to nothing
        again = table.model_copy(
            update={
                "published_by": who,
                "reason": f"rollback to revision {target.revision}",
                "published_at": time.time(),
            }
        )
        return self._write(name, again.to_content(), current.revision)
