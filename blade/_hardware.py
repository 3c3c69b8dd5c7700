"""What the artifact is tuned for: CPU ISA or GPU SM, and runtime versions (the cache key)."""

from __future__ import annotations

import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Hardware", "detect_hardware", "tensorrt_version"]

_ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")


def tensorrt_version() -> str | None:
    """TensorRT's version when its Python package imports, else None."""
    try:
        import tensorrt  # type: ignore[import-not-found]
    except Exception:  # missing, or its libraries are absent
        return None
    return str(tensorrt.__version__)


def _cpu() -> tuple[str, tuple[str, ...]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", platform.machine()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    return model, tuple(f for f in _ISA_FLAGS if f in flags)


def _gpu() -> tuple[str | None, str | None]:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None, None
    if out.returncode != 0 or not out.stdout.strip():
        return None, None
    name, _, cap = out.stdout.splitlines()[0].rpartition(",")
    return name.strip(), "sm" + cap.strip().replace(".", "")


@dataclass(frozen=True)
class Hardware:
    """The machine an artifact is optimized on and for."""

    device: str
    cpu_model: str
    cpu_isa: tuple[str, ...]
    cores: int
    gpu_name: str | None
    gpu_sm: str | None
    onnxruntime: str
    tensorrt: str | None

    def key(self) -> str:
        """``cpu-avx2`` or ``cuda-sm90``, plus runtime versions."""
        target = (
            f"cuda-{self.gpu_sm}"
            if self.device == "cuda"
            else "cpu-" + "+".join(self.cpu_isa or ("generic",))
        )
        trt = f"-trt{self.tensorrt}" if self.tensorrt and self.device == "cuda" else ""
        return f"{target}-ort{self.onnxruntime}{trt}"

    def json(self) -> dict[str, object]:
        return asdict(self)


def detect_hardware(device: str) -> Hardware:
    import onnxruntime as ort

    model, isa = _cpu()
    gpu_name, gpu_sm = _gpu() if device == "cuda" else (None, None)
    return Hardware(
        device=device,
        cpu_model=model,
        cpu_isa=isa,
        cores=os.cpu_count() or 1,
        gpu_name=gpu_name,
        gpu_sm=gpu_sm,
        onnxruntime=ort.__version__,
        tensorrt=tensorrt_version() if device == "cuda" else None,
    )
