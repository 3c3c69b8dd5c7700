"""Publishing route tables: check the request, build entries with ``blade_aspect.on_publish``,
one CAS write.

A publish (``autoai.schema.PublishRequest``, already well-formed) names routes
``[{version, weight}]``, an optional ``sticky_key`` and ``shadow``; every version must be deployed
with at least one live instance, and all versions must have the same signature: the same inputs
and outputs (names, datatypes, ranks, and fixed dims where both fix them), which for bundles is
the external signature (``text: BYTES`` in, ``label``/``score`` out). Bundles that answer with
labels (classify, slots) must also answer with the same label set as each other and as the
published table, unless the request says the change is intended (``allow_label_change``); the
table records its label set and whether this revision changed it (``label_change``). The table is an
``autoai.schema.RouteTable``, the model the SDK parses with, so it is validated by construction:
no SDK can refuse what the control plane wrote. A rejected publish writes nothing; a stale
``expected_revision`` is a conflict. Rollback republishes an earlier revision's table (the store
keeps history).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence

from pydantic import ValidationError

import blade_aspect
from config_store import ConfigItem, ConfigStore, Conflict as StoreConflict

from .deployments import DeploymentService
from .errors import Conflict, InvalidRequest, NotFound
from .repository import ModelRepository, validate_name
from .schema import (
    SCHEMA_VERSION,
    BundleInfo,
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
    TensorSpec,
    describe_error,
)

__all__ = ["ReleaseService"]

GROUP = "models"
log = logging.getLogger("autoai.releases")


def _compatible(ours: Sequence[TensorSpec], theirs: Sequence[TensorSpec]) -> bool:
    """The same tensors by name, datatype and rank, and no dim fixed differently by both."""
    mine = {t.name: t for t in ours}
    other = {t.name: t for t in theirs}
    if mine.keys() != other.keys():
        return False
    for name, a in mine.items():
        b = other[name]
        if a.datatype != b.datatype or len(a.shape) != len(b.shape):
            return False
        if any(x != y and x != -1 and y != -1 for x, y in zip(a.shape, b.shape, strict=True)):
            return False
    return True


def _shown(tensors: Sequence[TensorSpec]) -> str:
    return ", ".join(f"{t.name} {t.datatype} {list(t.shape)}" for t in tensors) or "none"


def _check_signatures(signatures: Mapping[str, Signature]) -> None:
    """Every version's signature against the first's.

    Raises:
        InvalidRequest: a version takes other inputs or gives other outputs.
    """
    first, *rest = signatures
    base = signatures[first]
    for v in rest:
        sig = signatures[v]
        for kind, verb, ours, theirs in (
            ("inputs", "takes", base.inputs, sig.inputs),
            ("outputs", "gives", base.outputs, sig.outputs),
        ):
            if not _compatible(ours, theirs):
                raise InvalidRequest(
                    f"version {v!r} {verb} other {kind} than {first!r}: {_shown(theirs)} "
                    f"against {_shown(ours)}",
                    {"version": v, "against": first, kind: [t.name for t in theirs]},
                )


def _label_difference(ours: frozenset[str], theirs: frozenset[str]) -> str:
    added, removed = sorted(theirs - ours), sorted(ours - theirs)
    parts = [f"adds {added}"] if added else []
    parts += [f"removes {removed}"] if removed else []
    return " and ".join(parts)


def _labels(
    name: str,
    bundles: Mapping[str, BundleInfo | None],
    published: RouteTable | None,
    allowed: bool,
) -> tuple[tuple[str, ...] | None, bool]:
    """The label set of the table to publish (sorted; None when no version has labels) and
    whether it changes the published table's.

    Raises:
        InvalidRequest: versions with different label sets, or a label set other than the
            published table's, without ``allowed``.
    """
    sets = {v: frozenset(b.labels) if b is not None else frozenset() for v, b in bundles.items()}
    hint = "; publish with allow_label_change to make the change intended"
    first, *rest = sets
    for v in rest:
        if sets[v] != sets[first] and not allowed:
            raise InvalidRequest(
                f"versions {first!r} and {v!r} of {name!r} answer with different labels: "
                f"{v!r} {_label_difference(sets[first], sets[v])}{hint}",
                {
                    "versions": [first, v],
                    "added": sorted(sets[v] - sets[first]),
                    "removed": sorted(sets[first] - sets[v]),
                },
            )
    labels = frozenset().union(*sets.values())
    before = None if published is None or published.labels is None else frozenset(published.labels)
    changed = before is not None and labels != before
    if changed and not allowed:
        assert published is not None and before is not None
        raise InvalidRequest(
            f"the published table of {name!r} (revision {published.revision}) answers with "
            f"labels {sorted(before)}; this publish (versions {', '.join(sets)}) "
            f"{_label_difference(before, labels)}{hint}",
            {"added": sorted(labels - before), "removed": sorted(before - labels)},
        )
    return (tuple(sorted(labels)) if labels else None), changed or len(set(sets.values())) > 1


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
            InvalidRequest: undeployed or dead versions, other inputs or outputs, label sets
                that differ (from each other or the published table's) without
                ``allow_label_change``, or a table the route-table rules refuse (a shadow
                version with traffic, a fallback loop...).
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
        registered = {v: self.repository.version(name, v) for v in versions}
        signatures = {v: Signature.model_validate(registered[v].signature) for v in versions}
        _check_signatures(signatures)
        labels, label_change = _labels(
            name,
            {v: registered[v].bundle for v in versions},
            self._published(name),
            request.allow_label_change,
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
                labels=labels,
                label_change=label_change,
                published_by=who,
                reason=request.reason,
                published_at=time.time(),
            )
        except ValidationError as exc:
            where, reason = describe_error(exc)
            raise InvalidRequest(f"the route table is invalid: {where}: {reason}") from exc
        revision = self._write(name, table.to_content(), request.expected_revision)
        return PublishResult(revision=revision, table=table)

    def _published(self, name: str) -> RouteTable | None:
        """The current route table, with the revision the store gave it (the stored document
        holds the one it was built with); None if the model was never published, or if its
        table cannot be read: publishing a readable one is then the repair, not refused."""
        item = self.store.get(name, group=GROUP)
        if item is None:
            return None
        try:
            table = _table(item)
        except InvalidRequest as exc:
            log.warning("%s: labels not compared with the published table: %s", name, exc)
            return None
        return table.model_copy(update={"revision": item.revision})

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
                    labels=table.labels,
                    label_change=table.label_change,
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
        published = self._published(name)
        now = None if published is None else published.labels
        again = table.model_copy(
            update={
                "published_by": who,
                "reason": f"rollback to revision {target.revision}",
                "published_at": time.time(),
                # a rollback is asked for by name: a label change it brings back is intended
                "label_change": now is not None
                and table.labels is not None
                and set(now) != set(table.labels),
            }
        )
        return self._write(name, again.to_content(), current.revision)
