"""The pure core of the clients: selection, circuit breaker, retry budget (fake clock, no I/O)."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from config_store import Instance
from eas_client import RetryBudget
from eas_client._balancer import Balancer, Endpoint, Target


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def target(i: int, weight: int = 100) -> Target:
    instance = Instance("svc", f"10.0.0.{i}:80", f"10.0.0.{i}", 80, "ALIVE", {"weight": weight})
    origin = f"http://10.0.0.{i}:80"
    return Target(instance.id, f"{origin}/v2/models/m/infer", origin, weight, instance)


def balancer(
    weights: list[int], clock: FakeClock | None = None, seed: int = 0, **kwargs: float
) -> Balancer:
    b = Balancer(clock=clock or FakeClock(), rng=random.Random(seed), **kwargs)  # type: ignore[arg-type]
    b.update(target(i, w) for i, w in enumerate(weights))
    return b


def by_id(b: Balancer) -> dict[str, Endpoint]:
    return {e.target.id: e for e in b.endpoints()}


def fail(b: Balancer, endpoint: Endpoint, times: int = 1) -> None:
    for _ in range(times):
        endpoint.outstanding += 1  # as if picked
        b.release(endpoint, False)


# ----------------------------------------------------------------------------------- the set


def test_nothing_to_pick_before_discovery_answers_and_when_empty() -> None:
    b = Balancer()
    assert b.pick() is None
    assert "not reported" in b.describe()
    b.update([])
    assert b.pick() is None
    assert b.describe() == "no instance is registered"


def test_pick_counts_outstanding_until_release() -> None:
    b = balancer([100])
    first, second = b.pick(), b.pick()
    assert first is not None and first is second
    assert first.outstanding == 2
    b.release(first, True)
    b.release(first, None)
    assert first.outstanding == 0


def test_update_replaces_the_set_and_keeps_state_by_id() -> None:
    clock = FakeClock()
    b = balancer([100, 100], clock)
    a = by_id(b)["10.0.0.0:80"]
    a.outstanding = 4
    fail(b, a, 3)
    removed = b.update([target(0, weight=50), target(2)])
    assert [e.target.id for e in removed] == ["10.0.0.1:80"]
    kept = by_id(b)["10.0.0.0:80"]
    assert kept is a and a.target.weight == 50
    assert a.outstanding == 4 and a.failures == 3 and b.is_ejected(a)
    assert [e.target.id for e in b.endpoints()] == ["10.0.0.0:80", "10.0.0.2:80"]
    assert b.generation == 2


def test_update_ignores_a_repeated_id() -> None:
    b = balancer([])
    b.update([target(0, 10), target(0, 20)])
    (only,) = b.endpoints()
    assert only.target.weight == 10


def test_seed_applies_only_before_the_first_update() -> None:
    b = Balancer()
    assert b.seed([target(0)])
    assert not b.seed([target(1)])
    b2 = Balancer()
    b2.update([target(2)])
    assert not b2.seed([target(3)])
    assert [e.target.id for e in b2.endpoints()] == ["10.0.0.2:80"]


def test_constructor_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="eject_after"):
        Balancer(eject_after=0)
    with pytest.raises(ValueError, match="eject_for"):
        Balancer(eject_for=-1.0)


# ------------------------------------------------------------------------------- selection


def test_less_loaded_instance_wins_the_comparison() -> None:
    b = balancer([100, 100])
    busy, idle = b.endpoints()
    busy.outstanding = 5
    picks: Counter[str] = Counter()
    for _ in range(50):
        chosen = b.pick()
        assert chosen is not None
        picks[chosen.target.id] += 1
        b.release(chosen, True)
    assert picks == {idle.target.id: 50}


def test_weight_zero_is_never_chosen_even_alone() -> None:
    b = balancer([0])
    assert b.pick() is None
    assert "weight 0" in b.describe()


weights_st = st.lists(st.integers(min_value=0, max_value=1000), min_size=1, max_size=8)


@settings(deadline=None, max_examples=200)
@given(
    weights=weights_st,
    ejected=st.lists(st.booleans(), min_size=8, max_size=8),
    loads=st.lists(st.integers(0, 5), min_size=8, max_size=8),
    seed=st.integers(0, 2**32),
)
def test_never_picks_weight_zero_or_ejected_while_a_healthy_one_exists(
    weights: list[int], ejected: list[bool], loads: list[int], seed: int
) -> None:
    clock = FakeClock()
    b = balancer(weights, clock, seed, eject_after=1)
    for endpoint, out, load in zip(b.endpoints(), ejected, loads, strict=False):
        if out:
            fail(b, endpoint)
        endpoint.outstanding = load
    healthy = {e.target.id for e in b.endpoints() if e.target.weight > 0 and not b.is_ejected(e)}
    for _ in range(20):
        chosen = b.pick()
        if healthy:
            assert chosen is not None and chosen.target.id in healthy
        elif any(w > 0 for w in weights):
            assert chosen is not None and chosen.target.weight > 0  # all ejected: try one anyway
        else:
            assert chosen is None


@settings(deadline=None, max_examples=200)
@given(
    weights=weights_st,
    excluded=st.sets(st.integers(0, 7)),
    seed=st.integers(0, 2**32),
)
def test_excluded_instances_are_never_picked(
    weights: list[int], excluded: set[int], seed: int
) -> None:
    b = balancer(weights, seed=seed, eject_after=1)
    fail(b, b.endpoints()[0])  # an ejected one too, to exercise the fallback
    exclude = {f"10.0.0.{i}:80" for i in excluded}
    allowed = [w for i, w in enumerate(weights) if i not in excluded and w > 0]
    for _ in range(20):
        chosen = b.pick(exclude)
        if allowed:
            assert chosen is not None and chosen.target.id not in exclude
        else:
            assert chosen is None


@settings(deadline=None, max_examples=40, derandomize=True)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=1000), min_size=2, max_size=6),
    load=st.integers(0, 3),
    seed=st.integers(0, 2**32),
)
def test_equal_loads_spread_picks_in_proportion_to_weight(
    weights: list[int], load: int, seed: int
) -> None:
    b = balancer(weights, seed=seed)
    for endpoint in b.endpoints():
        endpoint.outstanding = load
    n = 4000
    counts: Counter[str] = Counter()
    for _ in range(n):
        chosen = b.pick()
        assert chosen is not None
        counts[chosen.target.id] += 1
        b.release(chosen, True)  # loads stay equal
    total = sum(weights)
    for i, weight in enumerate(weights):
        assert abs(counts[f"10.0.0.{i}:80"] / n - weight / total) < 0.05, (counts, weights)


@settings(deadline=None, max_examples=200)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=1000), min_size=2, max_size=8),
    loads=st.lists(st.integers(0, 3), min_size=8, max_size=8),
    seed=st.integers(0, 2**32),
)
def test_an_instance_with_the_most_in_flight_is_never_picked(
    weights: list[int], loads: list[int], seed: int
) -> None:
    b = balancer(weights, seed=seed)
    stuck, *others = b.endpoints()
    for endpoint, load in zip(others, loads, strict=False):
        endpoint.outstanding = load
    stuck.outstanding = 100  # hung: its requests never come back
    for _ in range(30):
        chosen = b.pick()
        assert chosen is not None and chosen is not stuck
        b.release(chosen, True)


@settings(deadline=None, max_examples=100)
@given(ops=st.lists(st.tuples(st.booleans(), st.sampled_from([True, False, None])), max_size=60))
def test_outstanding_counts_what_is_in_flight(ops: list[tuple[bool, bool | None]]) -> None:
    b = balancer([100, 50, 10])
    held: list[Endpoint] = []
    for do_pick, verdict in ops:
        if do_pick or not held:
            chosen = b.pick()
            assert chosen is not None
            held.append(chosen)
        else:
            b.release(held.pop(0), verdict)
        for endpoint in b.endpoints():
            assert endpoint.outstanding == sum(1 for h in held if h is endpoint)


# ------------------------------------------------------------------------- circuit breaker


def test_ejected_after_consecutive_failures_and_a_success_resets_the_count() -> None:
    clock = FakeClock()
    b = balancer([100, 100], clock, eject_after=3, eject_for=5.0)
    a, other = b.endpoints()
    fail(b, a, 2)
    a.outstanding += 1
    b.release(a, True)  # a success in between: the count starts over
    fail(b, a, 2)
    assert not b.is_ejected(a)
    fail(b, a)
    assert b.is_ejected(a)
    assert all(b.pick() is other for _ in range(30))
    assert "1 ejected" in b.describe()


def test_ejection_ends_then_one_failure_ejects_again_for_twice_as_long_up_to_a_cap() -> None:
    clock = FakeClock()
    b = balancer([100, 100], clock, eject_after=3, eject_for=5.0, max_eject_for=12.0)
    a = b.endpoints()[0]
    fail(b, a, 3)
    clock.advance(4.9)
    assert b.is_ejected(a)
    clock.advance(0.2)
    assert not b.is_ejected(a)  # back, on probation
    fail(b, a)
    assert b.is_ejected(a)
    clock.advance(9.9)
    assert b.is_ejected(a)  # 10 s the second time
    clock.advance(0.2)
    fail(b, a)
    clock.advance(11.9)
    assert b.is_ejected(a)  # 20 s capped to 12 s
    clock.advance(0.2)
    assert not b.is_ejected(a)
    a.outstanding += 1
    b.release(a, True)  # recovered: a fresh start
    fail(b, a, 2)
    assert not b.is_ejected(a)
    fail(b, a)
    clock.advance(5.1)
    assert not b.is_ejected(a)  # 5 s again


def test_failures_in_flight_during_an_ejection_do_not_extend_it() -> None:
    clock = FakeClock()
    b = balancer([100], clock, eject_after=1, eject_for=5.0)
    a = b.endpoints()[0]
    fail(b, a)
    clock.advance(1.0)
    fail(b, a, 10)  # requests sent before the ejection, failing later
    clock.advance(4.1)
    assert not b.is_ejected(a)
    assert a.ejections == 1


def test_success_on_an_ejected_instance_brings_it_back() -> None:
    b = balancer([100], eject_after=1)
    a = b.endpoints()[0]
    fail(b, a)
    a.outstanding += 1
    b.release(a, True)
    assert not b.is_ejected(a) and a.failures == 0


def test_when_all_are_ejected_the_least_recently_ejected_is_tried() -> None:
    clock = FakeClock()
    b = balancer([100, 100, 0], clock, eject_after=1, eject_for=30.0)
    first, second, zero = b.endpoints()
    fail(b, second)
    clock.advance(1.0)
    fail(b, first)
    fail(b, zero)
    assert b.pick() is second
    assert b.pick({second.target.id}) is first
    assert b.pick({second.target.id, first.target.id}) is None  # weight 0 never, even now


# ------------------------------------------------------------------------------ retry budget


def test_retry_budget_floor_allows_min_per_second_times_ttl_then_refills() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.0, min_per_second=1.0, ttl=10.0, clock=clock)
    assert [budget.try_withdraw() for _ in range(11)] == [True] * 10 + [False]
    clock.advance(5.0)
    assert not budget.try_withdraw()
    clock.advance(5.5)  # the withdrawals left the window
    assert budget.try_withdraw()


def test_retry_budget_ratio_of_deposits() -> None:
    clock = FakeClock()
    budget = RetryBudget(ratio=0.2, min_per_second=0.0, clock=clock)
    assert not budget.try_withdraw()
    for _ in range(10):
        budget.deposit()
    assert budget.balance == pytest.approx(2.0)
    assert [budget.try_withdraw() for _ in range(3)] == [True, True, False]
    clock.advance(10.5)  # deposits expire with the window
    for _ in range(5):
        budget.deposit()
    assert [budget.try_withdraw() for _ in range(2)] == [True, False]


def test_retry_budget_bounds_a_storm() -> None:
    """1000 failing calls a second for 30 s: retries stay near 20% plus the floor."""
    clock = FakeClock()
    budget = RetryBudget(clock=clock)
    retries = 0
    for _ in range(30_000):
        clock.advance(0.001)
        budget.deposit()
        retries += budget.try_withdraw()
    assert retries <= 30_000 * 0.2 + 10 * 30


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"ratio": -0.1}, "ratio"),
        ({"min_per_second": float("nan")}, "min_per_second"),
        ({"ttl": 0}, "ttl"),
    ],
)
def test_retry_budget_checks_its_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        RetryBudget(**kwargs)
