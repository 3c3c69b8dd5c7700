"""Reading pods, Deployments, events and store registrations. Pure: JSON-form objects in, facts out.

The adapter lists objects and hands their JSON form (what ``kubectl get -o json`` shows) here:
which pods count, which of them registered in the store (``PodSlot``, the record's entries), what
went wrong with one that will not start, and the rows ``health`` reports (``PodHealth``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from config_store import Instance

from ..schema import PodHealth, PodSlot

__all__ = [
    "FATAL_WAITING",
    "deployment_problem",
    "event_lines",
    "health_rows",
    "live_pods",
    "pending_summary",
    "pod_problem",
    "registered",
    "restarted",
    "slots",
]

# Waiting reasons that do not go away by waiting: the image cannot be had, the container
# cannot be configured (a missing Secret or ConfigMap key), or it keeps crashing.
FATAL_WAITING: Final = frozenset(
    {
        "CrashLoopBackOff",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)


def _statuses(pod: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    status = pod.get("status") or {}
    return [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", "?"))


def live_pods(pods: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Pods that are not being deleted and have not finished, by name."""
    return sorted(
        (
            p
            for p in pods
            if not (p.get("metadata") or {}).get("deletionTimestamp")
            and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
        ),
        key=_name,
    )


def restarted(pod: Mapping[str, Any]) -> bool:
    """Whether a container of the pod ran and exited at least once."""
    return any(int(s.get("restartCount") or 0) > 0 for s in _statuses(pod))


def pod_problem(pod: Mapping[str, Any]) -> str | None:
    """Why the pod will not become ready without a change (None: it may still)."""
    name = _name(pod)
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return f"pod {name} failed: {status.get('reason', '')} {status.get('message', '')}".strip()
    for container in _statuses(pod):
        state = container.get("state") or {}
        waiting = state.get("waiting") or {}
        if waiting.get("reason") in FATAL_WAITING:
            message = waiting.get("message") or ""
            return f"pod {name}: container {container.get('name')}: {waiting['reason']}" + (
                f": {message}" if message else ""
            )
        last = (container.get("lastState") or {}).get("terminated") or {}
        if int(container.get("restartCount") or 0) > 0 and last:
            return (
                f"pod {name}: container {container.get('name')} exited with code "
                f"{last.get('exitCode')} ({last.get('reason', 'Error')})"
            )
    return None


def deployment_problem(deployment: Mapping[str, Any]) -> str | None:
    """Why the Deployment's pods cannot be created or will not progress (None: they may)."""
    for condition in (deployment.get("status") or {}).get("conditions") or []:
        kind, status, reason = (
            condition.get("type"),
            condition.get("status"),
            condition.get("reason"),
        )
        if (kind == "ReplicaFailure" and status == "True") or (
            kind == "Progressing" and reason == "ProgressDeadlineExceeded"
        ):
            return f"deployment {_name(deployment)}: {reason}: {condition.get('message', '')}"
    return None


def registered(pods: Iterable[Mapping[str, Any]], instances: Iterable[Instance]) -> list[PodSlot]:
    """The pods whose IP registered in the store, by pod name.

    Registrations of other pods (one being deleted, a previous incarnation's lingering session)
    do not count."""
    by_host = {i.host: i for i in instances}
    out = []
    for pod in live_pods(pods):
        ip = (pod.get("status") or {}).get("podIP")
        if ip and ip in by_host:
            out.append(PodSlot(pod=_name(pod), ip=ip, port=by_host[ip].port))
    return out


def slots(found: Sequence[PodSlot], count: int) -> list[PodSlot]:
    """Exactly ``count`` record entries: the registered pods first, then unknown ones.

    The record's ``instances`` holds one entry per replica (``DeploymentService`` counts them);
    which pods serve is Kubernetes's to change, so ``health`` reads the live ones."""
    entries = list(found[:count])
    return entries + [PodSlot(pod=None, ip=None, port=None)] * (count - len(entries))


def health_rows(
    pods: Iterable[Mapping[str, Any]] | None,
    instances: Sequence[Instance],
    error: str | None = None,
) -> list[PodHealth]:
    """One row per pod (``alive``: running; ``ready``: registered in the store), then one per
    registration no live pod has (``alive`` False: its session has not expired yet). Without
    pods (the API unreachable: ``error``), the registrations alone, with the error."""
    if pods is None:
        return [
            PodHealth(pod=None, ip=i.host, port=i.port, alive=True, ready=True, error=error)
            for i in instances
        ]
    by_host = {i.host: i for i in instances}
    rows = []
    for pod in live_pods(pods):
        status = pod.get("status") or {}
        ip = status.get("podIP")
        rows.append(
            PodHealth(
                pod=_name(pod),
                ip=ip,
                port=by_host[ip].port if ip in by_host else None,
                node=(pod.get("spec") or {}).get("nodeName"),
                phase=status.get("phase"),
                restarts=sum(int(s.get("restartCount") or 0) for s in _statuses(pod)),
                alive=status.get("phase") == "Running",
                ready=ip in by_host,
            )
        )
    seen = {r.ip for r in rows}
    rows.extend(
        PodHealth(pod=None, ip=i.host, port=i.port, alive=False, ready=True)
        for i in instances
        if i.host not in seen
    )
    return rows


def event_lines(events: Iterable[Mapping[str, Any]], prefix: str, limit: int = 20) -> list[str]:
    """The last ``limit`` events about objects named ``prefix...`` (the Deployment, its
    ReplicaSets and pods), oldest first, as ``Kind/name: Type Reason: message``."""

    def when(event: Mapping[str, Any]) -> str:
        stamps = ("lastTimestamp", "eventTime", "firstTimestamp")
        return str(next((event[k] for k in stamps if event.get(k)), ""))

    lines = []
    for event in sorted(events, key=when):
        about = event.get("involvedObject") or {}
        if str(about.get("name", "")).startswith(prefix):
            lines.append(
                f"{about.get('kind')}/{about.get('name')}: {event.get('type', '')} "
                f"{event.get('reason', '')}: {event.get('message', '')}".rstrip()
            )
    return lines[-limit:]


def pending_summary(pods: Iterable[Mapping[str, Any]]) -> str:
    """What each live pod waits for, in one line (for a timeout's message)."""
    parts = []
    for pod in live_pods(pods):
        status = pod.get("status") or {}
        why = status.get("phase", "Unknown")
        for condition in status.get("conditions") or []:
            if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
                why = f"unschedulable: {condition.get('message', '')}"
        for container in _statuses(pod):
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                why = f"{why}, {container.get('name')} {waiting['reason']}"
        parts.append(f"{_name(pod)} {why}")
    return "; ".join(parts) or "no pod was created"
