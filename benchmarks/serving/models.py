"""The models a run serves: a fast and a slow one, with the tokenized rows they get.

- `fast`: `minilm-l3.onnx`, all-MiniLM-L6-v2 cut to its first 3 layers (`scripts/build_models.py
  --only minilm-l3`), at 32 tokens: about 2.6 ms per batch-1 call on the 2-core machine, so a
  server's own cost per request shows.
- `slow`: `minilm-l6.onnx`, the whole model, at 96 tokens: about 13 ms per batch-1 call there,
  so the runtime dominates. 96 and not 128 (18-20 ms) or 32 (4.5 ms): the length that lands near
  13 ms. The rows are the real seq-128 sentences of `minilm-l6.inputs.npz` cut to 96 columns;
  none has more than 74 tokens, so the cut only drops padding and the mask stays consistent.

Both read `minilm-l6.inputs.npz` (the same tokenizer). Each table names the batch-1 time it
measured, since that is what the server overheads compare with.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

INPUTS = "minilm-l6.inputs.npz"


@dataclass(frozen=True)
class ModelSpec:
    """One model of a run: its file, the rows it gets and their length."""

    key: str  # "fast", "slow" or "custom"
    path: Path
    inputs: Path
    seq: int
    build: str  # how to build it when missing

    @property
    def name(self) -> str:
        """The name the servers serve it under (the file's stem)."""
        return self.path.stem


def builtin(directory: Path) -> dict[str, ModelSpec]:
    """The two models of the benchmark, in `directory` (the build script's cache)."""
    return {
        "fast": ModelSpec(
            "fast",
            directory / "minilm-l3.onnx",
            directory / INPUTS,
            32,
            "python scripts/build_models.py --only minilm-l3",
        ),
        "slow": ModelSpec(
            "slow",
            directory / "minilm-l6.onnx",
            directory / INPUTS,
            96,
            "python scripts/build_models.py --only minilm",
        ),
    }


def custom(path: Path, inputs: Path | None, seq: int) -> ModelSpec:
    """Any BERT-shaped ONNX model; its rows from `inputs` or `<stem>.inputs.npz` beside it."""
    rows = inputs or path.with_name(path.stem + ".inputs.npz")
    return ModelSpec("custom", path, rows, seq, f"a model file at {path}")


def load_sample(path: Path, seq: int) -> dict[str, npt.NDArray[Any]]:
    """input_ids / attention_mask rows at `seq`: stored ones, or cut from the seq-128 rows."""
    with np.load(path) as npz:
        if f"input_ids_{seq}" in npz:
            return {k: npz[f"{k}_{seq}"] for k in ("input_ids", "attention_mask")}
        if npz["input_ids"].shape[1] < seq:
            raise SystemExit(
                f"{path} has rows of {npz['input_ids'].shape[1]} tokens, < --seq {seq}"
            )
        return {k: np.ascontiguousarray(npz[k][:, :seq]) for k in ("input_ids", "attention_mask")}
