"""What every phase of the GPU benchmark (issue 16) shares: the profile (the GPU run or the CPU
smoke), the machine's names, the sentence inputs, and the files ``optimize`` leaves under WORK.

Inputs: ``gpu_inputs.npz`` beside this file (5 KB, made by ``gpu.py inputs`` from
``scripts/build_models.py``'s ``minilm-l6.inputs.npz``: real sentences tokenized with the BERT
uncased vocabulary, the same 30,522 ids as BERT-base), because the package that tokenizes them is
not on the GPU machine. Two sets of 64 rows:

- ``ids128``: seq 128, full length: consecutive sentences packed into one row
  (``[CLS] s_i [SEP] s_i+1 [SEP] ... [SEP]``, cut at 128), every position real;
- ``ids64`` / ``mask64``: seq 64, one sentence per row, padded (the longest one cut at 64 as the
  tokenizer's truncation does: ``[CLS]`` + 62 tokens + ``[SEP]``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from autoai.testing import cpu_model

REPO = Path(__file__).resolve().parents[2]
INPUTS = Path(__file__).with_name("gpu_inputs.npz")
NAME = "bert"
"""The model name clients address."""
OUTPUT = "sentence_embedding"
"""The only output asked for: the pooled embedding (the per-token output stays on the device)."""
CLS, SEP = 101, 102
ROWS = 64

Ints = npt.NDArray[np.int64]


@dataclass(frozen=True)
class Profile:
    """Sizes and durations of one run: the GPU benchmark, or the CPU smoke of the same code."""

    smoke: bool
    device: str  # cuda | cpu
    model: str  # scripts/build_models.py --only
    warmup_s: float
    window_s: float
    concurrency: tuple[int, ...]  # serve phase
    processes: int  # load generator processes
    loops: int  # timed iterations in-process
    max_batch: int  # serve phase
    blade_batches_serve: tuple[int, ...]
    blade_batches_seed: tuple[int, ...]
    seed_concurrency: int
    seed_warmup_s: float
    seed_window_s: float
    seed_batches: tuple[int, ...]
    seed_workers: tuple[int, ...]
    server_cpus: str | None  # taskset -c for the seed phase's server
    generator_cpus: str | None
    budget_s: float  # a phase skips what would not end inside this (one command: 10 min)

    @property
    def in_process_batches(self) -> tuple[int, ...]:
        return (1, self.max_batch)


def profile(smoke: bool) -> Profile:
    """The GPU run's profile, or the smoke's: CPU, tiny-bert, 1-2 s windows, less load."""
    cores = os.cpu_count() or 1
    pinned = cores >= 8
    return Profile(
        smoke=smoke,
        device="cpu" if smoke else "cuda",
        model="tiny-bert" if smoke else "bert-base",
        warmup_s=1.0 if smoke else 2.0,
        window_s=2.0 if smoke else 6.0,
        concurrency=(1, 4, 16) if smoke else (1, 32, 256),
        processes=2 if smoke else 8,
        loops=5 if smoke else 50,
        max_batch=32,
        blade_batches_serve=(1, 8) if smoke else (1, 8, 16, 32),
        blade_batches_seed=(8, 16) if smoke else (8, 12, 16),
        seed_concurrency=8 if smoke else 32,
        seed_warmup_s=1.0 if smoke else 1.5,
        seed_window_s=1.5 if smoke else 5.0,
        seed_batches=(8, 12, 16),
        seed_workers=(1, 2),
        server_cpus="0-3" if pinned else None,
        generator_cpus=f"4-{cores - 1}" if pinned else None,
        budget_s=1e9 if smoke else 545.0,
    )


@dataclass(frozen=True)
class Paths:
    """Where ``optimize`` writes and the later phases read (``--work``)."""

    work: Path
    model_name: str

    @property
    def models(self) -> Path:
        return self.work / "models"

    @property
    def model(self) -> Path:
        """The model as built: outputs ``last_hidden_state`` and ``sentence_embedding``."""
        return self.models / f"{self.model_name}.onnx"

    @property
    def pooled(self) -> Path:
        """The same graph with ``sentence_embedding`` as its only output (the seed phase)."""
        return self.models / f"{self.model_name}-pooled.onnx"

    @property
    def blade_serve(self) -> Path:
        return self.work / "blade-128"

    @property
    def blade_seed(self) -> Path:
        return self.work / "blade-64"

    @property
    def logs(self) -> Path:
        path = self.work / "logs"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def test_data(self, seq: int) -> Path:
        return self.work / f"test-{seq}.npz"


def machine(gpu: str | None) -> str:
    """``NVIDIA H100 80GB HBM3 + Intel(R) Xeon(R) ... (16 cores)``: for every table's title."""
    return f"{gpu or 'no GPU'} + {cpu_model()} ({os.cpu_count()} cores)"


