"""deploy/prometheus: the configuration and rules pass promtool, name only metrics we export, and
the serverset job finds a real eas-server registered in a real ZooKeeper.

The ZooKeeper node is read back with ZooKeeper's own Java client (not kazoo, not config_store) and
decoded as Prometheus' serverset discovery decodes it; with promtool, Prometheus' discovery code
itself reads it (``promtool check service-discovery``) and the target it yields is scraped.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from config_store import open_store
from config_store._keys import SERVICES_ROOT, instances_path
from config_store.testing import ZooKeeperServer, four_letter_word, zookeeper_classpath
from tests.fixtures import onnx_models
from tests.fixtures.servers import ServerProcess
from tests.fixtures.system import wait

from . import _promql
from ._exported import TARGET_LABELS, exported
from ._promtool import REPO, run_promtool

CONFIG = REPO / "deploy" / "prometheus" / "prometheus.yml"
RULES = REPO / "deploy" / "prometheus" / "rules" / "autoai.rules.yml"
RULE_TESTS = REPO / "deploy" / "prometheus" / "rules" / "autoai.rules.test.yml"
SD_PATH = "/api/v1/sd/prometheus"


def _config() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return doc


def _job(config: Mapping[str, Any], name: str) -> dict[str, Any]:
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert name in jobs, f"no job {name} in {CONFIG}; jobs: {sorted(jobs)}"
    job: dict[str, Any] = jobs[name]
    return job


# ------------------------------------------------------------------------------ promtool


def test_promtool_check_config() -> None:
    done = run_promtool("check", "config", str(CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "1 rule files found" in done.stdout


def test_promtool_check_rules_and_their_unit_tests() -> None:
    done = run_promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    tested = run_promtool("test", "rules", str(RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr


# ------------------------------------------------------------------------- without promtool


def test_the_jobs() -> None:
    config = _config()
    assert [job["job_name"] for job in config["scrape_configs"]] == [
        "autoai-control",
        "autoai-models-zk",
        "autoai-models",
    ]
    zk_job = _job(config, "autoai-models-zk")
    (serverset,) = zk_job["serverset_sd_configs"]
    for path in serverset["paths"]:
        assert path.endswith(SERVICES_ROOT), f"{path}: not a store chroot + {SERVICES_ROOT}"
    (http_sd,) = _job(config, "autoai-models")["http_sd_configs"]
    assert httpx.URL(http_sd["url"]).path == SD_PATH
    # the eas_* series' own model/version/processor labels win over the target's
    assert zk_job["honor_labels"] is True and _job(config, "autoai-models")["honor_labels"] is True
    assert (REPO / "deploy" / "prometheus" / config["rule_files"][0]) == RULES


def test_the_sd_route_exists_on_the_control_plane() -> None:
    from autoai.api import create_app

    paths = create_app().openapi()["paths"]
    assert "get" in paths[SD_PATH] and "get" in paths["/metrics"]


def test_rules_name_only_metrics_we_export() -> None:
    samples = {name: labels for c in exported().values() for name, (_, labels) in c.items()}
    samples["up"] = frozenset()
    rules = [r for group in yaml.safe_load(RULES.read_text())["groups"] for r in group["rules"]]
    assert rules
    for rule in rules:
        usage = _promql.read(rule["expr"])
        assert usage.selectors, rule["alert"]
        for selector in usage.selectors:
            assert selector.name in samples, f"{rule['alert']}: {selector.name} is not exported"
            known = samples[selector.name] | TARGET_LABELS
            assert selector.labels <= known, f"{rule['alert']}: {selector.name}{selector.labels}"


# --------------------------------------------------------------------- Prometheus relabeling


def _expand(replacement: str, match: re.Match[str]) -> str:
    """Prometheus' ``$1`` / ``${1}`` / ``$name`` in a replacement."""

    def group(ref: re.Match[str]) -> str:
        name = ref[1]
        return match.group(int(name) if name.isdigit() else name) or ""

    return re.sub(r"\$\{?(\w+)\}?", group, replacement)


