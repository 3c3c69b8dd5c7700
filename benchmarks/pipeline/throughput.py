"""Text through the `pipeline` processor vs the same model fed pre-tokenized tensors (issue 19).

    python scripts/build_bundles.py                  # once (make bundles)
    python -m benchmarks.pipeline.throughput [--bundle intent] [--duration 10] [--rounds 3]

Two eas-server processes run side by side, both with their defaults (as users start them):

- **pipeline**: `eas-server --model BUNDLE`: requests carry the text (`text: BYTES [1]`), the
  server tokenizes each dynamic batch at once, runs `model.onnx` and answers the label and score;
- **tensors**: `eas-server --model BUNDLE/model.onnx`: the same model, requests carry
  `input_ids` and `attention_mask` tokenized here beforehand by the bundle's own tokenizer (each
  sentence at its true length, as a client would send it), the answer is the raw `logits`.

The requests are the data set's real utterances (`scripts/data/intents.jsonl`, mixed lengths),
one sentence per request, encoded once by `eas_client.encode_request` (binary by default) and
cycled by wrk (closed loop, `benchmarks/serving/loadgen.py`). Per round, for concurrency 32 and
then 1, each server gets a warm-up and a measured run, in alternating order, each once the
machine is quiet (`harness.wait_quiet`). Before any load the answers are checked: the pipeline's
label is the argmax of the tensor server's logits for the first sentences.

Targets: at concurrency 32 the pipeline serves at least 0.9x the tensor path's req/s; at
concurrency 1 its p50 (p99) is within 10 % of the tensor path's p50 (p99) plus the tokenizer's
own time per request, measured here in-process: `Bundle.encode` of one sentence, the work the
pipeline adds before the model (its p50, resp. p99, over all sentences). `other cores` is the
most CPU anything else on the machine used during a run: well above 0, the numbers are disturbed.
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from eas_client import decode_response, encode_request
from eas_server.pipeline import Bundle, load_bundle

from ..serving import bodies, harness, loadgen
from ..serving.report import _table
from ..serving.servers import Server
from .corpus import BUILD_HINT, bundles_dir, cpu_line, utterances

PATHS = ("tensors", "pipeline")
CONCURRENCY = (32, 1)
HEAD = "logits"
CHECKED = 16  # sentences whose labels must agree between the two servers
THROUGHPUT_TARGET = 0.9
LATENCY_SLACK = 1.1


@dataclass
class Path_:
    """One side of the comparison: its server, its wrk script, its runs per concurrency."""

    key: str
    server: Server
    script: Path
    runs: dict[int, list[loadgen.LoadResult]] = field(default_factory=dict)


@dataclass(frozen=True)
class TokenizerTime:
    """`Bundle.encode` of one sentence, in seconds, over all sentences (several passes)."""

    p50: float
    p99: float
    mean: float


def body(inputs: Mapping[str, np.ndarray], outputs: Sequence[str], binary: bool) -> bodies.Body:
    """An OIP request as the project's clients encode it (`eas_client.encode_request`)."""
    data, length = encode_request(
        dict(inputs), outputs=list(outputs), binary_inputs=binary, binary_outputs=binary
    )
    headers = {"Content-Type": "application/octet-stream" if binary else "application/json"}
    if length is not None:
        headers[bodies.HEADER] = str(length)
    return bodies.Body(data, headers)


def text_inputs(text: str) -> dict[str, np.ndarray]:
    column = np.empty(1, dtype=object)
    column[0] = text.encode("utf-8")
    return {"text": column}


def tensor_inputs(bundle: Bundle, text: str) -> dict[str, np.ndarray]:
    """What a client of the tensor path sends: the bundle's own tokens, at the sentence's length."""
    return {k: np.ascontiguousarray(v) for k, v in bundle.encode([[text]]).feeds.items()}


def tokenizer_time(bundle: Bundle, texts: Sequence[str], passes: int = 5) -> TokenizerTime:
    """The pipeline's own work before the model for one request, measured in-process."""
    for text in texts[:32]:
        bundle.encode([[text]])  # warm-up
    times = []
    for _ in range(passes):
        for text in texts:
            t0 = time.perf_counter()
            bundle.encode([[text]])
            times.append(time.perf_counter() - t0)
    ordered = sorted(times)
    return TokenizerTime(
        p50=statistics.median(ordered),
        p99=ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        mean=statistics.fmean(ordered),
    )


