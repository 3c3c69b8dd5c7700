"""`make demo`: the whole flow through the control plane's REST API, left running at the end.

1. the example model (all-MiniLM-L6-v2 exported to ONNX by scripts/build_models.py, or the
   generated BERT-like stand-in when torch is not installed: it says which);
2. `autoai up` started detached (own session, log and PID in ~/.autoai/demo) on 127.0.0.1:8080,
   on a fresh embedded store and model repository; a previous demo is undeployed and stopped first;
3. the model registered twice (POST /api/v1/models): version 1 deployed plain (processor onnx),
   version 2 with `blade: true` (the optimizer's report is printed from the job's result);
4. a route table published 90/10, traffic through the SDK (`autoai.sdk.ModelClient` on the same
   store), then v2 promoted to 100% and one rollback; for each step a table of client-side QPS and
   RT per version next to the server side (deltas of the instances' /metrics), as in the original
   Blade write-up's tables;
5. text in, labels out: the intent bundle of `make bundles` (all-MiniLM-L6-v2 with a trained head,
   its tokenizer and labels) registered as model `intent`, deployed (processor `pipeline`),
   published, and a few sentences sent through the SDK as strings, answered with labels;
6. the control plane and its three instances keep running: how to reach and stop them is printed.

    python scripts/demo.py [--port 8080] [--seconds 8] [--concurrency 8]
    python scripts/demo.py --stop          # undeploy through REST, stop the control plane by PID
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from demo_controlplane import admin_token, save_state, start, stop_previous
from demo_traffic import Fleet, Load, ServerDelta, add_rows, percentile_ms, scrape_all, step_table
from prometheus_client import CollectorRegistry
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from autoai.cli._blade import _table as blade_table
from autoai.control import ControlClient, ControlError, JobFailed
from autoai.schema import Deployment, JobInfo, LocalInstanceHealth
from autoai.sdk import ModelClient
from autoai.testing import free_port, models_dir, port_free
from config_store import open_store

CACHE = models_dir()
HOME = Path(os.environ.get("AUTOAI_DEMO_HOME", Path.home() / ".autoai" / "demo"))
MODEL = "minilm"
TEXT_MODEL = "intent"
SENTENCES = (
    "turn on the lights in the kitchen",
    "could you set a timer for twenty minutes",
    "what's the weather like in Lisbon tomorrow",
    "play something by Miles Davis",
    "turn the volume down a bit",
)
RPC = {"batching": True, "max_batch_size": 32, "max_batch_timeout": 5}

# Wide enough for the tables when the output goes to a file or a pipe (rich assumes 80).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


def example_model() -> tuple[Path, dict[str, np.ndarray], str]:
    candidates = (
        ("minilm-l6", "all-MiniLM-L6-v2 (exported to ONNX with torch)"),
        ("tiny-bert", "a generated BERT-like stand-in with random weights (torch was unavailable)"),
    )
    for stem, label in candidates:
        model, npz = CACHE / f"{stem}.onnx", CACHE / f"{stem}.inputs.npz"
        if model.exists() and npz.exists():
            with np.load(npz) as data:
                return model, {k: data[k][:32] for k in ("input_ids", "attention_mask")}, label
    raise SystemExit(f"no example model in {CACHE}: run `make models` first")


def connect(url: str, token: str) -> ControlClient:
    """The control plane's REST API (``autoai.control``); an error ends the demo in ``main``."""
    return ControlClient(url, token=token, timeout=300)


def follow(control: ControlClient, job_id: str, title: str) -> JobInfo:
    """Follow a job with a progress bar, printing its log lines; the finished job, or exit."""
    printed = 0
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task(title, total=1.0)

        def progress(job: JobInfo) -> None:
            nonlocal printed
            for line in job.log[printed:]:
                bar.console.print(f"  [dim]{line}[/]")
            printed = len(job.log)
            bar.update(task, completed=job.progress, description=f"{title}: {job.step}")

        try:
            return control.wait_job(job_id, poll=0.3, on_progress=progress)
        except JobFailed as exc:
            failed: JobInfo = exc.job
            tail = "\n".join((failed.error.detail if failed.error else {}).get("log", []))
            raise SystemExit(f"{title} failed: {exc.error}\n{tail}") from None


