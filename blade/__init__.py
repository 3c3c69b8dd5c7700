"""blade: an inference optimizer that verifies every step.

```python
from blade import optimize
result = optimize("model.onnx", device="cpu", test_data="inputs.npz", output_dir="out/")
result.artifact_dir, result.report, result.speedup
```
Passes that fit the device are tried (ORT graph optimization, transformer fusion, dynamic int8 on
CPU, fp16 with fp32 IO and CUDA graphs on GPU, TensorRT where installed); each candidate is checked
against the fp32 CPU reference and timed; the fastest that passes its gate is kept. The artifact
is served by ``eas-server --processor blade --model ARTIFACT_DIR``.

A pipeline bundle (a directory with ``pipeline.json``) is optimized through its model and comes
out as a derived bundle (``"model": "blade"``, the artifact in ``blade/``) for the ``pipeline``
processor. With ``eval_set=`` (labelled JSONL) each lossy step is also judged by the task metric
(accuracy, or slot F1) through the bundle's own pre/post-processing, and refused when it loses
more than ``task_tolerance`` points (default 0.5) against the fp32 plain model.

A generation bundle (``generation.json``: an encoder and a decoder step with a key/value cache)
is optimized stage by stage and judged by generation's own gates, teacher-forced logits and
greedy-token agreement against the fp32 CPU reference on audio clips; the derived generation
bundle is served by the ``blade`` processor through the seq2seq engine with ``BladeSeq2Seq``
(on CUDA: caches on the device, IO binding, CUDA graphs per rows x cache-length bucket).
"""

from ._artifact import Artifact, load_artifact, render_report
from ._errors import (
    BladeError,
    InvalidModel,
    InvalidTestData,
    RuntimeNotAvailable,
    VerificationFailed,
)
from ._genreport import render_generation_report
from ._genverify import GENERATION_GATES, GenerationGate
from ._optimize import OptimizeResult, optimize
from ._runtime import BladeRuntime, RuntimeConfig
from ._seq2seq import BladeSeq2Seq, Seq2SeqConfig
from ._verify import GATES, Gate

__all__ = [
    "GATES",
    "GENERATION_GATES",
    "Artifact",
    "BladeError",
    "BladeRuntime",
    "BladeSeq2Seq",
    "Gate",
    "GenerationGate",
    "InvalidModel",
    "InvalidTestData",
    "OptimizeResult",
    "RuntimeConfig",
    "RuntimeNotAvailable",
    "Seq2SeqConfig",
    "VerificationFailed",
    "load_artifact",
    "optimize",
    "render_generation_report",
    "render_report",
]
