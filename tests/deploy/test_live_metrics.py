"""Live ``/metrics`` of every component under real traffic.

The control plane runs in this process on a real socket (uvicorn, embedded SQLite store), deploys
two versions of a tiny model as real eas-server processes and publishes version 1 with version 2
as its shadow; an SDK-using application (a subprocess, ``_sdk_app``) calls the model and serves its
registry. Each ``/metrics`` is read as Prometheus reads it (text format), before and after the
calls: names, types and label sets are those the components' metric classes define
(``_exported``), and the counts move by exactly what was sent.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from autoai.api import ControlSettings
from autoai.control import ControlClient, ControlError
from tests.fixtures import onnx_models
from tests.fixtures.system import control_plane_in_thread, kill_recorded_instances, wait

from ._exported import exported
from ._promtool import REPO, run_promtool

pytestmark = pytest.mark.slow

TOKEN = "live-token"
CALLS = 40
ROWS = 2  # rows per call (_sdk_app sends a [2, 4] tensor)


@dataclass
class Scrape:
    """One ``/metrics``: family types, and sample values by (name, labels)."""

    types: dict[str, str] = field(default_factory=dict)
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = field(default_factory=dict)

    @classmethod
    def get(cls, url: str) -> Scrape:
        answer = httpx.get(url, timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.headers["content-type"].startswith("text/plain")
        scrape = cls()
        for family in text_string_to_metric_families(answer.text):
            scrape.types[family.name] = family.type
            for s in family.samples:
                scrape.samples[(s.name, frozenset(s.labels.items()))] = s.value
        return scrape

    def value(self, name: str, **labels: str) -> float:
        """The sum of the samples of ``name`` whose labels include ``labels``."""
        wanted = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and wanted <= ls)

    def label_sets(self, prefix: str) -> dict[str, set[frozenset[str]]]:
        """Sample name -> the label-name sets it appears with, for names starting with prefix."""
        out: dict[str, set[frozenset[str]]] = {}
        for name, labels in self.samples:
            if name.startswith(prefix):
                out.setdefault(name, set()).add(frozenset(k for k, _ in labels))
        return out


def _check_against_definitions(scrape: Scrape, component: str, prefix: str) -> None:
    """Every family of ``prefix`` has the type, and every sample the labels, that the component's
    metric classes define; and every family they define is served (``_created`` gauges only come
    with a series)."""
    defined = exported()[component]
    families = {name: kind for name, kind in scrape.types.items() if name.startswith(prefix)}
    expected_families = {}
    for name, (kind, _) in defined.items():
        if name.endswith("_created"):  # the text format serves these as gauges of their own
            expected_families[name] = "gauge"
            continue
        base = name
        for suffix in ("_bucket", "_count", "_sum", "_total"):
            if kind in ("histogram", "counter") and name.endswith(suffix):
                base = name.removesuffix(suffix)
                break
        expected_families[base] = kind
    assert families.items() <= expected_families.items(), component
    served = {n for n in expected_families if not n.endswith("_created")}
    assert served <= families.keys(), f"{component}: {served - families.keys()} not served"
    for name, label_sets in scrape.label_sets(prefix).items():
        assert name in defined, f"{component}: {name} is served but not defined"
        assert label_sets == {defined[name][1]}, f"{component}: {name} {label_sets}"


def _wait(done: Callable[[], bool], what: str, timeout: float = 60) -> None:
    # the shared wait: a StoreUnavailable from ``done`` is "not yet", named on timeout
    wait(done, timeout, what, step=0.05)


class SdkApp:
    """The ``_sdk_app`` subprocess, stopped by closing its stdin (then by PID)."""

    def __init__(self, store_url: str, model: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.deploy._sdk_app", store_url, model],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        assert line.startswith("metrics on "), f"the SDK app did not start: {line!r}"
        self.metrics_url = line.removeprefix("metrics on ") + "/metrics"

    def call(self, n: int) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline().strip()
        assert line == f"done {n}", f"the SDK app failed its calls: {line!r}"

    def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Live:
    url: str
    """The control plane."""
    control: ControlClient
    sdk: SdkApp
    revision: int
    before: Scrape
    """The control plane's metrics before anything was registered."""

    def instances(self) -> dict[str, str]:
        """Version -> the /metrics URL of its one instance, from the control plane's HTTP SD."""
        groups = self.control.prometheus_targets()
        return {
            g.labels["version"]: f"http://{t}{g.labels['__metrics_path__']}"
            for g in groups
            for t in g.targets
        }