def deploy(
    control: ControlClient, version: str, spec: dict[str, Any], title: str, model: str = MODEL
) -> Deployment:
    job = follow(control, control.deploy(model, version, spec), title)
    if job.result is None or job.result.deployment is None:
        raise SystemExit(f"{title}: the job succeeded without a deployment: {job}")
    if job.result.report:
        console.print(blade_table(job.result.report))
    d = job.result.deployment
    pids = pids_of(d)
    console.print(f"v{version}: processor {d.processor}, instances {pids}, {d.endpoints}\n")
    return d


def pids_of(deployment: Deployment) -> list[int]:
    return [i.pid for i in deployment.instances if isinstance(i, LocalInstanceHealth)]


def publish(control: ControlClient, weights: dict[str, int], reason: str) -> int:
    routes = [{"version": v, "weight": w} for v, w in weights.items()]
    revision = control.publish(MODEL, {"routes": routes, "reason": reason}).revision
    console.print(f"published revision {revision}: {weights} ({reason})")
    return revision


def cli_commands() -> set[str]:
    """The `autoai` subcommands this checkout has (the CLI grows while the demo stays)."""
    from autoai.cli import app

    names = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    return {n.removesuffix("_command").replace("_", "-") for n in names}


def goodbye(
    cp_pid: int, url: str, token_from: str, log: Path, versions: list[tuple[str, str]]
) -> None:
    token = "$AUTOAI_ADMIN_TOKEN" if token_from == "AUTOAI_ADMIN_TOKEN" else f"$(cat {token_from})"
    commands = cli_commands()
    console.rule("left running")
    console.print(f"control plane: {url} (pid {cp_pid}, log {log}); OpenAPI at {url}/docs")
    console.print(f"  export AUTOAI_URL={url} AUTOAI_TOKEN={token}")
    if "status" in commands:
        console.print("  autoai status                     # deployments, instances, routes")
    console.print("  curl $AUTOAI_URL/api/v1/deployments  # instances with pid, health, endpoints")
    console.print("stop everything: python scripts/demo.py --stop   (undeploy, then kill by PID)")
    console.print("or by hand, instances first (they run detached and outlive the control plane):")
    for model, v in versions:
        if "undeploy" in commands:
            console.print(f"  autoai undeploy {model} --version {v} --force")
        else:
            console.print(
                f'  curl -X DELETE -H "Authorization: Bearer $AUTOAI_TOKEN" '
                f"$AUTOAI_URL/api/v1/models/{model}/versions/{v}/deploy?force=true"
            )
    console.print(f"  kill {cp_pid}")


def main(argv: list[str] | None = None) -> int:
    try:
        return run(argv)
    except ControlError as exc:  # a refusal or no answer: what the control plane said, no trace
        raise SystemExit(f"the control plane at {exc.url}: {exc}") from None


