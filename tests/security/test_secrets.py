"""Secrets stay out of logs and of ``ps``; the model server's token; the store's ACLs on a real
ZooKeeper (docs/security.md)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import httpx
import pytest

from autoai.orchestrators import LocalOrchestrator
from autoai.testing import cmdline
from config_store import PermissionDenied, open_store
from tests.fixtures import onnx_models
from tests.fixtures.servers import StartServer

SERVICE_TOKEN = "svc-91d4-never-logged"
GOOD = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2], "data": [1.0, 2.0]}]}


def test_model_server_token_401_and_never_logged_nor_in_argv(
    start_server: StartServer, tmp_path: Path
) -> None:
    model = onnx_models.identity(tmp_path)
    server = start_server(model, "--log-level", "debug", env={"EAS_TOKEN": SERVICE_TOKEN})
    argv = cmdline(server.proc.pid)
    assert argv and SERVICE_TOKEN not in argv
    infer = f"{server.url}/v2/models/m/infer"
    with httpx.Client(timeout=10) as client:
        assert client.get(f"{server.url}/v2/health/ready").status_code == 200  # health stays open
        for headers in [
            {},
            {"Authorization": f"Bearer {SERVICE_TOKEN}x"},
            {"Authorization": SERVICE_TOKEN[:-1]},
            {"Authorization": f"Basic {SERVICE_TOKEN}"},
        ]:
            answer = client.post(infer, json=GOOD, headers=headers)
            assert answer.status_code == 401, (headers, answer.text)
            assert answer.headers["www-authenticate"] == "Bearer"
            assert SERVICE_TOKEN not in answer.text
        for good in (f"Bearer {SERVICE_TOKEN}", SERVICE_TOKEN):  # OIP bearer and EAS's bare token
            assert client.post(infer, json=GOOD, headers={"Authorization": good}).is_success
        assert client.get(f"{server.url}/metrics").status_code == 200
        assert SERVICE_TOKEN not in client.get(f"{server.url}/metrics").text
    server.terminate()
    server.proc.wait(30)
    assert server.proc.stdout is not None
    logs = server.stderr() + server.proc.stdout.read()
    server.stop()
    assert "INFO" in logs  # the log was captured, at debug level
    assert SERVICE_TOKEN not in logs
    assert SERVICE_TOKEN[:-1] not in logs


def test_local_instances_get_secrets_from_owner_only_files_and_env_not_argv(
    zk_url: str, tmp_path: Path
) -> None:
    hosts_and_chroot = zk_url.removeprefix("zk://")
    writer_url = f"zk://autoai:w-secret@{hosts_and_chroot}?reader=sdk:r-secret"
    model = onnx_models.identity(tmp_path)
    with open_store(writer_url, snapshot_dir=False, failover_dir=False) as store:
        orchestrator = LocalOrchestrator(store, writer_url, tmp_path / "run")
        config = orchestrator.config_path("m-1")
        config.write_text("{}")
        config.chmod(0o644)  # a world-readable file left from before is made owner-only too
        spec = {"name": "m", "version": "1", "model_path": str(model), "token": SERVICE_TOKEN}
        records = orchestrator.start("m-1", spec, 1, timeout=60)
        try:
            assert stat.S_IMODE(config.stat().st_mode) == 0o600
            for directory in (tmp_path / "run", orchestrator.run_dir):
                assert stat.S_IMODE(directory.stat().st_mode) & 0o077 == 0
            assert json.loads(config.read_text())["token"] == SERVICE_TOKEN
            for record in records:
                argv = cmdline(record.pid)
                assert argv, f"instance pid {record.pid} is gone"
                for secret in ("w-secret", "r-secret", SERVICE_TOKEN):
                    assert secret not in argv, argv
                assert SERVICE_TOKEN not in Path(record.log).read_text()
            assert [i.port for i in store.instances("m-1")] == [r.port for r in records]
        finally:
            orchestrator.stop(records)
        for record in records:
            assert "w-secret" not in Path(record.log).read_text()


def test_reader_and_anonymous_clients_cannot_write_any_group(zk_url: str, tmp_path: Path) -> None:
    hosts_and_chroot = zk_url.removeprefix("zk://")
    writer_url = f"zk://autoai:w-secret@{hosts_and_chroot}?reader=sdk:r-secret"
    reader_url = f"zk://sdk:r-secret@{hosts_and_chroot}"
    anonymous_url = f"zk://{hosts_and_chroot}"
    forged_url = f"zk://autoai:guess@{hosts_and_chroot}"
    with open_store(writer_url, snapshot_dir=False, failover_dir=False) as writer:
        writer.publish("model.m", b'{"routes": []}', group="control")
        writer.publish("m", b"v1")
        writer.register("m-1", "127.0.0.1", 9000, {"pid": 1})
        for url in (reader_url, anonymous_url, forged_url):
            with open_store(url, snapshot_dir=False, failover_dir=False) as other:
                for group in ("DEFAULT_GROUP", "control"):
                    with pytest.raises(PermissionDenied):
                        other.publish(
                            "m" if group == "DEFAULT_GROUP" else "model.m", b"x", group=group
                        )
                with pytest.raises(PermissionDenied):
                    other.publish("new-key", b"x")
                with pytest.raises(PermissionDenied):
                    other.remove("m")
                with pytest.raises(PermissionDenied):
                    other.register("m-1", "127.0.0.1", 9666)
        assert writer.get("m").content == b"v1"  # type: ignore[union-attr]
        assert [i.port for i in writer.instances("m-1")] == [9000]
    with open_store(
        reader_url, snapshot_dir=False, failover_dir=False
    ) as reader:  # the SDK's credential still reads
        assert reader.get("m").content == b"v1"  # type: ignore[union-attr]
    with open_store(
        anonymous_url, snapshot_dir=False, failover_dir=False
    ) as anonymous:  # reader= set: world cannot read
        with pytest.raises(PermissionDenied):
            anonymous.get("m")
