"""BladeClient against real servers: a blade artifact served by ``--processor blade`` and a plain
fallback version. Batches above the profile are split, requests outside it and calls while the
blade service is down go to the fallback, and every fallback is counted."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from blade import optimize
from blade_client import AsyncBladeClient, BladeClient, OutsideProfile
from eas_client import AsyncEasClient, ClientMetrics, EasClient
from tests.fixtures import onnx_models
from tests.fixtures.servers import ServerProcess

PROFILE = {"profiles": {"batch": [1, 4], "seq": [1, 8]}, "fallback_version": "1"}
LABELS = {"model": "tagger", "version": "3", "processor": "blade"}


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ServerProcess]]:
    """Version 1 plain (y = x + 1) and version 3 blade (an optimized artifact of y = x + 3)."""
    tmp = tmp_path_factory.mktemp("bladec")
    plain = onnx_models.tagged(tmp, 1.0)
    artifact = optimize(
        onnx_models.tagged(tmp, 3.0),
        output_dir=tmp / "tagged3.blade",
        cache_dir=tmp / "cache",
        batch_sizes=(1, 4),
        seq=8,
        progress=False,
    ).artifact_dir
    env = {"HOME": str(tmp)}
    common = ["--name", "tagger", "--port", "0", "--max-batch-timeout-ms", "1"]
    started = {
        "1": ServerProcess(["--model", str(plain), "--version", "1", *common], env),
        "3": ServerProcess(
            ["--model", str(artifact), "--processor", "blade", "--version", "3", *common], env
        ),
    }
    yield started
    for server in started.values():
        server.stop()


def _x(rows: int, seq: int) -> dict[str, np.ndarray]:
    return {"x": np.arange(rows * seq, dtype=np.float32).reshape(rows, seq)}


def _clients(
    servers: dict[str, ServerProcess], registry: CollectorRegistry
) -> tuple[BladeClient, EasClient]:
    metrics = ClientMetrics(registry)
    plain = EasClient(urls=[servers["1"].url], model="tagger", version="1", metrics=metrics)
    blade = BladeClient(
        urls=[servers["3"].url],
        model="tagger",
        version="3",
        blade=PROFILE,
        fallback=plain,
        metrics=metrics,
        labels=LABELS,
    )
    return blade, plain


def _fallbacks(registry: CollectorRegistry, reason: str) -> float:
    value = registry.get_sample_value("autoai_client_fallbacks_total", {**LABELS, "reason": reason})
    return 0.0 if value is None else value


def test_a_batch_above_the_profile_is_split_and_reassembled(
    servers: dict[str, ServerProcess],
) -> None:
    registry = CollectorRegistry()
    blade, plain = _clients(servers, registry)
    with blade, plain:
        inputs = _x(10, 8)
        out = blade.infer(inputs)
    np.testing.assert_allclose(out["y"], inputs["x"] + 3, rtol=1e-6)
    assert _fallbacks(registry, "profile") == 0


def test_a_sequence_outside_the_profile_goes_to_the_fallback(
    servers: dict[str, ServerProcess],
) -> None:
    registry = CollectorRegistry()
    blade, plain = _clients(servers, registry)
    with blade, plain:
        inputs = _x(2, 16)
        out = blade.infer(inputs)
    np.testing.assert_allclose(out["y"], inputs["x"] + 1, rtol=1e-6)
    assert _fallbacks(registry, "profile") == 1


def test_without_a_fallback_an_out_of_profile_request_is_refused(
    servers: dict[str, ServerProcess],
) -> None:
    with BladeClient(urls=[servers["3"].url], model="tagger", blade=PROFILE) as blade:
        with pytest.raises(OutsideProfile, match="sequence length 16, outside the blade profile"):
            blade.infer(_x(2, 16))


def test_when_the_blade_service_is_down_calls_fall_back_and_are_counted(
    servers: dict[str, ServerProcess], tmp_path: Path
) -> None:
    registry = CollectorRegistry()
    metrics = ClientMetrics(registry)
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    with (
        EasClient(urls=[servers["1"].url], model="tagger", version="1") as plain,
        BladeClient(
            urls=[dead],
            model="tagger",
            version="3",
            blade=PROFILE,
            fallback=plain,
            metrics=metrics,
            labels=LABELS,
        ) as blade,
    ):
        for _ in range(3):
            inputs = _x(2, 8)
            np.testing.assert_allclose(blade.infer(inputs)["y"], inputs["x"] + 1, rtol=1e-6)
    assert _fallbacks(registry, "blade_unavailable") == 3


def test_async_blade_client_splits_concurrently(servers: dict[str, ServerProcess]) -> None:
    async def main() -> dict[str, np.ndarray]:
        async with (
            AsyncEasClient(urls=[servers["1"].url], model="tagger", version="1") as plain,
            AsyncBladeClient(
                urls=[servers["3"].url], model="tagger", version="3", blade=PROFILE, fallback=plain
            ) as blade,
        ):
            split = await blade.infer(_x(9, 4))
            fallback = await blade.infer(_x(1, 9))
            return {"split": split["y"], "fallback": fallback["y"]}

    out = asyncio.run(main())
    np.testing.assert_allclose(out["split"], _x(9, 4)["x"] + 3, rtol=1e-6)
    np.testing.assert_allclose(out["fallback"], _x(1, 9)["x"] + 1, rtol=1e-6)
