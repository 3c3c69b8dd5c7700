"""autoai.bench: load a model as the application would, and report both sides of every step.

```python
from autoai.bench import BenchConfig, Step, run, to_document
report = run(BenchConfig("intent-cls", store="zk://zk1:2181/autoai",
                         steps=[Step(concurrency=c) for c in (1, 8, 32)], duration=30))
to_document(report)["steps"][0]["client"]["rt_ms"]["p99"]
```
The generate mode (``GenerateConfig``, ``run_generate``) loads a generative (seq2seq) model with
streaming ``generate`` calls, closed loop, and reports QPS, RT, time to first token and tokens/s:

```python
report = run_generate(GenerateConfig("whisper", url="http://127.0.0.1:8000",
                                     concurrency=[1, 8], audio_seconds=5, max_new_tokens=32))
to_generate_document(report)["steps"][0]["ttft_ms"]["p99"]
```
Closed loop (``Step(concurrency=N)``) or open loop (``Step(rate=QPS)``: Poisson arrivals, each
call timed from its intended send time); through the SDK (``store=``) or straight to one
instance (``url=``). Per step: client-side QPS and latency percentiles, errors by kind; the
instances' ``/metrics`` deltas (QPS, RT, queue and compute time, batch sizes, batch triggers);
and the generator's own CPU. ``BenchConfig(processes=N)`` shares every step among N generator
processes that start it together; their figures are merged exactly (``merge_parts``).
Pure cores: ``_stats``, ``_window``, ``_split``, ``_schedule``, ``_prom``, ``_inputs``,
``_report``, ``_genstats``; I/O: ``_direct``, ``_sdk``, ``_scrape``, ``_generation`` (the generate
mode, whole); orchestration: ``_load``, ``_generator``, ``_runner``, ``_main``; processes:
``_pool`` (the parent), ``_child``, ``_protocol``; ``_plot`` needs matplotlib
(``pip install 'autoai[bench]'``).

``map_big_blocks`` sets glibc's allocator for the whole process, so a library call never makes
it: entry points that generate load for long (``autoai bench``, the generator processes, a
soak script) call it once at start.
"""

from ._errors import BadInput, BenchError, GeneratorFailed, Unreachable
from ._generation import GenerateConfig, bench_generate, run_generate, synth_audio
from ._genstats import (
    GENERATE_SCHEMA_VERSION,
    GenerateReport,
    GenerateSamples,
    GenerateStats,
    GenerateStep,
    summarize_generate,
    to_generate_document,
)
from ._heap import map_big_blocks
from ._inputs import DYNAMIC_DIM, draw_inputs, signature_from_metadata
from ._load import closed_loop, open_loop
from ._main import BenchConfig, bench, run
from ._plot import plot
from ._prom import Histogram, ServerSnapshot, ServerStats, parse_metrics, server_stats
from ._report import JSON_SCHEMA, SCHEMA_VERSION, BenchReport, Step, StepResult, to_document
from ._schedule import ArrivalPlan
from ._stats import (
    ClientStats,
    GeneratorStats,
    LatencySummary,
    Samples,
    error_kind,
    generator_stats,
    percentile,
)
from ._window import WindowPart, merge_parts, summarize, window_part

__all__ = [
    "DYNAMIC_DIM",
    "GENERATE_SCHEMA_VERSION",
    "JSON_SCHEMA",
    "SCHEMA_VERSION",
    "ArrivalPlan",
    "BadInput",
    "BenchConfig",
    "BenchError",
    "BenchReport",
    "ClientStats",
    "GenerateConfig",
    "GenerateReport",
    "GenerateSamples",
    "GenerateStats",
    "GenerateStep",
    "GeneratorFailed",
    "GeneratorStats",
    "Histogram",
    "LatencySummary",
    "Samples",
    "ServerSnapshot",
    "ServerStats",
    "Step",
    "StepResult",
    "Unreachable",
    "WindowPart",
    "bench",
    "bench_generate",
    "closed_loop",
    "draw_inputs",
    "error_kind",
    "generator_stats",
    "map_big_blocks",
    "merge_parts",
    "open_loop",
    "parse_metrics",
    "percentile",
    "plot",
    "run",
    "run_generate",
    "server_stats",
    "signature_from_metadata",
    "summarize",
    "summarize_generate",
    "synth_audio",
    "to_document",
    "to_generate_document",
    "window_part",
]
