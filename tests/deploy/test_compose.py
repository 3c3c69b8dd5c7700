"""deploy/compose.yaml: one 3-node ZooKeeper ensemble, the control plane against all of it,
Prometheus and Grafana with the shipped configs, and nothing published beyond the host's loopback.

No Docker engine here: the file is read as Compose reads it (YAML with merge keys) and checked
against the repository (mounted files, the Dockerfile), against itself (ports, the ensemble, the
store URL, healthchecks and depends_on) and against deploy/prometheus and deploy/grafana, whose
127.0.0.1 addresses must be the services' real addresses in the stack's shared network namespace.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from config_store._url import parse_url

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "deploy" / "compose.yaml"
ZK = ("zk1", "zk2", "zk3")
_SERVER = re.compile(r"server\.(\d+)=([\w.-]+):(\d+):(\d+)(?::\w+)?;(?:([\w.-]+):)?(\d+)")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose["services"]
    return found


def _servers(service: dict[str, Any]) -> dict[int, tuple[str, int, int, int]]:
    """ZOO_SERVERS as {id: (host, quorum port, election port, client port)}."""
    text = service["environment"]["ZOO_SERVERS"]
    entries = text.split()
    parsed = {}
    for entry in entries:
        m = _SERVER.fullmatch(entry)
        assert m, f"not a server.N=host:quorum:election;client entry: {entry}"
        parsed[int(m[1])] = (m[2], int(m[3]), int(m[4]), int(m[6]))
    return parsed


def _client_port(service: dict[str, Any]) -> int:
    own = int(service["environment"]["ZOO_MY_ID"])
    return _servers(service)[own][3]


def _store_url(service: dict[str, Any]) -> str:
    command = service.get("command", [])
    if "--store" in command:
        return str(command[command.index("--store") + 1])
    return str(service["environment"]["AUTOAI_STORE_URL"])


def service_network(services: dict[str, dict[str, Any]], name: str) -> str:
    """The service whose network namespace ``name`` joins (itself when none)."""
    mode = str(services[name].get("network_mode", ""))
    return mode.removeprefix("service:") if mode.startswith("service:") else name


def test_three_zookeeper_nodes_form_one_ensemble(services: dict[str, dict[str, Any]]) -> None:
    zks = {name: s for name, s in services.items() if str(s.get("image", "")).startswith("zoo")}
    assert sorted(zks) == list(ZK)
    for s in zks.values():
        assert re.fullmatch(r"zookeeper:3\.\d+\.\d+", s["image"]), "the official image, pinned"
    ids = sorted(int(s["environment"]["ZOO_MY_ID"]) for s in zks.values())
    assert ids == [1, 2, 3]
    lists = [_servers(s) for s in zks.values()]
    assert all(lst == lists[0] for lst in lists), "every node must list the same servers"
    assert sorted(lists[0]) == ids
    # one network namespace: every port distinct (quorum, election, client)
    ports = [p for entry in lists[0].values() for p in entry[1:]]
    assert len(ports) == len(set(ports)) == 9
    for s in zks.values():
        env = s["environment"]
        assert env["ZOO_ADMINSERVER_ENABLED"] == "false"  # it would take 8080
        assert "srvr" in env["ZOO_4LW_COMMANDS_WHITELIST"].split(",")
        # the health check asks this node's own client port whether it is in the quorum
        check = " ".join(s["healthcheck"]["test"])
        assert f"/dev/tcp/127.0.0.1/{_client_port(s)}" in check and "srvr" in check
        assert "leader|follower" in check
    data = [v.split(":")[0] for s in zks.values() for v in s["volumes"]]
    assert len(data) == len(set(data)) == 6, "every node keeps its own data and log volumes"


def test_control_plane_store_names_all_three_nodes(services: dict[str, dict[str, Any]]) -> None:
    control = services["controlplane"]
    url = parse_url(_store_url(control))
    assert url.scheme == "zk"
    # the nodes share the control plane's namespace (network_mode), so 127.0.0.1:clientPort
    assert {service_network(services, n) for n in ZK} == {service_network(services, "controlplane")}
    assert set(url.hosts) == {("127.0.0.1", _client_port(services[n])) for n in ZK}
    assert url.chroot == "/autoai"
    assert control["environment"]["AUTOAI_ADMIN_TOKEN"].startswith("${AUTOAI_ADMIN_TOKEN:?")
    build = control["build"]
    dockerfile = (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve()
    assert dockerfile == REPO / "deploy" / "docker" / "Dockerfile"
    assert f"AS {build['target']}" in dockerfile.read_text()
    command = control["command"]
    assert command[:2] == ["autoai", "up"] and "kubernetes" not in " ".join(command)
    assert command[command.index("--port") + 1] == "8080"


def test_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = []
    for name, service in services.items():
        for port in service.get("ports", []):
            spec = port if isinstance(port, str) else f"{port['host_ip']}:{port['published']}"
            assert spec.startswith("127.0.0.1:"), f"{name} publishes {spec} beyond loopback"
            published.append(int(spec.split(":")[1]))
        if "network_mode" in service:
            assert "ports" not in service, f"{name} shares a namespace: publish on its owner"
    zk_ports = {_client_port(services[n]) for n in ZK}
    assert zk_ports | {8080, 9090, 3000} <= set(published)


def test_every_mounted_file_exists(services: dict[str, dict[str, Any]]) -> None:
    mounted = 0
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume["source"]
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{name} mounts missing {source}"
                mounted += 1
    assert mounted == 4


def test_healthchecks_and_start_order(services: dict[str, dict[str, Any]]) -> None:
    for name in (*ZK, "controlplane", "prometheus", "grafana"):
        assert services[name]["healthcheck"]["test"][0] == "CMD", name

    def waits_for(name: str) -> dict[str, str]:
        return {k: v["condition"] for k, v in services[name].get("depends_on", {}).items()}

    assert waits_for("controlplane") == dict.fromkeys(ZK, "service_healthy")
    assert waits_for("prometheus") == {"controlplane": "service_healthy"}
    assert waits_for("grafana") == {"prometheus": "service_healthy"}
    control_check = services["controlplane"]["healthcheck"]["test"]
    assert control_check[-1] == "http://127.0.0.1:8080/healthz"
    for name in services:
        if name != "net":
            assert service_network(services, name) == "net", f"{name} is outside the namespace"


def test_prometheus_and_grafana_configs_match_the_stack(
    services: dict[str, dict[str, Any]],
) -> None:
    prometheus = services["prometheus"]
    mounts = dict(v.split(":")[:2] for v in prometheus["volumes"])
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./prometheus/rules"] == "/etc/prometheus/rules"  # rule_files: rules/...
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]
    listen = next(a for a in prometheus["command"] if a.startswith("--web.listen-address="))
    config = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["autoai-control"]["static_configs"][0]["targets"] == ["127.0.0.1:8080"]
    serverset = jobs["autoai-models-zk"]["serverset_sd_configs"][0]
    zk_addresses = {f"127.0.0.1:{_client_port(services[n])}" for n in ZK}
    assert set(serverset["servers"]) <= zk_addresses
    chroot = parse_url(_store_url(services["controlplane"])).chroot
    assert serverset["paths"] == [f"{chroot}/services"]
    sd_url = urlsplit(jobs["autoai-models"]["http_sd_configs"][0]["url"])
    assert sd_url.netloc == "127.0.0.1:8080"

    grafana = services["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provisioning = REPO / "deploy" / "grafana" / "provisioning"
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    providers = yaml.safe_load((provisioning / "dashboards" / "autoai.yml").read_text())
    assert mounts["./grafana/dashboards"] == providers["providers"][0]["options"]["path"]
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    prometheus_url = urlsplit(datasources["datasources"][0]["url"])
    assert f"0.0.0.0:{prometheus_url.port}" == listen.split("=", 1)[1]
    assert prometheus_url.hostname == "127.0.0.1"


def test_images_are_pinned(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        image = service.get("image", "")
        assert image, f"{name} names no image"
        tag = image.rsplit(":", 1)[-1] if ":" in image.split("/")[-1] else ""
        assert tag and tag != "latest", f"{name}: {image} is not pinned"
