"""The benchmark's requests: real sentences as OIP binary bodies, and Zipf traffic over the models.

Inputs are the 64 real sentences of `minilm-l6.inputs.npz` (`scripts/build_models.py`: tokenized
by all-MiniLM-L6-v2's tokenizer, the BERT uncased vocabulary the small BERT shares), truncated or
padded to 32 tokens (`input_ids_32`, `attention_mask_32`); one sentence per request, asking for
`sentence_embedding` only, in binary form. The traffic is a seeded sequence of (model, sentence)
draws: the model by Zipf's law over ranks 1..N (rank k with probability proportional to
``k ** -s``; rank 1 is `m000`, the hottest), the sentence uniformly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from benchmarks.serving import bodies
from benchmarks.serving.gpu_load import http_messages

from .load import Traffic

__all__ = ["OUTPUT", "load_rows", "model_name", "sequence", "traffic", "zipf_probabilities"]

OUTPUT = "sentence_embedding"
Tensors = dict[str, npt.NDArray[Any]]


def model_name(index: int) -> str:
    return f"m{index:03d}"


def load_rows(npz: Path) -> list[Tensors]:
    """One request's inputs per sentence (batch dim 1, seq 32)."""
    with np.load(npz) as data:
        ids, mask = data["input_ids_32"], data["attention_mask_32"]
    return [
        {"input_ids": ids[i : i + 1].astype(np.int64), "attention_mask": mask[i : i + 1]}
        for i in range(len(ids))
    ]


def zipf_probabilities(n: int, s: float) -> npt.NDArray[np.float64]:
    """P(rank k) for k = 1..n, proportional to ``k ** -s``."""
    weights = np.arange(1, n + 1, dtype=np.float64) ** -s
    out: npt.NDArray[np.float64] = weights / weights.sum()
    return out


def sequence(
    models: int, rows: int, length: int, s: float, seed: int
) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """``length`` seeded draws: (model index by Zipf(s) rank, sentence index uniform)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(models, size=length, p=zipf_probabilities(models, s)).astype(np.int32)
    return chosen, rng.integers(0, rows, size=length, dtype=np.int32)


def traffic(
    url: str,
    names: Sequence[str],
    rows: Sequence[Tensors],
    model_draws: npt.NDArray[np.int32],
    row_draws: npt.NDArray[np.int32],
) -> Traffic:
    """The requests of ``model_draws`` / ``row_draws`` to ``/v2/models/{names[m]}/infer``: one
    prepared message per (model, sentence); with one name, every draw goes to that model."""
    encoded = [bodies.encode(r, [OUTPUT], "binary") for r in rows]
    messages: list[bytes] = []
    for name in names:
        messages += http_messages(url, f"/v2/models/{name}/infer", encoded)
    models = model_draws if len(names) > 1 else np.zeros_like(model_draws)
    return Traffic(messages, (models * len(rows) + row_draws).astype(np.int32))