def _deploy(control: ControlClient, tmp: Path) -> int:
    """Register versions 1 and 2 of `tagger`, deploy both, publish 1 with 2 as full shadow."""
    for tag in (1.0, 2.0):
        model = onnx_models.tagged(tmp, tag)
        control.register_model("tagger", uri=f"file://{model}")
    spec = {"processor": "onnx", "metadata": {"instance": 1}}
    jobs = [control.deploy("tagger", v, spec) for v in ("1", "2")]
    for job in jobs:
        control.wait_job(job, timeout=120)
    table = {"routes": [{"version": "1", "weight": 100}], "shadow": {"version": "2", "ratio": 1.0}}
    return control.publish("tagger", table).revision


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    # set up before tests/conftest.py's per-test HOME: give this process and the ones it starts
    # (instances, the SDK app) a HOME of their own for the stores' snapshots
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        yield from _live(tmp_path_factory.mktemp("live"))


def _live(root: Path) -> Iterator[Live]:
    store_url = f"sqlite:///{root / 'store.db'}"
    settings = ControlSettings(
        store_url=store_url, repo_dir=root / "repo", run_dir=root / "run", admin_token=TOKEN
    )
    try:
        with (
            control_plane_in_thread(settings) as url,
            ControlClient(url, token=TOKEN, timeout=30) as control,
        ):
            sdk: SdkApp | None = None
            try:
                before = Scrape.get(f"{url}/metrics")
                revision = _deploy(control, root)
                sdk = SdkApp(store_url, "tagger")
                yield Live(url, control, sdk, revision, before)
            finally:
                if sdk is not None:
                    sdk.stop()
                for version in ("1", "2"):  # drain and stop; what is left is killed below
                    with contextlib.suppress(ControlError):
                        control.undeploy("tagger", version, force=True)
    finally:
        kill_recorded_instances(store_url)


