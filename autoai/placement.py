"""Placement: which pool instances a model version is loaded onto. Pure: no I/O.

Input: each candidate instance's ``MemberResources`` (its ``GET /v2/resources``), the model's
expected memory (its size on disk: an ONNX file's weights are most of what a session holds) and
how many instances to choose. The rule, in order:

1. **Room.** An instance's free memory is its host's available memory; an instance that reports
   GPUs is judged by its emptiest GPU too (the processors put models there), and the smaller of
   the two counts. It has room when the model fits with ``reserve`` of that memory's total left
   over (default 10 %: the runtime's own allocations, the next request's buffers). Instances
   without room are never chosen; too few with room is ``NoRoom``.
2. **Expected load.** Among those with room, the least loaded first: an instance's load is its
   share of the candidates' hosted models plus its share of their inferences (queued ones
   included), each in 0..1, so an instance with one hot model and one with two cold ones weigh
   alike rather than the hot one looking idle.
3. Ties: more room after the load first, then the address (a stable choice).

Instances on one host share its memory, so there the rule spreads models by load; across hosts
(Kubernetes) memory decides first.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from .errors import Conflict
from .schema import MemberResources

__all__ = ["DEFAULT_RESERVE", "Candidate", "NoRoom", "choose", "rank"]

DEFAULT_RESERVE: Final = 0.10
"""The fraction of an instance's memory left free after a load."""


class NoRoom(Conflict):
    """Fewer pool instances than asked have room for the model; ``detail["instances"]`` says
    what each had."""


@dataclass(frozen=True)
class Candidate:
    """One instance as placement judged it.

    Attributes:
        address: host:port.
        free_bytes: its free memory (the smaller of host and GPU, as above).
        total_bytes: the total that ``free_bytes`` is part of.
        headroom_bytes: ``free_bytes`` less the model and the reserve (< 0: no room).
        load: its share of hosted models plus its share of inferences, 0..2.
    """

    address: str
    free_bytes: int
    total_bytes: int
    headroom_bytes: int
    load: float

    @property
    def fits(self) -> bool:
        return self.headroom_bytes >= 0


def _memory(resources: MemberResources) -> tuple[int, int]:
    """(free, total) of the memory a model would take on this instance."""
    free, total = resources.memory_available_bytes, resources.memory_total_bytes
    if resources.gpus:
        gpu = max(resources.gpus, key=lambda g: g.total_bytes - g.used_bytes)
        gpu_free = max(0, gpu.total_bytes - gpu.used_bytes)
        if gpu_free < free:
            free, total = gpu_free, gpu.total_bytes
    return free, total


def _active(resources: MemberResources) -> list[int]:
    """(hosted models, inferences + queued) of an instance."""
    hosted = [m for m in resources.models if m.state in ("READY", "LOADING")]
    return [len(hosted), sum(m.inference_count + m.queue_depth for m in hosted)]


def rank(
    members: Mapping[str, MemberResources], *, model_bytes: int, reserve: float = DEFAULT_RESERVE
) -> list[Candidate]:
    """Every instance judged for a model of ``model_bytes``: those with room first, by the rule
    of this module."""
    active = {address: _active(r) for address, r in members.items()}
    models = sum(a[0] for a in active.values())
    calls = sum(a[1] for a in active.values())
    judged = []
    for address, resources in members.items():
        free, total = _memory(resources)
        hosted, inferences = active[address]
        load = (hosted / models if models else 0.0) + (inferences / calls if calls else 0.0)
        headroom = free - model_bytes - int(reserve * total)
        judged.append(Candidate(address, free, total, headroom, load))
    return sorted(judged, key=lambda c: (not c.fits, c.load, -c.headroom_bytes, c.address))


def choose(
    members: Mapping[str, MemberResources],
    *,
    model_bytes: int,
    count: int,
    reserve: float = DEFAULT_RESERVE,
) -> list[str]:
    """The addresses of the ``count`` instances to load a model of ``model_bytes`` onto.

    Args:
        members: the candidate instances (host:port -> resources); the caller leaves out those
            that already host the version.
        model_bytes: the model's expected memory (its size on disk).
        count: how many to choose (0: none).
        reserve: the fraction of an instance's memory to leave free.

    Raises:
        NoRoom: fewer than ``count`` candidates have room.
    """
    if count <= 0:
        return []
    ranked = rank(members, model_bytes=model_bytes, reserve=reserve)
    fitting = [c for c in ranked if c.fits]
    if len(fitting) < count:
        raise NoRoom(
            f"{len(fitting)} of {len(ranked)} pool instance(s) have room for a model of "
            f"{model_bytes / (1 << 20):.1f} MiB with {reserve:.0%} of their memory left free; "
            f"{count} needed",
            {
                "needed": count,
                "model_bytes": model_bytes,
                "instances": [
                    {"address": c.address, "free_bytes": c.free_bytes, "fits": c.fits}
                    for c in ranked
                ],
            },
        )
    return [c.address for c in fitting[:count]]