def relabel(labels: Mapping[str, str], configs: list[dict[str, Any]]) -> dict[str, str] | None:
    """Apply ``relabel_configs`` (actions replace, keep, drop) as Prometheus does; None: dropped."""
    out = dict(labels)
    for cfg in configs:
        value = cfg.get("separator", ";").join(out.get(n, "") for n in cfg["source_labels"])
        match = re.fullmatch(cfg.get("regex", "(.*)"), value)
        action = cfg.get("action", "replace")
        if (action == "keep" and match is None) or (action == "drop" and match is not None):
            return None
        if action == "replace" and match is not None:
            result = _expand(cfg.get("replacement", "$1"), match)
            if result:
                out[cfg["target_label"]] = result
            else:
                out.pop(cfg["target_label"], None)
        elif action not in ("replace", "keep", "drop"):
            raise NotImplementedError(action)
    return out


def serverset_labels(path: str, data: bytes) -> dict[str, str]:
    """The labels Prometheus' serverset discovery gives a znode (discovery/zookeeper: the JSON
    decoded into serviceEndpoint, additionalEndpoints, status, shard)."""
    doc = json.loads(data)
    endpoint = doc["serviceEndpoint"]
    assert isinstance(endpoint["host"], str) and isinstance(endpoint["port"], int), endpoint
    labels = {
        "__address__": f"{endpoint['host']}:{endpoint['port']}",
        "__meta_serverset_path": path,
        "__meta_serverset_endpoint_host": endpoint["host"],
        "__meta_serverset_endpoint_port": str(endpoint["port"]),
        "__meta_serverset_status": doc["status"],
        "__meta_serverset_shard": str(doc.get("shard", 0)),
    }
    for name, extra in doc["additionalEndpoints"].items():
        labels[f"__meta_serverset_endpoint_host_{name}"] = extra["host"]
        labels[f"__meta_serverset_endpoint_port_{name}"] = str(extra["port"])
    return labels


def test_relabeling_of_a_service_name() -> None:
    configs = _job(_config(), "autoai-models-zk")["relabel_configs"]
    doc = b'{"serviceEndpoint": {"host": "10.0.0.7", "port": 8000}, "additionalEndpoints": {}, '
    path = "/autoai/services/intent-cls-v2-12/instances/10.0.0.7:8000"
    labels = relabel(serverset_labels(path, doc + b'"status": "ALIVE"}'), configs)
    assert labels is not None
    service = (labels["service"], labels["model"], labels["version"])
    assert service == ("intent-cls-v2-12", "intent-cls-v2", "12")
    assert relabel(serverset_labels(path, doc + b'"status": "DEAD"}'), configs) is None


# ------------------------------------------------------------- a real instance in ZooKeeper


@dataclass
class Registered:
    zk: ZooKeeperServer
    server: ServerProcess
    path: str
    """Where the instance's znode should be: the serverset job's path + service + id."""
    config: dict[str, Any]


def _zk_get(zk: ZooKeeperServer, path: str) -> bytes:
    """A znode's data through ZooKeeper's own command-line client (ZooKeeperMain)."""
    cmd = ["java", "-cp", zookeeper_classpath(), "org.apache.zookeeper.ZooKeeperMain"]
    done = subprocess.run(
        [*cmd, "-server", zk.address, "get", path], capture_output=True, text=True, timeout=60
    )
    for line in done.stdout.splitlines():
        if line.startswith("{"):
            return line.encode()
    raise AssertionError(f"no JSON at {path}: {done.stdout[-2000:]} {done.stderr[-2000:]}")


def _ephemerals(zk: ZooKeeperServer) -> set[str]:
    """Every ephemeral node of the server (the ``dump`` four-letter word)."""
    dump = four_letter_word(zk.port, "dump")
    section = dump.split("ephemeral nodes dump:", 1)[1].split("Connections dump:", 1)[0]
    return {line.strip() for line in section.splitlines() if line.startswith("\t")}


@pytest.fixture(scope="module")
def registered(
    zk_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registered]:
    # set up before tests/conftest.py's per-test HOME: the server's store snapshot goes here
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HOME", str(tmp_path_factory.mktemp("home")))
        yield from _registered(zk_server, tmp_path_factory)


