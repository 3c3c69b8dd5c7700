"""``autoai blade optimize``: run the optimizer, show a progress line per pass and the report.

A pipeline bundle (a directory with ``pipeline.json``) is optimized through its model and written
as a derived bundle; with ``--eval-set`` every lossy pass is also judged by the task metric on
the labelled set, and the table shows, per pass, the numeric verdict beside the task's."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

blade_app = typer.Typer(
    help="Optimize models with verified passes (PAI-Blade style).", no_args_is_help=True
)


def _fail(message: str) -> NoReturn:
    """``error: MESSAGE`` on stderr as it is (no markup, no wrapping at the terminal's width),
    exit 2."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(2)


def _table(report: dict[str, Any]) -> Table:
    from blade._artifact import task_cells, task_line, why

    batches = [str(b) for b in report["batch_sizes"]]
    base = report["baseline"]["latency_ms"]
    task = report.get("task") or {}
    judged = bool(task.get("metric"))
    subject = report.get("bundle") or report["model"]
    table = Table(title=f"blade report: {subject} on {report['hardware_key']}")
    scored = ("numeric", task["metric"], "lost pts", "task") if judged else ()
    for col in (
        "pass",
        "tier",
        "verdict",
        "cosine",
        "rel L2",
        *scored,
        *(f"b{b} ms" for b in batches),
        "reason",
    ):
        left = col in ("pass", "tier", "verdict", "numeric", "task", "reason")
        table.add_column(col, justify="left" if left else "right")
    plain_task = ("", f"{task['baseline']:.2%}", "", "") if judged else ()
    table.add_row(
        "plain (baseline)", "-", "-", "", "", *plain_task, *(f"{base[b]:.2f}" for b in batches), ""
    )
    for entry in report["passes"]:
        metrics = entry.get("metrics") or {}
        cos = min((m["cosine"] for m in metrics.values()), default=None)
        rel = max((m["rel_l2"] for m in metrics.values()), default=None)
        lat = entry.get("latency_ms") or {}
        cells = [
            f"{lat[b]['after']:.2f} ({base[b] / lat[b]['after']:.2f}x)" if b in lat else "-"
            for b in batches
        ]
        table.add_row(
            entry["name"],
            entry.get("tier", "-"),
            entry["verdict"],
            "-" if cos is None else f"{cos:.5f}",
            "-" if rel is None else f"{rel:.1e}",
            *(task_cells(entry) if judged else ()),
            *cells,
            why(entry) or "",
        )
    chosen = f"chosen: {report['chosen']} - {report['reason']}; speedup {report['speedup']:.2f}x"
    line = task_line(report)
    table.caption = f"{chosen}. Test data: {report['test_data']}" + (f". {line}" if line else "")
    return table


@blade_app.command("optimize")
def optimize_command(
    model: Annotated[
        Path,
        typer.Argument(
            help="ONNX model, or pipeline bundle directory (with pipeline.json), to optimize",
            exists=True,
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="artifact directory, or derived bundle for a bundle (default: MODEL.blade)",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="cpu or cuda")] = "cpu",
    test_data: Annotated[
        Path | None, typer.Option("--test-data", help="npz of inputs (batch dim first)")
    ] = None,
    level: Annotated[str, typer.Option(help="o1: lossless (+fp16 on GPU); o2: also int8")] = "o2",
    batch_sizes: Annotated[
        str, typer.Option("--batch-sizes", help="comma-separated batch sizes to time")
    ] = "1,8,32",
    tolerance: Annotated[float | None, typer.Option(help="cosine floor for lossy passes")] = None,
    seq: Annotated[
        int | None,
        typer.Option(
            help="sequence length of drawn test data (default 128; a bundle's max_length)"
        ),
    ] = None,
    eval_set: Annotated[
        Path | None,
        typer.Option(
            "--eval-set",
            help="bundles: JSONL of labelled examples; each lossy pass is also judged by the "
            "task metric (accuracy, or slot F1) through the bundle's own pre/post-processing",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    task_tolerance: Annotated[
        float,
        typer.Option(
            "--task-tolerance",
            help="points of the task metric a lossy pass may lose against the fp32 model "
            "(0.5 = 0.005 of accuracy)",
        ),
    ] = 0.5,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Try the passes that fit DEVICE, verify each against the fp32 CPU reference, keep the
    fastest that passes, and write an artifact for `eas-server --processor blade` (for a
    pipeline bundle: a derived bundle for `--processor pipeline`, judged on --eval-set too)."""
    from blade import BladeError, optimize

    try:
        sizes = tuple(int(b) for b in batch_sizes.split(","))
    except ValueError:
        _fail(f"--batch-sizes {batch_sizes!r}: expected comma-separated integers such as 1,8,32")
    console = Console(stderr=as_json)
    # Started by the first pass, so that a model refused up front prints its one line only.
    bar: Progress | None = None
    tasks: dict[str, TaskID] = {}

    def progress(name: str, status: str) -> None:
        nonlocal bar
        if bar is None:
            bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            bar.start()
        if name not in tasks:
            tasks[name] = bar.add_task(f"{name}: running", total=1)
        if status != "running":
            bar.update(tasks[name], description=f"{name}: {status}", completed=1)

    try:
        result = optimize(
            model,
            device=device,
            test_data=test_data,
            output_dir=out,
            level=level,
            tolerance=tolerance,
            batch_sizes=sizes,
            progress=progress,
            seq=seq,
            eval_set=eval_set,
            task_tolerance=task_tolerance,
        )
    except (BladeError, ValueError) as exc:
        _fail(str(exc))
    finally:
        if bar is not None:
            bar.stop()
    if as_json:
        print(json.dumps(result.report, indent=2, default=float))
    else:
        console.print(_table(result.report))
        console.print(f"artifact: {result.artifact_dir}")