def answer(server: Server, name: str, request: bodies.Body) -> dict[str, np.ndarray]:
    """POST one request; the decoded outputs (SystemExit with the server's words on an error)."""
    url = f"{server.url}/v2/models/{name}/infer"
    req = urllib.request.Request(url, data=request.data, headers=request.headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as response:
            data, length = response.read(), response.headers.get(bodies.HEADER)
    except OSError as exc:
        detail = exc.read()[:300].decode(errors="replace") if hasattr(exc, "read") else ""
        raise SystemExit(f"{server.name}: the check request failed: {exc} {detail}") from exc
    return dict(decode_response(data, length).outputs)


def check(
    servers: Mapping[str, Server], name: str, bundle: Bundle, texts: Sequence[str], binary: bool
) -> None:
    """The two paths give the same answers (classify: label == argmax of the logits)."""
    outputs = [t.name for t in bundle.signature()[1]]
    for text in texts[:CHECKED]:
        got = answer(servers["pipeline"], name, body(text_inputs(text), outputs, binary))
        logits = answer(servers["tensors"], name, body(tensor_inputs(bundle, text), [HEAD], binary))
        if bundle.spec.task != "classify":
            continue
        label = got["label"].reshape(-1)[0]
        label = label.decode() if isinstance(label, bytes) else str(label)
        expected = bundle.labels[int(np.argmax(logits[HEAD][0]))]
        if label != expected:
            raise SystemExit(
                f"the paths disagree on {text!r}: pipeline {label!r}, tensors {expected!r}"
            )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline.throughput", description=__doc__
    )
    p.add_argument("--bundles", type=Path, default=None, help="default: <models dir>/bundles")
    p.add_argument("--bundle", default="intent", help="which bundle under --bundles")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each run")
    p.add_argument("--rounds", type=int, default=3, help="runs per path and concurrency (median)")
    p.add_argument("--format", choices=bodies.FORMATS, default="binary", help="request bodies")
    p.add_argument("--quiet-timeout", type=float, default=60.0, help="longest wait for quiet")
    p.add_argument("--out", type=Path, default=None, help="also write the results as JSON")
    return p.parse_args(argv)