def _registered(
    zk_server: ZooKeeperServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Registered]:
    config = _config()
    (serverset,) = _job(config, "autoai-models-zk")["serverset_sd_configs"]
    chroot = serverset["paths"][0].removesuffix(SERVICES_ROOT)
    model = onnx_models.tagged(tmp_path_factory.mktemp("models"), 1.0)
    store_url = f"zk://{zk_server.address}{chroot}"
    args = ["--model", str(model), "--name", "tagger", "--version", "1", "--port", "0"]
    server = ServerProcess([*args, "--store", store_url])
    try:
        host, port = server.address.rsplit(":", 1)
        with open_store(store_url, snapshot_dir=False) as store:
            wait(
                lambda: any(i.port == int(port) for i in store.instances("tagger-1")),
                30,
                "eas-server to register in ZooKeeper",
                step=0.05,
            )
        path = f"{chroot}{instances_path('tagger-1')}/{host}:{port}"
        yield Registered(zk_server, server, path, config)
    finally:
        server.stop()


@pytest.mark.zk
@pytest.mark.slow
def test_an_instance_registered_in_zookeeper_is_where_the_serverset_job_looks(
    registered: Registered,
) -> None:
    config = registered.config
    job = _job(config, "autoai-models-zk")
    (serverset,) = job["serverset_sd_configs"]
    assert registered.path.startswith(serverset["paths"][0] + "/")
    assert registered.path in _ephemerals(registered.zk)

    data = _zk_get(registered.zk, registered.path)
    doc = json.loads(data)
    host, port = registered.server.address.rsplit(":", 1)
    assert doc["serviceEndpoint"] == {"host": host, "port": int(port)}
    assert doc["status"] == "ALIVE" and doc["additionalEndpoints"] == {}
    # the registration's own fields, which Prometheus does not expose (hence the path relabeling)
    assert (doc["model"], doc["version"], doc["processor"]) == ("tagger", "1", "onnx")

    labels = relabel(serverset_labels(registered.path, data), job["relabel_configs"])
    assert labels is not None, "the serverset job drops the instance"
    assert labels["__address__"] == registered.server.address
    assert (labels["service"], labels["model"], labels["version"]) == ("tagger-1", "tagger", "1")


@pytest.mark.zk
@pytest.mark.slow
def test_prometheus_discovers_and_scrapes_the_instance(
    registered: Registered, tmp_path: Path
) -> None:
    config = json.loads(json.dumps(registered.config))
    config.pop("rule_files")
    job = _job(config, "autoai-models-zk")
    job["serverset_sd_configs"][0]["servers"] = [registered.zk.address]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    done = run_promtool("check", "service-discovery", str(path), "autoai-models-zk", "--timeout=4s")
    assert done.returncode == 0, done.stdout + done.stderr
    found = [t for t in json.loads(done.stdout) if t.get("labels")]  # dropped: null
    ours = [t for t in found if t["labels"]["__address__"] == registered.server.address]
    assert len(ours) == 1, found
    target = ours[0]
    assert target["discoveredLabels"]["__meta_serverset_path"] == registered.path
    expected = relabel(target["discoveredLabels"], job["relabel_configs"])
    assert expected is not None
    assert {k: v for k, v in target["labels"].items() if not k.startswith("__")} == {
        "job": "autoai-models-zk",
        "instance": registered.server.address,
        "service": "tagger-1",
        "model": "tagger",
        "version": "1",
    }
    assert {k: expected[k] for k in ("service", "model", "version")} == {
        k: target["labels"][k] for k in ("service", "model", "version")
    }

    # what Prometheus would scrape there: eas_* series of the same model and version
    labels = target["labels"]
    url = f"{labels['__scheme__']}://{labels['__address__']}{labels['__metrics_path__']}"
    text = httpx.get(url, timeout=10).text
    (requests,) = [f for f in text_string_to_metric_families(text) if f.name == "eas_requests"]
    assert {(s.labels["model"], s.labels["version"]) for s in requests.samples} == {("tagger", "1")}