def test_every_component_s_metrics_move_under_traffic(live: Live) -> None:
    servers = live.instances()
    assert sorted(servers) == ["1", "2"]
    primary, shadow = (Scrape.get(servers[v]) for v in ("1", "2"))
    sdk_before = Scrape.get(live.sdk.metrics_url)
    labels = {"model": "tagger", "version": "1", "processor": "onnx"}
    shadow_labels = {**labels, "version": "2"}

    live.sdk.call(CALLS)

    # the SDK app: every family defined, with its type; calls, duration, route revision
    def shadows_done() -> bool:  # mirrored after each call returned, on the SDK's shadow pool
        scrape = Scrape.get(live.sdk.metrics_url)
        return scrape.value("autoai_client_shadow_requests_total", **shadow_labels) == CALLS

    _wait(shadows_done, "the shadow calls")
    sdk = Scrape.get(live.sdk.metrics_url)
    _check_against_definitions(sdk, "sdk", "autoai_client_")
    for name in ("autoai_client_requests_total", "autoai_client_request_duration_seconds_count"):
        assert sdk_before.value(name, **labels) == 0
    assert sdk.value("autoai_client_requests_total", **labels, outcome="ok") == CALLS
    assert sdk.value("autoai_client_requests_total", **labels) == CALLS  # no other outcome
    assert sdk.value("autoai_client_request_duration_seconds_count", **labels) == CALLS
    assert sdk.value("autoai_client_request_duration_seconds_bucket", **labels, le="+Inf") == CALLS
    assert 0 < sdk.value("autoai_client_request_duration_seconds_sum", **labels) < CALLS * 5
    assert sdk.value("autoai_client_route_revision", **labels) == live.revision
    assert sdk.value("autoai_client_retries_total", **labels) == 0
    # shadow: y = x + 1 against y = x + 2 on the same x; each call compared once
    compared = sdk.value("autoai_client_shadow_agreement_count", **shadow_labels)
    outcomes = {
        o: sdk.value("autoai_client_shadow_requests_total", **shadow_labels, outcome=o)
        for o in ("agree", "disagree", "error", "dropped")
    }
    assert outcomes["error"] == 0 and compared == outcomes["agree"] + outcomes["disagree"]
    assert compared + outcomes["dropped"] == CALLS
    assert 0 < sdk.value("autoai_client_shadow_agreement_sum", **shadow_labels) < compared
    assert sdk.types["autoai_client_fallbacks"] == "counter"  # no blade route: no series

    # the model servers: requests, latency, queue and compute, batches
    after = Scrape.get(servers["1"])
    _check_against_definitions(after, "eas-server", "eas_")

    def delta(name: str, **more: str) -> float:
        return after.value(name, **labels, **more) - primary.value(name, **labels, **more)

    assert delta("eas_requests_total", outcome="success") == CALLS
    assert delta("eas_requests_total") == CALLS
    for histogram in ("request_duration_seconds", "queue_duration_seconds"):
        assert delta(f"eas_{histogram}_count") == CALLS, histogram
    assert delta("eas_compute_duration_seconds_count") == CALLS
    batches = delta("eas_batch_size_count")
    assert 1 <= batches <= CALLS and delta("eas_batch_size_sum") == CALLS * ROWS
    assert delta("eas_batches_total") == batches  # one trigger per batch
    assert after.value("eas_queue_depth", **labels) == 0
    # the server-side latency of a call is part of the client-side one
    server_s = delta("eas_request_duration_seconds_sum")
    assert 0 < server_s < sdk.value("autoai_client_request_duration_seconds_sum", **labels)
    shadow_after = Scrape.get(servers["2"])
    assert (
        shadow_after.value("eas_requests_total", **shadow_labels, outcome="success")
        - shadow.value("eas_requests_total", **shadow_labels, outcome="success")
    ) == compared

    # the control plane: two deploys, one publish, two ready instances
    control = Scrape.get(f"{live.url}/metrics")
    _check_against_definitions(control, "control plane", "autoai_")
    before = live.before
    assert before.value("autoai_deploys_total", outcome="succeeded") == 0
    assert control.value("autoai_deploys_total", outcome="succeeded") == 2
    assert control.value("autoai_deploys_total", outcome="failed") == 0
    assert control.value("autoai_deploy_duration_seconds_count") == 2
    assert before.value("autoai_publishes_total") == 0
    assert control.value("autoai_publishes_total", action="publish", outcome="published") == 1
    assert control.value("autoai_publishes_total") == 1
    assert control.value("autoai_jobs", kind="deploy", state="succeeded") == 2
    assert (before.value("autoai_deployments"), control.value("autoai_deployments")) == (0, 2)
    for version in ("1", "2"):
        ready = {"model": "tagger", "version": version, "processor": "onnx", "state": "ready"}
        assert control.value("autoai_instances", **ready) == 1
    assert control.value("autoai_instances", state="dead") == 0
    assert control.value("autoai_store_up") == 1


def test_prometheus_discovers_the_instances_through_the_control_plane(
    live: Live, tmp_path: Path
) -> None:
    """Prometheus' own HTTP SD code (promtool) on the autoai-models job, pointed at this
    control plane, yields both instances with their model, version, processor and service."""
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    config.pop("rule_files")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "autoai-models"]
    sd = job["http_sd_configs"][0]
    sd["url"] = str(httpx.URL(sd["url"]).copy_with(host="127.0.0.1", port=httpx.URL(live.url).port))
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = run_promtool("check", "service-discovery", str(path), "autoai-models", "--timeout=3s")
    assert done.returncode == 0, done.stdout + done.stderr
    targets = {
        t["labels"]["__address__"]: {k: v for k, v in t["labels"].items() if not k.startswith("__")}
        for t in json.loads(done.stdout)
        if t.get("labels")
    }
    servers = live.instances()
    assert {f"http://{a}/metrics" for a in targets} == set(servers.values())
    for address, labels in targets.items():
        version = next(v for v, url in servers.items() if url == f"http://{address}/metrics")
        assert labels == {
            "job": "autoai-models",
            "instance": address,
            "model": "tagger",
            "version": version,
            "processor": "onnx",
            "service": f"tagger-{version}",
        }


def test_the_served_metrics_pass_promtool_lint(live: Live) -> None:
    """``promtool check metrics``: Prometheus' naming and exposition lint, on each live text."""
    urls = [*live.instances().values(), f"{live.url}/metrics", live.sdk.metrics_url]
    for url in urls:
        text = httpx.get(url, timeout=10).text
        done = run_promtool("check", "metrics", input=text)
        assert done.returncode == 0, f"{url}: {done.stdout}{done.stderr}"
