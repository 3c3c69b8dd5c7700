"""Many model versions in one real eas-server process (``--model-repository``), on real ONNX
files: every model through stock tritonclient (HTTP and gRPC) and through the SDK routing by the
store; loads, unloads and replacements under traffic (no failed call on the other models, nor on
the version being replaced); failing loads; the repository API's token; SIGTERM; and one metrics
exposition for every model.

Models are ``autoai.testing.models.tagged`` (y = x + tag): each answer says which version gave it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families
from tritonclient.utils import InferenceServerException

from autoai.sdk import ModelClient
from autoai.testing import models, wait
from config_store import ConfigStore, Instance, open_store
from eas_client import EasClient
from eas_server._cli import main
from eas_server.processors import register_processor
from eas_server.processors.onnx import OnnxProcessor

from .conftest import wait_until

TOKEN = "repository-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
"""For httpx; tritonclient gets ``auth()``: its ``infer`` writes into the headers it is given."""
X = np.array([[0.5, 1.0, 1.5, 2.0]], dtype=np.float32)
SIGNATURE = {
    "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, -1]}],
    "outputs": [{"name": "y", "datatype": "FP32", "shape": [-1, -1]}],
}


def auth() -> dict[str, str]:
    """The token's headers, a fresh dict for each tritonclient call."""
    return dict(AUTH)


def _repository(root: Path, tags: Mapping[str, Mapping[str, float]]) -> Path:
    """``root/{name}/{version}/model.onnx`` for ``{name: {version: tag}}``."""
    for name, versions in tags.items():
        for version, tag in versions.items():
            directory = root / name / version
            directory.mkdir(parents=True)
            models.tagged(directory, tag).rename(directory / "model.onnx")
    return root


def _tag(x: np.ndarray, y: np.ndarray) -> float:
    return round(float(np.mean(y - x)), 3)


HOLD = 42.0
"""A call whose first value is this is held in its batch by ``FileGatedProcessor``."""


class FileGatedProcessor(OnnxProcessor):
    """The onnx processor, inside an eas-server process started with ``gated=True``: a batch
    whose first value is ``HOLD`` creates ``$TEST_GATE_DIR/running`` and waits until the test
    creates ``$TEST_GATE_DIR/release`` (a bounded wait), so a call is in flight for as long as
    the test needs, whatever the machine's speed."""

    def run(
        self, inputs: dict[str, np.ndarray], worker: int, outputs: frozenset[str] | None = None
    ) -> Mapping[str, np.ndarray]:
        x = inputs.get("x")
        if x is not None and x.size and float(x.flat[0]) == HOLD:
            gate = Path(os.environ["TEST_GATE_DIR"])
            (gate / "running").touch()
            wait(lambda: (gate / "release").exists(), 60, "the test to release the call", 0.005)
        return super().run(inputs, worker, outputs)


def serve_gated(argv: list[str]) -> int:
    """eas-server's command line, with ``file-gated`` among the processors."""
    register_processor("file-gated", FileGatedProcessor)
    return main(argv)


_GATED = "import sys; from tests.eas_server.test_repository import serve_gated; "
_GATED += "sys.exit(serve_gated(sys.argv[1:]))"