def run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--port", type=int, default=int(os.environ.get("AUTOAI_DEMO_PORT", 8080)))
    parser.add_argument("--seconds", type=float, default=8.0, help="traffic per step")
    parser.add_argument("--concurrency", type=int, default=8, help="SDK worker threads")
    parser.add_argument("--stop", action="store_true", help="stop the previous demo and exit")
    args = parser.parse_args(argv)
    began = time.monotonic()
    token, token_from = admin_token(HOME)
    for line in stop_previous(HOME, token):
        console.print(line)
    if args.stop:
        console.print("nothing of the demo is running now")
        return 0

    path, data, label = example_model()
    console.print(f"example model: {label}\n  {path}")
    port = args.port
    if not port_free(port):
        port = free_port()
        console.print(f"port {args.port} is taken by something else: using {port}")
    cp = start(HOME, port, token)
    console.print(f"autoai up: {cp.url} (pid {cp.pid}, store {cp.store_url})\n")
    api = connect(cp.url, token)

    # Register the same file twice: version 1 is served plain, version 2 blade-optimized.
    blob = path.read_bytes()
    for _ in range(2):
        v = api.register_model(MODEL, file=blob, filename=path.name)
        console.print(f"registered {MODEL} version {v.version} (sha256 {v.sha256[:12]})")
    test_data = cp.run_dir / "blade-test-data.npz"
    np.savez(test_data, input_ids=data["input_ids"], attention_mask=data["attention_mask"])
    # One core per instance (EAS `cpu`: the server's intra-op threads): two instances and the
    # callers share this machine's cores, and a session whose second thread waits for a busy core
    # runs at that thread's pace.
    metadata = {"instance": 1, "cpu": 1, "rpc": RPC}
    deployments = {
        "1": deploy(api, "1", {"processor": "onnx", "metadata": metadata}, "deploy v1 plain"),
        "2": deploy(
            api, "2",
            {"blade": {"test_data": str(test_data), "batch_sizes": [1, 8]}, "metadata": metadata},
            "deploy v2 blade",
        ),
    }  # fmt: skip
    pids = [p for d in deployments.values() for p in pids_of(d)]
    save_state(HOME, cp, pids)
    processors = {v: d.processor for v, d in deployments.items()}
    endpoints = {v: list(d.endpoints) for v, d in deployments.items()}
    traffic(api, cp.store_url, cp.run_dir, data, processors, endpoints, args)
    text = text_model(api, cp.store_url, cp.run_dir, metadata)
    if text is not None:
        pids += pids_of(text)
        save_state(HOME, cp, pids)

    releases = api.releases(MODEL)
    table = Table(title=f"releases of {MODEL} (GET .../releases)", title_justify="left")
    for col in ("revision", "routes", "by", "reason"):
        table.add_column(col)
    for r in releases:
        routes = ", ".join(f"v{v} {w}" for v, w in r.routes.items())
        table.add_row(str(r.revision), routes, str(r.published_by), str(r.reason))
    console.print(table)
    console.print(f"demo took {time.monotonic() - began:.0f} s\n")
    served = [(MODEL, v) for v in deployments] + ([(TEXT_MODEL, "1")] if text else [])
    goodbye(cp.pid, cp.url, token_from, cp.log, served)
    return 0


def text_model(
    api: ControlClient, store_url: str, run_dir: Path, metadata: dict[str, Any]
) -> Deployment | None:
    """The intent bundle registered, deployed as a pipeline, published, asked in plain text."""
    bundle = CACHE / "bundles" / TEXT_MODEL
    if not (bundle / "pipeline.json").exists():
        console.print(f"no intent bundle in {bundle}: `make bundles` builds it (skipped)\n")
        return None
    version = api.register_model(TEXT_MODEL, file=bundle)
    info = version.bundle
    labels = ", ".join(info.labels) if info else "?"
    console.print(
        f"registered {TEXT_MODEL} version {version.version}: a bundle (task "
        f"{info.task if info else '?'}, labels {labels})"
    )
    deployment = deploy(
        api, version.version, {"metadata": metadata}, f"deploy {TEXT_MODEL} v1", TEXT_MODEL
    )
    routes = [{"version": version.version, "weight": 100}]
    revision = api.publish(TEXT_MODEL, {"routes": routes, "reason": "text demo"}).revision
    store = open_store(store_url, snapshot_dir=run_dir / "sdk-text-snapshot", failover_dir=False)
    try:
        with ModelClient(store, registry=CollectorRegistry()) as client:
            deadline = time.monotonic() + 30
            while client.routes(TEXT_MODEL).revision < revision:  # the store pushes it
                if time.monotonic() > deadline:
                    raise SystemExit(f"{TEXT_MODEL}: revision {revision} did not reach the SDK")
                time.sleep(0.01)
            out = client.predict(TEXT_MODEL, {"text": list(SENTENCES)})
    finally:
        store.close()
    table = Table(
        title=f'ModelClient.predict("{TEXT_MODEL}", {{"text": [...]}}): strings in, labels out',
        title_justify="left",
    )
    for col in ("text", "label", "score"):
        table.add_column(col)
    for sentence, label, score in zip(SENTENCES, out["label"], out["score"], strict=True):
        table.add_row(sentence, str(label), f"{float(score):.3f}")
    console.print(table)
    return deployment


