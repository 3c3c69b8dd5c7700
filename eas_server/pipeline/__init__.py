"""Pipelines: text in, labels out. A bundle carries a model with its tokenizer, label list and
``pipeline.json`` (``PipelineSpec``); ``load_bundle`` checks it once, ``Bundle.encode`` tokenizes a
whole batch (Rust ``tokenizers``) into the model's feeds and ``Bundle.decode`` turns the head into
the external outputs (labels, scores, embeddings, slot spans). Pure: tokenizers + numpy, no
runtime; the ``pipeline`` processor (``eas_server.processors.pipeline``) serves a bundle and
``evaluate`` scores one on labelled examples (blade's task gate).
"""

from ._bundle import (
    MODEL_INPUTS,
    Bundle,
    Encoded,
    RunFn,
    inspect_bundle,
    is_bundle,
    load_bundle,
    read_bundle,
    spec_json,
)
from ._decode import Slot, merge_bio
from ._errors import BundleError, ExamplesError
from ._evaluate import Example, TaskScore, evaluate, read_examples
from ._spec import BUNDLE_SPEC, OUTPUT_NAMES, TASKS, PipelineSpec, Task

__all__ = [
    "BUNDLE_SPEC",
    "MODEL_INPUTS",
    "OUTPUT_NAMES",
    "TASKS",
    "Bundle",
    "BundleError",
    "Encoded",
    "Example",
    "ExamplesError",
    "PipelineSpec",
    "RunFn",
    "Slot",
    "Task",
    "TaskScore",
    "evaluate",
    "inspect_bundle",
    "is_bundle",
    "load_bundle",
    "merge_bio",
    "read_bundle",
    "read_examples",
    "spec_json",
]