def _on_sigterm(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through the ExitStack that stops the servers


def _run(path: Path_, c: int, args: argparse.Namespace, wrk: str, fleet: list[Server]) -> None:
    url = f"{path.server.url}/v2/models/{args.bundle}/infer"
    if args.warmup > 0:
        loadgen.run(wrk, url, path.script, c, args.warmup, path.server.pid)
        harness.wait_quiet(fleet, timeout_s=args.quiet_timeout)
    result = loadgen.run(wrk, url, path.script, c, args.duration, path.server.pid)
    harness.wait_quiet(fleet, timeout_s=args.quiet_timeout)
    path.runs.setdefault(c, []).append(result)
    print(
        f"c={c:<3d} {path.key:8s} {result.rps:8.1f} req/s  p50 {result.p50 * 1e3:6.2f} ms"
        f"  p99 {result.p99 * 1e3:6.2f} ms  cores: server {result.server_cpu:.2f}"
        f" wrk {result.wrk_cpu:.2f} other {result.other_cpu:.2f}"
        + (f"  FAILED {result.failures}" if result.failures else ""),
        flush=True,
    )


def _med(runs: Sequence[loadgen.LoadResult], key: str) -> float:
    return statistics.median(float(getattr(r, key)) for r in runs) if runs else float("nan")


def rows(paths: Mapping[str, Path_], tok: TokenizerTime) -> tuple[list[list[str]], dict[str, Any]]:
    """The side-by-side table, and the verdicts."""
    t, p = paths["tensors"].runs, paths["pipeline"].runs
    out: list[list[str]] = []
    verdict: dict[str, Any] = {}

    def yes(ok: bool) -> str:
        return "yes" if ok else "NO"

    rps_t, rps_p = _med(t[32], "rps"), _med(p[32], "rps")
    ratio = rps_p / rps_t if rps_t else float("nan")
    verdict["c32_ratio"] = ratio
    target = f">= {THROUGHPUT_TARGET:.2f}x tensors"
    out.append(
        [
            "c=32 req/s",
            f"{rps_t:.1f}",
            f"{rps_p:.1f}",
            f"{ratio:.3f}",
            target,
            yes(ratio >= THROUGHPUT_TARGET),
        ]
    )
    for key in ("p50", "p99"):
        a, b = _med(t[32], key), _med(p[32], key)
        out.append([f"c=32 {key} ms", f"{a * 1e3:.2f}", f"{b * 1e3:.2f}", f"{b / a:.3f}", "", ""])
    for runs_t, runs_p, c in ((t[32], p[32], 32), (t[1], p[1], 1)):
        a = _med(runs_t, "server_cpu") / _med(runs_t, "rps") * 1e3
        b = _med(runs_p, "server_cpu") / _med(runs_p, "rps") * 1e3
        out.append([f"c={c} server CPU ms/req", f"{a:.2f}", f"{b:.2f}", f"{b / a:.3f}", "", ""])
    a, b = _med(t[1], "rps"), _med(p[1], "rps")
    out.append(["c=1 req/s", f"{a:.1f}", f"{b:.1f}", f"{b / a:.3f}", "", ""])
    for key in ("p50", "p99"):
        a, b = _med(t[1], key), _med(p[1], key)
        own = getattr(tok, key)
        limit = LATENCY_SLACK * (a + own)
        verdict[f"c1_{key}_limit_s"] = limit
        verdict[f"c1_{key}_ok"] = b <= limit
        target = f"<= {limit * 1e3:.2f} = 1.1 x (tensors + tokenizer {own * 1e3:.3f})"
        out.append(
            [
                f"c=1 {key} ms",
                f"{a * 1e3:.2f}",
                f"{b * 1e3:.2f}",
                f"{b / a:.3f}",
                target,
                yes(b <= limit),
            ]
        )
    others = [
        max((r.other_cpu for r in path.runs[c]), default=0.0)
        for path in paths.values()
        for c in CONCURRENCY
    ]
    failed = [sum(r.failures for c in CONCURRENCY for r in paths[k].runs[c]) for k in PATHS]
    out.append(["other cores (max)", f"{max(others):.2f}", "", "", "~0 on a quiet machine", ""])
    out.append(["failed requests", str(failed[0]), str(failed[1]), "", "0", yes(sum(failed) == 0)])
    return out, verdict


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    root: Path = args.bundles or bundles_dir()
    bundle_dir = root / args.bundle
    if not (bundle_dir / "pipeline.json").is_file():
        print(f"{bundle_dir} is not a bundle: {BUILD_HINT}", file=sys.stderr)
        return 2
    bundle = load_bundle(bundle_dir)
    texts = utterances()
    binary = args.format == "binary"
    outputs = [t.name for t in bundle.signature()[1]]
    lengths = np.array([int(bundle.encode([[s]]).lengths[0]) for s in texts])
    tok = tokenizer_time(bundle, texts)
    cpu = cpu_line()
    print(cpu)
    print(
        f"{args.bundle}: {len(texts)} real sentences of {lengths.min()}-{lengths.max()} tokens "
        f"(mean {lengths.mean():.1f}); tokenizer per request: p50 {tok.p50 * 1e3:.3f} ms, "
        f"p99 {tok.p99 * 1e3:.3f} ms; {args.format} bodies, {args.duration:g} s runs"
    )
    wrk = loadgen.ensure_wrk()
    requests = {
        "pipeline": [body(text_inputs(s), outputs, binary) for s in texts],
        "tensors": [body(tensor_inputs(bundle, s), [HEAD], binary) for s in texts],
    }
    models = {"pipeline": bundle_dir, "tensors": bundle.model_path}
    with tempfile.TemporaryDirectory(prefix="pipeline-bench-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        paths: dict[str, Path_] = {}
        for key in PATHS:
            (work / key).mkdir()
            try:
                server = harness.start("ours", models[key], args.bundle, work / key, threads=0)
            except harness.Skip as exc:
                print(f"cannot start eas-server for the {key} path: {exc}", file=sys.stderr)
                return 2
            stack.callback(server.stop)
            files = bodies.write(requests[key], work / key, key)
            script = loadgen.write_lua(files, requests[key], work / f"{key}.lua")
            paths[key] = Path_(key, server, script)
        fleet = [p.server for p in paths.values()]
        check({k: p.server for k, p in paths.items()}, args.bundle, bundle, texts, binary)
        harness.wait_quiet(fleet, timeout_s=args.quiet_timeout)
        for round_ in range(args.rounds):
            for c in CONCURRENCY:
                order = PATHS if round_ % 2 == 0 else PATHS[::-1]
                for key in order:
                    _run(paths[key], c, args, wrk, fleet)
    table, verdict = rows(paths, tok)
    rounds = f", median of {args.rounds} rounds" if args.rounds > 1 else ""
    title = (
        f"Pipeline (text in) vs tensors (pre-tokenized), {args.bundle} bundle, {len(texts)} real "
        f"sentences, {args.format} bodies, {args.duration:g} s runs{rounds} ({cpu})"
    )
    _table(title, ["", "tensors", "pipeline", "pipeline/tensors", "target", "met"], table)
    if args.out:
        doc = {
            "cpu": cpu,
            "tokenizer_s": asdict(tok),
            "verdict": verdict,
            "runs": {
                k: {str(c): [asdict(r) for r in p.runs[c]] for c in p.runs}
                for k, p in paths.items()
            },
        }
        args.out.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