def traffic(
    api: ControlClient,
    store_url: str,
    run_dir: Path,
    data: dict[str, np.ndarray],
    processors: dict[str, str],
    endpoints: dict[str, list[str]],
    args: argparse.Namespace,
) -> None:
    """Publish 90/10, then: each version pinned, the split, promotion, rollback; a table each."""
    rows = [{k: v[i : i + 1] for k, v in data.items()} for i in range(len(data["input_ids"]))]
    first = publish(api, {"1": 90, "2": 10}, "canary: blade gets 10 %")
    store = open_store(store_url, snapshot_dir=run_dir / "sdk-snapshot", failover_dir=False)
    fleet = Fleet(store, MODEL, rows, args.concurrency)
    try:
        fleet.wait_revision(first)
        fleet.run(1.0)  # warm-up: connections, first batches

        def window(
            seconds: float, concurrency: int, version: str | None = None
        ) -> tuple[Load, dict[str, ServerDelta]]:
            before = scrape_all(endpoints)
            load = fleet.run(seconds, concurrency, version)
            after = scrape_all(endpoints)
            return load, {v: after[v] - before[v] for v in endpoints}

        pinned = step_table(
            "each version alone: ModelClient.predict(version=...), one row (seq 128) a call",
            "client: what the SDK callers measured; server (cyan): deltas of the instances' "
            "/metrics, RT = queue + compute + HTTP",
        )
        alone: dict[tuple[str, int], list[float]] = {}
        for version in endpoints:
            for c in (1, args.concurrency):
                load, server = window(args.seconds / 2, c, version)
                add_rows(pinned, load, {version: server[version]}, processors, c)
                alone[version, c] = [x for lat in load.latencies.values() for x in lat]
        console.print(pinned)
        one, many = alone["1", 1], alone["1", args.concurrency]
        blade_one, blade_many = alone["2", 1], alone["2", args.concurrency]
        if one and many and blade_one and blade_many:
            p50, blade_p50 = percentile_ms(one, 0.5), percentile_ms(blade_one, 0.5)
            console.print(
                f"v2 {processors['2']} against v1 {processors['1']}: p50 at c=1 {p50:.1f} -> "
                f"{blade_p50:.1f} ms ({p50 / blade_p50:.1f}x), calls at c={args.concurrency} "
                f"{len(many)} -> {len(blade_many)} ({len(blade_many) / len(many):.1f}x)\n"
            )

        def step(title: str, seconds: float) -> None:
            load, server = window(seconds, args.concurrency)
            table = step_table(title)
            add_rows(table, load, server, processors, args.concurrency)
            console.print(table)

        step(f"revision {first}: v1 90 % / v2 10 %", args.seconds)
        promoted = publish(api, {"2": 100, "1": 0}, "promote blade to 100 %")
        fleet.wait_revision(promoted)
        step(f"revision {promoted}: v2 promoted to 100 % (v1 at 0 %: its fallback)", args.seconds)
        rolled = api.rollback(MODEL)
        console.print(f"rolled back: revision {rolled} republishes revision {first}'s table")
        fleet.wait_revision(rolled)
        step(f"revision {rolled}: rolled back to v1 90 % / v2 10 %", args.seconds)
    finally:
        fleet.close()
        store.close()


if __name__ == "__main__":
    raise SystemExit(main())
