"""Publishing route tables: validate, build entries with ``blade_aspect.on_publish``, one CAS write.

A publish names routes ``[{version, weight}]``, an optional ``sticky_key`` and ``shadow``; every
version must be deployed with at least one live instance, the weights must give traffic somewhere,
and all versions must take the same inputs. The table is checked with the SDK's own parser before
it is written, so no SDK can refuse what the control plane accepted. A rejected publish writes
nothing; a stale ``expected_revision`` is a conflict. Rollback republishes an earlier revision's
table (the store keeps history).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import blade_aspect
from autoai.sdk import InvalidRouteTable, parse_route_table
from config_store import ConfigStore, Conflict as StoreConflict

from .deployments import DeploymentService, traffic_versions
from .errors import Conflict, InvalidRequest, NotFound
from .repository import ModelRepository, validate_name

__all__ = ["ReleaseService"]

GROUP = "models"


def _inputs(signature: Mapping[str, Any]) -> list[tuple[str, str, int]]:
    return sorted((t["name"], t["datatype"], len(t["shape"])) for t in signature["inputs"])


class ReleaseService:
    """Publish, list and roll back a model's route tables."""

    def __init__(
        self, store: ConfigStore, repository: ModelRepository, deployments: DeploymentService
    ):
        self.store = store
        self.repository = repository
        self.deployments = deployments

    def _ready_deployment(self, name: str, version: str) -> dict[str, Any]:
        try:
            deployment = self.deployments.get(name, version)
        except NotFound as exc:
            raise InvalidRequest(
                f"version {version!r} of {name!r} is not deployed: deploy it before publishing",
                {"version": version},
            ) from exc
        if not deployment["endpoints"]:
            raise InvalidRequest(
                f"version {version!r} of {name!r} has no live instance: nothing would answer",
                {"version": version},
            )
        return deployment

    def publish(self, name: str, request: Mapping[str, Any], *, who: str = "api") -> dict[str, Any]:
        """Validate and publish a route table; returns ``{"revision", "table"}``.

        Raises:
            InvalidRequest: malformed routes, undeployed or dead versions, incompatible inputs.
            NotFound: no such model.
            Conflict: ``expected_revision`` is not the current revision.
        """
        model = self.repository.model(validate_name(name))
        routes = request.get("routes")
        if not isinstance(routes, list) or not routes:
            raise InvalidRequest("routes must be a non-empty list of {version, weight}")
        versions = [str(r.get("version")) if isinstance(r, Mapping) else "" for r in routes]
        if len(set(versions)) != len(versions):
            raise InvalidRequest(f"each version may appear once in routes, got {versions}")
        shadow = request.get("shadow")
        if shadow is not None and (
            not isinstance(shadow, Mapping) or "version" not in shadow or "ratio" not in shadow
        ):
            raise InvalidRequest("shadow must be null or {version, ratio}")
        wanted = list(versions) + (
            [str(shadow["version"])] if shadow and str(shadow["version"]) not in versions else []
        )
        deployments = {v: self._ready_deployment(name, v) for v in wanted}
        signatures = {v: self.repository.version(name, v).signature for v in wanted}
        first = _inputs(signatures[wanted[0]])
        for v in wanted[1:]:
            if _inputs(signatures[v]) != first:
                raise InvalidRequest(
                    f"version {v!r} takes other inputs than {wanted[0]!r}: "
                    f"{_inputs(signatures[v])} against {first}",
                    {"version": v},
                )
        plain = [
            str(r["version"])
            for r in sorted(routes, key=lambda r: -int(r.get("weight", 0) or 0))
            if not blade_aspect.is_blade(deployments[str(r["version"])])
        ]
        entries = []
        requested = [
            *routes,
            *([{"version": wanted[-1], "weight": 0}] if len(wanted) > len(versions) else []),
        ]
        for route in requested:
            version = str(route["version"])
            fallback = next((p for p in plain if p != version), None)
            try:
                entries.append(
                    blade_aspect.on_publish(
                        {**route, "version": version},
                        deployments[version],
                        fallback_version=fallback,
                    )
                )
            except blade_aspect.AspectError as exc:
                raise InvalidRequest(str(exc)) from exc
        table = {
            "schema_version": 1,
            "model": model.name,
            "revision": 0,
            "routes": entries,
            "sticky_key": request.get("sticky_key"),
            "shadow": dict(shadow) if shadow else None,
            "signature": signatures[wanted[0]],
            "published_by": who,
            "reason": request.get("reason"),
            "published_at": time.time(),
        }
        content = json.dumps(table).encode()
        try:
            parse_route_table(content, model=model.name)
        except InvalidRouteTable as exc:
            raise InvalidRequest(f"the route table would be refused by SDKs: {exc}") from exc
        return {
            "revision": self._write(name, content, request.get("expected_revision")),
            "table": table,
        }

    def _write(self, name: str, content: bytes, expected: Any) -> int:
        if expected is not None and (not isinstance(expected, int) or isinstance(expected, bool)):
            raise InvalidRequest(f"expected_revision is {expected!r}, expected an integer or null")
        try:
            return self.store.publish(name, content, group=GROUP, expected_revision=expected)
        except StoreConflict as exc:
            raise Conflict(str(exc), {"expected_revision": expected}) from exc

    def releases(self, name: str, limit: int = 20) -> list[dict[str, Any]]:
        """Published revisions, newest first, with who, when, why and the weights."""
        self.repository.model(validate_name(name))
        out = []
        for item in self.store.history(name, group=GROUP, limit=limit):
            doc = json.loads(item.content)
            out.append(
                {
                    "revision": item.revision,
                    "modified": item.modified.timestamp(),
                    "routes": {r["version"]: r["weight"] for r in doc.get("routes", [])},
                    "sticky_key": doc.get("sticky_key"),
                    "shadow": doc.get("shadow"),
                    "published_by": doc.get("published_by"),
                    "reason": doc.get("reason"),
                }
            )
        return out

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
        doc = json.loads(target.content)
        for version in sorted(traffic_versions(doc)):
            self._ready_deployment(name, version)  # it would send calls to nothing
        doc.update(
            published_by=who,
            reason=f"rollback to revision {target.revision}",
            published_at=time.time(),
        )
        return self._write(name, json.dumps(doc).encode(), current.revision)
