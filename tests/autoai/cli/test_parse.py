"""The CLI's pure parts: option parsing, the deploy spec, the weighted pick, new log lines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, strategies as st

from autoai.cli._errors import BadUsage
from autoai.cli._jobs import new_log_lines
from autoai.cli._parse import (
    deploy_spec,
    parse_input,
    parse_route,
    parse_routes,
    parse_shadow,
    pick_version,
    to_array,
)


def test_routes_parse_and_refuse_what_the_server_would() -> None:
    assert parse_routes(["2=90", " 3 = 10"]) == [
        {"version": "2", "weight": 90},
        {"version": "3", "weight": 10},
    ]
    assert parse_route("7=0") == {"version": "7", "weight": 0}
    for bad, says in [
        ("2", "VERSION=WEIGHT"),
        ("2=ninety", "integer"),
        ("2=-1", ">= 0"),
        ("=5", "version is empty"),
        ("2=1.5", "integer"),
    ]:
        with pytest.raises(BadUsage, match=says):
            parse_route(bad)
    with pytest.raises(BadUsage, match="more than once"):
        parse_routes(["2=1", "2=3"])
    with pytest.raises(BadUsage, match="every weight is 0"):
        parse_routes(["2=0"])
    with pytest.raises(BadUsage, match="at least one"):
        parse_routes([])


def test_shadow_is_a_version_and_a_fraction() -> None:
    assert parse_shadow("3:0.05") == {"version": "3", "ratio": 0.05}
    for bad in ("3", "3:x", "3:1.5", "3:-0.1", "3:nan", ":0.1"):
        with pytest.raises(BadUsage, match="--shadow"):
            parse_shadow(bad)


def test_inputs_are_files_or_json() -> None:
    assert parse_input("x=@in/x.npy") == ("x", Path("in/x.npy"))
    assert parse_input("x=[[1, 2]]") == ("x", [[1, 2]])
    assert parse_input("ids=[[1,2]]") == ("ids", [[1, 2]])
    for bad in ("x", "=[1]", "x=@", "x=[1,"):
        with pytest.raises(BadUsage, match="--input"):
            parse_input(bad)


def test_json_values_take_the_model_input_dtype() -> None:
    array = to_array("x", [[1, 2]], np.dtype(np.float32))
    assert array.dtype == np.float32
    assert array.tolist() == [[1.0, 2.0]]
    with pytest.raises(BadUsage, match="--input x"):
        to_array("x", [[1, 2], [3]], np.dtype(np.float32))
    with pytest.raises(BadUsage, match="rectangular"):
        to_array("x", [[1, 2], [3]], None)
    with pytest.raises(BadUsage, match="array of numbers"):
        to_array("x", {"a": 1}, None)
    with pytest.raises(BadUsage, match="--input x"):
        to_array("x", [["a"]], np.dtype(np.int64))


def test_deploy_spec_keeps_eas_keys_and_leaves_defaults_out() -> None:
    assert deploy_spec() == {}
    assert deploy_spec(
        instances=2,
        rpc={"max_batch_size": 16, "max_batch_timeout": 2.5, "batching": None},
        metadata={"intra_op_threads": None},
    ) == {"metadata": {"instance": 2, "rpc": {"max_batch_size": 16, "max_batch_timeout": 2.5}}}
    assert deploy_spec(blade=True) == {"blade": True}
    assert deploy_spec(blade_options={"level": "o1", "seq": None}) == {"blade": {"level": "o1"}}
    base = {
        "processor": "onnx",
        "blade": {"device": "cpu"},
        "metadata": {"rpc": {"batching": True}},
    }
    spec = deploy_spec(base, blade=True, blade_options={"level": "o2"}, rpc={"max_batch_size": 4})
    assert spec == {
        "processor": "onnx",
        "blade": {"device": "cpu", "level": "o2"},
        "metadata": {"rpc": {"batching": True, "max_batch_size": 4}},
    }
    assert base["metadata"] == {"rpc": {"batching": True}}  # not changed in place
    assert deploy_spec(token="t")["token"] == "t"
    with pytest.raises(BadUsage, match="metadata must be an object"):
        deploy_spec({"metadata": [1]}, instances=1)


def test_pick_version_follows_the_weights() -> None:
    routes = {"1": 90, "2": 0, "3": 10}
    picks = Counter(pick_version(routes, (i + 0.5) / 100) for i in range(100))
    assert picks == Counter({"1": 90, "3": 10})
    assert pick_version(routes, 1.0) == "3"
    with pytest.raises(BadUsage):
        pick_version({"1": 0}, 0.5)


@given(
    st.dictionaries(
        st.text("0123456789", min_size=1, max_size=3), st.integers(0, 1000), min_size=1
    ),
    st.floats(0, 1),
)
def test_pick_version_only_picks_weighted_versions(routes: dict[str, int], u: float) -> None:
    if sum(routes.values()) == 0:
        return
    assert routes[pick_version(routes, u)] > 0


@given(st.lists(st.text(max_size=3), max_size=30), st.integers(0, 30), st.integers(0, 30))
def test_new_log_lines_of_a_growing_bounded_tail(
    lines: list[str], seen_upto: int, dropped: int
) -> None:
    """The job log is the tail of a growing list: what was seen, then more, minus the oldest."""
    seen_upto = min(seen_upto, len(lines))
    dropped = min(dropped, seen_upto)
    seen, log = lines[:seen_upto], lines[dropped:]
    new = new_log_lines(seen, log)
    # Only lines of the log, never one shown before; exact while the tail has dropped nothing or
    # lines are distinct (job log lines start with a timestamp). Otherwise it is ambiguous.
    assert log[len(log) - len(new) :] == new
    assert len(new) <= len(lines) - seen_upto
    if dropped == 0 or len(set(lines)) == len(lines):
        assert new == lines[seen_upto:]
