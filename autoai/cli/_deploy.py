"""``autoai deploy | undeploy | scale``: serve a version (plain or blade-optimized), stop
serving it, change its number of instances. Deploy and scale are jobs, followed with a bar."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from ._blade import _table as blade_table
from ._common import (
    DEFAULT_URL,
    AsJson,
    TokenFile,
    Url,
    connect,
    emit_json,
    fail_on_errors,
    quote,
)
from ._errors import ApiError, BadUsage, JobFailed
from ._jobs import follow_job
from ._parse import deploy_spec
from ._rest import RestClient

__all__ = ["deploy_command", "scale_command", "undeploy_command"]

Version = Annotated[str, typer.Option("--version", help="the model version")]
NoWait = Annotated[
    bool, typer.Option("--no-wait", help="print the job id and return (see `autoai job`)")
]


def _read_spec(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        spec = json.loads(path.read_text())
    except OSError as exc:
        raise BadUsage(f"--spec {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise BadUsage(f"--spec {path}: not valid JSON: {exc}") from None
    if not isinstance(spec, dict):
        raise BadUsage(f"--spec {path}: expected a JSON object (an EAS service spec)")
    return spec


def _read_secret(path: Path | None, option: str) -> str | None:
    if path is None:
        return None
    try:
        secret = path.read_text().strip()
    except OSError as exc:
        raise BadUsage(f"{option} {path}: {exc.strerror}") from None
    if not secret:
        raise BadUsage(f"{option} {path}: the file is empty")
    return secret


def _batch_sizes(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        sizes = [int(b) for b in text.split(",")]
    except ValueError:
        raise BadUsage(f"--blade-batch-sizes {text!r}: expected integers such as 1,8,32") from None
    if not sizes or min(sizes) < 1:
        raise BadUsage(f"--blade-batch-sizes {text!r}: sizes must be >= 1")
    return sizes


def describe(deployment: dict[str, Any]) -> list[str]:
    """A deployment in a few lines: processor, instances alive/ready, endpoints."""
    instances = deployment.get("instances") or []
    alive = sum(1 for i in instances if i.get("alive"))
    ready = sum(1 for i in instances if i.get("ready"))
    lines = [
        f"{deployment['name']} version {deployment['version']}: processor "
        f"{deployment.get('processor', '?')}, {len(instances)} instance(s), {alive} alive, "
        f"{ready} ready"
    ]
    lines += [f"  endpoint {e}" for e in deployment.get("endpoints") or []]
    return lines


def _run_job(api: RestClient, job_id: str, *, as_json: bool) -> dict[str, Any]:
    try:
        return follow_job(api, job_id, show=not as_json)
    except JobFailed as exc:
        if as_json:
            emit_json(exc.job)
        raise


def _print_job_id(job_id: str, as_json: bool) -> None:
    if as_json:
        emit_json({"job": job_id})
    else:
        typer.echo(f"job {job_id} started; follow it with: autoai job {job_id} --wait")


def _finish(job: dict[str, Any], verb: str, as_json: bool) -> None:
    if as_json:
        emit_json(job)
        return
    result = job.get("result") or {}
    report = result.get("report")
    if report and report.get("passes") is not None:
        Console().print(blade_table(report))
    deployment = result.get("deployment")
    if deployment:
        typer.echo("\n".join([f"{verb} {describe(deployment)[0]}", *describe(deployment)[1:]]))
    else:
        typer.echo(f"{verb}: {job.get('title', job.get('id'))}")


def deploy_command(
    name: Annotated[str, typer.Argument(help="the model")],
    version: Version,
    spec_file: Annotated[
        Path | None,
        typer.Option("--spec", help="an EAS service spec (JSON) to start from; flags override"),
    ] = None,
    processor: Annotated[
        str | None, typer.Option("--processor", help="onnx (plain) or blade")
    ] = None,
    blade: Annotated[
        bool, typer.Option("--blade", help="optimize with blade; served plain if nothing wins")
    ] = False,
    blade_device: Annotated[
        str | None, typer.Option("--blade-device", help="blade: cpu or cuda")
    ] = None,
    blade_level: Annotated[
        str | None, typer.Option("--blade-level", help="blade: o1 lossless, o2 also int8")
    ] = None,
    blade_tolerance: Annotated[
        float | None, typer.Option("--blade-tolerance", help="blade: cosine floor, lossy passes")
    ] = None,
    blade_batch_sizes: Annotated[
        str | None, typer.Option("--blade-batch-sizes", help="blade: batch sizes to time: 1,8,32")
    ] = None,
    blade_seq: Annotated[
        int | None, typer.Option("--blade-seq", help="blade: sequence length of drawn test data")
    ] = None,
    blade_test_data: Annotated[
        str | None,
        typer.Option("--blade-test-data", help="blade: npz of inputs, a path on the control plane"),
    ] = None,
    blade_required: Annotated[
        bool, typer.Option("--blade-required", help="blade: fail rather than serve plain")
    ] = False,
    instances: Annotated[
        int | None, typer.Option("--instances", help="metadata.instance: processes to run", min=1)
    ] = None,
    batching: Annotated[
        bool | None,
        typer.Option("--batching/--no-batching", help="rpc.batching: dynamic batching"),
    ] = None,
    max_batch_size: Annotated[
        int | None, typer.Option("--max-batch-size", help="rpc.max_batch_size", min=1)
    ] = None,
    batch_timeout_ms: Annotated[
        float | None,
        typer.Option("--batch-timeout-ms", help="rpc.max_batch_timeout: wait to fill (ms)", min=0),
    ] = None,
    max_queue_size: Annotated[
        int | None, typer.Option("--max-queue-size", help="rpc.max_queue_size (503 past)", min=1)
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", help="rpc.worker_threads: sessions run", min=1)
    ] = None,
    cpu: Annotated[
        int | None, typer.Option("--cpu", help="metadata.cpu: cores per instance", min=1)
    ] = None,
    gpu: Annotated[
        int | None, typer.Option("--gpu", help="metadata.gpu: cards per instance", min=0)
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", help="metadata.port: instance i listens on PORT + i", min=1024),
    ] = None,
    intra_op_threads: Annotated[
        int | None,
        typer.Option("--intra-op-threads", help="metadata.intra_op_threads per session", min=1),
    ] = None,
    service_token_file: Annotated[
        Path | None,
        typer.Option("--service-token-file", help="file with the token the instances require"),
    ] = None,
    no_wait: NoWait = False,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Deploy a version with an EAS-style spec, follow the job, print the blade report (if any)."""
    with fail_on_errors(), connect(url, token_file) as api:
        spec = deploy_spec(
            _read_spec(spec_file),
            processor=processor,
            blade=blade,
            blade_options={
                "device": blade_device,
                "level": blade_level,
                "tolerance": blade_tolerance,
                "batch_sizes": _batch_sizes(blade_batch_sizes),
                "seq": blade_seq,
                "test_data": blade_test_data,
                "required": blade_required or None,
            },
            instances=instances,
            rpc={
                "batching": batching,
                "max_batch_size": max_batch_size,
                "max_batch_timeout": batch_timeout_ms,
                "max_queue_size": max_queue_size,
                "worker_threads": workers,
            },
            metadata={"intra_op_threads": intra_op_threads, "cpu": cpu, "gpu": gpu, "port": port},
            token=_read_secret(service_token_file, "--service-token-file"),
        )
        path = f"/api/v1/models/{quote(name)}/versions/{quote(version)}/deploy"
        job_id = api.post(path, json=spec)["job"]
        if no_wait:
            _print_job_id(job_id, as_json)
            return
        _finish(_run_job(api, job_id, as_json=as_json), "deployed", as_json)


