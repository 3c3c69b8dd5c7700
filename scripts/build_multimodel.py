#!/usr/bin/env python3
"""Build the hundred-model repository of the multi-model benchmark (issue 18) outside git.

    python scripts/build_multimodel.py [--out DIR] [--models 100] [--force]

Writes, under `$AUTOAI_CACHE/models/multimodel` (else `~/.cache/autoai/models/multimodel`):

- `base.onnx`: ONE export of a small BERT (`transformers.BertConfig` with hidden 256, 4 layers,
  4 heads, intermediate 1024, vocab 30522, `torch.manual_seed(0)` weights), through
  `build_models.py`'s exporter (mean-pooled `sentence_embedding` beside `last_hidden_state`,
  checked against torch on real tokenized sentences);
- `repo/m000/1/model.onnx` ... `repo/m099/1/model.onnx`: Triton's layout for
  `eas-server --model-repository`: the base graph with every float initializer perturbed by
  seeded numpy noise (seed = the model's index), so each version has weights of its own;
- `extra/m100.onnx`: one more variant outside the repository, for timing a load through the
  repository API (`model_path` in the load's config);
- `manifest.json`: the recipe; a directory built by another recipe is rebuilt.

Only what is missing is written (`--force` rewrites everything). Exporting takes a few seconds;
the variants are onnx + numpy, about 0.2 s each. The benchmark's inputs are the real sentences of
`minilm-l6.inputs.npz` (all-MiniLM-L6-v2's tokenizer: the BERT uncased vocabulary, so the same
ids), which `build_models.py` writes first when it is missing.

Why noise rather than 100 exports: the graphs are identical and only the weights differ, which
is what a hundred fine-tuned versions of one architecture look like to a server; exporting once
keeps the build to about half a minute.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import build_models  # this directory's model builder (scripts/ is on sys.path when run as a file)
import numpy as np
import numpy.typing as npt

CONFIG: dict[str, int] = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "vocab_size": 30522,
}
NOISE = 0.05
"""Noise standard deviation, relative to each initializer's own (or 0.02 where that is 0)."""
RECIPE: dict[str, Any] = {"config": CONFIG, "seed": 0, "noise": NOISE, "format": 1}
EXTRA_INDEX = 100


def default_out() -> Path:
    return build_models.default_out() / "multimodel"


def variant_path(out: Path, index: int) -> Path:
    """Where variant `index` goes: the repository for 0..99, `extra/` for the one more."""
    if index == EXTRA_INDEX:
        return out / "extra" / f"m{index:03d}.onnx"
    return out / "repo" / f"m{index:03d}" / "1" / "model.onnx"


def build_base(out: Path, models: Path) -> Path:
    """Export the small BERT once (checked against torch), unless it exists."""
    path = out / "base.onnx"
    if path.exists():
        return path
    import torch
    from transformers import BertConfig, BertModel

    build_models.build_minilm(models, False, None)  # the tokenized sentences, if missing
    with np.load(models / "minilm-l6.inputs.npz") as npz:
        sample = {k: npz[k] for k in npz.files}
    torch.manual_seed(0)
    config = BertConfig(**CONFIG)
    config._attn_implementation = "eager"
    model = BertModel(config)
    started = time.perf_counter()
    build_models._export_bert(model, path, build_models._check_feeds(sample))
    took = time.perf_counter() - started
    print(f"built    {path} (small BERT {CONFIG}, {path.stat().st_size >> 20} MiB, {took:.1f} s)")
    return path


def _perturbed(array: npt.NDArray[Any], rng: np.random.Generator) -> npt.NDArray[Any]:
    scale = float(array.std()) or 0.02
    noise = rng.standard_normal(array.shape, dtype=np.float32) * np.float32(NOISE * scale)
    out: npt.NDArray[Any] = (array + noise).astype(array.dtype)
    return out


def write_variant(base: Any, index: int, path: Path) -> int:
    """Write variant `index` of the loaded `base` model to `path`; returns its initializers
    changed. `base` is left as it was."""
    import onnx
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(base)
    rng = np.random.default_rng(index)
    changed = 0
    for init in model.graph.initializer:
        if init.data_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            continue
        array = numpy_helper.to_array(init)
        init.CopyFrom(numpy_helper.from_array(_perturbed(array, rng), init.name))
        changed += 1
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save(model, str(tmp))
    os.replace(tmp, path)
    return changed


def check_variant(base_path: Path, path: Path, sample: dict[str, npt.NDArray[Any]]) -> float:
    """Mean abs difference of `sentence_embedding` between the base and a variant on real rows:
    the variant runs and its weights differ (a difference of 0 would mean they do not)."""
    import onnxruntime as ort

    feed = {k: sample[f"{k}_32"][:8] for k in build_models.INPUTS}
    outs = []
    for p in (base_path, path):
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        outs.append(sess.run(["sentence_embedding"], feed)[0])
    if not all(np.isfinite(o).all() for o in outs):
        raise SystemExit(f"{path}: non-finite outputs")
    return float(np.abs(outs[0] - outs[1]).mean())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="default: <models dir>/multimodel")
    parser.add_argument("--models", type=int, default=100, help="variants in the repository")
    parser.add_argument("--force", action="store_true", help="rewrite everything")
    args = parser.parse_args(argv)
    if not 1 <= args.models <= EXTRA_INDEX:
        parser.error(f"--models must be 1..{EXTRA_INDEX}")
    out: Path = args.out or default_out()
    models = build_models.default_out()
    manifest = out / "manifest.json"
    recipe = RECIPE
    if manifest.exists() and json.loads(manifest.read_text()) != recipe:
        print(f"note: {out} was built by another recipe: rebuilding it")
        args.force = True
    if args.force:
        for p in [out / "base.onnx", *(variant_path(out, i) for i in range(EXTRA_INDEX + 1))]:
            p.unlink(missing_ok=True)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as exc:
        if not (out / "base.onnx").exists():
            print(
                f"error: {exc.name} is not importable: {build_models.TORCH_HINT}", file=sys.stderr
            )
            return 2
    out.mkdir(parents=True, exist_ok=True)
    base_path = build_base(out, models)
    wanted = [*range(args.models), EXTRA_INDEX]
    missing = [i for i in wanted if not variant_path(out, i).exists()]
    if missing:
        import onnx

        base = onnx.load(str(base_path))
        started = time.perf_counter()
        for i in missing:
            changed = write_variant(base, i, variant_path(out, i))
        took = time.perf_counter() - started
        print(f"built    {len(missing)} variants ({changed} initializers perturbed each)")
        print(f"         in {took:.1f} s")
    with np.load(models / "minilm-l6.inputs.npz") as npz:
        sample = {k: npz[k] for k in npz.files}
    diff = check_variant(base_path, variant_path(out, wanted[-2]), sample)
    print(f"checked  m{wanted[-2]:03d} vs base: sentence_embedding mean abs diff {diff:.3g}")
    if diff == 0.0:
        raise SystemExit("the variant's outputs equal the base's: its weights were not changed")
    manifest.write_text(json.dumps(recipe, indent=1) + "\n")
    size = variant_path(out, 0).stat().st_size
    print(f"ready    {out / 'repo'}: {args.models} models of {size / 2**20:.1f} MiB each")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