# ------------------------------------------------------------------------------------- inputs


def _content(ids: Ints) -> list[int]:
    """The word-piece ids of one padded row, without [CLS], [SEP] and padding."""
    return [int(t) for t in ids if t not in (0, CLS, SEP)]


def make_inputs(source: Path) -> dict[str, npt.NDArray[Any]]:
    """The ``gpu_inputs.npz`` arrays from ``minilm-l6.inputs.npz`` (its seq-128 rows)."""
    with np.load(source) as npz:
        ids = npz["input_ids"].astype(np.int64)
    sentences = [_content(row) for row in ids]
    if len(sentences) < ROWS:
        raise SystemExit(f"{source}: {len(sentences)} rows, {ROWS} needed")
    full = np.zeros((ROWS, 128), dtype=np.uint16)
    for i in range(ROWS):
        tokens: list[int] = []
        j = i
        while len(tokens) < 126:
            tokens += [*sentences[j % ROWS], SEP]
            j += 1
        full[i] = [CLS, *tokens[:126], SEP]
    short = np.zeros((ROWS, 64), dtype=np.uint16)
    mask = np.zeros((ROWS, 64), dtype=np.uint8)
    for i, words in enumerate(sentences[:ROWS]):
        row = [CLS, *words[:62], SEP]
        short[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return {"ids128": full, "ids64": short, "mask64": mask}


def write_inputs(source: Path, dest: Path = INPUTS) -> Path:
    arrays = make_inputs(source)
    np.savez_compressed(dest, **arrays)  # type: ignore[arg-type]
    return dest


@dataclass(frozen=True)
class Sentences:
    """The requests' rows: ``full`` at seq 128 (every token real), ``short`` at seq 64 (padded)."""

    full: dict[str, Ints]
    short: dict[str, Ints]

    def longest_short(self) -> dict[str, Ints]:
        """One seq-64 request: the longest sentence (64 real tokens), batch dim 1."""
        i = int(np.argmax(self.short["attention_mask"].sum(axis=1)))
        return {k: v[i : i + 1] for k, v in self.short.items()}


def load_inputs(path: Path = INPUTS) -> Sentences:
    with np.load(path) as npz:
        ids128, ids64, mask64 = (npz[k].astype(np.int64) for k in ("ids128", "ids64", "mask64"))
    return Sentences(
        full={"input_ids": ids128, "attention_mask": np.ones_like(ids128)},
        short={"input_ids": ids64, "attention_mask": mask64},
    )


# ------------------------------------------------------------------------------------- models


def python() -> str:
    """The interpreter that runs the benchmark runs its tools too (python3 on the GPU machine,
    the venv's here); PYTHONPATH (the lease script's) goes to the children as it is."""
    return sys.executable


def pooled_variant(model: Path, dest: Path) -> Path:
    """``model`` with ``sentence_embedding`` as its only graph output: what the SDK gets when it
    cannot name the outputs it wants (``autoai bench`` asks for all of them)."""
    import onnx

    proto = onnx.load(str(model))
    keep = [o for o in proto.graph.output if o.name == OUTPUT]
    if len(keep) != 1:
        raise SystemExit(f"{model}: no {OUTPUT} output")
    del proto.graph.output[:]
    proto.graph.output.extend(keep)
    tmp = dest.with_name(dest.name + ".tmp")
    onnx.save(proto, str(tmp))
    os.replace(tmp, dest)
    return dest


def write_test_data(paths: Paths, sentences: Sentences) -> None:
    """The blade optimizer's verification inputs: 64 rows at seq 128 and at seq 64."""
    for seq, rows in ((128, sentences.full), (64, sentences.short)):
        np.savez(paths.test_data(seq), **rows)  # type: ignore[arg-type]
