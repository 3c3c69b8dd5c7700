"""Reading pod, Deployment and event JSON (the shapes ``kubectl get -o json`` shows) is pure."""

from __future__ import annotations

from typing import Any

from autoai.kubernetes._status import (
    deployment_problem,
    event_lines,
    health_rows,
    live_pods,
    pending_summary,
    pod_problem,
    registered,
    slots,
)
from autoai.schema import PodHealth, PodSlot
from config_store import Instance


def pod(name: str, ip: str | None = None, phase: str = "Running", **status: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"phase": phase, **status}
    if ip is not None:
        body["podIP"] = ip
    return {"metadata": {"name": name}, "spec": {"nodeName": "node-a"}, "status": body}


def container(**fields: Any) -> dict[str, Any]:
    return {"name": "eas-server", "restartCount": 0, "ready": False, **fields}


def instance(host: str, port: int = 8000) -> Instance:
    return Instance("m-1", f"{host}:{port}", host, port)


def test_only_live_pods_count() -> None:
    deleting = pod("a", "10.0.0.1")
    deleting["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    pods = [pod("c", "10.0.0.3"), deleting, pod("b", "10.0.0.2", "Succeeded"), pod("d")]
    assert [p["metadata"]["name"] for p in live_pods(pods)] == ["c", "d"]


def test_registered_matches_pod_ips_only() -> None:
    pods = [pod("p1", "10.0.0.1"), pod("p2", "10.0.0.2"), pod("p3")]
    found = registered(pods, [instance("10.0.0.2"), instance("10.9.9.9")])  # 10.9.9.9: old pod
    assert found == [PodSlot(pod="p2", ip="10.0.0.2", port=8000)]


def test_slots_hold_one_entry_per_replica() -> None:
    found = [PodSlot(pod="p1", ip="10.0.0.1", port=8000)]
    assert len(slots(found, 3)) == 3 and slots(found, 3)[0] == found[0]
    assert slots(found, 3)[2] == PodSlot(pod=None, ip=None, port=None)
    assert slots(found * 3, 2) == found * 2


def test_a_pod_that_may_still_start_has_no_problem() -> None:
    assert pod_problem(pod("p", phase="Pending")) is None
    waiting = container(state={"waiting": {"reason": "ContainerCreating"}})
    assert pod_problem(pod("p", phase="Pending", containerStatuses=[waiting])) is None
    pulling = container(state={"waiting": {"reason": "ErrImagePull"}})  # retried: BackOff next
    assert pod_problem(pod("p", phase="Pending", containerStatuses=[pulling])) is None


def test_fatal_waiting_reasons() -> None:
    for reason in ("ImagePullBackOff", "CrashLoopBackOff", "CreateContainerConfigError"):
        waiting = container(state={"waiting": {"reason": reason, "message": "secret missing"}})
        problem = pod_problem(pod("p", phase="Pending", containerStatuses=[waiting]))
        assert problem == f"pod p: container eas-server: {reason}: secret missing"


def test_a_container_that_exited_is_a_problem() -> None:
    crashed = container(
        restartCount=1,
        state={"running": {}},
        lastState={"terminated": {"exitCode": 3, "reason": "Error"}},
    )
    problem = pod_problem(pod("p", containerStatuses=[crashed]))
    assert problem == "pod p: container eas-server exited with code 3 (Error)"
    assert pod_problem(pod("p", phase="Failed", reason="Evicted")) == "pod p failed: Evicted"


def test_deployment_problems() -> None:
    fine = {"metadata": {"name": "d"}, "status": {"conditions": [
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
        {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"},
    ]}}  # fmt: skip
    assert deployment_problem(fine) is None
    assert deployment_problem({}) is None
    refused = {"metadata": {"name": "d"}, "status": {"conditions": [
        {"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate",
         "message": "pods forbidden: exceeded quota"},
    ]}}  # fmt: skip
    assert (
        deployment_problem(refused) == "deployment d: FailedCreate: pods forbidden: exceeded quota"
    )
    stuck = {"metadata": {"name": "d"}, "status": {"conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"},
    ]}}  # fmt: skip
    assert "ProgressDeadlineExceeded" in str(deployment_problem(stuck))


def test_event_lines_keep_the_deployments_objects_in_order() -> None:
    def event(kind: str, name: str, when: str, reason: str) -> dict[str, Any]:
        return {"involvedObject": {"kind": kind, "name": name}, "lastTimestamp": when,
                "type": "Warning", "reason": reason, "message": reason.lower()}  # fmt: skip

    events = [
        event("Pod", "eas-m-1-7d9f-abcde", "2026-01-01T00:00:02Z", "Failed"),
        event("Pod", "other-1", "2026-01-01T00:00:01Z", "Ignored"),
        event("ReplicaSet", "eas-m-1-7d9f", "2026-01-01T00:00:01Z", "FailedCreate"),
    ]
    assert event_lines(events, "eas-m-1") == [
        "ReplicaSet/eas-m-1-7d9f: Warning FailedCreate: failedcreate",
        "Pod/eas-m-1-7d9f-abcde: Warning Failed: failed",
    ]
    assert len(event_lines(events * 30, "eas-m-1", limit=5)) == 5


def test_pending_summary_says_why() -> None:
    unschedulable = pod("p1", phase="Pending", conditions=[
        {"type": "PodScheduled", "status": "False", "message": "0/3 nodes have nvidia.com/gpu"}
    ])  # fmt: skip
    pulling = pod(
        "p2",
        phase="Pending",
        containerStatuses=[container(state={"waiting": {"reason": "ErrImagePull"}})],
    )
    summary = pending_summary([unschedulable, pulling])
    assert "p1 unschedulable: 0/3 nodes have nvidia.com/gpu" in summary
    assert "p2 Pending, eas-server ErrImagePull" in summary
    assert pending_summary([]) == "no pod was created"


def test_health_rows() -> None:
    pods = [pod("p1", "10.0.0.1"), pod("p2", "10.0.0.2", "Pending")]
    rows = health_rows(pods, [instance("10.0.0.1"), instance("10.0.0.7")])
    assert [(r.pod, r.alive, r.ready) for r in rows] == [
        ("p1", True, True),
        ("p2", False, False),
        (None, False, True),  # registered, no live pod: its session has not expired yet
    ]
    assert rows[0].port == 8000 and rows[0].node == "node-a"
    blind = health_rows(None, [instance("10.0.0.1")], "unreachable")
    assert blind == [
        PodHealth(pod=None, ip="10.0.0.1", port=8000, alive=True, ready=True, error="unreachable")
    ]