class RepositoryServer:
    """One ``eas-server --model-repository`` process, with the token; its log in a file.

    Args:
        argv: eas-server's arguments.
        log: where its stderr goes (named when it fails to start).
        gated: started through ``serve_gated`` (``file-gated`` processor available).
        env: more environment.
    """

    def __init__(
        self, argv: list[str], log: Path, *, gated: bool = False, env: dict[str, str] | None = None
    ) -> None:
        command = ["-c", _GATED] if gated else ["-m", "eas_server"]
        self.log = log
        with log.open("w") as err:  # the child holds its own descriptor
            self.proc = subprocess.Popen(
                [sys.executable, *command, *argv],
                stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **(env or {})},
            )  # fmt: skip
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"eas-server did not start: {line!r}\n{log.read_text()[-3000:]}")
        self.url = line.removeprefix("listening on ")
        self.address = self.url.removeprefix("http://")
        self.grpc_address = ""
        if "--grpc-port" in argv:
            line = self.proc.stdout.readline().strip()
            assert line.startswith("grpc listening on "), line
            self.grpc_address = line.removeprefix("grpc listening on ")

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def post(self, path: str, body: Any = None, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.post(f"{self.url}{path}", json=body, headers=headers, timeout=30)

    def get(self, path: str, token: str | None = TOKEN) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.get(f"{self.url}{path}", headers=headers, timeout=30)

    def index(self) -> dict[tuple[str, str], tuple[str, str]]:
        """(name, version) -> (state, reason)."""
        response = self.post("/v2/repository/index")
        assert response.status_code == 200, response.text
        return {(e["name"], e["version"]): (e["state"], e["reason"]) for e in response.json()}

    def load(self, name: str, **config: Any) -> httpx.Response:
        body = {"parameters": {"config": json.dumps(config)}} if config else None
        return self.post(f"/v2/repository/models/{name}/load", body)

    def infer(self, model: str, version: str | None = None) -> float:
        """The tag of the version that answered, asserting a 200."""
        response = self.post(_infer_path(model, version), _infer_body(X))
        assert response.status_code == 200, response.text
        return _tag(X, np.array(response.json()["outputs"][0]["data"], dtype=np.float32))


def _infer_path(model: str, version: str | None = None) -> str:
    return f"/v2/models/{model}" + (f"/versions/{version}" if version else "") + "/infer"


def _infer_body(x: np.ndarray) -> dict[str, Any]:
    return {
        "inputs": [{"name": "x", "datatype": "FP32", "shape": list(x.shape), "data": x.tolist()}]
    }


StartRepository = Callable[..., RepositoryServer]


@pytest.fixture
def start_repository(tmp_path: Path) -> Iterator[StartRepository]:
    """Start ``eas-server --model-repository ROOT --token TOKEN ...`` (keyword ``gated``, ``env``:
    as ``RepositoryServer``); every one is stopped at the end."""
    started: list[RepositoryServer] = []

    def start(root: Path, *args: str, **options: Any) -> RepositoryServer:
        argv = ["--model-repository", str(root), "--port", "0", "--token", TOKEN]
        argv += ["--max-batch-timeout-ms", "1", "--intra-op-threads", "1", *args]
        log = tmp_path / f"eas-server-{len(started)}.log"
        server = RepositoryServer(argv, log, **options)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@dataclass
class Target:
    """Calls to one model (a version, or none: the highest) and what came back, per thread."""

    model: str
    version: str | None = None
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    tags: list[list[float]] = field(default_factory=list)


class Traffic:
    """``threads`` clients per target, each on its own keep-alive connection with no retry,
    calling until stopped or for at most ``limit_s`` seconds (a bound, not a pace); every
    outcome and every tag is kept."""

    def __init__(self, url: str, targets: Sequence[Target], threads: int = 2, limit_s: float = 90):
        self.url = url
        self.targets = list(targets)
        self.stop = threading.Event()
        self.limit_s = limit_s
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._client, args=(t,), daemon=True)
            for t in self.targets
            for _ in range(threads)
        ]

    def _client(self, target: Target) -> None:
        path = f"/v2/models/{target.model}"
        path += (f"/versions/{target.version}" if target.version else "") + "/infer"
        body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": X.tolist()}]}
        seen: list[float] = []
        with self._lock:
            target.tags.append(seen)
        deadline = time.monotonic() + self.limit_s
        with httpx.Client(base_url=self.url, headers=auth(), timeout=30) as http:
            while not self.stop.is_set() and time.monotonic() < deadline:
                try:
                    r = http.post(path, json=body)
                except httpx.HTTPError as exc:
                    with self._lock:
                        target.failed.append(repr(exc))
                    continue
                with self._lock:
                    if r.status_code == 200:
                        target.ok += 1
                        seen.append(_tag(X, np.array(r.json()["outputs"][0]["data"])))
                    else:
                        target.failed.append(f"{r.status_code} {r.text}")

    def progressed(self, by: int = 10) -> None:
        """Wait until every target answered ``by`` more calls than now: traffic flows."""
        with self._lock:
            marks = [t.ok + by for t in self.targets]
        wait_until(
            lambda: all(t.ok >= m for t, m in zip(self.targets, marks, strict=True)), timeout=30
        )

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        self.progressed()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        assert not any(t.is_alive() for t in self._threads), "a client call hung"