def undeploy_command(
    name: Annotated[str, typer.Argument(help="the model")],
    version: Version,
    force: Annotated[
        bool, typer.Option("--force", help="even while the version carries traffic")
    ] = False,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Stop a version's instances (drained) and forget its deployment."""
    with fail_on_errors(), connect(url, token_file) as api:
        path = f"/api/v1/models/{quote(name)}/versions/{quote(version)}/deploy"
        try:
            api.delete(path, **({"force": "true"} if force else {}))
        except ApiError as exc:
            if exc.status != 409 or force:
                raise
            raise ApiError(
                exc.status, exc.message, exc.detail, hint="--force undeploys it anyway"
            ) from None
        if as_json:
            emit_json({"undeployed": {"name": name, "version": version}})
        else:
            typer.echo(f"undeployed {name} version {version}")


def scale_command(
    name: Annotated[str, typer.Argument(help="the model")],
    version: Version,
    instances: Annotated[
        int, typer.Option("--instances", help="the new number of instances", min=1)
    ],
    no_wait: NoWait = False,
    url: Url = DEFAULT_URL,
    token_file: TokenFile = None,
    as_json: AsJson = False,
) -> None:
    """Change a deployment's number of instances (metadata.instance) without dropping traffic."""
    with fail_on_errors(), connect(url, token_file) as api:
        path = f"/api/v1/models/{quote(name)}/versions/{quote(version)}/deployment"
        job_id = api.patch(path, json={"metadata": {"instance": instances}})["job"]
        if no_wait:
            _print_job_id(job_id, as_json)
            return
        _finish(_run_job(api, job_id, as_json=as_json), "scaled", as_json)
