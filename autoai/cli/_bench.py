"""``autoai bench MODEL``: load a model and print QPS and RT as the client and the servers saw them.

Through the SDK (``--store``, routed as published) or straight to one instance (``--url``);
closed loop over ``--concurrency`` levels, or open loop at ``--rate`` (Poisson arrivals, latency
from the intended send time); from one generator process, or ``--processes N`` sharing the
load. ``--generate`` loads a generative (seq2seq) model with streaming generate calls instead
(closed loop, synthetic clips of ``--audio-seconds``) and reports QPS, RT, time to first token
and tokens/s. The work is ``autoai.bench``'s; this module parses the flags, shows progress and
renders the report (rich tables, ``--json``, ``--plot``).
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from ._common import emit_json, fail_on_errors
from ._errors import BadUsage, CliError
from ._parse import parse_input
from ._predict import _load

if TYPE_CHECKING:  # imported when the command runs: other commands start without the SDK
    from autoai.bench import BenchReport, GenerateReport, Step, StepResult

__all__ = [
    "DEFAULT_CONCURRENCY",
    "DEFAULT_MAX_IN_FLIGHT",
    "bench_command",
    "check_processes",
    "generate_table",
    "parse_duration",
    "parse_levels",
    "report_table",
]

DEFAULT_CONCURRENCY = "1,8,32"
DEFAULT_MAX_IN_FLIGHT = 256
"""With ``--rate``: the most calls outstanding unless ``--concurrency`` says otherwise."""

_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min)?\s*", re.IGNORECASE)
_UNIT_S = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0}


def parse_duration(option: str, value: str) -> float:
    """``"30s"``, ``"500ms"``, ``"2m"`` or ``"1.5"`` (seconds) -> seconds.

    Raises:
        BadUsage: anything else, or a negative or infinite value.
    """
    found = _DURATION.fullmatch(value)
    if found is None:
        raise BadUsage(f"{option} {value!r}: expected a duration such as 30s, 500ms or 2m")
    seconds = float(found.group(1)) * _UNIT_S[(found.group(2) or "s").lower()]
    if not math.isfinite(seconds):
        raise BadUsage(f"{option} {value!r}: not a finite duration")
    return seconds


def parse_levels(option: str, value: str, *, integer: bool) -> list[float]:
    """``"1,8,32"`` -> ``[1, 8, 32]``: comma-separated numbers > 0 (integers if ``integer``).

    Raises:
        BadUsage: an empty list, or an item that is not such a number.
    """
    levels: list[float] = []
    for item in value.split(","):
        text = item.strip()
        try:
            number = int(text) if integer else float(text)
        except ValueError:
            kind = "integers" if integer else "numbers"
            raise BadUsage(f"{option} {value!r}: expected comma-separated {kind} > 0") from None
        if not (math.isfinite(number) and number > 0):
            raise BadUsage(f"{option} {value!r}: every value must be > 0")
        levels.append(number)
    return levels


def _steps(concurrency: str | None, rate: str | None) -> list[Step]:
    from autoai.bench import Step

    if rate is None:
        counts = parse_levels("--concurrency", concurrency or DEFAULT_CONCURRENCY, integer=True)
        return [Step(concurrency=int(c)) for c in counts]
    limit = DEFAULT_MAX_IN_FLIGHT
    if concurrency is not None:
        caps = parse_levels("--concurrency", concurrency, integer=True)
        if len(caps) != 1:
            raise BadUsage("--concurrency with --rate takes one value: the most calls in flight")
        limit = int(caps[0])
    return [Step(rate=r, max_in_flight=limit) for r in parse_levels("--rate", rate, integer=False)]


def check_processes(processes: int, steps: list[Step]) -> None:
    """Every step's load can be shared by ``processes`` generator processes.

    Raises:
        BadUsage: ``processes`` < 1, or a step with fewer calls in flight than processes.
    """
    if processes < 1:
        raise BadUsage(f"--processes {processes}: must be >= 1")
    for step in steps:
        if step.concurrency is not None and step.concurrency < processes:
            raise BadUsage(
                f"--concurrency {step.concurrency} is less than --processes {processes}: every "
                "generator process needs at least one call in flight"
            )
        if step.rate is not None and step.max_in_flight < processes:
            raise BadUsage(
                f"--concurrency {step.max_in_flight} (the most calls in flight with --rate) is "
                f"less than --processes {processes}: every generator process needs at least one"
            )


def _inputs(values: list[str]) -> dict[str, Any] | None:
    if not values:
        return None
    given: dict[str, Any] = {}
    for value in values:
        name, source = parse_input(value)
        if name in given:
            raise BadUsage(f"--input {name} is given more than once")
        # A file is read here; a JSON value is converted to the input's datatype once the
        # signature is known.
        given[name] = _load(name, source, "") if isinstance(source, Path) else source
    return given


# ------------------------------------------------------------------------------------ output


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.2f}" if ms < 10 else f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items()) or "0"


def _cpu(result: StepResult) -> Text:
    """One process: percent of one core, as always; several: cores, all of them together."""
    g = result.generator
    text = f"{g.cpu_percent:.0f}%" if g.processes == 1 else f"{g.cpu_cores:.2f}"
    return Text(text, style="bold red" if g.saturated else "")


def _row(result: StepResult) -> list[str | Text]:
    c, s = result.client, result.server
    lat = c.latency
    label = result.step.label + (" (stopped)" if result.interrupted else "")
    cpu = _cpu(result)
    client: list[str | Text] = [
        label,
        f"{c.qps:.0f}",
        _ms(lat.p50 if lat else None),
        _ms(lat.p90 if lat else None),
        _ms(lat.p99 if lat else None),
        _ms(lat.max if lat else None),
        _counts(c.errors),
        cpu,
    ]
    if s is None:
        return [*client, *(["-"] * 8)]
    triggers = "/".join(str(s.batches.get(t, 0)) for t in ("full", "delay", "idle", "split"))
    batch = "-" if s.batch_size_mean is None else f"{s.batch_size_mean:.2f}"
    return [
        *client,
        f"{s.qps:.0f}",
        _ms(s.rt_mean),
        _ms(s.rt_p99),
        _ms(s.queue_mean),
        _ms(s.compute_mean),
        batch,
        triggers,
        _counts(s.errors),
    ]


_CLIENT_COLUMNS = ("QPS", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors", "gen CPU")
_SERVER_COLUMNS = (
    *("QPS", "RT ms", "p99 ms", "queue ms", "compute ms", "batch"),
    *("full/delay/idle/split", "errors"),
)


def report_table(report: BenchReport) -> Table:
    """One row per step: the client side, then the server side, of the same window."""
    how = "through the SDK" if report.target == "sdk" else "direct"
    shapes = ", ".join(
        f"{i['name']} {i['datatype']} {i['shape']} ({i['source']})" for i in report.inputs
    )
    n = report.processes
    gen = (
        "gen CPU: the generator's process, % of one core."
        if n == 1
        else f"gen CPU: the {n} generator processes together, in cores "
        "(red: one of them used 90% of its core or more)."
    )
    who = "" if n == 1 else f", {n} generator processes"
    table = Table(
        title=f"autoai bench {report.model} {how} ({report.address}{who})",
        caption=f"inputs {shapes}; {report.encoding} tensors; {report.warmup_s:g} s warmup, "
        f"{report.duration_s:g} s per step. Server p99: from histogram buckets. {gen}",
    )
    table.add_column("step")
    for name in _CLIENT_COLUMNS:
        table.add_column(f"client\n{name}", justify="right", header_style="bold cyan")
    for name in _SERVER_COLUMNS:
        table.add_column(f"server\n{name}", justify="right", header_style="bold magenta")
    for result in report.steps:
        table.add_row(*_row(result))
    return table


def generate_table(report: GenerateReport) -> Table:
    """One row per step of the generate mode: QPS, RT, time to first token, tokens/s."""
    how = "through the SDK" if report.target == "sdk" else "direct"
    tokens = "the model's default" if report.max_new_tokens is None else report.max_new_tokens
    table = Table(
        title=f"autoai bench --generate {report.model} {how} ({report.address})",
        caption=f"streaming generate calls, closed loop; {report.audio_seconds:g} s clips, "
        f"max_new_tokens {tokens}, num_beams {report.num_beams}; {report.warmup_s:g} s "
        f"warmup, {report.duration_s:g} s per step. TTFT: send to first token; tokens/s: "
        "output tokens of the calls that ended in the window.",
    )
    table.add_column("step")
    columns = ("QPS", "RT p50 ms", "RT p99 ms", "TTFT p50 ms", "TTFT p99 ms", "tokens/s")
    for name in (*columns, "errors"):
        table.add_column(name, justify="right", header_style="bold cyan")
    for step in report.steps:
        s = step.stats
        table.add_row(
            f"c={step.concurrency}" + (" (stopped)" if step.interrupted else ""),
            f"{s.qps:.1f}",
            _ms(s.rt.p50 if s.rt else None),
            _ms(s.rt.p99 if s.rt else None),
            _ms(s.ttft.p50 if s.ttft else None),
            _ms(s.ttft.p99 if s.ttft else None),
            f"{s.tokens_per_s:.0f}",
            _counts(s.errors),
        )
    return table


def _generate(
    target: tuple[str, str | None, str | None, str | None],
    flags: dict[str, bool],
    concurrency: str | None,
    durations: tuple[str, str],
    request: tuple[float, int, int],
    as_json: bool,
) -> None:
    """The generate mode of ``bench_command``: ``target`` is (model, store, url, version),
    ``flags`` which predict-mode flags were given (refused here), ``durations`` the warmup and
    the duration as typed, ``request`` (audio seconds, max_new_tokens, num_beams)."""
    from autoai.bench import (
        BenchError,
        GenerateConfig,
        Step,
        map_big_blocks,
        run_generate,
        to_generate_document,
    )

    refused = [flag for flag, given in flags.items() if given]
    if refused:
        raise BadUsage(f"--generate does not take {', '.join(refused)}")
    timing = (parse_duration("--warmup", durations[0]), parse_duration("--duration", durations[1]))
    if timing[1] <= 0:
        raise BadUsage(f"--duration {durations[1]!r}: must be > 0")
    console, err = Console(), Console(stderr=True)
    counts = parse_levels("--concurrency", concurrency or DEFAULT_CONCURRENCY, integer=True)
    levels = [int(c) for c in counts]
    model, store, url, version = target
    audio_seconds, max_new_tokens, num_beams = request
    try:
        config = GenerateConfig(
            model=model,
            concurrency=levels,
            store=store,
            url=url,
            version=version,
            audio_seconds=audio_seconds,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            warmup=timing[0],
            duration=timing[1],
        )
        map_big_blocks()
        with _Bar(err, [Step(concurrency=c) for c in levels], sum(timing)) as bar:
            report = run_generate(
                config,
                progress=bar,
                on_interrupt=lambda: err.print("stopping: finishing this step's figures"),
            )
    except KeyboardInterrupt:
        err.print("interrupted before anything was measured", highlight=False)
        raise typer.Exit(130) from None
    except BenchError as exc:
        raise CliError(str(exc)) from None
    if as_json:
        emit_json(to_generate_document(report))
    else:
        console.print(generate_table(report))
    if report.interrupted:
        err.print("interrupted: the figures above are those of the steps measured so far")
        raise typer.Exit(130)


def _notes(report: BenchReport) -> list[str]:
    notes = []
    for r in report.steps:
        g = r.generator
        if g.saturated and g.processes == 1:
            notes.append(
                f"warning: step {r.step.label}: the load generator used "
                f"{g.cpu_percent:.0f}% of one core: it, not the server, may be the "
                "bottleneck (use --url for the lean direct sender, or --processes N)"
            )
        elif g.saturated:
            busiest = max(g.per_process_percent)
            notes.append(
                f"warning: step {r.step.label}: a load generator process used {busiest:.0f}% "
                "of one core: the generators, not the server, may be the bottleneck (use more "
                "--processes, if the machine has the cores)"
            )
        if r.server is not None and r.server.unreachable:
            notes.append(
                f"warning: step {r.step.label}: no /metrics from {', '.join(r.server.unreachable)}"
            )
        if r.server is None:
            notes.append(f"warning: step {r.step.label}: no instance found to read /metrics from")
    if report.interrupted:
        notes.append("interrupted: the figures above are those of the steps measured so far")
    return notes


class _Bar:
    """The progress bar on a terminal: one line per step, its warmup and window as the total.

    Started by the first progress call (after the target answered), so that an error before
    the run prints nothing else.
    """

    def __init__(self, console: Console, steps: list[Step], seconds: float):
        self._console = console
        self._progress: Progress | None = None
        self._steps = steps
        self._seconds = seconds
        self._tasks: dict[int, TaskID] = {}

    def __enter__(self) -> _Bar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, index: int, elapsed: float) -> None:
        if not self._console.is_terminal:
            return
        if self._progress is None:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                TimeRemainingColumn(),
                console=self._console,
                transient=True,
            )
            self._progress.start()
        task = self._tasks.get(index)
        if task is None:
            for done in self._tasks.values():
                self._progress.update(done, completed=self._seconds)
            label = f"step {index + 1}/{len(self._steps)} {self._steps[index].label}"
            task = self._tasks[index] = self._progress.add_task(label, total=self._seconds)
        self._progress.update(task, completed=min(elapsed, self._seconds))


# ----------------------------------------------------------------------------------- command


def bench_command(
    model: Annotated[str, typer.Argument(help="the model to load")],
    store: Annotated[
        str | None,
        typer.Option(
            "--store",
            help="config store URL: call through the SDK, routed as published "
            "(default: AUTOAI_STORE_URL, else ~/.autoai/store.db)",
        ),
    ] = None,
    url: Annotated[
        str | None,
        typer.Option("--url", help="http://HOST:PORT of one instance: call it directly"),
    ] = None,
    concurrency: Annotated[
        str | None,
        typer.Option(
            "--concurrency",
            help=f"closed-loop steps, calls in flight (default {DEFAULT_CONCURRENCY}); with "
            f"--rate: the most calls in flight (default {DEFAULT_MAX_IN_FLIGHT})",
        ),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate",
            help="open loop: Poisson arrivals per second, comma-separated for several steps",
        ),
    ] = None,
    duration: Annotated[
        str, typer.Option("--duration", help="measured time per step (30s, 500ms, 2m)")
    ] = "30s",
    warmup: Annotated[
        str, typer.Option("--warmup", help="load before each step's window, not measured")
    ] = "5s",
    inputs: Annotated[
        list[str] | None,
        typer.Option(
            "--input",
            help="NAME=@FILE.npy or NAME=JSON, repeated (default: drawn from the signature)",
        ),
    ] = None,
    batch: Annotated[int, typer.Option("--batch", help="rows per request of drawn inputs")] = 1,
    binary: Annotated[
        bool,
        typer.Option("--binary/--json-tensors", help="binary tensors (default) or JSON tensors"),
    ] = True,
    version: Annotated[str | None, typer.Option("--version", help="call this version only")] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="print the report as JSON on stdout")
    ] = False,
    plot_path: Annotated[
        Path | None,
        typer.Option("--plot", help="write a PNG of throughput and p99 per step", dir_okay=False),
    ] = None,
    processes: Annotated[
        int,
        typer.Option(
            "--processes",
            help="generator processes sharing each step's load, for servers faster than one "
            "Python process can drive: the concurrency (with --rate: the rate and the in-flight "
            "limit) split evenly; needs concurrency >= N",
        ),
    ] = 1,
    generate: Annotated[
        bool,
        typer.Option(
            "--generate",
            help="generate mode, for generative (seq2seq, Whisper-shaped) models: each call is "
            "a streaming generate of a synthetic clip, closed loop at each --concurrency; "
            "reports QPS, RT p50/p99, time to first token p50/p99 and tokens/s",
        ),
    ] = False,
    audio_seconds: Annotated[
        float,
        typer.Option("--audio-seconds", help="with --generate: each request's clip, seconds"),
    ] = 5.0,
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", help="with --generate: most tokens per request")
    ] = 32,
    num_beams: Annotated[
        int, typer.Option("--num-beams", help="with --generate: 1 greedy, 2-4 beam search")
    ] = 1,
) -> None:
    """Load MODEL step by step and print QPS and RT as the client saw them next to what the
    instances' /metrics saw over the same window, and the generator's own CPU. With --generate:
    streaming generate calls, and QPS, RT, time to first token and tokens/s."""
    from autoai.bench import BenchConfig, BenchError, map_big_blocks, plot, run, to_document
    from config_store import default_store_url

    console = Console()
    err = Console(stderr=True)
    with fail_on_errors():
        if store is not None and url is not None:
            raise BadUsage("give --store or --url, not both")
        if url is None and store is None:
            store = os.environ.get("AUTOAI_STORE_URL") or default_store_url()
        if generate:
            flags = {
                "--rate": rate is not None,
                "--input": bool(inputs),
                "--batch": batch != 1,
                "--json-tensors": not binary,
                "--plot": plot_path is not None,
                "--processes": processes != 1,
            }
            target = (model, store, url, version)
            request = (audio_seconds, max_new_tokens, num_beams)
            _generate(target, flags, concurrency, (warmup, duration), request, as_json)
            return
        given = _inputs(inputs or [])
        if given is not None and batch != 1:
            raise BadUsage("--batch applies to drawn inputs; with --input the arrays set it")
        if batch < 1:
            raise BadUsage(f"--batch {batch}: must be >= 1")
        steps = _steps(concurrency, rate)
        check_processes(processes, steps)
        warm, window = parse_duration("--warmup", warmup), parse_duration("--duration", duration)
        if window <= 0:
            raise BadUsage(f"--duration {duration!r}: must be > 0")
        try:
            config = BenchConfig(
                model=model,
                steps=steps,
                store=store,
                url=url,
                version=version,
                warmup=warm,
                duration=window,
                inputs=given,
                batch=batch,
                binary=binary,
                processes=processes,
            )
            # This process is the load generator from here on: its allocator settings are ours
            # to make (a library call of ``run`` leaves them alone).
            map_big_blocks()
            with _Bar(err, steps, warm + window) as bar:
                report = run(
                    config,
                    progress=bar,
                    on_interrupt=lambda: err.print("stopping: finishing this step's figures"),
                )
        except KeyboardInterrupt:
            err.print("interrupted before anything was measured", highlight=False)
            raise typer.Exit(130) from None
        except BenchError as exc:
            raise CliError(str(exc)) from None
        if as_json:
            emit_json(to_document(report))
        else:
            console.print(report_table(report))
        for note in _notes(report):
            err.print(note, markup=False, highlight=False)
        if plot_path is not None:
            try:
                written = plot(report, plot_path)
            except BenchError as exc:
                raise CliError(str(exc)) from None
            err.print(f"wrote {written}", markup=False, highlight=False)
    if report.interrupted:
        raise typer.Exit(130)