def _route_table(model: str, version: str) -> bytes:
    """All of ``model``'s traffic to ``{model}-{version}``."""
    route = {"version": version, "weight": 100, "service": f"{model}-{version}"}
    doc = {
        "schema_version": 1,
        "model": model,
        "revision": 0,
        "routes": [{**route, "processor": "onnx"}],
        "sticky_key": None,
        "shadow": None,
        "signature": SIGNATURE,
    }
    return json.dumps(doc).encode()


def _addresses(store: ConfigStore, service: str) -> list[str]:
    return [i.address for i in store.instances(service)]


# ------------------------------------------------------------------------------------ the tests


def test_models_of_one_instance_through_tritonclient_and_the_sdk(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    root = _repository(tmp_path / "repo", {"alpha": {"1": 1.0, "2": 2.0}, "beta": {"1": 10.0}})
    url = f"sqlite://{tmp_path / 'store.db'}"
    server = start_repository(root, "--store", url, "--service", "pool")
    with open_store(url, snapshot_dir=False, failover_dir=False) as store:
        wait_until(lambda: all(store.instances(s) for s in ("pool", "alpha-2", "beta-1")))
        (pool,) = store.instances("pool")
        assert pool.address == server.address
        assert pool.payload["pool"] is True and pool.payload["processor"] == "repository"
        assert pool.payload["pid"] == server.proc.pid
        for model, version in (("alpha", "2"), ("beta", "1")):
            (inst,) = store.instances(f"{model}-{version}")
            assert inst.address == server.address
            assert (inst.payload["model"], inst.payload["version"]) == (model, version)
            assert (inst.payload["processor"], inst.payload["weight"]) == ("onnx", 100)
        assert store.instances("alpha-1") == []  # only the highest version loads at start

        client = httpclient.InferenceServerClient(server.address)
        try:
            assert client.is_server_ready()
            calls = (("alpha", "", 2.0), ("alpha", "2", 2.0), ("beta", "", 10.0))
            for model, version, tag in calls:
                assert client.is_model_ready(model, version, headers=auth())
                inp = httpclient.InferInput("x", list(X.shape), "FP32")
                inp.set_data_from_numpy(X)
                result = client.infer(model, [inp], model_version=version, headers=auth())
                assert _tag(X, result.as_numpy("y")) == tag
            assert client.get_model_metadata("beta", headers=auth())["versions"] == ["1"]
            client.load_model("alpha", headers=auth(), config=json.dumps({"version": "1"}))
            assert client.is_model_ready("alpha", "1", headers=auth())
            stats = client.get_inference_statistics(headers=auth())["model_stats"]
            counts = {(s["name"], s["version"]): s["inference_count"] for s in stats}
            assert counts == {("alpha", "1"): 0, ("alpha", "2"): 2, ("beta", "1"): 1}
        finally:
            client.close()
        wait_until(lambda: _addresses(store, "alpha-1") == [server.address])

        # the SDK: EasClient by service, ModelClient by route table, both through the store
        for service, tag in (("alpha-1", 1.0), ("alpha-2", 2.0), ("beta-1", 10.0)):
            with EasClient(store=store, service=service, token=TOKEN) as eas:
                assert _tag(X, eas.infer({"x": X})["y"]) == tag
        store.publish("alpha", _route_table("alpha", "1"), group="models")
        store.publish("beta", _route_table("beta", "1"), group="models")
        with ModelClient(store, token=TOKEN, registry=CollectorRegistry()) as sdk:
            assert _tag(X, sdk.predict("alpha", {"x": X})["y"]) == 1.0
            assert _tag(X, sdk.predict("alpha", {"x": X}, version="1")["y"]) == 1.0
            assert _tag(X, sdk.predict("beta", {"x": X})["y"]) == 10.0


def test_load_unload_and_replace_under_traffic(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    """The other models answer every call while one model is loaded, replaced and unloaded; the
    version being replaced answers every call too, the old one until the new one takes over."""
    root = _repository(
        tmp_path / "repo",
        {"alpha": {"1": 1.0, "2": 2.0}, "beta": {"1": 10.0}, "gamma": {"1": 100.0}},
    )
    replacement = models.tagged(tmp_path / "replacement", 5.0)
    url = f"sqlite://{tmp_path / 'store.db'}"
    server = start_repository(root, "--store", url)
    beta, gamma = Target("beta"), Target("gamma")
    with (
        open_store(url, snapshot_dir=False, failover_dir=False) as store,
        Traffic(server.url, [beta, gamma]) as others,
    ):
        triton = httpclient.InferenceServerClient(server.address)
        try:
            # load another version beside the loaded one
            triton.load_model("alpha", headers=auth(), config=json.dumps({"version": "1"}))
            assert (server.infer("alpha", "1"), server.infer("alpha")) == (1.0, 2.0)
            wait_until(lambda: _addresses(store, "alpha-1") == [server.address])
            # unload one version: it leaves the store, the other serves unversioned calls
            assert server.post("/v2/repository/models/alpha/unload",
                               {"parameters": {"version": "2"}}).status_code == 200  # fmt: skip
            assert store.instances("alpha-2") == []  # deregistered before the call returned
            assert server.infer("alpha") == 1.0
            others.progressed()

            # replace the loaded version 1 with another file and config, under its own traffic
            pinned = Target("alpha", "1")
            with Traffic(server.url, [pinned]) as replaced:
                (before,) = store.instances("alpha-1")
                response = server.load(
                    "alpha", version="1", model_path=str(replacement),
                    metadata={"rpc": {"max_batch_size": 4}},
                )  # fmt: skip
                assert response.status_code == 200, response.text
                assert server.infer("alpha", "1") == 5.0
                replaced.progressed()
            assert not pinned.failed, pinned.failed[:5]
            for seen in pinned.tags:  # the old answers, then the new ones, never back
                assert seen == sorted(seen) and set(seen) <= {1.0, 5.0}, seen
            assert any(5.0 in seen for seen in pinned.tags)
            config = server.get("/v2/models/alpha/versions/1/config").json()
            assert config["max_batch_size"] == 4
            (after,) = store.instances("alpha-1")  # the registration carried over
            assert (after.address, after.payload["started"]) == (
                before.address,
                before.payload["started"],
            )
            # a replacement that registers differently (its weight) is announced anew
            reweighted = server.load("alpha", version="1", model_path=str(replacement), weight=30)
            assert reweighted.status_code == 200, reweighted.text
            (announced,) = store.instances("alpha-1")
            assert announced.payload["weight"] == 30
            assert announced.payload["started"] > before.payload["started"]

            # unload the whole model, then load it again from the directory
            triton.unload_model("alpha", headers=auth())
            assert server.index()[("alpha", "2")] == ("UNAVAILABLE", "unloaded")
            assert store.instances("alpha-1") == []
            assert server.post("/v2/models/alpha/infer", {}).status_code == 404
            triton.load_model("alpha", headers=auth())
            assert server.infer("alpha") == 2.0
            others.progressed()
        finally:
            triton.close()
    for target in (beta, gamma):
        assert not target.failed, target.failed[:5]
        assert target.ok > 0
    assert {tag for seen in beta.tags for tag in seen} == {10.0}
    assert {tag for seen in gamma.tags for tag in seen} == {100.0}


def test_a_failing_load_says_why_and_the_others_keep_serving(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    root = _repository(tmp_path / "repo", {"alpha": {"1": 1.0}, "beta": {"1": 10.0}})
    (root / "broken" / "1").mkdir(parents=True)
    (root / "broken" / "1" / "model.onnx").write_bytes(b"\x80\x04 a pickle, not ONNX")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_text("not an onnx file at all\n")
    good = models.tagged(tmp_path / "good", 3.0)
    server = start_repository(root)
    # the one that failed at start is listed with its reason; the instance serves the others
    state, reason = server.index()[("broken", "1")]
    assert state == "UNAVAILABLE" and "is not an ONNX model" in reason and "pickle" in reason

    alpha, beta = Target("alpha", "1"), Target("beta")
    with Traffic(server.url, [alpha, beta]) as traffic:
        failing = [
            ("ghost", {"model_path": str(good), "processor": "nope"}, "unknown processor 'nope'"),
            ("ghost", {"model_path": str(tmp_path / "gone.onnx")}, "gone.onnx does not exist"),
            ("ghost", {"model_path": str(corrupt)}, "it is text, starting 'not an onnx file"),
            ("broken", {}, "is not an ONNX model"),
            # a reload of the loaded alpha 1 fails: alpha 1 keeps serving as it was
            ("alpha", {"version": "1", "model_path": str(corrupt)}, "is not an ONNX model"),
            ("alpha", {"version": "1", "processor": "nope"}, "unknown processor 'nope'"),
        ]
        for name, config, why in failing:
            response = server.load(name, **config)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error.startswith(f"failed to load '{name}': ") and why in error, error
            index = server.index()
            if name == "alpha":
                assert index[("alpha", "1")] == ("READY", "")
            else:
                (entry,) = [v for (n, _), v in index.items() if n == name]
                assert entry[0] == "UNAVAILABLE" and why in entry[1], entry
        client = httpclient.InferenceServerClient(server.address)
        try:  # stock tritonclient gets the reason too
            with pytest.raises(InferenceServerException, match="unknown processor 'nope'"):
                client.load_model("ghost", headers=auth(), config=json.dumps({"processor": "nope",
                                  "model_path": str(good)}))  # fmt: skip
        finally:
            client.close()
        traffic.progressed()
    for target, tag in ((alpha, 1.0), (beta, 10.0)):
        assert not target.failed, target.failed[:5]
        assert {t for seen in target.tags for t in seen} == {tag}
    assert server.load("ghost", model_path=str(good)).status_code == 200  # the reason is cleared
    assert server.index()[("ghost", "1")] == ("READY", "")
    assert server.infer("ghost") == 3.0


def test_the_repository_api_needs_the_token(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    root = _repository(tmp_path / "repo", {"alpha": {"1": 1.0}, "beta": {"1": 10.0}})
    server = start_repository(root)
    guarded = [
        ("POST", "/v2/repository/index"),
        ("POST", "/v2/repository/models/alpha/load"),
        ("POST", "/v2/repository/models/alpha/unload"),
        ("POST", "/v2/repository/models/beta/unload"),
        ("GET", "/v2/resources"),
        ("GET", "/v2"),
        ("GET", "/v2/models/stats"),
        ("GET", "/v2/models/alpha"),
        ("POST", "/v2/models/alpha/infer"),
    ]
    for method, path in guarded:
        for headers, error in (
            ({}, "missing token: send Authorization: Bearer <token>"),
            ({"Authorization": "Bearer wrong"}, "invalid token"),
            ({"Authorization": "wrong"}, "invalid token"),
        ):
            r = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=30)
            assert (r.status_code, r.json()) == (401, {"error": error}), (method, path)
            assert r.headers["www-authenticate"] == "Bearer"
    for path in ("/v2/health/live", "/v2/health/ready", "/metrics"):
        assert httpx.get(f"{server.url}{path}", timeout=30).status_code == 200, path
    # nothing was loaded or unloaded by the refused calls; the bare token (EAS's way) works too
    bare = httpx.post(f"{server.url}/v2/repository/index", headers={"Authorization": TOKEN})
    assert {(e["name"], e["state"]) for e in bare.json()} == {("alpha", "READY"), ("beta", "READY")}

    client = httpclient.InferenceServerClient(server.address)
    try:
        with pytest.raises(InferenceServerException, match="missing token"):
            client.get_model_repository_index()
        with pytest.raises(InferenceServerException, match="invalid token"):
            client.unload_model("beta", headers={"Authorization": "Bearer wrong"})
        assert client.is_model_ready("beta", headers=auth())
        client.unload_model("beta", headers=auth())
        assert not client.is_model_ready("beta", headers=auth())
        index = client.get_model_repository_index(headers=auth())
        assert {(e["name"], e["state"]) for e in index} == {
            ("alpha", "READY"),
            ("beta", "UNAVAILABLE"),
        }
        config = json.dumps({"metadata": {"rpc": {"max_batch_size": 2}}})
        client.load_model("beta", headers=auth(), config=config)
        assert client.get_model_config("beta", headers=auth())["max_batch_size"] == 2
        with pytest.raises(InferenceServerException, match="not loaded here"):
            client.unload_model("nope", headers=auth())
    finally:
        client.close()
    assert server.infer("beta") == 10.0


def test_sigterm_takes_every_model_out_of_the_store_and_finishes_the_calls(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    """Clients route by the store, as the SDK does: on SIGTERM every model and the instance leave
    it first; a call held in its batch at that moment, and every call still arriving, are
    answered; then the process exits 0."""
    root = _repository(tmp_path / "repo", {"alpha": {"1": 1.0}, "beta": {"1": 10.0}})
    (root / "beta" / "config.json").write_text(json.dumps({"processor": "file-gated"}))
    gate = tmp_path / "gate"
    gate.mkdir()
    url = f"sqlite://{tmp_path / 'store.db'}"
    server = start_repository(
        root, "--store", url, "--service", "pool", "--drain-timeout-s", "20",
        gated=True, env={"TEST_GATE_DIR": str(gate)},
    )  # fmt: skip
    services = ("pool", "alpha-1", "beta-1")
    live: list[Instance] = []
    ok = [0, 0, 0, 0]
    failures: list[str] = []
    stop = threading.Event()

    def client(k: int) -> None:
        with httpx.Client(headers=AUTH, timeout=30) as http:
            while not stop.is_set():
                targets = list(live)
                if not targets:
                    stop.wait(0.005)
                    continue
                try:
                    r = http.post(f"http://{targets[0].address}{_infer_path('alpha')}",
                                  json=_infer_body(X))  # fmt: skip
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code == 200:
                    ok[k] += 1
                else:
                    failures.append(f"{r.status_code} {r.text}")

    held: dict[str, httpx.Response] = {}
    x_held = np.full((1, 4), HOLD, dtype=np.float32)

    def held_call() -> None:
        with httpx.Client(headers=AUTH, timeout=60) as http:
            held["response"] = http.post(f"{server.url}{_infer_path('beta')}",
                                         json=_infer_body(x_held))  # fmt: skip

    threads = [threading.Thread(target=client, args=(k,)) for k in range(len(ok))]
    threads.append(threading.Thread(target=held_call))
    with open_store(url, snapshot_dir=False, failover_dir=False) as store:
        try:
            wait_until(lambda: all(store.instances(s) for s in services))
            store.watch_instances("alpha-1", lambda found: live.__setitem__(slice(None), found))
            wait_until(lambda: bool(live))
            for t in threads:
                t.start()
            wait_until(lambda: sum(ok) >= 8 and (gate / "running").exists(), timeout=30)
            server.proc.send_signal(signal.SIGTERM)
            # deregistered first, while a call is still held and the process serves
            wait_until(lambda: all(store.instances(s) == [] for s in services), timeout=20)
            wait_until(lambda: not live)
            assert server.proc.poll() is None and "response" not in held
            (gate / "release").touch()
            assert server.proc.wait(30) == 0
        finally:
            (gate / "release").touch()
            stop.set()
            for t in threads:
                if t.ident is not None:
                    t.join(60)
    assert not failures, failures[:5]
    assert sum(ok) >= 8
    response = held["response"]
    assert response.status_code == 200, response.text
    assert _tag(x_held, np.array(response.json()["outputs"][0]["data"])) == 10.0


def _grpc_auth() -> dict[str, str]:
    return {"authorization": f"Bearer {TOKEN}"}


def test_grpc_reaches_every_model(start_repository: StartRepository, tmp_path: Path) -> None:
    root = _repository(tmp_path / "repo", {"alpha": {"1": 1.0, "2": 2.0}, "beta": {"1": 10.0}})
    server = start_repository(root, "--grpc-port", "0")
    assert server.load("alpha", version="1").status_code == 200
    client = grpcclient.InferenceServerClient(server.grpc_address)
    try:
        assert client.is_server_ready()
        for model, version, tag in (("alpha", "", 2.0), ("alpha", "1", 1.0), ("beta", "", 10.0)):
            inp = grpcclient.InferInput("x", list(X.shape), "FP32")
            inp.set_data_from_numpy(X)
            result = client.infer(model, [inp], model_version=version, headers=_grpc_auth())
            assert _tag(X, result.as_numpy("y")) == tag
            assert client.is_model_ready(model, version, headers=_grpc_auth())
        stats = client.get_inference_statistics(headers=_grpc_auth(), as_json=True)["model_stats"]
        assert {(s["name"], s["version"]) for s in stats} == {
            ("alpha", "1"), ("alpha", "2"), ("beta", "1"),
        }  # fmt: skip
        only = client.get_inference_statistics("beta", headers=_grpc_auth(), as_json=True)
        assert [s["name"] for s in only["model_stats"]] == ["beta"]
        assert client.get_model_metadata("alpha", "1", headers=_grpc_auth()).versions == ["1"]

        inp = grpcclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X)
        with pytest.raises(InferenceServerException) as unknown:
            client.infer("nope", [inp], headers=_grpc_auth())
        assert unknown.value.status() == "StatusCode.NOT_FOUND"
        assert not client.is_model_ready("nope", headers=_grpc_auth())
        with pytest.raises(InferenceServerException) as anonymous:
            client.infer("beta", [inp])
        assert anonymous.value.status() == "StatusCode.UNAUTHENTICATED"

        assert server.post("/v2/repository/models/beta/unload").status_code == 200
        with pytest.raises(InferenceServerException) as unloaded:
            client.infer("beta", [inp], headers=_grpc_auth())
        assert unloaded.value.status() == "StatusCode.NOT_FOUND"
        stats = client.get_inference_statistics(headers=_grpc_auth(), as_json=True)["model_stats"]
        assert {s["name"] for s in stats} == {"alpha"}
    finally:
        client.close()


def _series(text: str) -> dict[str, set[tuple[str, str]]]:
    """Per family of the exposition: the (model, version) of its series; a family twice fails."""
    found: dict[str, set[tuple[str, str]]] = {}
    for family in text_string_to_metric_families(text):
        assert family.name not in found, f"family {family.name} exposed twice"
        found[family.name] = {
            (s.labels["model"], s.labels["version"]) for s in family.samples if "model" in s.labels
        }
    return found


def _ok_requests(text: str) -> dict[str, float]:
    """Model -> its ``eas_requests_total{outcome="ok"}``."""
    return {
        s.labels["model"]: s.value
        for f in text_string_to_metric_families(text)
        if f.name == "eas_requests"
        for s in f.samples
        if s.name == "eas_requests_total" and s.labels["outcome"] == "success"
    }


def test_metrics_have_one_family_per_name_and_a_series_per_model(
    start_repository: StartRepository, tmp_path: Path
) -> None:
    root = _repository(tmp_path / "repo", {"alpha": {"1": 1.0}, "beta": {"1": 10.0}})
    replacement = models.tagged(tmp_path / "replacement", 4.0)
    server = start_repository(root)
    for model in ("alpha", "beta", "beta"):
        server.infer(model)
    text = server.get("/metrics", token=None).text
    types = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(types) == len(set(types)), "a family's TYPE line appears twice"
    series = _series(text)
    both = {("alpha", "1"), ("beta", "1")}
    for family in ("eas_request_duration_seconds", "eas_requests", "eas_queue_depth",
                   "eas_batch_size", "eas_build_info"):  # fmt: skip
        assert series[family] == both, family
    assert _ok_requests(text) == {"alpha": 1.0, "beta": 2.0}

    # a replacement with the same labels keeps the series; an unloaded model's are gone
    assert server.load("alpha", version="1", model_path=str(replacement)).status_code == 200
    assert server.post("/v2/repository/models/beta/unload").status_code == 200
    text = server.get("/metrics", token=None).text
    series = _series(text)
    assert all(("beta", "1") not in found for found in series.values())
    assert series["eas_requests"] == {("alpha", "1")}
    assert _ok_requests(text) == {"alpha": 1.0}  # counted on, not restarted
