"""Placement as a pure function: pool instances' resources and a model's size in, the chosen
instances out (``autoai.placement``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, strategies as st

from autoai.errors import Conflict
from autoai.placement import NoRoom, choose, rank
from autoai.schema import GpuMemory, HostedModel, MemberResources

GIB = 1 << 30
MIB = 1 << 20


def member(
    available: int = 8 * GIB,
    total: int = 16 * GIB,
    models: Sequence[tuple[int, int]] = (),
    gpus: Sequence[tuple[int, int]] = (),
) -> MemberResources:
    """An instance: host memory, hosted models as (inferences, queued), GPUs as (used, total)."""
    return MemberResources(
        memory_total_bytes=total,
        memory_available_bytes=available,
        gpus=[GpuMemory(index=i, used_bytes=u, total_bytes=t) for i, (u, t) in enumerate(gpus)],
        models=[
            HostedModel(name=f"m{i}", version="1", state="READY", inference_count=n, queue_depth=q)
            for i, (n, q) in enumerate(models)
        ],
    )


def test_the_least_loaded_instance_is_chosen() -> None:
    members = {
        "a:1": member(models=[(0, 0), (0, 0)]),
        "b:1": member(models=[(0, 0)]),
        "c:1": member(models=[(0, 0), (0, 0), (0, 0)]),
    }
    assert choose(members, model_bytes=100 * MIB, count=1) == ["b:1"]
    assert choose(members, model_bytes=100 * MIB, count=2) == ["b:1", "a:1"]
    assert choose(members, model_bytes=100 * MIB, count=0) == []


def test_one_hot_model_weighs_more_than_two_cold_ones() -> None:
    members = {
        "hot:1": member(models=[(10_000, 5)]),
        "cold:1": member(models=[(10, 0), (10, 0)]),
    }
    assert choose(members, model_bytes=MIB, count=1) == ["cold:1"]


def test_equal_load_goes_to_more_free_memory_then_the_address() -> None:
    members = {
        "b:1": member(available=4 * GIB),
        "a:1": member(available=2 * GIB),
        "c:1": member(available=4 * GIB),
    }
    assert choose(members, model_bytes=MIB, count=3) == ["b:1", "c:1", "a:1"]


def test_an_instance_without_room_is_never_chosen() -> None:
    # 16 GiB total: 10 % (1.6 GiB) stays free, so 2 GiB available holds at most ~0.4 GiB
    members = {
        "idle-but-full:1": member(available=2 * GIB),
        "busy:1": member(available=8 * GIB, models=[(500, 0), (500, 0)]),
    }
    assert choose(members, model_bytes=GIB, count=1) == ["busy:1"]
    with pytest.raises(NoRoom) as caught:
        choose(members, model_bytes=GIB, count=2)
    assert isinstance(caught.value, Conflict)  # a 409 when a deploy asks for it
    assert "1 of 2 pool instance(s) have room" in str(caught.value)
    assert caught.value.detail["needed"] == 2
    fits = {i["address"]: i["fits"] for i in caught.value.detail["instances"]}
    assert fits == {"busy:1": True, "idle-but-full:1": False}


def test_no_instance_at_all_is_no_room() -> None:
    with pytest.raises(NoRoom, match="0 of 0"):
        choose({}, model_bytes=1, count=1)


def test_an_instance_with_gpus_is_judged_by_its_emptiest_gpu_too() -> None:
    members = {
        # plenty of host memory, but its GPU is nearly full
        "gpu-full:1": member(available=100 * GIB, total=128 * GIB, gpus=[(79 * GIB, 80 * GIB)]),
        # two GPUs: the emptier one counts
        "gpu-free:1": member(
            available=100 * GIB, total=128 * GIB, gpus=[(79 * GIB, 80 * GIB), (10 * GIB, 80 * GIB)]
        ),
    }
    ranked = rank(members, model_bytes=4 * GIB)
    assert [c.address for c in ranked] == ["gpu-free:1", "gpu-full:1"]
    assert ranked[0].free_bytes == 70 * GIB and ranked[0].total_bytes == 80 * GIB
    assert not ranked[1].fits
    assert choose(members, model_bytes=4 * GIB, count=1) == ["gpu-free:1"]


def test_models_being_unloaded_or_failed_do_not_count_as_load() -> None:
    gone = MemberResources(
        memory_total_bytes=16 * GIB,
        memory_available_bytes=8 * GIB,
        models=[
            HostedModel(name="x", version="1", state="UNLOADING", inference_count=9999),
            HostedModel(name="y", version="1", state="UNAVAILABLE"),
        ],
    )
    members = {"a:1": member(models=[(1, 0)]), "z:1": gone}
    assert choose(members, model_bytes=MIB, count=1) == ["z:1"]


def test_hosts_reads_ready_and_loading_versions() -> None:
    resources = MemberResources(
        memory_total_bytes=1,
        memory_available_bytes=1,
        models=[
            HostedModel(name="m", version="1", state="READY"),
            HostedModel(name="m", version="2", state="LOADING"),
            HostedModel(name="m", version="3", state="UNLOADING"),
        ],
    )
    assert resources.hosts("m", "1") and resources.hosts("m", "2")
    assert not resources.hosts("m", "3") and not resources.hosts("n", "1")


def test_the_resources_document_of_eas_server_parses() -> None:
    """The shape ``GET /v2/resources`` answers (eas_server/repository/_app.py), extra keys and
    all."""
    doc: dict[str, Any] = {
        "rss_bytes": 300 * MIB,
        "memory_total_bytes": 16 * GIB,
        "memory_available_bytes": 9 * GIB,
        "gpus": [{"index": 0, "used_bytes": GIB, "total_bytes": 80 * GIB}],
        "models": [
            {
                "name": "m",
                "version": "2",
                "state": "READY",
                "processor": "onnx",
                "memory_bytes": 20 * MIB,
                "gpu_memory_bytes": None,
                "queue_depth": 0,
                "inference_count": 7,
            }
        ],
    }
    resources = MemberResources.model_validate(doc)
    assert resources.hosts("m", "2") and resources.gpus[0].total_bytes == 80 * GIB


_members = st.dictionaries(
    st.text("abcdef", min_size=1, max_size=3).map(lambda s: f"{s}:1"),
    st.builds(
        member,
        available=st.integers(0, 16 * GIB),
        total=st.just(16 * GIB),
        models=st.lists(st.tuples(st.integers(0, 1000), st.integers(0, 10)), max_size=4),
    ),
    max_size=6,
)


@given(members=_members, model_bytes=st.integers(0, 8 * GIB), count=st.integers(0, 6))
def test_choose_picks_distinct_fitting_instances_or_says_no_room(
    members: dict[str, MemberResources], model_bytes: int, count: int
) -> None:
    fitting = {c.address for c in rank(members, model_bytes=model_bytes) if c.fits}
    try:
        chosen = choose(members, model_bytes=model_bytes, count=count)
    except NoRoom:
        assert len(fitting) < count
        return
    assert len(chosen) == count == len(set(chosen))
    assert set(chosen) <= fitting
    # nobody left out is less loaded than someone chosen
    ranked = {c.address: c for c in rank(members, model_bytes=model_bytes)}
    worst = max((ranked[a].load for a in chosen), default=0.0)
    assert all(ranked[a].load >= worst for a in fitting - set(chosen))
