#!/usr/bin/env bash
# perf_analyzer (from tritonclient==2.41.0) against eas-server, unmodified: proof that Triton's own
# load tool speaks to our server (model metadata, /config, binary infer, /stats), and its figures.
# Usage: benchmarks/perf_analyzer/run.sh [MODEL.onnx] [NAME]   (not part of CI); over HTTP, then gRPC
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
model=${1:-$HOME/.cache/autoai/models/minilm-l6.onnx}
name=${2:-minilm}
venv=$here/.venv
if [ ! -x "$venv/bin/perf_analyzer" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q 'tritonclient[all]==2.41.0' nvidia-cuda-runtime-cu12  # the binary links libcudart.so.12
fi
ldconfig -p | grep -q libb64.so.0d || { apt-get update -q && apt-get install -y -q libb64-0d; }
cudart=$(dirname "$(find "$venv" -name 'libcudart.so.12*' | head -1)")
log=$(mktemp)
"$root/.venv/bin/eas-server" --model "$model" --name "$name" --port 0 --max-batch-size 32 --max-batch-timeout-ms 5 --grpc-port 0 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 100); do grep -q "grpc listening on" "$log" && break; sleep 0.2; done
url=$(sed -n 's#^listening on http://##p' "$log")
grpc_url=$(sed -n 's#^grpc listening on ##p' "$log")
echo "eas-server at $url, gRPC at $grpc_url (pid $pid)"
data=$(mktemp --suffix .json)
"$root/.venv/bin/python" - "$model" "$data" <<'PY'
import json, sys, numpy as np
from pathlib import Path
npz = Path(sys.argv[1]).with_suffix(".inputs.npz")
with np.load(npz) as d:   # real tokenized sentences, seq 32
    rows = [{"input_ids": d["input_ids_32"][i].tolist(), "attention_mask": d["attention_mask_32"][i].tolist()} for i in range(16)]
Path(sys.argv[2]).write_text(json.dumps({"data": rows}))
PY
for protocol in http grpc; do
  [ "$protocol" = http ] && target=$url || target=$grpc_url
  echo "== perf_analyzer -i $protocol"
  LD_LIBRARY_PATH=$cudart "$venv/bin/perf_analyzer" -m "$name" -u "$target" -i "$protocol" \
    --shape input_ids:32 --shape attention_mask:32 --input-data "$data" \
    --concurrency-range 1:32:31 --measurement-interval 5000 --stability-percentage 20 ||
    echo "perf_analyzer -i $protocol exited with $? (on a busy machine it may find no stable window)"
done
