#!/usr/bin/env bash
# One device command of the GPU benchmark (issues 16, 18): bash benchmarks/serving/gpu_lease.sh PHASE [ARGS]
# PHASE: optimize | serve | seed | models (optimize first, on one warm machine; ARGS go to
# benchmarks.serving.gpu; models reads GPU_MODELS_PARTS, GPU_MODELS_N, GPU_MODELS_SERVE).
#
# Once per machine (skipped while /root/site exists) it installs, with no network:
# - onnxruntime-gpu from the chunks the lead engineer copied to /root/c (part.0, part.1, ... as
#   ../../shared/tools/ort-gpu-chunks.sh splits it; WHEEL_NAME and SHA256 beside them if copied),
# - the wheels of .whl/ (carried: orjson, pydantic, pydantic-core, pydantic-settings, python-dotenv,
#   annotated-types, typing-inspection, typing-extensions, uvicorn, httptools, tritonclient),
# into /root/site, first on PYTHONPATH (before the preinstalled CPU onnxruntime). Then it prints the
# GPU and CPU and runs python -m benchmarks.serving.gpu PHASE --work /root/work --out $OUT, the output also
# in $OUT/PHASE.txt. Overrides (for a dry run elsewhere): GPU_LEASE_SITE, GPU_LEASE_CHUNKS,
# GPU_LEASE_WORK, PYTHON.
set -euo pipefail
phase="${1:?usage: gpu_lease.sh optimize|serve|seed|models [gpu.py options]}"
shift
cd "$(dirname "$0")/../.."
py="${PYTHON:-python3}"
site="${GPU_LEASE_SITE:-/root/site}"
chunks="${GPU_LEASE_CHUNKS:-/root/c}"
work="${GPU_LEASE_WORK:-/root/work}"
out="${OUT:-/tmp/gpu-out}"
mkdir -p "$out"
log="$out/$phase.txt"
: > "$log"
say() { echo "$*" | tee -a "$log"; }

install() {
  local parts=("$chunks"/part.*)
  if [ ! -e "${parts[0]}" ]; then
    say "error: no onnxruntime-gpu chunks in $chunks (part.*): transfer them first;" \
      "a machine that went idle comes back bare, so run the phases again from optimize"
    exit 3
  fi
  local name="onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
  [ -f "$chunks/WHEEL_NAME" ] && name="$(cat "$chunks/WHEEL_NAME")"
  local tmp
  tmp="$(mktemp -d /root/lease.XXXXXX 2>/dev/null || mktemp -d)"
  cat "${parts[@]}" > "$tmp/$name"
  if [ -f "$chunks/SHA256" ]; then
    echo "$(cat "$chunks/SHA256")  $tmp/$name" | sha256sum -c - | tee -a "$log"
  fi
  local wheels=(.whl/*.whl)
  say "installing $name and ${#wheels[@]} wheels from .whl/ into $site"
  rm -rf "$site.tmp"
  if "$py" -m pip --version > /dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --target "$site.tmp" "$tmp/$name" "${wheels[@]}" \
      2>&1 | tee -a "$log"
  else  # no pip: a wheel of packages only is a zip to unpack
    for whl in "$tmp/$name" "${wheels[@]}"; do "$py" -m zipfile -e "$whl" "$site.tmp"; done
  fi
  mv "$site.tmp" "$site"
  rm -rf "$tmp"
}

started=$(date +%s)
[ -d "$site" ] || install
export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi -L || echo "nvidia-smi: no GPU"
  lscpu | grep 'Model name' || true
  echo "cores: $(nproc); setup $(( $(date +%s) - started )) s"
  "$py" -c 'import onnxruntime as o; print("onnxruntime", o.__version__, o.get_available_providers())'
} 2>&1 | tee -a "$log"
"$py" -m benchmarks.serving.gpu "$phase" --work "$work" --out "$out" "$@" 2>&1 | tee -a "$log"
